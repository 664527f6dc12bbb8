import keras
from keras import ops

from keras_attention import _masking
from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers import _transformer


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerDecoder(_transformer.TransformerBlock):
    """A Transformer decoder block: causal self-attention, optional
    cross-attention, and a feed-forward network, with key/value caches.

    Three residual sub-blocks, each with dropout and a
    `LayerNormalization` (after the residual with `normalize_first=False`,
    before the sublayer with `True`): self-attention over
    `decoder_sequence` (causal by default); cross-attention from it to
    `encoder_sequence`, present when the layer is built with an encoder
    sequence; and `Dense(intermediate_dim, activation)`, `Dense(dim)`.
    Attention is this package's `MultiHeadAttention`, so the rules of
    `keras_attention.ops.scaled_dot_product_attention` hold (float32
    softmax, zero rows for fully masked queries, `chunk_size`).

    Decoding: `self_attention_cache` and `cross_attention_cache` are
    `MultiHeadAttention` caches, `(batch_size, 2, max_length,
    num_key_value_heads, head_dim)`. With a self-attention cache the causal
    mask is aligned to absolute positions: query `i` sits at
    `self_attention_cache_update_index + i`; RoPE (`rope_max_wavelength`)
    and `sliding_window` follow the same positions. A cross-attention
    cache is filled once (`cross_attention_cache_update_index=0`) and read
    afterwards (`None`). With a cache, `decoder_padding_mask` covers the
    cache's slots, `(batch_size, max_length)`, e.g. to skip the left
    padding of a prompt.

    What it adds over keras-hub's `TransformerDecoder` (same constructor
    and call arguments, sublayer names and weight order, so `set_weights`
    carries a keras-hub decoder over): grouped-query attention
    (`num_key_value_heads`), rotary position embeddings, `sliding_window`,
    `chunk_size` (memory-efficient exact attention for long prefills) and
    `logits_soft_cap`; padding masks that work with a cache; float32
    logits under mixed precision; no keras-hub dependency. Keras core has
    no Transformer block.

    Args:
        intermediate_dim, num_heads, dropout, activation,
        layer_norm_epsilon, normalize_first, key_dim, chunk_size,
        logits_soft_cap, kernel_initializer, bias_initializer,
        kernel_regularizer, bias_regularizer, activity_regularizer,
        kernel_constraint, bias_constraint, seed, rope_max_wavelength,
        rope_scaling_factor: as in `keras_attention.TransformerEncoder`
            (RoPE applies to the self-attention only).
        num_key_value_heads: optional int dividing `num_heads`:
            grouped-query attention in both attentions.
        sliding_window: optional positive int, the self-attention's window.
        score_mod, mask_mod, use_attention_sinks: programmable
            self-attention, as in `keras_attention.MultiHeadAttention`
            (the functions saved by their registered names).
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        decoder_sequence: `(batch_size, target_length, dim)`.
        encoder_sequence: `(batch_size, source_length, dim_e)`, required
            when the layer has cross-attention, refused otherwise.
        decoder_padding_mask: optional boolean `(batch_size,
            target_length)` (with a cache: `(batch_size, max_length)`).
            Defaults to `decoder_sequence`'s Keras mask.
        decoder_attention_mask: optional boolean `(batch_size,
            target_length, target_length)` (with a cache: `max_length`
            columns).
        encoder_padding_mask: optional boolean `(batch_size,
            source_length)`. Defaults to `encoder_sequence`'s Keras mask.
        encoder_attention_mask: optional boolean `(batch_size,
            target_length, source_length)`.
        self_attention_cache: optional self-attention cache.
        self_attention_cache_update_index: int or 0-d tensor, where the new
            keys and values go.
        cross_attention_cache: optional cross-attention cache; with
            cross-attention, given together with `self_attention_cache`.
        cross_attention_cache_update_index: int (0 fills it) or None (read).
        use_causal_mask: bool, default True.
        training: bool, whether dropout is active.
        return_attention_scores: bool, whether to also return the
            attention weights (ours; keras-hub's block returns none).
        decoder_segment_ids: optional integer `(batch_size,
            target_length)` (with a cache: `(batch_size, max_length)`, the
            queries' taken from the update index): the self-attention's
            query and key segment ids and the cross-attention's query ids.
        encoder_segment_ids: optional integer `(batch_size,
            source_length)`, the cross-attention's key segment ids.
        decoder_sequence_mask, encoder_sequence_mask: the inputs' Keras
            masks, filled in by Keras.

    Returns:
        `(batch_size, target_length, dim)`; with caches, `(outputs,
        self_attention_cache)` or, with cross-attention, `(outputs,
        self_attention_cache, cross_attention_cache)`, as keras-hub. With
        `return_attention_scores`, the self-attention's weights `(batch_size,
        num_heads, target_length, target_length | max_length)` and, with
        cross-attention, the cross-attention's `(batch_size, num_heads,
        target_length, source_length | max_length)` follow `outputs`,
        before the caches (as `MultiHeadAttention` orders them).

    Example:

    >>> import numpy as np
    >>> decoder = TransformerDecoder(32, num_heads=2, rope_max_wavelength=1e4)
    >>> x = np.random.rand(2, 6, 16).astype("float32")
    >>> full = decoder(x)
    >>> cache = np.zeros((2, 2, 6, 2, 8), "float32")
    >>> out, cache = decoder(
    ...     x[:, :4], self_attention_cache=cache,
    ...     self_attention_cache_update_index=0)
    >>> step, cache = decoder(
    ...     x[:, 4:5], self_attention_cache=cache,
    ...     self_attention_cache_update_index=4)
    >>> bool(np.allclose(step, full[:, 4:5], atol=1e-5))
    True

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762).
    """

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-5,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        normalize_first=False,
        key_dim=None,
        num_key_value_heads=None,
        rope_max_wavelength=None,
        rope_scaling_factor=1.0,
        sliding_window=None,
        chunk_size="auto",
        logits_soft_cap=None,
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        score_mod=None,
        mask_mod=None,
        use_attention_sinks=False,
        **kwargs,
    ):
        arguments = dict(locals())
        # keras-hub's configs carry the build shapes.
        decoder_shape = kwargs.pop("decoder_sequence_shape", None)
        encoder_shape = kwargs.pop("encoder_sequence_shape", None)
        super().__init__(**_common.constructor_arguments(arguments))
        if decoder_shape is not None:
            self.build(decoder_shape, encoder_shape)

    @classmethod
    def from_config(cls, config):
        """Validates the config, then builds the layer from it; keras-hub's
        configs (with their build shapes) load too."""
        shapes = [None, None]
        if isinstance(config, dict):  # anything else: refused by the base
            config = dict(config)
            shapes = [
                config.pop(key, None)
                for key in ("decoder_sequence_shape", "encoder_sequence_shape")
            ]
        layer = super().from_config(config)
        if shapes[0] is not None:
            layer.build(*shapes)
        return layer

    def build(self, decoder_sequence_shape, encoder_sequence_shape=None):
        shape = tuple(decoder_sequence_shape)
        dim, key_dim = self._check_input_shape(
            "TransformerDecoder", shape, "decoder_sequence"
        )
        self._dim = dim
        # Created in keras-hub's order, under keras-hub's names.
        self._build_self_attention("self_attention", key_dim, shape)
        self._cross_attention_layer = None
        if encoder_sequence_shape is not None:
            encoder_shape = tuple(encoder_sequence_shape)
            _validation.check_rank("encoder_sequence", encoder_shape, (3,))
            self._cross_attention_layer = self._attention(
                "cross_attention", key_dim, 2, self_attention=False
            )
            self._cross_attention_layer.build(shape, encoder_shape)
            self._cross_attention_layer_norm = self._layer_norm(
                "cross_attention_layer_norm", shape
            )
            self._cross_attention_dropout = self._dropout(
                "cross_attention_dropout", 3
            )
        (
            self._feedforward_intermediate_dense,
            self._feedforward_output_dense,
        ) = self._feedforward_denses(shape)
        self._feedforward_layer_norm = self._layer_norm(
            "feedforward_layer_norm", shape
        )
        self._feedforward_dropout = self._dropout("feedforward_dropout", 4)

    def _check_call(self, decoder_sequence, encoder_sequence, caches):
        _validation.check_rank("decoder_sequence", decoder_sequence.shape, (3,))
        _validation.check_last_dim(
            "decoder_sequence",
            decoder_sequence.shape,
            self._dim,
            "decoder_sequence",
        )
        has_cross = self._cross_attention_layer is not None
        if has_cross != (encoder_sequence is not None):
            raise ValueError(
                "Argument `encoder_sequence` must be given exactly when the "
                "layer has cross-attention, which it has when it was built "
                "with an encoder sequence: `layer(decoder_sequence, "
                "encoder_sequence)` builds one, `layer(decoder_sequence)` "
                f"does not. Received: encoder_sequence="
                f"{'None' if encoder_sequence is None else 'a tensor'}, "
                f"layer built with cross-attention: {has_cross}"
            )
        self_cache, cross_cache = caches
        if has_cross and (self_cache is None) != (cross_cache is None):
            raise ValueError(
                "With cross-attention, `self_attention_cache` and "
                "`cross_attention_cache` are given together or not at all. "
                f"Received: self_attention_cache="
                f"{'None' if self_cache is None else 'a tensor'}, "
                "cross_attention_cache="
                f"{'None' if cross_cache is None else 'a tensor'}"
            )

    def call(
        self,
        decoder_sequence,
        encoder_sequence=None,
        decoder_padding_mask=None,
        decoder_attention_mask=None,
        encoder_padding_mask=None,
        encoder_attention_mask=None,
        self_attention_cache=None,
        self_attention_cache_update_index=None,
        cross_attention_cache=None,
        cross_attention_cache_update_index=None,
        use_causal_mask=True,
        training=None,
        return_attention_scores=False,
        decoder_segment_ids=None,
        encoder_segment_ids=None,
        decoder_sequence_mask=None,
        encoder_sequence_mask=None,
    ):
        self._check_call(
            decoder_sequence,
            encoder_sequence,
            (self_attention_cache, cross_attention_cache),
        )
        if decoder_padding_mask is None:
            decoder_padding_mask = decoder_sequence_mask
        if encoder_padding_mask is None:
            encoder_padding_mask = encoder_sequence_mask
        decoder_padding_mask = _masking.as_bool(
            decoder_padding_mask, "decoder_padding_mask"
        )
        x = _common.strip_keras_mask(decoder_sequence)
        # Without a cache the padding mask covers the queries too; with
        # one it covers the cache's slots.
        query_mask = None
        query_ids = decoder_segment_ids
        if self_attention_cache is None:
            query_mask = decoder_padding_mask
        elif decoder_segment_ids is not None:
            query_ids = ops.slice(
                decoder_segment_ids,
                (0, _common.index_or_zero(self_attention_cache_update_index)),
                tuple(ops.shape(x)[:2]),
            )
        scores = []

        def self_attend(x):
            result = self._self_attention_layer(
                x,
                x,
                query_mask=query_mask,
                value_mask=decoder_padding_mask,
                attention_mask=_masking.as_bool(
                    decoder_attention_mask, "decoder_attention_mask"
                ),
                use_causal_mask=use_causal_mask,
                training=training,
                return_attention_scores=return_attention_scores,
                cache=self_attention_cache,
                cache_update_index=self_attention_cache_update_index,
                query_segment_ids=query_ids,
                key_segment_ids=decoder_segment_ids,
            )
            return _split_scores(result, scores, return_attention_scores)

        x, self_attention_cache = self._residual(
            x,
            self._self_attention_layer_norm,
            self._self_attention_dropout,
            self_attend,
            training,
        )
        if self._cross_attention_layer is not None:

            def cross_attend(x):
                result = self._cross_attention_layer(
                    x,
                    _common.strip_keras_mask(encoder_sequence),
                    value_mask=_masking.as_bool(
                        encoder_padding_mask, "encoder_padding_mask"
                    ),
                    attention_mask=_masking.as_bool(
                        encoder_attention_mask, "encoder_attention_mask"
                    ),
                    training=training,
                    return_attention_scores=return_attention_scores,
                    cache=cross_attention_cache,
                    cache_update_index=cross_attention_cache_update_index,
                    query_segment_ids=None
                    if encoder_segment_ids is None
                    else query_ids,
                    key_segment_ids=encoder_segment_ids,
                )
                return _split_scores(result, scores, return_attention_scores)

            x, cross_attention_cache = self._residual(
                x,
                self._cross_attention_layer_norm,
                self._cross_attention_dropout,
                cross_attend,
                training,
            )
        x = self._feedforward_block(x, training)
        outputs = (x, *scores)
        if self_attention_cache is not None:
            outputs += (self_attention_cache,)
            if self._cross_attention_layer is not None:
                outputs += (cross_attention_cache,)
        return outputs[0] if len(outputs) == 1 else outputs

    def compute_mask(self, decoder_sequence, mask=None):
        return mask

    def compute_output_shape(self, decoder_sequence_shape, *args, **kwargs):
        _validation.check_rank("decoder_sequence", decoder_sequence_shape, (3,))
        return tuple(decoder_sequence_shape)

    def compute_output_spec(self, *args, **kwargs):
        arguments = _common.call_arguments(
            TransformerDecoder.call, args, kwargs
        )
        decoder_sequence = arguments["decoder_sequence"]
        encoder_sequence = arguments["encoder_sequence"]
        caches = (
            arguments["self_attention_cache"],
            arguments["cross_attention_cache"],
        )
        outputs = [
            keras.KerasTensor(
                self.compute_output_shape(decoder_sequence.shape),
                dtype=self.compute_dtype,
            )
        ]
        if arguments["return_attention_scores"]:
            batch, length = decoder_sequence.shape[:2]
            sources = [decoder_sequence, encoder_sequence]
            for source, cache in zip(sources, caches):
                if source is None:
                    continue
                keys = source.shape[1] if cache is None else cache.shape[2]
                outputs.append(
                    keras.KerasTensor(
                        (batch, self.num_heads, length, keys),
                        dtype=self.compute_dtype,
                    )
                )
        outputs += [
            keras.KerasTensor(cache.shape, dtype=cache.dtype)
            for cache in caches
            if cache is not None
        ]
        return outputs[0] if len(outputs) == 1 else tuple(outputs)


def _split_scores(result, scores, return_scores):
    """An attention sublayer's result -> `(output, cache or None)`; its
    attention weights, when returned, are appended to `scores`."""
    if not isinstance(result, (tuple, list)):
        return result, None
    output, *rest = result
    if return_scores:
        scores.append(rest.pop(0))
    return output, (rest[0] if rest else None)
