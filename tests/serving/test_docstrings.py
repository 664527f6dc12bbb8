"""The `Example:` sections of `keras_attention.serving` run."""

import doctest
import os

import keras
import numpy as np
import pytest

import keras_attention
from keras_attention.serving import _check
from keras_attention.serving import _config
from keras_attention.serving import _export

pytestmark = pytest.mark.tensorflow_only


@pytest.mark.parametrize(
    "module", [_export, _config, _check], ids=lambda m: m.__name__
)
def test_serving_docstring_examples_run(module):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    tests = [t for t in finder.find(module) if t.examples]
    assert tests, f"no examples in {module.__name__}"
    for test in tests:
        test.globs.update(
            keras=keras, np=np, os=os, keras_attention=keras_attention
        )
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    assert result.attempted > 0
