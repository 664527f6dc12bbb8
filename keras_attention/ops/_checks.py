"""Static argument and shape checks shared by the ops and the layers.

Every check runs on static shapes and Python values only, so it costs nothing
at run time and fires before any tensor is allocated. Messages follow the Keras
style: they name the argument, say what was expected and what was received.
"""

import numbers

import numpy as np


def check_positive_int(name, value, allow_none=False):
    """Raises unless `value` is a positive Python integer (or None)."""
    if value is None and allow_none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Integral)
        or value <= 0
    ):
        expected = "a positive integer" + (" or `None`" if allow_none else "")
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected "
            f"{expected}. Received: {name}={value!r}"
        )


def check_rate(name, value):
    """Raises unless `value` is a real number in [0, 1)."""
    if (
        isinstance(value, bool)
        or not isinstance(value, numbers.Real)
        or not 0.0 <= float(value) < 1.0
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"float in the range [0, 1). Received: {name}={value!r}"
        )


def check_bool(name, value):
    if not isinstance(value, bool):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"Python bool. Received: {name}={value!r}"
        )


def check_seed(seed):
    """Raises unless `seed` is None or a Python integer."""
    if seed is not None and (
        isinstance(seed, bool) or not isinstance(seed, numbers.Integral)
    ):
        raise ValueError(
            "Received an invalid value for argument `seed`, expected an "
            f"integer or `None`. Received: seed={seed!r}"
        )


def check_chunk_size(chunk_size):
    """`chunk_size` is None (dense), "auto" or a positive integer."""
    if chunk_size is None or chunk_size == "auto":
        return
    if (
        isinstance(chunk_size, bool)
        or not isinstance(chunk_size, numbers.Integral)
        or chunk_size <= 0
    ):
        raise ValueError(
            "Received an invalid value for argument `chunk_size`, expected "
            '`None`, "auto" or a positive integer. Received: '
            f"chunk_size={chunk_size!r}"
        )


def check_rank(name, shape, ranks):
    """Raises unless `len(shape)` is one of `ranks`."""
    if len(shape) not in ranks:
        expected = " or ".join(str(r) for r in ranks)
        raise ValueError(
            f"Argument `{name}` must have rank {expected}. "
            f"Received: {name}.shape={tuple(shape)}"
        )


def check_dims_equal(name_a, dim_a, name_b, dim_b, what):
    """Raises when two static dims are known and differ."""
    if dim_a is not None and dim_b is not None and dim_a != dim_b:
        raise ValueError(
            f"The {what} of `{name_a}` and `{name_b}` must match. "
            f"Received: {name_a} {what}={dim_a}, {name_b} {what}={dim_b}"
        )


def check_broadcastable(name, shape, target_shape, target_desc):
    """Raises unless `shape` broadcasts to `target_shape` (NumPy rules).

    Unknown (None) dims are accepted on either side: they are checked at run
    time by the backend.
    """
    shape = tuple(shape)
    target_shape = tuple(target_shape)
    ok = len(shape) <= len(target_shape)
    if ok:
        for dim, target in zip(shape[::-1], target_shape[::-1]):
            if dim is None or target is None or dim == 1 or dim == target:
                continue
            ok = False
            break
    if not ok:
        raise ValueError(
            f"Argument `{name}` must be broadcastable to {target_desc} = "
            f"{target_shape}. Received: {name}.shape={shape}"
        )


def static_shape(x):
    """The static shape of a tensor, KerasTensor or array-like, as a tuple."""
    shape = getattr(x, "shape", None)
    if shape is None:
        shape = np.shape(x)
    return tuple(shape)
