"""One prepared GPU run: checks, benchmark and examples under JAX.

Run it through `bash benchmarks/device_run.sh [--smoke] [--out DIR]`, which
sets `KERAS_BACKEND=jax`. In order, each in its own process:

1. `benchmarks/gpu_checks.py`: the attention op's dense, chunked and fused
   paths in bfloat16 and float32 against the NumPy reference, which path ran,
   and zero rows (and gradients) for fully masked queries.
2. `python -m benchmarks.attention --backend jax --gpu-sweep`: ours against
   Keras core, 1k-32k tokens, forward and train step, bfloat16 and float32,
   TFLOP/s against the measured bfloat16 matmul rate.
3. The examples `image_classification`, `date_translation` and
   `text_generation`, each in a short default run with `--mixed-precision
   auto` and `--no-export` (export needs TensorFlow): accuracy (or bits per
   character) and wall time.

`--smoke` uses tiny sizes so that the whole run passes on a CPU in the test
suite; its stages run side by side (`--jobs`), its timings mean nothing.

It writes at most 8 files, none in a subfolder, into the output folder:
`device-run.json` and `device-run.md` (device, versions, command, each
stage's time and result), `device-run.log` (every stage's output),
`gpu-checks.json`, and `attention.json`, `attention.md`, `attention.png`.
It needs no network and no TensorFlow, and installs nothing.
"""

import argparse
import concurrent.futures
import datetime
import importlib.metadata
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The image example's tiny configuration, also its smoke tests'.
IMAGE_TINY = [
    "--train-samples=192",
    "--test-samples=48",
    "--batch-size=32",
    "--hidden-dim=32",
    "--num-layers=1",
    "--num-heads=2",
    "--mlp-dim=32",
    "--dropout=0",
]

# Short default runs on a GPU: the examples' defaults, fewer epochs where a
# default run takes minutes. `text_generation --max-steps` also turns off its
# exit status for not beating the baseline (the summary shows both figures).
EXAMPLES = {
    "image_classification": dict(
        full=[],  # the default 60 epochs of 22 steps
        smoke=[*IMAGE_TINY, "--epochs=1", "--max-steps=2"],
    ),
    "date_translation": dict(
        full=["--epochs=2"],  # of the default 4, 313 steps each
        smoke=[
            "--train-samples=256",
            "--test-samples=16",
            "--batch-size=32",
            "--units=16",
            "--epochs=1",
            "--max-steps=2",
        ],
    ),
    "text_generation": dict(
        full=["--epochs=1", "--max-steps=400"],  # of 4 epochs of 489 steps
        smoke=[
            "--max-steps=2",
            "--epochs=1",
            "--batch-size=8",
            "--num-layers=1",
            "--hidden-dim=32",
            "--intermediate-dim=64",
            "--num-heads=2",
            "--num-key-value-heads=1",
            "--sequence-length=32",
            "--train-chars=5000",
            "--heldout-chars=1000",
            "--eval-chars=200",
            "--max-new-tokens=4",
        ],
    ),
}


class Log:
    """`device-run.log`: every stage's output, one block per stage."""

    def __init__(self, path):
        self.path = path
        self.lock = threading.Lock()
        open(path, "w").close()

    def block(self, name, command, output):
        with self.lock, open(self.path, "a") as f:
            f.write(f"===== {name}: {' '.join(command)}\n{output}\n")


# --smoke: XLA compiles without its slower optimisations (CPU code): about
# half the compile time, which is most of a smoke run.
SMOKE_XLA_FLAGS = (
    "--xla_backend_optimization_level=0 "
    "--xla_llvm_disable_expensive_passes=true"
)


def run_stage(name, command, log, timeout_s, smoke=False):
    """Runs one stage; returns its wall time, exit status and output tail."""
    env = dict(
        os.environ,
        KERAS_BACKEND="jax",
        PYTHONUNBUFFERED="1",
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    # keras_attention from this checkout (the examples run as scripts, from
    # examples/), before whatever PYTHONPATH holds (e.g. /tmp/site).
    env["PYTHONPATH"] = os.pathsep.join(
        [ROOT] + [p for p in [os.environ.get("PYTHONPATH")] if p]
    )
    if smoke:
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {SMOKE_XLA_FLAGS}"
    start = time.time()
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
        returncode, output = result.returncode, result.stdout + result.stderr
    except subprocess.TimeoutExpired as error:
        returncode = "timeout"
        output = (error.stdout or b"") + (error.stderr or b"")
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        output += f"\n(killed after {timeout_s} s)"
    seconds = time.time() - start
    log.block(name, command, output)
    stage = dict(
        name=name,
        command=" ".join(command),
        seconds=round(seconds, 1),
        returncode=returncode,
        ok=returncode == 0,
    )
    if returncode != 0:
        stage["tail"] = output.strip().splitlines()[-15:]
    # The examples print their resolved precision policy.
    match = re.search(r"precision (\S+);", output)
    if match:
        stage["precision"] = match.group(1)
    print(
        f"[{stage['seconds']:6.1f} s] {name}: "
        + ("ok" if stage["ok"] else f"FAILED ({returncode})"),
        flush=True,
    )
    return stage


def example_metrics(name, run_dir):
    """The example's headline figures from its `results.json`."""
    path = os.path.join(run_dir, "results.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        results = json.load(f)
    metrics = dict(
        train_seconds=results.get("train_seconds"),
        seconds=results.get("seconds"),
    )
    if name == "image_classification":
        metrics.update(
            metric="test accuracy",
            value=results["test_accuracy"],
            test_loss=results["test_loss"],
        )
    elif name == "date_translation":
        metrics.update(
            metric="exact match (overall)",
            value=results["exact_match"]["overall"],
            exact_match=results["exact_match"],
        )
    else:
        bpc = results["bits_per_char"]
        baseline = results["baseline_bits_per_char"]
        metrics.update(
            metric="held-out bits per character",
            value=bpc,
            baseline_bits_per_char=baseline,
            beats_baseline=bpc < baseline,
        )
    return metrics


def package_versions():
    """Versions from the installed metadata: nothing is imported (this
    process must not start JAX on the GPU the stages use)."""
    found = dict(python=platform.python_version())
    for name in ("jax", "jaxlib", "keras", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = None
    return found


def nvidia_smi():
    """The GPU as `nvidia-smi` names it, or None without one."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        result = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total",
                "--format=csv,noheader",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    return result.stdout.strip() or None


def _read_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pct(x):
    return f"{x:.2%}" if isinstance(x, float) else "-"


def markdown(summary):
    lines = [
        f"# Device run, {summary['date']}",
        "",
        f"Command: `{summary['command']}`",
        "",
        f"Device: {summary['device']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in summary["versions"].items())
        + f". Total {summary['seconds']:.0f} s"
        + (
            " (smoke: tiny sizes, stages side by side)"
            if summary["smoke"]
            else ""
        )
        + f". Passed: {'yes' if summary['passed'] else '**no**'}"
        + ("." if summary["finished"] else " (still running)."),
        "",
        "| stage | seconds | result |",
        "|---|---|---|",
    ]
    checks = summary.get("gpu_checks") or {}
    for stage in summary["stages"]:
        name = stage["name"]
        if not stage["ok"]:
            result = f"**failed** ({stage['returncode']})"
        elif name == "gpu_checks" and checks:
            result = (
                f"{checks['cases'] - checks['failed']}/{checks['cases']} "
                f"passed; fused kernel in {checks['fused_cases']} cases "
                f"(expected {checks['expected_fused_cases']})"
            )
        elif name == "attention":
            result = "see attention.md"
        else:
            m = summary["examples"].get(name) or {}
            result = f"{m.get('metric', '-')}: " + (
                _pct(m.get("value"))
                if name != "text_generation"
                else f"{m.get('value', float('nan')):.3f} (Kneser-Ney "
                f"{m.get('baseline_bits_per_char', float('nan')):.3f})"
            )
            if m.get("train_seconds") is not None:
                result += f"; trained in {m['train_seconds']:.0f} s"
            if m.get("precision"):
                result += f"; {m['precision']}"
        lines.append(f"| {name} | {stage['seconds']:.1f} | {result} |")
    for name in summary["stages_not_finished"]:
        lines.append(f"| {name} | - | not finished |")
    attention = summary.get("attention_targets") or []
    if attention:
        lines += [
            "",
            "## GPU target (from attention.md)",
            "",
            "| target | measured | met |",
            "|---|---|---|",
        ]
        for t in attention:
            lines.append(
                f"| {t['target']} | {t['measured']} | "
                f"{'yes' if t['met'] else '**no**'} |"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke", action="store_true", help="tiny sizes (a CPU is fine)"
    )
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or None,
        help="output folder (default: $OUT when set, else "
        "benchmarks/results/device-run-<date>/)",
    )
    parser.add_argument(
        "--jobs",
        type=int,
        default=None,
        help="stages run side by side (default: 3 with --smoke, else 1: "
        "timings need the device to themselves)",
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["gpu_checks", "attention", *EXAMPLES],
        default=None,
        help="run only these stages",
    )
    args = parser.parse_args(argv)
    date = datetime.date.today().isoformat()
    out = os.path.abspath(
        args.out
        or os.path.join(ROOT, "benchmarks", "results", f"device-run-{date}")
    )
    os.makedirs(out, exist_ok=True)
    jobs = args.jobs or (3 if args.smoke else 1)
    py = sys.executable
    smoke = ["--smoke"] if args.smoke else []
    start = time.time()
    log = Log(os.path.join(out, "device-run.log"))
    scratch = tempfile.mkdtemp(prefix="device-run-")

    stages = [
        (
            "gpu_checks",
            [
                py,
                "benchmarks/gpu_checks.py",
                *smoke,
                "--out",
                os.path.join(out, "gpu-checks.json"),
            ],
            300,
        ),
        (
            "attention",
            [
                py,
                "-m",
                "benchmarks.attention",
                "--backend",
                "jax",
                "--gpu-sweep",
                *smoke,
                "--output-dir",
                out,
                "--name",
                "attention",
                "--timeout",
                "300",
            ],
            600,
        ),
    ]
    for name, flags in EXAMPLES.items():
        stages.append(
            (
                name,
                [
                    py,
                    os.path.join("examples", f"{name}.py"),
                    "--mixed-precision=auto",
                    "--no-export",
                    f"--output-dir={os.path.join(scratch, name)}",
                    "--saved-models-dir="
                    + os.path.join(scratch, "saved_models"),
                    *flags["smoke" if args.smoke else "full"],
                ],
                600,
            )
        )
    if args.only:
        stages = [s for s in stages if s[0] in args.only]
    print(
        f"device run{' (smoke)' if args.smoke else ''}: {len(stages)} "
        f"stages into {out}",
        flush=True,
    )
    # The summary is rewritten as each stage ends: a run cut short (the
    # device's time limit) still leaves what it measured.
    context = dict(
        out=out,
        scratch=scratch,
        smoke=args.smoke,
        date=date,
        start=start,
        order=[s[0] for s in stages],
        command="bash benchmarks/device_run.sh"
        + (" --smoke" if args.smoke else "")
        + (f" --out {args.out}" if args.out else ""),
    )
    results, lock = [], threading.Lock()

    def finished(future):
        with lock:
            results.append(future.result())
            write_summary(context, results, done=False)

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        futures = [
            pool.submit(run_stage, name, command, log, timeout, args.smoke)
            for name, command, timeout in stages
        ]
        for future in futures:
            future.add_done_callback(finished)
        concurrent.futures.wait(futures)
    with lock:
        summary = write_summary(context, results, done=True)
    shutil.rmtree(scratch, ignore_errors=True)
    print(
        f"device run {'passed' if summary['passed'] else 'FAILED'} in "
        f"{summary['seconds']:.0f} s; wrote {out}/device-run.{{json,md,log}}",
        flush=True,
    )
    return 0 if summary["passed"] else 1


def write_summary(context, results, done):
    """Writes `device-run.json` and `.md` from the stages finished so far."""
    out = context["out"]
    results = sorted(results, key=lambda s: context["order"].index(s["name"]))
    examples = {}
    for stage in results:
        if stage["name"] in EXAMPLES:
            metrics = example_metrics(
                stage["name"], os.path.join(context["scratch"], stage["name"])
            )
            if metrics is not None:
                metrics["precision"] = stage.get("precision")
            examples[stage["name"]] = metrics
    checks = _read_json(os.path.join(out, "gpu-checks.json"))
    attention = _read_json(os.path.join(out, "attention.json"))
    gpu_name = nvidia_smi()
    if checks:
        device = checks["device"] + (
            f"; nvidia-smi: {gpu_name}" if gpu_name else ""
        )
        versions = checks["versions"]
    else:
        device = gpu_name or f"unknown (CPU {platform.machine()})"
        versions = package_versions()
    summary = dict(
        passed=done
        and len(results) == len(context["order"])
        and all(s["ok"] for s in results)
        and (checks is None or checks["passed"])
        and all(m is not None for m in examples.values()),
        finished=done,
        smoke=context["smoke"],
        date=context["date"],
        command=context["command"],
        device=device,
        versions=versions,
        seconds=round(time.time() - context["start"], 1),
        stages=results,
        stages_not_finished=[
            name
            for name in context["order"]
            if name not in {s["name"] for s in results}
        ],
        gpu_checks=None
        if checks is None
        else {
            k: checks[k]
            for k in (
                "passed",
                "cases",
                "failed",
                "fused_cases",
                "expected_fused_cases",
                "platform",
                "tolerances",
            )
        },
        attention_targets=(attention or {}).get("targets", []),
        attention_rows=len((attention or {}).get("rows", [])),
        examples=examples,
    )
    with open(os.path.join(out, "device-run.json"), "w") as f:
        json.dump(summary, f, indent=1)
    with open(os.path.join(out, "device-run.md"), "w") as f:
        f.write(markdown(summary))
    return summary


if __name__ == "__main__":
    sys.exit(main())
