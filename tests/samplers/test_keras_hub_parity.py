"""Our samplers next to keras-hub's, on the same `next` function, prompt,
cache, index and mask (`tests/samplers/toy.py`): the same tokens for the
deterministic samplers, the same support and distribution for the random
ones, the same config keys and names, and our samplers inside keras-hub's
own `generate`."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import samplers
from tests.samplers import toy
from tests.testing import import_keras_hub
from tests.testing import to_numpy

keras_hub = import_keras_hub()


# Stop tokens: none, two, and every row's first prompt token (a stop token
# in the prompt does not stop the row).
STOPS = [None, [3, 7], toy.PROMPT[:, 0].tolist()]


@pytest.mark.parametrize("stop_token_ids", STOPS, ids=["", "stop", "prompt"])
def test_greedy_same_tokens(stop_token_ids):
    ours = toy.run(samplers.GreedySampler(), stop_token_ids)
    theirs = toy.run(keras_hub.samplers.GreedySampler(), stop_token_ids)
    np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
    # The prompt tokens are kept.
    np.testing.assert_array_equal(
        to_numpy(ours)[toy.MASK], toy.PROMPT[toy.MASK]
    )


@pytest.mark.parametrize("num_beams", [1, 3])
@pytest.mark.parametrize("return_all_beams", [False, True], ids=["", "all"])
def test_beam_same_tokens_and_log_probs(num_beams, return_all_beams):
    ours = toy.run(samplers.BeamSampler(num_beams, return_all_beams))
    theirs = toy.run(
        keras_hub.samplers.BeamSampler(num_beams, return_all_beams)
    )
    if not return_all_beams:
        np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))
        return
    np.testing.assert_array_equal(to_numpy(ours[0]), to_numpy(theirs[0]))
    np.testing.assert_allclose(
        to_numpy(ours[1]), to_numpy(theirs[1]), rtol=0, atol=1e-5
    )
    assert to_numpy(ours[0]).shape == (3, num_beams, toy.MAX_LENGTH)


def test_contrastive_same_tokens():
    ours = toy.run(samplers.ContrastiveSampler(k=3, alpha=0.6), hidden=True)
    theirs = toy.run(
        keras_hub.samplers.ContrastiveSampler(k=3, alpha=0.6), hidden=True
    )
    np.testing.assert_array_equal(to_numpy(ours), to_numpy(theirs))


def test_contrastive_needs_hidden_states():
    with pytest.raises(ValueError, match="`hidden_states`.*Received"):
        toy.run(samplers.ContrastiveSampler())


# -- random samplers: support and distribution -------------------------------

# One row of logits, without ties; every token has probability > 0.5 %, so
# each kept token is drawn about 100 times or more in `DRAWS` draws.
LOGITS = np.random.default_rng(7).normal(size=(toy.VOCAB,)).astype("float32")
DRAWS = 20_000
# (seed, position) of the four batches of `DRAWS // 4` rows: the rows are
# keyed by their index too, so every draw is a fresh one.
KEYS = [(0, 0), (1, 5), (12345, 3), (2**31 - 1, 7)]

RANDOM_CASES = [
    ("random", {}, "all", {}),
    ("top_k", {"k": 4}, "top_k", {"k": 4}),
    ("top_p", {"p": 0.6}, "top_p", {"p": 0.6}),
    ("top_p", {"p": 0.6, "k": 3}, "top_p", {"p": 0.6, "k": 3}),
    ("top_p_hot", {"p": 0.5, "temperature": 0.7}, "top_p", {"p": 0.5}),
    ("min_p", {"p": 0.3}, "min_p", {"p": 0.3}),
    ("min_p", {"p": 0.2, "k": 3}, "min_p", {"p": 0.2, "k": 3}),
]
CLASSES = {
    "random": "RandomSampler",
    "top_k": "TopKSampler",
    "top_p": "TopPSampler",
    "top_p_hot": "TopPSampler",
    "min_p": "MinPSampler",
}


def _exact(kind, rule_args, temperature):
    q = toy.softmax(LOGITS, temperature)
    keep = toy.kept(q, kind, **rule_args)
    return keep, toy.truncated(q, keep)


def _check_distribution(tokens, keep, want):
    """Same support (no token outside `keep`, every kept token drawn) and
    total variation distance to `want` within the bound below.

    The bound: each frequency `f_i` of `n` draws has standard deviation
    `s_i = sqrt(q_i (1 - q_i) / n)`; when every `|f_i - q_i| <= 4 s_i`
    (each fails with probability < 6.4e-5, the normal tail), the distance
    `0.5 * sum |f_i - q_i|` is at most `0.5 * sum 4 s_i`. Both are checked.
    """
    n = len(tokens)
    frequency = np.bincount(tokens, minlength=toy.VOCAB) / n
    assert set(np.unique(tokens)) == set(np.flatnonzero(keep)), (
        np.unique(tokens),
        np.flatnonzero(keep),
    )
    sigma = np.sqrt(want * (1 - want) / n)
    assert (np.abs(frequency - want) <= 4 * sigma + 1e-12).all(), (
        frequency,
        want,
    )
    distance = 0.5 * np.abs(frequency - want).sum()
    assert distance <= 0.5 * (4 * sigma).sum(), (distance, frequency, want)


def _ours(name, args):
    sampler = getattr(samplers, CLASSES[name])(**args)
    rows = np.broadcast_to(LOGITS, (DRAWS // len(KEYS), toy.VOCAB))
    history = np.zeros((rows.shape[0], 1), "int32")
    draws = [
        to_numpy(sampler.next_token(rows, history, position, seed=seed))
        for seed, position in KEYS
    ]
    return np.concatenate(draws)


@pytest.mark.parametrize(
    "name, args, kind, rule_args",
    RANDOM_CASES,
    ids=[f"{c[0]}-{c[1]}" for c in RANDOM_CASES],
)
def test_random_samplers_support_and_distribution(name, args, kind, rule_args):
    temperature = args.get("temperature", 1.0)
    keep, want = _exact(kind, rule_args, temperature)
    assert toy.softmax(LOGITS, temperature).min() > 0.005
    assert 1 < keep.sum() < toy.VOCAB or kind == "all"
    _check_distribution(_ours(name, args), keep, want)
    if name == "min_p":
        return  # not in keras-hub
    theirs = getattr(keras_hub.samplers, CLASSES[name])(seed=3, **args)
    rows = np.broadcast_to(LOGITS, (DRAWS, toy.VOCAB))
    tokens = theirs.get_next_token(theirs.compute_probabilities(rows))
    _check_distribution(to_numpy(tokens), keep, want)


# -- names and configs -------------------------------------------------------

NAMES = ["beam", "contrastive", "greedy", "random", "top_k", "top_p"]


@pytest.mark.parametrize("name", NAMES)
def test_names_and_config_keys_match_keras_hub(name):
    ours = samplers.get(name)
    theirs = keras_hub.samplers.get(name)
    assert type(ours).__name__ == type(theirs).__name__
    assert ours.get_config() == theirs.get_config()
    ours_config = samplers.serialize(ours)
    theirs_config = keras_hub.samplers.serialize(theirs)
    assert ours_config["class_name"] == theirs_config["class_name"]
    assert set(ours_config) == set(theirs_config)
    again = samplers.deserialize(ours_config)
    assert type(again) is type(ours)
    assert again.get_config() == ours.get_config()


def test_min_p_by_name():
    sampler = samplers.get("min_p")
    assert isinstance(sampler, samplers.MinPSampler)
    assert samplers.deserialize(samplers.serialize(sampler)).p == sampler.p


def test_processors_round_trip_in_the_config():
    sampler = samplers.TopPSampler(
        p=0.3,
        seed=4,
        temperature=0.5,
        logits_processors=[
            samplers.RepetitionPenalty(1.3),
            samplers.BanTokens([2, 5]),
        ],
    )
    config = samplers.serialize(sampler)
    again = samplers.deserialize(config)
    assert again.get_config() == sampler.get_config()
    assert [type(p).__name__ for p in again.logits_processors] == [
        "RepetitionPenalty",
        "BanTokens",
    ]
    rows = np.broadcast_to(LOGITS, (4, toy.VOCAB))
    history = np.tile(np.arange(3, dtype="int32"), (4, 1))
    np.testing.assert_array_equal(
        to_numpy(again.next_token(rows, history, 3)),
        to_numpy(sampler.next_token(rows, history, 3)),
    )


# -- keras-hub's interface: user subclasses, `generate` ------------------------


class ForbidTokens(samplers.Sampler):
    """keras-hub's documented custom sampler: only `get_next_token`."""

    def __init__(self, forbidden_tokens, **kwargs):
        super().__init__(**kwargs)
        self.forbidden_tokens = forbidden_tokens

    def get_next_token(self, probs):
        batch_size, vocab_size = ops.shape(probs)
        for token in self.forbidden_tokens:
            update = ops.zeros((batch_size, 1))
            probs = ops.slice_update(probs, (0, token), update)
        return ops.argmax(probs, axis=-1)


def test_keras_hub_style_subclass():
    greedy = to_numpy(toy.run(samplers.GreedySampler()))
    forbidden = sorted(set(greedy[~toy.MASK].tolist()))[:1]
    ours = to_numpy(toy.run(ForbidTokens(forbidden)))
    assert forbidden[0] not in ours[~toy.MASK]
    np.testing.assert_array_equal(ours[toy.MASK], toy.PROMPT[toy.MASK])
    want = to_numpy(
        toy.run(
            samplers.GreedySampler(
                logits_processors=[samplers.BanTokens(forbidden)]
            )
        )
    )
    np.testing.assert_array_equal(ours, want)


def _tiny_gpt2():
    keras.utils.set_random_seed(0)
    backbone = keras_hub.models.GPT2Backbone(
        vocabulary_size=13,
        num_layers=1,
        num_heads=2,
        hidden_dim=8,
        intermediate_dim=16,
        max_sequence_length=16,
    )
    return keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)


@pytest.mark.parametrize("name", ["greedy", "beam"])
def test_our_sampler_in_keras_hub_generate(name):
    model = _tiny_gpt2()
    rng = np.random.default_rng(0)
    inputs = {
        "token_ids": rng.integers(1, 13, size=(2, 10)).astype("int32"),
        "padding_mask": np.arange(10)[None, :] < np.array([[3], [5]]),
    }
    inputs["token_ids"] = np.where(
        inputs["padding_mask"], inputs["token_ids"], 0
    )
    model.compile(sampler=samplers.get(name))
    ours = model.generate(dict(inputs), stop_token_ids=None)
    model.compile(sampler=name)
    theirs = model.generate(dict(inputs), stop_token_ids=None)
    np.testing.assert_array_equal(
        np.asarray(ours["token_ids"]), np.asarray(theirs["token_ids"])
    )
