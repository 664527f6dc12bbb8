"""Property-based tests: the ops and layers against `tests/reference.py`.

Hypothesis draws the batch, lengths (1 to 300), heads, head and feature
sizes, chunk sizes (mostly not dividing the lengths), boolean masks (random,
all-True, all-False, padding, and rows emptied out entirely), causal
masking, additive biases (with `-inf` entries) and the dtype (float32,
float16, bfloat16), and compares every output with the float64 NumPy
reference, which shares no code with the package.

CI runs every property with the `ci` profile (25 examples each, see
`tests/conftest.py`). The long run, 500 examples per property:

    python -m pytest -q tests/test_properties.py \
        --hypothesis-profile=thorough --hypothesis-show-statistics

(with `KERAS_BACKEND=jax` for the JAX backend).

Tolerances, relative to the scale of the expected output
(`max(1, max|want|)`):

- float32: `1e-5` (the kernels compute in float32; the reference in
  float64).
- float16 / bfloat16 ops: the logits and softmax run in float32 on the
  rounded inputs, so only the weights' and the output's rounding to the
  half type remains: a few units of its epsilon (2**-11, 2**-8).
- float16 / bfloat16 layers (mixed precision): the projections run in the
  half type too, and their rounding moves the logits, so the bounds are
  looser.
"""

import keras
import numpy as np
import pytest
from hypothesis import event
from hypothesis import given
from hypothesis import settings
from hypothesis import strategies as st
from keras import ops

from keras_attention import AdditiveAttention
from keras_attention import AttentionPooling
from keras_attention import MultiHeadAttention
from keras_attention.ops import additive_attention
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import to_numpy

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using a softmax over axis:UserWarning"
)

DTYPES = ("float32", "float16", "bfloat16")
OP_TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 4e-2}
LAYER_TOL = {"float32": 1e-5, "float16": 2e-2, "bfloat16": 1.2e-1}
MASK_KINDS = (
    "none",
    "all_true",
    "all_false",
    "random",
    "empty_rows",
    "padding",
)
# Longest sequences drawn; the chunked properties use chunks of at least
# 1/MAX_BLOCKS of the length, so that an eager run stays short.
MAX_LEN = 300
MAX_BLOCKS = 12


def jax_ci_examples(n):
    """At most `n` examples on JAX in the `ci` profile.

    On JAX every new shape is a new XLA compilation (1-4 s on CPU), and
    hypothesis draws new shapes for nearly every example, so CI runs these
    properties with fewer examples there. Other profiles (`thorough`) and
    the TensorFlow backend are unchanged.
    """
    in_ci = settings.default.max_examples == (
        settings.get_profile("ci").max_examples
    )
    if keras.backend.backend() == "jax" and in_ci:
        return settings(max_examples=min(n, settings.default.max_examples))
    return lambda test: test


def lengths(max_len=MAX_LEN):
    """Mostly short sequences, sometimes up to `max_len`."""
    return st.one_of(st.integers(1, 12), st.integers(1, max_len))


def _round(x, dtype):
    """`x` rounded to `dtype`, back in float32: what the kernel computes on."""
    return to_numpy(ops.cast(ops.cast(x, dtype), "float32"))


def _as_float32(x):
    return to_numpy(ops.cast(x, "float32"))


def _bool_mask(rng, kind, shape):
    """A boolean mask of `shape`; rows are along the last axis."""
    if kind in ("none", "all_true"):
        return np.ones(shape, bool)
    if kind == "all_false":
        return np.zeros(shape, bool)
    if kind == "padding":
        length = shape[-1]
        lengths_ = rng.integers(0, length + 1, size=shape[:-1])
        return np.arange(length) < lengths_[..., None]
    mask = rng.random(shape) < rng.uniform(0.2, 0.9)
    if kind == "empty_rows":
        mask[rng.random(shape[:-1]) < 0.3] = False
    return mask


def _assert_close(got, want, tol, what):
    got = np.asarray(got, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(
        got, want, atol=tol * scale, rtol=tol, err_msg=what
    )


def _chunk_for(data, t, s, max_blocks=MAX_BLOCKS):
    """A chunk size of at least max(t, s) / max_blocks, often ragged."""
    longest = max(t, s)
    chunk = data.draw(
        st.integers(max(1, -(-longest // max_blocks)), longest + 3),
        label="chunk_size",
    )
    ragged = (t % chunk != 0) or (s % chunk != 0)
    event("chunk does not divide a length" if ragged else "chunk divides")
    return chunk


def _layer_chunk_size(draw, t, s):
    """A layer's `chunk_size`: None, "auto", or at least max(t, s) /
    MAX_BLOCKS."""
    longest = max(t, s)
    return draw(
        st.one_of(
            st.none(),
            st.just("auto"),
            st.integers(max(1, -(-longest // MAX_BLOCKS)), longest + 3),
        ),
        label="chunk_size",
    )


def _output_and_scores(layer, query, value, return_scores, **kwargs):
    """`layer(query, value, **kwargs)` as `(output, scores)`; the scores
    are None unless `return_scores`."""
    result = layer(
        query, value, return_attention_scores=return_scores, **kwargs
    )
    return result if return_scores else (result, None)


# -- scaled_dot_product_attention -------------------------------------------


@st.composite
def sdpa_cases(draw, max_len=MAX_LEN):
    b = draw(st.integers(1, 3), label="batch")
    t = draw(lengths(max_len), label="q_len")
    s = draw(lengths(max_len), label="k_len")
    kv = draw(st.integers(1, 3), label="kv_heads")
    groups = draw(st.integers(1, 3), label="groups")
    h = draw(st.integers(1, 32), label="head_dim")
    hv = draw(st.integers(1, 32), label="value_dim")
    return dict(
        b=b,
        t=t,
        s=s,
        n=kv * groups,
        kv=kv,
        h=h,
        hv=hv,
        mask_kind=draw(st.sampled_from(MASK_KINDS), label="mask"),
        mask_layout=draw(
            st.sampled_from(["2d", "keys", "rows", "heads", "full"]),
            label="mask_layout",
        ),
        is_causal=draw(st.booleans(), label="is_causal"),
        scale=draw(st.one_of(st.none(), st.floats(0.05, 2.0)), label="scale"),
        dtype=draw(st.sampled_from(DTYPES), label="dtype"),
        seed=draw(st.integers(0, 2**32 - 1), label="seed"),
    )


def _sdpa_inputs(case):
    rng = np.random.default_rng(case["seed"])
    b, t, s, n, kv = (case[k] for k in ("b", "t", "s", "n", "kv"))
    q = rng.normal(size=(b, t, n, case["h"])).astype("float32")
    k = rng.normal(size=(b, s, kv, case["h"])).astype("float32")
    v = rng.normal(size=(b, s, kv, case["hv"])).astype("float32")
    mask = None
    if case["mask_kind"] != "none":
        shape = {
            "2d": (t, s),
            "keys": (b, 1, 1, s),
            "rows": (b, 1, t, s),
            "heads": (1, n, t, s),
            "full": (b, n, t, s),
        }[case["mask_layout"]]
        mask = _bool_mask(rng, case["mask_kind"], shape)
    return rng, (q, k, v), mask


@jax_ci_examples(8)
@given(case=sdpa_cases(), data=st.data())
def test_sdpa_dense_matches_reference(case, data):
    rng, (q, k, v), mask = _sdpa_inputs(case)
    b, t, s, n = (case[k] for k in ("b", "t", "s", "n"))
    bias = None
    bias_layout = data.draw(
        st.sampled_from(["none", "2d", "heads", "full"]), label="bias"
    )
    if bias_layout != "none":
        shape = {"2d": (t, s), "heads": (1, n, t, s), "full": (b, n, t, s)}
        bias = rng.normal(size=shape[bias_layout]).astype("float32")
        # Some -inf entries (masking through the bias), rows included.
        bias[rng.random(bias.shape) < 0.1] = -np.inf
        if data.draw(st.booleans(), label="bias_empty_rows"):
            bias[..., rng.integers(0, t), :] = -np.inf
        if data.draw(st.booleans(), label="bias_empties_a_causal_row"):
            # Row r's keys 0..r: with is_causal, no key is left to it.
            row = rng.integers(0, t)
            bias[..., row, : row + 1] = -np.inf
    dtype = case["dtype"]
    return_scores = data.draw(st.booleans(), label="return_scores")
    result = scaled_dot_product_attention(
        *(ops.cast(x, dtype) for x in (q, k, v)),
        mask=mask,
        bias=bias,
        is_causal=case["is_causal"],
        scale=case["scale"],
        return_scores=return_scores,
        chunk_size=None,
    )
    out, scores = result if return_scores else (result, None)
    want, want_scores = reference.sdpa(
        *(_round(x, dtype) for x in (q, k, v)),
        mask=mask,
        bias=bias,
        is_causal=case["is_causal"],
        scale=case["scale"],
    )
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    _assert_close(_as_float32(out), want, OP_TOL[dtype], "output")
    if return_scores:
        _assert_close(_as_float32(scores), want_scores, OP_TOL[dtype], "scores")


@jax_ci_examples(6)
@given(case=sdpa_cases(), data=st.data())
def test_sdpa_chunked_matches_reference(case, data):
    rng, (q, k, v), mask = _sdpa_inputs(case)
    chunk = _chunk_for(data, case["t"], case["s"])
    dtype = case["dtype"]
    out = scaled_dot_product_attention(
        *(ops.cast(x, dtype) for x in (q, k, v)),
        mask=mask,
        is_causal=case["is_causal"],
        scale=case["scale"],
        chunk_size=chunk,
    )
    want, _ = reference.sdpa(
        *(_round(x, dtype) for x in (q, k, v)),
        mask=mask,
        is_causal=case["is_causal"],
        scale=case["scale"],
    )
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    _assert_close(_as_float32(out), want, OP_TOL[dtype], "output")


@jax_ci_examples(3)
@given(case=sdpa_cases(max_len=40), data=st.data())
def test_sdpa_chunked_gradients_match_dense(case, data):
    """Float32 gradients of the chunked kernel (recomputed blockwise) equal
    the dense kernel's; both are finite with empty rows. (At most 6 x 6
    blocks: the eager backward pass costs one step per block pair.)"""
    _, (q, k, v), mask = _sdpa_inputs(case)
    chunk = _chunk_for(data, case["t"], case["s"], max_blocks=6)

    def run(chunk_size):
        return lambda q, k, v: scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=case["is_causal"],
            scale=case["scale"],
            chunk_size=chunk_size,
        )

    loss, grads = loss_and_grads(run(chunk), q, k, v)
    want_loss, want_grads = loss_and_grads(run(None), q, k, v)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-5)
    for name, g, w in zip("qkv", grads, want_grads):
        _assert_close(g, np.asarray(w, np.float64), 1e-4, f"d{name}")


# -- MultiHeadAttention ------------------------------------------------------


def _weights_by_path(layer):
    return {
        "/".join(w.path.split("/")[-2:]): to_numpy(w) for w in layer.weights
    }


@jax_ci_examples(5)
@given(data=st.data())
def test_multi_head_attention_matches_reference(data):
    draw = data.draw
    b = draw(st.integers(1, 3), label="batch")
    t = draw(lengths(200), label="q_len")
    s = draw(lengths(200), label="k_len")
    kv = draw(st.integers(1, 3), label="kv_heads")
    num_heads = kv * draw(st.integers(1, 2), label="groups")
    key_dim = draw(st.integers(1, 16), label="key_dim")
    value_dim = draw(st.one_of(st.none(), st.integers(1, 16)), label="v_dim")
    dims = draw(st.tuples(*[st.integers(1, 12)] * 3), label="q_k_v_dims")
    separate_key = draw(st.booleans(), label="separate_key")
    output_shape = draw(st.one_of(st.none(), st.integers(1, 8)), label="out")
    window = draw(st.one_of(st.none(), st.integers(1, 8)), label="window")
    chunk_size = _layer_chunk_size(draw, t, s)
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    masks = draw(
        st.fixed_dictionaries(
            {
                "query_mask": st.sampled_from(MASK_KINDS),
                "value_mask": st.sampled_from(MASK_KINDS),
                "attention_mask": st.sampled_from(MASK_KINDS),
            }
        ),
        label="masks",
    )
    is_causal = draw(st.booleans(), label="use_causal_mask")
    use_bias_arg = draw(st.booleans(), label="attention_bias")
    return_scores = draw(st.booleans(), label="return_scores")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))

    layer = MultiHeadAttention(
        num_heads=num_heads,
        key_dim=key_dim,
        value_dim=value_dim,
        num_key_value_heads=kv,
        use_bias=draw(st.booleans(), label="use_bias"),
        output_shape=output_shape,
        sliding_window=window,
        chunk_size=chunk_size,
        bias_initializer="random_normal",
        dtype="float32" if dtype == "float32" else f"mixed_{dtype}",
    )
    query = rng.normal(size=(b, t, dims[0])).astype("float32")
    value = rng.normal(size=(b, s, dims[2])).astype("float32")
    key = rng.normal(size=(b, s, dims[1])).astype("float32")
    call = dict(key=key if separate_key else None, use_causal_mask=is_causal)
    if not separate_key:
        key = value
    full = np.ones((b, t, s), bool)
    for name, shape in (
        ("query_mask", (b, t)),
        ("value_mask", (b, s)),
        ("attention_mask", (b, t, s)),
    ):
        if masks[name] == "none":
            continue
        mask = _bool_mask(rng, masks[name], shape)
        call[name] = mask
        if name == "query_mask":
            mask = mask[:, :, None]
        elif name == "value_mask":
            mask = mask[:, None, :]
        full &= mask
    if is_causal:
        full &= np.tril(np.ones((t, s), bool))
    if window is not None:
        i, j = np.arange(t)[:, None], np.arange(s)[None, :]
        full &= np.abs(i - j) < window
    bias = None
    if use_bias_arg:
        bias = rng.normal(size=(b, t, s)).astype("float32")
        bias[rng.random(bias.shape) < 0.1] = -np.inf
        if draw(st.booleans(), label="bias_empties_a_causal_row"):
            # Row r's keys 0..r: with use_causal_mask, no key is left to it.
            row = rng.integers(0, t)
            bias[:, row, : row + 1] = -np.inf
        call["attention_bias"] = bias

    out, scores = _output_and_scores(layer, query, value, return_scores, **call)

    rounded = [_round(x, dtype) for x in (query, value, key)]
    want, want_scores = reference.mha(
        _weights_by_path(layer),
        rounded[0],
        rounded[1],
        key=rounded[2],
        mask=full,
        bias=bias,
    )
    # A query that may attend no key (masked out, or -inf bias) is zero.
    usable = full if bias is None else full & (bias > -np.inf)
    empty = ~usable.any(axis=-1)
    event(f"empty query rows: {'some' if empty.any() else 'none'}")
    want[empty] = 0.0
    tol = LAYER_TOL[dtype]
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    got = _as_float32(out)
    _assert_close(got, want, tol, "output")
    assert np.all(got[empty] == 0.0)
    if return_scores:
        _assert_close(_as_float32(scores), want_scores, tol, "scores")


# -- AdditiveAttention -------------------------------------------------------


def _additive_weights(layer):
    return {
        w.path.split("/")[-2] if w.name == "kernel" else w.name: to_numpy(w)
        for w in layer.weights
    }


@jax_ci_examples(5)
@given(data=st.data())
def test_additive_attention_matches_reference(data):
    draw = data.draw
    b = draw(st.integers(1, 3), label="batch")
    single_step = draw(st.booleans(), label="single_step")
    t = 1 if single_step else draw(lengths(40), label="q_len")
    s = draw(lengths(150), label="k_len")
    units = draw(st.integers(1, 16), label="units")
    dq, dk, dv = draw(st.tuples(*[st.integers(1, 12)] * 3), label="dims")
    separate_key = draw(st.booleans(), label="separate_key")
    chunk_size = _layer_chunk_size(draw, t, s)
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    q_kind = draw(st.sampled_from(MASK_KINDS), label="query_mask")
    v_kind = draw(st.sampled_from(MASK_KINDS), label="value_mask")
    is_causal = not single_step and draw(st.booleans(), label="causal")
    return_scores = draw(st.booleans(), label="return_scores")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))

    layer = AdditiveAttention(
        units=units,
        use_bias=draw(st.booleans(), label="use_bias"),
        normalize=draw(st.booleans(), label="normalize"),
        chunk_size=chunk_size,
        dtype="float32" if dtype == "float32" else f"mixed_{dtype}",
    )
    query = rng.normal(size=(b, t, dq)).astype("float32")
    key = rng.normal(size=(b, s, dk)).astype("float32")
    value = rng.normal(size=(b, s, dv)).astype("float32")
    call = dict(key=key if separate_key else None, use_causal_mask=is_causal)
    if not separate_key:
        key = value
    full = np.ones((b, t, s), bool)
    if q_kind != "none":
        q_mask = _bool_mask(rng, q_kind, (b, t))
        full &= q_mask[:, :, None]
        call["query_mask"] = q_mask[:, 0] if single_step else q_mask
    if v_kind != "none":
        v_mask = _bool_mask(rng, v_kind, (b, s))
        full &= v_mask[:, None, :]
        call["value_mask"] = v_mask
    layer_query = query[:, 0] if single_step else query
    layer.build(layer_query.shape, value.shape, key.shape)
    # Non-trivial bias and gain.
    if layer.attention_b is not None:
        layer.attention_b.assign(rng.normal(size=(units,)))
    if layer.attention_g is not None:
        layer.attention_g.assign(rng.uniform(0.5, 2.0))
    out, scores = _output_and_scores(
        layer, layer_query, value, return_scores, **call
    )
    w = _additive_weights(layer)
    rounded = [_round(x, dtype) for x in (query, key, value)]
    want, want_scores = reference.additive(
        *rounded,
        w["query"],
        w["key"],
        w["attention_v"],
        b=w.get("attention_b"),
        g=w.get("attention_g"),
        mask=full,
        is_causal=is_causal,
    )
    if single_step:
        want, want_scores = want[:, 0], want_scores[:, 0]
    tol = LAYER_TOL[dtype]
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    _assert_close(_as_float32(out), want, tol, "output")
    if return_scores:
        _assert_close(_as_float32(scores), want_scores, tol, "scores")


@jax_ci_examples(6)
@given(data=st.data())
def test_additive_attention_op_chunked_matches_reference(data):
    """The op alone, on already-projected inputs, dense or chunked."""
    draw = data.draw
    b = draw(st.integers(1, 3), label="batch")
    t = draw(lengths(40), label="q_len")
    s = draw(lengths(150), label="k_len")
    units = draw(st.integers(1, 16), label="units")
    dv = draw(st.integers(1, 12), label="value_dim")
    chunk = draw(st.one_of(st.none(), st.just(0)), label="dense")
    if chunk is not None:
        chunk = _chunk_for(data, t, s)
    mask_kind = draw(st.sampled_from(MASK_KINDS), label="mask")
    is_causal = draw(st.booleans(), label="is_causal")
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    pq = rng.normal(size=(b, t, units)).astype("float32")
    pk = rng.normal(size=(b, s, units)).astype("float32")
    value = rng.normal(size=(b, s, dv)).astype("float32")
    attention_v = rng.normal(size=(units,)).astype("float32")
    bias = rng.normal(size=(units,)).astype("float32")
    mask = None
    if mask_kind != "none":
        mask = _bool_mask(rng, mask_kind, (b, t, s))
    out = additive_attention(
        ops.cast(pq, dtype),
        ops.cast(pk, dtype),
        ops.cast(value, dtype),
        attention_v,
        hidden_bias=bias,
        mask=mask,
        is_causal=is_causal,
        chunk_size=chunk,
    )
    # The reference projects: identity kernels give the projected inputs.
    want, _ = reference.additive(
        _round(pq, dtype),
        _round(pk, dtype),
        _round(value, dtype),
        np.eye(units),
        np.eye(units),
        attention_v,
        b=bias,
        mask=mask,
        is_causal=is_causal,
    )
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    _assert_close(_as_float32(out), want, OP_TOL[dtype], "output")


# -- AttentionPooling --------------------------------------------------------


@jax_ci_examples(8)
@given(data=st.data())
def test_attention_pooling_matches_reference(data):
    draw = data.draw
    b = draw(st.integers(1, 4), label="batch")
    length = draw(lengths(), label="length")
    dim = draw(st.integers(1, 16), label="dim")
    units = draw(st.one_of(st.none(), st.integers(1, 16)), label="units")
    num_heads = draw(st.integers(1, 4), label="num_heads")
    dtype = draw(st.sampled_from(DTYPES), label="dtype")
    mask_kind = draw(st.sampled_from(MASK_KINDS), label="mask")
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1), label="seed"))
    layer = AttentionPooling(
        units=units,
        num_heads=num_heads,
        bias_initializer="random_normal",
        dtype="float32" if dtype == "float32" else f"mixed_{dtype}",
    )
    x = rng.normal(size=(b, length, dim)).astype("float32")
    mask = None
    if mask_kind != "none":
        mask = _bool_mask(rng, mask_kind, (b, length))
    out, scores = layer(x, mask=mask, return_attention_scores=True)
    w = {w.name: to_numpy(w) for w in layer.weights}
    want, want_scores = reference.pooling(
        _round(x, dtype),
        w["score_kernel"],
        w.get("hidden_kernel"),
        w.get("hidden_bias"),
        mask=mask,
    )
    tol = LAYER_TOL[dtype]
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    _assert_close(_as_float32(out), want, tol, "output")
    _assert_close(_as_float32(scores), want_scores, tol, "scores")
    if mask is not None:
        empty = ~mask.any(axis=-1)
        assert np.all(_as_float32(out)[empty] == 0.0)


# -- Regressions found by these properties -----------------------------------


@pytest.mark.parametrize("chunk_size", [None, 3])
def test_regression_mha_row_emptied_by_inf_bias_is_zero(chunk_size):
    """Found by `test_multi_head_attention_matches_reference` (thorough run):
    a query row whose keys are all `-inf` in `attention_bias` attends no
    key, so its output is zero like a fully masked row, not the output
    projection's bias."""
    layer = MultiHeadAttention(
        num_heads=2,
        key_dim=3,
        bias_initializer="ones",
        chunk_size=chunk_size,
    )
    x = np.random.default_rng(0).normal(size=(2, 4, 5)).astype("float32")
    bias = np.zeros((2, 4, 4), "float32")
    bias[0, 1] = -np.inf  # query 1 of example 0 sees nothing
    bias[1, :, 2] = -np.inf  # key 2 of example 1 is masked for all
    out = to_numpy(layer(x, x, attention_bias=bias))
    assert np.all(out[0, 1] == 0.0)
    want, _ = reference.mha(_weights_by_path(layer), x, x, bias=bias)
    want[0, 1] = 0.0
    np.testing.assert_allclose(out, want, atol=1e-5)


@pytest.mark.parametrize("chunk_size", [None, "auto", 3])
def test_regression_mha_causal_row_emptied_by_inf_bias_is_zero(chunk_size):
    """Causal masking left to the kernel, with an `attention_bias` whose
    column 0 is `-inf`: row 0 sees only key 0, so it attends no key and
    its output is zero, not the output projection's bias."""
    layer = MultiHeadAttention(
        num_heads=2, key_dim=4, bias_initializer="ones", chunk_size=chunk_size
    )
    x = np.random.default_rng(0).normal(size=(1, 4, 4)).astype("float32")
    bias = np.zeros((1, 2, 4, 4), "float32")
    bias[..., 0] = -np.inf
    out = to_numpy(layer(x, x, use_causal_mask=True, attention_bias=bias))
    assert np.all(out[0, 0] == 0.0)
    causal = np.tril(np.ones((4, 4), bool))
    want, _ = reference.mha(
        _weights_by_path(layer), x, x, mask=causal[None], bias=bias
    )
    want[0, 0] = 0.0
    np.testing.assert_allclose(out, want, atol=1e-5)
