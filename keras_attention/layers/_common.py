"""Private helpers shared by the layers."""

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
