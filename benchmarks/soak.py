"""Soak test: an exported model's signature served in a loop for a fixed time.

It loads a SavedModel the way TensorFlow Serving does (the v1 loader with the
`serve` tag, `Session.run` on the signature's tensors; `--loader function`
uses `tf.saved_model.load(path).signatures[...]` instead) and calls the
signature with random valid requests, from one or more threads, first for a
warm-up period and then for `--seconds`. keras_attention is not imported:
what runs is the export alone, as in TF Serving. (TensorFlow itself loads
parts of Keras when Keras is installed; `python -m keras_attention.serving
check` shows that an export runs with Keras blocked.)

Random valid requests are drawn from the export's own sample request
(`assets.extra/sample_request.json`, written by
`keras_attention.serving.export_saved_model`): a random batch size (1 to
`--max-batch`); every dimension the signature leaves open gets a random size
(1 to twice the sample's); integer inputs take values in the sample's range,
with random zero padding at the end of each row when 0 (padding) is in it;
unsigned-byte inputs any byte; float inputs the sample's mean and spread;
string inputs random sequences of the sample's words.

A request counts as an error when the call raises, an output's first
dimension is not the batch size, or a float output holds NaN or Inf. Every
`--probe-every` requests, each thread also serves a fixed probe request and
compares the result bit for bit with the first time it served it; a
difference is an error too.

Resident memory (VmRSS) is sampled twice a second. Its growth is the
largest sample after the warm-up against the sample at the end of the
warm-up. Exit status 0 when there were no errors and growth stayed within
`--max-growth` (default 5%), 1 otherwise.

Usage:
    python -m benchmarks.soak                      # 10 s warm-up + 60 s
    python -m benchmarks.soak --threads 4 --seconds 300
    python -m benchmarks.soak --export-dir saved_models/text_classification/1
    python -m benchmarks.soak --smoke              # seconds; used by tests

Writes `benchmarks/results/soak-<machine>-<date>.json` and `.md` (with
`--name`, `<name>.json` and `.md`).
"""

import argparse
import datetime
import importlib.util
import json
import os
import platform
import sys
import threading
import time

import numpy as np

from benchmarks._common import machine_name
from benchmarks._common import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS_DIR = os.path.join(ROOT, "benchmarks", "results")
DEFAULT_EXPORT = os.path.join(ROOT, "saved_models", "quickstart", "1")
SAMPLE = os.path.join("assets.extra", "sample_request.json")


def _checker():
    """The serving checker's helpers, loaded from its file.

    `keras_attention/serving/_check_worker.py` is a standalone script (NumPy
    and TensorFlow only); loading it by path keeps Keras out of this process.
    """
    path = os.path.join(ROOT, "keras_attention", "serving", "_check_worker.py")
    spec = importlib.util.spec_from_file_location("_ka_check_worker", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def rss_bytes():
    """This process's resident set size, in bytes (Linux: VmRSS)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource  # elsewhere: the peak, which is an upper bound

    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RequestMaker:
    """Random valid requests shaped like the export's sample request."""

    def __init__(self, sample, specs, max_batch):
        self.specs = specs  # name -> (dtype name, shape with None)
        self.sample = sample  # name -> np.ndarray
        self.max_batch = max_batch
        self.words = {}
        for name, (dtype, _) in specs.items():
            if dtype == "string":
                text = b" ".join(np.asarray(sample[name]).reshape(-1))
                self.words[name] = text.split() or [b"a"]

    def _sizes(self, rng, batch, largest):
        """The size of each axis: `batch` on axis 0, open axes random.

        Inputs that share an open axis share its size, as the inputs of a
        multi-input sequence model do. `largest`: every open axis at its
        largest size (twice the sample's).
        """
        sizes = {0: batch}
        for name, (_, shape) in self.specs.items():
            for axis, dim in enumerate(shape[1:], start=1):
                if dim is None and axis not in sizes:
                    top = 2 * self.sample[name].shape[axis]
                    sizes[axis] = (
                        top if largest else int(rng.integers(1, top + 1))
                    )
        return sizes

    def make(self, rng, largest=False):
        """A random request and its batch size (the largest if `largest`)."""
        batch = (
            self.max_batch
            if largest
            else int(rng.integers(1, self.max_batch + 1))
        )
        sizes = self._sizes(rng, batch, largest)
        request = {}
        for name, (dtype, shape) in self.specs.items():
            dims = [
                sizes[axis] if dim is None or axis == 0 else dim
                for axis, dim in enumerate(shape)
            ]
            request[name] = self._values(
                rng, name, dtype, self.sample[name], dims
            )
        return request, batch

    def _values(self, rng, name, dtype, sample, dims):
        if dtype == "string":
            words = self.words[name]
            out = np.empty(dims, dtype=object)
            flat = out.reshape(-1)
            for i in range(flat.size):
                n = int(rng.integers(1, 2 * len(words) + 1))
                picks = rng.integers(0, len(words), size=n)
                flat[i] = b" ".join(words[j] for j in picks)
            return out
        np_dtype = np.dtype(dtype)
        if np_dtype == np.uint8:
            return rng.integers(0, 256, size=dims, dtype=np.uint8)
        if np_dtype.kind in "iu":
            low, high = int(sample.min()), int(sample.max())
            values = rng.integers(low, high + 1, size=dims).astype(np_dtype)
            if low <= 0 <= high and values.ndim >= 2:
                # Padding: each row keeps a random prefix, zeros after it.
                keep = rng.integers(0, dims[1] + 1, size=(dims[0], 1))
                padded = np.arange(dims[1])[None, :] >= keep
                padded = padded.reshape(padded.shape + (1,) * (len(dims) - 2))
                values[np.broadcast_to(padded, dims)] = 0
            return values
        if np_dtype.kind == "b":
            return rng.random(size=dims) < 0.5
        mean, std = float(sample.mean()), float(sample.std()) or 1.0
        return (mean + std * rng.standard_normal(dims)).astype(np_dtype)


def _load(tf, path, signature, loader):
    """A callable `{name: array} -> {name: array}` serving `signature`."""
    if loader == "function":
        fn = tf.saved_model.load(path).signatures[signature]
        specs = {
            k: (v.dtype.name, v.shape.as_list())
            for k, v in fn.structured_input_signature[1].items()
        }

        def call(request):
            out = fn(**{k: tf.constant(v) for k, v in request.items()})
            return {k: v.numpy() for k, v in out.items()}

        return call, specs, None
    graph = tf.Graph()
    session = tf.compat.v1.Session(graph=graph)
    with graph.as_default():
        meta = tf.compat.v1.saved_model.loader.load(session, ["serve"], path)
    if signature not in meta.signature_def:
        raise SystemExit(
            f"--signature: {signature!r} is not in the export; it has "
            f"{sorted(meta.signature_def)}"
        )
    sig = meta.signature_def[signature]
    specs = {}
    for k, v in sig.inputs.items():
        shape = [
            None if d.size < 0 else int(d.size) for d in v.tensor_shape.dim
        ]
        specs[k] = (tf.dtypes.as_dtype(v.dtype).name, shape)
    fetches = {k: v.name for k, v in sig.outputs.items()}
    feeds = {k: v.name for k, v in sig.inputs.items()}

    def call(request):
        return session.run(fetches, {feeds[k]: v for k, v in request.items()})

    return call, specs, session


def check_outputs(outputs, batch):
    """Why the outputs of a request of `batch` rows are wrong, or None."""
    for name, value in outputs.items():
        value = np.asarray(value)
        if value.ndim == 0 or value.shape[0] != batch:
            return f"output {name!r} has shape {value.shape}, batch {batch}"
        if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
            return f"output {name!r} holds NaN or Inf"
    return None


def _same(a, b):
    return set(a) == set(b) and all(
        np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a
    )


class Soak:
    def __init__(self, call, maker, probe, probe_every, seed):
        self.call = call
        self.maker = maker
        self.probe = probe
        self.probe_every = probe_every
        self.seed = seed
        self.lock = threading.Lock()
        self.counts = {"requests": 0, "rows": 0, "errors": 0, "probes": 0}
        self.first_errors = []
        self.stop_at = 0.0
        self.probe_result = self.serve_probe()

    def _error(self, message):
        with self.lock:
            self.counts["errors"] += 1
            if len(self.first_errors) < 10:
                self.first_errors.append(" ".join(message.split()))

    def worker(self, index, phase):
        rng = np.random.default_rng([self.seed, index, phase])
        n = 0
        while time.monotonic() < self.stop_at:
            request, batch = self.maker.make(rng)
            try:
                problem = check_outputs(self.call(request), batch)
            except Exception as e:  # what TF Serving would answer with
                problem = f"{type(e).__name__}: {str(e)[:300]}"
            if problem is not None:
                self._error(problem)
            n += 1
            with self.lock:
                self.counts["requests"] += 1
                self.counts["rows"] += batch
            if n % self.probe_every == 0:
                self.serve_probe()

    def serve_probe(self):
        """Serves the probe; an error if it fails or differs from the first."""
        try:
            result = self.call(self.probe)
        except Exception as e:
            self._error(f"probe: {type(e).__name__}: {str(e)[:300]}")
            return None
        first = getattr(self, "probe_result", None)
        if first is not None and not _same(result, first):
            self._error("probe: outputs differ from the first time")
        with self.lock:
            self.counts["probes"] += 1
        return result

    def run(self, seconds, threads, phase):
        self.stop_at = time.monotonic() + seconds
        pool = [
            threading.Thread(target=self.worker, args=(i, phase))
            for i in range(threads)
        ]
        for t in pool:
            t.start()
        for t in pool:
            t.join()


class MemorySampler(threading.Thread):
    def __init__(self, interval=0.5):
        super().__init__(daemon=True)
        self.interval = interval
        self.samples = []  # (seconds since start, rss bytes, phase)
        self.phase = "warmup"
        self._done = threading.Event()
        self._start = time.monotonic()

    def run(self):
        while not self._done.is_set():
            self.sample()
            self._done.wait(self.interval)

    def sample(self):
        self.samples.append(
            (time.monotonic() - self._start, rss_bytes(), self.phase)
        )

    def stop(self):
        self._done.set()
        self.join()
        self.sample()


def soak(
    path,
    seconds,
    warmup,
    threads,
    max_batch,
    loader,
    signature,
    seed,
    probe_every,
):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")
    checker = _checker()
    sample_path = os.path.join(path, SAMPLE)
    if not os.path.isfile(sample_path):
        raise SystemExit(
            f"--export-dir: expected an export with {SAMPLE} (as written by "
            f"keras_attention.serving.export_saved_model); {path} has none"
        )
    call, specs, session = _load(tf, path, signature, loader)
    with open(sample_path) as f:
        body = json.load(f)
    sample = checker.decode_body(body, {k: d for k, (d, _) in specs.items()})
    maker = RequestMaker(sample, specs, max_batch)
    sampler = MemorySampler()
    sampler.start()
    started = time.monotonic()
    job = Soak(call, maker, sample, probe_every, seed)
    # Warm-up: the largest request first, so that the allocator has seen it.
    request, batch = maker.make(np.random.default_rng(seed), largest=True)
    try:
        problem = check_outputs(call(request), batch)
    except Exception as e:
        problem = f"{type(e).__name__}: {str(e)[:300]}"
    if problem is not None:
        job._error(f"largest request: {problem}")
    job.run(warmup, threads, phase=0)
    warm_counts = dict(job.counts)
    sampler.sample()
    sampler.phase = "soak"
    sampler.sample()
    soak_start = time.monotonic()
    job.run(seconds, threads, phase=1)
    elapsed = time.monotonic() - soak_start
    sampler.stop()
    if session is not None:
        session.close()
    warm_rss = [s[1] for s in sampler.samples if s[2] == "warmup"][-1]
    after = [s[1] for s in sampler.samples if s[2] == "soak"]
    counts = {k: job.counts[k] - warm_counts[k] for k in job.counts}
    return dict(
        export_dir=os.path.relpath(path, ROOT)
        if path.startswith(ROOT)
        else path,
        signature=signature,
        loader=loader,
        threads=threads,
        max_batch=max_batch,
        seed=seed,
        inputs={k: [d, s] for k, (d, s) in specs.items()},
        warmup_s=warmup,
        soak_s=round(elapsed, 2),
        warmup_requests=warm_counts["requests"],
        warmup_errors=warm_counts["errors"],
        requests=counts["requests"],
        rows=counts["rows"],
        probes=counts["probes"],
        errors=job.counts["errors"],
        first_errors=job.first_errors,
        requests_per_s=counts["requests"] / elapsed if elapsed else 0.0,
        rss_after_warmup_bytes=warm_rss,
        rss_final_bytes=after[-1],
        rss_peak_after_warmup_bytes=max(after),
        rss_growth=(max(after) - warm_rss) / warm_rss,
        rss_samples=[[round(t, 2), r] for t, r, _ in sampler.samples],
        wall_s=round(time.monotonic() - started, 2),
        keras_attention_imported=any(
            m.split(".")[0] == "keras_attention" for m in sys.modules
        ),
    )


def versions():
    import tensorflow as tf

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__}, "
        f"NumPy {np.__version__}"
    )


def markdown(report):
    mb = 1 / 2**20
    verdict = "PASSED" if report["passed"] else "FAILED"
    lines = [
        f"# Soak: {report['machine']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Versions: {report['versions']} (keras_attention not imported: "
        "the export runs alone).",
        "",
        f"Export `{report['export_dir']}`, signature "
        f"`{report['signature']}`, loader `{report['loader']}`, "
        f"{report['threads']} thread(s), batches 1-{report['max_batch']}, "
        f"inputs {report['inputs']}.",
        "",
        "| warm-up | soak | requests | rows | requests/s | probes | errors | "
        "RSS after warm-up | RSS final | RSS peak after warm-up | growth | "
        "limit | verdict |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        f"| {report['warmup_s']} s ({report['warmup_requests']} requests) | "
        f"{report['soak_s']} s | {report['requests']} | {report['rows']} | "
        f"{report['requests_per_s']:.1f} | {report['probes']} | "
        f"{report['errors']} | "
        f"{report['rss_after_warmup_bytes'] * mb:.1f} MiB | "
        f"{report['rss_final_bytes'] * mb:.1f} MiB | "
        f"{report['rss_peak_after_warmup_bytes'] * mb:.1f} MiB | "
        f"{100 * report['rss_growth']:+.2f}% | "
        f"{100 * report['max_growth']:.0f}% | {verdict} |",
    ]
    if report["first_errors"]:
        lines += ["", "First errors:", ""]
        lines += [f"- {e}" for e in report["first_errors"]]
    return "\n".join(lines) + "\n"


def _positive(kind):
    def parse(text):
        value = kind(text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
        return value

    return parse


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--export-dir", default=DEFAULT_EXPORT)
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument(
        "--loader", choices=("session", "function"), default="session"
    )
    parser.add_argument("--seconds", type=_positive(float), default=60.0)
    parser.add_argument("--warmup", type=_positive(float), default=10.0)
    parser.add_argument("--threads", type=_positive(int), default=1)
    parser.add_argument("--max-batch", type=_positive(int), default=32)
    parser.add_argument("--probe-every", type=_positive(int), default=100)
    parser.add_argument("--max-growth", type=_positive(float), default=0.05)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="1 s warm-up and 3 s of soak, to check the pipeline",
    )
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument("--name")
    args = parser.parse_args(argv)
    if args.smoke:
        args.warmup, args.seconds, args.probe_every = 1.0, 3.0, 10
    path = os.path.abspath(args.export_dir)
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        parser.error(
            f"--export-dir: expected a SavedModel directory with "
            f"saved_model.pb; got {args.export_dir}"
        )
    report = soak(
        path,
        seconds=args.seconds,
        warmup=args.warmup,
        threads=args.threads,
        max_batch=args.max_batch,
        loader=args.loader,
        signature=args.signature,
        seed=args.seed,
        probe_every=args.probe_every,
    )
    date = datetime.date.today().isoformat()
    machine = machine_name()
    shown, skip = [], False
    for arg in sys.argv[1:] if argv is None else argv:  # not the output path
        if skip or arg.split("=")[0] in ("--output-dir", "--name"):
            skip = not skip and "=" not in arg
            continue
        shown.append(arg)
    report.update(
        machine=machine,
        date=date,
        command=" ".join(["python -m benchmarks.soak"] + shown),
        versions=versions(),
        max_growth=args.max_growth,
    )
    report["passed"] = (
        report["errors"] == 0 and report["rss_growth"] <= args.max_growth
    )
    name = args.name or f"soak-{machine}-{date}"
    text = markdown(report)
    write_report(report, text, args.output_dir, name)
    print(text)
    return 0 if report["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
