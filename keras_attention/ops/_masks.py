"""Boolean mask helpers (True means attend)."""

import keras
from keras import ops

from keras_attention.ops import _checks


def as_bool(mask, name="mask"):
    """Converts a mask to a boolean tensor (True means attend).

    Numeric masks must hold only 0 and 1; other values raise a `ValueError`
    naming `name` when the values are known (see
    `_checks.check_mask_values`). In traced code, non-zero entries are True.
    """
    if mask is None:
        return None
    _checks.check_mask_values(name, mask)
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


def causal_mask(q_len, k_len):
    """Boolean `(q_len, k_len)` mask where query `i` attends keys `j <= i`.

    The mask is aligned top-left, as in `keras.layers.MultiHeadAttention`'s
    `use_causal_mask`: query position `i` sees key positions `0..i`, whatever
    the two lengths are. Lengths may be Python ints or scalar tensors.
    """
    rows = ops.expand_dims(ops.arange(q_len, dtype="int32"), -1)
    cols = ops.expand_dims(ops.arange(k_len, dtype="int32"), 0)
    return ops.greater_equal(rows, cols)


def sliding_window_mask(q_len, k_len, window):
    """Boolean `(q_len, k_len)` band: `|i - j| < window`, as in Keras MHA."""
    rows = ops.expand_dims(ops.arange(q_len, dtype="int32"), -1)
    cols = ops.expand_dims(ops.arange(k_len, dtype="int32"), 0)
    return ops.less(ops.abs(rows - cols), window)
