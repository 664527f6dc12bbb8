"""What the benchmark scripts share: where results go, the machine's name,
the versions line, report files, the table of targets and a layer's call
compiled for the backend.

Nothing here imports TensorFlow, JAX or PyTorch at import time: the GPU
machine has no TensorFlow, and a parent process must not start JAX on the
device its workers use.
"""

import datetime
import json
import logging
import os
import platform
import re
import shlex
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def machine_name(matmul=None, backend="jax"):
    """`cpu-<arch>-<n>cores` (TensorFlow); under JAX or PyTorch, from the
    device that ran the matmul, with the backend in front:
    `jax-cpu-<arch>-<n>cores`, `jax-gpu-<device kind>`,
    `torch-cpu-<arch>-<n>cores`."""
    cpu = platform.machine()
    name = f"cpu-{cpu}-{os.cpu_count()}cores"
    if matmul is None:
        return name
    if matmul.get("platform", "cpu") == "cpu":
        return f"{backend}-{name}"
    kind = re.sub(r"[^a-z0-9]+", "-", matmul["device_kind"].lower()).strip("-")
    return f"{backend}-{matmul['platform']}-{kind}"


def cpu_description():
    """`CPU, <model name>, <n> cores`, the model from `/proc/cpuinfo`."""
    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"CPU, {model}, {os.cpu_count()} cores"


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


def run_header(module, backend, argv, versions):
    """The fields that open a run's report: machine, date, the command
    that reproduces it, backend, device and versions."""
    prefix = "" if backend == "tensorflow" else f"KERAS_BACKEND={backend} "
    return dict(
        machine=machine_name(),
        date=datetime.date.today().isoformat(),
        command=prefix
        + f"python -m {module}"
        + (" " + shlex.join(argv) if argv else ""),
        backend=backend,
        device=cpu_description(),
        versions=versions,
    )


def checks_verdict(report, where):
    """ "All checks passed.", or the failed checks, each named by
    `where(check)`."""
    failed = [c for c in report["checks"] if not c["passed"]]
    if not failed:
        return "All checks passed."
    return "**Failed**: " + ", ".join(where(c) for c in failed)


def run_footer(report):
    """The reports' last line: wall time and the machine's load."""
    return (
        f"Total wall time: {report['wall_s']:.0f} s. Machine load (1-minute "
        "load average, before and after; other processes included): "
        + " and ".join(f"{x:.1f}" for x in report["load_average"])
        + f" on {os.cpu_count()} cores."
    )


def finish(report, markdown, args, name, backend, started, load_before):
    """The end of a run that `targets_table` reports: its wall time and
    the machine's load (other processes: the 1-minute load average, before
    and after), the `.json` and `.md` files (`<name>[-<backend>]-<machine>-
    <date>` unless `args.name`), and the targets and failed checks
    printed. Returns the exit status: 1 if a check failed."""
    report["passed"] = all(c["passed"] for c in report["checks"])
    report["wall_s"] = time.perf_counter() - started
    report["load_average"] = [load_before, os.getloadavg()[0]]
    tag = "" if backend == "tensorflow" else f"{backend}-"
    stem = args.name or f"{name}-{tag}{report['machine']}-{report['date']}"
    base = write_report(
        report, markdown(report), args.output_dir, stem, indent=1
    )
    for t in report["targets"]:
        print(
            f"target {t['target']}: {t['goal']}, measured {t['measured']} "
            f"({'met' if t['met'] else 'NOT met'})"
        )
    for c in report["checks"]:
        if not c["passed"]:
            print(f"check failed: {c}")
    print(f"wrote {base}.json, {base}.md ({report['wall_s']:.0f} s)")
    return 0 if report["passed"] else 1


def versions(backend="tensorflow"):
    """The versions line of a report. Under JAX or PyTorch it imports no
    TensorFlow."""
    if backend == "jax":
        detail = jax_versions()
        return (
            f"Python {detail['python']}, JAX {detail['jax']} (jaxlib "
            f"{detail['jaxlib']}), Keras {detail['keras']}, NumPy "
            f"{detail['numpy']}, keras_attention {detail['keras_attention']}"
        )
    if backend == "torch":
        detail = torch_versions()
        return (
            f"Python {detail['python']}, PyTorch {detail['torch']}, Keras "
            f"{detail['keras']}, NumPy {detail['numpy']}, keras_attention "
            f"{detail['keras_attention']}"
        )
    import keras
    import tensorflow as tf

    import keras_attention

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__},"
        f" Keras {keras.__version__}, keras_attention "
        f"{keras_attention.__version__}"
    )


def jax_versions():
    """Python, JAX, jaxlib, Keras, NumPy and keras_attention versions."""
    import jax
    import jaxlib
    import keras

    import keras_attention

    return dict(
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        keras=keras.__version__,
        numpy=np.__version__,
        keras_attention=keras_attention.__version__,
    )


def torch_versions():
    """Python, PyTorch, Keras, NumPy and keras_attention versions."""
    import keras
    import torch

    import keras_attention

    return dict(
        python=platform.python_version(),
        torch=torch.__version__,
        keras=keras.__version__,
        numpy=np.__version__,
        keras_attention=keras_attention.__version__,
    )


def targets_table(targets):
    """The `## Targets` section of a report's Markdown, as lines: one row
    per target (`target`, `goal`, `measured`, `met`)."""
    lines = [
        "## Targets",
        "",
        "| target | goal | measured | met |",
        "|---|---|---|---|",
    ]
    for target in targets:
        lines.append(
            f"| {target['target']} | {target['goal']} | {target['measured']} "
            f"| {'yes' if target['met'] else '**no**'} |"
        )
    return lines


class _NoRetracingWarning(logging.Filter):
    def filter(self, record):
        return "triggered tf.function retracing" not in record.getMessage()


_NO_RETRACING_WARNING = _NoRetracingWarning()


def compile_call(layer, fn):
    """`fn(call, *args)` compiled for the backend, `call` calling `layer`.

    TensorFlow: a `tf.function(jit_compile=False, autograph=False)` that
    captures the layer's variables. JAX: `jax.jit` of the layer's
    `stateless_call` with the variables' current values as arguments (take
    them after `set_weights`). Returns `(compiled, traces)`, `traces()` the
    number of traces (compilations) so far, or None if unknown.
    """
    import keras

    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        # Every tf.function here is traced once (the report counts the
        # traces); TensorFlow warns about "retracing" because they all wrap
        # the same Python lambda.
        tf.get_logger().addFilter(_NO_RETRACING_WARNING)
        compiled = tf.function(
            lambda *args: fn(layer, *args),
            jit_compile=False,
            autograph=False,
        )
        return compiled, compiled.experimental_get_tracing_count
    if backend == "jax":
        import jax

        def pure(trainable, non_trainable, *args):
            def call(*call_args, **kwargs):
                outputs, _ = layer.stateless_call(
                    trainable, non_trainable, *call_args, **kwargs
                )
                return outputs

            return fn(call, *args)

        jitted = jax.jit(pure)
        trainable = [v.value for v in layer.trainable_variables]
        non_trainable = [v.value for v in layer.non_trainable_variables]

        def traces():
            size = getattr(jitted, "_cache_size", None)
            return size() if callable(size) else None

        return (lambda *args: jitted(trainable, non_trainable, *args)), traces
    raise ValueError(
        "Compiled benchmark calls run on the TensorFlow and JAX backends. "
        f"Received: KERAS_BACKEND={backend}"
    )
