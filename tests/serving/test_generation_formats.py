"""`TokenGenerator` through Keras' own ONNX and LiteRT exporters.

A small `CharTransformerLM` (examples/text_generation.py) decodes greedily,
by seeded top-k sampling, by seeded top-p sampling with a repetition
penalty and a two-token stop sequence, and by beam search (the best beam,
and every beam with its score); the exported files, run on onnxruntime and
on the LiteRT interpreter (builtin ops only, no Flex delegate), give
exactly the Keras model's tokens. The sampling hash is checked op by op on
each runtime first, on int32 inputs that cover negative values, and a
cached attention with a padding mask of run-time length (what a
hand-written decoding loop passes) converts too: it once crashed LiteRT's
converter.
"""

import keras
import numpy as np
import pytest
from keras import ops

import keras_attention as ka
from keras_attention import samplers
from keras_attention.ops import _hash
from keras_attention.serving import _runtimes
from tests import reference
from tests.examples._runner import import_example
from tests.testing import to_numpy

# Keras exports to ONNX and LiteRT through TensorFlow here.
pytestmark = pytest.mark.tensorflow_only
tf = pytest.importorskip("tensorflow")
pytest.importorskip("tf2onnx")
pytest.importorskip("onnxruntime")
pytest.importorskip("ai_edge_litert")

MAX_LENGTH = 12
# Left-padded prompts (padding id 0) at two batch sizes and lengths.
PROMPTS = [
    np.array([[0, 0, 3, 4, 5, 6], [1, 2, 3, 4, 5, 6]], "int32"),
    np.array([[0, 7], [9, 8], [0, 2]], "int32"),
]
SEEDS = [7, 123456789]
# name: (sampler, whether to add a stop sequence), for the sampled tokens.
SAMPLED = {
    "top_k": lambda: (samplers.TopKSampler(k=5), None),
    "top_p": lambda: (
        samplers.TopPSampler(
            p=0.9,
            temperature=0.8,
            logits_processors=[samplers.RepetitionPenalty(1.3)],
        ),
        True,
    ),
}
# format: (file name, runner)
FORMATS = {
    "onnx": ("model.onnx", _runtimes.run_exported),
    "litert": ("model.tflite", _runtimes.run_exported),
}


def _export(model, path, format, input_signature=None):
    kwargs = {}
    if format == "litert":
        kwargs["target_spec"] = {
            "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]
        }
    if input_signature is not None:
        kwargs["input_signature"] = input_signature
    model.export(str(path), format=format, verbose=False, **kwargs)


@pytest.fixture(scope="module")
def language_model():
    keras.utils.set_random_seed(0)
    text_generation = import_example("text_generation")
    model = text_generation.CharTransformerLM(
        20,
        hidden_dim=16,
        num_layers=1,
        num_heads=2,
        num_key_value_heads=1,
        intermediate_dim=32,
    )
    model(np.zeros((1, 4), "int32"))
    return model


def _int32_values():
    """Edge values (signs, the 16-bit halves' borders) and random ones."""
    edges = [0, 1, -1, 2**31 - 1, -(2**31), 65535, 65536, -65536, -65537]
    rng = np.random.default_rng(0)
    random = rng.integers(-(2**31), 2**31, size=1000, dtype=np.int64)
    return np.concatenate([edges, random]).astype("int32")[None, :]


# Each step of the exportable hash, and the hash itself.
HASH_STEPS = {
    "right_shift": lambda x: ops.right_shift(x, 16),
    "logical_right_shift": lambda x: _hash.logical_right_shift(x, 9),
    "wrapping_multiply": lambda x: x * _hash.MULTIPLIERS[1],
    "xorshift": _hash._exportable_xorshift,
    "hash32": lambda x: _hash.hash32(x, exportable=True),
}


class _HashSteps(keras.layers.Layer):
    def call(self, x):
        return [step(x) for step in HASH_STEPS.values()]


@pytest.mark.parametrize("format", FORMATS)
def test_hash_op_by_op(tmp_path, format):
    x = _int32_values()
    inputs = keras.Input((None,), dtype="int32", name="x")
    model = keras.Model(inputs, _HashSteps(name="hash_steps")(inputs))
    want = dict(zip(HASH_STEPS, (to_numpy(y) for y in model(x))))
    np.testing.assert_array_equal(
        want["logical_right_shift"], (x.view("uint32") >> 9).astype("int32")
    )
    np.testing.assert_array_equal(want["hash32"], reference.lowbias32(x))
    filename, run = FORMATS[format]
    _export(model, tmp_path / filename, format)
    got = run(tmp_path / filename, {"x": x})
    for (name, want_step), got_step in zip(want.items(), got):
        np.testing.assert_array_equal(got_step, want_step, err_msg=name)


@pytest.mark.parametrize("format", FORMATS)
def test_greedy_tokens_match(language_model, tmp_path, format):
    prompt = keras.Input((None,), dtype="int32", name="prompt_ids")
    generator = ka.TokenGenerator(language_model, MAX_LENGTH, sampler="greedy")
    model = keras.Model(prompt, generator(prompt))
    want = [to_numpy(model(prompts)) for prompts in PROMPTS]
    filename, run = FORMATS[format]
    _export(model, tmp_path / filename, format)
    for prompts, tokens in zip(PROMPTS, want):
        (got,) = run(tmp_path / filename, {"prompt_ids": prompts})
        np.testing.assert_array_equal(got, tokens)


def _stopped_rows(tokens, sequence):
    """Rows of continuations `tokens` that hold `sequence` followed by the
    padding (0) that a stopped row writes: the model never emits 0."""
    window = np.lib.stride_tricks.sliding_window_view(
        tokens, len(sequence) + 1, axis=1
    )
    return int((window == [*sequence, 0]).all(-1).any(-1).sum())


@pytest.mark.parametrize("sampler", SAMPLED)
@pytest.mark.parametrize("format", FORMATS)
def test_sampled_tokens_match(language_model, tmp_path, format, sampler):
    prompt = keras.Input((None,), dtype="int32", name="prompt_ids")
    seed = keras.Input(batch_shape=(), dtype="int32", name="seed")
    sampler, with_stop = SAMPLED[sampler]()
    cases = [
        (prompts, np.array(seed, "int32"))
        for prompts in PROMPTS
        for seed in SEEDS
    ]

    def build(stop_token_ids=None):
        generator = ka.TokenGenerator(
            language_model,
            MAX_LENGTH,
            sampler=sampler,
            stop_token_ids=stop_token_ids,
        )
        model = keras.Model([prompt, seed], generator(prompt, seed=seed))
        return model, [to_numpy(model([p, s])) for p, s in cases]

    model, want = build()
    assert not np.array_equal(want[0], want[1])  # the seed matters
    if with_stop:  # a stop sequence that ends the first row early
        stop = [int(t) for t in want[0][0, 1:3]]
        model, want = build([stop])
        assert _stopped_rows(want[0], stop) > 0
    filename, run = FORMATS[format]
    # Keras' exporters give every input a batch axis unless told otherwise:
    # the scalar seed needs an explicit signature.
    signature = [
        [
            tf.TensorSpec((None, None), tf.int32, name="prompt_ids"),
            tf.TensorSpec((), tf.int32, name="seed"),
        ]
    ]
    _export(model, tmp_path / filename, format, signature)
    for (prompts, seed), tokens in zip(cases, want):
        (got,) = run(tmp_path / filename, {"prompt_ids": prompts, "seed": seed})
        np.testing.assert_array_equal(got, tokens)


@pytest.mark.parametrize("format", FORMATS)
def test_beam_search_tokens_match(language_model, tmp_path, format):
    """One file, two searches: the best beam, and every beam with its
    log-probability (`return_all_beams=True`)."""
    prompt = keras.Input((None,), dtype="int32", name="prompt_ids")
    best, every = (
        ka.TokenGenerator(
            language_model,
            MAX_LENGTH,
            sampler=samplers.BeamSampler(
                num_beams=3, return_all_beams=return_all_beams
            ),
        )
        for return_all_beams in (False, True)
    )
    model = keras.Model(prompt, [best(prompt), *every(prompt)])
    want = [[to_numpy(y) for y in model(prompts)] for prompts in PROMPTS]
    for tokens, beams, _ in want:
        np.testing.assert_array_equal(beams[:, 0], tokens)  # best first
        assert not (beams[:, 0] == beams[:, 1]).all()  # a real search
    filename, run = FORMATS[format]
    _export(model, tmp_path / filename, format)
    for prompts, (tokens, beams, log_probs) in zip(PROMPTS, want):
        got = run(tmp_path / filename, {"prompt_ids": prompts})
        np.testing.assert_array_equal(got[0], tokens)
        np.testing.assert_array_equal(got[1], beams)
        np.testing.assert_allclose(got[2], log_probs, rtol=1e-5)


class _CachedAttention(keras.layers.Layer):
    """Causal attention that writes a prefill into a cache, with a padding
    mask over the cache's slots of run-time length (prompt mask + ones)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.attention = ka.MultiHeadAttention(
            num_heads=2, key_dim=4, num_key_value_heads=1
        )

    def call(self, x, prompt_ids):
        batch, length = ops.shape(prompt_ids)[0], ops.shape(prompt_ids)[1]
        cache = ops.zeros((batch, 2, MAX_LENGTH, 1, 4))
        mask = ops.concatenate(
            [prompt_ids != 0, ops.ones((batch, MAX_LENGTH - length), "bool")],
            axis=1,
        )
        output, _ = self.attention(
            x,
            x,
            value_mask=mask,
            use_causal_mask=True,
            cache=cache,
            cache_update_index=0,
        )
        return output


def test_cached_attention_with_a_run_time_mask(tmp_path):
    """LiteRT only (the converter crashed, with a segmentation fault)."""
    x = keras.Input((None, 8), name="x")
    prompt = keras.Input((None,), dtype="int32", name="prompt_ids")
    model = keras.Model(
        [x, prompt], _CachedAttention(name="attention")(x, prompt)
    )
    prompts = PROMPTS[0]
    values = np.random.default_rng(0).normal(size=prompts.shape + (8,))
    values = values.astype("float32")
    want = to_numpy(model([values, prompts]))
    _export(model, tmp_path / "model.tflite", "litert")
    (got,) = _runtimes.run_exported(
        tmp_path / "model.tflite", {"x": values, "prompt_ids": prompts}
    )
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
