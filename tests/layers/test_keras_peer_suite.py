"""Keras' own attention tests, run against our classes.

The test modules are generated at test time from the installed Keras
package's files (`keras/src/layers/attention/*_test.py`); nothing of them is
copied into this repository. The class under test is swapped for ours by
rewriting `layers.<Name>` in the source, and the module is compiled and its
test classes are collected from here.

Set `KA_PEER_TARGET=keras` to run the same selection against Keras' own
classes, for comparison.

Excluded (features this package does not implement): LoRA, quantization and
`DTypePolicyMap`; the tests are listed by name in `EXCLUDED`.
"""

import importlib.util
import os
import pathlib
import re
import types

import keras
import pytest

import keras_attention

# name in `keras.src.layers` -> installed test file.
SUITES = {
    "MultiHeadAttention": "multi_head_attention_test.py",
    "GroupedQueryAttention": "grouped_query_attention_test.py",
}

# The only tests left out: LoRA, quantization and DTypePolicyMap.
EXCLUDED = {
    "MultiHeadAttention": (
        "test_lora",
        "test_dtype_policy_map",
        "test_quantize_int8",
    ),
    "GroupedQueryAttention": (),
}

TARGET = os.environ.get("KA_PEER_TARGET", "keras_attention")


def _test_file(filename):
    spec = importlib.util.find_spec("keras.src.layers.attention")
    return pathlib.Path(spec.submodule_search_locations[0]) / filename


def _generate(name, filename):
    """Compiles Keras' test file with `layers.<name>` pointing at ours."""
    path = _test_file(filename)
    source = path.read_text()
    if TARGET != "keras":
        pattern = rf"\blayers\.{name}\b"
        assert re.search(pattern, source), f"{path} never uses {name}"
        source = re.sub(pattern, f"_keras_attention.{name}", source)
        source = "import keras_attention as _keras_attention\n" + source
    module = types.ModuleType(f"keras_peer_{name}")
    module.__file__ = str(path)
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module


def _collect():
    classes = {}
    for name, filename in SUITES.items():
        module = _generate(name, filename)
        for attr, value in vars(module).items():
            if isinstance(value, type) and issubclass(
                value, keras.src.testing.TestCase
            ):
                if value.__module__ != module.__name__:
                    continue
                for test in EXCLUDED[name]:
                    assert hasattr(value, test), f"{attr}.{test} is gone"
                    delattr(value, test)
                value.__module__ = __name__
                value.__qualname__ = f"{attr}"
                classes[attr] = value
    return classes


globals().update(_collect())


def test_suites_target_our_classes():
    """The generated classes test ours (unless KA_PEER_TARGET=keras)."""
    if TARGET == "keras":
        pytest.skip("KA_PEER_TARGET=keras: the suites test Keras' classes")
    for name in SUITES:
        module = _generate(name, SUITES[name])
        assert module._keras_attention is keras_attention
        assert hasattr(keras_attention, name)
