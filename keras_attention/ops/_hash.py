"""A 32-bit integer hash in `keras.ops`: the random bits of chunked dropout
(`ops/_chunked.py`) and of `TokenGenerator`'s sampling, the same on every
backend, eager or traced."""

import numpy as np
from keras import ops

# lowbias32 (C. Wellons, "Prospecting for hash functions"), as int32.
MULTIPLIERS = (0x7FEB352D, 0x846CA68B - 2**32)
GOLDEN = 0x9E3779B9 - 2**32
SECOND = 0x85EBCA6B - 2**32

# `_XOR_BYTES[256 * a + b] == a ^ b` for bytes `a` and `b`.
_XOR_BYTES = np.bitwise_xor.outer(np.arange(256), np.arange(256))
_XOR_BYTES = _XOR_BYTES.astype("uint8").reshape(-1)


def hash32(x, exportable=False):
    """A 32-bit integer hash of int32 `x`, with wrapping multiplication.

    Args:
        x: int32 tensor.
        exportable: bool. If True, the same values without bitwise and/xor
            ops: the ONNX opset that Keras' exporter targets by default
            (15) has neither, and LiteRT's builtin ops have no bitwise
            and. The xor is looked up a byte at a time in a 64 KiB table,
            about ten times the ops: for the graphs that are exported
            (sampling), not for dropout.

    Returns:
        int32 tensor of `x`'s shape.
    """
    xorshift = _exportable_xorshift if exportable else _xorshift
    for multiplier in MULTIPLIERS:
        x = xorshift(x) * multiplier
    return xorshift(x)


def logical_right_shift(x, bits):
    """`x >> bits` of int32 `x` read as unsigned (zeros shifted in).

    From an arithmetic shift, an add and a select, which export everywhere
    (a bitwise and has no LiteRT builtin, nor ONNX op in opset 15). ONNX's
    `BitShift` takes unsigned integers only; tf2onnx shifts int32 as a
    sign-extended uint64 and casts back, an arithmetic shift.

    Args:
        x: int32 tensor.
        bits: int in `[2, 31]` (`2**(32 - bits)` is an int32).

    Returns:
        int32 tensor in `[0, 2**(32 - bits))`.
    """
    shifted = ops.right_shift(x, bits)
    return ops.where(x < 0, shifted + 2 ** (32 - bits), shifted)


def _xorshift(x):
    """`x ^ (x >>> 16)`."""
    return ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))


def _exportable_xorshift(x):
    """`x ^ (x >>> 16)` without bitwise ops: the high 16 bits stay, the low
    16 become `low ^ high`."""
    high = logical_right_shift(x, 16)
    low = x - ops.right_shift(x, 16) * 2**16  # in [0, 2**16)
    return (x - low) + _xor16(low, high)


def _xor16(a, b):
    """`a ^ b` for int32 `a` and `b` in `[0, 2**16)`, a byte at a time."""
    table = ops.convert_to_tensor(_XOR_BYTES)
    a_high, b_high = ops.right_shift(a, 8), ops.right_shift(b, 8)
    a_low, b_low = a - a_high * 256, b - b_high * 256
    high = ops.take(table, a_high * 256 + b_high)
    low = ops.take(table, a_low * 256 + b_low)
    return ops.cast(high, "int32") * 256 + ops.cast(low, "int32")
