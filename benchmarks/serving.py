"""Latency of an exported signature against a direct call of the Keras model.

The model is the quickstart classifier (`examples/quickstart.py`: our three
layers on padded token sequences of length 24). It is exported with
`keras_attention.serving.export_saved_model`, and the benchmark times, at
batch 1 and 32, interleaved in one process:

- `direct`: the Keras model called inside a `tf.function` with the serving
  input signature (batch and length dynamic, `(None, None)`), the
  like-for-like baseline;
- `direct_static`: the same, traced for each input shape (what a plain
  `tf.function` does): it sees static shapes, which a served model cannot;
- `signature`: `tf.saved_model.load(path).signatures["serving_default"]`;
- `session`: the export loaded as TF Serving loads it (the v1 SavedModel
  loader with the `serve` tag, `Session.run` on the signature's tensors).

Target: signature <= 1.1x direct. Both ratios are reported.

Usage:
    python -m benchmarks.serving            # about a minute
    python -m benchmarks.serving --smoke    # seconds; used by the tests

Writes `benchmarks/results/serving-<machine>-<date>.json` and `.md`.
"""

import argparse
import datetime
import importlib.util
import os
import sys
import tempfile
import time

import numpy as np

from benchmarks._common import RESULTS_DIR
from benchmarks._common import machine_name
from benchmarks._common import versions
from benchmarks._common import write_report

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = 1.1


def _quickstart():
    spec = importlib.util.spec_from_file_location(
        "quickstart", os.path.join(ROOT, "examples", "quickstart.py")
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _time(fn, reps):
    fn()  # warm up
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def run(batches, reps, rounds):
    import keras
    import tensorflow as tf

    from keras_attention import serving

    quickstart = _quickstart()
    keras.utils.set_random_seed(0)
    model = quickstart.build_model()
    tokens, _ = quickstart.make_data(max(batches), 0)
    with tempfile.TemporaryDirectory() as tmp:
        path = serving.export_saved_model(model, os.path.join(tmp, "q"))
        signature = tf.saved_model.load(path).signatures["serving_default"]
        direct_static = tf.function(lambda t: model(t, training=False))
        direct = tf.function(
            lambda t: model(t, training=False),
            input_signature=[tf.TensorSpec((None, None), tf.int32)],
        )
        graph = tf.Graph()
        session = tf.compat.v1.Session(graph=graph)
        with graph.as_default():
            meta = tf.compat.v1.saved_model.loader.load(
                session, ["serve"], path
            )
        sig_def = meta.signature_def["serving_default"]
        feed_name = sig_def.inputs["tokens"].name
        fetch_name = sig_def.outputs["probabilities"].name
        rows = []
        for batch in batches:
            x = tf.constant(tokens[:batch])
            x_np = tokens[:batch]
            calls = {
                "direct": lambda: direct(x).numpy(),
                "direct_static": lambda: direct_static(x).numpy(),
                "signature": lambda: signature(tokens=x)[
                    "probabilities"
                ].numpy(),
                "session": lambda: session.run(fetch_name, {feed_name: x_np}),
            }
            outputs = {k: np.asarray(fn()) for k, fn in calls.items()}
            for k in ("signature", "session", "direct_static"):
                np.testing.assert_allclose(
                    outputs[k], outputs["direct"], atol=1e-5
                )
            times = {k: [] for k in calls}
            for _ in range(rounds):  # interleaved rounds
                for k, fn in calls.items():
                    times[k] += _time(fn, reps)
            medians = {k: float(np.median(v)) for k, v in times.items()}
            rows.append(
                dict(
                    batch=batch,
                    sequence_length=int(tokens.shape[1]),
                    median_ms={k: 1e3 * v for k, v in medians.items()},
                    ratio_signature=medians["signature"] / medians["direct"],
                    ratio_session=medians["session"] / medians["direct"],
                    ratio_signature_static=medians["signature"]
                    / medians["direct_static"],
                    samples=len(times["direct"]),
                )
            )
        session.close()
    return rows


def markdown(report):
    lines = [
        f"# Serving latency: {report['machine']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Versions: {report['versions']}.",
        "",
        "Model: the quickstart classifier (MultiHeadAttention, "
        "AdditiveAttention, AttentionPooling), token sequences of length "
        f"{report['rows'][0]['sequence_length']}. Median milliseconds per "
        "call, each including the copy of the result to NumPy; the four "
        "calls interleaved in one process. `direct`: the Keras model in a "
        "`tf.function` with the serving input signature (dynamic batch and "
        "length, as an export needs). `direct_static`: a `tf.function` "
        "traced per input shape, which sees static shapes; the gap to it is "
        "the cost of dynamic shapes, not of the export. `session`: the "
        "export run as TF Serving runs it (v1 loader, `serve` tag, "
        "`Session.run`).",
        "",
        "| batch | direct | direct_static | signature | session | "
        f"signature / direct (target <= {TARGET}) | session / direct | "
        "signature / direct_static | met |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["rows"]:
        ms = r["median_ms"]
        met = "yes" if r["ratio_signature"] <= TARGET else "**no**"
        lines.append(
            f"| {r['batch']} | {ms['direct']:.3f} ms | "
            f"{ms['direct_static']:.3f} ms | "
            f"{ms['signature']:.3f} ms | {ms['session']:.3f} ms | "
            f"{r['ratio_signature']:.2f}x | {r['ratio_session']:.2f}x | "
            f"{r['ratio_signature_static']:.2f}x | {met} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument("--name")
    args = parser.parse_args(argv)
    if args.smoke:
        rows = run(batches=(1, 4), reps=3, rounds=1)
    else:
        rows = run(batches=(1, 32), reps=50, rounds=5)
    date = datetime.date.today().isoformat()
    report = dict(
        machine=machine_name(),
        date=date,
        command="python -m benchmarks.serving"
        + (" --smoke" if args.smoke else ""),
        versions=versions(),
        target=TARGET,
        rows=rows,
    )
    name = args.name or f"serving-{report['machine']}-{date}"
    text = markdown(report)
    write_report(report, text, args.output_dir, name)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
