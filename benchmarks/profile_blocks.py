"""Where the time of the chunked kernel goes, block by block (TensorFlow, CPU).

The profile behind `results/*-profile.md`: it times, in one process and
interleaved, the operations that one block of the chunked kernel runs (8
heads, 512 queries x 1024 keys, head dim 64), and the train step of the whole
layer split into forward and backward, for ours and Keras core.

    python -m benchmarks.profile_blocks [--length 8192] [--reps 15]
"""

import argparse
import datetime
import os
import sys
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")


def _median_ms(fns, reps):
    times = {name: [] for name in fns}
    for fn, args in fns.values():
        fn(*args)
    for _ in range(reps):
        for name, (fn, args) in fns.items():
            start = time.perf_counter()
            out = fn(*args)
            for o in out if isinstance(out, (list, tuple)) else [out]:
                o.numpy()
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * float(np.median(t)) for name, t in times.items()}


def block_ops(reps):
    import tensorflow as tf
    from keras import ops

    rng = np.random.default_rng(0)

    def const(*shape):
        return tf.constant(rng.standard_normal(shape).astype("float32"))

    q, k, v = const(1, 8, 512, 64), const(1, 8, 1024, 64), const(1, 8, 1024, 64)
    s = const(1, 8, 512, 1024)
    row = const(1, 8, 512, 1)

    def fn(f):
        return tf.function(f, autograph=False)

    fns = {
        "matmul q.k^T (512x64 . 64x1024)": (
            fn(lambda q, k: ops.matmul(q, ops.swapaxes(k, -1, -2))),
            (q, k),
        ),
        "matmul p.v (512x1024 . 1024x64)": (
            fn(lambda s, v: ops.matmul(s, v)),
            (s, v),
        ),
        "matmul with a transposed block operand": (
            fn(lambda s, q: ops.matmul(ops.swapaxes(s, -1, -2), q)),
            (s, q),
        ),
        "matmul then subtract a row vector": (
            fn(lambda q, k, r: ops.matmul(q, ops.swapaxes(k, -1, -2)) - r),
            (q, k, row),
        ),
        "shifted matmul [q, r] . [k, 1]^T (one pass)": (
            fn(
                lambda q, k, r: ops.matmul(
                    ops.concatenate([q, r], -1),
                    ops.swapaxes(
                        ops.concatenate([k, ops.ones_like(k[..., :1])], -1),
                        -1,
                        -2,
                    ),
                )
            ),
            (q, k, row),
        ),
        "softmax (fused)": (fn(lambda s: ops.softmax(s, axis=-1)), (s,)),
        "exp(s - max) (two passes)": (
            fn(lambda s, r: ops.exp(s - r)),
            (s, row),
        ),
        "row max (a reduction)": (
            fn(lambda s: ops.max(s, axis=-1)),
            (s,),
        ),
        "elementwise multiply": (fn(lambda s: s * s), (s,)),
    }
    return _median_ms(fns, reps)


def layer_split(length, reps):
    import keras
    import tensorflow as tf

    import keras_attention as ka

    x = tf.constant(
        np.random.default_rng(0)
        .standard_normal((1, length, 512))
        .astype("float32")
    )
    fns = {}
    for name, layer in (
        ("ours", ka.MultiHeadAttention(8, 64)),
        ("keras", keras.layers.MultiHeadAttention(8, 64)),
    ):
        layer(x[:, :8], x[:, :8])

        def forward(x, layer=layer):
            return layer(x, x)

        def train(x, layer=layer):
            with tf.GradientTape() as tape:
                tape.watch(x)
                out = layer(x, x)
                loss = tf.reduce_sum(out * out)
            return tape.gradient(loss, [x] + layer.trainable_weights)

        fns[f"{name} forward"] = (tf.function(forward), (x,))
        fns[f"{name} train step"] = (tf.function(train), (x,))
    return _median_ms(fns, reps)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    args = parser.parse_args(argv)

    blocks = block_ops(args.reps)
    split = layer_split(args.length, max(3, args.reps // 5))
    from benchmarks._common import machine_name
    from benchmarks._common import versions

    lines = [
        f"# Profile of the chunked kernel: {machine_name()}, "
        f"{datetime.date.today().isoformat()}",
        "",
        f"Command: `python -m benchmarks.profile_blocks --length "
        f"{args.length} --reps {args.reps}`. {versions()}.",
        "",
        "## One block: 8 heads x 512 queries x 1024 keys, head dim 64",
        "",
        "Median ms per call, interleaved in one process (each includes "
        "reading the result back, about the same for all).",
        "",
        "| operation | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ms:.3f} |" for name, ms in blocks.items()]
    lines += [
        "",
        f"## MultiHeadAttention, B=1, L={args.length}, 8 heads x 64",
        "",
        "| | ms |",
        "|---|---|",
    ]
    lines += [f"| {name} | {ms:.1f} |" for name, ms in split.items()]
    for impl in ("ours", "keras"):
        backward = split[f"{impl} train step"] - split[f"{impl} forward"]
        lines.append(
            f"| {impl} backward (train step - forward) | {backward:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    os.makedirs(args.output_dir, exist_ok=True)
    path = os.path.join(
        args.output_dir,
        f"{machine_name()}-{datetime.date.today().isoformat()}-profile.md",
    )
    with open(path, "w") as f:
        f.write(text)
    print(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
