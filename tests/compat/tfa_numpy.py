"""Independent NumPy (float64) implementations of tensorflow-addons' formulas.

Written from tfa's documented math, with loops and plain NumPy, sharing no
code with `keras_attention`:

- `multi_head_attention`: `tfa.layers.MultiHeadAttention` (0.23).
- `bahdanau_attention`: `tfa.seq2seq.BahdanauAttention` (0.23) plus the
  context that `tfa.seq2seq.AttentionWrapper` computes from its alignments.

Masking follows what tfa computes in float32: masked keys get weight exactly
zero, and a row with no valid key attends all keys uniformly (tfa adds
`-1e10` to masked MHA logits and replaces masked Bahdanau scores with the
lowest float32; either way every score in such a row becomes the same).
"""

import numpy as np


def _softmax_tfa(scores, valid):
    """Softmax over the last axis of `scores`, only over `valid` entries; a
    row with no valid entry is uniform over all entries."""
    scores = np.asarray(scores, np.float64)
    valid = np.broadcast_to(np.asarray(valid, bool), scores.shape)
    out = np.zeros_like(scores)
    flat_scores = scores.reshape(-1, scores.shape[-1])
    flat_valid = valid.reshape(-1, scores.shape[-1])
    flat_out = out.reshape(-1, scores.shape[-1])
    for i in range(flat_scores.shape[0]):
        keep = flat_valid[i]
        if not keep.any():
            flat_out[i] = 1.0 / scores.shape[-1]
            continue
        row = flat_scores[i][keep]
        e = np.exp(row - row.max())
        flat_out[i][keep] = e / e.sum()
    return out


def multi_head_attention(
    query,
    key,
    value,
    query_kernel,
    key_kernel,
    value_kernel,
    projection_kernel,
    projection_bias=None,
    mask=None,
):
    """tfa MHA. query `(..., N, Dq)`, key `(..., M, Dk)`, value `(..., M, Dv)`;
    kernels in tfa's `(heads, in, out)` layout; `mask` of rank 2 to
    `rank(query) + 1`, non-zero meaning attend. Returns `(output, coef)` with
    coef `(..., heads, N, M)`."""
    query, key, value = (np.asarray(x, np.float64) for x in (query, key, value))
    heads, _, head_size = np.shape(query_kernel)
    lead = query.shape[:-2]
    n, m = query.shape[-2], key.shape[-2]
    logits = np.zeros(lead + (heads, n, m))
    projected_values = []
    for h in range(heads):
        q = query @ np.asarray(query_kernel[h], np.float64)
        k = key @ np.asarray(key_kernel[h], np.float64)
        projected_values.append(value @ np.asarray(value_kernel[h], np.float64))
        logits[..., h, :, :] = (q / np.sqrt(head_size)) @ np.swapaxes(k, -1, -2)
    valid = np.ones(logits.shape, bool)
    if mask is not None:
        mask = np.asarray(mask) != 0
        if mask.ndim != logits.ndim:
            mask = np.expand_dims(mask, -3)  # the heads axis
        valid = np.broadcast_to(mask, logits.shape)
    coef = _softmax_tfa(logits, valid)
    output = np.zeros(lead + (n, np.shape(projection_kernel)[-1]))
    for h in range(heads):
        attended = coef[..., h, :, :] @ projected_values[h]
        output += attended @ np.asarray(projection_kernel[h], np.float64)
    if projection_bias is not None:
        output += np.asarray(projection_bias, np.float64)
    return output, coef


def bahdanau_attention(
    query,
    memory,
    attention_v,
    query_kernel,
    memory_kernel,
    attention_g=None,
    attention_b=None,
    memory_sequence_length=None,
    memory_mask=None,
    probability_fn="softmax",
):
    """tfa Bahdanau attention for one decoder step. query `(B, Dq)`, memory
    `(B, T, Dm)`. Returns `(context (B, Dm), alignments (B, T))`."""
    query = np.asarray(query, np.float64)
    memory = np.asarray(memory, np.float64)
    batch, length, _ = memory.shape
    valid = np.ones((batch, length), bool)
    if memory_sequence_length is not None:
        valid = (
            np.arange(length)[None, :]
            < np.asarray(memory_sequence_length)[:, None]
        )
    if memory_mask is not None:
        valid = np.asarray(memory_mask, bool)
    values = memory * valid[:, :, None]  # tfa zeroes the padded memory rows
    keys = values @ np.asarray(memory_kernel, np.float64)
    processed_query = query @ np.asarray(query_kernel, np.float64)
    v = np.asarray(attention_v, np.float64)
    bias = 0.0
    if attention_g is not None:
        v = float(attention_g) * v / np.sqrt(np.sum(v * v))
        bias = np.asarray(attention_b, np.float64)
    scores = np.zeros((batch, length))
    for b in range(batch):
        for t in range(length):
            scores[b, t] = np.sum(
                v * np.tanh(keys[b, t] + processed_query[b] + bias)
            )
    if probability_fn == "softmax":
        alignments = _softmax_tfa(scores, valid)
    else:  # hardmax: one-hot at the first highest valid score
        alignments = np.zeros_like(scores)
        for b in range(batch):
            masked = np.where(valid[b], scores[b], -np.inf)
            best = 0 if not valid[b].any() else int(np.argmax(masked))
            alignments[b, best] = 1.0
    context = np.einsum("bt,btd->bd", alignments, values)
    return context, alignments
