"""`TokenGenerator`: cached generation equals recomputing the prefix,
ragged prompts equal the prompts alone, seeded sampling is reproducible,
and the SavedModel generates the same tokens as eager code (greedy, top-k,
top-p and min-p with penalties, beam search). The draws' distribution is
tests/samplers' subject."""

import os

import keras
import numpy as np
import pytest
from keras import ops

import keras_attention
from keras_attention import samplers
from keras_attention.samplers import _draws
from tests.testing import to_numpy

VOCABULARY = 13
MAX_LENGTH = 14


@keras.saving.register_keras_serializable(package="tests")
class TinyLM(keras.Model):
    """Embedding, two RoPE/GQA decoder blocks, logits: the protocol
    `TokenGenerator` decodes with."""

    def __init__(self, vocabulary_size=VOCABULARY, dim=16, **kwargs):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.dim = dim
        self.embedding = keras.layers.Embedding(vocabulary_size, dim)
        self.blocks = [
            keras_attention.TransformerDecoder(
                24,
                4,
                normalize_first=True,
                num_key_value_heads=2,
                rope_max_wavelength=100,
                name=f"block_{i}",
            )
            for i in range(2)
        ]
        self.head = keras.layers.Dense(vocabulary_size)
        self.return_hidden = False

    def call(self, token_ids, padding_mask=None):
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(x, decoder_padding_mask=padding_mask)
        return self.head(x)

    def init_cache(self, batch_size, max_length):
        shape = (batch_size, 2, max_length, 2, self.dim // 4)
        return tuple(ops.zeros(shape) for _ in self.blocks)

    def call_with_cache(self, token_ids, cache, index, padding_mask):
        x = self.embedding(token_ids)
        new = []
        for block, c in zip(self.blocks, cache):
            x, c = block(
                x,
                decoder_padding_mask=padding_mask,
                self_attention_cache=c,
                self_attention_cache_update_index=index,
            )
            new.append(c)
        if self.return_hidden:  # for contrastive search
            return self.head(x), x, tuple(new)
        return self.head(x), tuple(new)

    def get_config(self):
        return {
            **super().get_config(),
            "vocabulary_size": self.vocabulary_size,
            "dim": self.dim,
        }


@pytest.fixture(scope="module")
def lm():
    keras.utils.set_random_seed(3)
    model = TinyLM()
    model(np.ones((1, 4), "int32"))
    # Larger logits: clear greedy margins.
    head = model.head
    head.kernel.assign(head.kernel * 6.0)
    return model


PROMPTS = [[3, 7, 1, 9, 4], [5], [2, 8, 6]]


def _left_padded(prompts, length=5):
    out = np.zeros((len(prompts), length), "int32")
    for row, prompt in enumerate(prompts):
        out[row, length - len(prompt) :] = prompt
    return out


def _recompute_greedy(model, prompt, n):
    """Greedy decoding by running the whole sequence each step (no cache);
    also the smallest top-2 margin of the logits. The sequence sits in a
    fixed-size buffer (causal: the zeros after it change nothing), so each
    step has the same shape and compiles once on JAX."""
    tokens = list(prompt)
    margin = np.inf
    for _ in range(n):
        buffer = np.zeros((1, MAX_LENGTH), "int32")
        buffer[0, : len(tokens)] = tokens
        logits = to_numpy(model(buffer))[0, len(tokens) - 1]
        logits[0] = -np.inf  # the padding token is never generated
        top2 = np.sort(logits)[-2:]
        margin = min(margin, top2[1] - top2[0])
        tokens.append(int(np.argmax(logits)))
    return tokens[len(prompt) :], margin


def test_cached_greedy_equals_recompute_and_rows_equal_prompts_alone(lm):
    generator = keras_attention.TokenGenerator(lm, MAX_LENGTH)
    got = to_numpy(generator(_left_padded(PROMPTS)))
    assert got.shape == (3, MAX_LENGTH - 5)
    for row, prompt in enumerate(PROMPTS):
        want, margin = _recompute_greedy(lm, prompt, MAX_LENGTH - 5)
        # Ties would make the comparison meaningless: the test needs margins.
        assert margin > 1e-3, margin
        np.testing.assert_array_equal(got[row], want)


def test_end_token_pads_the_rest(lm):
    first = to_numpy(
        keras_attention.TokenGenerator(lm, MAX_LENGTH)(_left_padded(PROMPTS))
    )
    end = int(first[0, 2])
    got = to_numpy(
        keras_attention.TokenGenerator(lm, MAX_LENGTH, stop_token_ids=[end])(
            _left_padded(PROMPTS)
        )
    )
    for row in range(3):
        hits = np.flatnonzero(first[row] == end)
        if len(hits) == 0:
            np.testing.assert_array_equal(got[row], first[row])
            continue
        stop = hits[0] + 1
        np.testing.assert_array_equal(got[row, :stop], first[row, :stop])
        assert (got[row, stop:] == 0).all()


def test_sampling_is_reproducible_and_depends_on_the_seed(lm):
    sample = keras_attention.TokenGenerator(
        lm, MAX_LENGTH, sampler=samplers.TopKSampler(k=6, temperature=1.5)
    )
    prompts = _left_padded(PROMPTS)
    a = to_numpy(sample(prompts, seed=np.int32(5)))
    b = to_numpy(sample(prompts, seed=np.int32(5)))
    c = to_numpy(sample(prompts, seed=np.int32(6)))
    np.testing.assert_array_equal(a, b)
    assert (a != c).any()
    greedy = keras_attention.TokenGenerator(lm, MAX_LENGTH)(prompts)
    top1 = keras_attention.TokenGenerator(
        lm, MAX_LENGTH, sampler=samplers.TopKSampler(k=1)
    )(prompts, seed=np.int32(5))
    np.testing.assert_array_equal(to_numpy(top1), to_numpy(greedy))


def test_call_time_temperature(lm):
    """A tensor temperature overrides the constructor's; 0 is greedy."""
    sample = keras_attention.TokenGenerator(
        lm, MAX_LENGTH, sampler=samplers.TopKSampler(k=6, temperature=1.5)
    )
    prompts = _left_padded(PROMPTS)
    greedy = keras_attention.TokenGenerator(lm, MAX_LENGTH)(prompts)
    zero = sample(prompts, seed=np.int32(5), temperature=np.float32(0.0))
    np.testing.assert_array_equal(to_numpy(zero), to_numpy(greedy))
    same = sample(prompts, seed=np.int32(5), temperature=ops.array(1.5))
    np.testing.assert_array_equal(
        to_numpy(same), to_numpy(sample(prompts, seed=np.int32(5)))
    )


# `torch.compile` of the decoding loop re-traces Keras' layer hooks at every
# step (two minutes here for 14 tokens); compiled training on PyTorch is in
# tests/layers/test_torch_compile.py.
@pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="XLA: TensorFlow and JAX"
)
def test_compiled_generation_equals_eager(lm):
    sample = keras_attention.TokenGenerator(
        lm, MAX_LENGTH, sampler=samplers.TopKSampler(k=5)
    )
    prompts = _left_padded(PROMPTS)
    eager = to_numpy(sample(prompts, seed=np.int32(11)))
    if keras.backend.backend() == "jax":
        import jax

        compiled = jax.jit(lambda p, s: sample(p, seed=s))
    else:
        import tensorflow as tf

        compiled = tf.function(lambda p, s: sample(p, seed=s), autograph=False)
    np.testing.assert_array_equal(
        to_numpy(compiled(prompts, np.int32(11))), eager
    )


def test_uniforms_are_the_same_on_every_backend():
    """Hash values computed here by hand in NumPy (uint32 arithmetic)."""

    def lowbias32(x):
        x = np.uint64(x) & 0xFFFFFFFF
        for m in (0x7FEB352D, 0x846CA68B):
            x ^= x >> 16
            x = (x * m) & 0xFFFFFFFF
        return x ^ (x >> 16)

    seed, step = 5, 9
    base = lowbias32((seed * 0x9E3779B9 + step) & 0xFFFFFFFF)
    want = np.array(
        [
            [
                (
                    (int(lowbias32((int(base) + r * 3 + c) & 0xFFFFFFFF)) >> 9)
                    + 0.5
                )
                / 2**23
                for c in range(3)
            ]
            for r in range(2)
        ]
    )
    got = to_numpy(_draws.uniform(seed, step, (2, 3)))
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-7)


def test_keras_file_round_trip(lm, tmp_path):
    prompts = keras.Input((5,), dtype="int32")
    outputs = keras_attention.TokenGenerator(lm, MAX_LENGTH)(prompts)
    model = keras.Model(prompts, outputs)
    path = os.path.join(tmp_path, "generator.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    np.testing.assert_array_equal(
        to_numpy(loaded(_left_padded(PROMPTS))),
        to_numpy(model(_left_padded(PROMPTS))),
    )


@pytest.mark.tensorflow_only
def test_savedmodel_generates_what_eager_code_does(lm, tmp_path):
    import tensorflow as tf

    from keras_attention import serving

    generators = {
        "greedy": keras_attention.TokenGenerator(lm, MAX_LENGTH),
        "top_k": keras_attention.TokenGenerator(
            lm, MAX_LENGTH, sampler=samplers.TopKSampler(k=5)
        ),
        "top_p": keras_attention.TokenGenerator(
            lm,
            MAX_LENGTH,
            sampler=samplers.TopPSampler(
                p=0.9,
                logits_processors=[samplers.RepetitionPenalty(1.3)],
            ),
            stop_token_ids=[[4, 4]],
        ),
        "min_p": keras_attention.TokenGenerator(
            lm,
            MAX_LENGTH,
            sampler=samplers.MinPSampler(
                p=0.1, logits_processors=[samplers.FrequencyPenalty(0.5)]
            ),
        ),
        "beam": keras_attention.TokenGenerator(
            lm, MAX_LENGTH, sampler=samplers.BeamSampler(num_beams=3)
        ),
    }

    @tf.function(
        input_signature=[tf.TensorSpec([None, 5], tf.int32, name="prompt")],
        autograph=False,
    )
    def serve(prompt):
        return {name: g(prompt, seed=3) for name, g in generators.items()}

    path = serving.export_saved_model(
        lm,
        tmp_path / "lm",
        signatures={"serving_default": serve},
        warmup_inputs={"prompt": _left_padded(PROMPTS)},
    )
    # In a process where keras_attention cannot be imported; no XLA ops.
    assert serving.check(path).returncode == 0
    served = tf.saved_model.load(path).signatures["serving_default"](
        prompt=tf.constant(_left_padded(PROMPTS))
    )
    for name, generator in generators.items():
        np.testing.assert_array_equal(
            served[name].numpy(),
            to_numpy(generator(_left_padded(PROMPTS), seed=3)),
            err_msg=name,
        )
