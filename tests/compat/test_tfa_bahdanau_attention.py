"""`keras_attention.compat.tfa.BahdanauAttention` against tfa's formulas."""

import math

import keras
import numpy as np
import pytest

from keras_attention.compat import tfa
from tests.compat import tfa_numpy
from tests.testing import randomize_weights
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import run_serialization_test
from tests.testing import to_numpy

B, T, DQ, DM, UNITS = 3, 5, 6, 4, 7


def _reference(layer, query, memory, **masks):
    weights = layer.get_weights()
    if layer.normalize:
        v, g, b, wq, wm = weights
    else:
        (v, wq, wm), g, b = weights, None, None
    return tfa_numpy.bahdanau_attention(
        query,
        memory,
        v,
        wq,
        wm,
        attention_g=g,
        attention_b=b,
        probability_fn=layer.probability_fn,
        **masks,
    )


LENGTHS = np.array([5, 2, 3], "int32")
MASK = np.array(
    [[1, 0, 1, 1, 0], [0, 0, 0, 0, 0], [1, 1, 1, 1, 1]], bool
)  # the second row has no valid position

CASES = {
    "plain": (dict(), {}),
    "normalize": (dict(normalize=True), {}),
    "lengths": (dict(), dict(memory_sequence_length=LENGTHS)),
    "normalize_lengths": (
        dict(normalize=True),
        dict(memory_sequence_length=LENGTHS),
    ),
    "mask_with_empty_row": (dict(), dict(memory_mask=MASK)),
    "normalize_mask": (dict(normalize=True), dict(memory_mask=MASK)),
    "hardmax": (dict(probability_fn="hardmax"), {}),
    "hardmax_lengths": (
        dict(probability_fn="hardmax", normalize=True),
        dict(memory_sequence_length=LENGTHS),
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_numpy_reference(case, rng):
    init, masks = CASES[case]
    layer = tfa.BahdanauAttention(UNITS, **init)
    query = rng.normal(size=(B, DQ)).astype("float32")
    memory = rng.normal(size=(B, T, DM)).astype("float32")
    layer(query, memory, **masks)
    randomize_weights(layer, rng)
    context, alignments = layer(query, memory, **masks)
    expected_context, expected_alignments = _reference(
        layer, query, memory, **masks
    )
    np.testing.assert_allclose(
        to_numpy(alignments), expected_alignments, atol=1e-6
    )
    np.testing.assert_allclose(to_numpy(context), expected_context, atol=1e-6)
    if masks:
        valid = (
            MASK
            if "memory_mask" in masks
            else np.arange(T)[None] < LENGTHS[:, None]
        )
        has_valid = valid.any(-1, keepdims=True)
        assert np.all(to_numpy(alignments)[~valid & has_valid] == 0.0)


def test_no_valid_position_is_uniform_with_zero_context_as_in_tfa(rng):
    layer = tfa.BahdanauAttention(4)
    memory = rng.normal(size=(2, 3, 2)).astype("float32")
    mask = np.array([[True, False, True], [False, False, False]])
    context, alignments = layer(
        rng.normal(size=(2, 5)).astype("float32"), memory, memory_mask=mask
    )
    np.testing.assert_allclose(to_numpy(alignments)[1], 1 / 3, atol=1e-7)
    assert np.all(to_numpy(context)[1] == 0.0)  # tfa zeroes padded memory


@pytest.mark.parametrize("normalize", [False, True], ids=["plain", "normalize"])
def test_exact_values_tiny(normalize):
    # Scores [0, ln 3]: alignments [1/4, 3/4]; context 2/4 + 18/4 = 5.
    layer = tfa.BahdanauAttention(units=1, normalize=normalize)
    query = np.zeros((1, 1), "float32")
    memory = np.array([[[0.0], [1.0]]], "float32")
    v = math.log(3.0) / math.tanh(1.0)
    if normalize:  # g * v / |v| with v = -2: the sign flips, g carries size
        weights = [[-2.0], -v, [0.0], [[1.0]], [[1.0]]]
    else:
        weights = [[v], [[1.0]], [[1.0]]]
    layer(query, memory)
    layer.set_weights([np.asarray(w, "float32") for w in weights])
    # The memory's features are the values: [0] and [1] give 3/4; use a
    # second feature to check the weighted sum.
    context, alignments = layer(query, memory)
    np.testing.assert_allclose(to_numpy(alignments), [[0.25, 0.75]], atol=1e-6)
    np.testing.assert_allclose(to_numpy(context), [[0.75]], atol=1e-6)
    _, hard = tfa.BahdanauAttention(1, probability_fn="hardmax")(query, memory)
    assert to_numpy(hard).sum() == 1.0


def test_weights_have_tfas_order_and_shapes():
    layer = tfa.BahdanauAttention(UNITS, normalize=True)
    layer(np.zeros((1, DQ), "float32"), np.zeros((1, T, DM), "float32"))
    assert [
        (w.path.split("/", 1)[1], tuple(w.shape)) for w in layer.weights
    ] == [
        ("attention_v", (UNITS,)),
        ("attention_g", ()),
        ("attention_b", (UNITS,)),
        ("query_layer/kernel", (DQ, UNITS)),
        ("memory_layer/kernel", (DM, UNITS)),
    ]
    np.testing.assert_allclose(layer.get_weights()[1], math.sqrt(1 / UNITS))
    plain = tfa.BahdanauAttention(UNITS)
    plain(np.zeros((1, DQ), "float32"), np.zeros((1, T, DM), "float32"))
    assert [tuple(w.shape) for w in plain.weights] == [
        (UNITS,),
        (DQ, UNITS),
        (DM, UNITS),
    ]


def test_symbolic_shapes_match_eager(rng):
    query = keras.Input((DQ,))
    memory = keras.Input((None, DM))
    lengths = keras.Input((), dtype="int32")
    context, alignments = tfa.BahdanauAttention(UNITS)(
        query, memory, memory_sequence_length=lengths
    )
    assert tuple(context.shape) == (None, DM)
    assert tuple(alignments.shape) == (None, None)
    layer = tfa.BahdanauAttention(UNITS)
    eager = layer(
        rng.normal(size=(2, DQ)).astype("float32"),
        rng.normal(size=(2, 9, DM)).astype("float32"),
    )
    assert [tuple(x.shape) for x in eager] == [(2, DM), (2, 9)]
    assert layer.compute_output_shape((2, DQ), (2, 9, DM)) == ((2, DM), (2, 9))


def test_layer_harness(rng):
    run_layer_test(
        tfa.BahdanauAttention,
        dict(units=5, normalize=True, kernel_initializer="ones"),
        {"query": (B, DQ), "memory": (B, T, DM)},
        expected_output_shapes=[(B, DM), (B, T)],
        expected_num_trainable_weights=5,
        rng=rng,
    )
    hardmax = tfa.BahdanauAttention(5, probability_fn="hardmax")
    run_serialization_test(hardmax)


def test_registered_names_deserialize_to_the_compat_layer():
    serialized = keras.saving.serialize_keras_object(tfa.BahdanauAttention(5))
    assert (
        serialized["registered_name"]
        == "keras_attention.compat.tfa>BahdanauAttention"
    )
    for name in (serialized["registered_name"], "Addons>BahdanauAttention"):
        serialized["registered_name"] = name
        assert isinstance(
            keras.saving.deserialize_keras_object(serialized),
            tfa.BahdanauAttention,
        )


def _tfa_dense(name, units=UNITS, use_bias=False):
    return {
        "class_name": "Dense",
        "config": {"name": name, "units": units, "use_bias": use_bias},
    }


def test_from_config_accepts_tfas_config():
    config = {
        "name": "BahdanauAttention",
        "trainable": True,
        "dtype": "float32",
        "units": UNITS,
        "normalize": True,
        "probability_fn": "softmax",
        "kernel_initializer": {
            "class_name": "GlorotUniform",
            "config": {"seed": None},
        },
        "memory": None,
        "query_layer": _tfa_dense("query_layer"),
        "memory_layer": _tfa_dense("memory_layer"),
    }
    layer = tfa.BahdanauAttention.from_config(config)
    assert (layer.units, layer.normalize) == (UNITS, True)
    legacy = {"class_name": "Addons>BahdanauAttention", "config": config}
    assert type(keras.layers.deserialize(legacy)) is tfa.BahdanauAttention


@pytest.mark.parametrize(
    "key, value, match",
    [
        ("query_layer", _tfa_dense("q", use_bias=True), "`query_layer`"),
        ("memory_layer", _tfa_dense("m", units=3), "`memory_layer`"),
        ("memory", [[1.0]], "`memory` is not a constructor argument"),
    ],
    ids=["query_layer_bias", "memory_layer_units", "memory_tensor"],
)
def test_from_config_rejects_what_it_cannot_reproduce(key, value, match):
    config = {"units": UNITS, key: value}
    with pytest.raises(ValueError, match=match):
        tfa.BahdanauAttention.from_config(config)


def _model():
    query = keras.Input((DQ,), name="query")
    memory = keras.Input((None, DM), name="memory")
    lengths = keras.Input((), dtype="int32", name="lengths")
    context, alignments = tfa.BahdanauAttention(
        UNITS, normalize=True, name="attention"
    )(query, memory, memory_sequence_length=lengths)
    output = keras.layers.Concatenate()(
        [keras.layers.Dense(3)(context), alignments]
    )
    return keras.Model([query, memory, lengths], output)


def _model_data(rng, batch, length=T):
    return [
        rng.normal(size=(batch, DQ)).astype("float32"),
        rng.normal(size=(batch, length, DM)).astype("float32"),
        rng.integers(1, length + 1, size=(batch,)).astype("int32"),
    ]


def test_saving(tmp_path, rng):
    # tfa's stateful mechanism could not be exported (tensorflow/addons#2675).
    run_saving_test(
        _model(),
        lambda b: _model_data(rng, b),
        tmp_path,
        layer_types=[tfa.BahdanauAttention],
    )


def test_fit_step_changes_every_weight(rng):
    model = _model()
    data = _model_data(rng, 4)
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    before = [w.numpy() for w in model.trainable_weights]
    model.fit(data, rng.normal(size=(4, 3 + T)), epochs=1, verbose=0)
    after = [w.numpy() for w in model.trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_memory_keras_mask_fills_memory_mask(rng):
    tokens = keras.Input((None,), dtype="int32")
    memory = keras.layers.Embedding(10, DM, mask_zero=True, name="embed")(
        tokens
    )
    query = keras.Input((DQ,))
    layer = tfa.BahdanauAttention(UNITS)
    context, alignments = layer(query, memory)
    assert getattr(context, "_keras_mask", None) is None
    model = keras.Model([query, tokens], [context, alignments])
    ids = np.array([[3, 4, 0, 0], [1, 2, 3, 4]], "int32")
    q = rng.normal(size=(2, DQ)).astype("float32")
    got_context, got_alignments = model.predict([q, ids], verbose=0)
    embedded = to_numpy(model.get_layer("embed")(ids))
    expected = _reference(layer, q, embedded, memory_mask=ids != 0)
    np.testing.assert_allclose(got_alignments, expected[1], atol=1e-6)
    np.testing.assert_allclose(got_context, expected[0], atol=1e-6)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, rng):
    query = rng.normal(size=(B, DQ)).astype("float32")
    memory = rng.normal(size=(B, T, DM)).astype("float32")
    full = tfa.BahdanauAttention(UNITS, normalize=True)
    expected = full(query, memory, memory_sequence_length=LENGTHS)
    mixed = tfa.BahdanauAttention(UNITS, normalize=True, dtype=policy)
    mixed(query, memory, memory_sequence_length=LENGTHS)
    mixed.set_weights(full.get_weights())
    got = mixed(query, memory, memory_sequence_length=LENGTHS)
    compute = policy.split("_")[1]
    for x in got:
        assert keras.backend.standardize_dtype(x.dtype) == compute
    assert all(w.dtype == "float32" for w in mixed.weights)
    for g, e in zip(got, expected):
        np.testing.assert_allclose(
            to_numpy(g).astype("float32"), to_numpy(e), atol=5e-2
        )
