"""The `Example:` sections of the public docstrings run and print what they
say. The modules are found by walking the package: every module that
defines a public name (one exported by `keras_attention`,
`keras_attention.ops`, `keras_attention.compat.tfa`,
`keras_attention.distribution` or `keras_attention.samplers`) must have
examples, and every module with examples runs them.
`keras_attention.serving` needs TensorFlow:
`tests/serving/test_docstrings.py`. `keras_attention.compat.keras_hub`
needs keras-hub, a test dependency: it is left out where keras-hub is not
installed."""

import doctest
import importlib
import importlib.util
import pkgutil

import keras
import numpy as np
import pytest

import keras_attention
import keras_attention.compat.tfa
import keras_attention.distribution
import keras_attention.ops
import keras_attention.samplers

_HAS_KERAS_HUB = importlib.util.find_spec("keras_hub") is not None


def _modules():
    names = [
        info.name
        for info in pkgutil.walk_packages(
            keras_attention.__path__, "keras_attention."
        )
        if ".serving" not in info.name
        and (".compat.keras_hub" not in info.name or _HAS_KERAS_HUB)
    ]
    return [importlib.import_module(name) for name in sorted(names)]


def _examples(module):
    finder = doctest.DocTestFinder()
    tests = finder.find(module, globs=vars(module).copy())
    # Only the module's own objects (not re-exported ones).
    return [t for t in tests if t.examples and t.filename == module.__file__]


MODULES = [m for m in _modules() if _examples(m)]


def test_every_module_of_a_public_name_has_examples():
    public = set()
    for package in (
        keras_attention,
        keras_attention.ops,
        keras_attention.compat.tfa,
        keras_attention.distribution,
        keras_attention.samplers,
    ):
        for name in package.__all__:
            obj = getattr(package, name)
            if callable(obj):
                public.add(obj.__module__)
    assert public, "no public names found"
    with_examples = {m.__name__ for m in MODULES}
    assert public <= with_examples, sorted(public - with_examples)


@pytest.mark.parametrize("module", MODULES, ids=lambda m: m.__name__)
def test_docstring_examples_run(module):
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _examples(module):
        test.globs.update(keras=keras, np=np)
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0
    assert result.attempted > 0
