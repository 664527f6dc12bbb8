"""A 32-bit integer hash in `keras.ops`: the random bits of chunked dropout
(`ops/_chunked.py`) and of `TokenGenerator`'s sampling, the same on every
backend, eager or traced."""

from keras import ops

# lowbias32 (C. Wellons, "Prospecting for hash functions"), as int32.
MULTIPLIERS = (0x7FEB352D, 0x846CA68B - 2**32)
GOLDEN = 0x9E3779B9 - 2**32
SECOND = 0x85EBCA6B - 2**32


def hash32(x):
    """A 32-bit integer hash of int32 `x`, with wrapping multiplication."""
    for multiplier in MULTIPLIERS:
        x = ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))
        x = x * multiplier
    return ops.bitwise_xor(x, ops.bitwise_and(ops.right_shift(x, 16), 0xFFFF))
