"""`MultiHeadAttention`'s rooms: the call folds its mask and bias to the
kernel's layout once, and the rows it zeroes come from the very tensors the
kernel saw; the layer file and its `call` stay within their line budgets.
"""

import ast
from pathlib import Path

import numpy as np
import pytest

from keras_attention.layers import _kernel_layout
from keras_attention.layers import multi_head_attention
from tests.testing import to_numpy

SOURCE = Path(multi_head_attention.__file__)
MAX_FILE_LINES = 950
MAX_CALL_LINES = 80


def test_multi_head_attention_stays_within_its_line_budgets():
    lines = SOURCE.read_text().splitlines()
    assert len(lines) <= MAX_FILE_LINES
    tree = ast.parse("\n".join(lines))
    (layer,) = [
        node
        for node in tree.body
        if isinstance(node, ast.ClassDef) and node.name == "MultiHeadAttention"
    ]
    (call,) = [
        node
        for node in layer.body
        if isinstance(node, ast.FunctionDef) and node.name == "call"
    ]
    assert call.end_lineno - call.lineno + 1 <= MAX_CALL_LINES


@pytest.mark.parametrize(
    "shape, attention_axes",
    [((2, 5, 8), None), ((2, 3, 4, 8), (1, 2)), ((2, 3, 4, 8), (2,))],
    ids=["sequence", "2d_axes", "one_of_two_axes"],
)
def test_mask_and_bias_are_folded_once_and_shared(
    monkeypatch, rng, shape, attention_axes
):
    layer = multi_head_attention.MultiHeadAttention(
        num_heads=2, key_dim=4, attention_axes=attention_axes
    )
    x = rng.normal(size=shape).astype("float32")
    layer(x, x)  # build
    folds, kernel_masks, zeroing_masks = [], [], []
    fold = _kernel_layout.KernelLayout.operands
    zero = _kernel_layout.KernelLayout.zero_masked_rows
    attend = multi_head_attention.scaled_dot_product_attention

    def recording_fold(self, *args):
        folds.append(args)
        return fold(self, *args)

    def recording_zero(self, output, query, key, operands, *positions):
        zeroing_masks.append((operands.mask, operands.bias))
        return zero(self, output, query, key, operands, *positions)

    def recording_attend(*args, **kwargs):
        kernel_masks.append((kwargs["mask"], kwargs["bias"]))
        return attend(*args, **kwargs)

    monkeypatch.setattr(_kernel_layout.KernelLayout, "operands", recording_fold)
    monkeypatch.setattr(
        _kernel_layout.KernelLayout, "zero_masked_rows", recording_zero
    )
    monkeypatch.setattr(
        multi_head_attention, "scaled_dot_product_attention", recording_attend
    )
    # Scores shape: (batch, <other dims>, heads, <target>, <source>).
    axes = layer._kernel_layout.axes
    target = tuple(shape[a] for a in axes)
    mask = rng.random(size=(shape[0],) + target + target) > 0.3
    bias = rng.normal(size=(2,) + target + target).astype("float32")
    bias[0, ..., 0] = -np.inf
    output = layer(x, x, attention_mask=mask, attention_bias=bias)
    assert len(folds) == 1
    ((kernel_mask, kernel_bias),) = kernel_masks
    ((zeroing_mask, zeroing_bias),) = zeroing_masks
    assert kernel_mask is zeroing_mask and kernel_bias is zeroing_bias
    assert np.isfinite(to_numpy(output)).all()
