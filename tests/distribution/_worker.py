"""Runs the multi-device checks in a fresh JAX process and prints JSON.

The virtual CPU devices (`XLA_FLAGS`) must be set before JAX starts, and
the JAX test suite has already started it, so `test_model_parallel.py`
runs this file in subprocesses:

    python -m tests.distribution._worker sharded --meshes 1x8 2x4 4x2
    python -m tests.distribution._worker data --processes 2 --process-id 0 \
        --port 12345

`sharded`: on each mesh, the head-sharded model's forward, train step and
cached decoding against the same model unsharded in the same process, the
arrays' shardings and the parameter bytes per device. `data`: one
data-parallel train step, on this process's half of the global batch when
`--processes 2`; it prints the weights' digest and values.
"""

import argparse
import json
import os
import sys

os.environ["KERAS_BACKEND"] = "jax"


def _args(argv):
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="mode", required=True)
    sharded = sub.add_parser("sharded")
    sharded.add_argument("--meshes", nargs="+", default=["1x8", "2x4", "4x2"])
    sharded.add_argument("--fsdp", action="store_true")
    data = sub.add_parser("data")
    data.add_argument("--processes", type=int, default=1)
    data.add_argument("--process-id", type=int, default=0)
    data.add_argument("--port", type=int, default=0)
    data.add_argument("--out", required=True)
    return parser.parse_args(argv)


ARGS = _args(sys.argv[1:])
if ARGS.mode == "sharded":
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"

import jax  # noqa: E402
import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_attention  # noqa: E402
from tests.examples._runner import import_example  # noqa: E402

CharTransformerLM = import_example("text_generation").CharTransformerLM

VOCAB, BATCH, LENGTH, MAX_LENGTH = 64, 8, 12, 20


def build_lm():
    """A 2-block decoder LM: 8 query heads, 2 key/value heads (replicated
    on a model axis of 4 or 8), RoPE, token embedding, explicit names."""
    lm = CharTransformerLM(
        VOCAB,
        hidden_dim=32,
        num_layers=2,
        num_heads=8,
        num_key_value_heads=2,
        intermediate_dim=64,
        name="lm",
    )
    lm(np.zeros((1, LENGTH), "int32"))
    return lm


def build_classifier():
    """A functional encoder classifier with automatic names (rebuilt after
    `clear_session`, so the names repeat), gated attention included."""
    inputs = keras.Input((LENGTH,), dtype="int32")
    x = keras.layers.Embedding(VOCAB, 32)(inputs)
    x = keras_attention.TransformerEncoder(64, 8)(x)
    x = keras_attention.MultiHeadAttention(8, 4, use_gate=True)(x, x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(1, VOCAB, (BATCH, LENGTH + 1)).astype("int32")
    labels = rng.integers(0, 3, (BATCH,)).astype("int32")
    return tokens, labels


def _compile(model, loss):
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss=loss)


def _lm_loss():
    return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run_models(weights=None):
    """Forward, one train step and cached decoding; returns the results and
    the models (weights: initial weights to load, else the seeded init)."""
    tokens, labels = _data()
    keras.utils.set_random_seed(0)
    lm, classifier = build_lm(), build_classifier()
    if weights is not None:
        lm.set_weights(weights[0])
        classifier.set_weights(weights[1])
    initial = (lm.get_weights(), classifier.get_weights())
    out = {
        "lm_logits": np.asarray(lm(tokens[:, :-1])),
        "classifier_logits": np.asarray(classifier(tokens[:, :-1])),
    }
    prompts = tokens[:, :6]
    cache = keras_attention.distribution.place_cache(
        lm.init_cache(BATCH, MAX_LENGTH)
    )
    out["cache_specs"] = [_spec(c) for c in cache]
    logits, cache = jax.jit(lm.call_with_cache)(
        prompts, cache, 0, np.ones((BATCH, MAX_LENGTH), bool)
    )
    out["prefill_logits"] = np.asarray(logits)
    out["updated_cache_specs"] = [_spec(c) for c in cache]
    generator = keras_attention.TokenGenerator(lm, max_length=MAX_LENGTH)
    out["generated"] = np.asarray(generator(prompts))
    _compile(lm, _lm_loss())
    _compile(classifier, _lm_loss())
    out["lm_loss"] = float(lm.train_on_batch(tokens[:, :-1], tokens[:, 1:]))
    out["classifier_loss"] = float(
        classifier.train_on_batch(tokens[:, :-1], labels)
    )
    out["lm_trained"] = [np.asarray(w) for w in lm.get_weights()]
    out["classifier_trained"] = [
        np.asarray(w) for w in classifier.get_weights()
    ]
    return out, (lm, classifier), initial


def _spec(array):
    return str(getattr(array.sharding, "spec", None))


def _max_diff(a, b):
    if isinstance(a, list):
        return max(_max_diff(x, y) for x, y in zip(a, b))
    return float(np.abs(np.asarray(a) - np.asarray(b)).max())


def _bytes(variables):
    full = sum(int(np.prod(v.shape)) * 4 for v in variables)
    per_device = 0
    for v in variables:
        shard = v.value.addressable_shards[0].data
        per_device += int(np.prod(shard.shape)) * 4
    return full, per_device


def sharded(meshes, fsdp):
    reference, templates, initial = run_models()
    report = {"devices": len(jax.devices()), "meshes": {}}
    for spec in meshes:
        shape = tuple(int(n) for n in spec.split("x"))
        mesh = keras.distribution.DeviceMesh(
            shape, ("batch", "model"), jax.devices()
        )
        # The layout comes from the built (unsharded) templates; the
        # sharded models are rebuilt by the same code after clear_session.
        layouts = keras.distribution.LayoutMap(mesh)
        for template in templates:
            for key, layout in keras_attention.distribution.layout_map(
                mesh, template, fsdp=fsdp
            ).items():
                layouts[key] = layout.axes
        keras.backend.clear_session()
        distribution = keras.distribution.ModelParallel(
            layout_map=layouts, batch_dim_name="batch"
        )
        with distribution.scope():
            result, models, _ = run_models(initial)
        variables = [v for m in models for v in m.weights]
        specs = {v.path: str(v.value.sharding.spec) for v in variables}
        expected = {
            v.path: str(layouts[v.path].backend_layout.spec)
            for v in variables
            if layouts[v.path] is not None
        }
        full, per_device = _bytes(variables)
        report["meshes"][spec] = {
            "diffs": {
                key: _max_diff(result[key], reference[key])
                for key in reference
                if not key.endswith("cache_specs")
            },
            "cache_specs": result["cache_specs"],
            "updated_cache_specs": result["updated_cache_specs"],
            "specs": specs,
            "expected_specs": expected,
            "layout_keys": len(layouts),
            "param_bytes": full,
            "param_bytes_per_device": per_device,
        }
        keras.backend.clear_session()
    print(json.dumps(report))


def data(processes, process_id, port, out):
    if processes > 1:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
        keras.distribution.initialize(
            f"localhost:{port}", num_processes=processes, process_id=process_id
        )
    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()
    )
    tokens, labels = _data()
    # Each process feeds its own slice of the global batch.
    rows = slice(
        process_id * BATCH // processes, (process_id + 1) * BATCH // processes
    )
    with distribution.scope():
        keras.utils.set_random_seed(0)
        model = build_classifier()
        _compile(model, _lm_loss())
        loss = model.train_on_batch(tokens[rows, :-1], labels[rows])
        # Replicated on every process: read this process's copy.
        weights = [
            np.asarray(v.value.addressable_shards[0].data)
            for v in model.weights
        ]
    np.savez(out, *weights, loss=np.asarray(loss))
    print(json.dumps({"devices": len(jax.devices()), "loss": float(loss)}))


if __name__ == "__main__":
    if ARGS.mode == "sharded":
        sharded(ARGS.meshes, ARGS.fsdp)
    else:
        data(ARGS.processes, ARGS.process_id, ARGS.port, ARGS.out)
