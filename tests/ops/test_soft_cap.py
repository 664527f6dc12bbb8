"""Logit soft-capping, `cap * tanh(logits / cap)`, in the dense and chunked
kernels: outputs against the NumPy reference, gradients against finite
differences of the reference."""

import numpy as np
import pytest

from keras_attention import GroupedQueryAttention
from keras_attention import MultiHeadAttention
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import numeric_grads
from tests.testing import to_numpy

CAP = 2.5

CASES = {
    # name: (b, t, s, n, kv, causal, mask, bias)
    "plain": (2, 7, 9, 2, 2, False, False, False),
    "causal_gqa": (1, 9, 9, 4, 2, True, False, False),
    "masked_empty_row": (2, 6, 7, 2, 1, False, True, False),
    "bias_neg_inf": (1, 5, 6, 2, 2, False, False, True),
}


def _inputs(rng, case):
    b, t, s, n, kv, causal, with_mask, with_bias = CASES[case]
    # Large logits, so that the cap changes them.
    q = (3 * rng.normal(size=(b, t, n, 4))).astype("float32")
    k = (3 * rng.normal(size=(b, s, kv, 4))).astype("float32")
    v = rng.normal(size=(b, s, kv, 3)).astype("float32")
    mask = bias = None
    if with_mask:
        mask = rng.random((b, 1, t, s)) > 0.4
        mask[0, :, 1] = False  # a fully masked row
    if with_bias:
        bias = rng.normal(size=(b, n, t, s)).astype("float32")
        bias[0, 0, 2, :3] = -np.inf
    return (q, k, v), dict(mask=mask, bias=bias, is_causal=causal)


@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("case", sorted(CASES))
def test_soft_cap_matches_reference_with_gradients(rng, case, chunk_size):
    args, kwargs = _inputs(rng, case)

    def ours(q, k, v):
        return scaled_dot_product_attention(
            q, k, v, logits_soft_cap=CAP, chunk_size=chunk_size, **kwargs
        )

    def ref(q, k, v):
        return reference.sdpa(q, k, v, soft_cap=CAP, **kwargs)[0]

    np.testing.assert_allclose(to_numpy(ours(*args)), ref(*args), atol=2e-5)
    uncapped = reference.sdpa(*args, **kwargs)[0]
    assert np.abs(uncapped - ref(*args)).max() > 1e-2  # the cap matters
    _, grads = loss_and_grads(ours, *args)
    for got, want in zip(grads, numeric_grads(ref, args)):
        assert np.all(np.isfinite(got))
        np.testing.assert_allclose(got, want, atol=2e-4, rtol=1e-3)


@pytest.mark.parametrize("chunk_size", [None, 4])
def test_layers_apply_their_soft_cap(rng, chunk_size):
    """Both layers pass their `logits_soft_cap` to the kernel: a layer with
    a cap equals the op with that cap on the layer's own projections."""
    x = (3 * rng.normal(size=(2, 6, 8))).astype("float32")
    for layer in (
        MultiHeadAttention(
            num_heads=2,
            key_dim=4,
            use_bias=False,
            logits_soft_cap=CAP,
            chunk_size=chunk_size,
        ),
        GroupedQueryAttention(
            head_dim=4,
            num_query_heads=4,
            num_key_value_heads=2,
            use_bias=False,
            logits_soft_cap=CAP,
            chunk_size=chunk_size,
        ),
    ):
        out = to_numpy(layer(x, x, use_causal_mask=True))
        wq, wk, wv, wo = (to_numpy(w) for w in layer.weights)
        q = np.einsum("btm,mnh->btnh", x, wq)
        k = np.einsum("bsm,mnh->bsnh", x, wk)
        v = np.einsum("bsm,mnh->bsnh", x, wv)
        want, _ = reference.sdpa(q, k, v, is_causal=True, soft_cap=CAP)
        np.testing.assert_allclose(
            out, np.einsum("btnh,nhm->btm", want, wo), atol=2e-5
        )
