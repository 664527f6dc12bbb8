"""Masks (True means attend) and the masked softmax every attention kernel
in this package uses."""

import keras
from keras import ops

from keras_attention import _validation

# Stands in for -inf at masked positions: exp(MASKED - max) is exactly 0 for
# any real logit, and unlike -inf it keeps fully masked rows NaN-free.
MASKED = -1e30


def as_bool(mask, name="mask"):
    """Converts a mask to a boolean tensor (True means attend).

    Numeric masks must hold only 0 and 1; other values raise a `ValueError`
    naming `name` when the values are known (see
    `_validation.check_mask_values`). In traced code, non-zero entries are True.
    """
    if mask is None:
        return None
    _validation.check_mask_values(name, mask)
    mask = ops.convert_to_tensor(mask)
    if keras.backend.standardize_dtype(mask.dtype) != "bool":
        mask = ops.cast(mask, "bool")
    return mask


def and_masks(*masks):
    """Logical AND of the masks that are not None (None if all are)."""
    result = None
    for mask in masks:
        if mask is not None:
            result = mask if result is None else ops.logical_and(result, mask)
    return result


def causal_mask(q_len, k_len, offset=0):
    """Boolean `(q_len, k_len)` mask where query `i` attends keys `j <= i`.

    The mask is aligned top-left, as in `keras.layers.MultiHeadAttention`'s
    `use_causal_mask`: query position `i` sees key positions `0..i`, whatever
    the two lengths are. With `offset`, query `i` sits at position
    `offset + i` and attends keys `j <= offset + i` (a cache being filled
    from position `offset`). Lengths and the offset may be Python ints or
    scalar tensors.

    Example:

    >>> keras.ops.convert_to_numpy(causal_mask(2, 3))
    array([[ True, False, False],
           [ True,  True, False]])
    """
    rows = _positions(q_len, offset)
    cols = ops.expand_dims(ops.arange(k_len, dtype="int32"), 0)
    return ops.greater_equal(rows, cols)


def _positions(length, offset):
    """`(length, 1)` int32 positions `offset, ..., offset + length - 1`."""
    rows = ops.arange(length, dtype="int32")
    if not (isinstance(offset, int) and offset == 0):
        rows = rows + ops.cast(offset, "int32")
    return ops.expand_dims(rows, -1)


def sliding_window_mask(q_len, k_len, window, offset=0):
    """Boolean `(q_len, k_len)` band: `|i - j| < window`, as in Keras MHA;
    query `i` at position `offset + i`."""
    rows = _positions(q_len, offset)
    cols = ops.expand_dims(ops.arange(k_len, dtype="int32"), 0)
    return ops.less(ops.abs(rows - cols), window)


def masked_softmax(logits, mask=None, axis=-1):
    """Float32 softmax that excludes masked positions exactly.

    Masked positions get a weight of exactly zero (not a tiny one), and a row
    whose positions are all masked gives all zeros instead of a uniform
    distribution or NaN. Gradients stay finite in both cases. `-inf` logits
    count as masked. Uses the backend's fused softmax.

    Args:
        logits: float tensor; cast to float32.
        mask: optional boolean tensor broadcastable to `logits`; True means
            keep.
        axis: the axis to normalise over.

    Returns:
        float32 weights with the shape of `logits`.
    """
    logits = ops.cast(logits, "float32")
    if mask is None:
        return ops.softmax(logits, axis=axis)
    weights = ops.softmax(ops.where(mask, logits, MASKED), axis=axis)
    return ops.where(mask, weights, 0.0)


def softmax_with_sinks(logits, mask, sinks):
    """`masked_softmax` whose denominators also hold `exp(sinks)`: a logit
    per row that carries no value (attention sinks). `sinks` broadcasts to
    `logits` with the last axis of size 1. Rows sum to less than 1; a fully
    masked row is all zeros."""
    exps, denom, _ = sink_softmax_terms(logits, mask, sinks)
    return exps / denom


def sink_softmax_terms(logits, mask, sinks):
    """`(exps, denom, top)` of `softmax_with_sinks`: the weights are
    `exps / denom`, the log-sum-exp `top + log(denom)` (float32)."""
    logits = ops.cast(logits, "float32")
    sinks = ops.cast(sinks, "float32")
    if mask is not None:
        logits = ops.where(mask, logits, MASKED)
    top = ops.maximum(ops.max(logits, axis=-1, keepdims=True), sinks)
    exps = ops.exp(logits - top)
    if mask is not None:
        exps = ops.where(mask, exps, 0.0)
    denom = ops.sum(exps, axis=-1, keepdims=True) + ops.exp(sinks - top)
    return exps, denom, top


def finite_logits_mask(logits, mask=None):
    """`mask` AND NOT `logits <= MASKED`: -inf logits (from a bias) count as
    masked. NaN logits are kept, so that NaN inputs propagate to the output
    instead of being masked out silently."""
    finite = ops.logical_not(logits <= MASKED)
    return finite if mask is None else ops.logical_and(mask, finite)
