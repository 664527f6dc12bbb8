"""Private helpers shared by the layers."""

import math

import keras
from keras import ops

from keras_attention import _validation


def strip_keras_mask(x):
    """Returns `x` as a new tensor object that carries no Keras mask.

    Sublayers that don't support masking warn when they see a masked input;
    our layers handle masks themselves, so they hand sublayers a fresh tensor.
    """
    if keras.backend.backend() == "tensorflow":
        return ops.reshape(x, ops.shape(x))  # a new tensor, no copy
    # JAX returns the same array from a no-op reshape; an add makes a new
    # one (free under jit, where XLA elides it).
    return ops.add(x, ops.zeros((), dtype=x.dtype))


def clone_initializer(initializer):
    """A new initializer instance with the same config.

    Initializers are stateless, so sharing one instance between weights of
    the same shape would give them identical initial values.
    """
    return initializer.__class__.from_config(initializer.get_config())


# The initializer, regularizer and constraint arguments of our layers, in
# the order their configs list them.
KERAS_OBJECTS = (
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


# Those of a layer whose weights have no biases (AdditiveAttention).
KERNEL_OBJECTS = tuple(n for n in KERAS_OBJECTS if n.startswith("kernel_"))


def serialize_keras_objects(layer, names=KERAS_OBJECTS):
    """The config entries of `layer`'s initializers, regularizers and
    constraints, by attribute name."""
    config = {}
    for name in names:
        value = getattr(layer, name)
        if name.endswith("initializer"):
            config[name] = keras.initializers.serialize(value)
        elif name.endswith("regularizer"):
            config[name] = keras.regularizers.serialize(value)
        else:
            config[name] = keras.constraints.serialize(value)
    return config


class ValidatedLayer(keras.layers.Layer):
    """A Keras layer whose `from_config` validates the config first.

    Every field is checked by the subclass's constructor, which raises a
    `ValueError` naming the field and its value (Keras' default
    `from_config` would turn it into a `TypeError`); `_validation.layer_config`
    checks what the constructor does not: the config's type, unknown and
    missing keys, and the base layer's fields.
    """

    @classmethod
    def from_config(cls, config):
        """Validates the config, then builds the layer from it."""
        return cls(**_validation.layer_config(cls, config))


class PositionLayer(ValidatedLayer):
    """What our position layers share: inputs `(..., length, dim)`, an
    output of the inputs' shape, and the inputs' Keras mask passed on."""

    def _check_shape(self, shape):
        if len(shape) < 2:
            raise ValueError(
                "Argument `inputs` must have rank >= 2 (..., length, dim). "
                f"Received: inputs.shape={tuple(shape)}"
            )

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        self._check_shape(input_shape)
        return tuple(input_shape)

    def compute_output_spec(self, inputs, start_index=0):
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )


def check_additive_kernels(layer, names, query_shape, key_shape, units):
    """The Bahdanau projections' sizes, before any weight exists.

    `names`: the query and key projections' and inputs' names, e.g.
    `("query", "key")`.
    """
    query_name, key_name = names
    _validation.check_weight_shapes(
        layer,
        {
            f"{query_name}/kernel": (query_shape[-1] or 1, units),
            f"{key_name}/kernel": (key_shape[-1] or 1, units),
        },
        {
            "units": units,
            "query.shape": tuple(query_shape),
            f"{key_name.split('_')[0]}.shape": tuple(key_shape),
        },
    )


def add_scoring_weights(layer, normalize, use_bias, **v_kwargs):
    """Bahdanau's scoring vector `attention_v`, the weight-normalisation
    scale `attention_g` (tensorflow-addons' `normalize=True`) and the bias
    `attention_b` inside the tanh, created in tensorflow-addons' order."""
    layer.attention_v = layer.add_weight(
        name="attention_v",
        shape=(layer.units,),
        initializer=clone_initializer(layer.kernel_initializer),
        **v_kwargs,
    )
    layer.attention_g = None
    if normalize:
        layer.attention_g = layer.add_weight(
            name="attention_g",
            shape=(),
            initializer=keras.initializers.Constant(
                math.sqrt(1.0 / layer.units)
            ),
        )
    layer.attention_b = None
    if use_bias:
        layer.attention_b = layer.add_weight(
            name="attention_b", shape=(layer.units,), initializer="zeros"
        )


def scoring_vector(layer):
    """`v`, or `g * v / ||v||` with weight normalisation, in float32."""
    v = ops.cast(layer.attention_v, "float32")
    if layer.attention_g is not None:
        g = ops.cast(layer.attention_g, "float32")
        v = g * v * ops.rsqrt(ops.sum(ops.square(v)))
    return v
