import keras

from keras_attention import _masking
from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers.multi_head_attention import MultiHeadAttention


@keras.saving.register_keras_serializable(package="keras_attention")
class TransformerEncoder(_common.ValidatedLayer):
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
        **kwargs,
    ):
        _validation.check_positive_int("intermediate_dim", intermediate_dim)
        _validation.check_positive_int("num_heads", num_heads)
        _validation.check_rate("dropout", dropout)
        _validation.check_positive_number(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        _validation.check_bool("normalize_first", normalize_first)
        _validation.check_positive_int("key_dim", key_dim, allow_none=True)
        _validation.check_chunk_size(chunk_size)
        _validation.check_seed(seed)
        _validation.check_size_product({"intermediate_dim": intermediate_dim})
        if key_dim is not None:
            _validation.check_size_product(
                {"num_heads": num_heads, "key_dim": key_dim}
            )
        # The base layer applies the activity regularizer once, to the
        # block's output (not to every sublayer's).
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.supports_masking = True
        self.intermediate_dim = int(intermediate_dim)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.activation = _validation.get_keras_object(
            "activations", "activation", activation
        )
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalize_first = normalize_first
        self.key_dim = None if key_dim is None else int(key_dim)
        self.chunk_size = chunk_size
        self.kernel_initializer = _validation.get_initializer(
            "kernel_initializer", kernel_initializer
        )
        self.bias_initializer = _validation.get_initializer(
            "bias_initializer", bias_initializer
        )
        self.kernel_regularizer = _validation.get_regularizer(
            "kernel_regularizer", kernel_regularizer
        )
        self.bias_regularizer = _validation.get_regularizer(
            "bias_regularizer", bias_regularizer
        )
        self.kernel_constraint = _validation.get_constraint(
            "kernel_constraint", kernel_constraint
        )
        self.bias_constraint = _validation.get_constraint(
            "bias_constraint", bias_constraint
        )
        self.seed = seed

    def _seed(self, offset):
        return None if self.seed is None else self.seed + offset

    def _dense_kwargs(self):
        return dict(
            kernel_initializer=_common.clone_initializer(
                self.kernel_initializer
            ),
            bias_initializer=_common.clone_initializer(self.bias_initializer),
            kernel_regularizer=self.kernel_regularizer,
            bias_regularizer=self.bias_regularizer,
            kernel_constraint=self.kernel_constraint,
            bias_constraint=self.bias_constraint,
            dtype=self.dtype_policy,
        )

    def build(self, input_shape):
        _validation.check_rank("inputs", input_shape, (3,))
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                "The last dimension of `inputs` must be known. Received: "
                f"inputs.shape={tuple(input_shape)}"
            )
        key_dim = self.key_dim or dim // self.num_heads
        if key_dim == 0:
            raise ValueError(
                "The inputs' last dimension must be at least `num_heads` "
                "when `key_dim` is not given (each head gets `dim // "
                f"num_heads` features). Received: inputs.shape="
                f"{tuple(input_shape)}, num_heads={self.num_heads}"
            )
        _validation.check_weight_shapes(
            "TransformerEncoder",
            {
                "feedforward_intermediate_dense/kernel": (
                    dim,
                    self.intermediate_dim,
                ),
            },
            {
                "inputs.shape[-1]": dim,
                "intermediate_dim": self.intermediate_dim,
            },
        )
        # The attention's kernels are checked by its own `build`.
        self._dim = dim
        input_shape = tuple(input_shape)
        # Created in keras-hub's order, under keras-hub's names.
        self._self_attention_layer = MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=key_dim,
            dropout=self.dropout,
            chunk_size=self.chunk_size,
            seed=self._seed(0),
            name="self_attention_layer",
            **self._dense_kwargs(),
        )
        self._self_attention_layer.build(input_shape, input_shape)
        self._self_attention_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="self_attention_layer_norm",
        )
        self._self_attention_layer_norm.build(input_shape)
        self._self_attention_dropout = keras.layers.Dropout(
            rate=self.dropout,
            seed=self._seed(1),
            dtype=self.dtype_policy,
            name="self_attention_dropout",
        )
        self._feedforward_layer_norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name="feedforward_layer_norm",
        )
        self._feedforward_layer_norm.build(input_shape)
        self._feedforward_intermediate_dense = keras.layers.Dense(
            self.intermediate_dim,
            activation=self.activation,
            name="feedforward_intermediate_dense",
            **self._dense_kwargs(),
        )
        self._feedforward_intermediate_dense.build(input_shape)
        self._feedforward_output_dense = keras.layers.Dense(
            dim,
            name="feedforward_output_dense",
            **self._dense_kwargs(),
        )
        self._feedforward_output_dense.build(
            input_shape[:-1] + (self.intermediate_dim,)
        )
        self._feedforward_dropout = keras.layers.Dropout(
            rate=self.dropout,
            seed=self._seed(2),
            dtype=self.dtype_policy,
            name="feedforward_dropout",
        )

    def call(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
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

        # Self-attention sub-block.
        residual = x
        if self.normalize_first:
            x = self._self_attention_layer_norm(x)
        attended = self._self_attention_layer(
            x,
            x,
            query_mask=padding_mask,
            value_mask=padding_mask,
            attention_mask=attention_mask,
            use_causal_mask=use_causal_mask,
            return_attention_scores=return_attention_scores,
            training=training,
        )
        scores = None
        if return_attention_scores:
            attended, scores = attended
        x = self._self_attention_dropout(attended, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._self_attention_layer_norm(x)

        # Feed-forward sub-block.
        residual = x
        if self.normalize_first:
            x = self._feedforward_layer_norm(x)
        x = self._feedforward_intermediate_dense(x)
        x = self._feedforward_output_dense(x)
        x = self._feedforward_dropout(x, training=training)
        x = x + residual
        if not self.normalize_first:
            x = self._feedforward_layer_norm(x)

        if return_attention_scores:
            return x, scores
        return x

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        _validation.check_rank("inputs", input_shape, (3,))
        return tuple(input_shape)

    def compute_output_spec(
        self,
        inputs,
        padding_mask=None,
        attention_mask=None,
        use_causal_mask=False,
        return_attention_scores=False,
        training=None,
        mask=None,
        inputs_mask=None,
    ):
        output = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return output
        batch, length = inputs.shape[0], inputs.shape[1]
        scores = keras.KerasTensor(
            (batch, self.num_heads, length, length), dtype=self.compute_dtype
        )
        return output, scores

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "intermediate_dim": self.intermediate_dim,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "activation": keras.activations.serialize(self.activation),
                "layer_norm_epsilon": self.layer_norm_epsilon,
                "normalize_first": self.normalize_first,
                "key_dim": self.key_dim,
                "chunk_size": self.chunk_size,
                "seed": self.seed,
                "activity_regularizer": keras.regularizers.serialize(
                    self.activity_regularizer
                ),
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
