"""`TokenGenerator` with samplers, stop sequences and keras-hub's protocol.

- keras-hub's own `GPT2CausalLM.generate` (greedy and beam, the same model
  and weights) gives the tokens our loop gives with the same model;
- stop sequences and logits processors in the loop against a NumPy
  emulation that recomputes the whole sequence at each step;
- beam search against the log-probabilities recomputed from the model.
"""

import keras
import numpy as np
import pytest

import keras_attention
from keras_attention import samplers
from tests.layers.test_token_generator import MAX_LENGTH
from tests.layers.test_token_generator import PROMPTS
from tests.layers.test_token_generator import _left_padded
from tests.layers.test_token_generator import lm  # noqa: F401 (fixture)
from tests.testing import to_numpy

keras_hub = pytest.importorskip("keras_hub")

HUB_VOCABULARY = 29
HUB_LENGTH = 10


def _log_softmax(x):
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))


def _emulate(model, prompt, steps, processors=(), stops=()):
    """Greedy decoding in NumPy around the uncached model: the whole
    sequence each step, the processors applied to the last logits, and
    the row stopped after a stop sequence (prompt included)."""
    tokens = list(prompt)
    out = []
    for _ in range(steps):
        buffer = np.zeros((1, MAX_LENGTH), "int32")
        buffer[0, : len(tokens)] = tokens
        logits = to_numpy(model(buffer))[0, len(tokens) - 1].astype("float64")
        for process in processors:
            logits = process(logits, tokens)
        logits[0] = -np.inf  # the padding token is never generated
        tokens.append(int(np.argmax(logits)))
        out.append(tokens[-1])
        if any(tuple(tokens[-len(s) :]) == tuple(s) for s in stops):
            break
    return out + [0] * (steps - len(out))


def _generate(model, **kwargs):
    generator = keras_attention.TokenGenerator(model, MAX_LENGTH, **kwargs)
    return to_numpy(generator(_left_padded(PROMPTS)))


def test_stop_tokens_and_sequences_end_rows(lm):  # noqa: F811
    free = _generate(lm)
    # A two-token sequence from row 0's continuation whose last token came
    # earlier after another one (matching its last token alone would stop
    # too early); then a sequence and a single token together.
    row = [int(t) for t in free[0]]
    pair = next(
        (row[p - 1], row[p])
        for p in range(2, len(row))
        if any(
            row[q] == row[p] and row[q - 1] != row[p - 1] for q in range(1, p)
        )
    )
    single = int(free[2, 2])
    steps = MAX_LENGTH - 5
    for stops, argument in (
        ([pair], [list(pair)]),
        ([pair, (single,)], [np.array(pair), single]),
    ):
        got = _generate(lm, stop_token_ids=argument)
        for row, prompt in enumerate(PROMPTS):
            want = _emulate(lm, prompt, steps, stops=stops)
            np.testing.assert_array_equal(got[row], want)
        assert (got != free).any()  # the stops changed something


def test_repetition_and_presence_penalties_in_the_loop(lm):  # noqa: F811
    def repetition(logits, tokens):
        seen = np.zeros(logits.shape, bool)
        seen[tokens] = True
        penalised = np.where(logits > 0, logits / 3.0, logits * 3.0)
        return np.where(seen, penalised, logits)

    def presence(logits, tokens):
        return logits - 2.0 * np.isin(np.arange(len(logits)), tokens)

    sampler = samplers.GreedySampler(
        logits_processors=[
            samplers.RepetitionPenalty(3.0),
            samplers.PresencePenalty(2.0),
        ]
    )
    got = _generate(lm, sampler=sampler)
    # Left padding (token 0) counts as seen: it changes nothing, since the
    # padding token is never generated.
    for row, prompt in enumerate(PROMPTS):
        want = _emulate(
            lm, prompt, MAX_LENGTH - 5, processors=(repetition, presence)
        )
        np.testing.assert_array_equal(got[row], want)


def test_one_beam_is_greedy_and_beam_scores_are_log_probabilities(lm):  # noqa: F811
    greedy = _generate(lm)
    one = _generate(lm, sampler=samplers.BeamSampler(num_beams=1))
    np.testing.assert_array_equal(one, greedy)
    generator = keras_attention.TokenGenerator(
        lm,
        MAX_LENGTH,
        sampler=samplers.BeamSampler(num_beams=3, return_all_beams=True),
    )
    prompts = [[3, 7, 1, 9, 4], [2, 8, 6, 5, 1]]  # equal lengths
    tokens, log_probs = (to_numpy(x) for x in generator(np.array(prompts)))
    assert tokens.shape == (2, 3, MAX_LENGTH - 5)
    assert (np.diff(log_probs, axis=1) <= 0).all()  # best first
    for row, prompt in enumerate(prompts):
        for beam in range(3):
            sequence = np.array([prompt + list(tokens[row, beam])], "int32")
            logits = to_numpy(lm(sequence))[0].astype("float64")
            logits[:, 0] = -np.inf  # the padding token is never generated
            scores = _log_softmax(logits)
            want = sum(
                scores[t - 1, sequence[0, t]] for t in range(5, MAX_LENGTH)
            )
            np.testing.assert_allclose(log_probs[row, beam], want, atol=2e-3)
        # Three different beams.
        assert len({tuple(b) for b in tokens[row]}) == 3


@pytest.fixture(scope="module")
def gpt2():
    keras.utils.set_random_seed(2)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=HUB_VOCABULARY,
        num_layers=2,
        num_heads=2,
        hidden_dim=16,
        intermediate_dim=32,
        max_sequence_length=HUB_LENGTH,
    )
    # Larger logits (the output layer is the embedding): clear margins.
    embeddings = backbone.token_embedding.embeddings
    embeddings.assign(embeddings * 8.0)
    return keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)


def _hub_generate(model, sampler, prompts, lengths):
    buffer = np.zeros((len(prompts), HUB_LENGTH), "int32")
    mask = np.zeros((len(prompts), HUB_LENGTH), bool)
    for row, (prompt, length) in enumerate(zip(prompts, lengths)):
        buffer[row, :length] = prompt[:length]
        mask[row, :length] = True
    model.compile(sampler=sampler)
    out = model.generate(
        {"token_ids": buffer, "padding_mask": mask}, stop_token_ids=None
    )
    return np.asarray(out["token_ids"])


HUB_PROMPTS = np.array([[5, 9, 2, 7], [3, 3, 8, 1], [11, 4, 6, 2]], "int32")


@pytest.mark.parametrize(
    "lengths", [(4, 4, 4), (4, 2, 3)], ids=["equal", "ragged"]
)
def test_greedy_equals_keras_hubs_generate(gpt2, lengths):
    prompts = HUB_PROMPTS.copy()
    for row, length in enumerate(lengths):
        prompts[row, length:] = 0  # right padding
    want = _hub_generate(gpt2, "greedy", prompts, lengths)
    got = keras_attention.TokenGenerator(gpt2, HUB_LENGTH, sampler="greedy")(
        prompts
    )
    np.testing.assert_array_equal(to_numpy(got), want)


@pytest.mark.parametrize("num_beams", [2, 3])
def test_beam_equals_keras_hubs_beam_sampler(gpt2, num_beams):
    want = _hub_generate(
        gpt2,
        keras_hub.samplers.BeamSampler(num_beams=num_beams),
        HUB_PROMPTS,
        (4, 4, 4),
    )
    got = keras_attention.TokenGenerator(
        gpt2, HUB_LENGTH, sampler=samplers.BeamSampler(num_beams=num_beams)
    )(HUB_PROMPTS)
    np.testing.assert_array_equal(to_numpy(got), want)


def test_deprecated_arguments_warn_and_map_to_samplers(lm):  # noqa: F811
    with pytest.warns(DeprecationWarning, match="sampler="):
        old = keras_attention.TokenGenerator(
            lm, MAX_LENGTH, strategy="sample", temperature=0.5, top_k=3
        )
    assert isinstance(old.sampler, samplers.TopKSampler)
    assert (old.sampler.k, old.sampler.temperature) == (3, 0.5)
    new = keras_attention.TokenGenerator(
        lm, MAX_LENGTH, sampler=samplers.TopKSampler(k=3, temperature=0.5)
    )
    prompts = _left_padded(PROMPTS)
    np.testing.assert_array_equal(
        to_numpy(old(prompts, seed=4)), to_numpy(new(prompts, seed=4))
    )
    with pytest.warns(DeprecationWarning):
        ended = keras_attention.TokenGenerator(lm, MAX_LENGTH, end_token_id=7)
    assert ended.get_config()["stop_token_ids"] == [7]
    assert "strategy" not in ended.get_config()


def test_contrastive_equals_keras_hubs_contrastive_sampler(gpt2):
    want = _hub_generate(
        gpt2,
        keras_hub.samplers.ContrastiveSampler(k=3, alpha=0.6),
        HUB_PROMPTS,
        (4, 4, 4),
    )
    got = keras_attention.TokenGenerator(
        gpt2,
        HUB_LENGTH,
        sampler=samplers.ContrastiveSampler(k=3, alpha=0.6),
    )(HUB_PROMPTS)
    np.testing.assert_array_equal(to_numpy(got), want)


def test_contrastive_under_our_protocol_equals_the_samplers_loop(lm):  # noqa: F811
    """Our protocol with hidden states: the generator's contrastive search
    against `ContrastiveSampler.__call__` driven by the same model."""
    sampler = samplers.ContrastiveSampler(k=3, alpha=0.5)
    prompts = np.array([[3, 7, 1, 9, 4], [2, 8, 6, 5, 1]], "int32")
    batch, length = prompts.shape
    everywhere = np.ones((batch, MAX_LENGTH), bool)
    buffer = np.zeros((batch, MAX_LENGTH), "int32")
    buffer[:, :length] = prompts
    lm.return_hidden = True
    try:
        got = to_numpy(
            keras_attention.TokenGenerator(lm, MAX_LENGTH, sampler=sampler)(
                prompts
            )
        )
        cache = lm.init_cache(batch, MAX_LENGTH)
        _, hidden, cache = lm.call_with_cache(buffer, cache, 0, everywhere)

        def next(tokens, cache, index):
            previous = keras.ops.take(tokens, index - 1, axis=1)[:, None]
            rows = keras.ops.shape(tokens)[0]  # k candidates per row
            logits, hidden, cache = lm.call_with_cache(
                previous,
                cache,
                index - 1,
                keras.ops.ones((rows, MAX_LENGTH), "bool"),
            )
            # The padding token is never generated.
            padding = np.arange(logits.shape[-1]) == 0
            logits = keras.ops.where(padding, -np.inf, logits[:, -1])
            return logits, hidden[:, -1], cache

        want = to_numpy(
            sampler(
                next,
                buffer,
                cache,
                index=length,
                mask=buffer > 0,
                hidden_states=hidden,
            )
        )
    finally:
        lm.return_hidden = False
    np.testing.assert_array_equal(got, want[:, length:])
