"""Graph breaks of one call under `torch.compile`, ours against Keras core.

Keras' torch backend runs eagerly unless a model is compiled with
`jit_compile=True`, which hands the step to `torch.compile`. A graph break
splits the compiled step into separate graphs, with Python in between.
This counts them with `torch._dynamo.explain` for one call of each
`MultiHeadAttention` (ours and Keras core, the same weights and input):
the forward pass (`layer(x, x)`) and the train step (the call with
`training=True`, the sum of squares, `torch.autograd.grad` with respect to
the input and all weights), in two cases:

- `dense`: no dropout, `chunk_size="auto"` (dense at this length);
- `chunked, dropout`: `dropout=0.1`, ours with `chunk_size=` a quarter of
  the length (4 x 4 blocks); Keras core has no such argument.

Each break is reported with its reason and the innermost frame of the
stack that caused it (in keras_attention where there is one).

Usage:
    python -m benchmarks.torch_graph_breaks    # a few minutes on 2 cores

Writes `benchmarks/results/graph-breaks-torch-cpu-<arch>-<n>cores-<date>`
`.json` and `.md`.
"""

import argparse
import collections
import datetime
import os
import sys
import time

os.environ["KERAS_BACKEND"] = "torch"
os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the CPU, as the attention benchmark

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch._dynamo as dynamo  # noqa: E402

import keras_attention  # noqa: E402
from benchmarks._common import RESULTS_DIR  # noqa: E402
from benchmarks._common import machine_name  # noqa: E402
from benchmarks._common import versions  # noqa: E402
from benchmarks._common import write_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _where(reason):
    """The innermost frame of a break's stack in keras_attention, else in
    Keras, else any, as `path:line (function)` (relative to site-packages
    or the repository)."""
    frames = list(reason.user_stack or [])
    for package in ("keras_attention", "keras"):
        mine = [f for f in frames if f"/{package}/" in f.filename]
        if mine:
            frames = mine
            break
    if not frames:
        return "-"
    frame = frames[-1]
    path = frame.filename
    for root in (ROOT + os.sep, "site-packages" + os.sep):
        if root in path:
            path = path[path.index(root) + len(root) :]
            break
    return f"{path}:{frame.lineno} ({frame.name})"


def _explain(fn, x):
    dynamo.reset()
    start = time.perf_counter()
    explained = dynamo.explain(fn)(x)
    seconds = time.perf_counter() - start
    reasons = collections.Counter(
        (r.reason.strip().splitlines()[0][:160], _where(r))
        for r in explained.break_reasons
    )
    return dict(
        graphs=explained.graph_count,
        graph_breaks=explained.graph_break_count,
        break_reasons=len(explained.break_reasons),
        ops=explained.op_count,
        seconds=seconds,
        reasons=[
            dict(reason=reason, where=where, count=count)
            for (reason, where), count in reasons.most_common()
        ],
    )


def measure(impl, case, batch, length, heads, head_dim):
    options = {}
    if case == "chunked, dropout":
        options["dropout"] = 0.1
        if impl == "ours":
            options["chunk_size"] = length // 4
    cls = (
        keras_attention.MultiHeadAttention
        if impl == "ours"
        else keras.layers.MultiHeadAttention
    )
    layer = cls(num_heads=heads, key_dim=head_dim, **options)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((batch, length, heads * head_dim), "float32")
    layer(x[:, :8], x[:, :8])
    weights = np.random.default_rng(0)
    layer.set_weights(
        [
            weights.standard_normal(w.shape).astype("float32") * 0.1
            for w in layer.get_weights()
        ]
    )
    x = keras.ops.convert_to_tensor(x)
    trainable = [v.value for v in layer.trainable_variables]

    def forward(x):
        return layer(x, x)

    def train(x):
        out = layer(x, x, training=True)
        loss = torch.sum(out * out)
        return torch.autograd.grad(loss, [x] + trainable)

    return dict(
        forward=_explain(forward, x),
        train=_explain(train, x.detach().requires_grad_(True)),
    )


def markdown(report):
    lines = [
        f"# Graph breaks under `torch.compile`: {report['machine']}, "
        f"{report['date']}",
        "",
        f"Command: `{report['command']}`. Versions: {report['versions']}.",
        "",
        f"One call, `torch._dynamo.explain`; MultiHeadAttention, "
        f"B={report['batch']}, L={report['length']}, {report['heads']} "
        f"heads x {report['head_dim']}, float32. Graph breaks as `explain` "
        "counts them (`graph_break_count`), and its `break_reasons`.",
        "",
        "| case | mode | ours: graphs | ours: breaks | ours: reasons | "
        "Keras: graphs | Keras: breaks | Keras: reasons |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        o, k = row["ours"], row["keras"]
        lines.append(
            f"| {row['case']} | {row['mode']} | {o['graphs']} | "
            f"{o['graph_breaks']} | {o['break_reasons']} | {k['graphs']} | "
            f"{k['graph_breaks']} | {k['break_reasons']} |"
        )
    lines += ["", "## Break reasons", ""]
    for row in report["rows"]:
        for impl in ("ours", "keras"):
            reasons = row[impl]["reasons"]
            if not reasons:
                continue
            lines.append(f"{impl}, {row['case']}, {row['mode']}:")
            lines += [
                f"- {r['count']} x {r['reason']} (at `{r['where']}`)"
                for r in reasons
            ]
            lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument(
        "--name",
        help="result file stem (default graph-breaks-<machine>-<date>)",
    )
    args = parser.parse_args(argv)
    batch, heads, head_dim = 1, 2, 8
    length = args.length
    report = dict(
        machine=machine_name({"platform": "cpu"}, "torch"),
        date=datetime.date.today().isoformat(),
        command=" ".join(
            ["python -m benchmarks.torch_graph_breaks"]
            + (argv if argv is not None else sys.argv[1:])
        ),
        versions=versions("torch"),
        batch=batch,
        length=length,
        heads=heads,
        head_dim=head_dim,
        rows=[],
    )
    for case in ("dense", "chunked, dropout"):
        results = {
            impl: measure(impl, case, batch, length, heads, head_dim)
            for impl in ("ours", "keras")
        }
        for mode in ("forward", "train"):
            report["rows"].append(
                dict(
                    case=case,
                    mode=mode,
                    ours=results["ours"][mode],
                    keras=results["keras"][mode],
                )
            )
    text = markdown(report)
    print(text)
    stem = args.name or f"graph-breaks-{report['machine']}-{report['date']}"
    write_report(report, text, args.output_dir, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
