"""Independent NumPy reference implementations (float64), used by the tests.

They share no code with the package: loops and plain NumPy only, written from
the papers' formulas.
"""

import numpy as np


def softmax_rows(logits, mask, sinks=None):
    """Softmax over the last axis; masked entries get 0; empty rows are 0.

    `sinks`: optional logits broadcastable to `logits.shape[:-1]`, one per
    row, of an extra key that joins the denominator and carries no value:
    the row's weights then sum to less than 1. A row with no key to attend
    is still all zero (the sink alone gives nothing).
    """
    logits = np.asarray(logits, np.float64)
    mask = np.broadcast_to(np.asarray(mask, bool), logits.shape)
    out = np.zeros_like(logits)
    flat_logits = logits.reshape(-1, logits.shape[-1])
    flat_mask = mask.reshape(-1, logits.shape[-1])
    flat_out = out.reshape(-1, logits.shape[-1])
    flat_sinks = None
    if sinks is not None:
        flat_sinks = np.broadcast_to(
            np.asarray(sinks, np.float64), logits.shape[:-1]
        ).reshape(-1)
    for i in range(flat_logits.shape[0]):
        keep = flat_mask[i] & (flat_logits[i] > -np.inf)
        if not keep.any():
            continue
        row = flat_logits[i][keep]
        if flat_sinks is None:
            e = np.exp(row - row.max())
            flat_out[i][keep] = e / e.sum()
        else:
            top = max(row.max(), flat_sinks[i])
            e = np.exp(row - top)
            flat_out[i][keep] = e / (e.sum() + np.exp(flat_sinks[i] - top))
    return flat_out.reshape(logits.shape)


def index_grids(b, n, t, s, causal_offset=0):
    """int32 `(batch, head, q_idx, kv_idx)` of shapes `(b, 1, 1, 1)`, `(1,
    n, 1, 1)`, `(1, 1, t, 1)` and `(1, 1, 1, s)`, broadcasting to `(b, n,
    t, s)`; `q_idx` counts from `causal_offset`."""
    return (
        np.arange(b, dtype=np.int32).reshape(b, 1, 1, 1),
        np.arange(n, dtype=np.int32).reshape(1, n, 1, 1),
        np.arange(causal_offset, causal_offset + t, dtype=np.int32).reshape(
            1, 1, t, 1
        ),
        np.arange(s, dtype=np.int32).reshape(1, 1, 1, s),
    )


def sdpa(
    query,
    key,
    value,
    mask=None,
    bias=None,
    is_causal=False,
    scale=None,
    soft_cap=None,
    causal_offset=0,
    sliding_window=None,
    score_mod=None,
    mask_mod=None,
    query_segment_ids=None,
    key_segment_ids=None,
    sinks=None,
):
    """(B, T, N, H) x (B, S, K, H) x (B, S, K, Hv) -> (out, weights).

    Query `i` sits at position `p = causal_offset + i`.
    `is_causal`: query `i` attends keys `j <= p`. `sliding_window`: keys
    with `|p - j| < sliding_window`.

    The logits are `scale * q.k + bias`, then `score_mod(logits, b, h,
    q_idx, kv_idx)`, then `cap * tanh(logits / cap)` for `soft_cap`. The
    index arguments of `score_mod` and `mask_mod(b, h, q_idx, kv_idx)` are
    NumPy int32 arrays of `index_grids(B, N, T, S, causal_offset)` (`h` the
    query head, `q_idx` the position `p`); their results broadcast to (B, N,
    T, S). A key is attended where `mask`, the causal and window
    conditions, equal segment ids (`query_segment_ids` (B, T),
    `key_segment_ids` (B, S)) and `mask_mod` all hold and neither `bias` nor
    `score_mod` gave `-inf`.

    `sinks` (N,): each head's logit of an extra key in every row's softmax
    denominator (no scale, no score_mod, no cap, no value); `weights`
    exclude it. Rows with no key attended are zero.
    """
    q = np.asarray(query, np.float64)
    k = np.asarray(key, np.float64)
    v = np.asarray(value, np.float64)
    b, t, n, h = q.shape
    s, kv_heads = k.shape[1], k.shape[2]
    groups = n // kv_heads
    scale = 1.0 / np.sqrt(h) if scale is None else scale
    logits = np.zeros((b, n, t, s))
    for head in range(n):
        kh = head // groups
        logits[:, head] = scale * np.einsum(
            "bth,bsh->bts", q[:, :, head], k[:, :, kh]
        )
    full_mask = np.ones((b, n, t, s), bool)
    if bias is not None:
        logits = logits + np.asarray(bias, np.float64)
        full_mask &= logits > -np.inf
    grids = index_grids(b, n, t, s, causal_offset)
    if score_mod is not None:
        logits = np.broadcast_to(
            np.asarray(score_mod(logits, *grids), np.float64), logits.shape
        )
        full_mask &= logits > -np.inf
    if soft_cap is not None:
        logits = soft_cap * np.tanh(logits / soft_cap)
    if mask is not None:
        full_mask &= np.broadcast_to(np.asarray(mask, bool), full_mask.shape)
    positions = causal_offset + np.arange(t)[:, None]
    keys = np.arange(s)[None, :]
    if is_causal:
        full_mask &= keys <= positions
    if sliding_window is not None:
        full_mask &= np.abs(positions - keys) < sliding_window
    if (query_segment_ids is None) != (key_segment_ids is None):
        raise ValueError("pass both segment ids or neither")
    if query_segment_ids is not None:
        q_ids = np.asarray(query_segment_ids)
        k_ids = np.asarray(key_segment_ids)
        full_mask &= q_ids[:, None, :, None] == k_ids[:, None, None, :]
    if mask_mod is not None:
        full_mask &= np.broadcast_to(
            np.asarray(mask_mod(*grids), bool), full_mask.shape
        )
    row_sinks = None
    if sinks is not None:
        row_sinks = np.asarray(sinks, np.float64).reshape(1, n, 1)
    weights = softmax_rows(logits, full_mask, row_sinks)
    out = np.zeros((b, t, n, v.shape[-1]))
    for head in range(n):
        out[:, :, head] = weights[:, head] @ v[:, :, head // groups]
    return out, weights


def project(x, kernel, bias=None):
    """x (..., D) with kernel (D, *out) -> (..., *out)."""
    x = np.asarray(x, np.float64)
    kernel = np.asarray(kernel, np.float64)
    out = np.tensordot(x, kernel, axes=([-1], [0]))
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out


def mha(weights, query, value, key=None, mask=None, bias=None, is_causal=False):
    """Multi-head attention on rank-3 inputs given the layer's weights.

    `weights`: dict with query/key/value/attention_output kernels and
    optional biases, in Keras MultiHeadAttention's shapes. `mask`: (B, T, S)
    or (B, N, T, S). Returns (output, scores).
    """
    key = value if key is None else key
    q = project(query, weights["query/kernel"], weights.get("query/bias"))
    k = project(key, weights["key/kernel"], weights.get("key/bias"))
    v = project(value, weights["value/kernel"], weights.get("value/bias"))
    if mask is not None and np.ndim(mask) == 3:
        mask = np.asarray(mask)[:, None]
    if bias is not None and np.ndim(bias) == 3:
        bias = np.asarray(bias)[:, None]
    attended, scores = sdpa(q, k, v, mask=mask, bias=bias, is_causal=is_causal)
    out = np.einsum(
        "btnh,nho->bto",
        attended,
        np.asarray(weights["attention_output/kernel"], np.float64),
    )
    if "attention_output/bias" in weights:
        out = out + weights["attention_output/bias"]
    return out, scores


def additive(
    query, key, value, w_q, w_k, v, b=None, g=None, mask=None, is_causal=False
):
    """Bahdanau attention. query (B, T, Dq), key (B, S, Dk), value (B, S, Dv).

    Returns (context (B, T, Dv), weights (B, T, S)).
    """
    query = np.asarray(query, np.float64)
    key = np.asarray(key, np.float64)
    value = np.asarray(value, np.float64)
    v = np.asarray(v, np.float64)
    if g is not None:
        v = g * v / np.linalg.norm(v)
    pq = query @ np.asarray(w_q, np.float64)
    pk = key @ np.asarray(w_k, np.float64)
    bsz, t, _ = pq.shape
    s = pk.shape[1]
    logits = np.zeros((bsz, t, s))
    for i in range(t):
        for j in range(s):
            hidden = pq[:, i] + pk[:, j]
            if b is not None:
                hidden = hidden + b
            logits[:, i, j] = np.tanh(hidden) @ v
    full_mask = np.ones((bsz, t, s), bool)
    if mask is not None:
        full_mask &= np.broadcast_to(np.asarray(mask, bool), full_mask.shape)
    if is_causal:
        full_mask &= np.tril(np.ones((t, s), bool))
    weights = softmax_rows(logits, full_mask)
    return weights @ value, weights


def pooling(x, score_kernel, hidden_kernel=None, hidden_bias=None, mask=None):
    """Attention pooling. x (B, L, D) -> ((B, H * D), weights (B, H, L))."""
    x = np.asarray(x, np.float64)
    features = x
    if hidden_kernel is not None:
        features = np.tanh(x @ hidden_kernel + hidden_bias)
    logits = np.transpose(features @ score_kernel, (0, 2, 1))
    full_mask = np.ones(logits.shape, bool)
    if mask is not None:
        full_mask &= np.asarray(mask, bool)[:, None, :]
    weights = softmax_rows(logits, full_mask)
    pooled = np.einsum("bhl,bld->bhd", weights, x)
    return pooled.reshape(x.shape[0], -1), weights


def rotary_embedding(
    x,
    positions,
    max_wavelength=10000.0,
    scaling_factor=1.0,
    sequence_axis=1,
    feature_axis=-1,
):
    """Rotary position embedding (Su et al., 2021), rotating halves.

    Feature `i < d / 2` and feature `i + d / 2` form a pair rotated by
    `theta = p * max_wavelength ** (-2 i / d) / scaling_factor`:
    `(a, b) -> (a cos theta - b sin theta, b cos theta + a sin theta)`.
    `positions`: `(length,)`, or `(batch, length)` with the batch the first
    axis that is neither `sequence_axis` nor `feature_axis`.
    """
    x = np.asarray(x, np.float64)
    positions = np.asarray(positions, np.float64)
    moved = np.moveaxis(x, (sequence_axis, feature_axis), (-2, -1))
    out = np.zeros_like(moved)
    length, dim = moved.shape[-2:]
    half = dim // 2
    for index in np.ndindex(moved.shape[:-2]):
        for t in range(length):
            if positions.ndim == 1:
                p = positions[t]
            else:
                p = positions[index[0] if positions.shape[0] > 1 else 0, t]
            for i in range(half):
                theta = p * max_wavelength ** (-2.0 * i / dim) / scaling_factor
                a, b = moved[index + (t, i)], moved[index + (t, i + half)]
                out[index + (t, i)] = a * np.cos(theta) - b * np.sin(theta)
                out[index + (t, i + half)] = b * np.cos(theta) + a * np.sin(
                    theta
                )
    return np.moveaxis(out, (-2, -1), (sequence_axis, feature_axis))


def lowbias32(x):
    """C. Wellons' lowbias32 hash of int32 `x`, in NumPy's uint32
    arithmetic, returned as int32."""
    x = np.asarray(x, np.int32).view(np.uint32)
    for multiplier in (0x7FEB352D, 0x846CA68B):
        x = x ^ (x >> np.uint32(16))
        x = (x.astype(np.uint64) * multiplier).astype(np.uint32)
    return (x ^ (x >> np.uint32(16))).view(np.int32)
