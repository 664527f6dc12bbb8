import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import AttentionPooling
from tests import reference
from tests.testing import run_layer_test
from tests.testing import to_numpy


def _weights(layer):
    return {w.name: to_numpy(w) for w in layer.weights}


def test_exact_values_tiny():
    layer = AttentionPooling(units=None, num_heads=1)
    x = np.array([[[0.0], [math.log(3.0)]]], "float32")
    layer(x)
    layer.score_kernel.assign([[1.0]])
    out, scores = layer(x, return_attention_scores=True)
    # Logits [0, ln 3] -> weights [1/4, 3/4] -> 3/4 ln 3.
    np.testing.assert_allclose(to_numpy(scores), [[[0.25, 0.75]]], rtol=1e-6)
    np.testing.assert_allclose(
        to_numpy(out), [[0.75 * math.log(3.0)]], rtol=1e-6
    )
    # Masking the second position leaves the first: 0. All masked: 0, no NaN.
    out = to_numpy(
        layer(np.concatenate([x, x]), mask=[[True, False], [False, False]])
    )
    np.testing.assert_array_equal(out, [[0.0], [0.0]])


def test_exact_values_mlp_two_heads():
    layer = AttentionPooling(units=1, num_heads=2)
    x = np.array([[[1.0], [2.0]]], "float32")
    layer(x)
    layer.hidden_kernel.assign([[1.0]])
    layer.hidden_bias.assign([-1.0])
    # tanh(x - 1) = [0, tanh 1]; head 0 scores [0, ln 3], head 1 all zeros.
    layer.score_kernel.assign([[math.log(3.0) / math.tanh(1.0), 0.0]])
    out = to_numpy(layer(x))
    np.testing.assert_allclose(out, [[0.25 + 1.5, 1.5]], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("units", [None, 5])
@pytest.mark.parametrize("num_heads", [1, 3])
@pytest.mark.parametrize("masked", [False, True])
def test_matches_numpy_reference(rng, dtype, units, num_heads, masked):
    x = rng.normal(size=(4, 6, 7)).astype("float32")
    policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
    layer = AttentionPooling(
        units=units,
        num_heads=num_heads,
        dtype=policy,
        bias_initializer="random_normal",
    )
    mask = None
    if masked:
        mask = np.arange(6)[None] < np.array([[6], [3], [1], [0]])
    out, scores = layer(x, mask=mask, return_attention_scores=True)
    w = _weights(layer)
    x_r = to_numpy(ops.cast(ops.cast(x, dtype), "float32"))
    want, want_scores = reference.pooling(
        x_r,
        w["score_kernel"],
        w.get("hidden_kernel"),
        w.get("hidden_bias"),
        mask=mask,
    )
    tol = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 6e-2}[dtype]
    np.testing.assert_allclose(
        to_numpy(ops.cast(out, "float32")), want, atol=tol, rtol=tol
    )
    np.testing.assert_allclose(
        to_numpy(ops.cast(scores, "float32")), want_scores, atol=tol, rtol=tol
    )
    assert tuple(out.shape) == (4, num_heads * 7)


@pytest.mark.parametrize(
    "init, expected_weights",
    [(dict(), 1), (dict(units=8, num_heads=2, dropout=0.1), 3)],
    ids=["linear", "mlp"],
)
def test_layer_behaviour(rng, init, expected_weights):
    heads = init.get("num_heads", 1)
    run_layer_test(
        AttentionPooling,
        init,
        dict(inputs=(2, 5, 6)),
        call_kwargs=dict(return_attention_scores=True),
        expected_output_shapes=[(2, heads * 6), (2, heads, 5)],
        expected_num_trainable_weights=expected_weights,
        rng=rng,
    )


def test_keras_mask_is_used_and_not_propagated():
    tokens = np.array([[3, 4, 0, 0], [5, 0, 0, 0]])
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    layer = AttentionPooling(units=3)
    pooled = layer(h)
    model = keras.Model(inputs, pooled)
    emb = keras.Model(inputs, h).predict(tokens, verbose=0)
    np.testing.assert_allclose(
        model.predict(tokens, verbose=0),
        to_numpy(layer(emb, mask=tokens > 0)),
        atol=1e-6,
    )
    # Padding content does not change the result.
    emb2 = emb.copy()
    emb2[tokens == 0] = 100.0
    np.testing.assert_allclose(
        to_numpy(layer(emb2, mask=tokens > 0)),
        to_numpy(layer(emb, mask=tokens > 0)),
        atol=1e-6,
    )
    assert layer.compute_mask(h, None) is None
