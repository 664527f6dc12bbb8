"""The steps that the samplers' generation loops share, in exportable
`keras.ops` (no `slice_update`: on TensorFlow it is the XLA-only
`XlaDynamicUpdateSlice`)."""

from keras import ops


def write_column(x, values, index, mask=None):
    """`x` with column `index` (axis 1) replaced by `values`, except where
    `mask` `(batch, length)` is True.

    Args:
        x: `(batch, length)` or `(batch, length, ...)`.
        values: `(batch,)` or `(batch, ...)`, cast to `x`'s dtype.
        index: int or 0-d int32 tensor.
        mask: optional bool `(batch, length)`: the columns kept.

    Returns:
        `x`'s shape and dtype.
    """
    columns = ops.arange(ops.shape(x)[1], dtype="int32")
    write = ops.expand_dims(columns == ops.cast(index, "int32"), 0)
    if mask is not None:
        write = ops.logical_and(write, ops.logical_not(mask))
    values = ops.expand_dims(ops.cast(values, x.dtype), 1)
    for _ in range(len(x.shape) - 2):
        write = ops.expand_dims(write, -1)
    return ops.where(write, values, x)


def all_stopped(prompt, mask, stop_token_ids):
    """True when every row holds one of `stop_token_ids` at a position
    where `mask` is False (a generated token, not the prompt)."""
    hit = ops.zeros_like(mask)
    for token in stop_token_ids:
        hit = ops.logical_or(hit, ops.equal(prompt, token))
    hit = ops.logical_and(hit, ops.logical_not(mask))
    return ops.all(ops.any(hit, axis=-1))


def keep_going(prompt, mask, index, max_length, stop_token_ids):
    """The loops' condition: `index < max_length` and not `all_stopped`."""
    going = ops.less(index, max_length)
    if stop_token_ids is None:
        return going
    stopped = all_stopped(prompt, mask, stop_token_ids)
    return ops.logical_and(going, ops.logical_not(stopped))
