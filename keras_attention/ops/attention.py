"""Scaled dot-product and additive attention as backend-agnostic functions."""

import math

import keras
from keras import ops

from keras_attention import _validation
from keras_attention._masking import and_masks
from keras_attention._masking import as_bool
from keras_attention._masking import causal_mask
from keras_attention._masking import finite_logits_mask
from keras_attention._masking import masked_softmax
from keras_attention._masking import sliding_window_mask
from keras_attention._masking import softmax_with_sinks
from keras_attention.ops import _backend
from keras_attention.ops import _chunked
from keras_attention.ops import _fused
from keras_attention.ops import _program
from keras_attention.ops._arith import ceil_div
from keras_attention.ops._chunked import chunked_additive_attention
from keras_attention.ops._chunked import chunked_dot_product_attention

# `chunk_size="auto"`: the dense kernel while the logits of one call have at
# most this many elements (batch * heads * q_len * k_len); the chunked kernel,
# with chunks of AUTO_CHUNK positions, above. Measured in benchmarks/.
AUTO_DENSE_MAX_LOGITS = 2**25
AUTO_CHUNK = 512
# "auto" uses longer key blocks than query blocks: fewer online-softmax
# steps per query block (measured fastest of 256..2048 on CPU).
AUTO_KEY_CHUNK = 1024
# "auto" in inference (no training, no dropout, not causal): query blocks of
# at most AUTO_ROWS rows against all the keys at once, one softmax each (no
# running maximum): fewer rows while a block would hold more than
# AUTO_DENSE_MAX_LOGITS logits, the online softmax below AUTO_MIN_ROWS.
AUTO_ROWS = 256
AUTO_MIN_ROWS = 64
# The same for additive attention, whose dense kernel holds a (batch, q_len,
# k_len, units) tensor.
AUTO_ADDITIVE_DENSE_MAX = 2**24
AUTO_ADDITIVE_CHUNK = 128


def _check_logits_operand(name, operand, target_shape, target_desc):
    """Masks and biases are rank 2 `(q, k)` or rank 4 `(b, h, q, k)`.

    Rank 3 is refused on purpose: NumPy broadcasting would align its batch
    axis with the heads axis and silently give wrong results.
    """
    if operand is None:
        return
    shape = tuple(operand.shape)
    if len(shape) not in (2, 4):
        raise ValueError(
            f"Argument `{name}` must have rank 2 (q_len, k_len) or rank 4 "
            f"{target_desc}. For a (batch, q_len, k_len) {name}, pass "
            f"`{name}[:, None]`. Received: {name}.shape={shape}"
        )
    _validation.check_broadcastable(name, shape, target_shape, target_desc)


def scaled_dot_product_attention(
    query,
    key,
    value,
    *,
    bias=None,
    mask=None,
    is_causal=False,
    scale=None,
    dropout_rate=0.0,
    training=False,
    seed=None,
    return_scores=False,
    chunk_size="auto",
    logits_soft_cap=None,
    flash_attention=None,
    causal_offset=0,
    sliding_window=None,
    score_mod=None,
    mask_mod=None,
    query_segment_ids=None,
    key_segment_ids=None,
    sinks=None,
):
    """Scaled dot-product attention with exact masking and float32 softmax.

    Computes `softmax(scale * query @ key^T + bias)` over the keys and
    returns the weighted sum of `value`. The logits and the softmax run in
    float32 whatever the input dtype; the weighted sum runs in the dtype of
    `value`, which is the output dtype. `key` and `value` may have fewer
    heads than `query` (grouped-query attention): query head `n` uses
    key/value head `n // (num_heads // num_kv_heads)`.

    Keys masked by `mask`, by `is_causal` or by a `-inf` in `bias` get a
    weight of exactly zero. **A query row with no key to attend (all masked,
    or `k_len == 0`) gives zeros, never NaN,** in the output, the scores and
    the gradients, in every kernel. NaN and Inf in the inputs are not
    checked: they reach the rows that attend them, and a masked key's value
    still enters the sum with weight zero (0 x NaN is NaN), so pad with
    finite values.

    Three kernels: the dense one holds the `(batch, num_heads, q_len,
    k_len)` logits. The chunked one loops over blocks of queries and keys
    with an online softmax (Rabe & Staats 2021) and recomputes them in the
    backward pass, so a forward or a gradient needs O(length x chunk)
    memory; causal attention skips the blocks above the diagonal. The
    backend's fused kernel (`keras.ops.dot_product_attention`) runs where
    `flash_attention` allows it. `bias` and `return_scores` need the dense
    kernel.

    **Programmable attention** (idioms: docs/programmable.md).
    `score_mod` and `mask_mod` take FlexAttention's arguments in its order:
    `b`, `h`, `q_idx` and `kv_idx` are int32 tensors broadcastable to
    `(batch, num_heads, q_len, k_len)` or to one block of it (transposed in
    the chunked backward pass), so write them element by element with
    `keras.ops`; `q_idx` is absolute (it includes `causal_offset`).
    Gradients flow through `score_mod` in every kernel, also to the tensors
    and variables it closes over (on TensorFlow the chunked kernel finds
    them by tracing it once per call). The chunked kernel skips, forward
    and backward, the key blocks no query of the block can attend: by
    analysis for causality, `sliding_window` and segment ids, by
    evaluating `mask_mod` on the block where it is all False (and drops
    the mask where it is all True). The fused kernel takes
    `sliding_window` (as a mask) but none of the others, except the
    `mask_mod` `keras_attention.ops.causal`, recognised by identity as
    `is_causal=True`.

    Args:
        query: `(batch, q_len, num_heads, dim)`.
        key: `(batch, k_len, num_kv_heads, dim)`, `num_kv_heads` a divisor
            of `num_heads`.
        value: `(batch, k_len, num_kv_heads, value_dim)`.
        bias: optional float tensor added to the logits (e.g. ALiBi), of
            rank 2 `(q_len, k_len)` or rank 4 broadcastable to `(batch,
            num_heads, q_len, k_len)`.
        mask: optional boolean tensor, True to attend, of rank 2 or 4 as
            `bias`. Rank 3 is refused (its batch axis would broadcast
            against the heads): pass `mask[:, None]`. A numeric mask must
            hold only 0 and 1: other values raise a `ValueError` when they
            are known (NumPy arrays, eager tensors); in traced code any
            non-zero value counts as True.
        is_causal: if True, query `i` attends only keys `j <= i` (top-left
            aligned, as Keras' `use_causal_mask`), combined with `mask`.
        scale: multiplier of the logits. Defaults to `1 / sqrt(dim)`.
        dropout_rate: float in `[0, 1)`, dropout on the normalized weights
            in training, the kept ones scaled by `1 / P(keep)`. The chunked
            kernel draws each block's mask from the call's key and the block
            index, again in the backward pass (none is stored): its draws
            differ from the dense kernel's and between backends, and on
            TensorFlow the rate is rounded to a multiple of 2**-16 (the
            scale uses the rounded rate).
        training: Python bool, whether dropout is active.
        seed: int or `keras.random.SeedGenerator` for the dropout. A call
            draws one key from it (a `SeedGenerator` advances once); a fixed
            int makes the call and its gradients reproducible.
        return_scores: if True, also return the weights `(batch, num_heads,
            q_len, k_len)`, after the softmax and before dropout, in the
            dtype of `query`.
        chunk_size: `"auto"` (default), `None` (dense) or a positive int up
            to 2**31 - 1 (chunked, with blocks of `chunk_size` queries and
            keys, or the length if shorter; lengths need not be multiples of
            it and may be unknown, as in a `tf.function` or a SavedModel).
            `"auto"` is dense while the logits have at most
            `AUTO_DENSE_MAX_LOGITS` (2**25) elements or fit in one block of
            `AUTO_CHUNK` (512) queries and `AUTO_KEY_CHUNK` (1024) keys,
            else chunked with such blocks; unknown sizes are decided at run
            time. In inference (not `training`, no gradient tape or autograd
            recording) without `is_causal`, its blocks are instead up to
            `AUTO_ROWS` (256) queries against all the keys, one softmax each
            (fewer rows while a block would exceed 2**25 logits; with static
            shapes, the online softmax below `AUTO_MIN_ROWS`, 64). Gradients
            are exact and run on the training blocks.
        logits_soft_cap: optional positive float `cap`: the logits become
            `cap * tanh(logits / cap)` after the scale and the bias, before
            masking (as in Gemma 2).
        flash_attention: `None` (default), `True` or `False`. `False`: our
            kernels, always (unlike a Keras layer's `False`, which the unset
            global switch turns back into "auto"). `None`: unless
            `keras.config.is_flash_attention_enabled()` is False, and only
            with `chunk_size="auto"`, the fused kernel runs where it can:
            PyTorch (`F.scaled_dot_product_attention`, on CPU and CUDA, any
            float dtype) or JAX on a GPU (float16 or bfloat16 inputs) or a
            TPU; no returned scores, no dropout in training, no `bias`, no
            `logits_soft_cap` (except on a TPU) and a mask of rank 2 or 4
            with a static shape. `True`: the fused kernel whatever
            `chunk_size` says, or a `ValueError` naming what prevents it.
            The fused kernel computes its own logits (not our float32 ones);
            fully masked rows are zero on it too.
        causal_offset: int or 0-d integer tensor, default 0: query `i`
            sits at position `causal_offset + i`; with `is_causal` it
            attends keys `j <= causal_offset + i` (a prefill or a decoding
            step into a key/value cache). The chunked kernel still skips the
            blocks past the diagonal and builds no mask. A known offset must
            be non-negative; a non-zero one needs `is_causal`,
            `sliding_window`, `score_mod` or `mask_mod`.
        sliding_window: optional positive int `w`: query position `p`
            attends keys `j` with `|p - j| < w`, Keras' symmetric band
            (keras-hub's gpt-oss uses `kv_idx >= q_idx - w`, one key more:
            pass `w + 1` with `is_causal` to port it).
        score_mod: optional `score_mod(score, b, h, q_idx, kv_idx) ->
            score`, FlexAttention's: applied to the float32 logits after
            the scale and `bias`, before the soft-cap and the masks. A
            `-inf` it returns is masked. See "Programmable attention".
        mask_mod: optional `mask_mod(b, h, q_idx, kv_idx) -> bool`,
            FlexAttention's: True to attend, ANDed with every other mask.
        query_segment_ids: optional integer `(batch, q_len)`, with
            `key_segment_ids` `(batch, k_len)`: a query attends a key only
            when their ids are equal (packed documents).
        key_segment_ids: see `query_segment_ids`.
        sinks: optional float `(num_heads,)`: one raw logit per query head
            that joins every row's softmax denominator and carries no value
            (attention sinks, as in gpt-oss). Not scaled, and neither
            `score_mod` nor the soft-cap applies to it. Returned scores
            exclude it, so rows sum to less than 1; a fully masked row is
            still zero.

    Returns:
        The output `(batch, q_len, num_heads, value_dim)` in the dtype of
        `value`, or `(output, scores)` if `return_scores`.

    Example:

    >>> import numpy as np
    >>> q = np.random.rand(2, 5, 4, 8).astype("float32")
    >>> kv = np.random.rand(2, 7, 2, 8).astype("float32")
    >>> out = scaled_dot_product_attention(q, kv, kv, is_causal=True)
    >>> tuple(out.shape)
    (2, 5, 4, 8)

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762).
    """
    query, key, value = _tensors_of_rank(query, key, value, 4)
    _, _, num_heads, dim = query.shape
    _, _, num_kv_heads, key_dim = key.shape
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        if tensor.shape[2] is None:
            raise ValueError(
                f"The number of heads (axis 2) of `{name}` must be static. "
                f"Received: {name}.shape={tuple(tensor.shape)}"
            )
    _validation.check_dims_equal(
        "query", query.shape[0], "key", key.shape[0], "batch size"
    )
    _validation.check_dims_equal(
        "key", key.shape[0], "value", value.shape[0], "batch size"
    )
    _validation.check_dims_equal("query", dim, "key", key_dim, "head dim")
    _validation.check_dims_equal(
        "key", key.shape[1], "value", value.shape[1], "sequence length"
    )
    _validation.check_dims_equal(
        "key", num_kv_heads, "value", value.shape[2], "number of heads"
    )
    if num_heads % num_kv_heads:
        raise ValueError(
            "The number of heads of `query` must be a multiple of the number "
            f"of heads of `key` and `value`. Received: query heads="
            f"{num_heads}, key heads={num_kv_heads}"
        )
    _validation.check_rate("dropout_rate", dropout_rate)
    _validation.check_chunk_size(chunk_size)
    _validation.check_positive_number(
        "logits_soft_cap", logits_soft_cap, allow_none=True
    )
    _validation.check_flash_attention(flash_attention)
    if mask_mod is _program.causal:
        is_causal, mask_mod = True, None
    known_offset = _validation.check_index("causal_offset", causal_offset)
    positional = (
        is_causal
        or sliding_window is not None
        or score_mod is not None
        or mask_mod is not None
    )
    if known_offset == 0:
        causal_offset = 0
    elif not positional:
        raise ValueError(
            "Argument `causal_offset` (the position of query 0) applies only "
            "with `is_causal=True`, `sliding_window`, `score_mod` or "
            "`mask_mod`; otherwise leave it at 0. Received: "
            f"causal_offset={_validation.short_repr(causal_offset)}, "
            "is_causal=False"
        )
    _validation.check_positive_int(
        "sliding_window", sliding_window, allow_none=True, max_value=2**31 - 1
    )
    for name, fn in (("score_mod", score_mod), ("mask_mod", mask_mod)):
        if fn is not None and not callable(fn):
            raise ValueError(
                f"Argument `{name}` must be a function or None. Received: "
                f"{name}={_validation.short_repr(fn)}"
            )
    segments = _segment_ids(query_segment_ids, key_segment_ids, query, key)
    sinks = _sinks(sinks, num_heads)
    target = (query.shape[0], num_heads, query.shape[1], key.shape[1])
    target_desc = "(batch, num_heads, q_len, k_len)"
    mask = as_bool(mask)
    _check_logits_operand("mask", mask, target, target_desc)
    if bias is not None:
        bias = ops.convert_to_tensor(bias)
        _check_logits_operand("bias", bias, target, target_desc)
    if scale is None:
        scale = 1.0 / math.sqrt(dim)
    program = _program.Program(
        num_heads,
        is_causal,
        sliding_window,
        None if score_mod is None else (score_mod, None),
        None if mask_mod is None else (mask_mod, None),
    )
    _probe(program, query.shape[0])
    programmable = (
        score_mod is not None
        or mask_mod is not None
        or segments is not None
        or sinks is not None
    )
    dropout_active = bool(training) and dropout_rate > 0.0
    if _fused.choose(
        flash_attention,
        keras.config.is_flash_attention_enabled(),
        **_fused.facts(
            query.dtype,
            return_scores,
            dropout_active,
            bias,
            logits_soft_cap,
            mask,
            chunk_size,
            programmable,
        ),
    ):
        if sliding_window is not None:
            mask = and_masks(
                mask,
                sliding_window_mask(
                    ops.shape(query)[1],
                    ops.shape(key)[1],
                    sliding_window,
                    causal_offset,
                )[None, None],
            )
        return _fused.attend(
            query,
            key,
            value,
            mask,
            is_causal,
            scale,
            logits_soft_cap,
            causal_offset,
        )

    use_dense = chunk_size is None or return_scores or bias is not None
    dropout = _dropout(dropout_active, dropout_rate, seed)
    dense_args = (query, key, value, mask, bias, program, scale)
    dense_kwargs = dict(
        causal_offset=causal_offset,
        soft_cap=logits_soft_cap,
        dropout=dropout,
        return_scores=return_scores,
        segments=segments,
        sinks=sinks,
    )
    if use_dense:
        return _dense_sdpa(*dense_args, **dense_kwargs)

    # Whether a backward pass may follow: the kernel then holds one block
    # at a time, as in training (see `_chunked`'s `training`).
    backward = bool(training) or _backend.gradient_may_follow(query, key, value)

    chunked_program = _program.Program(
        num_heads,
        is_causal,
        sliding_window,
        _hoisted(score_mod, _program.SCORE_DTYPES, backward),
        _hoisted(mask_mod, _program.MASK_DTYPES, backward),
    )

    def chunked(blocks):
        return _chunked_sdpa(
            query,
            key,
            value,
            mask,
            chunked_program,
            scale,
            blocks,
            logits_soft_cap,
            causal_offset,
            dropout,
            backward,
            segments,
            sinks,
        )

    if chunk_size != "auto":
        return chunked((chunk_size, chunk_size))
    # "auto": dense while the (batch, heads, q_len, k_len) logits are small,
    # or while one block would hold them all (chunking saves nothing then).
    blocks = auto_blocks(sliding_window)
    dense = _auto_dense(
        (ops.shape(query)[0], num_heads),
        (ops.shape(query)[1], ops.shape(key)[1]),
        blocks,
        AUTO_DENSE_MAX_LOGITS,
    )
    if (
        dense is not True
        and not backward
        and not is_causal
        and sliding_window is None
    ):
        # Inference (no backward pass, no dropout): whole rows, see AUTO_ROWS.
        blocks = _whole_row_chunks(query, key, num_heads) or blocks
    return _run_auto(
        dense,
        lambda: _dense_sdpa(*dense_args, **dense_kwargs),
        chunked,
        query,
        key,
        blocks,
    )


def _segment_ids(query_segment_ids, key_segment_ids, query, key):
    """`(query_segment_ids, key_segment_ids)` as int32 tensors, checked, or
    None."""
    _validation.check_segment_ids(
        query_segment_ids,
        key_segment_ids,
        ((query.shape[0], query.shape[1]), (key.shape[0], key.shape[1])),
        ("q_len", "k_len"),
    )
    if query_segment_ids is None:
        return None
    return tuple(
        ops.cast(ops.convert_to_tensor(ids), "int32")
        for ids in (query_segment_ids, key_segment_ids)
    )


def _sinks(sinks, num_heads):
    """`sinks` as a float32 `(num_heads,)` tensor, checked, or None."""
    if sinks is None:
        return None
    shape = _validation.static_shape(sinks)
    if len(shape) != 1 or shape[0] not in (None, num_heads):
        raise ValueError(
            f"Argument `sinks` must have shape (num_heads,) = ({num_heads},),"
            f" one logit per query head. Received: sinks.shape={shape}"
        )
    dtype = _validation.dtype_name(sinks)
    if not dtype.startswith(("float", "bfloat")):
        raise ValueError(
            f"Argument `sinks` must hold float logits. Received: "
            f"sinks.dtype={dtype}"
        )
    return ops.cast(ops.convert_to_tensor(sinks), "float32")


def _probe(program, batch):
    """Runs the user's functions once on a tiny block, so that a result of
    the wrong dtype or shape is refused before any heavy work."""
    if program.score_mod is None and program.mask_mod is None:
        return
    batch = 1 if batch is None else min(batch, 2)
    rows = ops.arange(2, dtype="int32")
    cols = ops.arange(3, dtype="int32")
    program.user_mask(batch, rows, cols)
    logits = ops.zeros((batch, program.num_heads, 2, 3), "float32")
    program.score(logits, batch, rows, cols)


def _hoisted(fn, dtypes, gradient):
    return None if fn is None else _backend.hoist_mod(fn, dtypes, gradient)


def auto_blocks(sliding_window=None):
    """`"auto"`'s chunked blocks, `(q_chunk, k_chunk)`: `AUTO_CHUNK` queries
    against `AUTO_KEY_CHUNK` keys; under a narrower `sliding_window`, key
    blocks of `AUTO_CHUNK` too, so that the band's blocks hold fewer keys
    outside it (a band of `w` around a block of 512 queries spans 1.5 key
    blocks of 1024 on average, two of 512)."""
    if sliding_window is not None and sliding_window < AUTO_KEY_CHUNK:
        return AUTO_CHUNK, AUTO_CHUNK
    return AUTO_CHUNK, AUTO_KEY_CHUNK


def _tensors_of_rank(query, key, value, rank):
    """`query`, `key` and `value` as tensors, each checked to have `rank`."""
    query = ops.convert_to_tensor(query)
    key = ops.convert_to_tensor(key)
    value = ops.convert_to_tensor(value)
    for name, tensor in (("query", query), ("key", key), ("value", value)):
        _validation.check_rank(name, tensor.shape, (rank,))
    return query, key, value


def _run_auto(dense, run_dense, run_chunked, query, key, blocks):
    """Runs the kernel that `"auto"` chose: `run_dense()` where `dense` (from
    `_auto_dense`) is True, else `run_chunked(blocks)`.

    A boolean tensor `dense` is decided at run time by a `cond`. XLA cannot
    compile a `cond` between the kernels (nor its gradient): there one
    chunked kernel runs, its blocks chosen at run time, a single block of
    all the logits where the dense kernel would run.
    """
    if dense is True:
        return run_dense()
    if dense is False:
        return run_chunked(blocks)
    if not _backend.compiling_with_xla():
        return ops.cond(dense, run_dense, lambda: run_chunked(blocks))
    return run_chunked(_run_time_blocks(dense, query, key, blocks))


def _run_time_blocks(dense, query, key, blocks):
    """`blocks` `(q_chunk, k_chunk)`, or one block of all the queries and
    keys where the boolean tensor `dense` is True (`"auto"` under XLA). A
    `k_chunk` of None (whole rows) stays None."""
    q_len = ops.maximum(ops.shape(query)[1], 1)
    k_len = ops.maximum(ops.shape(key)[1], 1)
    q_chunk = ops.where(dense, q_len, blocks[0])
    if blocks[1] is None:
        return q_chunk, None
    return q_chunk, ops.where(dense, k_len, blocks[1])


def _auto_dense(dims, lengths, blocks, max_elements):
    """Whether `"auto"` runs the dense kernel: while the product of `dims`
    and `lengths` (the elements its largest tensor holds) is at most
    `max_elements`, or while the lengths `(q_len, k_len)` fit in one block
    of `blocks`. Sizes are ints or, unknown when traced, scalar tensors.

    Returns a Python bool when the known sizes decide it (lengths that fit
    in one block decide it whatever the batch), else a boolean tensor.
    """
    sizes = (*dims, *lengths)
    lengths_known = all(isinstance(n, int) for n in lengths)
    if lengths_known:
        if all(n <= b for n, b in zip(lengths, blocks)):
            return True
        if all(isinstance(n, int) for n in sizes):
            return math.prod(sizes) <= max_elements
    elements = 1.0
    for n in sizes:
        elements = elements * (
            float(n) if isinstance(n, int) else ops.cast(n, "float32")
        )
    small = elements <= float(max_elements)
    if lengths_known:
        return small
    one_block = ops.logical_and(
        lengths[0] <= blocks[0], lengths[1] <= blocks[1]
    )
    return ops.logical_or(small, one_block)


def _whole_row_chunks(query, key, num_heads):
    """`(rows, None)` for inference's whole-row blocks (`_chunked`'s
    `k_chunk=None`), or None for the online softmax.

    At most `AUTO_ROWS` rows, fewer while a block would hold more than
    `AUTO_DENSE_MAX_LOGITS` logits, spread evenly over the queries in the
    fewest blocks. With static shapes, below `AUTO_MIN_ROWS` rows the
    online softmax's square blocks read each key fewer times and win: None.
    With unknown shapes the rows are decided at run time, at least 1.
    """
    sizes = (query.shape[0], num_heads, query.shape[1], key.shape[1])
    if None not in sizes:
        batch, heads, q_len, k_len = sizes
        per_row = max(1, batch * heads * k_len)
        rows = min(AUTO_ROWS, AUTO_DENSE_MAX_LOGITS // per_row)
        if rows < AUTO_MIN_ROWS:
            return None
        q_len = max(q_len, 1)
    else:
        shape_q, shape_k = ops.shape(query), ops.shape(key)
        per_row = (
            ops.cast(shape_q[0], "float32")
            * float(num_heads)
            * ops.cast(shape_k[1], "float32")
        )
        rows = ops.cast(
            ops.clip(float(AUTO_DENSE_MAX_LOGITS) / per_row, 1.0, AUTO_ROWS),
            "int32",
        )
        q_len = ops.maximum(shape_q[1], 1)
    blocks = ceil_div(q_len, rows)
    return ceil_div(q_len, blocks), None


def _chunked_sdpa(
    query,
    key,
    value,
    mask,
    program,
    scale,
    chunks,
    soft_cap=None,
    causal_offset=0,
    dropout=None,
    training=False,
    segments=None,
    sinks=None,
):
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    # A gradient of a whole-row forward runs on the training blocks.
    backward_chunks = (
        _fit_chunk(AUTO_CHUNK, query),
        _fit_chunk(AUTO_KEY_CHUNK, key),
    )
    if chunks[1] is None:  # whole rows, fitted by `_whole_row_chunks`
        q_chunk, k_chunk = chunks
    else:
        q_chunk, k_chunk = backward_chunks = (
            _fit_chunk(chunks[0], query),
            _fit_chunk(chunks[1], key),
        )
    q = ops.transpose(
        ops.cast(query, "float32") * ops.cast(scale, "float32"), (0, 2, 1, 3)
    )
    k = ops.transpose(ops.cast(key, "float32"), (0, 2, 1, 3))
    v = ops.transpose(ops.cast(value, "float32"), (0, 2, 1, 3))
    if num_heads != num_kv_heads:
        k = ops.repeat(k, num_heads // num_kv_heads, axis=1)
        v = ops.repeat(v, num_heads // num_kv_heads, axis=1)
    if mask is not None and len(mask.shape) == 2:
        mask = mask[None, None]
    out = chunked_dot_product_attention(
        q,
        k,
        v,
        mask,
        program.is_causal,
        q_chunk,
        k_chunk,
        soft_cap,
        causal_offset,
        dropout,
        training,
        backward_chunks,
        program=program,
        segments=segments,
        sinks=sinks,
    )
    return ops.cast(ops.transpose(out, (0, 2, 1, 3)), value.dtype)


def _dropout(active, rate, seed):
    """`(rate, key)` for the kernels, or None: the call's key is drawn once
    from `seed` (a `SeedGenerator` advances once per call), before the kernel
    is chosen, so that dense and chunked calls use it alike."""
    if not active:
        return None
    return rate, _chunked.call_key(seed)


def _apply_dropout(weights, dropout):
    """The dense kernels' dropout on the full weights."""
    if dropout is None:
        return weights
    rate, key = dropout
    return keras.random.dropout(weights, rate, seed=_chunked.StatelessSeed(key))


def _fit_chunk(chunk, x):
    """A chunk no longer than the length (axis 1) of `x`, at least 1.

    Short inputs are not padded up to a long chunk. With a static length the
    chunk is a Python int; with an unknown length (a `tf.function` or a
    SavedModel) it is decided at run time, so that a large `chunk_size`
    never pads a short request to `chunk_size` positions.
    """
    length = x.shape[1]
    if length is not None and isinstance(chunk, int):
        return max(1, min(chunk, length))
    return ops.maximum(ops.minimum(chunk, ops.shape(x)[1]), 1)


def _dense_sdpa(
    query,
    key,
    value,
    mask,
    bias,
    program,
    scale,
    causal_offset=0,
    soft_cap=None,
    dropout=None,
    return_scores=False,
    segments=None,
    sinks=None,
):
    num_heads, num_kv_heads = query.shape[2], key.shape[2]
    dim = query.shape[3]
    batch = ops.shape(query)[0]
    q_len, k_len = ops.shape(query)[1], ops.shape(key)[1]
    rows = ops.arange(q_len, dtype="int32")
    if not (isinstance(causal_offset, int) and causal_offset == 0):
        rows = rows + ops.cast(causal_offset, "int32")
    cols = ops.arange(k_len, dtype="int32")
    mask = and_masks(
        mask,
        program.static_mask(rows, cols),
        None if segments is None else program.segment_mask(*segments),
        program.user_mask(batch, rows, cols),
    )

    groups = num_heads // num_kv_heads
    q32 = ops.cast(query, "float32") * ops.cast(scale, "float32")
    k32 = ops.cast(key, "float32")
    if groups == 1:
        logits = ops.einsum("btnh,bsnh->bnts", q32, k32)
    else:
        batch, q_len = ops.shape(query)[0], ops.shape(query)[1]
        q32 = ops.reshape(q32, (batch, q_len, num_kv_heads, groups, dim))
        logits = ops.einsum("btkgh,bskh->bkgts", q32, k32)
        logits = ops.reshape(
            logits, (batch, num_heads, q_len, ops.shape(key)[1])
        )
    if bias is not None:
        logits = logits + ops.cast(bias, "float32")
    logits = program.score(logits, batch, rows, cols)
    if bias is not None or program.score_mod is not None:
        mask = finite_logits_mask(logits, mask)
    if soft_cap is not None:
        logits = soft_cap * ops.tanh(logits / soft_cap)
    if sinks is None:
        weights = masked_softmax(logits, mask)
    else:
        weights = softmax_with_sinks(
            logits, mask, ops.reshape(sinks, (1, -1, 1, 1))
        )

    scores = ops.cast(weights, query.dtype) if return_scores else None
    weights = ops.cast(_apply_dropout(weights, dropout), value.dtype)
    if groups == 1:
        output = ops.einsum("bnts,bsnh->btnh", weights, value)
    else:
        batch, q_len = ops.shape(query)[0], ops.shape(query)[1]
        weights = ops.reshape(
            weights,
            (batch, num_kv_heads, groups, q_len, ops.shape(key)[1]),
        )
        output = ops.einsum("bkgts,bskh->btkgh", weights, value)
        output = ops.reshape(output, (batch, q_len, num_heads, value.shape[-1]))
    if return_scores:
        return output, scores
    return output


def additive_attention(
    query,
    key,
    value,
    attention_v,
    *,
    hidden_bias=None,
    mask=None,
    is_causal=False,
    dropout_rate=0.0,
    training=False,
    seed=None,
    return_scores=False,
    chunk_size="auto",
):
    """Additive (Bahdanau) attention over already-projected queries and keys.

    The logits are `sum_u attention_v[u] * tanh(query[:, t, u] + key[:, s, u]
    + hidden_bias[u])`, in float32. Masks, fully masked rows (zeros), empty
    and non-finite inputs, dropout and dtypes follow
    `scaled_dot_product_attention`.

    Args:
        query: projected queries `(batch, q_len, units)` (`W_q q`).
        key: projected keys `(batch, k_len, units)` (`W_k k`).
        value: `(batch, k_len, value_dim)`.
        attention_v: `(units,)` scoring vector.
        hidden_bias: optional `(units,)` bias inside the `tanh`.
        mask: optional boolean mask broadcastable to `(batch, q_len, k_len)`,
            True to attend.
        is_causal: if True, query `i` attends only keys `j <= i`.
        dropout_rate: dropout on the attention weights, in `[0, 1)`.
        training: Python bool, whether dropout is active.
        seed: int or `keras.random.SeedGenerator` for the dropout.
        return_scores: if True, also return the weights `(batch, q_len,
            k_len)`, after the softmax and before dropout, in the dtype of
            `query` (from the dense kernel).
        chunk_size: `"auto"` (default), `None` (dense) or a positive int
            (chunked), as in `scaled_dot_product_attention`; the chunked
            kernel never holds the `(batch, q_len, k_len, units)` tensor.
            `"auto"` is dense while that tensor has at most
            `AUTO_ADDITIVE_DENSE_MAX` (2**24) elements or both lengths fit
            in one block of `AUTO_ADDITIVE_CHUNK` (128), else chunked with
            such blocks.

    Returns:
        The context `(batch, q_len, value_dim)` in the dtype of `value`, or
        `(context, scores)` if `return_scores`.

    Example:

    >>> import numpy as np
    >>> pq = np.random.rand(2, 3, 16).astype("float32")
    >>> pk = np.random.rand(2, 5, 16).astype("float32")
    >>> v = np.random.rand(2, 5, 8).astype("float32")
    >>> w = np.random.rand(16).astype("float32")
    >>> tuple(additive_attention(pq, pk, v, w).shape)
    (2, 3, 8)

    Reference:
        [Bahdanau et al., 2015](https://arxiv.org/abs/1409.0473).
    """
    attention_v = ops.convert_to_tensor(attention_v)
    query, key, value = _tensors_of_rank(query, key, value, 3)
    _validation.check_rank("attention_v", attention_v.shape, (1,))
    _validation.check_dims_equal(
        "query", query.shape[-1], "key", key.shape[-1], "last dimension"
    )
    _validation.check_dims_equal(
        "query",
        query.shape[-1],
        "attention_v",
        attention_v.shape[-1],
        "last dimension",
    )
    _validation.check_dims_equal(
        "key", key.shape[1], "value", value.shape[1], "sequence length"
    )
    for other_name, other in (("key", key), ("value", value)):
        _validation.check_dims_equal(
            "query", query.shape[0], other_name, other.shape[0], "batch size"
        )
    _validation.check_rate("dropout_rate", dropout_rate)
    mask = as_bool(mask)
    if mask is not None:
        _validation.check_broadcastable(
            "mask",
            mask.shape,
            (query.shape[0], query.shape[1], key.shape[1]),
            "(batch, q_len, k_len)",
        )
    _validation.check_chunk_size(chunk_size)
    dropout = _dropout(
        bool(training) and dropout_rate > 0.0, dropout_rate, seed
    )
    args = (query, key, value, attention_v, hidden_bias, mask, is_causal)
    if chunk_size is None or return_scores:
        return _dense_additive(
            *args, dropout=dropout, return_scores=return_scores
        )
    backward = bool(training) or _backend.gradient_may_follow(
        query, key, value, attention_v, hidden_bias
    )

    def chunked(blocks):
        return _chunked_additive(*args, blocks, dropout, backward)

    if chunk_size != "auto":
        return chunked(chunk_size)
    blocks = (AUTO_ADDITIVE_CHUNK, AUTO_ADDITIVE_CHUNK)
    dense = _auto_dense(
        (ops.shape(query)[0], ops.shape(query)[2]),
        (ops.shape(query)[1], ops.shape(key)[1]),
        blocks,
        AUTO_ADDITIVE_DENSE_MAX,
    )
    return _run_auto(
        dense,
        lambda: _dense_additive(*args, dropout=dropout),
        chunked,
        query,
        key,
        blocks,
    )


def _chunked_additive(
    query,
    key,
    value,
    attention_v,
    hidden_bias,
    mask,
    is_causal,
    chunk,
    dropout=None,
    training=False,
):
    """`chunk`: an int, or `(q_chunk, k_chunk)`."""
    q_chunk, k_chunk = chunk if isinstance(chunk, tuple) else (chunk, chunk)
    q = ops.cast(query, "float32")[:, None]
    k = ops.cast(key, "float32")[:, None]
    v = ops.cast(value, "float32")[:, None]
    attention_v = ops.cast(attention_v, "float32")
    if hidden_bias is None:
        hidden_bias = ops.zeros_like(attention_v)
    hidden_bias = ops.cast(hidden_bias, "float32")
    if mask is not None:
        while len(mask.shape) < 3:
            mask = mask[None]
        mask = mask[:, None]
    out = chunked_additive_attention(
        q,
        k,
        v,
        attention_v,
        hidden_bias,
        mask,
        is_causal,
        _fit_chunk(q_chunk, query),
        _fit_chunk(k_chunk, key),
        dropout,
        training,
    )
    return ops.cast(out[:, 0], value.dtype)


def _dense_additive(
    query,
    key,
    value,
    attention_v,
    hidden_bias,
    mask,
    is_causal,
    dropout=None,
    return_scores=False,
):
    if is_causal:
        mask = and_masks(
            mask, causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        )

    hidden = ops.expand_dims(ops.cast(query, "float32"), 2) + ops.expand_dims(
        ops.cast(key, "float32"), 1
    )
    if hidden_bias is not None:
        hidden = hidden + ops.cast(hidden_bias, "float32")
    logits = ops.einsum(
        "btsu,u->bts", ops.tanh(hidden), ops.cast(attention_v, "float32")
    )
    weights = masked_softmax(logits, mask)
    scores = ops.cast(weights, query.dtype) if return_scores else None
    weights = ops.cast(_apply_dropout(weights, dropout), value.dtype)
    output = ops.einsum("bts,bsd->btd", weights, value)
    if return_scores:
        return output, scores
    return output
