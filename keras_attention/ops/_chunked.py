"""Chunked exact attention: online softmax forward, recomputing backward.

The engine works on head-major float32 tensors `q (B, N, T, Dq)`,
`k (B, N, S, Dk)` and `v (B, N, S, Dv)` and a score function of a query
block and a key block. It never holds more than one `(B, N, q_chunk,
k_chunk)` block of logits per loop iteration:

- Forward: a `map` over query blocks; inside, a `fori_loop` over key blocks
  keeps a running row maximum, the running softmax denominator and the
  running weighted sum of values (Rabe & Staats 2021; Dao et al. 2022). In
  causal attention the loop stops at the diagonal, so key blocks that are
  fully masked are never computed. It returns the output and each row's
  log-sum-exp.
- Backward (a custom gradient): a `fori_loop` over key blocks; inside, a
  `map` over query blocks recomputes the block's probabilities from the saved
  log-sum-exp and returns the block's gradients. The gradients of the query
  blocks are summed into the carry; those of the key block are stored in its
  slot. Blocks above the causal diagonal are skipped with `cond`.
- Dropout (optional): each block's keep mask is a pure function of the
  call's key and the block index (`keep_mask`), drawn in the forward pass
  and drawn again in the backward pass; no mask is stored.

Memory is O(length x chunk) in both passes. Only `keras.ops` are used, with
dynamic lengths, so it runs in `tf.function` with unknown lengths, in an
exported SavedModel (no XLA-only ops), under JAX and under PyTorch.
"""

import keras
from keras import ops

from keras_attention._masking import MASKED
from keras_attention._masking import masked_softmax
from keras_attention._masking import sink_softmax_terms
from keras_attention.ops import _backend
from keras_attention.ops import _program
from keras_attention.ops._arith import ceil_div
from keras_attention.ops._hash import GOLDEN
from keras_attention.ops._hash import SECOND
from keras_attention.ops._hash import hash32

NEG_INF = float("-inf")
# `_Engine.valid`'s default: evaluate the block's `mask_mod` there.
COMPUTE = object()


def count_block(kind):
    """Called once per key block computed (`kind`: `"forward"` or
    `"backward"`) and per block analysed (`"analysed"`) where the kernel
    runs eagerly; tests replace it to count the blocks a call skips."""


def _block_ranges(ids, num_blocks, chunk):
    """`(low, high)`, each `(B, num_blocks)`: the smallest and the largest
    id of each block of `chunk` positions of `ids` `(B, L)`."""
    padded = num_blocks * chunk
    shape = (ops.shape(ids)[0], num_blocks, chunk)
    low = ops.reshape(_pad_axis(ids, 1, padded, 2**31 - 1), shape)
    high = ops.reshape(_pad_axis(ids, 1, padded, -(2**31)), shape)
    return ops.min(low, axis=-1), ops.max(high, axis=-1)


class StatelessSeed(keras.random.SeedGenerator):
    """A fixed seed tensor for `keras.random`'s draws (no state)."""

    def __init__(self, value):
        # No `super().__init__`: it would create a state variable. Keras'
        # torch `dropout` reads `_initial_seed` to tell a seeded draw from
        # an unseeded one.
        self._value = value
        self._initial_seed = value

    def next(self, ordered=True):
        if keras.backend.backend() == "jax":
            return ops.cast(self._value, "uint32")
        return self._value


def call_key(seed):
    """The call's dropout key, an int32 `(2,)` tensor drawn from `seed` (an
    int, a `SeedGenerator`, which advances once, or None: Keras' global
    generator), as `keras.random.dropout` would draw its seed."""
    return keras.random.randint(
        (2,), -(2**31), 2**31 - 1, dtype="int32", seed=seed
    )


def _block_hash(key, i, j):
    """An int32 hash of the call's key and the block index `(i, j)`."""
    return hash32(
        hash32(key[0] * GOLDEN + key[1])
        + ops.cast(i, "int32") * GOLDEN
        + ops.cast(j, "int32") * SECOND
    )


def _index_bits(block, shape, transposed):
    """Hashed bits of each element's index `(b, n, r, c)` in a block of
    `shape = (B, N, rows, cols)` (laid out `(B, N, cols, rows)` if
    `transposed`): the same bits for the same element in both layouts."""
    b, n, rows, cols = shape
    index = (
        ops.reshape(ops.arange(b, dtype="int32"), (-1, 1, 1, 1)) * n
        + ops.reshape(ops.arange(n, dtype="int32"), (1, -1, 1, 1))
    ) * (rows * cols)
    row_offsets = ops.arange(rows, dtype="int32") * cols
    col_offsets = ops.arange(cols, dtype="int32")
    if transposed:
        index = (
            index
            + ops.reshape(col_offsets, (1, 1, -1, 1))
            + row_offsets[None, None, None]
        )
    else:
        index = (
            index
            + ops.reshape(row_offsets, (1, 1, -1, 1))
            + col_offsets[None, None, None]
        )
    # An odd multiplier before the block's hash is mixed in: two blocks
    # never share a run of consecutive inputs.
    return hash32(ops.bitwise_xor(index * GOLDEN, block))


def _uses_hash():
    """Which generator is cheapest, measured in `benchmarks/dropout_rng.py`:
    under JAX the integer hash (XLA fuses it into one loop; threefry costs
    3-7x the block's matmuls), elsewhere random words from
    `keras.random.randint`, 16 bits per mask element (one Philox kernel on
    TensorFlow, one generator call on eager PyTorch, where the hash's ops
    run one by one: 2.7x slower; half the draws of `keras.random.uniform`).
    Under `torch.compile` the hash again: Keras' torch generator is excluded
    from the graph (a break per block), and the compiler fuses the hash."""
    backend = keras.backend.backend()
    if backend == "torch":
        return _backend.torch_compiling()
    return backend == "jax"


def _threshold32(rate):
    return int(round(rate * 2**32)) - 2**31


def _threshold16(rate):
    """`rate` in units of 2**-16, at most 65535 (a keep rate of at least
    2**-16)."""
    return min(int(round(rate * 2**16)), 2**16 - 1)


def keep_scale(rate):
    """`1 / P(keep)` of the block masks, so that dropout is unbiased."""
    if _uses_hash():
        return 2**32 / (2**32 - (_threshold32(rate) + 2**31))
    return 2**16 / (2**16 - _threshold16(rate))


def keep_mask(key, i, j, shape, rate, transposed=False):
    """Boolean keep mask of block `(i, j)` of shape `(B, N, rows, cols)`
    (`(B, N, cols, rows)` if `transposed`, the same draws transposed): a pure
    function of the call's `key`, `(i, j)` and the element's place, so the
    backward pass regenerates the forward's mask."""
    block = _block_hash(key, i, j)
    if _uses_hash():
        return _index_bits(block, shape, transposed) >= _threshold32(rate)
    seed = ops.stack([block, hash32(block + key[1])])
    keep = _philox_keep(seed, shape, rate)
    return ops.swapaxes(keep, -1, -2) if transposed else keep


def _philox_keep(seed, shape, rate):
    """The keep mask `(B, N, rows, cols)` from one Philox draw of 32-bit
    words `(B, N, ceil(rows / 2), cols)`: rows `r` and `r + ceil(rows / 2)`
    take the low and the high 16 bits of word `r`, each kept if at least
    `_threshold16(rate)`. Half the draws of one 32-bit number per element,
    and a concatenation of two contiguous halves."""
    b, n, rows, cols = shape
    half = ceil_div(rows, 2)
    # Words uniform on int32: u = words + 2**31 is uniform on [0, 2**32),
    # its high 16 bits are compared through `words` itself and its low 16
    # bits are those of `words` (2**31 is a multiple of 2**16).
    if keras.backend.backend() == "tensorflow":
        # No bounds: Keras' TensorFlow backend passes them on to
        # `tf.random.stateless_uniform`, which then draws full-range words
        # without its per-element modulo (a quarter of the draw's time).
        low_bound = high_bound = None
    else:
        # [-2**31, 2**31 - 1): the word 2**31 - 1 is never drawn.
        low_bound, high_bound = -(2**31), 2**31 - 1
    words = keras.random.randint(
        (b, n, half, cols),
        low_bound,
        high_bound,
        dtype="int32",
        seed=StatelessSeed(seed),
    )
    threshold = _threshold16(rate)
    low = ops.bitwise_and(words, 0xFFFF) >= threshold
    high = words >= threshold * 2**16 - 2**31
    keep = ops.concatenate([low, high], axis=2)
    if isinstance(rows, int) and rows % 2 == 0:
        return keep
    return keep[:, :, :rows]


def _at_least_one(n):
    """`max(n, 1)` for a Python int or a scalar tensor.

    The engine always has at least one (padded) block of queries and of
    keys, so that empty sequences (length 0) give empty or zero outputs
    instead of slicing a block out of an empty axis.
    """
    if isinstance(n, int):
        return max(n, 1)
    return ops.maximum(n, 1)


def _rows(x, start, size, axis=2):
    """`x[..., start:start + size, ...]` along `axis`, with dynamic start."""
    shape = list(ops.shape(x))
    starts = [0] * len(shape)
    starts[axis] = start
    shape[axis] = size
    return ops.slice(x, starts, shape)


def _map_blocks(fn, n, templates, sequential):
    """The forward's `[fn(i) for i in range(n)]`, stacked; `templates` holds
    a zero tensor shaped like each result.

    A `map` runs up to 10 iterations at once, each with its own blocks:
    faster, but it multiplies the blocks' memory; `sequential` runs one at
    a time (`_scan_blocks`). TensorFlow: a `while` loop into preallocated
    outputs instead (`_backend.map_blocks`), which every export format
    takes.
    """
    if keras.backend.backend() == "tensorflow":
        return _backend.map_blocks(fn, n, templates, sequential)
    if sequential:
        return _scan_blocks(fn, n, templates)
    return ops.map(fn, ops.arange(n, dtype="int32"))


def _scan_blocks(fn, n, templates):
    """`[fn(i) for i in range(n)]`, stacked, one iteration at a time: a
    scan whose carry is a zero `templates` structure (Keras' TensorFlow
    `scan` needs the per-step outputs to have the carry's shapes). The
    backward pass, which holds several blocks per iteration, always runs
    this way; measured in `benchmarks/`: at length 8192 the sequential
    backward halves the peak memory of a train step for about 2% of its
    time. Gradients are never exported, so on TensorFlow it keeps the
    TensorLists that a scan collects its results in (no copy of the
    results per iteration)."""

    def step(carry, i):
        return carry, fn(i)

    return ops.scan(step, templates, ops.arange(n, dtype="int32"))[1]


def _pad_axis(x, axis, padded_len, value=0.0):
    length = ops.shape(x)[axis]
    widths = [[0, 0] for _ in range(len(x.shape))]
    widths[axis] = [0, padded_len - length]
    return ops.pad(x, widths, constant_values=value)


class _Engine:
    """Holds the static configuration and the padded, blocked operands."""

    def __init__(
        self,
        q,
        k,
        v,
        mask,
        is_causal,
        q_chunk,
        k_chunk,
        score_fn,
        score_t_fn,
        score_t_vjp,
        soft_cap=None,
        causal_offset=0,
        dropout=None,
        training=False,
        program=None,
        segments=None,
        sinks=None,
    ):
        self.soft_cap = soft_cap
        # The masks and the score function (`_program.Program`), None for
        # additive attention; `segments` its `(B, T)` and `(B, S)` int32 ids,
        # `sinks` its `(N,)` float32 sink logits.
        self.program = program
        self.window = None if program is None else program.window
        self.sinks = sinks
        # Training (a backward pass follows) or dropout (each iteration
        # also holds its random block): the forward's query blocks run one
        # at a time, as in the backward pass; in inference side by side.
        self.sequential_forward = bool(training) or dropout is not None
        # Dropout: None or `(rate, key)`, the call's int32 `(2,)` key.
        self.dropout = dropout
        # Causal: query row `r` sits at position `causal_offset + r`.
        self.causal_offset = causal_offset
        self.score_fn = score_fn
        self.score_t_fn = score_t_fn
        self.score_t_vjp = score_t_vjp
        self.is_causal = is_causal
        q_len, k_len = ops.shape(q)[2], ops.shape(k)[2]
        self.q_len, self.k_len = q_len, k_len
        # `k_chunk=None`: one key block of all the keys (whole rows), never
        # padded; inference then takes `_forward_rows`.
        self.whole_rows = k_chunk is None
        if self.whole_rows:
            k_chunk = _at_least_one(k_len)
        self.q_chunk = q_chunk
        self.k_chunk = k_chunk
        self.num_q_blocks = _at_least_one(ceil_div(q_len, q_chunk))
        self.num_k_blocks = _at_least_one(ceil_div(k_len, k_chunk))
        self.padded_q_len = self.num_q_blocks * q_chunk
        self.padded_k_len = self.num_k_blocks * k_chunk
        static_k_len = k.shape[2]
        self.pad_keys = not self.whole_rows and (
            static_k_len is None
            or not isinstance(k_chunk, int)
            or static_k_len == 0
            or static_k_len % k_chunk != 0
        )
        self.batch, self.num_heads = ops.shape(q)[0], q.shape[1]
        self.segments = self.segment_ranges = None
        if segments is not None:
            q_ids, k_ids = segments
            self.segments = (
                _pad_axis(q_ids, 1, self.padded_q_len, -1),
                _pad_axis(k_ids, 1, self.padded_k_len, -2),
            )
            self.segment_ranges = (
                _block_ranges(q_ids, self.num_q_blocks, q_chunk),
                _block_ranges(k_ids, self.num_k_blocks, k_chunk),
            )
        self.q = _pad_axis(q, 2, self.padded_q_len)
        self.k = _pad_axis(k, 2, self.padded_k_len)
        self.v = _pad_axis(v, 2, self.padded_k_len)
        self.mask = None
        if mask is not None:
            # Only full-size axes are padded and sliced; size-1 axes broadcast.
            self.mask_per_query = mask.shape[2] != 1
            self.mask_per_key = mask.shape[3] != 1
            if self.mask_per_query:
                mask = _pad_axis(mask, 2, self.padded_q_len, False)
            if self.mask_per_key:
                mask = _pad_axis(mask, 3, self.padded_k_len, False)
            self.mask = mask

    # -- blocks ---------------------------------------------------------
    def rows_and_cols(self, i, j):
        """The absolute positions of block `(i, j)`'s queries and keys. The
        padding past the last query or key repeats its position, so that
        the user's functions only see real positions (as in Flex); the
        padding is masked, or dropped, anyway."""
        rows = ops.minimum(
            i * self.q_chunk + ops.arange(self.q_chunk, dtype="int32"),
            ops.maximum(self.q_len - 1, 0),
        )
        cols = ops.minimum(
            j * self.k_chunk + ops.arange(self.k_chunk, dtype="int32"),
            ops.maximum(self.k_len - 1, 0),
        )
        return self._row(rows), cols

    def user_mask(self, i, j, transposed=False):
        """`mask_mod` on block `(i, j)`, or None."""
        if self.program is None or self.program.mask_mod is None:
            return None
        rows, cols = self.rows_and_cols(i, j)
        return self.program.user_mask(self.batch, rows, cols, transposed)

    def needed(self, i, j, user=None, segments=True):
        """A boolean scalar, False where no query of block `(i, j)` can
        attend a key of it by its segment ids' ranges (unless not
        `segments`: the forward's loop bounds hold them) or by the block's
        `user` mask (`mask_mod`); None where only the loop bounds decide."""
        needed = None
        if segments and self.segment_ranges is not None:
            (q_low, q_high), (k_low, k_high) = self.segment_ranges
            meet = ops.logical_and(
                ops.take(q_low, i, axis=1) <= ops.take(k_high, j, axis=1),
                ops.take(k_low, j, axis=1) <= ops.take(q_high, i, axis=1),
            )
            needed = ops.any(meet)
        if user is not None:
            anywhere = ops.any(user)
            needed = (
                anywhere
                if needed is None
                else ops.logical_and(needed, anywhere)
            )
        if needed is not None:
            count_block("analysed")
        return needed

    def valid(self, i, j, transposed=False, user=COMPUTE):
        """Boolean validity of block (i, j), broadcastable to `(B, N,
        q_chunk, k_chunk)`, or to `(B, N, k_chunk, q_chunk)` if `transposed`;
        None if all valid. `user`: the block's `mask_mod` mask, when the
        caller has it already."""
        valid = user
        if user is COMPUTE:
            valid = self.user_mask(i, j, transposed)
        if self.mask is not None:
            starts = [0, 0, 0, 0]
            shape = list(ops.shape(self.mask))
            if self.mask_per_query:
                starts[2], shape[2] = i * self.q_chunk, self.q_chunk
            if self.mask_per_key:
                starts[3], shape[3] = j * self.k_chunk, self.k_chunk
            given = ops.slice(self.mask, starts, shape)
            if transposed:
                given = ops.swapaxes(given, -1, -2)
            valid = given if valid is None else valid & given
        row_shape, col_shape = (1, 1, self.q_chunk, 1), (1, 1, 1, self.k_chunk)
        if transposed:
            row_shape, col_shape = (
                (1, 1, 1, self.q_chunk),
                (1, 1, self.k_chunk, 1),
            )
        cols = j * self.k_chunk + ops.arange(self.k_chunk, dtype="int32")
        if self.pad_keys:
            in_range = ops.reshape(cols < self.k_len, col_shape)
            valid = in_range if valid is None else valid & in_range
        if self.segments is not None:
            q_ids = _rows(self.segments[0], i * self.q_chunk, self.q_chunk, 1)
            k_ids = _rows(self.segments[1], j * self.k_chunk, self.k_chunk, 1)
            same = self.program.segment_mask(q_ids, k_ids, transposed)
            valid = same if valid is None else valid & same
        if self.program is not None:
            rows, _ = self.rows_and_cols(i, j)
            static = self.program.static_mask(rows, cols, transposed)
        elif self.is_causal:
            first_row = self._row(i * self.q_chunk)
            rows = first_row + ops.arange(self.q_chunk, dtype="int32")
            static = ops.reshape(rows, row_shape) >= ops.reshape(
                cols, col_shape
            )
        else:
            static = None
        if static is not None:
            valid = static if valid is None else valid & static
        return valid

    def key_blocks_for(self, i):
        """The key blocks `[first, end)` query block `i` needs: causal, to
        the diagonal; with a window, those within it."""
        first_row = self._row(i * self.q_chunk)
        last_row = self._row((i + 1) * self.q_chunk - 1)
        first, end = 0, self.num_k_blocks
        if self.window is not None:
            first = ops.maximum(first_row - self.window + 1, 0) // self.k_chunk
            end = ops.minimum(
                end, (last_row + self.window - 1) // self.k_chunk + 1
            )
        if self.is_causal:
            end = ops.minimum(end, last_row // self.k_chunk + 1)
        if self.segment_ranges is not None:
            first, end = self._segment_bounds(i, first, end)
        return first, end

    def _segment_bounds(self, i, first, end):
        """`[first, end)` narrowed to the key blocks from the first to the
        last whose segment id range meets query block `i`'s in some row
        (with sorted ids, as in packed documents, exactly those that
        meet). Bounds, not a `cond` per block: every export format takes a
        loop with bounds."""
        (q_low, q_high), (k_low, k_high) = self.segment_ranges
        low = ops.expand_dims(ops.take(q_low, i, axis=1), 1)
        high = ops.expand_dims(ops.take(q_high, i, axis=1), 1)
        meet = ops.any(ops.logical_and(low <= k_high, k_low <= high), axis=0)
        blocks = ops.arange(self.num_k_blocks, dtype="int32")
        meet_first = ops.min(ops.where(meet, blocks, self.num_k_blocks))
        meet_end = ops.max(ops.where(meet, blocks + 1, 0))
        return ops.maximum(first, meet_first), ops.minimum(end, meet_end)

    def outside(self, i, j):
        """Whether block `(i, j)` lies outside the causal diagonal or the
        window (a boolean scalar), or None where neither applies."""
        if not self.is_causal and self.window is None:
            return None
        first, end = self.key_blocks_for(i)
        return ops.logical_or(j < first, j >= end)

    def _row(self, r):
        """The causal position of query row `r`."""
        if isinstance(self.causal_offset, int) and self.causal_offset == 0:
            return r
        return r + ops.cast(self.causal_offset, "int32")

    def dropped(self, weights, i, j, transposed=False):
        """`weights` with block `(i, j)`'s dropped weights zeroed, not yet
        scaled (the callers scale a smaller operand by `keep_scale`)."""
        rate, key = self.dropout
        shape = ops.shape(weights)
        if transposed:
            shape = (shape[0], shape[1], shape[3], shape[2])
        keep = keep_mask(key, i, j, shape, rate, transposed)
        return ops.where(keep, weights, 0.0)

    def modded(self, logits, i, j, transposed=False):
        """`score_mod` on block `(i, j)`'s logits; `-inf` it returns is
        masked through `finite`."""
        if self.program is None or self.program.score_mod is None:
            return logits
        rows, cols = self.rows_and_cols(i, j)
        return self.program.score(logits, self.batch, rows, cols, transposed)

    def finite(self, logits, valid):
        """`valid` AND NOT `logits <= MASKED` under a `score_mod`, which may
        return `-inf` (NaN stays, as in the dense kernel)."""
        if self.program is None or self.program.score_mod is None:
            return valid
        finite = ops.logical_not(logits <= MASKED)
        return finite if valid is None else valid & finite

    def sink_rows(self, row_shape):
        """The sinks broadcast to `row_shape` `(B, N, rows)`."""
        return ops.broadcast_to(ops.reshape(self.sinks, (1, -1, 1)), row_shape)

    def capped(self, logits):
        """Logit soft-capping, `cap * tanh(logits / cap)` (none without a
        cap)."""
        if self.soft_cap is None:
            return logits
        return self.soft_cap * ops.tanh(logits / self.soft_cap)

    # -- forward ----------------------------------------------------------
    def forward(self):
        """`(out, lse)`, the output and each row's log-sum-exp (None from
        `_forward_rows` on some backends)."""
        if self.whole_rows and not self.sequential_forward:
            return self._forward_rows()
        return self.forward_online()

    def _forward_rows(self):
        """Inference over whole rows: each query block against all the keys
        at once, its weights from one fused softmax, then one matmul, as in
        the dense kernel, one block at a time. No running maximum. The
        log-sum-exp a gradient needs is `max(s) - log(max(p))` (the largest
        weight is `1 / sum(exp(s - max(s)))`): two reductions more, kept
        only where compiled code drops them when no gradient reads them
        (otherwise None, and a gradient recomputes it)."""
        keep_lse = _backend.drops_unread_results()

        def query_block(i):
            q_block = _rows(self.q, i * self.q_chunk, self.q_chunk)
            modded = self.modded(self.score_fn(q_block, self.k), i, 0)
            valid = self.finite(modded, self.valid(i, 0))
            logits = self.capped(modded)
            if self.sinks is not None:
                return self._rows_with_sinks(logits, valid, keep_lse)
            if not keep_lse:
                return ops.matmul(masked_softmax(logits, valid), self.v)
            if valid is not None:
                logits = ops.where(valid, logits, MASKED)
            weights = ops.softmax(logits, axis=-1)
            row_max = ops.max(logits, axis=-1, initial=NEG_INF)
            max_weight = ops.max(weights, axis=-1, initial=0.0)
            if valid is not None:
                weights = ops.where(valid, weights, 0.0)
                # A row with no valid key: zero output, log-sum-exp 0.
                max_weight = ops.where(row_max > MASKED / 2, max_weight, 1.0)
                row_max = ops.where(row_max > MASKED / 2, row_max, 0.0)
            lse = row_max - ops.log(max_weight)
            return ops.matmul(weights, self.v), lse

        first_q_block = _rows(self.q, 0, self.q_chunk)
        out_template = ops.zeros(
            tuple(ops.shape(first_q_block)[:-1]) + (self.v.shape[-1],)
        )
        if not keep_lse:
            outs = _map_blocks(
                query_block, self.num_q_blocks, out_template, True
            )
            return self._unblock(outs), None
        templates = (out_template, ops.zeros(ops.shape(first_q_block)[:-1]))
        outs, lses = _map_blocks(
            query_block, self.num_q_blocks, templates, True
        )
        return self._unblock(outs), ops.squeeze(
            self._unblock(ops.expand_dims(lses, -1)), -1
        )

    def _rows_with_sinks(self, logits, valid, keep_lse):
        """A whole-row block's output (and log-sum-exp) with the sinks in
        the denominators."""
        exps, denom, top = sink_softmax_terms(
            logits, valid, ops.reshape(self.sinks, (1, -1, 1, 1))
        )
        out = ops.matmul(exps / denom, self.v)
        if not keep_lse:
            return out
        return out, ops.squeeze(top + ops.log(denom), -1)

    def forward_online(self):
        """The online softmax over key blocks: `(out, lse)`."""

        def query_block(i):
            q_block = _rows(self.q, i * self.q_chunk, self.q_chunk)
            row_shape = ops.shape(q_block)[:-1]
            init = (
                ops.full(row_shape, NEG_INF, "float32"),
                ops.zeros(row_shape, "float32"),
                ops.zeros(tuple(row_shape) + (self.v.shape[-1],), "float32"),
            )
            if self.sinks is not None:
                # The sink opens every row: its logit, exp(0) = 1.
                init = (self.sink_rows(row_shape), ops.ones(row_shape)) + init[
                    2:
                ]

            def body(j, carry):
                user = self.user_mask(i, j)
                needed = self.needed(i, j, user, segments=False)
                if needed is None:
                    return step(j, carry, user)
                if user is None:
                    run = lambda: step(j, carry, user)  # noqa: E731
                else:
                    # A block that `mask_mod` fully allows needs no mask.
                    run = lambda: ops.cond(  # noqa: E731
                        ops.all(user),
                        lambda: step(j, carry, None),
                        lambda: step(j, carry, user),
                    )
                return ops.cond(needed, run, lambda: carry)

            def step(j, carry, user):
                count_block("forward")
                running_max, denom, weighted_sum = carry
                k_block = _rows(self.k, j * self.k_chunk, self.k_chunk)
                v_block = _rows(self.v, j * self.k_chunk, self.k_chunk)
                modded = self.modded(self.score_fn(q_block, k_block), i, j)
                valid = self.finite(modded, self.valid(i, j, user=user))
                logits = self.capped(modded)
                if valid is not None:
                    logits = ops.where(valid, logits, MASKED)
                # The block's softmax (the backend's fused kernel) and its
                # sum exp(logits - block_max) = 1 / max(weights): the largest
                # weight is exp(0) / sum. `running_max` is a logit, so the
                # rescaling exponents `running_max - new_max` and
                # `block_max - new_max` are exact differences of logits, also
                # near 1e4.
                # `initial`: no eager "max of an empty tensor" check (and
                # no host sync) when the batch is empty.
                weights = ops.softmax(logits, axis=-1)
                block_max = ops.max(logits, axis=-1, initial=NEG_INF)
                block_sum = 1.0 / ops.max(weights, axis=-1, initial=0.0)
                if valid is not None:
                    # A row with no valid key in this block contributes 0.
                    block_max = ops.where(
                        block_max > MASKED / 2, block_max, NEG_INF
                    )
                new_max = ops.maximum(running_max, block_max)
                # A finite shift: MASKED where no key was valid yet (then
                # alpha = beta = 0). Not `where(isfinite(...))`: tf2onnx
                # turns that into NaN for -inf.
                finite_max = ops.maximum(new_max, MASKED)
                alpha = ops.exp(running_max - finite_max)
                beta = ops.exp(block_max - finite_max) * block_sum
                denom = alpha * denom + beta
                if self.dropout is None:
                    block_values = ops.matmul(weights, v_block)
                else:
                    # The denominators stay those of the undropped weights;
                    # the 1 / P(keep) scale goes on the (rows, dim) product.
                    block_values = ops.matmul(
                        self.dropped(weights, i, j), v_block
                    )
                    block_values = block_values * keep_scale(self.dropout[0])
                weighted_sum = (
                    ops.expand_dims(alpha, -1) * weighted_sum
                    + ops.expand_dims(beta, -1) * block_values
                )
                return new_max, denom, weighted_sum

            running_max, denom, weighted_sum = ops.fori_loop(
                *self.key_blocks_for(i), body, init
            )
            nonempty = denom > 0.0
            safe = ops.where(nonempty, denom, 1.0)
            out = weighted_sum / ops.expand_dims(safe, -1)
            lse = ops.where(nonempty, running_max + ops.log(safe), 0.0)
            return out, lse

        first_q_block = _rows(self.q, 0, self.q_chunk)
        templates = (
            ops.zeros(
                tuple(ops.shape(first_q_block)[:-1]) + (self.v.shape[-1],)
            ),
            ops.zeros(ops.shape(first_q_block)[:-1]),
        )
        outs, lses = _map_blocks(
            query_block, self.num_q_blocks, templates, self.sequential_forward
        )
        out = self._unblock(outs)
        lse = ops.squeeze(self._unblock(ops.expand_dims(lses, -1)), -1)
        return out, lse

    def _unblock(self, blocks):
        """(n, B, N, c, D) -> (B, N, T, D)."""
        x = ops.transpose(blocks, (1, 2, 0, 3, 4))
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], self.padded_q_len, shape[4]))
        return _rows(x, 0, self.q_len)

    # -- backward ---------------------------------------------------------
    def backward(self, out, lse, d_out, params, variables=()):
        """Gradients w.r.t. q, k, v, the score parameters `params` (those of
        the score function, then those of `score_mod`), the sinks if any,
        and the `variables` that `score_mod` reads (TensorFlow)."""
        row_delta = ops.sum(d_out * out, axis=-1)
        d_sinks = None
        if self.sinks is not None:
            # d/d sink of row r: -p_sink(r) * delta(r), p_sink = exp(s - lse).
            sink_weights = ops.exp(ops.reshape(self.sinks, (1, -1, 1)) - lse)
            d_sinks = -ops.sum(sink_weights * row_delta, axis=(0, 2))
        delta = _pad_axis(ops.expand_dims(row_delta, -1), 2, self.padded_q_len)
        lse = _pad_axis(lse[..., None], 2, self.padded_q_len)
        d_out = _pad_axis(d_out, 2, self.padded_q_len)
        q_blocks = self._block(self.q, self.num_q_blocks, self.q_chunk)
        dq_zero = ops.zeros_like(q_blocks)
        dk_zero = ops.zeros_like(
            self._block(self.k, self.num_k_blocks, self.k_chunk)
        )
        dv_zero = ops.zeros_like(
            self._block(self.v, self.num_k_blocks, self.k_chunk)
        )
        d_params_zero = tuple(ops.zeros_like(p) for p in params) + tuple(
            ops.zeros(v.shape, "float32") for v in variables
        )

        def key_block(j, carry):
            dq_acc, dk_acc, dv_acc = carry[:3]
            d_params_acc = carry[3:]
            k_block = _rows(self.k, j * self.k_chunk, self.k_chunk)
            v_block = _rows(self.v, j * self.k_chunk, self.k_chunk)

            def compute(i, user_t):
                count_block("backward")
                q_block = _rows(self.q, i * self.q_chunk, self.q_chunk)
                d_out_block = _rows(d_out, i * self.q_chunk, self.q_chunk)
                lse_block = _rows(lse, i * self.q_chunk, self.q_chunk)
                delta_block = _rows(delta, i * self.q_chunk, self.q_chunk)
                # The block transposed, (B, N, k_chunk, q_chunk): the
                # gradients of the keys and values are then plain (not
                # transposed) matmuls.
                # `s - lse` and `dP - delta` come out of the matmuls, with
                # one extra column: [k, 1] . [q, -lse] and [v, 1] . [dO, -D].
                raw_t = modded_t = None
                if self.soft_cap is None and not self._score_modded():
                    logits_t = self.score_t_fn(k_block, q_block, -lse_block)
                else:
                    raw_t = self.score_t_fn(k_block, q_block, None)
                    modded_t = self.modded(raw_t, i, j, transposed=True)
                    logits_t = modded_t
                    if self.soft_cap is not None:
                        # cap * tanh(s / cap): d/ds = 1 - tanh^2.
                        tanh = ops.tanh(modded_t / self.soft_cap)
                        logits_t = self.soft_cap * tanh
                    logits_t = logits_t - ops.swapaxes(lse_block, -1, -2)
                valid = self.valid(i, j, transposed=True, user=user_t)
                if modded_t is not None:
                    valid = self.finite(modded_t, valid)
                if valid is not None:
                    logits_t = ops.where(valid, logits_t, NEG_INF)
                weights_t = ops.exp(logits_t)
                if self.dropout is None:
                    dv = ops.matmul(weights_t, d_out_block)
                    d_logits_t = weights_t * _matmul_t_shifted(
                        v_block, d_out_block, -delta_block
                    )
                else:
                    # out = c M.P v, with M the keep mask and c = 1 / P(keep):
                    # dv = (M.P)^T (c dO), and dS = P * (c M.dP - delta) =
                    # (M.P) * (v . c dO) - P * delta, with delta = rowsum(dO
                    # * out) as without dropout. c scales the small dO.
                    dropped_t = self.dropped(weights_t, i, j, transposed=True)
                    d_out_scaled = d_out_block * keep_scale(self.dropout[0])
                    dv = ops.matmul(dropped_t, d_out_scaled)
                    d_logits_t = dropped_t * _matmul_t_shifted(
                        v_block, d_out_scaled, None
                    ) - weights_t * ops.swapaxes(delta_block, -1, -2)
                if self.soft_cap is not None:
                    d_logits_t = d_logits_t * (1.0 - ops.square(tanh))
                d_mod = []
                if self._score_modded():
                    rows, cols = self.rows_and_cols(i, j)
                    d_logits_t, *d_mod = self.program.score_vjp(
                        raw_t,
                        self.batch,
                        rows,
                        cols,
                        d_logits_t,
                        True,
                        variables,
                    )
                dq, dk, *d_params = self.score_t_vjp(
                    q_block, k_block, d_logits_t
                )
                return (dq, dk, dv, *d_params, *d_mod)

            def query_block(i):
                user_t = self.user_mask(i, j, transposed=True)
                run = self.outside(i, j)
                if run is not None:
                    run = ops.logical_not(run)
                needed = self.needed(i, j, user_t)
                if needed is not None:
                    run = needed if run is None else run & needed

                def work():
                    if user_t is None:
                        return compute(i, None)
                    # A block that `mask_mod` fully allows needs no mask.
                    return ops.cond(
                        ops.all(user_t),
                        lambda: compute(i, None),
                        lambda: compute(i, user_t),
                    )

                if run is None:
                    return work()

                def skip():
                    return (
                        ops.zeros_like(q_blocks[0]),
                        ops.zeros_like(dk_zero[0]),
                        ops.zeros_like(dv_zero[0]),
                        *d_params_zero,
                    )

                return ops.cond(run, work, skip)

            templates = (
                ops.zeros_like(q_blocks[0]),
                ops.zeros_like(dk_zero[0]),
                ops.zeros_like(dv_zero[0]),
                *d_params_zero,
            )
            grads = _scan_blocks(query_block, self.num_q_blocks, templates)
            dq_parts, dk_parts, dv_parts = grads[:3]
            selected = ops.reshape(
                ops.arange(self.num_k_blocks, dtype="int32") == j,
                (-1, 1, 1, 1, 1),
            )
            dk_acc = ops.where(
                selected, ops.sum(dk_parts, axis=0)[None], dk_acc
            )
            dv_acc = ops.where(
                selected, ops.sum(dv_parts, axis=0)[None], dv_acc
            )
            d_params_acc = tuple(
                a + ops.sum(g, axis=0) for a, g in zip(d_params_acc, grads[3:])
            )
            return (dq_acc + dq_parts, dk_acc, dv_acc, *d_params_acc)

        result = ops.fori_loop(
            0,
            self.num_k_blocks,
            key_block,
            (dq_zero, dk_zero, dv_zero, *d_params_zero),
        )
        dq = self._unblock(result[0])
        dk = _rows(self._unblock_keys(result[1]), 0, self.k_len)
        dv = _rows(self._unblock_keys(result[2]), 0, self.k_len)
        d_params = result[3 : 3 + len(params)]
        d_variables = result[3 + len(params) :]
        sinks = () if d_sinks is None else (d_sinks,)
        return (dq, dk, dv, *d_params, *sinks), d_variables

    def _score_modded(self):
        return self.program is not None and self.program.score_mod is not None

    def _block(self, x, n, size):
        """(B, N, n * size, D) -> (n, B, N, size, D)."""
        shape = ops.shape(x)
        x = ops.reshape(x, (shape[0], shape[1], n, size, shape[3]))
        return ops.transpose(x, (2, 0, 1, 3, 4))

    def _unblock_keys(self, blocks):
        x = ops.transpose(blocks, (1, 2, 0, 3, 4))
        shape = ops.shape(x)
        return ops.reshape(x, (shape[0], shape[1], self.padded_k_len, shape[4]))


def _attend(make_engine, args, context, backward_chunks=None, num_sinks=0):
    """The engine's output, with a custom gradient over `args` (`q, k, v`,
    then the score parameters) that recomputes it blockwise.

    `make_engine(args, context, chunks=None)`: `chunks` overrides the
    engine's `(q_chunk, k_chunk)`. The engine's gradients are those of
    `args` after `q, k, v`, in order (`num_sinks`: the last of them are
    the sinks, whose gradient the engine computes apart). The gradient of
    a whole-row forward runs on `backward_chunks`: a key block of all the
    keys would make each query block's key gradients as long as the keys.

    `context` holds the engine's other inputs (mask, causal offset, dropout
    key). Its tensors go in as extra inputs without gradients rather than
    being closed over: a closed-over tracer breaks `jax.grad` of a jitted
    call.
    """
    names = [
        name
        for name, x in context.items()
        if x is not None and not isinstance(x, (bool, int, float, tuple))
    ]
    fixed = {name: x for name, x in context.items() if name not in names}
    num_args = len(args)

    @ops.custom_gradient
    def attend(*inputs):
        def engine(chunks=None):
            context_inputs = dict(zip(names, inputs[num_args:]))
            return make_engine(
                inputs[:num_args], {**fixed, **context_inputs}, chunks=chunks
            )

        forward = engine()
        out, lse = forward.forward()

        def grad(*upstreams, upstream=None, variables=None):
            # `variables`: TensorFlow's, those `score_mod` reads.
            if upstream is None:
                (upstream,) = upstreams
            backward = (
                engine(backward_chunks) if forward.whole_rows else forward
            )
            lse_for_grad = lse
            if lse_for_grad is None:  # not kept by the forward: recompute
                lse_for_grad = backward.forward_online()[1]
            grads, d_variables = backward.backward(
                out,
                lse_for_grad,
                upstream,
                inputs[3 : num_args - num_sinks],
                variables or (),
            )
            grads = (*grads, *([None] * len(names)))
            if variables:
                return grads, list(d_variables)
            return grads

        return out, grad

    return attend(*args, *(context[name] for name in names))


def _dot_score(q_block, k_block):
    return ops.matmul(q_block, ops.swapaxes(k_block, -1, -2))


def _matmul_t_shifted(a, b, shift):
    """`a @ b^T + shift^T` as one matmul: `[a, 1] @ [b, shift]^T`.

    `shift=None`: `a @ b^T`.
    """
    if shift is None:
        return ops.matmul(a, ops.swapaxes(b, -1, -2))
    a = ops.concatenate([a, ops.ones_like(a[..., :1])], axis=-1)
    b = ops.concatenate([b, shift], axis=-1)
    return ops.matmul(a, ops.swapaxes(b, -1, -2))


def _dot_score_t(k_block, q_block, shift):
    """`(q . k - lse)^T`: the transposed block, shifted per query."""
    return _matmul_t_shifted(k_block, q_block, shift)


def _dot_score_t_vjp(q_block, k_block, d_logits_t):
    dq = ops.matmul(ops.swapaxes(d_logits_t, -1, -2), k_block)
    return dq, ops.matmul(d_logits_t, q_block)


def chunked_dot_product_attention(
    q,
    k,
    v,
    mask,
    is_causal,
    q_chunk,
    k_chunk,
    soft_cap=None,
    causal_offset=0,
    dropout=None,
    training=False,
    backward_chunks=None,
    program=None,
    segments=None,
    sinks=None,
):
    """Exact softmax attention on head-major float32 tensors.

    `q (B, N, T, D)` must already be scaled; `k (B, N, S, D)`, `v (B, N, S,
    Dv)`; `mask` is None or boolean `(B|1, N|1, T|1, S|1)`; `soft_cap` is
    None or a positive float (logits become `cap * tanh(logits / cap)`);
    `causal_offset` the position of query row 0 in causal attention;
    `dropout` None or `(rate, key)` (see `keep_mask`); `training` whether a
    backward pass follows (the forward then holds one block at a time).
    `k_chunk=None`: one key block of all the keys; without training or
    dropout, each query block is then one softmax over whole rows (see
    `_Engine._forward_rows`), and a gradient runs on `backward_chunks`
    `(q_chunk, k_chunk)`. `program`: a `_program.Program` (its causality
    replaces `is_causal`), whose `score_mod` and `mask_mod` are `(fn,
    params)` from `_backend.hoist_mod`; `segments` None or `(B, T)` and
    `(B, S)` int32 ids; `sinks` None or `(N,)` float32 logits. Returns the
    float32 output `(B, N, T, Dv)`; its gradient is recomputed blockwise.
    """
    if program is None:
        program = _program.Program(q.shape[1], is_causal)
    score_params = [] if program.score_mod is None else program.score_mod[1]
    mask_params = [] if program.mask_mod is None else program.mask_mod[1]
    num_score = len(score_params)
    sink_args = () if sinks is None else (sinks,)

    def make_engine(args, context, chunks=None):
        q, k, v = args[:3]
        block_program = program.with_params(
            args[3 : 3 + num_score],
            [context[f"mask_param_{n}"] for n in range(len(mask_params))],
        )
        segments = None
        if context["q_segments"] is not None:
            segments = (context["q_segments"], context["k_segments"])
        return _Engine(
            q,
            k,
            v,
            context["mask"],
            program.is_causal,
            *(chunks or (q_chunk, k_chunk)),
            _dot_score,
            _dot_score_t,
            _dot_score_t_vjp,
            soft_cap=soft_cap,
            causal_offset=context["causal_offset"],
            dropout=_with_key(dropout, context["dropout_key"]),
            training=training,
            program=block_program,
            segments=segments,
            sinks=args[3 + num_score] if sink_args else None,
        )

    context = dict(
        mask=mask,
        causal_offset=causal_offset,
        dropout_key=_key(dropout),
        q_segments=None if segments is None else segments[0],
        k_segments=None if segments is None else segments[1],
        **{f"mask_param_{n}": p for n, p in enumerate(mask_params)},
    )
    return _attend(
        make_engine,
        (q, k, v, *score_params, *sink_args),
        context,
        backward_chunks,
        num_sinks=len(sink_args),
    )


def _key(dropout):
    return None if dropout is None else dropout[1]


def _with_key(dropout, key):
    return None if dropout is None else (dropout[0], key)


def chunked_additive_attention(
    q,
    k,
    v,
    attention_v,
    attention_b,
    mask,
    is_causal,
    q_chunk,
    k_chunk,
    dropout=None,
    training=False,
):
    """Additive attention on `q (B, 1, T, U)`, `k (B, 1, S, U)`, `v (B, 1, S,
    Dv)` (float32), scoring `attention_v . tanh(q + k + attention_b)`.

    Never holds more than a `(B, q_chunk, k_chunk, U)` block; gradients
    (including those of `attention_v` and `attention_b`) are recomputed
    blockwise.
    """

    def make_engine(args, context, chunks=None):
        q, k, v, attention_v, attention_b = args
        mask, dropout_key = context["mask"], context["dropout_key"]

        def hidden(rows, cols):
            """tanh(rows_i + cols_j + b): `(B, 1, len(rows), len(cols), U)`."""
            # `expand_dims`, not `x[:, :, None]`: LiteRT's builtin strided
            # slice takes no new axis inside a loop.
            return ops.tanh(
                ops.expand_dims(rows, 3)
                + ops.expand_dims(cols, 2)
                + attention_b
            )

        def score(q_block, k_block):
            return ops.einsum(
                "bnqku,u->bnqk", hidden(q_block, k_block), attention_v
            )

        def score_t(k_block, q_block, shift):
            scores = ops.einsum(
                "bnkqu,u->bnkq", hidden(k_block, q_block), attention_v
            )
            return scores + ops.swapaxes(shift, -1, -2)

        def score_t_vjp(q_block, k_block, d_logits_t):
            hidden_t = hidden(k_block, q_block)
            d_hidden = (
                d_logits_t[..., None]
                * attention_v
                * (1.0 - ops.square(hidden_t))
            )
            d_attention_v = ops.einsum("bnkq,bnkqu->u", d_logits_t, hidden_t)
            dq = ops.sum(d_hidden, axis=2)
            # The bias gradient sums d_hidden over everything: reuse dq.
            return (
                dq,
                ops.sum(d_hidden, axis=3),
                d_attention_v,
                ops.sum(dq, (0, 1, 2)),
            )

        return _Engine(
            q,
            k,
            v,
            mask,
            is_causal,
            *(chunks or (q_chunk, k_chunk)),
            score,
            score_t,
            score_t_vjp,
            dropout=_with_key(dropout, dropout_key),
            training=training,
        )

    context = dict(mask=mask, dropout_key=_key(dropout))
    return _attend(make_engine, (q, k, v, attention_v, attention_b), context)
