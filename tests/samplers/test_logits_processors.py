"""The logits processors against a NumPy emulation of one step, and their
order inside a sampler."""

import numpy as np
import pytest

from keras_attention import samplers
from tests.testing import to_numpy

VOCAB = 7


def _counts(token_ids, index):
    """`(batch, VOCAB)` occurrences in `token_ids[:, :index]`, ids outside
    `[0, VOCAB)` ignored."""
    counts = np.zeros((token_ids.shape[0], VOCAB))
    for row, tokens in enumerate(token_ids):
        for token in tokens[:index]:
            if 0 <= token < VOCAB:
                counts[row, token] += 1
    return counts


def _repetition(logits, counts, penalty):
    seen = counts > 0
    penalised = np.where(logits > 0, logits / penalty, logits * penalty)
    return np.where(seen, penalised, logits)


def _presence(logits, counts, penalty):
    return logits - penalty * (counts > 0)


def _frequency(logits, counts, penalty):
    return logits - penalty * counts


def _ban(logits, token_ids):
    logits = logits.copy()
    logits[:, token_ids] = -np.inf
    return logits


@pytest.fixture
def step(rng):
    logits = rng.normal(size=(3, VOCAB)).astype("float32")
    # 19 positions: more than two counting chunks; -1 is padding.
    token_ids = rng.integers(-1, VOCAB, size=(3, 19)).astype("int32")
    return logits, token_ids


@pytest.mark.parametrize("index", [0, 1, 8, 9, 17, 19, 25])
def test_token_counts(step, index):
    _, token_ids = step
    got = samplers.token_counts(token_ids, index, VOCAB)
    np.testing.assert_array_equal(to_numpy(got), _counts(token_ids, index))


PROCESSORS = [
    (samplers.RepetitionPenalty(1.7), lambda x, c: _repetition(x, c, 1.7)),
    (samplers.RepetitionPenalty(0.5), lambda x, c: _repetition(x, c, 0.5)),
    (samplers.PresencePenalty(0.8), lambda x, c: _presence(x, c, 0.8)),
    (samplers.PresencePenalty(-0.3), lambda x, c: _presence(x, c, -0.3)),
    (samplers.FrequencyPenalty(0.4), lambda x, c: _frequency(x, c, 0.4)),
    (samplers.BanTokens([0, 4]), lambda x, c: _ban(x, [0, 4])),
]


@pytest.mark.parametrize(
    "processor, emulate", PROCESSORS, ids=[repr(p) for p, _ in PROCESSORS]
)
@pytest.mark.parametrize("index", [5, 13])
def test_processor_matches_numpy(step, processor, emulate, index):
    logits, token_ids = step
    got = processor(logits, token_ids, index)
    want = emulate(logits, _counts(token_ids, index))
    np.testing.assert_allclose(to_numpy(got), want, rtol=1e-6, atol=1e-6)


def test_sampler_order_processors_then_temperature(step):
    """Processors in list order, then the temperature, then the softmax."""
    logits, token_ids = step
    sampler = samplers.GreedySampler(
        temperature=0.7,
        logits_processors=[
            samplers.FrequencyPenalty(0.5),
            samplers.RepetitionPenalty(1.5),
            samplers.BanTokens([3]),
        ],
    )
    counts = _counts(token_ids, 11)
    want = _ban(_repetition(_frequency(logits, counts, 0.5), counts, 1.5), [3])
    processed = sampler.process_logits(logits, token_ids, 11)
    np.testing.assert_allclose(to_numpy(processed), want, rtol=1e-6, atol=1e-6)
    z = np.exp((want - want.max(-1, keepdims=True)) / 0.7)
    np.testing.assert_allclose(
        to_numpy(sampler.compute_probabilities(processed)),
        z / z.sum(-1, keepdims=True),
        rtol=1e-5,
        atol=1e-7,
    )
    tokens = to_numpy(sampler.next_token(logits, token_ids, 11))
    np.testing.assert_array_equal(tokens, np.argmax(want, axis=-1))


def test_processors_apply_before_top_k(step):
    """A banned token is never drawn, even when it is in the raw top-k."""
    logits, token_ids = step
    top = int(np.argmax(logits[0]))
    sampler = samplers.TopKSampler(
        k=2, logits_processors=[samplers.BanTokens([top])]
    )
    rows = np.broadcast_to(logits[:1], (500, VOCAB))
    tokens = to_numpy(sampler.next_token(rows, token_ids[:1], 4))
    second, third = np.argsort(-logits[0])[1:3]
    assert set(tokens.tolist()) == {int(second), int(third)}
