import keras

from keras_attention import _masking
from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers import _transformer


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerEncoder(_transformer.TransformerBlock):
    """A Transformer encoder block: self-attention and a feed-forward network.

    The block is two residual sub-blocks. Self-attention: this package's
    `MultiHeadAttention` over the inputs, dropout, and the residual. Feed
    forward: `Dense(intermediate_dim, activation)`, `Dense(dim)`, dropout,
    and the residual. With `normalize_first=False` (post-norm, as in the
    paper and BERT) each sub-block is followed by a `LayerNormalization`:
    `x = norm(x + sublayer(x))`; with `normalize_first=True` (pre-norm, as in
    GPT-2 and ViT) each sub-block starts with one: `x = x + sublayer(norm(x))`.
    The output has the inputs' shape.

    Masking: the padding mask is `padding_mask` when given, otherwise the
    inputs' Keras mask (e.g. from `Embedding(mask_zero=True)`), which Keras
    passes in as `mask` or `inputs_mask`. Padded positions are removed from
    the keys, so they never influence the outputs at other positions, and
    their own attention output is zero. `attention_mask` and
    `use_causal_mask` are combined with the padding mask by a logical AND.
    The output carries the inputs' Keras mask, so padding flows through a
    stack of blocks.

    Dtype: under a mixed-precision policy the block computes in the compute
    dtype with float32 weights, while the attention logits and softmax and
    the layer normalizations' statistics run in float32.

    What it adds: Keras core has no Transformer block. Against keras-hub's
    `TransformerEncoder` (same arguments, sublayer names and weight order,
    so `set_weights` carries one over): the attention is this package's
    `MultiHeadAttention`, with the logits and softmax in float32 under
    mixed precision and memory-efficient chunked attention for long
    sequences (`chunk_size`); `use_causal_mask`; an explicit `key_dim`;
    the inputs' Keras mask arrives as a call argument, which Keras fills in
    on every backend, also when an `attention_mask` tensor is passed; no
    keras-hub dependency.

    Args:
        intermediate_dim: int, the hidden size of the feed-forward network.
        num_heads: int, the number of attention heads.
        dropout: float in `[0, 1)`, the dropout rate of the attention
            weights and of both sub-blocks' outputs.
        activation: activation of the feed-forward network's hidden layer.
            Keras' exact `"gelu"` is computed with `erf`, which exports
            to ONNX (TensorFlow's form uses `erfc`).
        layer_norm_epsilon: positive float, the epsilon of the layer
            normalizations.
        normalize_first: bool, pre-norm (`True`) or post-norm (`False`).
        key_dim: optional int, the size of each attention head. Defaults to
            `dim // num_heads`, where `dim` is the inputs' last dimension.
        chunk_size: `"auto"`, `None` or a positive int, passed to the
            attention; see `keras_attention.ops.scaled_dot_product_attention`.
        kernel_initializer: initializer for the attention and dense kernels.
        bias_initializer: initializer for the attention and dense biases.
        kernel_regularizer: regularizer for the attention and dense kernels.
        bias_regularizer: regularizer for the attention and dense biases.
        activity_regularizer: regularizer for the block's output.
        kernel_constraint: constraint for the attention and dense kernels.
        bias_constraint: constraint for the attention and dense biases.
        seed: optional int, seed for the dropout layers.
        num_key_value_heads: optional int dividing `num_heads`: grouped-query
            attention with that many key/value heads.
        rope_max_wavelength: optional positive float: rotary position
            embeddings on the queries and keys (None: off). Needs an even
            head size.
        rope_scaling_factor: positive float, linear RoPE scaling.
        sliding_window: optional positive int: each position attends
            positions within `sliding_window - 1` of itself.
        logits_soft_cap: optional positive float, see
            `keras_attention.ops.scaled_dot_product_attention`.
        score_mod, mask_mod, use_attention_sinks: programmable
            self-attention, as in `keras_attention.MultiHeadAttention`
            (the functions saved by their registered names).
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: `(batch_size, sequence_length, dim)`.
        padding_mask: optional boolean `(batch_size, sequence_length)`,
            True for real positions and False for padding. Takes precedence
            over the inputs' Keras mask.
        attention_mask: optional boolean `(batch_size, sequence_length,
            sequence_length)`; True where query `i` may attend key `j`.
        use_causal_mask: bool, whether position `i` may attend only
            positions `j <= i`.
        return_attention_scores: bool, whether to also return the attention
            weights.
        training: bool, whether dropout is active.
        segment_ids: optional integer `(batch_size, sequence_length)`:
            positions attend the positions of their segment (packed
            sequences), the self-attention's query and key segment ids.
        mask, inputs_mask: the inputs' Keras mask, filled in by Keras (the
            first name when `inputs` is the only tensor argument, the second
            otherwise); not meant to be passed by hand.

    Returns:
        `(batch_size, sequence_length, dim)`; with `return_attention_scores`,
        also the attention weights `(batch_size, num_heads, sequence_length,
        sequence_length)`.

    Example:

    >>> import numpy as np
    >>> tokens = keras.Input((None,), dtype="int32")
    >>> x = keras.layers.Embedding(100, 16, mask_zero=True)(tokens)
    >>> x = TransformerEncoder(intermediate_dim=32, num_heads=2)(x)
    >>> x = TransformerEncoder(32, 2, normalize_first=True)(x)
    >>> model = keras.Model(tokens, x)
    >>> model.predict(np.array([[5, 7, 2, 0, 0]]), verbose=0).shape
    (1, 5, 16)

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762), "Attention
        Is All You Need"; pre-norm: [Xiong et al., 2020](
        https://arxiv.org/abs/2002.04745), "On Layer Normalization in the
        Transformer Architecture".
    """

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout=0.0,
        activation="relu",
        layer_norm_epsilon=1e-5,
        normalize_first=False,
        key_dim=None,
        chunk_size="auto",
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        activity_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        num_key_value_heads=None,
        rope_max_wavelength=None,
        rope_scaling_factor=1.0,
        sliding_window=None,
        logits_soft_cap=None,
        score_mod=None,
        mask_mod=None,
        use_attention_sinks=False,
        **kwargs,
    ):
        arguments = dict(locals())
        super().__init__(**_common.constructor_arguments(arguments))

    def build(self, input_shape):
        dim, key_dim = self._check_input_shape(
            "TransformerEncoder", input_shape
        )
        self._dim = dim
        input_shape = tuple(input_shape)
        # Created in keras-hub's order, under keras-hub's names.
        self._build_self_attention("self_attention_layer", key_dim, input_shape)
        self._feedforward_layer_norm = self._layer_norm(
            "feedforward_layer_norm", input_shape
        )
        (
            self._feedforward_intermediate_dense,
            self._feedforward_output_dense,
        ) = self._feedforward_denses(input_shape)
        self._feedforward_dropout = self._dropout("feedforward_dropout", 2)

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        segment_ids=None,
        mask=None,
        inputs_mask=None,
    ):
        _validation.check_rank("inputs", inputs.shape, (3,))
        _validation.check_last_dim("inputs", inputs.shape, self._dim, "inputs")
        if padding_mask is None:
            padding_mask = mask if mask is not None else inputs_mask
        _validation.check_mask(
            "padding_mask",
            padding_mask,
            tuple(inputs.shape[:-1]),
            "(batch_size, sequence_length)",
        )
        length = inputs.shape[1]
        _validation.check_mask(
            "attention_mask",
            attention_mask,
            (inputs.shape[0], length, length),
            "(batch_size, sequence_length, sequence_length)",
        )
        padding_mask = _masking.as_bool(padding_mask)
        attention_mask = _masking.as_bool(attention_mask)

        # Sublayers get plain tensors: the masks are passed explicitly.
        x = _common.strip_keras_mask(inputs)

        def attend(x):
            attended = self._self_attention_layer(
                x,
                x,
                query_mask=padding_mask,
                value_mask=padding_mask,
                attention_mask=attention_mask,
                use_causal_mask=use_causal_mask,
                return_attention_scores=return_attention_scores,
                training=training,
                query_segment_ids=segment_ids,
                key_segment_ids=segment_ids,
            )
            return attended if return_attention_scores else (attended, None)

        x, scores = self._residual(
            x,
            self._self_attention_layer_norm,
            self._self_attention_dropout,
            attend,
            training,
        )
        x = self._feedforward_block(x, training)
        if return_attention_scores:
            return x, scores
        return x

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        _validation.check_rank("inputs", input_shape, (3,))
        return tuple(input_shape)

    def compute_output_spec(self, *args, **kwargs):
        arguments = _common.call_arguments(
            TransformerEncoder.call, args, kwargs
        )
        inputs = arguments["inputs"]
        output = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not arguments["return_attention_scores"]:
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        scores = keras.KerasTensor(
            (batch, self.num_heads, length, length), dtype=self.compute_dtype
        )
        return output, scores
