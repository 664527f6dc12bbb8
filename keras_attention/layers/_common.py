"""Private helpers shared by the layers."""

import math
import numbers

import keras
from keras import ops

from keras_attention.ops import _checks


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


def check_mask(name, mask, target_shape, target_desc):
    """Validates an optional mask's static shape against `target_shape`."""
    if mask is None:
        return
    _checks.check_broadcastable(
        name, _checks.static_shape(mask), target_shape, target_desc
    )


def check_last_dim(name, shape, expected, built_with):
    """Raises when a built layer is called with a different feature size."""
    got = shape[-1]
    if got is not None and expected is not None and got != expected:
        raise ValueError(
            f"The last dimension of `{name}` must be {expected}, the size "
            f"the layer was built with ({built_with}). Received: "
            f"{name}.shape={tuple(shape)}"
        )


def serialize_common(layer, names):
    """Serializes `initializers`/`regularizers`/`constraints` attributes."""
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


def check_positive_number(name, value):
    """Raises unless `value` is a finite real number greater than zero."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not math.isfinite(float(value))
        or float(value) <= 0.0
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"positive number. Received: {name}={value!r}"
        )


def check_start_index(start_index, length=None, sequence_length=None):
    """Static checks of a position layer's `start_index` (an int or tensor).

    With `length` and `sequence_length` known, also checks that positions
    `start_index .. start_index + length - 1` exist.
    """
    if isinstance(start_index, bool):
        raise ValueError(
            "Received an invalid value for argument `start_index`, expected "
            f"a non-negative integer. Received: start_index={start_index!r}"
        )
    if isinstance(start_index, numbers.Integral):
        if start_index < 0:
            raise ValueError(
                "Received an invalid value for argument `start_index`, "
                "expected a non-negative integer. Received: "
                f"start_index={start_index}"
            )
        if sequence_length is not None and length is not None:
            if start_index + length > sequence_length:
                raise ValueError(
                    "The positions `start_index + sequence length` must not "
                    "exceed `sequence_length`, the number of positions the "
                    f"layer has. Received: start_index={start_index}, "
                    f"inputs sequence length={length}, "
                    f"sequence_length={sequence_length}"
                )
        return
    if len(_checks.static_shape(start_index)) != 0:
        raise ValueError(
            "Argument `start_index` must be a scalar (a Python int or a "
            "0-d integer tensor). Received: "
            f"start_index.shape={_checks.static_shape(start_index)}"
        )


_KINDS = {
    "_initializer": "initializers",
    "_regularizer": "regularizers",
    "_constraint": "constraints",
}


def set_keras_objects(layer, **identifiers):
    """Sets `layer.<name>` to the Keras object for each `<name>=identifier`.

    The kind (initializer, regularizer, constraint) comes from the name's
    suffix; a bad identifier raises a `ValueError` naming the argument.
    """
    for name, identifier in identifiers.items():
        kind = next(k for suffix, k in _KINDS.items() if name.endswith(suffix))
        setattr(layer, name, _checks.get_keras_object(kind, name, identifier))


class ValidatedLayer(keras.layers.Layer):
    """A Keras layer whose `from_config` validates the config first.

    Every field is checked by the subclass's constructor, which raises a
    `ValueError` naming the field and its value (Keras' default
    `from_config` would turn it into a `TypeError`); `_checks.layer_config`
    checks what the constructor does not: the config's type, unknown and
    missing keys, and the base layer's fields.
    """

    @classmethod
    def from_config(cls, config):
        """Validates the config, then builds the layer from it."""
        return cls(**_checks.layer_config(cls, config))
