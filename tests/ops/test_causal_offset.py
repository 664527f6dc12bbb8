"""`causal_offset`: query `i` at position `offset + i`, in both kernels.

Outputs against the NumPy reference, gradients of the chunked kernel
against the dense one, a traced offset, and the skipped key blocks.
"""

import numpy as np
import pytest

from keras_attention.ops import _chunked
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import to_numpy
from tests.testing import traced

CASES = {
    # name: (b, t, s, n, kv, offset, chunk)
    "prefill_into_cache": (2, 13, 40, 2, 2, 0, 4),
    "continue_prefill": (2, 9, 40, 4, 2, 17, 4),
    "one_step": (3, 1, 33, 2, 1, 20, 8),
    "last_slot": (1, 1, 16, 2, 2, 15, 4),
    "ragged_blocks": (2, 7, 29, 2, 2, 5, 3),
}
# Gradients are checked where the offset splits a key block.
GRADIENT_CASES = ("continue_prefill", "ragged_blocks")


def _inputs(rng, b, t, s, n, kv):
    q = rng.normal(size=(b, t, n, 8)).astype("float32")
    k = rng.normal(size=(b, s, kv, 8)).astype("float32")
    v = rng.normal(size=(b, s, kv, 6)).astype("float32")
    return q, k, v


@pytest.mark.parametrize("case", sorted(CASES))
def test_offset_matches_reference_with_gradients(rng, case):
    b, t, s, n, kv, offset, chunk = CASES[case]
    q, k, v = _inputs(rng, b, t, s, n, kv)
    mask = rng.random((b, 1, 1, s)) > 0.2

    def run(chunk_size):
        return lambda q, k, v: scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=True,
            causal_offset=offset,
            chunk_size=chunk_size,
        )

    want, _ = reference.sdpa(
        q, k, v, mask=mask, is_causal=True, causal_offset=offset
    )
    for chunk_size in (None, chunk):
        np.testing.assert_allclose(
            to_numpy(run(chunk_size)(q, k, v)), want, atol=1e-5
        )
    if case not in GRADIENT_CASES:
        return
    _, dense_grads = loss_and_grads(run(None), q, k, v)
    _, chunked_grads = loss_and_grads(run(chunk), q, k, v)
    for got, expected in zip(chunked_grads, dense_grads):
        np.testing.assert_allclose(got, expected, atol=1e-5)


def test_traced_offset(rng):
    """The offset of a decoding loop is a tensor: one compiled function
    serves every position."""
    q, k, v = _inputs(rng, 2, 3, 24, 2, 2)

    def attend(q, k, v, offset):
        return scaled_dot_product_attention(
            q, k, v, is_causal=True, causal_offset=offset, chunk_size=4
        )

    attend = traced(attend)
    for offset in (0, 6, 21):
        want, _ = reference.sdpa(q, k, v, is_causal=True, causal_offset=offset)
        got = attend(q, k, v, np.int32(offset))
        np.testing.assert_allclose(to_numpy(got), want, atol=1e-5)


def test_blocks_past_the_diagonal_are_not_computed(rng):
    """With an offset, query block `i` still stops at its diagonal."""
    q, k, v = (
        np.transpose(x, (0, 2, 1, 3)) for x in _inputs(rng, 1, 8, 32, 1, 1)
    )
    engine = _chunked._Engine(
        q,
        k,
        v,
        None,
        True,
        4,
        4,
        _chunked._dot_score,
        _chunked._dot_score_t,
        _chunked._dot_score_t_vjp,
        causal_offset=9,
    )
    # Queries at positions 9..12 need keys 0..12 (key blocks 0..3 of 8);
    # positions 13..16 need keys 0..16 (blocks 0..4).
    assert int(to_numpy(engine.key_blocks_for(0)[1])) == 4
    assert int(to_numpy(engine.key_blocks_for(1)[1])) == 5
