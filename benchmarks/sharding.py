"""Parameter memory per device under `keras_attention.distribution`'s
head-sharded layout, on virtual CPU devices (JAX).

The model: `examples/text_generation.py`'s decoder-only LM at a size where
the weights dominate (`--hidden-dim 512`, 4 blocks, 8 query heads, 2
key/value heads, feed-forward 2048, vocabulary 8192). For each mesh
`(batch, model)` it builds the model under `ModelParallel` with
`layout_map(mesh, template)` and adds up the bytes of every weight's shard
on device 0 (`addressable_shards[0]`), against the whole model's bytes; the
same with `fsdp=True`. One forward on a batch of token ids is checked
against the unsharded model (max abs difference, reported).

Usage (8 virtual devices; the script sets `XLA_FLAGS` itself):
    python -m benchmarks.sharding            # about a minute on 2 cores
    python -m benchmarks.sharding --smoke    # a tiny model; used by the tests

Writes `benchmarks/results/sharding-<machine>-<date>.json` and `.md`.
"""

import argparse
import datetime
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"
_DEVICES = "--xla_force_host_platform_device_count=8"
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_DEVICES}"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_attention  # noqa: E402
from benchmarks._common import machine_name  # noqa: E402
from benchmarks._common import versions  # noqa: E402
from benchmarks._common import write_report  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MESHES = ((1, 8), (2, 4), (4, 2), (8, 1))
FULL = dict(
    vocabulary_size=8192,
    hidden_dim=512,
    num_layers=4,
    num_heads=8,
    num_key_value_heads=2,
    intermediate_dim=2048,
)
SMOKE = dict(
    vocabulary_size=64,
    hidden_dim=32,
    num_layers=1,
    num_heads=8,
    num_key_value_heads=2,
    intermediate_dim=64,
)


def _lm_class():
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    try:
        from text_generation import CharTransformerLM
    finally:
        sys.path.pop(0)
    return CharTransformerLM


def build(config, tokens):
    keras.utils.set_random_seed(0)
    model = _lm_class()(**config, name="lm")
    model(tokens)
    return model


def measure(config, meshes, batch=8, length=16):
    tokens = np.random.default_rng(0).integers(
        0, config["vocabulary_size"], (batch, length)
    )
    template = build(config, tokens)
    reference = np.asarray(template(tokens))
    weights = template.get_weights()
    total = sum(w.nbytes for w in weights)
    rows = []
    for shape in meshes:
        for fsdp in (False, True):
            mesh = keras.distribution.DeviceMesh(
                shape, ("batch", "model"), jax.devices()
            )
            layouts = keras_attention.distribution.layout_map(
                mesh, template, fsdp=fsdp
            )
            distribution = keras.distribution.ModelParallel(
                layout_map=layouts, batch_dim_name="batch"
            )
            with distribution.scope():
                model = build(config, tokens)
                model.set_weights(weights)
                outputs = np.asarray(model(tokens))
            per_device = sum(
                int(np.prod(v.value.addressable_shards[0].data.shape))
                * v.value.dtype.itemsize
                for v in model.weights
            )
            rows.append(
                dict(
                    mesh=list(shape),
                    fsdp=fsdp,
                    bytes_per_device=per_device,
                    fraction=per_device / total,
                    max_abs_diff=float(np.abs(outputs - reference).max()),
                )
            )
            del model
    return dict(parameter_bytes=total, rows=rows)


def markdown(report):
    config = report["model"]
    lines = [
        "# Parameter memory per device, head-sharded layout",
        "",
        f"{report['date']}; {report['versions']}; "
        f"{len(jax.devices())} virtual CPU devices; "
        f"`{report['command']}`.",
        "",
        "Model: `examples/text_generation.py`'s `CharTransformerLM`, "
        + ", ".join(f"{k}={v}" for k, v in config.items())
        + f": {report['parameter_bytes'] / 2**20:.2f} MiB of float32 "
        "weights.",
        "",
        "| mesh (batch, model) | fsdp | MiB per device | fraction of the "
        "model | forward max abs diff |",
        "|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        lines.append(
            f"| {tuple(row['mesh'])} | {'yes' if row['fsdp'] else 'no'} | "
            f"{row['bytes_per_device'] / 2**20:.2f} | "
            f"{row['fraction']:.3f} | {row['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--smoke", action="store_true")
    parser.add_argument(
        "--output-dir", default=os.path.join(ROOT, "benchmarks", "results")
    )
    parser.add_argument("--name", default=None)
    args = parser.parse_args(argv)
    config = SMOKE if args.smoke else FULL
    meshes = MESHES[:2] if args.smoke else MESHES
    report = dict(
        date=datetime.date.today().isoformat(),
        versions=versions("jax"),
        command="python -m benchmarks.sharding"
        + (" --smoke" if args.smoke else ""),
        model=config,
        **measure(config, meshes),
    )
    text = markdown(report)
    print(text)
    stem = args.name or f"sharding-{machine_name()}-{report['date']}"
    write_report(report, text, args.output_dir, stem)
    worst = max(row["max_abs_diff"] for row in report["rows"])
    return 0 if worst <= 1e-4 else 1


if __name__ == "__main__":
    sys.exit(main())
