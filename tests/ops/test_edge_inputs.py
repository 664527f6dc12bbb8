"""Inputs whose behaviour is defined rather than refused.

Bad inputs raise (`tests/test_bad_inputs.py`); these are accepted, by the
op and by the layers, with the behaviour below.

- Masks of numbers that are all 0 or 1 (e.g. `1.0 - padding`) act as the
  boolean masks `mask > 0`. In traced code (`tf.function`, `jax.jit`, a
  SavedModel) the values cannot be inspected and non-zero counts as True.
- Length 0: a key length of 0 means no query may attend anything, so every
  output row is zero (the fully-masked-row rule); a query length of 0 (or a
  batch of 0) gives an empty output. Dense and chunked kernels agree.
- NaN and Inf in query, key or value are not checked and not replaced: they
  propagate through the arithmetic. An output row is NaN when it attends a
  position that holds NaN (or whose logit is NaN or +-Inf); rows that do
  not depend on it stay finite. A masked key's logit is discarded, but its
  value still enters the weighted sum with weight 0, and 0 x NaN = NaN: pad
  with finite values.
- Inputs are never modified in place.
"""

import numpy as np
import pytest

from keras_attention import AdditiveAttention
from keras_attention import AttentionPooling
from keras_attention import MultiHeadAttention
from keras_attention.ops import additive_attention
from keras_attention.ops import scaled_dot_product_attention
from tests.testing import to_numpy
from tests.testing import traced

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using a softmax over axis:UserWarning"
)


# -- 0/1 masks ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float16", "int32", "uint8"])
def test_numeric_zero_one_masks_equal_boolean_masks(rng, dtype):
    q = rng.normal(size=(2, 4, 2, 8)).astype("float32")
    mask = rng.random((2, 1, 4, 4)) > 0.4
    as_numbers = mask.astype(dtype)
    np.testing.assert_array_equal(
        to_numpy(scaled_dot_product_attention(q, q, q, mask=as_numbers)),
        to_numpy(scaled_dot_product_attention(q, q, q, mask=mask)),
    )
    x = rng.normal(size=(2, 4, 6)).astype("float32")
    padding = np.array([[1, 1, 1, 0], [1, 1, 0, 0]], dtype)
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    np.testing.assert_array_equal(
        to_numpy(layer(x, x, query_mask=padding, value_mask=padding)),
        to_numpy(layer(x, x, query_mask=padding > 0, value_mask=padding > 0)),
    )
    additive_layer = AdditiveAttention(units=4)
    np.testing.assert_array_equal(
        to_numpy(additive_layer(x, x, value_mask=padding)),
        to_numpy(additive_layer(x, x, value_mask=padding > 0)),
    )
    pooling = AttentionPooling(units=4)
    np.testing.assert_array_equal(
        to_numpy(pooling(x, mask=padding)),
        to_numpy(pooling(x, mask=padding > 0)),
    )


def test_traced_masks_are_not_inspected():
    """In a `tf.function`, `jax.jit` or `torch.compile` the values are
    unknown: non-zero counts as True, and nothing fails."""
    q = np.random.default_rng(0).normal(size=(1, 3, 1, 4)).astype("float32")
    half = np.full((3, 3), 0.5, "float32")

    def run(mask):
        return scaled_dot_product_attention(q, q, q, mask=mask)

    np.testing.assert_allclose(
        to_numpy(traced(run)(half)),
        to_numpy(scaled_dot_product_attention(q, q, q)),
        atol=1e-6,
    )


# -- Empty sequences ---------------------------------------------------------


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["dense", "chunked"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_op_with_empty_sequences(rng, chunk_size, is_causal):
    q = rng.normal(size=(2, 3, 2, 4)).astype("float32")
    empty = np.zeros((2, 0, 2, 4), "float32")

    def run(query, kv, **kwargs):
        return to_numpy(
            scaled_dot_product_attention(
                query,
                kv,
                kv,
                is_causal=is_causal,
                chunk_size=chunk_size,
                **kwargs,
            )
        )

    # No keys: every query attends nothing, so every row is zero.
    out = run(q, empty)
    assert out.shape == (2, 3, 2, 4) and np.all(out == 0.0)
    out = run(q, empty, mask=np.zeros((3, 0), bool))
    assert out.shape == (2, 3, 2, 4) and np.all(out == 0.0)
    # No queries, or no examples: an empty output.
    assert run(empty, q).shape == (2, 0, 2, 4)
    assert run(q[:0], q[:0]).shape == (0, 3, 2, 4)
    pq = rng.normal(size=(2, 3, 4)).astype("float32")
    no_keys = additive_attention(
        pq, pq[:, :0], pq[:, :0], np.ones(4, "float32"), chunk_size=chunk_size
    )
    assert tuple(no_keys.shape) == (2, 3, 4)
    assert np.all(to_numpy(no_keys) == 0.0)
    no_queries = additive_attention(
        pq[:, :0], pq, pq, np.ones(4, "float32"), chunk_size=chunk_size
    )
    assert tuple(no_queries.shape) == (2, 0, 4)


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["dense", "chunked"])
def test_layers_with_empty_sequences(rng, chunk_size):
    x = rng.normal(size=(2, 3, 6)).astype("float32")
    empty = np.zeros((2, 0, 6), "float32")
    # A non-zero output bias: a row that attends nothing is still zero.
    mha_layer = MultiHeadAttention(
        num_heads=2, key_dim=4, chunk_size=chunk_size, bias_initializer="ones"
    )
    additive_layer = AdditiveAttention(units=4, chunk_size=chunk_size)
    for layer in (mha_layer, additive_layer):
        out = to_numpy(layer(x, empty))
        assert out.shape == (2, 3, 6) and np.all(out == 0.0)
        masked = layer(x, empty, value_mask=np.zeros((2, 0), bool))
        assert np.all(to_numpy(masked) == 0.0)
        assert tuple(layer(empty, x).shape) == (2, 0, 6)
        no_queries = layer(empty, x, query_mask=np.zeros((2, 0), bool))
        assert tuple(no_queries.shape) == (2, 0, 6)
    out, scores = mha_layer(
        x, empty, use_causal_mask=True, return_attention_scores=True
    )
    assert np.all(to_numpy(out) == 0.0)
    assert tuple(scores.shape) == (2, 2, 3, 0)
    step = additive_layer(x[:, 0], empty)
    assert tuple(step.shape) == (2, 6) and np.all(to_numpy(step) == 0.0)
    pooling = AttentionPooling(units=4, num_heads=2)
    pooled = to_numpy(pooling(empty))
    assert pooled.shape == (2, 12) and np.all(pooled == 0.0)


@pytest.mark.tensorflow_only
def test_empty_sequences_with_unknown_lengths():
    """Length 0 at run time, in a traced function with unknown lengths."""
    import tensorflow as tf

    layer = MultiHeadAttention(
        num_heads=2, key_dim=4, chunk_size=2, bias_initializer="ones"
    )
    spec = tf.TensorSpec((None, None, 6), tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def run(q, v):
        return layer(q, v), layer(q, v, use_causal_mask=True)

    x = np.ones((2, 3, 6), "float32")
    for out in run(x, np.zeros((2, 0, 6), "float32")):
        assert out.shape == (2, 3, 6) and np.all(out.numpy() == 0.0)
    for out in run(np.zeros((2, 0, 6), "float32"), x):
        assert out.shape == (2, 0, 6)


@pytest.mark.tensorflow_only
def test_huge_chunk_size_with_unknown_lengths(rng):
    """Regression: with unknown lengths (a `tf.function`, a SavedModel) the
    chunked kernel padded every request to `chunk_size` positions, so
    `chunk_size=10**9` tried to allocate gigabytes for a 5-token request.
    The chunk now shrinks to the length at run time."""
    import tensorflow as tf

    layer = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=10**9)
    spec = tf.TensorSpec((None, None, 6), tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def run(q, v):
        return layer(q, v, use_causal_mask=True)

    x = rng.normal(size=(2, 5, 6)).astype("float32")
    got = run(x, x).numpy()
    dense = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=None)
    dense(x, x)
    dense.set_weights(layer.get_weights())
    want = to_numpy(dense(x, x, use_causal_mask=True))
    np.testing.assert_allclose(got, want, atol=1e-5)


# -- NaN and Inf propagate ---------------------------------------------------


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize(
    "kind", ["dense", "chunked", "bias", "masked"], ids=str
)
def test_non_finite_query_propagates_to_its_row_only(rng, bad, kind):
    q = rng.normal(size=(2, 5, 2, 4)).astype("float32")
    q[0, 1, 0, 0] = bad
    kwargs = dict(chunk_size=2 if kind == "chunked" else None)
    if kind == "bias":
        kwargs["bias"] = np.zeros((5, 5), "float32")
    if kind == "masked":
        kwargs["mask"] = rng.random((5, 5)) > 0.3
        kwargs["mask"][1] = True
    out = to_numpy(scaled_dot_product_attention(q, q, q, **kwargs))
    # Query 1 of example 0, head 0, attends its own NaN/Inf logits: NaN.
    assert np.all(np.isnan(out[0, 1, 0]))
    # The logits of the other queries that see key 1 are NaN or +-Inf too.
    rest = np.ones(out.shape, bool)
    rest[0, :, 0] = False
    assert np.all(np.isfinite(out[rest]))


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["dense", "chunked"])
def test_nan_value_propagates_even_at_a_masked_key(rng, chunk_size):
    q = rng.normal(size=(1, 3, 1, 4)).astype("float32")
    v = q.copy()
    v[0, 2] = np.nan
    mask = np.array([True, True, False])  # key 2 is masked out
    out = to_numpy(
        scaled_dot_product_attention(
            q, q, v, mask=mask[None, None, None], chunk_size=chunk_size
        )
    )
    # weight 0 x NaN = NaN: documented; pad with finite values.
    assert np.all(np.isnan(out))
    # A NaN *key* at a masked position is discarded with its logit.
    k = q.copy()
    k[0, 2] = np.nan
    out = to_numpy(
        scaled_dot_product_attention(
            q, k, q, mask=mask[None, None, None], chunk_size=chunk_size
        )
    )
    assert np.all(np.isfinite(out))


def test_layers_propagate_nan(rng):
    x = rng.normal(size=(2, 4, 6)).astype("float32")
    x[1, 2, 3] = np.nan
    for layer in (
        MultiHeadAttention(num_heads=2, key_dim=4),
        AdditiveAttention(units=4),
    ):
        out = to_numpy(layer(x, x))
        assert np.all(np.isnan(out[1])) and np.all(np.isfinite(out[0]))
    pooled = to_numpy(AttentionPooling(units=4)(x))
    assert np.all(np.isnan(pooled[1])) and np.all(np.isfinite(pooled[0]))
    bias = np.zeros((2, 4, 4), "float32")
    bias[0, 1, 2] = np.nan  # a NaN bias is not taken for a masked key
    out = to_numpy(MultiHeadAttention(2, 4)(x, x, attention_bias=bias))
    assert np.all(np.isnan(out[0, 1])) and np.all(np.isnan(out[1]))
    assert np.all(np.isfinite(np.delete(out[0], 1, axis=0)))


def test_inputs_are_not_modified(rng):
    x = rng.normal(size=(2, 4, 6)).astype("float32")
    mask = np.array([[1.0, 1.0, 0.0, 0.0], [1.0, 0.0, 0.0, 0.0]], "float32")
    before = x.copy(), mask.copy()
    MultiHeadAttention(2, 4)(x, x, value_mask=mask)
    np.testing.assert_array_equal(x, before[0])
    np.testing.assert_array_equal(mask, before[1])
