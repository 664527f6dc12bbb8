"""What our SavedModel exports hold: graph (`saved_model.pb`) against
variables, and where the graph's bytes go.

For every committed export under `saved_models/<name>/<version>/`: the size
of `saved_model.pb`, of `variables/`, the float bytes of the variables the
checkpoint holds (each stored once), and the graph's bytes in
branches and loops (functions whose names contain `cond_`, `while` or
`map_`): the run-time kernel choice of `chunk_size="auto"` with its chunked
kernel, and generation loops.

Then the quickstart model exported twice, with the layers' default
`chunk_size="auto"` (lengths unknown at export: both kernels are in the
graph, chosen per request) and with `chunk_size=None` (dense only), and
their served outputs compared on test sequences.

Then the same two models in every format (`serving.export_model`): the
size of the version's model files, the first call (loading the file on its
runtime and running one batch, as a server's first request) and the median
of later calls on the same batch, each against the Keras model's outputs.

Usage:
    python -m benchmarks.export_size          # about 2 minutes (TensorFlow)
    python -m benchmarks.export_size --smoke  # no committed exports; ONNX
                                              # and LiteRT with "auto" only

Writes `benchmarks/results/export-size-<date>.json` and `.md`.
"""

import argparse
import datetime
import os
import sys
import tempfile
import time

import keras
import numpy as np
import tensorflow as tf
from tensorflow.core.protobuf import saved_model_pb2

import keras_attention as ka
from benchmarks._common import versions
from benchmarks._common import write_report
from keras_attention.serving import _export
from keras_attention.serving import _formats
from keras_attention.serving import _runtimes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KERNEL_CHOICE = ("cond_", "while", "map_")


def _directory_bytes(path):
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )


def graph_breakdown(path):
    model = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        model.ParseFromString(f.read())
    library = model.meta_graphs[0].graph_def.library
    choice = sum(
        f.ByteSize()
        for f in library.function
        if any(k in f.signature.name for k in KERNEL_CHOICE)
    )
    reader = tf.train.load_checkpoint(
        os.path.join(path, "variables", "variables")
    )
    shapes = reader.get_variable_to_shape_map()
    dtypes = reader.get_variable_to_dtype_map()
    weights = sum(
        int(np.prod(shape)) * dtypes[name].size
        for name, shape in shapes.items()
        if dtypes[name].is_floating
    )
    return dict(
        saved_model_pb=os.path.getsize(os.path.join(path, "saved_model.pb")),
        variables=_directory_bytes(os.path.join(path, "variables")),
        checkpoint_float_bytes=weights,
        functions=len(library.function),
        kernel_choice_bytes=choice,
    )


def committed():
    rows = {}
    base = os.path.join(ROOT, "saved_models")
    for name in sorted(os.listdir(base)):
        model_dir = os.path.join(base, name)
        if not os.path.isdir(model_dir):
            continue
        for version in sorted(os.listdir(model_dir)):
            path = os.path.join(model_dir, version)
            if os.path.isfile(os.path.join(path, "saved_model.pb")):
                rows[f"{name}/{version}"] = graph_breakdown(path)
    return rows


def _quickstart(chunk_size):
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        import quickstart
    finally:
        sys.path.pop(0)
    keras.utils.set_random_seed(0)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(quickstart.VOCAB, 32, mask_zero=True)(tokens)
    context = ka.MultiHeadAttention(4, 8, chunk_size=chunk_size)(x, x)
    hidden = keras.layers.LayerNormalization()(keras.layers.Add()([x, context]))
    attended = ka.AdditiveAttention(16, chunk_size=chunk_size)(hidden, x)
    pooled = ka.AttentionPooling(16, num_heads=2)(
        keras.layers.Concatenate()([hidden, attended])
    )
    outputs = keras.layers.Dense(2, "softmax", name="probabilities")(pooled)
    return keras.Model(tokens, outputs), quickstart.make_data(64, 1)[0]


def chunk_size_variants():
    served, rows = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for chunk_size in ("auto", None):
            model, tokens = _quickstart(chunk_size)
            path = _export.export_saved_model(
                model, os.path.join(tmp, str(chunk_size))
            )
            rows[str(chunk_size)] = graph_breakdown(path)
            serve = tf.saved_model.load(path).signatures["serving_default"]
            served[chunk_size] = serve(tokens=tf.constant(tokens))[
                "probabilities"
            ].numpy()
    diff = float(np.abs(served["auto"] - served[None]).max())
    return rows, diff


def _load_and_run(fmt, path, tokens):
    """`(run, outputs, seconds)`: the export loaded afresh on its runtime,
    and its first call on `tokens` timed with the load."""
    start = time.perf_counter()
    if fmt == "tf_saved_model":
        serve = tf.saved_model.load(path).signatures["serving_default"]

        def run():
            return serve(tokens=tf.constant(tokens))["probabilities"].numpy()

    else:
        call = _runtimes.runner(
            os.path.join(path, _runtimes.FORMATS[fmt][0]), 1
        )

        def run():
            return call({"tokens": tokens})[0]

    outputs = run()
    return run, outputs, time.perf_counter() - start


def format_variants(formats, chunk_sizes):
    """Each format's size, first call and later calls, for the quickstart
    model with each `chunk_size`."""
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for chunk_size in chunk_sizes:
            model, tokens = _quickstart(chunk_size)
            expected = model.predict(tokens, verbose=0)
            for fmt in formats:
                start = time.perf_counter()
                path = _formats.export_model(
                    model,
                    os.path.join(tmp, f"{fmt}-{chunk_size}"),
                    fmt,
                    sample_inputs={"tokens": tokens[:2]},
                    check=False,
                )
                export_seconds = time.perf_counter() - start
                run, outputs, first = _load_and_run(fmt, path, tokens)
                later = []
                for _ in range(10):
                    start = time.perf_counter()
                    run()
                    later.append(time.perf_counter() - start)
                files = [
                    n
                    for n in os.listdir(path)
                    if n.startswith("model") or n in ("saved_model.pb",)
                ] + (["variables"] if fmt == "tf_saved_model" else [])
                rows[f"{fmt} / {chunk_size}"] = dict(
                    format=fmt,
                    chunk_size=str(chunk_size),
                    model_bytes=sum(
                        _directory_bytes(os.path.join(path, n))
                        if os.path.isdir(os.path.join(path, n))
                        else os.path.getsize(os.path.join(path, n))
                        for n in files
                    ),
                    export_seconds=export_seconds,
                    first_call_seconds=first,
                    later_call_seconds=float(np.median(later)),
                    max_abs_diff=float(np.abs(outputs - expected).max()),
                    batch=list(tokens.shape),
                )
    return rows


def markdown(report):
    lines = [
        "# Export sizes",
        "",
        f"{report['date']}; {report['versions']}; `{report['command']}`.",
        "",
        "| export | saved_model.pb | variables/ | float weights in the "
        "checkpoint | graph bytes in branches and loops |",
        "|---|---|---|---|---|",
    ]

    def row(name, r):
        return (
            f"| {name} | {r['saved_model_pb'] / 1e3:.0f} KB | "
            f"{r['variables'] / 1e3:.0f} KB | "
            f"{r['checkpoint_float_bytes'] / 1e3:.0f} KB | "
            f"{r['kernel_choice_bytes'] / 1e3:.0f} KB "
            f"({r['kernel_choice_bytes'] / r['saved_model_pb']:.0%}) |"
        )

    lines += [row(n, r) for n, r in report["committed"].items()]
    lines += [
        "",
        "Quickstart model, both layers' `chunk_size`:",
        "",
        "| chunk_size | saved_model.pb | graph bytes in branches and loops |",
        "|---|---|---|",
    ]
    for name, r in report["chunk_size"].items():
        lines.append(
            f"| {name} | {r['saved_model_pb'] / 1e3:.0f} KB | "
            f"{r['kernel_choice_bytes'] / 1e3:.0f} KB |"
        )
    lines += [
        "",
        "Served outputs, `auto` against `None`, on 64 test sequences: max "
        f"abs diff {report['served_max_abs_diff']:.1e}.",
        "",
        "Quickstart model in every format (`serving.export_model`; model "
        "files only; first call = load the file on its runtime and run one "
        "batch; later calls = median of 10 on the same batch; max abs diff "
        "against the Keras model):",
        "",
        "| format / chunk_size | model files | export | first call | later "
        "calls | batch | max abs diff |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, r in report["formats"].items():
        lines.append(
            f"| {name} | {r['model_bytes'] / 1e3:.0f} KB | "
            f"{r['export_seconds']:.1f} s | "
            f"{r['first_call_seconds'] * 1e3:.0f} ms | "
            f"{r['later_call_seconds'] * 1e3:.1f} ms | "
            f"{r['batch']} | {r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--output-dir", default=os.path.join(ROOT, "benchmarks", "results")
    )
    parser.add_argument("--name", default=None)
    parser.add_argument("--smoke", action="store_true")
    args = parser.parse_args(argv)
    rows, diff = chunk_size_variants()
    report = dict(
        date=datetime.date.today().isoformat(),
        versions=versions(),
        command="python -m benchmarks.export_size",
        committed={} if args.smoke else committed(),
        chunk_size=rows,
        served_max_abs_diff=diff,
        formats=format_variants(
            ("onnx", "litert") if args.smoke else _formats.FORMATS,
            ("auto",) if args.smoke else ("auto", None),
        ),
    )
    text = markdown(report)
    print(text)
    stem = args.name or f"export-size-{report['date']}"
    write_report(report, text, args.output_dir, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
