"""`to_keras_attention`: compat layers -> native layers, same outputs."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention.compat import tfa
from tests.testing import randomize_weights
from tests.testing import run_saving_test
from tests.testing import to_numpy

ATOL = 1e-6


def _mask(rng, shape):
    mask = rng.random(shape) > 0.4
    mask[..., 0] = True  # every query attends at least one key
    return mask


MHA_CASES = {
    # id: (init kwargs, input shapes, mask shape or None)
    "self_attention": (dict(head_size=4, num_heads=3), [(2, 5, 6)] * 2, None),
    "query_key_value": (
        dict(head_size=4, num_heads=3),
        [(2, 5, 6), (2, 4, 7), (2, 4, 3)],
        (2, 5, 4),
    ),
    "key_only_mask_2d": (
        dict(head_size=2, num_heads=2),
        [(2, 5, 6), (2, 4, 7)],
        (5, 4),
    ),
    "mask_per_head": (
        dict(head_size=3, num_heads=3),
        [(2, 5, 6), (2, 4, 7), (2, 4, 3)],
        (2, 3, 5, 4),
    ),
    "output_size": (
        dict(head_size=3, num_heads=2, output_size=9),
        [(2, 5, 6), (2, 4, 7), (2, 4, 3)],
        (2, 5, 4),
    ),
    "no_projection_bias": (
        dict(head_size=3, num_heads=2, use_projection_bias=False),
        [(2, 5, 6), (2, 4, 7), (2, 4, 3)],
        (2, 5, 4),
    ),
    "rank4_inputs": (
        dict(head_size=3, num_heads=2, output_size=4),
        [(2, 3, 5, 6), (2, 3, 4, 7)],
        (2, 3, 5, 4),
    ),
}


@pytest.mark.parametrize("case", list(MHA_CASES), ids=list(MHA_CASES))
def test_multi_head_attention_outputs_preserved(case, rng):
    init, shapes, mask_shape = MHA_CASES[case]
    compat = tfa.MultiHeadAttention(**init, return_attn_coef=True)
    inputs = [rng.normal(size=s).astype("float32") for s in shapes]
    mask = None if mask_shape is None else _mask(rng, mask_shape)
    compat(inputs, mask=mask)
    randomize_weights(compat, rng)
    expected_output, expected_coef = compat(inputs, mask=mask)

    native = tfa.to_keras_attention(compat)
    assert type(native) is ka.MultiHeadAttention
    query, key = inputs[0], inputs[1]
    value = inputs[2] if len(inputs) == 3 else key
    output, scores = native(
        query,
        value,
        key=key,
        attention_mask=mask,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(
        to_numpy(output), to_numpy(expected_output), atol=ATOL
    )
    np.testing.assert_allclose(
        to_numpy(scores), to_numpy(expected_coef), atol=ATOL
    )


def test_multi_head_attention_weight_mapping(rng):
    compat = tfa.MultiHeadAttention(head_size=3, num_heads=2, output_size=5)
    compat([np.zeros((1, 2, 6)), np.zeros((1, 4, 7)), np.zeros((1, 4, 8))])
    randomize_weights(compat, rng)
    native = tfa.to_keras_attention(compat)
    q, k, v, p, pb = compat.get_weights()
    weights = {w.path.split("/", 1)[1]: w.numpy() for w in native.weights}
    np.testing.assert_array_equal(weights["query/kernel"], q.transpose(1, 0, 2))
    np.testing.assert_array_equal(weights["key/kernel"], k.transpose(1, 0, 2))
    np.testing.assert_array_equal(weights["value/kernel"], v.transpose(1, 0, 2))
    np.testing.assert_array_equal(weights["attention_output/kernel"], p)
    np.testing.assert_array_equal(weights["attention_output/bias"], pb)
    # tfa has no query, key or value biases: the native ones are zero.
    for name in ("query/bias", "key/bias", "value/bias"):
        assert weights[name].shape == (2, 3)
        assert np.all(weights[name] == 0.0)
    config = native.get_config()
    assert (config["key_dim"], config["value_dim"]) == (3, 3)
    assert config["output_shape"] == (5,)

    no_bias = tfa.MultiHeadAttention(3, 2, use_projection_bias=False)
    no_bias([np.zeros((1, 2, 6)), np.zeros((1, 4, 7))])
    native = tfa.to_keras_attention(no_bias)
    assert native.use_bias is False
    assert not any("bias" in w.path for w in native.weights)


def test_multi_head_attention_fully_masked_rows_differ(rng):
    # The one documented difference: tfa attends uniformly, native gives 0.
    compat = tfa.MultiHeadAttention(head_size=2, num_heads=2)
    query = rng.normal(size=(1, 2, 3)).astype("float32")
    key = rng.normal(size=(1, 4, 3)).astype("float32")
    mask = np.array([[[1, 0, 1, 1], [0, 0, 0, 0]]], bool)
    expected = to_numpy(compat([query, key], mask=mask))
    got = to_numpy(
        tfa.to_keras_attention(compat)(query, key, attention_mask=mask)
    )
    np.testing.assert_allclose(got[0, 0], expected[0, 0], atol=ATOL)
    assert np.all(got[0, 1] == 0.0)
    assert not np.allclose(expected[0, 1], 0.0)


BAHDANAU_CASES = {
    "plain": dict(),
    "normalize": dict(normalize=True),
    "plain_lengths": dict(lengths=True),
    "normalize_lengths": dict(normalize=True, lengths=True),
    "normalize_mask": dict(normalize=True, mask=True),
}


@pytest.mark.parametrize("case", list(BAHDANAU_CASES), ids=list(BAHDANAU_CASES))
def test_bahdanau_attention_outputs_preserved(case, rng):
    options = dict(BAHDANAU_CASES[case])
    use_lengths = options.pop("lengths", False)
    use_mask = options.pop("mask", False)
    compat = tfa.BahdanauAttention(units=7, **options)
    query = rng.normal(size=(3, 6)).astype("float32")
    memory = rng.normal(size=(3, 5, 4)).astype("float32")
    lengths = np.array([5, 2, 3], "int32")
    mask = np.arange(5)[None] < lengths[:, None]
    kwargs = {}
    if use_lengths:
        kwargs["memory_sequence_length"] = lengths
    elif use_mask:
        mask = _mask(rng, (3, 5))
        kwargs["memory_mask"] = mask
    compat(query, memory, **kwargs)
    randomize_weights(compat, rng)
    expected_context, expected_alignments = compat(query, memory, **kwargs)

    native = tfa.to_keras_attention(compat)
    assert type(native) is ka.AdditiveAttention
    assert (native.use_bias, native.normalize) == (
        compat.normalize,
        compat.normalize,
    )
    for a, b in zip(native.get_weights(), compat.get_weights()):
        np.testing.assert_array_equal(a, b)
    context, alignments = native(
        query,
        memory,
        value_mask=mask if kwargs else None,
        return_attention_scores=True,
    )
    np.testing.assert_allclose(
        to_numpy(context), to_numpy(expected_context), atol=ATOL
    )
    np.testing.assert_allclose(
        to_numpy(alignments), to_numpy(expected_alignments), atol=ATOL
    )


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_dtype_policy_and_name_carry_over(policy):
    compat = tfa.BahdanauAttention(4, dtype=policy, name="attend")
    compat(np.zeros((1, 3), "float32"), np.zeros((1, 2, 5), "float32"))
    native = tfa.to_keras_attention(compat)
    assert native.dtype_policy.name == policy
    assert native.name == "attend"


def test_converted_native_layer_saves_and_reloads(tmp_path, rng):
    compat = tfa.MultiHeadAttention(head_size=3, num_heads=2)
    query = keras.Input((None, 6))
    key = keras.Input((None, 7))
    compat([query, key])
    native = tfa.to_keras_attention(compat)
    model = keras.Model([query, key], native(query, key))
    data = [
        rng.normal(size=(2, 5, 6)).astype("float32"),
        rng.normal(size=(2, 4, 7)).astype("float32"),
    ]
    expected = model.predict(data, verbose=0)
    np.testing.assert_allclose(expected, to_numpy(compat(data)), atol=ATOL)
    run_saving_test(
        model,
        lambda b: [x[:b] for x in data],
        tmp_path,
        layer_types=[ka.MultiHeadAttention],
    )


def test_native_weights_carry_on_to_keras_core(rng):
    # MIGRATING.md: the native layer's weights load into
    # keras.layers.MultiHeadAttention, whose softmax (like tfa's) attends a
    # fully masked row uniformly.
    compat = tfa.MultiHeadAttention(head_size=3, num_heads=2, output_size=5)
    query = rng.normal(size=(2, 4, 6)).astype("float32")
    key = rng.normal(size=(2, 3, 7)).astype("float32")
    value = rng.normal(size=(2, 3, 8)).astype("float32")
    mask = _mask(rng, (2, 4, 3))
    mask[0, 1] = False
    compat([query, key, value])
    randomize_weights(compat, rng)
    expected = to_numpy(compat([query, key, value], mask=mask))
    native = tfa.to_keras_attention(compat)
    core = keras.layers.MultiHeadAttention(
        num_heads=2, key_dim=3, value_dim=3, output_shape=5
    )
    core(query, value, key=key)
    core.set_weights(native.get_weights())
    got = to_numpy(core(query, value, key=key, attention_mask=mask))
    np.testing.assert_allclose(got, expected, atol=ATOL)
