import numbers

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common


def rotary_positions(length, start_index=0):
    """The float32 positions `start_index + arange(length)`.

    `length` is an int or a 0-d tensor (e.g. `ops.shape(x)[1]`);
    `start_index` an int, a float or a 0-d tensor, which may be traced
    (the loop index of `ops.fori_loop` or `ops.while_loop` when decoding one
    step at a time).
    """
    positions = ops.arange(length, dtype="float32")
    return positions + ops.cast(start_index, "float32")


def apply_rotary(
    x, positions, max_wavelength=10000, scaling_factor=1.0, compute_dtype=None
):
    """Rotates `x` by the rotary position embedding of `positions`.

    The attention layers call this on their projected queries and keys; the
    `RotaryEmbedding` layer calls it after moving its axes into place.

    Feature `i` of the first half of the last axis and feature `i + d / 2`
    of the second half form a pair, rotated by the angle
    `position * max_wavelength ** (-2 * i / d) / scaling_factor`
    (keras-hub's "linear" RoPE, with rotating halves). The angles, their
    cosines and sines are computed in float32, the cosines and sines are
    then cast to `compute_dtype`, where the rotation happens.

    Args:
        x: `(batch, length, heads, head_dim)`; any number of axes between
            `length` and `head_dim` (none included) broadcast the same way.
            `head_dim` must be even (not checked here).
        positions: `(length,)` or `(batch, length)` integer or float
            positions, e.g. `rotary_positions(length, start_index)`. A
            batch size of 1 broadcasts.
        max_wavelength: positive number, the base of the frequencies.
        scaling_factor: positive number that all positions are divided by.
        compute_dtype: the dtype of the rotation and of the result; `None`
            means `x.dtype`.

    Returns:
        The rotated `x`, of the same shape, in `compute_dtype`.
    """
    if compute_dtype is None:
        compute_dtype = x.dtype
    x = ops.cast(x, compute_dtype)
    rank = len(x.shape)
    head_dim = ops.shape(x)[-1]
    exponents = ops.arange(0, head_dim, 2, dtype="float32") / ops.cast(
        head_dim, "float32"
    )
    inverse_freq = ops.power(
        ops.cast(max_wavelength, "float32"), -exponents
    ) / ops.cast(scaling_factor, "float32")
    positions = ops.cast(positions, "float32")
    if len(positions.shape) == 1:
        positions = positions[None, :]
    angles = positions[:, :, None] * inverse_freq[None, None, :]
    angles = ops.concatenate([angles, angles], axis=-1)
    # (batch, length, 1, ..., 1, head_dim), to broadcast over the heads.
    angles = ops.reshape(
        angles,
        (ops.shape(angles)[0], ops.shape(angles)[1])
        + (1,) * (rank - 3)
        + (ops.shape(angles)[2],),
    )
    cos = ops.cast(ops.cos(angles), compute_dtype)
    sin = ops.cast(ops.sin(angles), compute_dtype)
    x1, x2 = ops.split(x, 2, axis=-1)
    rotated_halves = ops.concatenate([-x2, x1], axis=-1)
    return x * cos + rotated_halves * sin


def _check_axis(name, value):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected an "
            f"integer axis. Received: {name}={_validation.short_repr(value)}"
        )


@keras.saving.register_keras_serializable(package="keras_attention")
class RotaryEmbedding(_common.ValidatedLayer):
    """Rotary position embedding (RoPE): rotates features by their position.

    The feature axis (of even size `d`) is split into two halves, and
    feature `i` of the first half and feature `i + d / 2` of the second
    form a pair that is rotated by the angle
    `position * max_wavelength ** (-2 * i / d) / scaling_factor`:
    `x * cos + concatenate([-x2, x1]) * sin`, with `x1`, `x2` the halves.
    Applied to queries and keys, the rotation makes their dot products
    depend on the positions' difference only. The layer has no weights;
    positions run from `start_index` along `sequence_axis` unless
    `positions` gives them, and the other axes (batch, heads) broadcast.
    The inputs' Keras mask passes through to the output.

    What it adds over keras-hub's `RotaryEmbedding` (Keras core has none):
    the same numerics as its default `rope_type="linear"`, but without a
    keras-hub dependency, and every argument is checked before anything is
    computed, with a `ValueError` that names it: `max_wavelength` and
    `scaling_factor` (positive finite numbers), the two axes against the
    inputs' rank, an odd feature size, and the shape of `positions`, which
    keras-hub leaves to fail (or broadcast silently) in the arithmetic.

    Dtype: angles, cosines and sines are computed in float32, then the
    cosines and sines are cast to the compute dtype, in which the rotation
    happens, as keras-hub does. Under a mixed-precision policy, Keras
    casts floating `positions` to the compute dtype before the call, so
    pass integer positions (kept exact) there.

    Args:
        max_wavelength: positive number, the base of the geometric sequence
            of wavelengths (`10000` in the paper).
        scaling_factor: positive number that divides every position
            (linear position interpolation, for context extension). `1.0`:
            no scaling.
        sequence_axis: int, the axis of the positions in the inputs.
        feature_axis: int, the axis of the features (rotated in pairs).
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: a tensor of rank >= 3, e.g. `(batch_size, length, dim)`,
            `(batch_size, length, num_heads, head_dim)` or, with
            `sequence_axis=2`, `(batch_size, num_heads, length, head_dim)`.
            The feature size must be even.
        start_index: int or 0-d integer tensor, the position of the first
            step (default 0), e.g. the cache index when decoding one step
            at a time. Ignored when `positions` is given.
        positions: optional `(length,)` or `(batch_size, length)` integer
            or float tensor, the positions of the steps (e.g. for packed
            sequences or left padding), instead of `start_index`. The batch
            is the first axis of the inputs that is neither
            `sequence_axis` nor `feature_axis`.

    Returns:
        The rotated inputs, of the same shape, in the compute dtype.

    Example:

    >>> import numpy as np
    >>> layer = RotaryEmbedding()
    >>> # With 2 features, [1, 0] at position p rotates to [cos p, sin p].
    >>> x = np.tile(np.array([1.0, 0.0], "float32"), (1, 3, 1))
    >>> np.round(keras.ops.convert_to_numpy(layer(x))[0], 4)
    array([[ 1.    ,  0.    ],
           [ 0.5403,  0.8415],
           [-0.4161,  0.9093]], dtype=float32)
    >>> # Queries and keys (batch, length, num_heads, head_dim).
    >>> query = np.random.normal(size=(2, 5, 4, 8)).astype("float32")
    >>> tuple(layer(query, start_index=3).shape)
    (2, 5, 4, 8)

    Reference:
        [Su et al., 2021](https://arxiv.org/abs/2104.09864), "RoFormer:
        Enhanced Transformer with Rotary Position Embedding".
    """

    def __init__(
        self,
        max_wavelength=10000,
        scaling_factor=1.0,
        sequence_axis=1,
        feature_axis=-1,
        **kwargs,
    ):
        _validation.check_positive_number("max_wavelength", max_wavelength)
        _validation.check_positive_number("scaling_factor", scaling_factor)
        _check_axis("sequence_axis", sequence_axis)
        _check_axis("feature_axis", feature_axis)
        if sequence_axis == feature_axis:
            raise ValueError(
                "Arguments `sequence_axis` and `feature_axis` must be "
                f"different axes. Received: sequence_axis={sequence_axis}, "
                f"feature_axis={feature_axis}"
            )
        super().__init__(**kwargs)
        self.supports_masking = True
        self.max_wavelength = max_wavelength
        self.scaling_factor = scaling_factor
        self.sequence_axis = int(sequence_axis)
        self.feature_axis = int(feature_axis)
        self.built = True

    def _axes(self, shape):
        """The two axes as non-negative ints, checked against `shape`."""
        rank = len(shape)
        if rank < 3:
            raise ValueError(
                "Argument `inputs` must have rank >= 3, e.g. (batch_size, "
                "length, dim) or (batch_size, length, num_heads, head_dim). "
                f"Received: inputs.shape={tuple(shape)}"
            )
        axes = []
        for name, axis in (
            ("sequence_axis", self.sequence_axis),
            ("feature_axis", self.feature_axis),
        ):
            if not -rank <= axis < rank:
                raise ValueError(
                    f"Received an invalid value for argument `{name}`, "
                    f"expected an axis of inputs of rank {rank}, in "
                    f"[{-rank}, {rank - 1}]. Received: {name}={axis}, "
                    f"inputs.shape={tuple(shape)}"
                )
            axes.append(axis % rank)
        sequence_axis, feature_axis = axes
        if sequence_axis == feature_axis:
            raise ValueError(
                "Arguments `sequence_axis` and `feature_axis` must be "
                f"different axes of the inputs. Received: sequence_axis="
                f"{self.sequence_axis}, feature_axis={self.feature_axis}, "
                f"inputs.shape={tuple(shape)}"
            )
        dim = shape[feature_axis]
        if dim is not None and dim % 2:
            raise ValueError(
                "Argument `inputs` must have an even feature size: RoPE "
                "rotates the features in pairs, so it needs an even head "
                f"dimension. Received: inputs.shape={tuple(shape)} with "
                f"feature_axis={self.feature_axis} of size {dim}"
            )
        return sequence_axis, feature_axis

    def _check_positions(self, positions, shape, sequence_axis, feature_axis):
        if positions is None:
            return
        dtype = _validation.dtype_name(positions)
        if not dtype.startswith(("int", "uint", "float", "bfloat")):
            raise ValueError(
                "Argument `positions` must hold integer or float positions. "
                f"Received: positions.dtype={dtype}"
            )
        batch_axis = min(set(range(len(shape))) - {sequence_axis, feature_axis})
        length, batch = shape[sequence_axis], shape[batch_axis]
        got = _validation.static_shape(positions)
        ok = len(got) in (1, 2)
        if ok and None not in (got[-1], length) and got[-1] != length:
            ok = False
        if ok and len(got) == 2 and got[0] not in (None, 1, batch):
            ok = batch is None
        if not ok:
            raise ValueError(
                "Argument `positions` must have shape (length,) or "
                f"(batch_size, length) = {(batch, length)} for inputs of "
                f"shape {tuple(shape)} with sequence_axis="
                f"{self.sequence_axis}. Received: positions.shape={got}"
            )

    def call(self, inputs, start_index=0, positions=None):
        sequence_axis, feature_axis = self._axes(inputs.shape)
        _validation.check_start_index(start_index)
        self._check_positions(
            positions, inputs.shape, sequence_axis, feature_axis
        )
        rank = len(inputs.shape)
        moved = (sequence_axis, feature_axis) != (1, rank - 1)
        x = inputs
        if moved:
            x = ops.moveaxis(x, (sequence_axis, feature_axis), (1, -1))
        if positions is None:
            positions = rotary_positions(ops.shape(x)[1], start_index)
        x = apply_rotary(
            x,
            positions,
            max_wavelength=self.max_wavelength,
            scaling_factor=self.scaling_factor,
            compute_dtype=self.compute_dtype,
        )
        if moved:
            x = ops.moveaxis(x, (1, -1), (sequence_axis, feature_axis))
        return x

    def compute_output_shape(self, input_shape):
        self._axes(input_shape)
        return tuple(input_shape)

    def compute_output_spec(self, inputs, start_index=0, positions=None):
        sequence_axis, feature_axis = self._axes(inputs.shape)
        _validation.check_start_index(start_index)
        self._check_positions(
            positions, inputs.shape, sequence_axis, feature_axis
        )
        return keras.KerasTensor(tuple(inputs.shape), dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "max_wavelength": self.max_wavelength,
                "scaling_factor": self.scaling_factor,
                "sequence_axis": self.sequence_axis,
                "feature_axis": self.feature_axis,
            }
        )
        return config
