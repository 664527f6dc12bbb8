"""From `MultiHeadAttention`'s attention axes to the kernel's layout.

The layer projects inputs `(B, <dims>, features)` to `(B, <dims>, heads,
dim)`, where some of `<dims>` are attention axes (Keras' `attention_axes`).
The kernel, `keras_attention.ops.scaled_dot_product_attention`, takes
`(B', L', heads, dim)`: the other axes folded into the batch and the
attention axes into one length. A mask or bias in Keras' scores layout
`(B, <other dims>, heads, <target dims>, <source dims>)` folds the same
way, to `(B', heads | 1, T', S')`. Sequences (rank 3, one attention axis)
are already in the kernel's layout.
"""

import collections
import numbers

from keras import ops

from keras_attention import _masking

# A call's mask and bias in the kernel's layout, the scores' shape in
# Keras' layout, and `rows`: None, or the `(B', T')` rows that attend a key
# as the kernel found them (`_programmable.attend`).
KernelOperands = collections.namedtuple(
    "KernelOperands", ["mask", "bias", "scores_shape", "rows"]
)


def _product(dims):
    result = 1
    for dim in dims:
        result = result * dim
    return result


def standardize_attention_axes(attention_axes):
    """The layer's `attention_axes` argument as a tuple of ints, or None."""
    if attention_axes is None:
        return None
    if isinstance(attention_axes, numbers.Integral) and not isinstance(
        attention_axes, bool
    ):
        attention_axes = (attention_axes,)
    if not isinstance(attention_axes, (list, tuple)) or not all(
        isinstance(a, numbers.Integral) and not isinstance(a, bool)
        for a in attention_axes
    ):
        raise ValueError(
            "Received an invalid value for argument `attention_axes`, "
            "expected an int, a tuple of ints or `None`. Received: "
            f"attention_axes={attention_axes!r}"
        )
    return tuple(int(a) for a in attention_axes)


def normalize_attention_axes(attention_axes, rank):
    """`attention_axes` as sorted input-axis indices in `[1, rank - 2]`
    (None: all of them), for inputs of rank `rank`."""
    if attention_axes is None:
        return tuple(range(1, rank - 1))
    axes = []
    for axis in attention_axes:
        normalized = axis + rank if axis < 0 else axis
        if not 1 <= normalized <= rank - 2:
            raise ValueError(
                "Argument `attention_axes` is out of range for inputs of "
                f"rank {rank}: each axis must be in [1, {rank - 2}] or "
                f"[{1 - rank}, -2] (not the batch or feature axis). "
                f"Received: attention_axes={attention_axes}"
            )
        axes.append(normalized)
    if len(set(axes)) != len(axes):
        raise ValueError(
            "Argument `attention_axes` must not repeat an axis. "
            f"Received: attention_axes={attention_axes}"
        )
    return tuple(sorted(axes))


class KernelLayout:
    """The folding for inputs of one rank and one set of attention axes.

    Args:
        rank: the inputs' rank.
        axes: the attention axes, sorted, in `[1, rank - 2]`.
        num_heads: the query heads.
    """

    def __init__(self, rank, axes, num_heads):
        self.rank = rank
        self.axes = tuple(axes)
        self.num_heads = num_heads
        batch_axes = [i for i in range(rank - 1) if i not in self.axes]
        perm = batch_axes + list(self.axes) + [rank - 1, rank]
        # From the projected layout to `(batch dims, attention dims, heads,
        # channels)`, or None when it is the identity.
        self.perm = None if perm == list(range(rank + 1)) else perm

    def scores_shape(self, query_shape, value_shape):
        """Keras' scores shape, from shapes whose first `rank - 1` axes are
        the inputs' (the inputs' own shapes, or the projections')."""
        batch_dims = [
            d
            for i, d in enumerate(query_shape[: self.rank - 1])
            if i not in self.axes
        ]
        return (
            tuple(batch_dims)
            + (self.num_heads,)
            + tuple(query_shape[a] for a in self.axes)
            + tuple(value_shape[a] for a in self.axes)
        )

    def expand_to_scores(self, x, scores_rank):
        """Inserts unit axes before the target/source dims, as Keras does.

        Works on a static shape tuple or on a tensor.
        """
        axis = -len(self.axes) * 2 - 1
        if isinstance(x, tuple):
            while len(x) < scores_rank:
                position = len(x) + axis + 1
                x = x[:position] + (1,) + x[position:]
            return x
        while len(x.shape) < scores_rank:
            x = ops.expand_dims(x, axis=axis)
        return x

    def to_kernel(self, x):
        """`(B, <dims>, heads, dim)` -> `(B', L', heads, dim)`, and the
        permuted shape that `from_kernel` needs."""
        if self.perm is not None:
            x = ops.transpose(x, self.perm)
        shape = ops.shape(x)
        if len(shape) == 4:
            return x, shape
        num_attn = len(self.axes)
        batch = _product(shape[: len(shape) - 2 - num_attn])
        length = _product(shape[len(shape) - 2 - num_attn : -2])
        return ops.reshape(x, (batch, length) + tuple(shape[-2:])), shape

    def from_kernel(self, x, shape):
        """The inverse of `to_kernel`; the last axis may differ."""
        if len(shape) != 4:
            x = ops.reshape(x, tuple(shape[:-1]) + (ops.shape(x)[-1],))
        if self.perm is not None:
            inverse = [self.perm.index(i) for i in range(len(self.perm))]
            x = ops.transpose(x, inverse)
        return x

    def scores_operand(self, x, scores_shape):
        """A Keras-layout mask or bias -> `(B', heads | 1, T', S')`."""
        if x is None:
            return None
        x = self.expand_to_scores(ops.convert_to_tensor(x), len(scores_shape))
        if len(scores_shape) == 4:
            return x
        num_attn = len(self.axes)
        heads = x.shape[-2 * num_attn - 1]
        full = list(scores_shape)
        full[-2 * num_attn - 1] = heads
        x = ops.broadcast_to(x, tuple(full))
        return ops.reshape(
            x,
            (
                _product(full[: -2 * num_attn - 1]),
                heads,
                _product(full[-2 * num_attn : -num_attn]),
                _product(full[-num_attn:]),
            ),
        )

    def operands(self, query, key, mask, bias):
        """`KernelOperands` of a call on projected `query` and `key`, from
        Keras-layout boolean `mask` and `bias` (either may be None)."""
        scores_shape = self.scores_shape(
            ops.shape(query)[:-1], ops.shape(key)[:-1]
        )
        return KernelOperands(
            self.scores_operand(mask, scores_shape),
            self.scores_operand(bias, scores_shape),
            scores_shape,
            None,
        )

    def zero_masked_rows(
        self, output, query, key, operands, causal_offset, window=None
    ):
        """Zeroes the output rows whose keys are all masked in every head:
        by `operands.mask`, by `-inf` entries of `operands.bias`, by the
        window, or by a key length of 0; `operands.rows` instead where the
        kernel found them. NaN bias entries count as usable, so that NaN
        propagates.

        `query` and `key` are projected, in Keras' layout. `causal_offset`
        is None unless causal masking was left to the kernel; `mask` is
        then a key mask, and a row has keys when a valid key sits at or
        before its position, found without a `(T, S)` mask. `window`: None
        or `(sliding_window, offset)` where the kernel applied a window.
        """
        mask, bias = operands.mask, operands.bias
        if operands.rows is not None:
            return self._zero_rows(output, query, operands.rows)
        if (
            causal_offset is not None
            and mask is not None
            and bias is None
            and window is None
        ):
            # Cast before broadcasting, and `expand_dims` below rather than
            # `[:, :, None]`: LiteRT's converter crashes on a cast of a
            # run-time `broadcast_to` (TFL's ReorderBroadcastToCast), and
            # its builtins take no new-axis slice of a (None, None) tensor.
            key_valid = ops.broadcast_to(
                ops.cast(mask[:, 0, 0, :], "int32"),
                (ops.shape(key)[0], ops.shape(key)[1]),
            )
            first = ops.argmax(key_valid, axis=1)
            rows = ops.arange(ops.shape(query)[1], dtype="int32")
            if not (isinstance(causal_offset, int) and causal_offset == 0):
                rows = rows + ops.cast(causal_offset, "int32")
            row_valid = ops.logical_and(
                ops.max(key_valid, axis=1)[:, None] > 0,
                rows[None, :] >= ops.cast(first, "int32")[:, None],
            )
            return output * ops.expand_dims(
                ops.cast(row_valid, output.dtype), -1
            )
        if mask is None and bias is None and window is None:
            if key.shape[1] in (None, 0):
                has_keys = ops.greater(ops.shape(key)[1], 0)
                output = output * ops.cast(has_keys, output.dtype)
            return output
        usable = mask
        if bias is not None:
            usable = _masking.and_masks(
                usable, ops.logical_not(bias <= _masking.MASKED)
            )
        q_len, k_len = ops.shape(query)[1], ops.shape(key)[1]
        if causal_offset is not None and (bias is not None or window):
            causal = _masking.causal_mask(q_len, k_len, causal_offset)
            usable = _masking.and_masks(usable, causal[None, None])
        if window is not None:
            band = _masking.sliding_window_mask(q_len, k_len, *window)
            usable = _masking.and_masks(usable, band[None, None])
        return self._zero_rows(output, query, ops.any(usable, axis=(1, 3)))

    def _zero_rows(self, output, query, rows):
        """Zeroes the output rows where `rows` (`(B', T')` in the kernel
        layout, broadcastable) is False."""
        # (B', T') in the kernel layout -> (B, <query dims>) -> output rank.
        shape = tuple(ops.shape(query))
        if self.perm is not None:
            shape = tuple(shape[i] for i in self.perm)
        num_batch = self.rank - 1 - len(self.axes)
        row_valid = ops.broadcast_to(
            rows,
            (_product(shape[:num_batch]), _product(shape[num_batch:-2])),
        )
        row_valid = self.from_kernel(
            ops.expand_dims(row_valid, (2, 3)), shape[:-2] + (1, 1)
        )[..., 0]
        for _ in range(len(output.shape) - len(row_valid.shape)):
            row_valid = ops.expand_dims(row_valid, -1)
        return output * ops.cast(row_valid, output.dtype)
