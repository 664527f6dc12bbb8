import math
import numbers
import string

import keras
from keras import ops

from keras_attention import _masking
from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers import _kernel_layout
from keras_attention.layers import _kv_cache
from keras_attention.layers import _programmable
from keras_attention.layers.rotary_embedding import apply_rotary
from keras_attention.layers.rotary_embedding import rotary_positions
from keras_attention.ops.attention import scaled_dot_product_attention


def _proj_equation(free_dims, bound_dims, output_dims):
    """Einsum equation of a projection, as Keras' MultiHeadAttention builds.

    Returns `(equation, bias_axes, output_rank)`.
    """
    letters = string.ascii_lowercase
    free = letters[:free_dims]
    bound = letters[free_dims : free_dims + bound_dims]
    out = letters[free_dims + bound_dims : free_dims + bound_dims + output_dims]
    equation = f"{free}{bound},{bound}{out}->{free}{out}"
    return equation, out, free_dims + output_dims


def _output_shape(output_rank, known_last_dims):
    return [None] * (output_rank - len(known_last_dims)) + list(known_last_dims)


@keras.saving.register_keras_serializable(package="keras_attention")
class MultiHeadAttention(_common.ValidatedLayer):
    """Multi-head scaled dot-product attention, a drop-in for Keras core's.

    The constructor and call arguments (in Keras' order), the weights
    (names, shapes and order, `use_gate` included) and the override point
    `_compute_attention` of `keras.layers.MultiHeadAttention`, so
    `layer.set_weights(keras_layer.get_weights())` carries a Keras layer over
    with the same outputs. `query`, `key` and `value` are projected to
    `num_heads` heads, attended with
    `keras_attention.ops.scaled_dot_product_attention` and projected back.

    What it adds over Keras core: `chunk_size` (memory-efficient exact
    attention), `attention_bias`, `logits_soft_cap`, `num_key_value_heads`
    (grouped-query attention), the logits and softmax in float32 on every
    path, zeros for fully masked query rows, the query's Keras mask on the
    output, correct symbolic score shapes in cross-attention, and
    `ValueError`s naming the argument for masks that don't broadcast.
    `flash_attention=False` always means our kernels (Keras turns it back
    into "auto" while the global switch is unset). The rules for masks,
    fully masked rows, `chunk_size`, `flash_attention` and soft-capping are
    those of `keras_attention.ops.scaled_dot_product_attention`. The
    query, value and key masks (from the inputs' Keras masks),
    `attention_mask`, `use_causal_mask`, `sliding_window`, the segment ids
    and `mask_mod` combine with a logical AND, as in Keras core.

    `score_mod`, `mask_mod`, segment ids and sinks run in the op (its
    rules), with no `(T, S)` mask built; `q_idx` counts from
    `cache_update_index`, so a `mask_mod` decodes step by step as on the
    whole sequence. Functions are saved by registered name: a lambda or an
    unregistered one makes `get_config` raise a `ValueError` (Keras stores
    a lambda's bytecode, which breaks across Python versions and needs
    `safe_mode=False`).

    Args:
        num_heads: int, number of attention heads.
        key_dim: int, size of each head for query and key.
        value_dim: int, size of each head for value. Defaults to `key_dim`.
        dropout: float in `[0, 1)`, dropout rate on the attention weights.
        use_bias: bool, whether the projections use bias vectors.
        output_shape: int or tuple, the output's shape besides the batch and
            attention dims. Defaults to the query's last dimension.
        attention_axes: int or tuple of ints, the axes attention runs over.
            `None`: all axes but the batch and feature axes.
        sliding_window: optional positive int: each query attends keys
            within `sliding_window - 1` positions of itself, `|i - j| <
            sliding_window` (Keras' symmetric band; the op's
            `sliding_window`). keras-hub's gpt-oss attends `kv_idx >= q_idx
            - w` with causal masking, one key more: port it as
            `sliding_window=w + 1`.
        flash_attention: `None`, `True` or `False`; see the op.
        kernel_initializer, bias_initializer, kernel_regularizer,
        bias_regularizer, activity_regularizer, kernel_constraint,
        bias_constraint: for the projections, as in Keras.
        use_gate: bool, gated attention (Qiu et al. 2025): the attention
            output is multiplied by `sigmoid(W_g query)`, per head and
            channel, before the output projection.
        seed: optional int, seed for the attention dropout.
        num_key_value_heads: optional int dividing `num_heads`: key/value
            heads, each shared by `num_heads // num_key_value_heads` query
            heads.
        chunk_size: `"auto"`, `None` or a positive int; see the op.
        logits_soft_cap: optional positive float; see the op.
        rope_max_wavelength: optional positive float. When set, the
            projected queries and keys are rotated per head by rotary
            position embeddings (`keras_attention.RotaryEmbedding`'s
            numerics), at positions that start at `cache_update_index`
            (0 without one). `None` (default): no rotation. Needs an even
            `key_dim`.
        rope_scaling_factor: positive float, the positions are divided by
            it (linear RoPE scaling). Default 1.
        score_mod: optional function `(score, b, h, q_idx, kv_idx) ->
            score` on the float32 logits, or the registered name of one
            (see above). Needs rank-3 inputs.
        mask_mod: optional function `(b, h, q_idx, kv_idx) -> bool`, True
            to attend, or the registered name of one; as `score_mod`.
        use_attention_sinks: bool, a learned logit per head (weight
            `sinks`, zeros at first) joins each row's softmax denominator.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Key/value cache (autoregressive decoding), with keras-hub's
    `CachedMultiHeadAttention` conventions, so code that passes them by
    keyword runs unchanged: `cache` is `(batch_size, 2, max_length,
    num_key_value_heads, cache_dim)`, keys at index 0 and values at index
    1, `cache_dim = max(key_dim, value_dim)` (the shorter one is stored
    zero-padded). With `cache_update_index`, the projected (and rotated)
    key/value of the inputs are written into the cache from that index and
    the queries attend the whole updated cache; without it, the cache is
    read as it is (cross-attention) and the inputs' `key`/`value` are
    ignored. The call then returns the new cache too. With a cache,
    `use_causal_mask=True` and `sliding_window` place query `i` at position
    `cache_update_index + i`, so no mask is built by hand; with
    `use_causal_mask=False` every slot is attended unless `attention_mask`
    (`(batch_size, target_length, max_length)`) or `value_mask`/`key_mask`
    say otherwise, as in keras-hub. Those cover the slots, `(batch_size,
    max_length)`, or only the keys being written, `(batch_size,
    new_length)` (e.g. the inputs' Keras mask). A cache needs rank-3
    inputs (one attention axis). Writes are scatters, which export to plain
    TensorFlow ops.

    Call arguments:
        query: `(batch_size, target_length, dim)`.
        value: `(batch_size, source_length, dim)`.
        key: optional `(batch_size, source_length, dim)`; defaults to
            `value`.
        query_mask, value_mask, key_mask: optional `(batch_size, length)`
            padding masks; Keras fills them from the inputs' masks.
        attention_mask: optional boolean `(batch_size, target_length,
            source_length)` mask, True means attend.
        return_attention_scores: bool, whether to also return the weights.
        training: bool, whether dropout is active.
        use_causal_mask: bool, query `i` attends only keys `j <= i`.
        attention_bias: optional float tensor added to the logits,
            broadcastable to `(batch_size, num_heads, target_length,
            source_length)` (ALiBi, relative positions).
        cache: optional key/value cache, see above.
        cache_update_index: optional int or 0-d integer tensor, where the
            inputs' keys and values are written into `cache`. A known index
            must leave room for them.
        query_segment_ids, key_segment_ids: optional integer `(batch_size,
            target_length)` and `(batch_size, source_length)`: a query
            attends the keys of its segment (packed sequences). With a
            cache, `key_segment_ids` covers the cache's slots,
            `(batch_size, max_length)`, as its padding masks may.

    Returns:
        attention_output: `(batch_size, target_length, E)`, `E` the query's
            last dimension or `output_shape`.
        attention_scores: if `return_attention_scores`, `(batch_size,
            num_heads, target_length, source_length)` (`max_length` with a
            cache).
        cache: with a cache, the updated cache, returned last.

    Example:

    >>> import numpy as np
    >>> layer = MultiHeadAttention(num_heads=2, key_dim=4)
    >>> query = np.random.rand(3, 8, 16).astype("float32")
    >>> value = np.random.rand(3, 5, 16).astype("float32")
    >>> output, scores = layer(query, value, return_attention_scores=True)
    >>> tuple(output.shape), tuple(scores.shape)
    ((3, 8, 16), (3, 2, 8, 5))

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762).
    """

    def __init__(
        self,
        num_heads,
        key_dim,
        value_dim=None,
        dropout=0.0,
        use_bias=True,
        output_shape=None,
        attention_axes=None,
        sliding_window=None,
        flash_attention=None,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        use_gate=False,
        seed=None,
        num_key_value_heads=None,
        chunk_size="auto",
        logits_soft_cap=None,
        rope_max_wavelength=None,
        rope_scaling_factor=1.0,
        score_mod=None,
        mask_mod=None,
        use_attention_sinks=False,
        **kwargs,
    ):
        _validation.check_positive_int("num_heads", num_heads)
        _validation.check_positive_int("key_dim", key_dim)
        _validation.check_positive_int("value_dim", value_dim, allow_none=True)
        _validation.check_key_value_heads(num_heads, num_key_value_heads)
        _validation.check_rate("dropout", dropout)
        _validation.check_chunk_size(chunk_size)
        _validation.check_bool("use_bias", use_bias)
        _validation.check_bool("use_gate", use_gate)
        _validation.check_bool("use_attention_sinks", use_attention_sinks)
        score_mod = _programmable.get_mod("score_mod", score_mod)
        mask_mod = _programmable.get_mod("mask_mod", mask_mod)
        _validation.check_positive_number(
            "logits_soft_cap", logits_soft_cap, allow_none=True
        )
        _validation.check_rope(
            rope_max_wavelength, rope_scaling_factor, key_dim
        )
        _common.check_sliding_window(sliding_window)
        _validation.check_flash_attention(flash_attention)
        if flash_attention and dropout > 0.0:
            raise ValueError(
                "Dropout is not supported when flash attention is enabled. "
                f"Received: dropout={dropout}, flash_attention=True"
            )
        _validation.check_seed(seed)
        # Lower bounds of the kernels' sizes: fail before `build`.
        _validation.check_size_product(
            {"num_heads": num_heads, "key_dim": key_dim}
        )
        _validation.check_size_product(
            {
                "num_heads": num_heads,
                "value_dim": value_dim or key_dim,
                "output_shape": self._standardize_output_shape(output_shape)
                or (1,),
            }
        )
        super().__init__(**kwargs)
        self.supports_masking = True
        self.num_heads = int(num_heads)
        self.key_dim = int(key_dim)
        self.value_dim = None if value_dim is None else int(value_dim)
        self.dropout = float(dropout)
        self.use_bias = use_bias
        self.use_gate = use_gate
        self.logits_soft_cap = (
            None if logits_soft_cap is None else float(logits_soft_cap)
        )
        self.rope_max_wavelength = (
            None if rope_max_wavelength is None else float(rope_max_wavelength)
        )
        self.rope_scaling_factor = float(rope_scaling_factor)
        self.partial_output_shape = self._standardize_output_shape(output_shape)
        self.attention_axes = _kernel_layout.standardize_attention_axes(
            attention_axes
        )
        self.sliding_window = sliding_window
        self.flash_attention = flash_attention
        self.num_key_value_heads = num_key_value_heads
        self.chunk_size = chunk_size
        self.score_mod, self.mask_mod = score_mod, mask_mod
        self.use_attention_sinks = use_attention_sinks
        self.sinks = None
        _common.set_keras_objects(self, locals())
        self._activity_regularizer = _validation.get_regularizer(
            "activity_regularizer", activity_regularizer
        )
        self.seed = seed
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if self.dropout > 0 else None
        )

    @staticmethod
    def _standardize_output_shape(output_shape):
        if output_shape is None:
            return None
        if isinstance(output_shape, numbers.Integral) and not isinstance(
            output_shape, bool
        ):
            output_shape = (output_shape,)
        if not isinstance(output_shape, (list, tuple)) or not output_shape:
            raise ValueError(
                f"Invalid `output_shape`: {output_shape!r}. Received an "
                "invalid value for argument `output_shape`, expected a "
                "positive int or a non-empty tuple of positive ints. "
                f"Received: output_shape={output_shape!r}"
            )
        for dim in output_shape:
            _validation.check_positive_int("output_shape", dim)
        return tuple(int(d) for d in output_shape)

    # ------------------------------------------------------------------
    # Shapes
    # ------------------------------------------------------------------
    def _check_shapes(self, query_shape, value_shape, key_shape):
        query_shape = tuple(query_shape)
        value_shape = tuple(value_shape)
        key_shape = value_shape if key_shape is None else tuple(key_shape)
        if len(query_shape) < 3:
            raise ValueError(
                "Argument `query` must have rank >= 3 (batch, <attention "
                f"dims>, features). Received: query.shape={query_shape}"
            )
        for name, shape in (("value", value_shape), ("key", key_shape)):
            if len(shape) != len(query_shape):
                raise ValueError(
                    f"The ranks of `query` and `{name}` must be equal. "
                    f"Received: query.shape={query_shape}, "
                    f"{name}.shape={shape}"
                )
        for a, b in zip(value_shape[:-1], key_shape[:-1]):
            if a is not None and b is not None and a != b:
                raise ValueError(
                    "All dimensions of `value` and `key`, except the last "
                    f"one, must be equal. Received: value.shape={value_shape}"
                    f", key.shape={key_shape}"
                )
        axes = _kernel_layout.normalize_attention_axes(
            self.attention_axes, len(query_shape)
        )
        for i in range(len(query_shape) - 1):
            if i in axes:
                continue
            _validation.check_dims_equal(
                "query",
                query_shape[i],
                "value",
                value_shape[i],
                f"dimension {i} (a batch axis)",
            )
        return query_shape, value_shape, key_shape, axes

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        query_shape, _, _, _ = self._check_shapes(
            query_shape, value_shape, key_shape
        )
        if self.partial_output_shape:
            return query_shape[:-1] + self.partial_output_shape
        return query_shape

    def compute_output_spec(self, *args, **kwargs):
        arguments = _common.call_arguments(
            MultiHeadAttention.call, args, kwargs
        )
        query, value, key = (arguments[n] for n in ("query", "value", "key"))
        cache = arguments["cache"]
        key_shape = None if key is None else key.shape
        query_shape, value_shape, _, axes = self._check_shapes(
            query.shape, value.shape, key_shape
        )
        output = keras.KerasTensor(
            self.compute_output_shape(query.shape, value.shape, key_shape),
            dtype=self.compute_dtype,
        )
        outputs = [output]
        if arguments["return_attention_scores"]:
            if cache is not None:
                value_shape = (value_shape[0], cache.shape[2], None)
            outputs.append(
                keras.KerasTensor(
                    _kernel_layout.KernelLayout(
                        len(query_shape), axes, self.num_heads
                    ).scores_shape(query_shape, value_shape),
                    dtype=self.compute_dtype,
                )
            )
        if cache is not None:
            outputs.append(keras.KerasTensor(cache.shape, dtype=cache.dtype))
        return outputs[0] if len(outputs) == 1 else tuple(outputs)

    # ------------------------------------------------------------------
    # Build
    # ------------------------------------------------------------------
    def _projection(self, rank, heads, head_dim, name, activation=None):
        equation, bias_axes, output_rank = _proj_equation(rank - 1, 1, 2)
        return keras.layers.EinsumDense(
            equation,
            output_shape=_output_shape(output_rank - 1, [heads, head_dim]),
            bias_axes=bias_axes if self.use_bias else None,
            activation=activation,
            name=name,
            **_common.sublayer_kwargs(
                self, activity_regularizer=self._activity_regularizer
            ),
        )

    def build(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape, key_shape, axes = self._check_shapes(
            query_shape, value_shape, key_shape
        )
        self._axes = axes
        rank = len(query_shape)
        self._kernel_layout = _kernel_layout.KernelLayout(
            rank, axes, self.num_heads
        )
        if self.rope_max_wavelength is not None and (
            rank != 3 or len(axes) != 1
        ):
            raise ValueError(
                "Argument `rope_max_wavelength` needs rank-3 inputs (batch, "
                "length, dim) and one attention axis: rotary positions run "
                "along one sequence axis. Received: "
                f"query.shape={tuple(query_shape)}, "
                f"attention_axes={self.attention_axes}"
            )
        _programmable.check_mods_layout(
            self.score_mod, self.mask_mod, query_shape, self.attention_axes
        )
        kv_heads = self.num_key_value_heads or self.num_heads
        value_dim = self.value_dim or self.key_dim
        self._kv_cache = _kv_cache.KVCache(kv_heads, self.key_dim, value_dim)
        out_dims = self.partial_output_shape or (query_shape[-1],)
        # Every kernel's size, before any weight exists.
        q_dim, k_dim, v_dim = (
            shape[-1] or 1 for shape in (query_shape, key_shape, value_shape)
        )
        _validation.check_weight_shapes(
            "MultiHeadAttention",
            {
                "query/kernel": (q_dim, self.num_heads, self.key_dim),
                "key/kernel": (k_dim, kv_heads, self.key_dim),
                "gate/kernel": (q_dim, self.num_heads, value_dim),
                "value/kernel": (v_dim, kv_heads, value_dim),
                "attention_output/kernel": (
                    (self.num_heads, value_dim)
                    + tuple(d or 1 for d in out_dims)
                ),
            },
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "num_key_value_heads": self.num_key_value_heads,
                "output_shape": self.partial_output_shape,
                "query.shape": tuple(query_shape),
                "key.shape": tuple(key_shape),
                "value.shape": tuple(value_shape),
            },
        )
        self._query_dense = self._projection(
            rank, self.num_heads, self.key_dim, "query"
        )
        self._query_dense.build(query_shape)
        self._key_dense = self._projection(rank, kv_heads, self.key_dim, "key")
        self._key_dense.build(key_shape)
        if self.use_gate:
            # Keras' gated attention: sigmoid(W_g q), per head and channel.
            self._gate_dense = self._projection(
                rank, self.num_heads, value_dim, "gate", activation="sigmoid"
            )
            self._gate_dense.build(query_shape)
        self._value_dense = self._projection(rank, kv_heads, value_dim, "value")
        self._value_dense.build(value_shape)
        equation, bias_axes, output_rank = _proj_equation(
            rank - 1, 2, len(out_dims)
        )
        self._output_dense = keras.layers.EinsumDense(
            equation,
            output_shape=_output_shape(output_rank - 1, out_dims),
            bias_axes=bias_axes if self.use_bias else None,
            name="attention_output",
            **_common.sublayer_kwargs(
                self, activity_regularizer=self._activity_regularizer
            ),
        )
        self._output_dense.build(
            tuple(query_shape[:-1]) + (self.num_heads, value_dim)
        )
        self._built_shapes = (query_shape[-1], key_shape[-1], value_shape[-1])
        self.sinks = _programmable.add_sinks(self)

    # The sublayers, under Keras' names.
    query_dense = property(lambda self: self._query_dense)
    key_dense = property(lambda self: self._key_dense)
    value_dense = property(lambda self: self._value_dense)
    output_dense = property(lambda self: self._output_dense)

    @property
    def gate_dense(self):
        return self._gate_dense if self.use_gate else None

    # Keras' private names, which its tests and subclasses read.
    _sliding_window = property(lambda self: self.sliding_window)
    _flash_attention = property(lambda self: self.flash_attention)
    _use_gate = property(lambda self: self.use_gate)

    # ------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------
    def _attention_mask(
        self,
        q_len,
        v_len,
        query_mask,
        value_mask,
        key_mask,
        attention_mask,
        use_causal_mask,
        offset=0,
    ):
        """Combines all masks, in Keras' `(B, T, S)` layout (or None).

        Query `i` sits at position `offset + i` (a cache's update index)."""
        query_mask = _masking.as_bool(query_mask, "query_mask")
        value_mask = _masking.as_bool(value_mask, "value_mask")
        key_mask = _masking.as_bool(key_mask, "key_mask")
        masks = [
            None if query_mask is None else ops.expand_dims(query_mask, -1),
            None if value_mask is None else ops.expand_dims(value_mask, -2),
            None if key_mask is None else ops.expand_dims(key_mask, -2),
        ]
        if use_causal_mask:
            masks.append(_masking.causal_mask(q_len, v_len, offset)[None])
        if self.sliding_window is not None and not self._kernel_window(0):
            window = _masking.sliding_window_mask(
                q_len, v_len, self.sliding_window, offset
            )
            masks.append(window[None])
        masks.append(_masking.as_bool(attention_mask, "attention_mask"))
        return _masking.and_masks(*masks)

    def _check_call_inputs(
        self, query, value, key, masks, attention_bias, cache, segments
    ):
        """`masks`: `(query_mask, value_mask, key_mask, attention_mask)`;
        `segments`: `(query_segment_ids, key_segment_ids)`."""
        query_mask, value_mask, key_mask, attention_mask = masks
        q_dim, k_dim, v_dim = self._built_shapes
        _validation.check_last_dim("query", query.shape, q_dim, "query")
        _validation.check_last_dim("key", key.shape, k_dim, "key")
        _validation.check_last_dim("value", value.shape, v_dim, "value")
        q_shape = tuple(query.shape[:-1])
        kv_shape = tuple(value.shape[:-1])
        value_shape = value.shape
        if cache is not None:
            # The keys are the cache's slots.
            kv_shape = (value.shape[0], cache.shape[2])
            value_shape = kv_shape + (None,)
        _validation.check_mask(
            "query_mask", query_mask, q_shape, "(batch, <query dims>)"
        )
        _validation.check_mask(
            "value_mask", value_mask, kv_shape, "(batch, <value dims>)"
        )
        _validation.check_mask(
            "key_mask", key_mask, kv_shape, "(batch, <key dims>)"
        )
        _programmable.check_segment_ids(*segments, q_shape, kv_shape)
        layout = self._kernel_layout
        scores_shape = layout.scores_shape(query.shape, value_shape)
        n_inner = 2 * len(layout.axes)
        for name, operand in (
            ("attention_mask", attention_mask),
            ("attention_bias", attention_bias),
        ):
            if operand is None:
                continue
            shape = _validation.static_shape(operand)
            if len(shape) > len(scores_shape) or len(shape) < n_inner:
                raise ValueError(
                    f"Argument `{name}` must have rank between {n_inner} and "
                    f"{len(scores_shape)}, broadcastable to the attention "
                    f"scores {scores_shape} once the heads axis is inserted. "
                    f"Received: {name}.shape={shape}"
                )
            _validation.check_broadcastable(
                name,
                layout.expand_to_scores(shape, len(scores_shape)),
                scores_shape,
                "(batch, <other dims>, num_heads, <target dims>, "
                "<source dims>)",
                given=shape,
            )

    def _call_masks(
        self,
        query,
        value,
        key,
        masks,
        attention_bias,
        use_causal_mask,
        cache,
        cache_update_index,
        offset,
        segments,
    ):
        """Checks a call's inputs and returns its masks, `(mask, row_mask,
        causal_only)`.

        `masks`: the call's `(query_mask, value_mask, key_mask,
        attention_mask)`. `mask`: all of them combined in Keras' `(B, T, S)`
        layout, or None. `row_mask`: sequences (rank 3) apply the query's
        padding mask to the output rows instead, so the kernel sees only a
        `(B, 1, S)` key mask and memory stays O(T + S). `causal_only`:
        causal masking is left to the kernel (no `(T, S)` mask; the chunked
        kernel skips the blocks past the diagonal), which happens when the
        other masks only pad the keys. As in Keras, not for subclasses that
        override `_compute_attention`, which would otherwise see no causal
        mask; those get the window and the segment ids in `mask`.
        """
        query_mask, value_mask, key_mask, attention_mask = masks
        if cache is not None and cache_update_index is not None:
            value_mask, key_mask = (
                _kv_cache.slot_mask(
                    name, mask, cache, cache_update_index, key.shape[1]
                )
                for name, mask in (
                    ("value_mask", value_mask),
                    ("key_mask", key_mask),
                )
            )
        masks = (query_mask, value_mask, key_mask, attention_mask)
        self._check_call_inputs(
            query, value, key, masks, attention_bias, cache, segments
        )
        if not self._stock_attention():
            attention_mask = _masking.and_masks(
                _masking.as_bool(attention_mask, "attention_mask"),
                _programmable.segment_mask(*segments),
            )
        rank = len(query.shape)
        row_mask = None
        if rank == 3 and query_mask is not None:
            row_mask = _masking.as_bool(query_mask, "query_mask")
            query_mask = None
        key_masked = value_mask is not None or key_mask is not None
        causal_only = (
            use_causal_mask
            and rank == 3
            and query_mask is None
            and attention_mask is None
            and not (key_masked and attention_bias is not None)
            and self._stock_attention()
        )
        mask = self._attention_mask(
            ops.shape(query)[1],
            ops.shape(value if cache is None else cache[:, 0])[1],
            query_mask,
            value_mask,
            key_mask,
            attention_mask,
            use_causal_mask and not causal_only,
            offset,
        )
        return mask, row_mask, causal_only

    def _stock_attention(self):
        """Whether `_compute_attention` is ours, not a subclass's."""
        return (
            type(self)._compute_attention is type(self)._stock_compute_attention
        )

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        key_mask=None,
        attention_mask=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
        attention_bias=None,
        cache=None,
        cache_update_index=None,
        query_segment_ids=None,
        key_segment_ids=None,
    ):
        if key is None:
            key = value
        segments = (query_segment_ids, key_segment_ids)
        offset = self._kv_cache.check(
            query, key, cache, cache_update_index, self.attention_axes
        )
        mask, row_mask, causal_only = self._call_masks(
            query,
            value,
            key,
            (query_mask, value_mask, key_mask, attention_mask),
            attention_bias,
            use_causal_mask,
            cache,
            cache_update_index,
            offset,
            segments,
        )
        gate = None
        if self.use_gate:
            gate = self._gate_dense(_common.strip_keras_mask(query))
        q = self._rotate(
            self._query_dense(_common.strip_keras_mask(query)), offset
        )
        k, v, cache = self._keys_and_values(
            key, value, cache, cache_update_index
        )
        attended, scores, operands = self._attention_step(
            q,
            k,
            v,
            (mask, attention_bias, segments),
            (offset, causal_only),
            training,
            return_attention_scores,
        )
        if gate is not None:
            attended = attended * gate
        output = self._kernel_layout.zero_masked_rows(
            self._output_dense(attended),
            q,
            k,
            operands,
            offset if causal_only else None,
            self._kernel_window(offset),
        )
        if row_mask is not None:
            output = output * ops.expand_dims(
                ops.cast(row_mask, output.dtype), -1
            )
            if scores is not None:
                scores = (
                    scores * ops.cast(row_mask, scores.dtype)[:, None, :, None]
                )
        outputs = (output,)
        if return_attention_scores:
            outputs += (scores,)
        if cache is not None:
            outputs += (cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def _rotate(self, x, start):
        """Rotary embeddings of positions `start, start + 1, ...` (if on)."""
        if self.rope_max_wavelength is None:
            return x
        return apply_rotary(
            x,
            rotary_positions(ops.shape(x)[1], start),
            self.rope_max_wavelength,
            self.rope_scaling_factor,
        )

    def _keys_and_values(self, key, value, cache, cache_update_index):
        """Projected keys and values, and the updated cache (or None)."""
        if cache is not None and cache_update_index is None:
            return self._kv_cache.read(cache) + (cache,)
        start = 0 if cache is None else cache_update_index
        k = self._rotate(self._key_dense(_common.strip_keras_mask(key)), start)
        v = self._value_dense(_common.strip_keras_mask(value))
        if cache is None:
            return k, v, None
        return self._kv_cache.write(cache, k, v, cache_update_index)

    def _kernel_window(self, offset):
        """`(sliding_window, offset)` where the op applies the window (our
        own `_compute_attention` on sequences), else None."""
        if self.sliding_window is None or self._kernel_layout.rank != 3:
            return None
        return (
            (self.sliding_window, offset) if self._stock_attention() else None
        )

    def _attention_step(
        self, q, k, v, operands, positions, training, return_scores
    ):
        """Attends the projections: `(attended, scores, operands)`, with the
        mask and bias folded to the kernel's layout once (`operands`), for
        the kernel and for the rows `call` zeroes. `operands`: `(mask,
        attention_bias, segments)`; `positions`: `(offset, causal_only)`,
        the position of query 0 and whether causal masking is left to the
        kernel."""
        mask, attention_bias, segments = operands
        offset, causal_only = positions
        # Only what is set reaches `_compute_attention`, so that subclasses
        # written against Keras' signature keep working.
        extras = {"use_causal_mask": True} if causal_only else {}
        stock = self._stock_attention()
        if stock:
            extras.update(
                _programmable.kernel_extras(
                    self, self._kernel_window(offset), segments, positions
                )
            )
        if attention_bias is not None:
            extras["attention_bias"] = attention_bias
        if self.logits_soft_cap is not None:
            extras["logits_soft_cap"] = self.logits_soft_cap
        operands = self._kernel_layout.operands(q, k, mask, attention_bias)
        if stock:
            attended, scores, rows = self._kernel_attention(
                q, k, v, operands, training, return_scores, extras
            )
            operands = operands._replace(rows=rows)
        else:
            attended, scores = self._attend(
                q, k, v, mask, training, return_scores, extras
            )
        return attended, scores, operands

    def _attend(self, q, k, v, mask, training, return_scores, extras):
        """Calls `_compute_attention` with Keras' MHA signature."""
        return self._compute_attention(
            q, k, v, mask, training, return_scores, **extras
        )

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        return_attention_scores=False,
        use_causal_mask=False,
        attention_bias=None,
        logits_soft_cap=None,
        causal_offset=0,
    ):
        """The attention step on projected tensors: override to change it.

        Keras' contract: `query` `(B, <target dims>, num_heads, key_dim)`,
        `key` and `value` `(B, <source dims>, heads, dim)`, where `heads`
        may be `num_key_value_heads` (not repeated); `attention_mask`
        boolean, broadcastable to `(B, <target dims>, <source dims>)`, or
        to the scores shape once the heads axis is inserted;
        `use_causal_mask` adds the causal mask. Our extras, given by `call`
        only when set: `attention_bias`, added to the logits, and
        `logits_soft_cap` (defaults to the layer's), and `causal_offset`,
        the position of query 0 in causal decoding. Returns `(output,
        scores)`, `scores` None unless `return_attention_scores`.
        """
        if use_causal_mask and len(query.shape) != 4:
            causal = _masking.causal_mask(
                ops.shape(query)[1], ops.shape(key)[1]
            )
            attention_mask = _masking.and_masks(
                _masking.as_bool(attention_mask, "attention_mask"), causal[None]
            )
            use_causal_mask = False
        operands = self._kernel_layout.operands(
            query,
            key,
            _masking.as_bool(attention_mask, "attention_mask"),
            attention_bias,
        )
        return self._kernel_attention(
            query,
            key,
            value,
            operands,
            training,
            return_attention_scores,
            {
                "use_causal_mask": use_causal_mask,
                "logits_soft_cap": logits_soft_cap,
                "causal_offset": causal_offset,
            },
        )[:2]

    _stock_compute_attention = _compute_attention

    def _kernel_attention(
        self, query, key, value, operands, training, return_scores, extras
    ):
        """`_compute_attention`'s work, on `KernelOperands` already folded to
        the kernel's layout. `extras` as `_compute_attention`'s keywords
        (`attention_bias` is read from `operands`), and the op's window and
        segment ids. Returns `(output, scores, rows)`, `rows` as
        `_programmable.attend`'s."""
        logits_soft_cap = extras.get("logits_soft_cap")
        if logits_soft_cap is None:
            logits_soft_cap = self.logits_soft_cap
        layout = self._kernel_layout
        q, q_shape = layout.to_kernel(query)
        k = layout.to_kernel(key)[0]
        programme = _programmable.op_arguments(self, extras)

        def attention(v, main):
            result = scaled_dot_product_attention(
                q,
                k,
                v,
                mask=operands.mask,
                bias=operands.bias,
                is_causal=bool(extras.get("use_causal_mask", False)),
                scale=1.0 / math.sqrt(float(self.key_dim)),
                dropout_rate=self.dropout if main else 0.0,
                training=bool(training),
                seed=self.seed_generator,
                return_scores=return_scores and main,
                chunk_size=self.chunk_size,
                logits_soft_cap=logits_soft_cap,
                flash_attention=self.flash_attention,
                causal_offset=extras.get("causal_offset", 0),
                **programme,
            )
            return result if return_scores and main else (result, None)

        attended, scores, rows = _programmable.attend(
            attention,
            layout.to_kernel(value)[0],
            _programmable.needs_row_check(programme),
            bool(training) and self.dropout > 0,
        )
        if scores is not None and len(operands.scores_shape) != 4:
            scores = ops.reshape(scores, operands.scores_shape)
        return layout.from_kernel(attended, q_shape), scores, rows

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_heads": self.num_heads,
                "key_dim": self.key_dim,
                "value_dim": self.value_dim,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "use_gate": self.use_gate,
                "logits_soft_cap": self.logits_soft_cap,
                "output_shape": self.partial_output_shape,
                "attention_axes": self.attention_axes,
                "sliding_window": self.sliding_window,
                "flash_attention": self.flash_attention,
                "num_key_value_heads": self.num_key_value_heads,
                "chunk_size": self.chunk_size,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                **_programmable.serialize_mods(self),
                "use_attention_sinks": self.use_attention_sinks,
                "seed": self.seed,
                "activity_regularizer": keras.regularizers.serialize(
                    self._activity_regularizer
                ),
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
