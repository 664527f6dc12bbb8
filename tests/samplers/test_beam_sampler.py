"""`BeamSampler`'s pieces for a loop of one's own: `select` (ties broken
by the lower flat index), `repeat_beams` and `reorder_beams`."""

import numpy as np

from keras_attention import samplers
from tests.testing import to_numpy


def _select_numpy(log_probs, logits, num_beams):
    """Stable sort of the flat scores: the lower flat index first on
    ties."""
    z = logits - logits.max(-1, keepdims=True)
    log_softmax = z - np.log(np.exp(z).sum(-1, keepdims=True))
    vocab = logits.shape[-1]
    scores = log_softmax.reshape(-1, num_beams, vocab) + log_probs[..., None]
    scores = scores.reshape(-1, num_beams * vocab)
    flat = np.argsort(-scores, axis=-1, kind="stable")[:, :num_beams]
    values = np.take_along_axis(scores, flat, axis=-1)
    return flat // vocab, flat % vocab, values


def test_select_breaks_ties_by_lower_flat_index():
    sampler = samplers.BeamSampler(num_beams=3)
    # Two rows of three beams over 4 tokens, full of equal scores.
    logits = np.array(
        [[1.0, 2.0, 2.0, 0.0]] * 3 + [[0.0, 0.0, 0.0, 0.0]] * 3, "float32"
    )
    log_probs = np.array([[-1.0, -1.0, -2.0], [0.0, 0.0, 0.0]], "float32")
    beams, tokens, new_log_probs = sampler.select(log_probs, logits)
    want_beams, want_tokens, want_values = _select_numpy(log_probs, logits, 3)
    np.testing.assert_array_equal(to_numpy(beams), want_beams)
    np.testing.assert_array_equal(to_numpy(tokens), want_tokens)
    np.testing.assert_allclose(to_numpy(new_log_probs), want_values, atol=1e-6)
    assert to_numpy(tokens)[0].tolist() == [1, 2, 1]
    assert to_numpy(beams)[1].tolist() == [0, 0, 0]


def test_select_with_infinite_scores_picks_distinct_candidates():
    sampler = samplers.BeamSampler(
        num_beams=2, logits_processors=[samplers.BanTokens([0, 1, 2])]
    )
    logits = np.zeros((2, 4), "float32")
    beams, tokens, _ = sampler.select(np.zeros((1, 2), "float32"), logits)
    # Token 3 of both beams: distinct flat indices.
    assert to_numpy(beams).tolist() == [[0, 1]]
    assert to_numpy(tokens).tolist() == [[3, 3]]


def test_repeat_and_reorder_beams_gather_rows(rng):
    sampler = samplers.BeamSampler(num_beams=3)
    cache = {"key": rng.normal(size=(2, 5, 4)).astype("float32")}
    beams = sampler.repeat_beams(cache)
    np.testing.assert_array_equal(
        to_numpy(beams["key"]), np.repeat(cache["key"], 3, axis=0)
    )
    tagged = np.arange(6, dtype="float32")[:, None, None] + 0 * to_numpy(
        beams["key"]
    )
    order = np.array([[2, 2, 0], [1, 0, 1]], "int32")
    got = to_numpy(sampler.reorder_beams(tagged, order))[:, 0, 0]
    assert got.tolist() == [2, 2, 0, 4, 3, 4]
