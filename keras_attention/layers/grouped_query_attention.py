import keras

from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers import _programmable
from keras_attention.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_attention")
class GroupedQueryAttention(MultiHeadAttention):
    """Grouped-query attention, a drop-in for Keras core's.

    The constructor and call arguments, weight names, shapes and order of
    `keras.layers.GroupedQueryAttention`, so `layer.set_weights(
    keras_layer.get_weights())` carries a Keras layer over with the same
    outputs. `num_query_heads` query heads share `num_key_value_heads`
    key/value heads (`num_key_value_heads=1` is multi-query attention).

    It runs on `MultiHeadAttention`'s attention code, so it adds what that
    layer adds over Keras core: `chunk_size`, `attention_bias`,
    `logits_soft_cap`, zeros for fully masked query rows, the softmax in
    float32, correct symbolic score shapes and the query's mask on the
    output; the masking and `flash_attention` rules are those of
    `keras_attention.ops.scaled_dot_product_attention`.

    One difference in the override point: `_compute_attention(query, key,
    value, attention_mask=None, training=None, use_causal_mask=False)` has
    Keras' signature, but receives `key` and `value` with
    `num_key_value_heads` heads, not repeated to `num_query_heads` as in
    Keras.

    Args:
        head_dim: int, size of each attention head.
        num_query_heads: int, number of query heads.
        num_key_value_heads: int dividing `num_query_heads`, number of key
            and value heads.
        dropout: float in `[0, 1)`, dropout rate on the attention weights.
        use_bias: bool, whether the projections use bias vectors.
        sliding_window: optional positive int: each query attends keys within
            `sliding_window - 1` positions of itself.
        flash_attention: `None`, `True` or `False`; see the op.
        kernel_initializer: initializer for the projection kernels.
        bias_initializer: initializer for the projection biases.
        kernel_regularizer: regularizer for the projection kernels.
        bias_regularizer: regularizer for the projection biases.
        activity_regularizer: regularizer for the projections' outputs.
        kernel_constraint: constraint for the projection kernels.
        bias_constraint: constraint for the projection biases.
        use_gate: bool, gated attention (Qiu et al. 2025): the attention
            output is multiplied by `sigmoid(W_g query)` before the output
            projection.
        seed: optional int, seed for the attention dropout.
        chunk_size: `"auto"`, `None` or a positive int; see the op.
        logits_soft_cap: optional positive float; see the op.
        rope_max_wavelength, rope_scaling_factor: rotary position
            embeddings, as in `keras_attention.MultiHeadAttention`.
        score_mod, mask_mod, use_attention_sinks: programmable attention,
            as in `keras_attention.MultiHeadAttention` (saved by registered
            name; the sinks are one logit per query head).
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        query: `(batch_size, target_length, dim)`.
        value: `(batch_size, source_length, dim)`.
        key: optional `(batch_size, source_length, dim)`; defaults to
            `value`.
        query_mask, value_mask, key_mask, attention_mask,
        return_attention_scores, training, use_causal_mask, attention_bias,
        cache, cache_update_index, query_segment_ids, key_segment_ids: as in
            `keras_attention.MultiHeadAttention` (its key/value cache holds
            `num_key_value_heads` heads of `head_dim`).

    Returns:
        attention_output: `(batch_size, target_length, dim)`.
        attention_scores: only if `return_attention_scores`, `(batch_size,
            num_query_heads, target_length, source_length)`.
        cache: with a cache, the updated cache.

    Example:

    >>> import numpy as np
    >>> layer = GroupedQueryAttention(
    ...     head_dim=4, num_query_heads=4, num_key_value_heads=2)
    >>> x = np.random.rand(2, 6, 16).astype("float32")
    >>> tuple(layer(x, x, use_causal_mask=True).shape)
    (2, 6, 16)

    Reference:
        [Ainslie et al., 2023](https://arxiv.org/abs/2305.13245).
    """

    def __init__(
        self,
        head_dim,
        num_query_heads,
        num_key_value_heads,
        dropout=0.0,
        use_bias=True,
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
        chunk_size="auto",
        logits_soft_cap=None,
        rope_max_wavelength=None,
        rope_scaling_factor=1.0,
        score_mod=None,
        mask_mod=None,
        use_attention_sinks=False,
        **kwargs,
    ):
        arguments = dict(locals())
        _validation.check_positive_int("head_dim", head_dim)
        _validation.check_positive_int("num_query_heads", num_query_heads)
        _validation.check_positive_int(
            "num_key_value_heads", num_key_value_heads
        )
        if num_query_heads % num_key_value_heads:
            raise ValueError(
                "`num_query_heads` must be divisible by "
                "`num_key_value_heads`. Received: "
                f"num_query_heads={num_query_heads}, "
                f"num_key_value_heads={num_key_value_heads}"
            )
        _validation.check_size_product(
            {"num_query_heads": num_query_heads, "head_dim": head_dim}
        )
        super().__init__(
            num_heads=num_query_heads,
            key_dim=head_dim,
            **_common.constructor_arguments(
                arguments, drop=("head_dim", "num_query_heads")
            ),
        )
        self.head_dim = int(head_dim)
        self.num_query_heads = int(num_query_heads)
        self.num_repeats = self.num_query_heads // self.num_key_value_heads
        self._return_attention_scores = False

    def _check_shapes(self, query_shape, value_shape, key_shape):
        if len(query_shape) != 3:
            raise ValueError(
                "Argument `query` of `GroupedQueryAttention` must have rank 3 "
                f"(batch, length, features). Received: query.shape="
                f"{tuple(query_shape)}"
            )
        return super()._check_shapes(query_shape, value_shape, key_shape)

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        # As Keras' layer: query and value features must match.
        if query_shape[-1] != value_shape[-1]:
            raise ValueError(
                "The last dimension of `query_shape` and `value_shape` must "
                f"be equal. Received: query_shape={tuple(query_shape)}, "
                f"value_shape={tuple(value_shape)}"
            )
        return super().compute_output_shape(query_shape, value_shape, key_shape)

    def _attend(self, q, k, v, mask, training, return_scores, extras):
        """Calls `_compute_attention` with Keras' GQA signature."""
        self._return_attention_scores = return_scores
        return self._compute_attention(
            q, k, v, attention_mask=mask, training=training, **extras
        )

    def _compute_attention(
        self,
        query,
        key,
        value,
        attention_mask=None,
        training=None,
        use_causal_mask=False,
        attention_bias=None,
        logits_soft_cap=None,
        causal_offset=0,
    ):
        """The attention step on projected tensors: override to change it.

        `query` `(B, T, num_query_heads, head_dim)`; `key` and `value`
        `(B, S, heads, head_dim)` with `heads` dividing `num_query_heads`
        (the layer passes `num_key_value_heads`). Whether scores are
        returned is `self._return_attention_scores`, as in Keras. The rest
        as `MultiHeadAttention._compute_attention`.
        """
        return super()._compute_attention(
            query,
            key,
            value,
            attention_mask,
            training,
            self._return_attention_scores,
            use_causal_mask=use_causal_mask,
            attention_bias=attention_bias,
            logits_soft_cap=logits_soft_cap,
            causal_offset=causal_offset,
        )

    _stock_compute_attention = _compute_attention

    def get_config(self):
        config = keras.layers.Layer.get_config(self)
        config.update(
            {
                "head_dim": self.head_dim,
                "num_query_heads": self.num_query_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "dropout": self.dropout,
                "use_bias": self.use_bias,
                "sliding_window": self.sliding_window,
                "flash_attention": self.flash_attention,
                "use_gate": self.use_gate,
                "seed": self.seed,
                "chunk_size": self.chunk_size,
                "logits_soft_cap": self.logits_soft_cap,
                "rope_max_wavelength": self.rope_max_wavelength,
                "rope_scaling_factor": self.rope_scaling_factor,
                **_programmable.serialize_mods(self),
                "use_attention_sinks": self.use_attention_sinks,
                "activity_regularizer": keras.regularizers.serialize(
                    self._activity_regularizer
                ),
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
