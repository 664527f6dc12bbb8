"""The `Example:` sections of the public docstrings run and print what they
say."""

import doctest

import keras
import numpy as np
import pytest

from keras_attention.compat.tfa import (
    bahdanau_attention as tfa_bahdanau_attention,
)
from keras_attention.compat.tfa import conversion as tfa_conversion
from keras_attention.compat.tfa import (
    multi_head_attention as tfa_multi_head_attention,
)
from keras_attention.layers import additive_attention
from keras_attention.layers import attention_pooling
from keras_attention.layers import multi_head_attention
from keras_attention.layers import patch_embedding
from keras_attention.layers import position_embedding
from keras_attention.layers import sinusoidal_position_encoding
from keras_attention.layers import transformer_encoder
from keras_attention.ops import attention

MODULES = [
    attention,
    multi_head_attention,
    additive_attention,
    attention_pooling,
    tfa_multi_head_attention,
    tfa_bahdanau_attention,
    tfa_conversion,
    patch_embedding,
    position_embedding,
    sinusoidal_position_encoding,
    transformer_encoder,
]


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [
        t for t in finder.find(module, globs=vars(module).copy()) if t.examples
    ]
    assert tests, f"no examples in {module.__name__}"
    for test in tests:
        test.globs.update(keras=keras, np=np)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    assert result.attempted > 0
