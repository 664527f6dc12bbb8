import keras
from keras import ops

from keras_attention import _masking
from keras_attention import _validation
from keras_attention._masking import masked_softmax
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
class AttentionPooling(_common.ValidatedLayer):
    """Learned attention pooling of a sequence into one vector.

    Each of `num_heads` learned pooling queries scores every position, the
    scores are softmaxed over the (unmasked) positions, and the head's output
    is the weighted average of the inputs; the heads' outputs are
    concatenated. With `units`, the score is the hierarchical-attention MLP
    `u_h . tanh(W x + b)` (Yang et al., 2016); with `units=None` it is the
    linear score `u_h . x`.

    What it adds over Keras core: Keras has no learned attention pooling
    (`GlobalAveragePooling1D` weighs positions equally). This is the usual
    head of an attention text classifier, with padding masks honoured
    exactly: padded positions get weight zero, and a fully padded (or
    empty, length 0) sequence pools to zeros, never NaN. Masks, non-finite
    inputs and dtypes follow `keras_attention.ops.scaled_dot_product_attention`.
    The output carries no mask (the time axis is gone).

    Args:
        units: optional int, hidden size of the scoring MLP. `None` gives a
            single linear score per head.
        num_heads: int, the number of pooling queries; their outputs are
            concatenated.
        dropout: float in `[0, 1)`, dropout rate on the attention weights.
        kernel_initializer: initializer for the kernels.
        bias_initializer: initializer for the MLP bias.
        kernel_regularizer: regularizer for the kernels.
        bias_regularizer: regularizer for the MLP bias.
        kernel_constraint: constraint for the kernels.
        bias_constraint: constraint for the MLP bias.
        seed: optional int, seed for the attention dropout.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: `(batch_size, sequence_length, dim)`.
        mask: optional boolean `(batch_size, sequence_length)` padding mask;
            taken from the inputs' Keras mask when not given.
        return_attention_scores: bool, whether to also return the weights.
        training: bool, whether dropout is active.

    Returns:
        `(batch_size, num_heads * dim)`; with `return_attention_scores`, also
        the weights `(batch_size, num_heads, sequence_length)`.

    Example:

    >>> import numpy as np
    >>> tokens = keras.Input((None,), dtype="int32")
    >>> x = keras.layers.Embedding(100, 16, mask_zero=True)(tokens)
    >>> pooled = AttentionPooling(units=8, num_heads=2)(x)
    >>> model = keras.Model(tokens, keras.layers.Dense(3)(pooled))
    >>> model.predict(np.array([[5, 7, 0, 0]]), verbose=0).shape
    (1, 3)

    Reference:
        [Yang et al., 2016](https://aclanthology.org/N16-1174/),
        "Hierarchical Attention Networks for Document Classification".
    """

    def __init__(
        self,
        units=None,
        num_heads=1,
        dropout=0.0,
        kernel_initializer="glorot_uniform",
        bias_initializer="zeros",
        kernel_regularizer=None,
        bias_regularizer=None,
        kernel_constraint=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        _validation.check_positive_int("units", units, allow_none=True)
        _validation.check_positive_int("num_heads", num_heads)
        _validation.check_rate("dropout", dropout)
        _validation.check_seed(seed)
        # score_kernel is (units or dim, num_heads): fail before `build`.
        _validation.check_size_product(
            {"num_heads": num_heads}
            if units is None
            else {"units": units, "num_heads": num_heads}
        )
        super().__init__(**kwargs)
        self.supports_masking = True
        self.units = None if units is None else int(units)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        _common.set_keras_objects(self, locals())
        self.seed = seed
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if self.dropout > 0 else None
        )

    def build(self, input_shape):
        _validation.check_rank("inputs", input_shape, (3,))
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                "The last dimension of `inputs` must be known. Received: "
                f"inputs.shape={tuple(input_shape)}"
            )
        score_dim = dim if self.units is None else self.units
        shapes = {"score_kernel": (score_dim, self.num_heads)}
        if self.units is not None:
            shapes["hidden_kernel"] = (dim, self.units)
        _validation.check_weight_shapes(
            "AttentionPooling",
            shapes,
            {"units": self.units, "num_heads": self.num_heads, "dim": dim},
        )
        score_dim = dim
        self.hidden_kernel = None
        self.hidden_bias = None
        if self.units is not None:
            self.hidden_kernel = self.add_weight(
                name="hidden_kernel",
                shape=(dim, self.units),
                **_common.weight_kwargs(self, "kernel"),
            )
            self.hidden_bias = self.add_weight(
                name="hidden_bias",
                shape=(self.units,),
                **_common.weight_kwargs(self, "bias"),
            )
            score_dim = self.units
        self.score_kernel = self.add_weight(
            name="score_kernel",
            shape=(score_dim, self.num_heads),
            **_common.weight_kwargs(self, "kernel"),
        )
        self._dim = dim

    def call(
        self, inputs, mask=None, return_attention_scores=False, training=None
    ):
        _validation.check_rank("inputs", inputs.shape, (3,))
        _validation.check_last_dim("inputs", inputs.shape, self._dim, "inputs")
        _validation.check_mask(
            "mask",
            mask,
            tuple(inputs.shape[:-1]),
            "(batch_size, sequence_length)",
        )
        mask = _masking.as_bool(mask, "mask")
        features = inputs
        if self.units is not None:
            features = ops.tanh(
                ops.matmul(inputs, self.hidden_kernel) + self.hidden_bias
            )
        # (batch, length, heads) -> (batch, heads, length), in float32.
        logits = ops.matmul(
            ops.cast(features, "float32"),
            ops.cast(self.score_kernel, "float32"),
        )
        logits = ops.transpose(logits, (0, 2, 1))
        if mask is not None:
            mask = ops.expand_dims(mask, 1)
        weights = masked_softmax(logits, mask)
        scores = (
            ops.cast(weights, self.compute_dtype)
            if return_attention_scores
            else None
        )
        if training and self.dropout > 0.0:
            weights = keras.random.dropout(
                weights, self.dropout, seed=self.seed_generator
            )
        pooled = ops.einsum(
            "bhl,bld->bhd", ops.cast(weights, inputs.dtype), inputs
        )
        output = ops.reshape(pooled, (-1, self.num_heads * self._dim))
        if return_attention_scores:
            return output, scores
        return output

    def compute_mask(self, inputs, mask=None):
        return None

    def compute_output_shape(self, input_shape):
        _validation.check_rank("inputs", input_shape, (3,))
        dim = input_shape[-1]
        return (input_shape[0], None if dim is None else self.num_heads * dim)

    def compute_output_spec(
        self, inputs, mask=None, return_attention_scores=False, training=None
    ):
        output = keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )
        if not return_attention_scores:
            return output
        scores = keras.KerasTensor(
            (inputs.shape[0], self.num_heads, inputs.shape[1]),
            dtype=self.compute_dtype,
        )
        return output, scores

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "num_heads": self.num_heads,
                "dropout": self.dropout,
                "seed": self.seed,
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
