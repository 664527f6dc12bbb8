"""Side-by-side benchmark: keras_attention against Keras core.

Each configuration runs in a fresh subprocess, so peak memory (the process's
peak RSS on CPU) belongs to that configuration alone. Ours and Keras core get
identical shapes and identical weights (drawn from a fixed NumPy seed); each
worker reports an output checksum so the report shows that both computed the
same thing. Times are medians over repetitions of `tf.function`s: the forward
pass, and a train step (forward plus the gradients with respect to the inputs
and all weights).

`--backend jax` runs the same layers under JAX: the forward pass and the
train step (`jax.value_and_grad` over `Layer.stateless_call`) are `jax.jit`
compiled ahead of time, calls are timed with `block_until_ready`, and memory
is the device's `peak_bytes_in_use` (`Device.memory_stats()`; on a CPU, where
JAX keeps no statistics, the process's peak RSS). On a GPU (`--gpu-sweep`,
the default there) one subprocess runs the lengths of an implementation,
mode and dtype in increasing order: the device's peak, which can't be reset,
then grows with each configuration and is read as that configuration's
(a configuration that does not raise it is reported as a bound).

`--backend torch` runs them under PyTorch on the CPU, eagerly, as Keras'
torch backend does: the forward pass is a plain `layer(x, x)` call, the
train step adds `torch.autograd.grad` with respect to the input and all
weights; memory is the process's peak RSS, as under TensorFlow. `--targets`
then evaluates the PyTorch targets table (`_attention_configs`).

Usage:
    python -m benchmarks.attention --quick    # a few minutes on 2 cores
    python -m benchmarks.attention            # full: the targets, sweeps
    python -m benchmarks.attention --smoke    # seconds; used by the tests
    python -m benchmarks.attention --targets --rounds 3   # the targets
    python -m benchmarks.attention --backend jax --gpu-sweep   # on a GPU
    python -m benchmarks.attention --backend torch --targets --rounds 3
    python -m benchmarks.attention --programs   # windows, documents, mods

Writes `benchmarks/results/<machine>-<date>.json` and `.md` (the table of
targets), and a `.png` plot of time and memory against sequence length
(`jax-<device>-<date>` under `--backend jax`, `torch-cpu-...` under
`--backend torch`).

The configurations and the targets table are in `_attention_configs.py`,
what runs in a measuring process in `_attention_worker.py`, the tables and
the evaluation of the targets in `_attention_report.py`.
"""

import argparse
import datetime
import json
import os
import re
import subprocess
import sys
import time

from benchmarks._attention_configs import describe
from benchmarks._attention_configs import gpu_configs
from benchmarks._attention_configs import gpu_smoke_configs
from benchmarks._attention_configs import program_set
from benchmarks._attention_configs import program_smoke_set
from benchmarks._attention_configs import quick_configs
from benchmarks._attention_configs import smoke_configs
from benchmarks._attention_configs import sweep_configs
from benchmarks._attention_configs import target_configs
from benchmarks._attention_configs import torch_target_configs
from benchmarks._attention_report import combine_rounds
from benchmarks._attention_report import evaluate_program_targets
from benchmarks._attention_report import evaluate_targets
from benchmarks._attention_report import evaluate_torch_targets
from benchmarks._attention_report import format_memory
from benchmarks._attention_report import format_milliseconds
from benchmarks._attention_report import format_seconds
from benchmarks._attention_report import markdown
from benchmarks._attention_report import pair_rows
from benchmarks._attention_report import plot
from benchmarks._attention_worker import is_oom
from benchmarks._attention_worker import run_worker
from benchmarks._common import RESULTS_DIR
from benchmarks._common import machine_name
from benchmarks._common import versions
from benchmarks._common import write_report

MEMORY_CAP_GB = 22.5  # the machine has 24 GB; a worker above this is killed


# ----------------------------------------------------------------------------
# Parent: one subprocess per configuration (or series), the memory cap
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


def _subprocess_env(backend):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)
    if backend == "torch":  # the PyTorch targets are the CPU's
        env["CUDA_VISIBLE_DEVICES"] = ""
    return env


def _failure(stdout, stderr):
    tail = (stderr or stdout).strip().splitlines()[-3:]
    message = " | ".join(tail)[-300:]
    if is_oom(message):
        return dict(status="out of memory", detail=message)
    return dict(status="error", detail=message)


def run_in_subprocess(
    config, timeout_s, cap_gb=MEMORY_CAP_GB, backend="tensorflow"
):
    """Runs one configuration (a dict) in a fresh process; returns its
    result. A list of configurations (a series) runs in one process, one
    after the other, and gives a list of results."""
    series = isinstance(config, list)
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
        env=_subprocess_env(backend),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if series:
        timeout_s *= len(config)
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
    if not series:
        if killed:
            return dict(status=killed, peak_rss_bytes=max_rss)
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return _failure(stdout, stderr)
    # A series prints one line per finished configuration; the ones that
    # did not finish get the reason the process ended.
    done = {}
    for line in stdout.splitlines():
        if line.startswith('{"index"'):
            entry = json.loads(line)
            done[entry["index"]] = entry["result"]
    if killed:
        rest = dict(status=killed, peak_rss_bytes=max_rss)
    else:
        rest = _failure(stdout, stderr)
    return [done.get(i, rest) for i in range(len(config))]


def _round_key(config):
    return json.dumps(config, sort_keys=True)


def _units(configs):
    """What runs in one subprocess: single configurations, or the
    configurations of one `series` (JAX's GPU set, the programs' smoke
    run), in their listed order."""
    units, by_series = [], {}
    for config in configs:
        name = config.get("series")
        if name is None:
            units.append(config)
        elif name in by_series:
            by_series[name].append(config)
        else:
            by_series[name] = [config]
            units.append(by_series[name])
    return units


def _configs(args, platform_):
    """The configurations the flags ask for, and their default reps."""
    gpu = args.gpu_sweep or (
        args.backend == "jax"
        and platform_ in ("gpu", "tpu")
        and not (args.smoke or args.quick or args.targets)
    )
    if gpu:
        return (gpu_smoke_configs() if args.smoke else gpu_configs()), 1, True
    if args.programs:
        configs, _, _ = program_smoke_set() if args.smoke else program_set()
        return configs, 1 if args.smoke else 3, False
    if args.smoke:
        return smoke_configs(), 1, False
    if args.quick:
        return quick_configs(), 3, False
    targets = (
        torch_target_configs() if args.backend == "torch" else target_configs()
    )
    if args.targets:
        return targets, 3, False
    return targets + sweep_configs(), 3, False


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
        help="the targets table only, without the sweeps",
    )
    mode.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax", "torch"],
        default="tensorflow",
        help="the Keras backend of the workers (default: %(default)s)",
    )
    parser.add_argument(
        "--gpu-sweep",
        action="store_true",
        help="the GPU set: 8 heads x 64, B=1, 1k-32k tokens, forward and "
        "train, bfloat16 and float32 (JAX; the default under --backend jax "
        "on a GPU or TPU); with --smoke, the same pipeline at toy sizes",
    )
    parser.add_argument(
        "--programs",
        action="store_true",
        help="the programmable attention's set: sliding window, packed "
        "documents, mask_mod, score_mod and the skip-fraction series, "
        "train step at L=8192 (and 32768), targets P1-P6; goes alone or "
        "with --smoke (toy sizes) and --rounds",
    )
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
        return run_worker(args.worker)
    if args.gpu_sweep and (args.quick or args.targets):
        parser.error("--gpu-sweep goes alone or with --smoke")
    if args.gpu_sweep and args.backend != "jax":
        parser.error("--gpu-sweep needs --backend jax")
    if args.programs and (args.quick or args.targets or args.gpu_sweep):
        parser.error("--programs goes alone or with --smoke")

    # The first round's matmul also says which device the workers see (the
    # parent itself never starts a backend: under JAX it would hold the
    # GPU's memory).
    matmul = {"layer": "matmul"}
    if args.smoke and args.backend in ("jax", "torch"):
        matmul["n"] = 1024  # seconds, not a minute, on 2 CPU cores
    first_peak = run_in_subprocess(matmul, args.timeout, backend=args.backend)
    if first_peak.get("status") != "ok":
        raise SystemExit(f"the matmul worker failed: {first_peak}")
    platform_ = first_peak.get("platform", "cpu")
    configs, default_reps, gpu = _configs(args, platform_)
    seen, unique = set(), []
    for c in configs:
        k = json.dumps(c, sort_keys=True)
        if k not in seen:
            seen.add(k)
            reps = args.reps or c.get("reps") or default_reps
            unique.append(dict(c, reps=reps))

    if args.only:
        unique = [
            c
            for c in unique
            if re.search(args.only, f"{describe(c)} {c['mode']}")
        ]
    units = _units(unique)
    fmt = format_milliseconds if args.backend == "jax" else format_seconds
    peaks = []
    by_key = {}
    for round_index in range(args.rounds):
        # The matmul peak is measured in every round and the largest kept:
        # anything else running on the machine can only lower it.
        peak = first_peak
        if round_index:
            peak = run_in_subprocess(matmul, args.timeout, backend=args.backend)
        peaks.append(peak.get("gflops", 0.0))
        if args.backend == "jax":
            print(
                f"{first_peak['dtype']} matmul peak: "
                f"{peaks[-1] / 1e3:.2f} TFLOP/s",
                flush=True,
            )
        else:
            print(f"float32 matmul peak: {peaks[-1]:.1f} GFLOP/s", flush=True)
        # Odd rounds run in reverse order, so neither implementation always
        # runs first (after the other one's memory was freed). A series
        # keeps its order (increasing lengths).
        order = units if round_index % 2 == 0 else units[::-1]
        for unit in order:
            results = run_in_subprocess(
                unit, args.timeout, backend=args.backend
            )
            if not isinstance(unit, list):
                unit, results = [unit], [results]
            for config, result in zip(unit, results):
                by_key.setdefault(_round_key(config), (config, []))[1].append(
                    result
                )
                print(
                    f"{config['impl']:5s} {config['mode']:7s} "
                    f"{describe(config):40s} {fmt(result):>22s} "
                    f"{format_memory(result):>12s}",
                    flush=True,
                )
    results = [
        dict(config=config, result=combine_rounds(runs))
        for config, runs in (by_key[_round_key(c)] for c in unique)
    ]
    rows = pair_rows(results)
    jax_run = args.backend == "jax"
    torch_run = args.backend == "torch"
    command = (
        "python -m benchmarks.attention"
        + "".join(
            f" --{flag}"
            for flag in ("quick", "smoke", "targets", "programs")
            if getattr(args, flag)
        )
        + (f" --backend {args.backend}" if jax_run or torch_run else "")
        + (" --gpu-sweep" if args.gpu_sweep else "")
        + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
        + (f" --only '{args.only}'" if args.only else "")
    )
    report = dict(
        machine=machine_name(
            first_peak if jax_run or torch_run else None, args.backend
        ),
        date=datetime.date.today().isoformat(),
        command=command,
        versions=first_peak["versions"] if jax_run or torch_run else versions(),
        matmul_gflops=max(peaks),
        matmul_gflops_rounds=peaks,
        results=results,
        rows=rows,
    )
    if jax_run:
        report.update(
            backend="jax",
            platform=platform_,
            device=f"{first_peak['device_kind']} ({platform_}, "
            f"{first_peak['devices']} device(s))",
            device_name=first_peak["device_kind"]
            if platform_ != "cpu"
            else report["machine"],
            versions_detail=first_peak["versions_detail"],
            matmul=dict(
                n=first_peak["n"],
                dtype=first_peak["dtype"],
                tflops=max(peaks) / 1e3,
            ),
            gpu_set=gpu,
        )
        if gpu and not args.gpu_sweep:
            report["notes"] = [
                "the GPU set was chosen because the workers run on a "
                f"{platform_.upper()}."
            ]
    if torch_run:
        report.update(
            backend="torch",
            platform=platform_,
            versions_detail=first_peak["versions_detail"],
            matmul=dict(n=first_peak["n"], dtype=first_peak["dtype"]),
        )
    if any(r["config"].get("dropout") for r in rows):
        report.setdefault("notes", []).append(
            "the checksums come from the forward pass (training=False), so "
            "they compare with dropout too; the train steps draw different "
            "dropout masks in the two layers."
        )
    if args.programs:
        _, targets, series = (
            program_smoke_set() if args.smoke else program_set()
        )
        report["targets"] = evaluate_program_targets(results, targets)
        report["skip_series"] = series
    elif torch_run:
        report["targets"] = evaluate_torch_targets(rows)
    else:
        report["targets"] = evaluate_targets(
            rows, report["matmul_gflops"], platform_
        )
    stem = args.name or f"{report['machine']}-{report['date']}"
    if args.quick or args.targets:
        stem += "-quick" if args.quick else "-targets"
    elif args.programs:
        stem += "-programs"
    base = write_report(
        report, markdown(report), args.output_dir, stem, indent=1
    )
    png = plot(report, base + ".png")
    print(f"wrote {base}.json, {base}.md" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
