"""The key/value cache of `MultiHeadAttention`, in keras-hub's layout.

A cache is one tensor `(batch, 2, max_length, num_key_value_heads,
max(key_dim, value_dim))`: keys at index 0 and values at index 1 of axis
1, each zero-padded to the wider of the two head sizes. A call with
`cache_update_index` projects its keys and values and writes them at
`cache_update_index, ...`; a call without it reads the cache as it is.
"""

import keras
from keras import ops

from keras_attention import _masking
from keras_attention import _validation


class KVCache:
    """The cache's checks, masks, reads and writes for one layer's sizes.

    Args:
        num_key_value_heads: the heads of the keys and values.
        key_dim: size of each key head.
        value_dim: size of each value head.
    """

    def __init__(self, num_key_value_heads, key_dim, value_dim):
        self.num_key_value_heads = num_key_value_heads
        self.key_dim = key_dim
        self.value_dim = value_dim
        self.dim = max(key_dim, value_dim)

    def check(self, query, key, cache, cache_update_index, attention_axes):
        """Checks the cache and returns the queries' causal offset.

        `attention_axes`: the layer's argument, for the error message (a
        cache needs rank-3 inputs, which have one attention axis).
        """
        if cache is None:
            if cache_update_index is not None:
                raise ValueError(
                    "Argument `cache_update_index` needs a `cache` to update."
                    " Received: cache=None, cache_update_index="
                    f"{_validation.short_repr(cache_update_index)}"
                )
            return 0
        if len(query.shape) != 3:
            raise ValueError(
                "Argument `cache` needs rank-3 inputs (batch, length, dim) "
                "and one attention axis; a cache over several "
                "`attention_axes` is not supported. Received: "
                f"attention_axes={attention_axes}, "
                f"query.shape={tuple(query.shape)}"
            )
        shape = _validation.static_shape(cache)
        expected = (
            query.shape[0],
            2,
            None,
            self.num_key_value_heads,
            self.dim,
        )
        if len(shape) != 5 or any(
            want is not None and got is not None and want != got
            for want, got in zip(expected, shape)
        ):
            raise ValueError(
                "Argument `cache` must have the shape (batch_size, 2, "
                "max_length, num_key_value_heads, max(key_dim, value_dim)) "
                f"= {expected} (None: any). Received: cache.shape={shape}"
            )
        dtype = keras.backend.standardize_dtype(
            getattr(cache, "dtype", "float32")
        )
        if not dtype.startswith(("float", "bfloat")):
            raise ValueError(
                "Argument `cache` must be a floating-point tensor (it holds "
                f"keys and values). Received: cache.dtype={dtype}"
            )
        if cache_update_index is None:
            return 0
        max_length, new = shape[2], key.shape[1]
        upper = None
        if max_length is not None and new is not None:
            upper = max_length - new
        known = _validation.check_index(
            "cache_update_index",
            cache_update_index,
            upper,
            f"the cache holds {max_length} positions and {new} are written",
        )
        return cache_update_index if known is None else known

    def read(self, cache):
        """The keys and values a cache holds, `(B, max_length, heads,
        key_dim)` and `(B, max_length, heads, value_dim)`."""
        return (
            _head_slice(cache[:, 0], self.key_dim),
            _head_slice(cache[:, 1], self.value_dim),
        )

    def write(self, cache, keys, values, index):
        """Writes `keys` and `values` `(B, T, heads, dim)` at positions
        `index, ..., index + T - 1`. Returns the cache's keys, its values
        (as `read` does) and the updated cache."""
        # The halves are updated and attended separately: attending slices
        # of the stacked cache is up to 3x slower on JAX (measured in
        # benchmarks/decoding.py).
        cached_keys = _write_rows(cache[:, 0], keys, index)
        cached_values = _write_rows(cache[:, 1], values, index)
        return (
            _head_slice(cached_keys, self.key_dim),
            _head_slice(cached_values, self.value_dim),
            ops.stack([cached_keys, cached_values], axis=1),
        )


def slot_mask(name, mask, cache, index, new):
    """A 2-D padding mask of the keys being written (e.g. the inputs' Keras
    mask, `(batch, new_length)`) -> a mask over the cache's slots, True
    outside the update. A mask of the slots' length is returned as it is,
    and so is any other shape (the call's checks refuse it)."""
    if mask is None or len(_validation.static_shape(mask)) != 2:
        return mask
    mask = _masking.as_bool(mask, name)
    length, slots = mask.shape[-1], cache.shape[2]
    if length is not None and (
        length == slots or (new is not None and length != new)
    ):
        return mask

    def mapped():
        new = ops.shape(mask)[1]
        positions = ops.arange(ops.shape(cache)[2], dtype="int32")
        positions = positions - ops.cast(index, "int32")
        inside = ops.logical_and(positions >= 0, positions < new)
        picked = ops.take(mask, ops.clip(positions, 0, new - 1), axis=1)
        return ops.where(inside[None, :], picked, True)

    if length is not None and slots is not None:
        return mapped()
    # Unknown lengths (a traced signature): decided at run time.
    return ops.cond(
        ops.equal(ops.shape(mask)[1], ops.shape(cache)[2]),
        lambda: mask,
        mapped,
    )


def _head_slice(x, dim):
    """`x[..., :dim]`, skipped when it is all of `x`."""
    return x if x.shape[-1] == dim else x[..., :dim]


def _write_rows(cache, update, index):
    """Writes `update` `(B, T, heads, dim)` into `cache` `(B, max_length,
    heads, cache_dim)` at positions `index, ..., index + T - 1`.

    A scatter (`TensorScatterUpdate` on TensorFlow), not `slice_update`,
    which TensorFlow lowers to `XlaDynamicUpdateSlice`: TF Serving runs
    without XLA by default. A shorter `dim` is zero-padded.
    """
    update = ops.cast(update, cache.dtype)
    cache_dim = cache.shape[-1] or update.shape[-1]
    if update.shape[-1] != cache_dim:
        update = ops.pad(
            update,
            [[0, 0], [0, 0], [0, 0], [0, cache_dim - update.shape[-1]]],
        )
    batch, length = ops.shape(update)[0], ops.shape(update)[1]
    grid = (batch, length)
    rows = ops.broadcast_to(ops.arange(batch, dtype="int32")[:, None], grid)
    positions = ops.arange(length, dtype="int32") + ops.cast(index, "int32")
    slots = ops.broadcast_to(positions[None, :], grid)
    indices = ops.reshape(ops.stack([rows, slots], axis=-1), (-1, 2))
    flat = ops.reshape(update, (-1,) + tuple(update.shape[-2:]))
    return ops.scatter_update(cache, indices, flat)
