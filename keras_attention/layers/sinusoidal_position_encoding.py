import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common


@keras.saving.register_keras_serializable(package="keras_attention")
class SinusoidalPositionEncoding(_common.PositionLayer):
    """Fixed sinusoidal position encodings, ready to add to the inputs.

    For position `p` and feature `i` of `dim` features, the encoding is
    `sin(p / max_wavelength ** (2 * (i // 2) / dim))` for even `i` and
    `cos(p / max_wavelength ** (2 * (i // 2) / dim))` for odd `i`
    (Vaswani et al., 2017, section 3.5: sine and cosine interleaved, with
    wavelengths from `2 * pi` to `2 * pi * max_wavelength`). The layer has
    no weights; it returns the encodings of positions `start_index, ...,
    start_index + length - 1` broadcast to the inputs' shape, so
    `x + SinusoidalPositionEncoding()(x)` adds them, for any length.

    What it adds over keras-hub's `SinePositionEncoding` (Keras core has
    none): the same encodings, but computed in float32 under every
    mixed-precision policy and only then cast to the compute dtype.
    keras-hub computes positions and angles in the compute dtype, where
    bfloat16 cannot even represent the positions above 256 exactly (and
    float16 those above 2048), so its encodings of long sequences are
    wrong, not just rounded. The inputs' Keras mask passes through to the
    output, so `keras.layers.Add()` keeps an `Embedding(mask_zero=True)`
    padding mask. No keras-hub dependency.

    Args:
        max_wavelength: positive number, the longest wavelength divided by
            `2 * pi` (`10000` in the paper).
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: `(batch_size, length, dim)` (any rank >= 2 works: the
            positions are on axis -2, the features on axis -1). Only the
            shape is used.
        start_index: int or 0-d integer tensor, the position of the first
            input step (default 0), e.g. the cache index when decoding one
            step at a time.

    Returns:
        The encodings broadcast to the inputs' shape, `(batch_size, length,
        dim)`, in the compute dtype.

    Example:

    >>> import numpy as np
    >>> layer = SinusoidalPositionEncoding()
    >>> encodings = layer(np.zeros((1, 3, 4), "float32"))
    >>> np.round(keras.ops.convert_to_numpy(encodings[0]), 4)
    array([[ 0.    ,  1.    ,  0.    ,  1.    ],
           [ 0.8415,  0.5403,  0.01  ,  1.    ],
           [ 0.9093, -0.4161,  0.02  ,  0.9998]], dtype=float32)

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762),
        "Attention Is All You Need", section 3.5.
    """

    def __init__(self, max_wavelength=10000, **kwargs):
        _validation.check_positive_number("max_wavelength", max_wavelength)
        super().__init__(**kwargs)
        self.supports_masking = True
        self.max_wavelength = max_wavelength
        self.built = True

    def call(self, inputs, start_index=0):
        self._check_shape(inputs.shape)
        _validation.check_start_index(start_index)
        shape = ops.shape(inputs)
        length, dim = shape[-2], shape[-1]
        # Everything in float32, whatever the compute dtype.
        positions = ops.arange(length, dtype="float32")
        if not (isinstance(start_index, numbers.Integral) and start_index == 0):
            positions = positions + ops.cast(start_index, "float32")
        features = ops.arange(dim, dtype="int32")
        exponents = ops.cast(2 * (features // 2), "float32") / ops.cast(
            dim, "float32"
        )
        inverse_wavelengths = ops.power(
            ops.cast(self.max_wavelength, "float32"), -exponents
        )
        angles = positions[:, None] * inverse_wavelengths[None, :]
        is_even = ops.equal(features % 2, 0)[None, :]
        encodings = ops.where(is_even, ops.sin(angles), ops.cos(angles))
        encodings = ops.cast(encodings, self.compute_dtype)
        return ops.broadcast_to(encodings, shape)

    def get_config(self):
        config = super().get_config()
        config.update({"max_wavelength": self.max_wavelength})
        return config
