"""Private helpers shared by the layers."""

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
