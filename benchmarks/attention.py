"""Side-by-side benchmark: keras_attention against Keras core.

Each configuration runs in a fresh subprocess, so peak memory (the process's
peak RSS on CPU) belongs to that configuration alone. Ours and Keras core get
identical shapes and identical weights (drawn from a fixed NumPy seed); each
worker reports an output checksum so the report shows that both computed the
same thing. Times are medians over repetitions of `tf.function`s: the forward
pass, and a train step (forward plus the gradients with respect to the inputs
and all weights).

Usage:
    python -m benchmarks.attention --quick    # a few minutes on 2 cores
    python -m benchmarks.attention            # full: the targets, sweeps
    python -m benchmarks.attention --smoke    # seconds; used by the tests

Writes `benchmarks/results/<machine>-<date>.json` and `.md` (the table of
targets), and a `.png` plot of time and memory against sequence length.
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
MEMORY_CAP_GB = 22.5  # the machine has 24 GB; a worker above this is killed


# ----------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------
def mha(impl, mode, batch, length, heads=8, head_dim=64, causal=False):
    return dict(
        layer="mha",
        impl=impl,
        mode=mode,
        batch=batch,
        length=length,
        heads=heads,
        head_dim=head_dim,
        causal=causal,
    )


def additive(impl, mode, batch, length, dim=128):
    return dict(
        layer="additive",
        impl=impl,
        mode=mode,
        batch=batch,
        length=length,
        dim=dim,
    )


def both(factory, *args, **kwargs):
    return [factory(impl, *args, **kwargs) for impl in ("ours", "keras")]


def target_configs():
    configs = []
    configs += both(mha, "train", 1, 8192)  # target 1
    configs += both(mha, "train", 1, 32768)  # target 2
    for length in (128, 512):  # target 3
        configs += both(mha, "train", 32, length)
    for length in (2048, 4096, 8192):  # target 4
        configs += both(mha, "forward", 1, length)
    configs += both(additive, "train", 8, 1024)  # target 5
    # Keras core runs out of memory at B=8 here: a size where it fits.
    configs += both(additive, "train", 4, 1024)
    return configs


def sweep_configs():
    configs = []
    for length in (512, 1024, 2048, 4096, 8192, 16384):
        for mode in ("forward", "train"):
            configs += both(mha, mode, 1, length)
    configs += both(mha, "train", 1, 8192, causal=True)
    for length in (256, 512):
        configs += both(additive, "train", 8, length)
    return configs


def quick_configs():
    configs = []
    for length in (1024, 2048, 4096):
        for mode in ("forward", "train"):
            configs += both(mha, mode, 1, length)
    for length in (128, 512):
        configs += both(mha, "train", 32, length)
    configs += both(additive, "train", 8, 256)
    return configs


def smoke_configs():
    return both(mha, "train", 2, 64, heads=2, head_dim=8)


# ----------------------------------------------------------------------------
# Worker (runs in a subprocess)
# ----------------------------------------------------------------------------
def _weights_like(layer, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(w.shape) / np.sqrt(max(1, w.shape[0]))).astype(
            "float32"
        )
        for w in layer.get_weights()
    ]


def _build(config):
    import keras

    import keras_attention as ka

    rng = np.random.default_rng(1)
    b, t = config["batch"], config["length"]
    if config["layer"] == "mha":
        dim = config["heads"] * config["head_dim"]
        cls = (
            ka.MultiHeadAttention
            if config["impl"] == "ours"
            else keras.layers.MultiHeadAttention
        )
        layer = cls(num_heads=config["heads"], key_dim=config["head_dim"])
        x = rng.standard_normal((b, t, dim)).astype("float32")
        inputs = [x, x]
        kwargs = dict(use_causal_mask=config["causal"])
        layer(x[:, :8], x[:, :8])
    else:
        dim = config["dim"]
        q = rng.standard_normal((b, t, dim)).astype("float32")
        v = rng.standard_normal((b, t, dim)).astype("float32")
        inputs = [q, v]
        kwargs = {}
        if config["impl"] == "ours":
            layer = ka.AdditiveAttention(units=dim)
        else:
            layer = keras.layers.AdditiveAttention()
            inputs = [[q, v]]
        layer(
            *[
                np.asarray(a)[:, :8]
                if not isinstance(a, list)
                else [x[:, :8] for x in a]
                for a in inputs
            ]
        )
    layer.set_weights(_weights_like(layer))
    return layer, inputs, kwargs


def _flops(config):
    """Nominal FLOPs of one forward pass (the same formula for both)."""
    b, t = config["batch"], config["length"]
    if config["layer"] == "mha":
        n, h = config["heads"], config["head_dim"]
        d = n * h
        attention = 4 * b * n * t * t * h
        projections = 4 * 2 * b * t * d * n * h
        return attention + projections
    u = config["dim"]
    return 3 * b * t * t * u + 2 * b * t * t * u


def worker(config):
    import resource

    import tensorflow as tf

    layer, inputs, kwargs = _build(config)
    inputs = tf.nest.map_structure(tf.constant, inputs)

    @tf.function(autograph=False)
    def forward(*xs):
        return layer(*xs, **kwargs)

    @tf.function(autograph=False)
    def train(*xs):
        flat = tf.nest.flatten(xs)
        with tf.GradientTape() as tape:
            tape.watch(flat)
            out = layer(*xs, **kwargs)
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, flat + layer.trainable_weights)

    fn = forward if config["mode"] == "forward" else train
    reps = config.get("reps", 5)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = fn(*inputs)  # trace, compile and warm up
    first = time.perf_counter() - start
    start = time.perf_counter()
    tf.nest.map_structure(lambda r: r.numpy(), fn(*inputs))
    elapsed = time.perf_counter() - start
    if elapsed < 2.0:  # cheap: more repetitions, a steadier median
        reps = max(reps, 15 if elapsed < 0.5 else 7)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn(*inputs)
        tf.nest.map_structure(lambda r: r.numpy(), result)
        times.append(time.perf_counter() - start)
    out = forward(*inputs).numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    flops = _flops(config) * (1 if config["mode"] == "forward" else 3)
    median = float(np.median(times))
    return dict(
        status="ok",
        median_s=median,
        times_s=times,
        first_call_s=first,
        peak_rss_bytes=peak,
        rss_before_run_bytes=baseline,
        gflops=flops / median / 1e9,
        checksum=float(np.sum(out.astype("float64"))),
        sample=[float(x) for x in out.reshape(-1)[:4]],
    )


def matmul_peak(n=4096, reps=5):
    """Measured float32 matmul GFLOP/s on this machine (TensorFlow)."""
    import tensorflow as tf

    a = tf.constant(np.random.default_rng(0).random((n, n), "float32"))

    @tf.function
    def mm(x):
        return tf.matmul(x, x)

    mm(a).numpy()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mm(a).numpy()
        times.append(time.perf_counter() - start)
    return dict(status="ok", gflops=2 * n**3 / float(np.median(times)) / 1e9)


# ----------------------------------------------------------------------------
# Parent: subprocesses, memory cap, reports
# ----------------------------------------------------------------------------
def _rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_in_subprocess(config, timeout_s, cap_gb=MEMORY_CAP_GB):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND="tensorflow")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.attention",
            "--worker",
            json.dumps(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    start, max_rss, killed = time.time(), 0, None
    while proc.poll() is None:
        rss = _rss_bytes(proc.pid)
        max_rss = max(max_rss, rss)
        if rss > cap_gb * 1e9:
            killed = f"killed: RSS above {cap_gb:.0f} GB"
        elif time.time() - start > timeout_s:
            killed = f"killed: over {timeout_s} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if killed:
        return dict(status=killed, peak_rss_bytes=max_rss)
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    tail = (stderr or stdout).strip().splitlines()[-3:]
    message = " | ".join(tail)[-300:]
    if "ResourceExhausted" in message or "OOM" in message:
        return dict(status="out of memory", detail=message)
    return dict(status="error", detail=message)


def _round_key(config):
    return json.dumps(config, sort_keys=True)


def combine_rounds(runs):
    """One result from the rounds of a configuration.

    A failed round (out of memory, killed, error) is the result. Otherwise
    the time is the median of the rounds' medians, the memory the largest
    peak; `round_medians_s` keeps each round's median.
    """
    for run in runs:
        if run.get("status") != "ok":
            return run
    if len(runs) == 1:
        return runs[0]
    medians = [run["median_s"] for run in runs]
    median = float(np.median(medians))
    combined = dict(runs[0])
    combined.update(
        median_s=median,
        round_medians_s=medians,
        times_s=[t for run in runs for t in run["times_s"]],
        peak_rss_bytes=max(run["peak_rss_bytes"] for run in runs),
        gflops=runs[0]["gflops"] * runs[0]["median_s"] / median,
    )
    return combined


def _key(config):
    return tuple(
        sorted((k, v) for k, v in config.items() if k not in ("impl", "reps"))
    )


def _fmt_gb(x):
    return f"{x / 1e9:.2f} GB" if x else "-"


def _fmt_s(r):
    return f"{r['median_s']:.3f} s" if r.get("status") == "ok" else r["status"]


def _describe(config):
    if config["layer"] == "mha":
        causal = ", causal" if config["causal"] else ""
        return (
            f"MHA B={config['batch']} L={config['length']} "
            f"h={config['heads']}x{config['head_dim']}{causal}"
        )
    return (
        f"Additive B={config['batch']} {config['length']}x{config['length']}"
        f" dim={config['dim']}"
    )


def pair_rows(results):
    pairs = {}
    for entry in results:
        pairs.setdefault(_key(entry["config"]), {})[entry["config"]["impl"]] = (
            entry
        )
    rows = []
    for key, pair in pairs.items():
        ours, keras_ = pair.get("ours"), pair.get("keras")
        config = (ours or keras_)["config"]
        row = dict(
            config=config,
            ours=ours["result"] if ours else None,
            keras=keras_["result"] if keras_ else None,
        )
        o, k = row["ours"], row["keras"]
        if o and k and o.get("status") == "ok" and k.get("status") == "ok":
            row["time_ratio"] = o["median_s"] / k["median_s"]
            row["memory_ratio"] = o["peak_rss_bytes"] / k["peak_rss_bytes"]
            if config["layer"] == "mha":  # the same computation: compare
                row["checksum_rel_diff"] = abs(
                    o["checksum"] - k["checksum"]
                ) / (abs(k["checksum"]) + 1e-6)
        rows.append(row)
    return rows


def _find(rows, **want):
    for row in rows:
        if all(row["config"].get(k) == v for k, v in want.items()):
            return row
    return None


def evaluate_targets(rows, peak):
    """The five targets of the memory-efficiency issue, as table rows."""
    targets = []

    def add(name, goal, row, value, ok):
        targets.append(
            dict(
                target=name,
                goal=goal,
                config=_describe(row["config"]) if row else "-",
                measured=value,
                met=ok,
            )
        )

    row = _find(
        rows, layer="mha", mode="train", batch=1, length=8192, causal=False
    )
    if row and "time_ratio" in row:
        add(
            "1. MHA train step, L=8192",
            "memory <= 0.25x, time <= 1.0x",
            row,
            f"memory {row['memory_ratio']:.2f}x, time {row['time_ratio']:.2f}x",
            row["memory_ratio"] <= 0.25 and row["time_ratio"] <= 1.0,
        )
    row = _find(rows, layer="mha", mode="train", batch=1, length=32768)
    if row and row["ours"]:
        o = row["ours"]
        ok = o.get("status") == "ok" and o["peak_rss_bytes"] < 12e9
        add(
            "2. MHA train step, L=32768",
            "completes, peak RSS < 12 GB",
            row,
            f"ours {_fmt_s(o)}, {_fmt_gb(o.get('peak_rss_bytes'))}; Keras: "
            f"{row['keras']['status'] if row['keras'] else 'not run'}",
            ok,
        )
    for length in (128, 512):
        row = _find(rows, layer="mha", mode="train", batch=32, length=length)
        if row and "time_ratio" in row:
            add(
                f"3. MHA train step, B=32, L={length}",
                "time <= 1.05x",
                row,
                f"time {row['time_ratio']:.2f}x",
                row["time_ratio"] <= 1.05,
            )
    for length in (2048, 4096, 8192):
        row = _find(
            rows,
            layer="mha",
            mode="forward",
            batch=1,
            length=length,
            causal=False,
        )
        if row and row["ours"] and row["ours"].get("status") == "ok" and peak:
            frac = row["ours"]["gflops"] / peak
            k = row["keras"]
            kfrac = (
                f"{k['gflops'] / peak:.0%}"
                if k and k.get("status") == "ok"
                else "-"
            )
            add(
                f"4. MHA forward, L={length}",
                ">= 70% of matmul GFLOP/s",
                row,
                f"ours {frac:.0%} (Keras {kfrac})",
                frac >= 0.70,
            )
    row = _find(rows, layer="additive", mode="train", batch=8, length=1024)
    if row and row["ours"]:
        if "time_ratio" in row:
            add(
                "5. Additive train step, B=8, 1024x1024",
                "memory <= 0.2x, time <= 1.0x",
                row,
                f"memory {row['memory_ratio']:.2f}x, "
                f"time {row['time_ratio']:.2f}x",
                row["memory_ratio"] <= 0.2 and row["time_ratio"] <= 1.0,
            )
        else:
            # Keras core could not run here: compare with the issue's own
            # measurement of Keras core (TF 2.21, 2 cores): 3.9 s, 21.5 GB.
            o, k = row["ours"], row["keras"]
            ok = o.get("status") == "ok"
            t_ratio = o["median_s"] / 3.9 if ok else float("inf")
            m_ratio = o.get("peak_rss_bytes", 0) / 21.5e9
            add(
                "5. Additive train step, B=8, 1024x1024",
                "memory <= 0.2x, time <= 1.0x",
                row,
                f"ours {_fmt_s(o)}, {_fmt_gb(o.get('peak_rss_bytes'))}; "
                f"Keras here: {k['status'] if k else 'not run'}; vs the "
                f"issue's Keras figures (3.9 s, 21.5 GB): memory "
                f"{m_ratio:.2f}x, time {t_ratio:.2f}x",
                ok and m_ratio <= 0.2 and t_ratio <= 1.0,
            )
    row = _find(rows, layer="additive", mode="train", batch=4, length=1024)
    if row and "time_ratio" in row:
        add(
            "5b. Additive train step, B=4, 1024x1024 (side by side)",
            "memory <= 0.2x, time <= 1.0x",
            row,
            f"memory {row['memory_ratio']:.2f}x, time {row['time_ratio']:.2f}x",
            row["memory_ratio"] <= 0.2 and row["time_ratio"] <= 1.0,
        )
    return targets


def markdown(report):
    lines = [
        f"# Attention benchmark: {report['machine']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Versions: {report['versions']}. Float32 matmul peak (measured, "
        f"4096^3): {report['matmul_gflops']:.1f} GFLOP/s.",
        "",
        "Ratios are ours / Keras core, measured in the same run, each "
        "configuration in a fresh process; memory is the process's peak RSS "
        "(which includes the TensorFlow runtime, about 0.6 GB). GFLOP/s "
        "count the same nominal FLOPs for both (forward: projections plus "
        "4*B*H*T*S*d; train step: 3x forward). AdditiveAttention: Keras "
        "core's layer has no projections, so ours does more work and the "
        "outputs differ by design.",
        "",
    ]
    for note in report.get("notes", []):
        lines += [f"Note: {note}", ""]
    if report["targets"]:
        lines += [
            "## Targets",
            "",
            "| target | goal | measured | met |",
            "|---|---|---|---|",
        ]
        for t in report["targets"]:
            lines.append(
                f"| {t['target']} | {t['goal']} | {t['measured']} "
                f"| {'yes' if t['met'] else '**no**'} |"
            )
        lines.append("")
    lines += [
        "## All configurations",
        "",
        "| configuration | mode | ours time | Keras time | time ratio | "
        "ours peak | Keras peak | memory ratio | ours GFLOP/s | "
        "Keras GFLOP/s | checksum rel. diff |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        o, k = row["ours"] or {}, row["keras"] or {}
        ratio = f"{row['time_ratio']:.2f}x" if "time_ratio" in row else "-"
        mem = f"{row['memory_ratio']:.2f}x" if "memory_ratio" in row else "-"
        diff = (
            f"{row['checksum_rel_diff']:.1e}"
            if "checksum_rel_diff" in row
            else "-"
        )
        lines.append(
            f"| {_describe(row['config'])} | {row['config']['mode']} | "
            f"{_fmt_s(o) if o else '-'} | {_fmt_s(k) if k else '-'} | "
            f"{ratio} | {_fmt_gb(o.get('peak_rss_bytes'))} | "
            f"{_fmt_gb(k.get('peak_rss_bytes'))} | {mem} | "
            f"{o.get('gflops', 0):.1f} | {k.get('gflops', 0):.1f} | {diff} |"
        )
    return "\n".join(lines) + "\n"


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("forward", "--"), ("train", "-")):
        for impl, color in (("ours", "tab:blue"), ("keras", "tab:orange")):
            pts = sorted(
                (r["config"]["length"], r[impl])
                for r in report["rows"]
                if r["config"]["layer"] == "mha"
                and r["config"]["batch"] == 1
                and r["config"]["mode"] == mode
                and not r["config"]["causal"]
                and r[impl]
                and r[impl].get("status") == "ok"
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            label = f"{'keras_attention' if impl == 'ours' else 'Keras core'}"
            axes[0].plot(
                xs,
                [p[1]["median_s"] for p in pts],
                style,
                color=color,
                marker="o",
                label=f"{label}, {mode}",
            )
            axes[1].plot(
                xs,
                [p[1]["peak_rss_bytes"] / 1e9 for p in pts],
                style,
                color=color,
                marker="o",
                label=f"{label}, {mode}",
            )
    if not axes[0].lines:
        plt.close(fig)
        return None
    for ax, ylabel in zip(axes, ("median time (s)", "peak RSS (GB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length (B=1, 8 heads x 64)")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"MultiHeadAttention on {report['machine']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def machine_name():
    cpu = platform.machine()
    return f"cpu-{cpu}-{os.cpu_count()}cores"


def write_report(report, text, output_dir, stem, indent=2):
    """Writes `<stem>.json` (the report) and `<stem>.md` (`text`).

    Returns the path without extension.
    """
    os.makedirs(output_dir, exist_ok=True)
    base = os.path.join(output_dir, stem)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=indent)
    with open(base + ".md", "w") as f:
        f.write(text)
    return base


def versions():
    import keras
    import tensorflow as tf

    import keras_attention

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__},"
        f" Keras {keras.__version__}, keras_attention "
        f"{keras_attention.__version__}"
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="a small set of configurations (minutes)",
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, to check the pipeline (seconds)",
    )
    mode.add_argument(
        "--targets",
        action="store_true",
        help="the five targets only, without the sweeps",
    )
    mode.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions per configuration",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=900,
        help="seconds before a configuration is killed",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration this many times, interleaved (each "
        "round in the opposite order), and report the median of the rounds",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="only the configurations whose description and mode match "
        "this regular expression (e.g. 'forward', 'Additive')",
    )
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument(
        "--name",
        default=None,
        help="result file stem (default <machine>-<date>)",
    )
    args = parser.parse_args(argv)

    if args.worker:
        config = json.loads(args.worker)
        if config.get("layer") == "matmul":
            print(json.dumps(matmul_peak()))
        else:
            print(json.dumps(worker(config)))
        return 0

    if args.smoke:
        configs, reps = smoke_configs(), args.reps or 1
    elif args.quick:
        configs, reps = quick_configs(), args.reps or 3
    elif args.targets:
        configs, reps = target_configs(), args.reps or 3
    else:
        configs, reps = target_configs() + sweep_configs(), args.reps or 3
    seen, unique = set(), []
    for c in configs:
        k = json.dumps(c, sort_keys=True)
        if k not in seen:
            seen.add(k)
            unique.append(dict(c, reps=reps))

    if args.only:
        unique = [
            c
            for c in unique
            if re.search(args.only, f"{_describe(c)} {c['mode']}")
        ]
    peaks = []
    by_key = {}
    for round_index in range(args.rounds):
        # The matmul peak is measured in every round and the largest kept:
        # anything else running on the machine can only lower it.
        peak = run_in_subprocess({"layer": "matmul"}, args.timeout)
        peaks.append(peak.get("gflops", 0.0))
        print(f"float32 matmul peak: {peaks[-1]:.1f} GFLOP/s", flush=True)
        # Odd rounds run in reverse order, so neither implementation always
        # runs first (after the other one's memory was freed).
        order = unique if round_index % 2 == 0 else unique[::-1]
        for config in order:
            result = run_in_subprocess(config, args.timeout)
            by_key.setdefault(_round_key(config), (config, []))[1].append(
                result
            )
            print(
                f"{config['impl']:5s} {config['mode']:7s} "
                f"{_describe(config):40s} {_fmt_s(result):>22s} "
                f"{_fmt_gb(result.get('peak_rss_bytes')):>9s}",
                flush=True,
            )
    results = [
        dict(config=config, result=combine_rounds(runs))
        for config, runs in (by_key[_round_key(c)] for c in unique)
    ]
    rows = pair_rows(results)
    report = dict(
        machine=machine_name(),
        date=datetime.date.today().isoformat(),
        command="python -m benchmarks.attention"
        + "".join(
            f" --{flag}"
            for flag in ("quick", "smoke", "targets")
            if getattr(args, flag)
        )
        + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
        + (f" --only '{args.only}'" if args.only else ""),
        versions=versions(),
        matmul_gflops=max(peaks),
        matmul_gflops_rounds=peaks,
        results=results,
        rows=rows,
    )
    report["targets"] = evaluate_targets(rows, report["matmul_gflops"])
    stem = args.name or f"{report['machine']}-{report['date']}"
    if args.quick or args.targets:
        stem += "-quick" if args.quick else "-targets"
    base = write_report(
        report, markdown(report), args.output_dir, stem, indent=1
    )
    png = plot(report, base + ".png")
    print(f"wrote {base}.json, {base}.md" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
