"""The 32-bit hash behind sampling and chunked dropout: its exportable form
(no bitwise ops) gives the bitwise form's values, both equal lowbias32 in
NumPy, and the logical right shift reads int32 as unsigned."""

import numpy as np
import pytest
from keras import ops

from keras_attention.ops import _hash
from tests import reference
from tests.testing import to_numpy


def _int32_values():
    """Edge values (signs, the 16-bit halves' borders) and random ones."""
    edges = [0, 1, -1, 2**31 - 1, -(2**31), 65535, 65536, -65536, -65537]
    rng = np.random.default_rng(0)
    random = rng.integers(-(2**31), 2**31, size=10_000, dtype=np.int64)
    return np.concatenate([edges, random]).astype("int32")


@pytest.mark.parametrize("exportable", [False, True], ids=["bitwise", "export"])
def test_hash32_is_lowbias32(exportable):
    x = _int32_values()
    got = to_numpy(_hash.hash32(ops.convert_to_tensor(x), exportable))
    np.testing.assert_array_equal(got, reference.lowbias32(x))


@pytest.mark.parametrize("bits", [2, 9, 16, 31])
def test_logical_right_shift_reads_unsigned(bits):
    x = _int32_values()
    got = to_numpy(_hash.logical_right_shift(ops.convert_to_tensor(x), bits))
    want = (x.view("uint32") >> bits).astype("int32")
    np.testing.assert_array_equal(got, want)
