import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from keras import ops

from keras_attention.ops import causal_mask
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import to_numpy

TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 6e-2}


def _inputs(rng, b=2, t=5, s=7, n=4, kv=None, h=8, hv=None):
    kv = kv or n
    hv = hv or h
    q = rng.normal(size=(b, t, n, h)).astype("float32")
    k = rng.normal(size=(b, s, kv, h)).astype("float32")
    v = rng.normal(size=(b, s, kv, hv)).astype("float32")
    return q, k, v


def _mask(kind, rng, b, n, t, s):
    if kind is None:
        return None
    if kind == "padding":
        lengths = rng.integers(1, s + 1, size=b)
        m = np.arange(s)[None, :] < lengths[:, None]
        return m[:, None, None, :]
    if kind == "random":
        return rng.random((b, n, t, s)) > 0.4
    if kind == "empty_rows":
        m = rng.random((b, 1, t, s)) > 0.3
        m[:, :, 0, :] = False  # the first query of each batch sees nothing
        return m
    if kind == "2d":
        return rng.random((t, s)) > 0.3
    raise ValueError(kind)


@pytest.mark.parametrize("dtype", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize(
    "mask_kind", [None, "padding", "random", "empty_rows", "2d"]
)
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
@pytest.mark.parametrize(
    "shape",
    [
        dict(b=2, t=5, s=7, n=4),
        dict(b=1, t=9, s=9, n=2, h=16, hv=4),
        dict(b=3, t=4, s=6, n=6, kv=2),  # grouped-query
        dict(b=2, t=1, s=3, n=1, kv=1),
    ],
    ids=["cross", "self_hv", "gqa", "tiny"],
)
def test_matches_numpy_reference(rng, shape, is_causal, mask_kind, dtype):
    q, k, v = _inputs(rng, **shape)
    b, t, n, _ = q.shape
    s = k.shape[1]
    mask = _mask(mask_kind, rng, b, n, t, s)
    bias = rng.normal(size=(b, n, t, s)).astype("float32")
    out, scores = scaled_dot_product_attention(
        ops.cast(q, dtype),
        ops.cast(k, dtype),
        ops.cast(v, dtype),
        mask=mask,
        bias=bias,
        is_causal=is_causal,
        return_scores=True,
    )
    # The reference sees the same (rounded) inputs in float64.
    q_r, k_r, v_r = (
        to_numpy(ops.cast(ops.cast(x, dtype), "float32")) for x in (q, k, v)
    )
    want, want_scores = reference.sdpa(
        q_r, k_r, v_r, mask=mask, bias=bias, is_causal=is_causal
    )
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    assert tuple(out.shape) == (b, t, n, v.shape[-1])
    assert tuple(scores.shape) == (b, n, t, s)
    tol = TOL[dtype]
    np.testing.assert_allclose(
        to_numpy(ops.cast(out, "float32")), want, atol=tol, rtol=tol
    )
    np.testing.assert_allclose(
        to_numpy(ops.cast(scores, "float32")), want_scores, atol=tol, rtol=tol
    )


def test_exact_values_tiny():
    # One head, dim 1, scale 1: logits are q * k.
    q = np.array([[[[1.0]], [[0.0]]]], "float32")  # (1, 2, 1, 1)
    k = np.array([[[[0.0]], [[np.log(3.0)]]]], "float32")  # (1, 2, 1, 1)
    v = np.array([[[[1.0]], [[5.0]]]], "float32")
    out, scores = scaled_dot_product_attention(
        q, k, v, scale=1.0, return_scores=True
    )
    # Query 0: logits [0, ln 3] -> weights [1/4, 3/4] -> 1/4 + 15/4 = 4.
    # Query 1: logits [0, 0] -> weights [1/2, 1/2] -> 3.
    np.testing.assert_allclose(
        to_numpy(scores)[0, 0], [[0.25, 0.75], [0.5, 0.5]], rtol=1e-6
    )
    np.testing.assert_allclose(to_numpy(out)[0, :, 0, 0], [4.0, 3.0], rtol=1e-6)
    # Causal: query 0 sees only key 0.
    out = scaled_dot_product_attention(q, k, v, scale=1.0, is_causal=True)
    np.testing.assert_allclose(to_numpy(out)[0, :, 0, 0], [1.0, 3.0], rtol=1e-6)


def test_causal_mask_is_top_left_aligned():
    np.testing.assert_array_equal(
        to_numpy(causal_mask(2, 3)), [[True, False, False], [True, True, False]]
    )


def test_fully_masked_rows_are_zero_with_finite_gradients(rng):
    q, k, v = _inputs(rng, b=2, t=3, s=4, n=2)
    mask = np.ones((2, 1, 3, 4), bool)
    mask[0, :, 1] = False
    bias = np.zeros((2, 2, 3, 4), "float32")
    bias[1, :, 2] = -np.inf  # masking through the bias works the same way
    out, scores = scaled_dot_product_attention(
        q, k, v, mask=mask, bias=bias, return_scores=True
    )
    out = to_numpy(out)
    assert np.all(out[0, 1] == 0.0) and np.all(out[1, 2] == 0.0)
    assert np.all(to_numpy(scores)[0, :, 1] == 0.0)
    assert np.all(np.isfinite(out))
    _assert_finite_gradients(q, k, v, mask, bias)


def _assert_finite_gradients(q, k, v, mask, bias):
    _, grads = loss_and_grads(
        lambda q, k, v: scaled_dot_product_attention(
            q, k, v, mask=mask, bias=bias
        ),
        q,
        k,
        v,
    )
    for g in grads:
        assert np.all(np.isfinite(to_numpy(g)))
    # The masked query row gets no gradient at all.
    assert np.all(to_numpy(grads[0])[0, 1] == 0.0)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_large_logits_do_not_overflow_in_half_precision(rng, dtype):
    # |logit| reaches 1e4: q.k = 100 * 100 in every head.
    q = np.full((1, 3, 2, 1), 100.0, "float32")
    q[0, 1] = -100.0
    k = np.full((1, 4, 2, 1), 100.0, "float32")
    k[0, 2] = -100.0
    v = rng.normal(size=(1, 4, 2, 3)).astype("float32")
    out = scaled_dot_product_attention(
        ops.cast(q, dtype), ops.cast(k, dtype), ops.cast(v, dtype), scale=1.0
    )
    want, _ = reference.sdpa(
        q, k, to_numpy(ops.cast(ops.cast(v, dtype), "float32")), scale=1.0
    )
    got = to_numpy(ops.cast(out, "float32"))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=TOL[dtype], rtol=TOL[dtype])


def test_dropout_only_in_training_and_reproducible(rng):
    q, k, v = _inputs(rng, b=2, t=16, s=16, n=2)
    plain = to_numpy(scaled_dot_product_attention(q, k, v))
    inference = to_numpy(
        scaled_dot_product_attention(q, k, v, dropout_rate=0.5, seed=3)
    )
    np.testing.assert_array_equal(plain, inference)
    ones = np.ones_like(v)
    a = to_numpy(
        scaled_dot_product_attention(
            q, k, ones, dropout_rate=0.5, training=True, seed=3
        )
    )
    b = to_numpy(
        scaled_dot_product_attention(
            q, k, ones, dropout_rate=0.5, training=True, seed=3
        )
    )
    np.testing.assert_array_equal(a, b)
    # With all-ones values the output is the kept weight mass / (1 - rate):
    # about 1 on average, and not everywhere 1.
    assert not np.allclose(a, 1.0)
    assert abs(a.mean() - 1.0) < 0.1


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(query=np.zeros((2, 3, 4))), "`query` must have rank 4"),
        (dict(key=np.zeros((2, 5, 2, 7))), "head dim"),
        (dict(value=np.zeros((2, 6, 2, 8))), "sequence length"),
        (
            dict(key=np.zeros((3, 5, 2, 8)), value=np.zeros((3, 5, 2, 8))),
            "batch size",
        ),
        (
            dict(key=np.zeros((2, 5, 3, 8)), value=np.zeros((2, 5, 3, 8))),
            "multiple of the number of heads",
        ),
        (dict(mask=np.ones((2, 4, 5), bool)), "rank 2 .* or rank 4"),
        (dict(mask=np.ones((2, 1, 3, 6), bool)), "`mask` must be broadcast"),
        (dict(bias=np.ones((2, 3, 3, 5))), "`bias` must be broadcast"),
        (dict(dropout_rate=1.0), "`dropout_rate`"),
        (dict(dropout_rate=-0.1), "`dropout_rate`"),
    ],
)
def test_bad_input_raises(kwargs, match):
    args = dict(
        query=np.zeros((2, 3, 4, 8), "float32"),
        key=np.zeros((2, 5, 2, 8), "float32"),
        value=np.zeros((2, 5, 2, 8), "float32"),
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        scaled_dot_product_attention(**args)


@given(
    b=st.integers(1, 3),
    t=st.integers(1, 24),
    s=st.integers(1, 24),
    kv=st.integers(1, 3),
    groups=st.integers(1, 3),
    h=st.sampled_from([1, 4, 8]),
    is_causal=st.booleans(),
    use_mask=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_property_matches_reference(
    b, t, s, kv, groups, h, is_causal, use_mask, seed
):
    rng = np.random.default_rng(seed)
    n = kv * groups
    q, k, v = _inputs(rng, b=b, t=t, s=s, n=n, kv=kv, h=h)
    mask = rng.random((b, 1, t, s)) > 0.3 if use_mask else None
    out, scores = scaled_dot_product_attention(
        q, k, v, mask=mask, is_causal=is_causal, return_scores=True
    )
    want, want_scores = reference.sdpa(q, k, v, mask=mask, is_causal=is_causal)
    np.testing.assert_allclose(to_numpy(out), want, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(to_numpy(scores), want_scores, atol=1e-5)
