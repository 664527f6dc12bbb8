import keras
import numpy as np
import pytest

from keras_attention import GroupedQueryAttention
from keras_attention import MultiHeadAttention
from tests import reference
from tests.testing import run_layer_test
from tests.testing import to_numpy

# (constructor kwargs, query shape, value shape or None, call kwargs)
CASES = {
    "self": (
        dict(num_query_heads=4, num_key_value_heads=2),
        (2, 6, 8),
        None,
        {},
    ),
    "cross": (
        dict(num_query_heads=4, num_key_value_heads=1),
        (2, 7, 8),
        (2, 5, 8),
        {},
    ),
    "causal": (
        dict(num_query_heads=6, num_key_value_heads=3),
        (2, 7, 8),
        None,
        dict(use_causal_mask=True),
    ),
    "attention_mask": (
        dict(num_query_heads=4, num_key_value_heads=2),
        (2, 6, 8),
        (2, 5, 8),
        dict(attention_mask="random"),
    ),
    "value_mask": (
        dict(num_query_heads=4, num_key_value_heads=2),
        (2, 6, 8),
        (2, 5, 8),
        dict(value_mask="padding"),
    ),
    "sliding_window": (
        dict(num_query_heads=4, num_key_value_heads=2, sliding_window=3),
        (2, 8, 8),
        None,
        dict(use_causal_mask=True),
    ),
    "no_bias": (
        dict(num_query_heads=2, num_key_value_heads=2, use_bias=False),
        (2, 5, 8),
        None,
        {},
    ),
}
VARIANTS = {
    "plain": (False, "auto"),
    "gate": (True, "auto"),
    "gate_chunked": (True, 3),
}


def _inputs(rng, q_shape, v_shape, call):
    query = rng.normal(size=q_shape).astype("float32")
    value = (
        query if v_shape is None else rng.normal(size=v_shape).astype("float32")
    )
    call = dict(call)
    b, t, s = q_shape[0], q_shape[1], value.shape[1]
    if call.get("attention_mask") == "random":
        mask = rng.random((b, t, s)) > 0.3
        mask[..., 0] = True  # no empty rows: Keras gives them a uniform mean
        call["attention_mask"] = mask
    if call.get("value_mask") == "padding":
        lengths = np.array([s] + [max(1, s - 2)] * (b - 1))
        call["value_mask"] = np.arange(s)[None] < lengths[:, None]
    return query, value, call


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_keras_core_with_same_weights(rng, case, variant):
    kwargs, q_shape, v_shape, call = CASES[case]
    use_gate, chunk_size = VARIANTS[variant]
    kwargs = dict(kwargs, head_dim=4, use_gate=use_gate)
    query, value, call = _inputs(rng, q_shape, v_shape, call)
    core = keras.layers.GroupQueryAttention(**kwargs)
    ours = GroupedQueryAttention(**kwargs, chunk_size=chunk_size)
    want, want_scores = core(query, value, return_attention_scores=True, **call)
    ours(query, value)
    ours.set_weights(core.get_weights())
    got, got_scores = ours(query, value, return_attention_scores=True, **call)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(got_scores), to_numpy(want_scores), atol=1e-5
    )
    # Without scores: our chunked kernel when chunk_size is an int.
    np.testing.assert_allclose(
        to_numpy(ours(query, value, **call)), to_numpy(want), atol=1e-5
    )


@pytest.mark.parametrize("use_gate", [False, True])
def test_same_weight_names_shapes_and_order(rng, use_gate):
    kwargs = dict(
        head_dim=3, num_query_heads=4, num_key_value_heads=2, use_gate=use_gate
    )
    x = rng.normal(size=(2, 4, 8)).astype("float32")
    core = keras.layers.GroupQueryAttention(**kwargs)
    ours = GroupedQueryAttention(**kwargs)
    core(x, x)
    ours(x, x)
    core_w = [(w.path.split("/", 1)[1], tuple(w.shape)) for w in core.weights]
    ours_w = [(w.path.split("/", 1)[1], tuple(w.shape)) for w in ours.weights]
    assert core_w == ours_w
    names = [path.split("/")[0] for path, _ in ours_w]
    expected = ["query", "key", "gate", "value", "attention_output"]
    if not use_gate:
        expected.remove("gate")
    assert list(dict.fromkeys(names)) == expected


def test_head_mapping_matches_reference(rng):
    """Query head n uses key/value head n // (num_query_heads // kv_heads)."""
    layer = GroupedQueryAttention(
        head_dim=4, num_query_heads=6, num_key_value_heads=2, use_bias=False
    )
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    mask = rng.random((2, 5, 5)) > 0.3
    out, scores = layer(x, x, attention_mask=mask, return_attention_scores=True)
    wq, wk, wv, wo = (to_numpy(w) for w in layer.weights)
    q = np.einsum("btm,mnh->btnh", x, wq)
    # The reference maps head n to key/value head n // 3 itself.
    k = np.einsum("bsm,mnh->bsnh", x, wk)
    v = np.einsum("bsm,mnh->bsnh", x, wv)
    want, want_scores = reference.sdpa(q, k, v, mask=mask[:, None])
    np.testing.assert_allclose(to_numpy(scores), want_scores, atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(out), np.einsum("btnh,nhm->btm", want, wo), atol=1e-5
    )


def test_layer_harness(rng):
    run_layer_test(
        GroupedQueryAttention,
        dict(
            head_dim=4,
            num_query_heads=4,
            num_key_value_heads=2,
            use_gate=True,
            logits_soft_cap=20.0,
        ),
        {"query": (2, 6, 8), "value": (2, 5, 8)},
        expected_output_shapes=[(2, 6, 8)],
        rng=rng,
    )


def test_is_multi_head_attention_with_fewer_key_value_heads(rng):
    """The same weights in our MHA with `num_key_value_heads` give the same
    outputs: the two layers share one attention code."""
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    gqa = GroupedQueryAttention(
        head_dim=4, num_query_heads=4, num_key_value_heads=2, use_gate=True
    )
    mha = MultiHeadAttention(
        num_heads=4, key_dim=4, num_key_value_heads=2, use_gate=True
    )
    gqa(x, x)
    mha(x, x)
    mha.set_weights(gqa.get_weights())
    np.testing.assert_allclose(
        to_numpy(gqa(x, x, use_causal_mask=True)),
        to_numpy(mha(x, x, use_causal_mask=True)),
        atol=1e-6,
    )


def test_query_mask_on_output_and_zero_padded_rows():
    layer = GroupedQueryAttention(
        head_dim=4, num_query_heads=4, num_key_value_heads=2
    )
    data = np.array([[1, 2, 3, 0, 0], [4, 5, 0, 0, 0]])
    x = keras.layers.Embedding(10, 8, mask_zero=True)(data)
    y = layer(x, x)
    np.testing.assert_array_equal(to_numpy(y._keras_mask), data != 0)
    out = to_numpy(y)
    assert np.all(out[0, 3:] == 0) and np.all(out[1, 2:] == 0)
    assert np.all(np.abs(out[0, :3]).sum(-1) > 0)


def test_rank_4_query_is_refused():
    layer = GroupedQueryAttention(
        head_dim=4, num_query_heads=2, num_key_value_heads=1
    )
    x = np.ones((2, 3, 4, 8), "float32")
    with pytest.raises(ValueError, match="query"):
        layer(x, x)
