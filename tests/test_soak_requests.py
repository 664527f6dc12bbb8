"""The soak's random requests are valid, and its output checks catch faults.

These run without TensorFlow (the soak itself is in `test_benchmarks.py`).
"""

import numpy as np
import pytest

from benchmarks.soak import RequestMaker
from benchmarks.soak import check_outputs


def _maker(max_batch=8):
    sample = {
        "tokens": np.array([[5, 9, 0, 0], [31, 1, 2, 0]], np.int32),
        "pixels": np.zeros((2, 3, 3, 1), np.uint8),
        "text": np.array([b"the food", b"was not bad"], dtype=object),
        "weights": np.array([[1.0, 3.0], [1.0, 3.0]], np.float32),
    }
    specs = {
        "tokens": ("int32", [None, None]),
        "pixels": ("uint8", [None, 3, 3, 1]),
        "text": ("string", [None]),
        "weights": ("float32", [None, None]),
    }
    return RequestMaker(sample, specs, max_batch)


def test_requests_are_valid():
    maker = _maker()
    rng = np.random.default_rng(0)
    batches, lengths = set(), set()
    for _ in range(300):
        request, batch = maker.make(rng)
        tokens = request["tokens"]
        batches.add(batch)
        lengths.add(tokens.shape[1])
        assert tokens.dtype == np.int32 and tokens.shape[0] == batch
        assert 0 <= tokens.min() and tokens.max() <= 31
        assert request["pixels"].shape == (batch, 3, 3, 1)
        assert request["pixels"].dtype == np.uint8
        for text in request["text"]:
            assert set(text.split()) <= {
                b"the",
                b"food",
                b"was",
                b"not",
                b"bad",
            }
        # Inputs that share an open axis share its size.
        assert request["weights"].shape == tokens.shape
        assert request["weights"].dtype == np.float32
    assert batches == set(range(1, 9))
    assert lengths == set(range(1, 9))  # 1 to twice the sample's 4


def test_padding_is_a_suffix():
    # Each row keeps a random prefix and is zero after it; 0 is also a
    # valid token, so about 1 in 32 positions inside the prefix is 0 too.
    maker = _maker()
    rng = np.random.default_rng(1)
    rows = padded = inner_zeros = inner = 0
    for _ in range(200):
        for row in maker.make(rng)[0]["tokens"]:
            nonzero = np.flatnonzero(row)
            end = nonzero[-1] + 1 if nonzero.size else 0
            rows += 1
            padded += end < row.size
            inner_zeros += int(np.sum(row[:end] == 0))
            inner += end
    assert padded / rows > 0.4
    assert inner_zeros / inner < 0.1


def test_largest_request():
    request, batch = _maker(max_batch=5).make(
        np.random.default_rng(0), largest=True
    )
    assert batch == 5
    assert request["tokens"].shape == (5, 8)
    assert request["pixels"].shape == (5, 3, 3, 1)


@pytest.mark.parametrize(
    "outputs, problem",
    [
        ({"p": np.ones((3, 2))}, None),
        ({"p": np.ones((2, 2))}, "shape (2, 2), batch 3"),
        ({"p": np.array(1.0)}, "shape (), batch 3"),
        ({"p": np.array([[1.0], [np.nan], [0.0]])}, "NaN or Inf"),
        ({"p": np.array([[1.0], [np.inf], [0.0]])}, "NaN or Inf"),
        ({"s": np.array([b"a", b"b", b"c"], dtype=object)}, None),
    ],
)
def test_check_outputs(outputs, problem):
    got = check_outputs(outputs, batch=3)
    if problem is None:
        assert got is None
    else:
        assert problem in got
