"""`"auto"`'s inference blocks on one backend: whole rows (a block of
queries against all the keys, one softmax) against the online softmax's
training blocks, on one thread, for the forward pass of the op outside any
gradient (`flash_attention=False`, 8 heads x 64, float32, batch 1),
interleaved rounds.

Usage:
    KERAS_BACKEND=torch python -m benchmarks.whole_rows [--lengths 2048 4096]
        [--rounds 3]

Writes `benchmarks/results/whole-rows-<backend>-<machine>-<date>.md`.
"""

import argparse
import datetime
import os
import time

import numpy as np

from benchmarks._common import RESULTS_DIR
from benchmarks._common import machine_name
from benchmarks._common import versions


def _time(fn):
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def measure(lengths, rounds):
    import keras

    from keras_attention.ops import attention
    from keras_attention.ops import scaled_dot_product_attention

    backend = keras.backend.backend()
    rng = np.random.default_rng(0)
    rows = {}
    for length in lengths:
        q = keras.ops.convert_to_tensor(
            rng.standard_normal((1, length, 8, 64)).astype("float32")
        )

        def run():
            out = scaled_dot_product_attention(q, q, q, flash_attention=False)
            keras.ops.convert_to_numpy(out[0, 0, 0, 0])

        original = attention._whole_row_chunks
        times = {"whole rows": [], "online": []}
        run()  # warm-up
        for _ in range(rounds):
            for name in times:
                if name == "online":
                    attention._whole_row_chunks = lambda *args: None
                try:
                    if backend == "torch":
                        import torch

                        with torch.no_grad():
                            times[name].append(_time(run))
                    else:
                        times[name].append(_time(run))
                finally:
                    attention._whole_row_chunks = original
        rows[length] = {k: float(np.median(v)) for k, v in times.items()}
    return backend, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[2048, 4096])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args(argv)
    backend = os.environ.get("KERAS_BACKEND", "tensorflow")
    if backend == "torch":
        import torch

        torch.set_num_threads(1)
    backend, rows = measure(args.lengths, args.rounds)
    date = datetime.date.today().isoformat()
    lines = [
        f"# Whole rows against the online softmax, {backend}",
        "",
        f"`KERAS_BACKEND={backend} python -m benchmarks.whole_rows "
        f"--lengths {' '.join(map(str, args.lengths))} --rounds "
        f"{args.rounds}` on {machine_name()}, one thread, {date}; "
        f"versions: {versions(backend)}.",
        "",
        "| length | whole rows (s) | online (s) | whole rows / online |",
        "|---|---|---|---|",
    ]
    for length, t in rows.items():
        ratio = t["whole rows"] / t["online"]
        lines.append(
            f"| {length} | {t['whole rows']:.3f} | {t['online']:.3f} | "
            f"{ratio:.2f}x |"
        )
    path = os.path.join(
        RESULTS_DIR, f"whole-rows-{backend}-{machine_name()}-{date}.md"
    )
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
