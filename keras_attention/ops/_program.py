"""The logit programme of one attention call: which (query, key) pairs may
attend, and how their logits change, on any block of the `(batch, heads,
q_len, k_len)` grid.

The dense kernel evaluates it once on the whole grid, the chunked kernel on
each block (laid out `(batch, heads, k, q)` in its backward pass), so that
causal masking, the sliding window, segment ids and the user's `mask_mod`
and `score_mod` have one home. Positions are absolute: a query row `r`
sits at `causal_offset + r`. The rules are documented once, in
`keras_attention.ops.scaled_dot_product_attention`.
"""

import keras
from keras import ops

from keras_attention.ops import _backend

SCORE_DTYPES = ("float32", "int32", "int32", "int32", "int32")
MASK_DTYPES = ("int32", "int32", "int32", "int32")


def causal(b, h, q_idx, kv_idx):
    """The causal `mask_mod`: query position `q_idx` attends keys
    `kv_idx <= q_idx`. Recognised by identity: a call with it runs as
    `is_causal=True`, so it may reach the fused kernel and the chunked
    kernel's causal loop bounds.

    Example:

    >>> import numpy as np
    >>> from keras_attention.ops import scaled_dot_product_attention
    >>> x = np.ones((1, 3, 2, 4), "float32")
    >>> out = scaled_dot_product_attention(x, x, x, mask_mod=causal)
    >>> tuple(out.shape)
    (1, 3, 2, 4)
    """
    return q_idx >= kv_idx


class Program:
    """The masks and the score function of a call.

    Args:
        num_heads: the number of query heads.
        is_causal: query at position `p` attends keys `j <= p`.
        window: None or an int `w`: keys `j` with `|p - j| < w`.
        score_mod: None or `(fn, params)` (see `_backend.hoist_mod`).
        mask_mod: None or `(fn, params)`.
    """

    def __init__(
        self,
        num_heads,
        is_causal=False,
        window=None,
        score_mod=None,
        mask_mod=None,
    ):
        self.num_heads = num_heads
        self.is_causal = is_causal
        self.window = window
        self.score_mod = score_mod
        self.mask_mod = mask_mod

    def with_params(self, score_params, mask_params):
        """The same programme, its functions' params replaced (the chunked
        kernel's custom gradient passes them in as inputs)."""
        score_mod = mask_mod = None
        if self.score_mod is not None:
            score_mod = (self.score_mod[0], list(score_params))
        if self.mask_mod is not None:
            mask_mod = (self.mask_mod[0], list(mask_params))
        return Program(
            self.num_heads, self.is_causal, self.window, score_mod, mask_mod
        )

    def grid(self, batch, rows, cols, transposed=False):
        """`(b, h, q_idx, kv_idx)` int32 tensors broadcastable to `(batch,
        heads, len(rows), len(cols))`, or to `(batch, heads, len(cols),
        len(rows))` if `transposed`."""
        b = ops.reshape(ops.arange(batch, dtype="int32"), (-1, 1, 1, 1))
        h = ops.reshape(
            ops.arange(self.num_heads, dtype="int32"), (1, -1, 1, 1)
        )
        q_idx, kv_idx = _lines(rows, cols, transposed)
        return b, h, q_idx, kv_idx

    def static_mask(self, rows, cols, transposed=False):
        """The causal and window mask of the block (None without either)."""
        if not self.is_causal and self.window is None:
            return None
        q_idx, kv_idx = _lines(rows, cols, transposed)
        mask = None
        if self.is_causal:
            mask = q_idx >= kv_idx
        if self.window is not None:
            band = ops.abs(q_idx - kv_idx) < self.window
            mask = band if mask is None else ops.logical_and(mask, band)
        return mask

    def segment_mask(self, q_segments, k_segments, transposed=False):
        """`(B, 1, q, k)` (or `(B, 1, k, q)`) equality of the ids."""
        if q_segments is None:
            return None
        rows = ops.expand_dims(ops.expand_dims(q_segments, 1), -1)
        cols = ops.expand_dims(ops.expand_dims(k_segments, 1), 1)
        if transposed:
            rows, cols = ops.swapaxes(rows, -1, -2), ops.swapaxes(cols, -1, -2)
        return ops.equal(rows, cols)

    def user_mask(self, batch, rows, cols, transposed=False):
        """`mask_mod` on the block's grid (None without one)."""
        if self.mask_mod is None:
            return None
        fn, params = self.mask_mod
        grid = self.grid(batch, rows, cols, transposed)
        mask = _backend.call_mod(fn, grid, params)
        check_mask_result(mask, grid)
        return mask

    def score(self, logits, batch, rows, cols, transposed=False):
        """`score_mod` on the block's logits (the logits without one)."""
        if self.score_mod is None:
            return logits
        fn, params = self.score_mod
        args = (logits, *self.grid(batch, rows, cols, transposed))
        modded = _backend.call_mod(fn, args, params)
        check_score_result(modded, logits)
        return modded

    def score_vjp(
        self, logits, batch, rows, cols, cotangent, transposed, variables
    ):
        """Gradients of `sum(score(logits) * cotangent)` with respect to
        `logits`, each of the score's params and each of `variables`."""
        fn, params = self.score_mod
        args = (logits, *self.grid(batch, rows, cols, transposed))
        return _backend.mod_vjp(fn, args, params, cotangent, variables)


def _lines(rows, cols, transposed):
    """`rows` and `cols` (1-D int32 positions) as broadcastable axes 2 and 3
    (3 and 2 if `transposed`)."""
    rows = ops.cast(rows, "int32")
    cols = ops.cast(cols, "int32")
    if transposed:
        return ops.reshape(rows, (1, 1, 1, -1)), ops.reshape(
            cols, (1, 1, -1, 1)
        )
    return ops.reshape(rows, (1, 1, -1, 1)), ops.reshape(cols, (1, 1, 1, -1))


def _target(grid):
    shape = ()
    for x in grid:
        shape = _broadcast_static(shape, tuple(x.shape))
    return shape


def _broadcast_static(a, b):
    n = max(len(a), len(b))
    a = (1,) * (n - len(a)) + a
    b = (1,) * (n - len(b)) + b
    return tuple(y if x == 1 else x for x, y in zip(a, b))


def check_mask_result(mask, grid):
    """`mask_mod` must return booleans broadcastable to the grid."""
    dtype = keras.backend.standardize_dtype(mask.dtype)
    if dtype != "bool":
        raise ValueError(
            "Argument `mask_mod` must return a boolean tensor (True to "
            f"attend), e.g. `q_idx >= kv_idx`. Received: a result of dtype "
            f"{dtype}"
        )
    _check_shape("mask_mod", tuple(mask.shape), _target(grid), exact=False)


def check_score_result(modded, logits):
    """`score_mod` must return floats of the logits' shape."""
    dtype = keras.backend.standardize_dtype(modded.dtype)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(
            "Argument `score_mod` must return the modified float scores. "
            f"Received: a result of dtype {dtype}"
        )
    _check_shape("score_mod", tuple(modded.shape), tuple(logits.shape), True)


def _check_shape(name, shape, target, exact):
    ok = len(shape) <= len(target) if not exact else len(shape) == len(target)
    if ok:
        for dim, want in zip(shape[::-1], target[::-1]):
            if dim is None or want is None or dim == want:
                continue
            if dim == 1 and not exact:
                continue
            ok = False
    if not ok:
        expected = (
            "the shape of its `score` argument"
            if exact
            else "a shape broadcastable to its arguments'"
        )
        raise ValueError(
            f"Argument `{name}` must return {expected}, {target}, working "
            f"element by element. Received: a result of shape {shape}"
        )
