"""The chunked kernel skips the key blocks that no query of the block can
attend, forward and backward: counted through `_chunked.count_block`,
against the blocks where the full mask has any True entry."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention.ops import _chunked
from keras_attention.ops import scaled_dot_product_attention
from tests.testing import loss_and_grads
from tests.testing import to_numpy

CHUNK = 4
LENGTH = 24

pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="JAX traces its loops once: no per-block Python call to count",
)


def _docs():
    # Sorted document ids: 0 0 0 0 0 1 1 ... 3 (lengths 5, 7, 9, 3).
    return np.repeat(np.arange(4), (5, 7, 9, 3)).astype("int32")


def _dilated(b, h, q_idx, kv_idx):
    """Keys in the same 8-position band as the query, or in band 0."""
    return (q_idx // 8 == kv_idx // 8) | (kv_idx < 8)


CASES = {
    # name: (kwargs, the (q, k) boolean mask they make)
    "window": (
        dict(is_causal=True, sliding_window=5),
        lambda i, j: (i >= j) & (i - j < 5),
    ),
    "segments": (
        dict(query_segment_ids=_docs()[None], key_segment_ids=_docs()[None]),
        lambda i, j: _docs()[i] == _docs()[j],
    ),
    "mask_mod": (
        dict(mask_mod=_dilated),
        _dilated(0, 0, *np.ix_(*[np.arange(LENGTH)] * 2)),
    ),
}


def _expected_blocks(case):
    make = CASES[case][1]
    full = (
        make
        if isinstance(make, np.ndarray)
        else make(*np.ix_(np.arange(LENGTH), np.arange(LENGTH)))
    )
    n = LENGTH // CHUNK
    blocks = full.reshape(n, CHUNK, n, CHUNK).any(axis=(1, 3))
    return int(blocks.sum()), n * n


@pytest.mark.parametrize("case", sorted(CASES))
def test_skipped_blocks_forward_and_backward(case, monkeypatch, rng):
    kwargs = CASES[case][0]
    counts = {"forward": 0, "backward": 0, "analysed": 0}

    def count(kind):
        counts[kind] += 1

    monkeypatch.setattr(_chunked, "count_block", count)
    q, k, v = (
        rng.normal(size=(1, LENGTH, 2, 4)).astype("float32") for _ in range(3)
    )

    def attend(q, k, v):
        return scaled_dot_product_attention(
            q, k, v, chunk_size=CHUNK, training=True, **kwargs
        )

    _, grads = loss_and_grads(attend, q, k, v)
    dense = scaled_dot_product_attention(q, k, v, chunk_size=None, **kwargs)
    np.testing.assert_allclose(
        to_numpy(attend(q, k, v)), to_numpy(dense), atol=1e-5
    )
    needed, total = _expected_blocks(case)
    assert needed < total
    # The forward ran three times (`loss_and_grads` runs it twice, then the
    # check), the backward once; each computed exactly the needed blocks.
    assert counts["forward"] == 3 * needed
    assert counts["backward"] == needed
    assert all(np.isfinite(g).all() for g in grads)


def test_all_false_mask_mod_computes_nothing(monkeypatch, rng):
    counts = []
    monkeypatch.setattr(_chunked, "count_block", counts.append)
    q = rng.normal(size=(1, 9, 2, 4)).astype("float32")

    def nowhere(b, h, q_idx, kv_idx):
        return q_idx < 0

    out = scaled_dot_product_attention(
        q, q, q, chunk_size=CHUNK, mask_mod=nowhere
    )
    np.testing.assert_array_equal(to_numpy(out), 0.0)
    assert "forward" not in counts
    assert ops.shape(out) == (1, 9, 2, 4)


def test_our_causal_mask_mod_is_is_causal(monkeypatch, rng):
    """`ops.causal`, recognised by identity, runs as `is_causal=True`: the
    fused kernel may take it (here a recording stub), where a user's
    equivalent function runs our kernel."""
    from keras_attention.ops import _backend
    from keras_attention.ops import _fused
    from keras_attention.ops import causal

    calls = []

    def fused(query, key, value, mask=None, is_causal=False, **kwargs):
        calls.append(is_causal)
        return ops.zeros_like(query)

    monkeypatch.setattr(_backend, "fused_attention", fused)
    monkeypatch.setattr(_fused, "environment", lambda: ("jax", "tpu"))
    q = rng.normal(size=(1, 6, 2, 4)).astype("float32")
    scaled_dot_product_attention(q, q, q, mask_mod=causal)
    assert calls == [True]
    monkeypatch.undo()
    user = scaled_dot_product_attention(
        q, q, q, mask_mod=lambda b, h, i, j: i >= j, chunk_size=CHUNK
    )
    ours = scaled_dot_product_attention(q, q, q, is_causal=True)
    np.testing.assert_allclose(to_numpy(user), to_numpy(ours), atol=1e-5)
