"""What regenerating dropout masks costs the chunked kernel, per generator.

The chunked kernel's dropout draws each `(batch, heads, q_chunk, k_chunk)`
block's keep mask from a stateless seed, once in the forward pass and again
in the recomputing backward. This measures, for one block of the size
`chunk_size="auto"` uses (`AUTO_CHUNK` x `AUTO_KEY_CHUNK`, 8 heads), the time
of each keep-mask generator that `keras.ops` / `keras.random` offers, next to
the block's two attention matmuls (`q @ k^T` and `p @ v`, head dim 64):

- `random.uniform`: `keras.random.uniform` with a stateless seed (TensorFlow:
  Philox `stateless_uniform`; JAX: threefry; PyTorch: a `torch.Generator`
  seeded per call, Mersenne Twister on the CPU).
- `random.randint`: `keras.random.randint` drawing int32 bits (the same
  generators, no float conversion).
- `randint16`: `keras.random.randint` drawing one 32-bit word per two
  elements, whose low and high 16 bits are compared with a 16-bit threshold
  (`_chunked._philox_keep`, the kernel's generator except under JAX).
- `hash32`: a counter-based integer hash (lowbias32) of the element's index
  and the seed in `keras.ops` integer arithmetic, one 32-bit draw per
  element.
- `hash16`: the same hash, one 32-bit draw per two elements (two 16-bit
  halves compared with a 16-bit threshold).

Each backend runs in its own subprocess, compiled (`tf.function` / `jax.jit`),
except PyTorch, which runs eagerly, as Keras' torch backend does (on the
CPU). Under PyTorch every `keras.random` draw with a tensor seed builds a
`torch.Generator` and reads the seed back to Python (`int()`).

Usage:
    python -m benchmarks.dropout_rng [--reps 20] [--smoke]

Writes `benchmarks/results/dropout-rng-cpu-<date>.json` and `.md` (or
`--name`'s stem).
"""

import argparse
import datetime
import json
import os
import subprocess
import sys
import time

from benchmarks._common import RESULTS_DIR
from benchmarks._common import cpu_description
from benchmarks._common import write_report

BACKENDS = ("tensorflow", "jax", "torch")


def _worker(backend, shape, reps):
    os.environ["KERAS_BACKEND"] = backend
    import keras
    import numpy as np
    from keras import ops

    from keras_attention.ops import _chunked

    b, n, cq, ck, d = shape
    rate = 0.1
    rng = np.random.default_rng(0)
    q = ops.convert_to_tensor(rng.standard_normal((b, n, cq, d)), "float32")
    k = ops.convert_to_tensor(rng.standard_normal((b, n, ck, d)), "float32")
    v = ops.convert_to_tensor(rng.standard_normal((b, n, ck, d)), "float32")
    key = ops.convert_to_tensor([12345, 678], "int32")

    def matmuls(q, k, v, key):
        s = ops.matmul(q, ops.swapaxes(k, -1, -2))
        return ops.matmul(s, v)

    def uniform(q, k, v, key):
        u = keras.random.uniform(
            (b, n, cq, ck), seed=_chunked.StatelessSeed(key)
        )
        return ops.sum(ops.cast(u >= rate, "float32"))

    def randint(q, k, v, key):
        u = keras.random.randint(
            (b, n, cq, ck),
            -(2**31),
            2**31 - 1,
            dtype="int32",
            seed=_chunked.StatelessSeed(key),
        )
        return ops.sum(ops.cast(u >= -(2**31) + int(rate * 2**32), "float32"))

    def randint16(q, k, v, key):
        keep = _chunked._philox_keep(key, (b, n, cq, ck), rate)
        return ops.sum(ops.cast(keep, "float32"))

    def hash32(q, k, v, key):
        block = _chunked._block_hash(key, 0, 0)
        x = _chunked._index_bits(block, (b, n, cq, ck), False)
        return ops.sum(ops.cast(x >= int(rate * 2**32) - 2**31, "float32"))

    def hash16(q, k, v, key):
        block = _chunked._block_hash(key, 0, 0)
        x = _chunked._index_bits(block, (b, n, cq, ck // 2), False)
        low = ops.bitwise_and(x, 0xFFFF)
        high = ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF)
        keep = ops.concatenate([low, high], axis=-1) >= int(rate * 2**16)
        return ops.sum(ops.cast(keep, "float32"))

    fns = dict(
        matmuls=matmuls,
        **{"random.uniform": uniform, "random.randint": randint},
        randint16=randint16,
        hash32=hash32,
        hash16=hash16,
    )
    results = {}
    for name, fn in fns.items():
        if backend == "jax":
            import jax

            compiled = jax.jit(fn)

            def run():
                return jax.block_until_ready(compiled(q, k, v, key))
        elif backend == "torch":

            def run(fn=fn):
                return ops.convert_to_numpy(fn(q, k, v, key))
        else:
            import tensorflow as tf

            compiled = tf.function(fn, jit_compile=False)

            def run():
                return compiled(q, k, v, key).numpy()

        run()
        run()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            run()
            times.append(time.perf_counter() - start)
        results[name] = float(np.median(times))
    return results


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument(
        "--name", help="result file stem (default dropout-rng-cpu-<date>)"
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    shape = (1, 8, 512, 1024, 64) if not args.smoke else (1, 2, 16, 32, 8)
    reps = args.reps if not args.smoke else 2
    if args.worker:
        print(json.dumps(_worker(args.worker, shape, reps)))
        return 0
    report = dict(
        shape=dict(zip(("batch", "heads", "q_chunk", "k_chunk", "dim"), shape)),
        reps=reps,
        machine=cpu_description(),
        date=datetime.date.today().isoformat(),
        command="python -m benchmarks.dropout_rng "
        + " ".join(argv or sys.argv[1:]),
        backends={},
    )
    for backend in BACKENDS:
        out = subprocess.run(
            [sys.executable, "-m", "benchmarks.dropout_rng", "--worker"]
            + [backend, "--reps", str(args.reps)]
            + (["--smoke"] if args.smoke else []),
            capture_output=True,
            text=True,
            env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
            | ({"CUDA_VISIBLE_DEVICES": ""} if backend == "torch" else {}),
            check=True,
        )
        report["backends"][backend] = json.loads(out.stdout.splitlines()[-1])
    lines = [
        "# Dropout keep-mask generators, one block",
        "",
        f"Block {shape[:4]} (batch, heads, q_chunk, k_chunk), head dim "
        f"{shape[4]}; median of {reps} calls (compiled; eager under "
        f"PyTorch); {report['machine']}; {report['date']}. Command: "
        f"`{report['command'].strip()}`.",
        "",
        "| backend | " + " | ".join(report["backends"]["jax"]) + " |",
        "|---|" + "---|" * len(report["backends"]["jax"]),
    ]
    for backend, times in report["backends"].items():
        mm = times["matmuls"]
        cells = [f"{t * 1e3:.2f} ms ({t / mm:.2f}x)" for t in times.values()]
        lines.append(f"| {backend} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("Ratios are to the block's two matmuls.")
    text = "\n".join(lines) + "\n"
    print(text)
    if not args.smoke or args.name:
        stem = args.name or f"dropout-rng-cpu-{report['date']}"
        write_report(report, text, args.output_dir, stem)
    return 0


if __name__ == "__main__":
    sys.exit(main())
