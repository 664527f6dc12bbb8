"""Behaviour every layer shares: graph mode with unknown lengths, and large
logits under mixed precision."""

import inspect

import keras
import numpy as np
import pytest
from keras import ops

import keras_attention
from keras_attention import AdditiveAttention
from keras_attention import AttentionPooling
from keras_attention import MultiHeadAttention
from keras_attention.compat import tfa
from tests.testing import to_numpy


def _mha():
    return MultiHeadAttention(num_heads=2, key_dim=4), ("query", "value")


def _additive():
    return AdditiveAttention(units=4), ("query", "value")


def _pooling():
    return AttentionPooling(units=4, num_heads=2), ("inputs",)


LAYERS = {"mha": _mha, "additive": _additive, "pooling": _pooling}


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_tf_function_with_unknown_lengths(rng, name):
    import tensorflow as tf

    layer, args = LAYERS[name]()
    specs = [tf.TensorSpec((None, None, 6), tf.float32) for _ in args]
    masks = [tf.TensorSpec((None, None), tf.bool) for _ in args]

    @tf.function(input_signature=specs + masks, autograph=False)
    def run(*tensors):
        xs, ms = tensors[: len(args)], tensors[len(args) :]
        kwargs = {f"{a}_mask": m for a, m in zip(args[1:], ms[1:])}
        if name == "pooling":
            return layer(xs[0], mask=ms[0])
        return layer(xs[0], *xs[1:], query_mask=ms[0], **kwargs)

    for lengths in ((3, 5), (7, 2)):
        xs = [
            rng.normal(size=(2, n, 6)).astype("float32")
            for n in lengths[: len(args)]
        ]
        ms = [
            np.arange(n)[None] < np.array([[n], [max(1, n - 2)]])
            for n in lengths[: len(args)]
        ]
        graph = run(*xs, *ms).numpy()
        concrete = run.get_concrete_function()
        assert concrete.structured_outputs.shape.rank in (2, 3)
        if name == "pooling":
            eager = layer(xs[0], mask=ms[0])
        else:
            eager = layer(xs[0], xs[1], query_mask=ms[0], value_mask=ms[1])
        np.testing.assert_allclose(graph, to_numpy(eager), atol=1e-6)


def _big_logit_setup(name, rng):
    """A float32 layer and inputs whose logits reach about +-1e4."""
    if name == "mha":
        layer = MultiHeadAttention(
            num_heads=2, key_dim=4, kernel_initializer="ones"
        )
        x = np.full((2, 4, 8), 10.0, "float32")
        x[:, 1] = -10.0
        return layer, (x, x)
    if name == "additive":
        # W_q = 0 and keys of +-20 saturate tanh to exactly +-1, so the
        # logits are exact multiples of 2500 in every dtype: up to 1e4.
        layer = AdditiveAttention(units=4, use_bias=False)
        q = rng.normal(size=(2, 3, 5)).astype("float32")
        v = rng.choice([-20.0, 20.0], size=(2, 6, 5)).astype("float32")
        layer(q, v)
        layer.set_weights(
            [
                np.array([2500.0, -2500.0, 2500.0, 2500.0], "float32"),
                np.zeros((5, 4), "float32"),  # W_q
                np.eye(5, 4, dtype="float32"),  # W_k
            ]
        )
        return layer, (q, v)
    # Inputs of +-100 and a score weight of 100: logits of exactly +-1e4.
    layer = AttentionPooling(units=None, num_heads=1)
    x = rng.choice([-100.0, 100.0], size=(2, 6, 1)).astype("float32")
    layer(x)
    layer.score_kernel.assign([[100.0]])
    return layer, (x,)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_large_logits_under_mixed_precision(rng, name, policy):
    reference_layer, inputs = _big_logit_setup(name, rng)
    want, want_scores = reference_layer(*inputs, return_attention_scores=True)
    config = reference_layer.get_config()
    config["dtype"] = policy
    mixed = type(reference_layer).from_config(config)
    mixed(*inputs)
    mixed.set_weights(reference_layer.get_weights())
    out, scores = mixed(*inputs, return_attention_scores=True)
    assert all(w.dtype == "float32" for w in mixed.weights)
    assert keras.backend.standardize_dtype(out.dtype) == policy.split("_")[1]
    # The float32 scores really do saturate: the logits are of order 1e4.
    assert to_numpy(want_scores).max() > 0.3
    for got, ref in ((out, want), (scores, want_scores)):
        got = to_numpy(ops.cast(got, "float32"))
        assert np.all(np.isfinite(got))
        scale = max(1.0, float(np.abs(to_numpy(ref)).max()))
        np.testing.assert_allclose(
            got, to_numpy(ref), atol=3e-2 * scale, rtol=3e-2
        )


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_compiled_model_with_unknown_lengths_matches_eager(rng, name):
    """Any backend: an XLA-compiled `predict` over a model whose
    sequence lengths are unknown, at two lengths."""
    layer, args = LAYERS[name]()
    inputs = [keras.Input((None, 6)) for _ in args]
    model = keras.Model(inputs, layer(*inputs))
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    for length in (3, 7):
        xs = [
            rng.normal(size=(2, length + i, 6)).astype("float32")
            for i in range(len(args))
        ]
        np.testing.assert_allclose(
            model.predict(xs, verbose=0), to_numpy(layer(*xs)), atol=1e-5
        )


def test_masked_inputs_raise_no_sublayer_mask_warnings():
    """Our layers handle masks themselves; their projections must not warn
    that they 'destroy the mask' (on any backend)."""
    import warnings

    x = keras.layers.Embedding(10, 8, mask_zero=True)(np.array([[1, 2, 0]]))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
        AdditiveAttention(units=4)(x, x)
    messages = [str(w.message) for w in caught]
    assert not [m for m in messages if "destroy the mask" in m], messages


def _dropout_layers():
    """Every public layer whose constructor takes `dropout`."""
    found = {}
    for module in (keras_attention, tfa):
        for name in module.__all__:
            cls = getattr(module, name)
            if inspect.isclass(cls) and "dropout" in (
                inspect.signature(cls.__init__).parameters
            ):
                found[f"{module.__name__}.{name}"] = cls
    return found


# How to make each layer with `dropout=0.1` and call it on a `(batch, 6, 8)`
# input; `chunk_size` where the layer takes one (the dense kernel, or the
# chunked one with blocks shorter than the input).
_DROPOUT_SETUPS = {
    "keras_attention.MultiHeadAttention": (
        dict(num_heads=2, key_dim=4),
        lambda layer, x: layer(x, x),
    ),
    "keras_attention.GroupedQueryAttention": (
        dict(head_dim=4, num_query_heads=2, num_key_value_heads=1),
        lambda layer, x: layer(x, x),
    ),
    "keras_attention.GroupQueryAttention": (
        dict(head_dim=4, num_query_heads=2, num_key_value_heads=1),
        lambda layer, x: layer(x, x),
    ),
    "keras_attention.AdditiveAttention": (
        dict(units=4),
        lambda layer, x: layer(x, x),
    ),
    "keras_attention.AttentionPooling": (
        dict(units=8, num_heads=2),
        lambda layer, x: layer(x),
    ),
    "keras_attention.TransformerEncoder": (
        dict(intermediate_dim=16, num_heads=2),
        lambda layer, x: layer(x),
    ),
    "keras_attention.TransformerDecoder": (
        dict(intermediate_dim=16, num_heads=2),
        lambda layer, x: layer(x, x),
    ),
    "keras_attention.compat.tfa.MultiHeadAttention": (
        dict(head_size=4, num_heads=2),
        lambda layer, x: layer([x, x]),
    ),
}


def test_every_dropout_layer_has_a_training_setup():
    assert set(_dropout_layers()) == set(_DROPOUT_SETUPS)


def _dropout_cases():
    """`(name, chunk_size)`: the dense kernel, "auto" and the chunked kernel
    where the layer takes `chunk_size`, else `"-"` (its only kernel)."""
    for name, cls in sorted(_dropout_layers().items()):
        params = inspect.signature(cls.__init__).parameters
        sizes = [None, "auto", 4] if "chunk_size" in params else ["-"]
        for size in sizes:
            yield name, size


@pytest.mark.parametrize("name,chunk_size", list(_dropout_cases()))
def test_layers_with_dropout_train(rng, name, chunk_size):
    cls = _dropout_layers()[name]
    kwargs, call = _DROPOUT_SETUPS[name]
    if chunk_size != "-":
        kwargs = dict(kwargs, chunk_size=chunk_size)
    layer = cls(dropout=0.1, seed=3, **kwargs)
    inputs = keras.Input((6, 8))
    outputs = call(layer, inputs)
    model = keras.Model(inputs, keras.layers.Flatten()(outputs))
    model.compile(optimizer="sgd", loss="mse")
    x = rng.normal(size=(4, 6, 8)).astype("float32")
    y = rng.normal(size=(4, model.output_shape[-1])).astype("float32")
    before = [to_numpy(w) for w in model.trainable_weights]
    history = model.fit(x, y, batch_size=2, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    after = [to_numpy(w) for w in model.trainable_weights]
    assert any(not np.array_equal(a, b) for a, b in zip(before, after))
    # Dropout acts in training only.
    inference = to_numpy(model(x, training=False))
    np.testing.assert_array_equal(inference, to_numpy(model(x)))
    assert not np.allclose(to_numpy(model(x, training=True)), inference)
