"""The draws: the exact tokens of a NumPy emulation of the Gumbel-max
draw (random, top-k) and of the inverse transform (top-p, min-p) on the
hash (so the same on every backend), the same eagerly and
traced, and exportable loops (no XLA op on TensorFlow)."""

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import samplers
from tests.samplers import toy
from tests.testing import to_numpy
from tests.testing import traced

LOGITS = np.random.default_rng(3).normal(size=(64, toy.VOCAB))
LOGITS = LOGITS.astype("float32")
HISTORY = np.zeros((64, 1), "int32")


def _emulated(sampler, seed, position):
    """The tokens the documented draw gives, in NumPy."""
    q = toy.softmax(LOGITS, sampler.temperature)
    kind = {"TopKSampler": "top_k", "RandomSampler": "all"}.get(
        type(sampler).__name__,
        "top_p" if isinstance(sampler, samplers.TopPSampler) else "min_p",
    )
    rules = {"k": getattr(sampler, "k", None)}
    if kind in ("top_p", "min_p"):
        rules["p"] = sampler.p
    keep = np.stack([toy.kept(row, kind, **rules) for row in q])
    if kind in ("top_p", "min_p"):
        # Inverse transform, one uniform per row: top-p in the order of
        # probability, min-p in token-id order.
        u = toy.uniform(seed, position, LOGITS.shape[0], 1)
        order = np.argsort(-q, axis=-1, kind="stable")
        if kind == "min_p":
            order = np.broadcast_to(np.arange(q.shape[1]), q.shape)
        kept = np.take_along_axis(np.where(keep, q, 0.0), order, axis=-1)
        cumulative = np.cumsum(kept, axis=-1)
        column = (cumulative < u * cumulative[:, -1:]).sum(axis=-1)
        return np.take_along_axis(order, column[:, None], axis=-1)[:, 0]
    u = toy.uniform(seed, position, *LOGITS.shape)
    with np.errstate(divide="ignore"):
        scores = np.where(keep, np.log(q), -np.inf) - np.log(-np.log(u))
    return np.argmax(scores, axis=-1)


SAMPLERS = [
    samplers.RandomSampler(seed=9),
    samplers.TopKSampler(k=3, seed=9, temperature=0.8),
    samplers.TopPSampler(p=0.7, seed=9),
    samplers.TopPSampler(p=0.7, k=4, seed=9),
    samplers.MinPSampler(p=0.2, seed=9),
    samplers.MinPSampler(p=0.1, k=3, seed=9),
]


@pytest.mark.parametrize("sampler", SAMPLERS, ids=repr)
def test_draws_match_numpy_emulation(sampler):
    got = to_numpy(sampler.next_token(LOGITS, HISTORY, 5, seed=77))
    np.testing.assert_array_equal(got, _emulated(sampler, 77, 5))
    # Outside `next_token`: the sampler's seed at position 0.
    probabilities = sampler.compute_probabilities(LOGITS)
    got = to_numpy(sampler.get_next_token(probabilities))
    np.testing.assert_array_equal(got, _emulated(sampler, 9, 0))


@pytest.mark.parametrize("sampler", SAMPLERS[1:], ids=repr)
def test_seeded_draws_same_eager_and_traced(sampler):
    def draw(logits, seed, position):
        return sampler.next_token(logits, HISTORY, position, seed=seed)

    seed = ops.convert_to_tensor(123, "int32")
    position = ops.convert_to_tensor(4, "int32")
    eager = to_numpy(draw(LOGITS, seed, position))
    compiled = to_numpy(traced(draw)(LOGITS, seed, position))
    np.testing.assert_array_equal(eager, compiled)
    # Another seed gives other tokens.
    other = to_numpy(draw(LOGITS, ops.convert_to_tensor(124, "int32"), 4))
    assert (other != eager).any()


@pytest.mark.parametrize(
    "sampler",
    [samplers.TopPSampler(p=0.8, seed=5), samplers.BeamSampler(num_beams=2)],
    ids=repr,
)
def test_generation_loop_same_eager_and_traced(sampler):
    eager = to_numpy(toy.run(sampler, stop_token_ids=[3]))
    compiled = to_numpy(traced(lambda: toy.run(sampler, stop_token_ids=[3]))())
    np.testing.assert_array_equal(eager, compiled)
    # Each position draws anew: not the same token everywhere.
    assert len(set(eager[~toy.MASK].tolist())) > 1


def _op_types(concrete_function):
    graph = concrete_function.graph.as_graph_def()
    types = {node.op for node in graph.node}
    for function in graph.library.function:
        types |= {node.op for node in function.node_def}
    return types


@pytest.mark.tensorflow_only
@pytest.mark.parametrize(
    "sampler",
    [
        samplers.GreedySampler(),
        samplers.TopPSampler(p=0.5, k=4),
        samplers.BeamSampler(num_beams=2),
        samplers.ContrastiveSampler(k=2),
        samplers.MinPSampler(
            p=0.1,
            logits_processors=[
                samplers.RepetitionPenalty(1.2),
                samplers.FrequencyPenalty(0.3),
                samplers.BanTokens([1]),
            ],
        ),
    ],
    ids=repr,
)
def test_loop_has_no_xla_op(sampler):
    import tensorflow as tf

    def generate(prompt, mask, cache, hidden):
        return sampler(
            toy.next,
            prompt,
            cache=cache,
            index=toy.INDEX,
            mask=mask,
            stop_token_ids=[3],
            hidden_states=hidden,
        )

    function = tf.function(generate, autograph=False)
    cache, hidden = toy.initial_state()
    concrete = function.get_concrete_function(
        tf.TensorSpec((None, toy.MAX_LENGTH), "int32"),
        tf.TensorSpec((None, toy.MAX_LENGTH), "bool"),
        tf.TensorSpec((None, toy.MAX_LENGTH), "float32"),
        tf.TensorSpec((None, toy.MAX_LENGTH, toy.HIDDEN), "float32"),
    )
    types = _op_types(concrete)
    assert "While" in types or "StatelessWhile" in types, types
    assert not {t for t in types if t.startswith("Xla")}, types
    # The graph runs, with the eager tokens.
    args = (toy.PROMPT, toy.MASK, cache, hidden)
    np.testing.assert_array_equal(
        to_numpy(concrete(*[tf.constant(a) for a in args])),
        to_numpy(generate(*[tf.constant(a) for a in args])),
    )


@pytest.mark.tensorflow_only
def test_xla_check_sees_slice_update():
    """The check above finds keras-hub's `slice_update` loop's XLA op."""
    import tensorflow as tf

    from tests.testing import import_keras_hub

    keras_hub = import_keras_hub()
    sampler = keras_hub.samplers.GreedySampler()
    function = tf.function(
        lambda prompt, cache: sampler(
            toy.next, prompt, cache=cache, index=toy.INDEX
        ),
        autograph=False,
    )
    concrete = function.get_concrete_function(
        tf.TensorSpec((None, toy.MAX_LENGTH), "int32"),
        tf.TensorSpec((None, toy.MAX_LENGTH), "float32"),
    )
    assert "XlaDynamicUpdateSlice" in _op_types(concrete)


def test_sampler_variables_are_empty():
    assert samplers.TopKSampler(seed=1).variables == []
    assert keras.tree.flatten(samplers.BeamSampler().variables) == []
