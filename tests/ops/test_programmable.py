"""Programmable attention: `score_mod`, `mask_mod`, `sliding_window`,
segment ids and `sinks`, in the dense and chunked kernels.

The NumPy reference is first checked on hand-computed values; then our
outputs against it (prefix-LM, dilated window, documents, ALiBi, soft cap,
sinks, windows, cross-attention, GQA, a causal offset, empty rows), the
chunked kernel's gradients against the dense kernel's with every feature on,
a learnable score_mod parameter, and, on PyTorch, FlexAttention on the same
user functions.

The user functions are written once per case for a namespace `xp`: NumPy
for the reference, `keras.ops` for our kernels, whose index arguments are
int32 tensors (TensorFlow won't multiply them by a float, hence
`xp.multiply`).
"""

import keras
import numpy as np
import pytest

from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.ops import cases
from tests.testing import compiled
from tests.testing import loss_and_grads
from tests.testing import numeric_grads
from tests.testing import to_numpy

# Several blocks, and most lengths below are not multiples of it.
CHUNK = 3
PREFIX = 4
SLOPES = (0.5, 0.25, 0.125, 0.0625)
CAP = 30.0
SINKS = (0.5, -1.0, 2.5, 0.0)
# Two documents' ids per batch row, for sequences of 10.
DOCS = np.array(
    [[0, 0, 0, 1, 1, 2, 2, 2, 2, 3], [0, 1, 1, 1, 1, 1, 2, 2, 3, 3]],
    np.int32,
)


def prefix_lm(xp):
    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) | (kv_idx < PREFIX)

    return mask_mod


def dilated_window(xp, dilation=2, window=7):
    def mask_mod(b, h, q_idx, kv_idx):
        distance = q_idx - kv_idx
        return (
            (distance >= 0) & (distance % dilation == 0) & (distance < window)
        )

    return mask_mod


def document_mask(xp, docs):
    """Same document: ids `docs` (batch, length) looked up with `xp.take`
    in the flattened ids."""
    length = docs.shape[1]
    flat_docs = xp.array(docs.reshape(-1), dtype="int32")

    def mask_mod(b, h, q_idx, kv_idx):
        q_doc = xp.take(flat_docs, b * length + q_idx)
        kv_doc = xp.take(flat_docs, b * length + kv_idx)
        return q_doc == kv_doc

    return mask_mod


def _floats(xp, values):
    """A constant: float64 for the reference, float32 for our kernels."""
    return xp.array(values, dtype="float64" if xp is np else "float32")


def alibi(xp, slopes=SLOPES):
    """ALiBi with one slope per query head, from a captured constant."""
    slopes = _floats(xp, slopes)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score - xp.multiply(xp.take(slopes, h), abs(q_idx - kv_idx))

    return score_mod


def soft_cap(xp):
    def score_mod(score, b, h, q_idx, kv_idx):
        return CAP * xp.tanh(score / CAP)

    return score_mod


def _sinks(xp, n):
    return _floats(xp, SINKS[:n])


def _cross_mods(xp):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score + xp.multiply(0.1, kv_idx)

    def mask_mod(b, h, q_idx, kv_idx):
        return kv_idx < 9 - 2 * b  # a padding length per batch row

    return dict(score_mod=score_mod, mask_mod=mask_mod)


def _gqa_mods(xp):
    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx - kv_idx < 2 + 2 * h  # a window per query head

    return dict(score_mod=alibi(xp), mask_mod=mask_mod)


def _offset_mods(xp):
    def score_mod(score, b, h, q_idx, kv_idx):
        return score - xp.multiply(0.05, q_idx - kv_idx)

    def mask_mod(b, h, q_idx, kv_idx):
        return (q_idx + kv_idx) % 3 != 0  # needs the absolute q_idx

    return dict(score_mod=score_mod, mask_mod=mask_mod)


# Query rows that attend nothing in the "empty_rows" case: q_idx 2 by
# mask_mod, 5 by a score_mod's -inf, and 6 of batch row 1 by its segment.
EMPTY_ROWS = ((slice(None), 2), (slice(None), 5), (1, 6))


def _empty_rows_kwargs(xp):
    def score_mod(score, b, h, q_idx, kv_idx):
        return xp.where(q_idx == 5, -np.inf, score)

    def mask_mod(b, h, q_idx, kv_idx):
        return q_idx != 2

    q_ids = np.zeros((2, 7), np.int32)
    q_ids[1, 6] = 7  # no key has segment 7
    k_ids = np.zeros((2, 11), np.int32)
    k_ids[:, 4] = 1  # nor does any query have segment 1
    return dict(
        score_mod=score_mod,
        mask_mod=mask_mod,
        query_segment_ids=xp.array(q_ids, dtype="int32"),
        key_segment_ids=xp.array(k_ids, dtype="int32"),
        sinks=_sinks(xp, 2),
    )


def _segments(xp, q_ids, k_ids):
    return dict(
        query_segment_ids=xp.array(q_ids, dtype="int32"),
        key_segment_ids=xp.array(k_ids, dtype="int32"),
    )


# Few shapes: JAX compiles each op once per shape.
SELF = (2, 10, 10, 2, 2)
SELF_GQA = (2, 10, 10, 4, 2)
CROSS = (2, 7, 11, 2, 2)
CASES = {
    # name: ((b, t, s, n, kv), kwargs(xp))
    "prefix_lm": (
        SELF,
        lambda xp: dict(mask_mod=prefix_lm(xp)),
    ),
    "dilated_window": (
        SELF,
        lambda xp: dict(mask_mod=dilated_window(xp)),
    ),
    "document_mask_mod": (
        SELF_GQA,
        lambda xp: dict(mask_mod=document_mask(xp, DOCS), is_causal=True),
    ),
    "document_segment_ids": (
        SELF,
        lambda xp: dict(is_causal=True, **_segments(xp, DOCS, DOCS)),
    ),
    "segment_ids_cross": (
        CROSS,
        # Query 6 is in segment 4, which no key has: an empty row.
        lambda xp: _segments(
            xp,
            np.array([[0, 0, 1, 1, 2, 3, 4]] * 2),
            np.pad(DOCS, [(0, 0), (0, 1)], mode="edge"),
        ),
    ),
    "alibi": (
        SELF_GQA,
        lambda xp: dict(score_mod=alibi(xp)),
    ),
    "soft_cap": (
        # A large scale, so that the cap changes the logits.
        SELF,
        lambda xp: dict(score_mod=soft_cap(xp), scale=5.0),
    ),
    "sinks_causal": (
        SELF_GQA,
        lambda xp: dict(sinks=_sinks(xp, 4), is_causal=True),
    ),
    "window_causal": (
        SELF,
        lambda xp: dict(sliding_window=4, is_causal=True),
    ),
    "window_symmetric": (
        SELF,
        lambda xp: dict(sliding_window=4),
    ),
    "cross_mods": (
        CROSS,
        _cross_mods,
    ),
    "gqa_mods_causal": (
        SELF_GQA,
        lambda xp: dict(is_causal=True, **_gqa_mods(xp)),
    ),
    "causal_offset": (
        CROSS,
        lambda xp: dict(
            is_causal=True,
            causal_offset=4,
            sliding_window=5,
            **_offset_mods(xp),
        ),
    ),
    "empty_rows": (
        CROSS,
        _empty_rows_kwargs,
    ),
}
# Keyword arguments the op has had before the programmable ones.
PLAIN_KWARGS = ("is_causal", "causal_offset", "scale")


def _ours(q, k, v, chunk_size, **kwargs):
    return to_numpy(
        scaled_dot_product_attention(q, k, v, chunk_size=chunk_size, **kwargs)
    )


# The reference, on hand-computed values.


def test_reference_sink_by_hand():
    """One head, two queries, two keys: `q = k = I`, scale 1, sink 0.5."""
    eye = np.eye(2).reshape(1, 2, 1, 2)
    v = np.array([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 2, 1, 2)
    e, s = np.e, np.exp(0.5)
    out, weights = reference.sdpa(eye, eye, v, scale=1.0, sinks=[0.5])
    want = np.array([[e, 1], [1, e]]) / (e + 1 + s)
    np.testing.assert_allclose(weights[0, 0], want)
    np.testing.assert_allclose(out[0, :, 0], want @ v[0, :, 0])
    assert np.all(weights.sum(-1) < 1)
    # Causal: query 0 attends key 0 and the sink only.
    out, weights = reference.sdpa(
        eye, eye, v, scale=1.0, sinks=[0.5], is_causal=True
    )
    np.testing.assert_allclose(weights[0, 0, 0], [e / (e + s), 0])
    np.testing.assert_allclose(out[0, 0, 0], e / (e + s) * np.array([1, 2]))


def test_reference_sink_larger_than_logits_and_empty_row():
    """A sink far above the logits takes the whole row without overflow;
    a row with no key is zero whatever the sink."""
    q = np.zeros((1, 2, 1, 2))
    v = np.ones((1, 3, 1, 2))
    mask = np.array([[True, True, True], [False, False, False]])
    k = np.zeros((1, 3, 1, 2))
    out, weights = reference.sdpa(q, k, v, mask=mask, sinks=[800.0])
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(weights[0, 0, 0], 0, atol=1e-300)
    out, _ = reference.sdpa(q, k, v, mask=mask, sinks=[-3.0])
    np.testing.assert_allclose(out[0, 0, 0], [3 / (3 + np.exp(-3))] * 2)
    assert np.all(out[0, 1] == 0)


def test_reference_window_offset_and_segments_by_hand():
    q = np.zeros((1, 1, 1, 2))  # equal logits: uniform weights
    k = np.zeros((1, 6, 1, 2))
    v = np.arange(6.0).reshape(1, 6, 1, 1)
    # Query at position 3, window 2: keys 2, 3 and 4; causal: 2 and 3.
    _, weights = reference.sdpa(q, k, v, sliding_window=2, causal_offset=3)
    third = 1 / 3
    np.testing.assert_allclose(weights[0, 0, 0], [0, 0, third, third, third, 0])
    _, weights = reference.sdpa(
        q, k, v, sliding_window=2, causal_offset=3, is_causal=True
    )
    np.testing.assert_allclose(weights[0, 0, 0], [0, 0, 0.5, 0.5, 0, 0])
    # Segments: query 0 in segment 0 (keys 0, 1), query 1 in 1 (key 2).
    out, weights = reference.sdpa(
        np.zeros((1, 2, 1, 2)),
        k[:, :3],
        v[:, :3],
        query_segment_ids=[[0, 1]],
        key_segment_ids=[[0, 0, 1]],
    )
    np.testing.assert_allclose(weights[0, 0], [[0.5, 0.5, 0], [0, 0, 1]])
    np.testing.assert_allclose(out[0, :, 0, 0], [0.5, 2.0])


def test_reference_mods_get_index_grids_and_come_before_the_cap():
    """The index arguments broadcast to (B, N, T, S), `q_idx` from the
    offset; score_mod runs before the soft cap, and its -inf masks."""
    seen = []

    def mask_mod(b, h, q_idx, kv_idx):
        seen.append((b, h, q_idx, kv_idx))
        return kv_idx <= q_idx

    q, k, v = cases.qkv(np.random.default_rng(0), 2, 3, 5, 4, 2)
    reference.sdpa(q, k, v, mask_mod=mask_mod, causal_offset=2)
    [grids] = seen
    assert np.broadcast_shapes(*(grid.shape for grid in grids)) == (2, 4, 3, 5)
    for grid, want in zip(grids, (range(2), range(4), range(2, 5), range(5))):
        assert grid.dtype == np.int32
        np.testing.assert_array_equal(grid.reshape(-1), list(want))
    # Logits [0, 0] + 30 kv_idx, then capped at 10: [0, 10 tanh(3)].
    zeros = np.zeros((1, 1, 1, 2))
    v = np.array([0.0, 1.0]).reshape(1, 2, 1, 1)
    out, _ = reference.sdpa(
        zeros,
        np.zeros((1, 2, 1, 2)),
        v,
        soft_cap=10.0,
        score_mod=lambda s, b, h, q_idx, kv_idx: s + 30 * kv_idx,
    )
    top = np.exp(10 * np.tanh(3.0))
    np.testing.assert_allclose(out[0, 0, 0, 0], top / (1 + top))
    out, weights = reference.sdpa(
        zeros,
        np.zeros((1, 2, 1, 2)),
        v,
        soft_cap=10.0,
        score_mod=lambda s, b, h, q_idx, kv_idx: np.where(
            kv_idx == 1, -np.inf, s
        ),
    )
    np.testing.assert_array_equal(weights[0, 0, 0], [1, 0])


def test_reference_document_mask_equals_segment_ids():
    q, k, v = cases.qkv(np.random.default_rng(1), 2, 10, 10, 2, 2)
    by_mod = reference.sdpa(q, k, v, mask_mod=document_mask(np, DOCS))
    by_ids = reference.sdpa(
        q, k, v, query_segment_ids=DOCS, key_segment_ids=DOCS
    )
    np.testing.assert_array_equal(by_mod[1], by_ids[1])


# Our kernels against the reference.


@pytest.mark.parametrize("chunk_size", [None, "auto", CHUNK])
@pytest.mark.parametrize("case", list(CASES))
def test_matches_reference(rng, case, chunk_size):
    (b, t, s, n, kv), make_kwargs = CASES[case]
    q, k, v = cases.qkv(rng, b, t, s, n, kv)
    want, _ = reference.sdpa(q, k, v, **make_kwargs(np))
    plain = {
        name: value
        for name, value in make_kwargs(np).items()
        if name in PLAIN_KWARGS
    }
    # The case's new arguments change the result.
    assert np.abs(want - reference.sdpa(q, k, v, **plain)[0]).max() > 1e-2
    got = _ours(q, k, v, chunk_size, **make_kwargs(keras.ops))
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    if case == "empty_rows":
        for index in EMPTY_ROWS:
            assert np.all(got[index] == 0), index


def test_returned_scores_exclude_the_sinks(rng):
    q, k, v = cases.qkv(rng, *CROSS)
    want, want_scores = reference.sdpa(q, k, v, **_empty_rows_kwargs(np))
    out, scores = scaled_dot_product_attention(
        q,
        k,
        v,
        chunk_size=None,
        return_scores=True,
        **_empty_rows_kwargs(keras.ops),
    )
    np.testing.assert_allclose(to_numpy(out), want, atol=1e-5)
    np.testing.assert_allclose(to_numpy(scores), want_scores, atol=1e-6)
    assert np.all(to_numpy(scores).sum(-1) < 1)


# Gradients.


def _all_features(xp):
    """Everything at once: GQA, causal, a window, ALiBi, a mask_mod,
    segment ids with an empty row; sinks are an argument."""
    q_ids = np.array([[0, 0, 0, 1, 1, 1, 1], [0, 0, 1, 1, 1, 2, 2]])
    k_ids = q_ids.copy()
    k_ids[1, 5:] = 3  # queries 5 and 6 of batch row 1 attend nothing
    return dict(
        is_causal=True,
        sliding_window=5,
        score_mod=alibi(xp),
        mask_mod=lambda b, h, q_idx, kv_idx: (q_idx + kv_idx) % 4 != 1,
        **_segments(xp, q_ids, k_ids),
    )


def test_chunked_gradients_equal_dense_with_every_feature(rng):
    q, k, v = cases.qkv(rng, 2, 7, 7, 4, 2)
    sinks = np.array(SINKS, np.float32)

    def run(chunk_size):
        return compiled(
            lambda q, k, v, sinks: scaled_dot_product_attention(
                q,
                k,
                v,
                sinks=sinks,
                chunk_size=chunk_size,
                **_all_features(keras.ops),
            )
        )

    def ref(q, k, v, sinks):
        return reference.sdpa(q, k, v, sinks=sinks, **_all_features(np))[0]

    args = (q, k, v, sinks)
    np.testing.assert_allclose(
        to_numpy(run(CHUNK)(*args)), ref(*args), atol=1e-5
    )
    dense_loss, dense_grads = loss_and_grads(run(None), *args)
    loss, grads = loss_and_grads(run(CHUNK), *args)
    np.testing.assert_allclose(loss, dense_loss, atol=1e-6, rtol=1e-5)
    numeric = numeric_grads(ref, args)
    for name, g, dg, ng in zip("qkvs", grads, dense_grads, numeric):
        assert np.all(np.isfinite(g)), name
        np.testing.assert_allclose(dg, ng, atol=2e-4, rtol=1e-3, err_msg=name)
        np.testing.assert_allclose(g, dg, atol=1e-5, rtol=1e-4, err_msg=name)
    # The empty rows' queries get no gradient.
    np.testing.assert_array_equal(grads[0][1, 5:], 0)


@pytest.mark.parametrize("slopes_as", ["argument", "variable"])
def test_learnable_score_mod_parameter_gets_the_dense_gradient(rng, slopes_as):
    """ALiBi slopes as a differentiated tensor that the score_mod captures,
    or as a `keras.Variable` (a layer's weight) that it reads."""
    q, k, v = cases.qkv(rng, 1, 5, 7, 4, 2)
    slopes = np.array(SLOPES, np.float32)

    def ours(chunk_size):
        def fn(q, k, v, slopes):
            def score_mod(score, b, h, q_idx, kv_idx):
                distance = keras.ops.abs(q_idx - kv_idx)
                return score - keras.ops.take(slopes, h) * keras.ops.cast(
                    distance, "float32"
                )

            return scaled_dot_product_attention(
                q, k, v, score_mod=score_mod, chunk_size=chunk_size
            )

        return fn

    def ref(q, k, v, slopes):
        return reference.sdpa(q, k, v, score_mod=alibi(np, slopes))[0]

    if slopes_as == "argument":
        results = [
            loss_and_grads(compiled(ours(size)), q, k, v, slopes)
            for size in (None, CHUNK)
        ]
    else:
        variable = keras.Variable(slopes, name="slopes")
        results = [
            loss_and_grads(
                lambda q, k, v: ours(size)(q, k, v, variable),
                q,
                k,
                v,
                variables=[variable],
            )
            for size in (None, CHUNK)
        ]
    (_, dense_grads), (_, grads) = results
    want = numeric_grads(ref, (q, k, v, slopes))[3]
    assert np.abs(want).min() > 1e-3
    np.testing.assert_allclose(dense_grads[3], want, atol=2e-4, rtol=1e-3)
    np.testing.assert_allclose(grads[3], dense_grads[3], atol=1e-5, rtol=1e-4)
    for g, dg in zip(grads[:3], dense_grads[:3]):
        np.testing.assert_allclose(g, dg, atol=1e-5, rtol=1e-4)


# FlexAttention, on PyTorch.


def _flex_cases(torch):
    """name: ((b, t, s, n, kv), score_mod, mask_mod, flex_mask_mod, our
    kwargs, with sinks). The user functions are shared with FlexAttention
    (Python operators, captured tensors indexed with `[]`); FlexAttention
    gets our `is_causal` and window as part of `flex_mask_mod`. Both see
    absolute positions as `q_idx`: the test shifts FlexAttention's by the
    offset."""
    slopes = torch.tensor(SLOPES)
    docs = torch.tensor(DOCS)

    def alibi_mod(score, b, h, q_idx, kv_idx):
        return score - slopes[h] * abs(q_idx - kv_idx)

    def soft_cap_mod(score, b, h, q_idx, kv_idx):
        return CAP * torch.tanh(score / CAP)

    def prefix_lm_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) | (kv_idx < PREFIX)

    def document_mod(b, h, q_idx, kv_idx):
        return docs[b, q_idx] == docs[b, kv_idx]

    def causal_document_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & document_mod(b, h, q_idx, kv_idx)

    def causal_mod(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    def causal_window_mod(b, h, q_idx, kv_idx):
        return (q_idx >= kv_idx) & (q_idx - kv_idx < 4)

    return {
        "alibi_prefix_lm_gqa": (
            (2, 9, 9, 4, 2),
            alibi_mod,
            prefix_lm_mod,
            prefix_lm_mod,
            {},
            False,
        ),
        "soft_cap_document": (
            (2, 10, 10, 2, 2),
            soft_cap_mod,
            document_mod,
            causal_document_mod,
            dict(is_causal=True, scale=5.0),
            False,
        ),
        "window_sinks": (
            (2, 10, 10, 4, 4),
            None,
            None,
            causal_window_mod,
            dict(is_causal=True, sliding_window=4),
            True,
        ),
        "offset_alibi_cross": (
            (2, 5, 11, 2, 2),
            alibi_mod,
            None,
            causal_mod,
            dict(is_causal=True, causal_offset=5),
            False,
        ),
    }


FLEX_CASES = (
    "alibi_prefix_lm_gqa",
    "soft_cap_document",
    "window_sinks",
    "offset_alibi_cross",
)


def _shifted(fn, offset, is_score_mod):
    """`fn` seeing `q_idx + offset` for FlexAttention's `q_idx`."""
    if fn is None or offset == 0:
        return fn
    if is_score_mod:
        return lambda score, b, h, q_idx, kv_idx: fn(
            score, b, h, q_idx + offset, kv_idx
        )
    return lambda b, h, q_idx, kv_idx: fn(b, h, q_idx + offset, kv_idx)


@pytest.mark.filterwarnings("ignore:flex_attention called without")
@pytest.mark.parametrize("chunk_size", [None, CHUNK])
@pytest.mark.parametrize("case", FLEX_CASES)
def test_matches_flex_attention(rng, case, chunk_size):
    if keras.backend.backend() != "torch":
        pytest.skip("FlexAttention is PyTorch's")
    torch = pytest.importorskip("torch")
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    shapes, score_mod, mask_mod, flex_mask_mod, kwargs, with_sinks = (
        _flex_cases(torch)[case]
    )
    b, t, s, n, kv = shapes
    q, k, v = cases.qkv(rng, b, t, s, n, kv)
    v = np.concatenate([v, v[..., :3]], -1)  # FlexAttention: dim 8, as q
    sinks = np.array(SINKS[:n], np.float32) if with_sinks else None
    offset = kwargs.get("causal_offset", 0)

    def heads_first(x):
        return torch.from_numpy(x).permute(0, 2, 1, 3)

    flex_out, aux = flex.flex_attention(
        heads_first(q),
        heads_first(k),
        heads_first(v),
        score_mod=_shifted(score_mod, offset, is_score_mod=True),
        block_mask=flex.create_block_mask(
            _shifted(flex_mask_mod, offset, is_score_mod=False),
            b,
            n,
            t,
            s,
            device="cpu",
        ),
        scale=kwargs.get("scale"),
        enable_gqa=n != kv,
        return_aux=flex.AuxRequest(lse=True),
    )
    if sinks is not None:
        # A sink scales each row by exp(lse) / (exp(lse) + exp(sink)).
        flex_out = flex_out * torch.sigmoid(
            aux.lse - torch.from_numpy(sinks)[:, None]
        ).unsqueeze(-1)
    got = _ours(
        q,
        k,
        v,
        chunk_size,
        score_mod=score_mod,
        mask_mod=mask_mod,
        sinks=sinks,
        **kwargs,
    )
    np.testing.assert_allclose(
        got, flex_out.permute(0, 2, 1, 3).numpy(), atol=1e-5, rtol=1e-5
    )
