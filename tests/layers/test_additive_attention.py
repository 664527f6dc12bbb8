import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import AdditiveAttention
from keras_attention.ops import additive_attention
from tests import reference
from tests.testing import run_layer_test
from tests.testing import to_numpy

LN3 = math.log(3.0)


def _set(layer, **values):
    for w in layer.weights:
        name = w.path.split("/")[-2] if w.name == "kernel" else w.name
        if name in values:
            w.assign(np.asarray(values[name], "float32").reshape(w.shape))


def _ref(layer, query, key, value, mask=None, is_causal=False):
    w = {
        w.path.split("/")[-2] if w.name == "kernel" else w.name: to_numpy(w)
        for w in layer.weights
    }
    return reference.additive(
        query,
        key,
        value,
        w["query"],
        w["key"],
        w["attention_v"],
        b=w.get("attention_b"),
        g=w.get("attention_g"),
        mask=mask,
        is_causal=is_causal,
    )


@pytest.mark.parametrize(
    "init, weights",
    [
        (
            dict(units=1, use_bias=False),
            dict(
                query=[[1.0]], key=[[1.0]], attention_v=[LN3 / math.tanh(1.0)]
            ),
        ),
        (
            dict(units=1, use_bias=False, normalize=True),
            dict(
                query=[[1.0]],
                key=[[1.0]],
                attention_v=[2.0],
                attention_g=LN3 / math.tanh(1.0),
            ),
        ),
        (
            dict(units=1, use_bias=True),
            dict(
                query=[[1.0]],
                key=[[1.0]],
                attention_b=[1.0],
                attention_v=[LN3 / math.tanh(1.0)],
            ),
        ),
    ],
    ids=["plain", "normalize", "bias"],
)
def test_exact_values_tiny(init, weights):
    # Logits come out as [0, ln 3]: weights [1/4, 3/4], context
    # 2/4 + 18/4 = 5.
    layer = AdditiveAttention(**init)
    query = np.zeros((1, 1, 1), "float32")
    shift = -1.0 if init.get("use_bias") else 0.0
    key = np.array([[[0.0 + shift], [1.0 + shift]]], "float32")
    value = np.array([[[2.0], [6.0]]], "float32")
    layer(query, value, key=key)
    _set(layer, **weights)
    out, scores = layer(query, value, key=key, return_attention_scores=True)
    np.testing.assert_allclose(to_numpy(scores), [[[0.25, 0.75]]], rtol=1e-6)
    np.testing.assert_allclose(to_numpy(out), [[[5.0]]], rtol=1e-6)
    # The same, as a single decoder step and with the last key masked.
    out = layer(query[:, 0], value, key=key, value_mask=[[True, False]])
    np.testing.assert_allclose(to_numpy(out), [[2.0]], rtol=1e-6)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "init",
    [dict(units=6), dict(units=4, use_bias=False, normalize=True)],
    ids=["bias", "normalize"],
)
@pytest.mark.parametrize(
    "masks", ["none", "padding", "causal", "padding_causal"]
)
def test_matches_numpy_reference(rng, init, masks, dtype):
    query = rng.normal(size=(3, 5, 7)).astype("float32")
    key = rng.normal(size=(3, 6, 4)).astype("float32")
    value = rng.normal(size=(3, 6, 9)).astype("float32")
    layer = AdditiveAttention(
        **init, dtype=f"mixed_{dtype}" if dtype != "float32" else "float32"
    )
    layer(query, value, key=key)
    _set(layer, attention_b=rng.normal(size=init["units"]), attention_g=1.7)
    q_mask = v_mask = None
    call = {}
    if "padding" in masks:
        q_mask = np.arange(5)[None] < np.array([[5], [3], [1]])
        v_mask = np.arange(6)[None] < np.array([[6], [2], [4]])
        call.update(query_mask=q_mask, value_mask=v_mask)
    is_causal = "causal" in masks
    out, scores = layer(
        query,
        value,
        key=key,
        return_attention_scores=True,
        use_causal_mask=is_causal,
        **call,
    )
    mask = None
    if q_mask is not None:
        mask = q_mask[:, :, None] & v_mask[:, None, :]
    rounded = [
        to_numpy(ops.cast(ops.cast(x, dtype), "float32"))
        for x in (query, key, value)
    ]
    want, want_scores = _ref(layer, *rounded, mask=mask, is_causal=is_causal)
    tol = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 6e-2}[dtype]
    np.testing.assert_allclose(
        to_numpy(ops.cast(out, "float32")), want, atol=tol, rtol=tol
    )
    np.testing.assert_allclose(
        to_numpy(ops.cast(scores, "float32")), want_scores, atol=tol, rtol=tol
    )
    if q_mask is not None:
        assert np.all(to_numpy(ops.cast(out, "float32"))[~q_mask] == 0.0)


def test_projected_keys_give_the_same_result_in_a_decoder_loop(rng):
    layer = AdditiveAttention(units=8)
    encoder = rng.normal(size=(2, 7, 5)).astype("float32")
    states = rng.normal(size=(4, 2, 3)).astype("float32")
    full = layer(np.transpose(states, (1, 0, 2)), encoder)
    keys = layer.project_keys(encoder)
    assert tuple(keys.shape) == (2, 7, 8)
    for step in range(4):
        context = layer(states[step], encoder, projected_key=keys)
        np.testing.assert_allclose(
            to_numpy(context), to_numpy(full)[:, step], atol=1e-6
        )


def test_project_keys_before_the_first_call(rng):
    layer = AdditiveAttention(units=4)
    encoder = rng.normal(size=(2, 3, 5)).astype("float32")
    keys = layer.project_keys(encoder)
    out = layer(np.zeros((2, 6), "float32"), encoder, projected_key=keys)
    assert tuple(out.shape) == (2, 5)
    np.testing.assert_allclose(
        to_numpy(out),
        to_numpy(layer(np.zeros((2, 6), "float32"), encoder)),
        atol=1e-6,
    )


def test_op_fully_masked_rows_are_zero():
    pq = np.ones((1, 2, 3), "float32")
    pk = np.ones((1, 4, 3), "float32")
    value = np.ones((1, 4, 2), "float32")
    mask = np.array([[[True, True, False, False], [False] * 4]])
    out = to_numpy(additive_attention(pq, pk, value, np.ones(3), mask=mask))
    np.testing.assert_allclose(out[0, 0], [1.0, 1.0], rtol=1e-6)
    assert np.all(out[0, 1] == 0.0)


@pytest.mark.parametrize(
    "init, shapes, call, expected",
    [
        (
            dict(units=8),
            dict(query=(2, 6, 5), value=(2, 4, 3)),
            {},
            [(2, 6, 3), (2, 6, 4)],
        ),
        (
            dict(units=8, normalize=True, dropout=0.2),
            dict(query=(2, 6, 5), value=(2, 4, 3), key=(2, 4, 7)),
            {},
            [(2, 6, 3), (2, 6, 4)],
        ),
        (
            dict(units=4, use_bias=False),
            dict(query=(2, 6, 5), value=(2, 6, 3)),
            dict(use_causal_mask=True),
            [(2, 6, 3), (2, 6, 6)],
        ),
    ],
    ids=["cross", "normalize_key", "causal"],
)
def test_layer_behaviour(rng, init, shapes, call, expected):
    n_weights = 3 + init.get("normalize", False) + init.get("use_bias", True)
    run_layer_test(
        AdditiveAttention,
        init,
        shapes,
        call_kwargs=dict(return_attention_scores=True, **call),
        expected_output_shapes=expected,
        expected_num_trainable_weights=n_weights,
        rng=rng,
    )


def test_single_step_symbolic_shapes():
    query = keras.Input((12,))
    value = keras.Input((None, 6))
    out, scores = AdditiveAttention(units=4)(
        query, value, return_attention_scores=True
    )
    assert tuple(out.shape) == (None, 6)
    assert tuple(scores.shape) == (None, None)


def test_keras_masks_flow_and_output_carries_query_mask():
    tokens = np.array([[3, 4, 0], [5, 0, 0]])
    x = keras.layers.Embedding(10, 4, mask_zero=True)(tokens)
    layer = AdditiveAttention(units=4)
    out = layer(x, x)
    explicit = layer(x, x, query_mask=tokens > 0, value_mask=tokens > 0)
    np.testing.assert_allclose(to_numpy(out), to_numpy(explicit), atol=1e-6)
    assert np.all(to_numpy(out)[tokens == 0] == 0.0)
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    h = AdditiveAttention(units=4)(h, h)
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    seq = keras.Model(inputs, h).predict(tokens, verbose=0)
    got = keras.Model(inputs, pooled).predict(tokens, verbose=0)
    np.testing.assert_allclose(
        got, seq.sum(1) / (tokens > 0).sum(1, keepdims=True), atol=1e-5
    )
