"""`keras_attention.compat.keras_hub.convert_causal_lm` on tiny GPT-2 and
Llama models: our layers, keras-hub's numbers, no `slice_update` (no XLA op
on TensorFlow) in the cached step, `.keras` saving. Its errors are in the
bad-input catalogue (tests/test_bad_inputs.py)."""

import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_attention import GroupedQueryAttention
from keras_attention import MultiHeadAttention
from tests.testing import import_keras_hub
from tests.testing import tiny_causal_lm
from tests.testing import to_numpy

keras_hub = import_keras_hub()

from keras_attention.compat.keras_hub import convert_causal_lm  # noqa: E402

FAMILIES = ("gpt2", "llama")
# The attention class in each family's decoder, keras-hub's and ours.
KERAS_HUB_ATTENTION = {
    "gpt2": "CachedMultiHeadAttention",
    "llama": "LlamaAttention",
}
OUR_ATTENTION = {"gpt2": MultiHeadAttention, "llama": GroupedQueryAttention}
TOL = 1e-5
BATCH, LENGTH, PROMPT = 2, 10, 6


def _attention(model):
    """The self-attention layers of `model`'s decoder blocks, ours without
    the adapter that keeps keras-hub's call."""
    layers = []
    for block in model.backbone.transformer_layers:
        layer = block._self_attention_layer
        layers.append(getattr(layer, "attention", layer))
    return layers


def _tokens(seed=0):
    return np.random.default_rng(seed).integers(1, 64, (BATCH, LENGTH))


def _empty_cache(model, token_ids):
    """A zero cache of the shape keras-hub's `_build_cache` makes."""
    _, cache = model._build_cache(token_ids)
    return np.zeros(tuple(cache.shape), "float32")


def _assert_all_close(got, want, what):
    for name, g, w in zip(("logits", "hidden states", "cache"), got, want):
        np.testing.assert_allclose(
            to_numpy(g),
            to_numpy(w),
            atol=TOL,
            rtol=0,
            err_msg=f"{what}: {name}",
        )


@pytest.mark.parametrize("family", FAMILIES)
def test_attention_becomes_ours_and_the_original_is_untouched(family):
    model = tiny_causal_lm(family)
    weights = [np.copy(w) for w in model.get_weights()]
    originals = _attention(model)
    converted = convert_causal_lm(model)
    assert isinstance(converted, type(model))
    assert isinstance(converted, keras_hub.models.CausalLM)
    assert all(type(a) is OUR_ATTENTION[family] for a in _attention(converted))
    # The original: the same keras-hub layers, the same weights, even after
    # the copy's weights change (no shared buffers).
    assert _attention(model) == originals
    assert {type(a).__name__ for a in originals} == {
        KERAS_HUB_ATTENTION[family]
    }
    for variable in converted.weights:
        variable.assign(np.zeros(variable.shape, variable.dtype))
    for got, want in zip(model.get_weights(), weights):
        np.testing.assert_array_equal(got, want)
    # The copy tracks our layers' variables (`generate` on JAX passes them
    # by position), and not those of the keras-hub layers they replaced.
    tracked = {id(v) for v in converted.trainable_variables}
    ours = {id(v) for a in _attention(converted) for v in a.trainable_variables}
    assert ours <= tracked
    assert len(tracked) == len(model.trainable_variables)


@pytest.mark.parametrize("family", FAMILIES)
def test_call_with_cache_matches_keras_hub(family):
    model = tiny_causal_lm(family)
    converted = convert_causal_lm(model)
    token_ids = _tokens()
    cache = _empty_cache(model, token_ids)
    want = model.call_with_cache(token_ids[:, :PROMPT], cache, 0)
    got = converted.call_with_cache(token_ids[:, :PROMPT], cache, 0)
    _assert_all_close(got, want, "prefill")
    for index in range(PROMPT, LENGTH):
        step = token_ids[:, index : index + 1]
        want = model.call_with_cache(step, want[2], index)
        got = converted.call_with_cache(step, got[2], index)
        _assert_all_close(got, want, f"step {index}")
    # `_build_cache`: the prefill of a whole padded prompt.
    for got, want in zip(
        converted._build_cache(token_ids), model._build_cache(token_ids)
    ):
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=TOL)


@pytest.mark.parametrize("family", FAMILIES)
def test_forward_matches_keras_hub(family):
    model = tiny_causal_lm(family)
    converted = convert_causal_lm(model)
    padding_mask = np.ones((BATCH, LENGTH), bool)
    padding_mask[1, 7:] = False
    inputs = {"token_ids": _tokens(), "padding_mask": padding_mask}
    np.testing.assert_allclose(
        to_numpy(converted(inputs)), to_numpy(model(inputs)), atol=TOL
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_greedy_generate_gives_keras_hub_tokens(family):
    model = tiny_causal_lm(family)
    converted = convert_causal_lm(model)
    prompt_length = 4
    token_ids = np.zeros((BATCH, 12), "int32")
    token_ids[:, :prompt_length] = _tokens(1)[:, :prompt_length]
    inputs = {"token_ids": token_ids, "padding_mask": token_ids > 0}
    outputs = []
    for lm in (model, converted):
        lm.compile(sampler="greedy")
        outputs.append(lm.generate(inputs, stop_token_ids=None)["token_ids"])
    np.testing.assert_array_equal(outputs[1], outputs[0])
    assert (outputs[0][:, prompt_length:] > 0).any()  # it generated


@pytest.mark.parametrize("family", FAMILIES)
def test_cached_path_has_no_slice_update(family, monkeypatch):
    model = tiny_causal_lm(family)
    converted = convert_causal_lm(model)

    def slice_update(*args, **kwargs):
        raise AssertionError("ops.slice_update called")

    monkeypatch.setattr(keras.ops, "slice_update", slice_update)
    token_ids = _tokens()
    _, cache = converted._build_cache(token_ids)
    converted.call_with_cache(token_ids[:, :1], cache, 3)
    with pytest.raises(AssertionError, match="slice_update"):
        model._build_cache(token_ids)  # keras-hub's own writes


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("family", FAMILIES)
def test_cached_step_graph_has_no_xla_op(family):
    import tensorflow as tf

    model = tiny_causal_lm(family)
    converted = convert_causal_lm(model)
    cache = _empty_cache(model, _tokens())

    def xla_ops(lm):
        step = tf.function(lm.call_with_cache, autograph=False)
        graph = step.get_concrete_function(
            tf.TensorSpec((BATCH, 1), "int32"),
            tf.TensorSpec(cache.shape, "float32"),
            tf.TensorSpec((), "int32"),
        ).graph
        return {
            op.type
            for op in graph.get_operations()
            if op.type.startswith("Xla")
        }

    assert xla_ops(model) == {"XlaDynamicUpdateSlice"}  # the test can fail
    assert xla_ops(converted) == set()


# keras-hub's causal LMs override `compile`, so Keras does not recompile
# them on loading, and says so.
@pytest.mark.filterwarnings("ignore:`compile\\(\\)` was not called:UserWarning")
@pytest.mark.parametrize("family", FAMILIES)
def test_saves_loads_and_converts_again(family, tmp_path):
    converted = convert_causal_lm(tiny_causal_lm(family))
    path = os.path.join(tmp_path, "converted.keras")
    converted.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded) is type(converted)
    assert all(type(a) is OUR_ATTENTION[family] for a in _attention(loaded))
    again = convert_causal_lm(loaded)
    assert type(again) is type(converted)
    inputs = {
        "token_ids": _tokens(),
        "padding_mask": np.ones((BATCH, LENGTH), bool),
    }
    for model in (loaded, again):
        np.testing.assert_array_equal(
            to_numpy(model(inputs)), to_numpy(converted(inputs))
        )


def test_importing_compat_does_not_import_keras_hub():
    code = (
        "import sys, keras_attention.compat; "
        "assert 'keras_hub' not in sys.modules, 'keras_hub imported'"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr[-2000:]


# GPT-2 only: Llama's cached path is the same in every other test here,
# and an export with its check costs about 13 s.
@pytest.mark.tensorflow_only
@pytest.mark.parametrize("family", ["gpt2"])
def test_served_generation_gives_keras_hubs_greedy_tokens(family, tmp_path):
    """The converted model in a `TokenGenerator`, exported as a SavedModel:
    TF's v1 loader, with `keras` (so keras-hub) and `keras_attention`
    blocked, generates what keras-hub's own `generate` gives on the
    original model."""
    import json

    import tensorflow as tf

    import keras_attention
    from keras_attention import serving

    keras.utils.set_random_seed(5)
    model = tiny_causal_lm(family)
    prompts = _tokens(1)[:, :4].astype("int32")  # equal lengths
    buffer = np.zeros((BATCH, LENGTH), "int32")
    buffer[:, :4] = prompts
    model.compile(sampler="greedy")
    want = model.generate(
        {"token_ids": buffer, "padding_mask": buffer > 0}, stop_token_ids=None
    )["token_ids"]
    converted = convert_causal_lm(model)
    generator = keras_attention.TokenGenerator(
        converted, LENGTH, sampler="greedy"
    )

    @tf.function(
        input_signature=[tf.TensorSpec([None, 4], tf.int32, name="prompt_ids")],
        autograph=False,
    )
    def serve(prompt_ids):
        return {"token_ids": generator(prompt_ids)}

    path = serving.export_saved_model(
        converted,
        tmp_path / family,
        signatures={"serving_default": serve},
        warmup_inputs={"prompt_ids": prompts},
    )
    request = tmp_path / "request.json"
    request.write_text(json.dumps({"inputs": {"prompt_ids": prompts.tolist()}}))
    expected = tmp_path / "expected.npz"
    np.savez(expected, token_ids=np.asarray(want))
    result = serving.check(
        path, inputs=str(request), expect=str(expected), capture=True
    )
    assert result.returncode == 0, result.stdout + result.stderr
