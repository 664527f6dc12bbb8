import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
class PositionEmbedding(_common.PositionLayer):
    """Learned absolute position embeddings, ready to add to the inputs.

    The layer holds one trainable vector per position, an `embeddings`
    weight of shape `(sequence_length, dim)`, and returns the vectors of
    positions `start_index, ..., start_index + length - 1` broadcast to the
    shape of the inputs, so `x + PositionEmbedding(n)(x)` adds them. Only
    the inputs' shape is used, never their values. Inputs may be shorter
    than `sequence_length`, and their length may change from call to call
    (the embeddings are sliced); a length known to exceed the positions the
    layer has raises a `ValueError`.

    What it adds over Keras core and keras-hub: Keras core has no position
    embedding layer. keras-hub's `PositionEmbedding` computes the same
    thing (same weight name and shape, so `set_weights` carries one over),
    but this layer needs no keras-hub, checks `start_index` and the length
    against `sequence_length` statically instead of failing in the slice,
    and passes the inputs' Keras mask through to its output, so that
    `keras.layers.Add()([x, positions])` keeps the padding mask of an
    `Embedding(mask_zero=True)` (keras-hub's layer does not support
    masking, so the mask stops there).

    Dtype: the embeddings are stored in float32 and returned in the compute
    dtype under a mixed-precision policy.

    Args:
        sequence_length: int, the number of positions, i.e. the longest
            sequence the layer accepts.
        initializer: initializer for the embeddings.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: `(batch_size, length, dim)` (any rank >= 2 works: the
            positions are on axis -2, the features on axis -1), with
            `length <= sequence_length`.
        start_index: int or 0-d integer tensor, the position of the first
            input step (default 0), e.g. the cache index when decoding one
            step at a time. `start_index + length` must not exceed
            `sequence_length` (checked when both are static; the JAX
            backend clamps a traced out-of-range start, as
            `jax.lax.dynamic_slice` does).

    Returns:
        The position embeddings broadcast to the inputs' shape,
        `(batch_size, length, dim)`, in the compute dtype.

    Example:

    >>> import numpy as np
    >>> tokens = keras.Input((None,), dtype="int32")
    >>> x = keras.layers.Embedding(100, 16, mask_zero=True)(tokens)
    >>> x = keras.layers.Add()([x, PositionEmbedding(sequence_length=32)(x)])
    >>> model = keras.Model(tokens, x)
    >>> model.predict(np.array([[3, 9, 4, 0]]), verbose=0).shape
    (1, 4, 16)

    Reference:
        [Devlin et al., 2019](https://arxiv.org/abs/1810.04805), "BERT:
        Pre-training of Deep Bidirectional Transformers for Language
        Understanding"; [Dosovitskiy et al., 2021](
        https://arxiv.org/abs/2010.11929) for images.
    """

    def __init__(self, sequence_length, initializer="glorot_uniform", **kwargs):
        _validation.check_positive_int("sequence_length", sequence_length)
        super().__init__(**kwargs)
        self.supports_masking = True
        self.sequence_length = int(sequence_length)
        self.initializer = _validation.get_initializer(
            "initializer", initializer
        )

    def build(self, input_shape):
        self._check_shape(input_shape)
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                "The last dimension of `inputs` must be known. Received: "
                f"inputs.shape={tuple(input_shape)}"
            )
        _validation.check_weight_shapes(
            "PositionEmbedding",
            {"embeddings": (self.sequence_length, dim)},
            {"sequence_length": self.sequence_length, "inputs.shape[-1]": dim},
        )
        self._dim = dim
        self.position_embeddings = self.add_weight(
            name="embeddings",
            shape=(self.sequence_length, dim),
            initializer=self.initializer,
        )

    def call(self, inputs, start_index=0):
        self._check_shape(inputs.shape)
        _validation.check_last_dim("inputs", inputs.shape, self._dim, "inputs")
        static_length = inputs.shape[-2]
        if static_length is not None and static_length > self.sequence_length:
            raise ValueError(
                "The inputs' sequence length must not exceed "
                "`sequence_length`. Received: inputs.shape="
                f"{tuple(inputs.shape)}, sequence_length="
                f"{self.sequence_length}"
            )
        _validation.check_start_index(
            start_index, static_length, self.sequence_length
        )
        shape = ops.shape(inputs)
        length = shape[-2]
        embeddings = ops.convert_to_tensor(self.position_embeddings)
        whole = (
            isinstance(start_index, numbers.Integral)
            and start_index == 0
            and static_length == self.sequence_length
        )
        if not whole:
            if not isinstance(start_index, numbers.Integral):
                start_index = ops.cast(start_index, "int32")
            embeddings = ops.slice(
                embeddings, (start_index, 0), (length, self._dim)
            )
        embeddings = ops.cast(embeddings, self.compute_dtype)
        return ops.broadcast_to(embeddings, shape)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "sequence_length": self.sequence_length,
                "initializer": keras.initializers.serialize(self.initializer),
            }
        )
        return config
