import warnings

import keras
import numpy as np
import pytest

from keras_attention import PositionEmbedding
from tests.testing import assert_close_in_float32
from tests.testing import assert_start_index_may_be_a_tensor
from tests.testing import import_keras_hub
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import sum_over_start_indices
from tests.testing import to_numpy


def reference_positions(table, shape, start_index=0):
    """Rows `start_index .. start_index + length - 1` of the table,
    broadcast to `shape` (float64)."""
    table = np.asarray(table, np.float64)
    length = shape[-2]
    return np.broadcast_to(table[start_index : start_index + length], shape)


def _table(layer):
    return to_numpy(layer.position_embeddings.value)


def test_exact_values_tiny():
    layer = PositionEmbedding(4)
    layer.build((None, None, 2))
    layer.position_embeddings.assign(
        np.arange(8, dtype="float32").reshape(4, 2)
    )
    x = np.full((2, 2, 2), 7.0, "float32")  # values are ignored
    np.testing.assert_array_equal(
        to_numpy(layer(x)), [[[0, 1], [2, 3]], [[0, 1], [2, 3]]]
    )
    np.testing.assert_array_equal(
        to_numpy(layer(x, start_index=2)), [[[4, 5], [6, 7]]] * 2
    )
    np.testing.assert_array_equal(
        to_numpy(layer(np.zeros((1, 4, 2), "float32")))[0],
        np.arange(8).reshape(4, 2),
    )


# (inputs shape, start_index, dtype): the full table, a shorter input, an
# offset, ranks 4 and 2, mixed precision.
REFERENCE_CASES = [
    ((3, 10, 4), 0, "float32"),
    ((3, 6, 4), 0, "float32"),
    ((3, 6, 4), 4, "float32"),
    ((2, 3, 6, 4), 1, "float32"),
    ((6, 4), 2, "float32"),
    ((3, 6, 4), 4, "float16"),
    ((3, 6, 4), 4, "bfloat16"),
]


def test_matches_numpy_reference(rng):
    for case in REFERENCE_CASES:
        shape, start_index, dtype = case
        policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
        layer = PositionEmbedding(10, dtype=policy)
        x = rng.normal(size=shape).astype("float32")
        out = layer(x, start_index=start_index)
        assert keras.backend.standardize_dtype(out.dtype) == dtype, case
        assert layer.position_embeddings.dtype == "float32"
        want = reference_positions(_table(layer), shape, start_index)
        tol = {"float32": 0, "float16": 1e-3, "bfloat16": 8e-3}[dtype]
        assert_close_in_float32(out, want, tol, err_msg=str(case))


def test_start_index_tensor_and_traced_loop(rng):
    layer = PositionEmbedding(8)
    x = rng.normal(size=(2, 3, 5)).astype("float32")
    assert_start_index_may_be_a_tensor(layer, x, 4)

    # One position at a time inside a `keras.ops.fori_loop`.
    layer = PositionEmbedding(6)
    x = rng.normal(size=(2, 1, 3)).astype("float32")
    layer(x)
    total = sum_over_start_indices(layer, x, 6)
    np.testing.assert_allclose(total[0, 0], _table(layer).sum(0), rtol=1e-6)


def test_layer_behaviour(rng):
    run_layer_test(
        PositionEmbedding,
        dict(sequence_length=8),
        dict(inputs=(2, 5, 6)),
        call_kwargs=dict(start_index=0),
        expected_output_shapes=[(2, 5, 6)],
        expected_num_trainable_weights=1,
        rng=rng,
    )


def test_compiled_model_with_unknown_length(rng):
    """Any backend: a compiled `predict` (XLA on JAX) at two lengths."""
    inputs = keras.Input((None, 4))
    layer = PositionEmbedding(9)
    model = keras.Model(inputs, layer(inputs))
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    for length in (3, 9):
        x = rng.normal(size=(2, length, 4)).astype("float32")
        np.testing.assert_array_equal(
            model.predict(x, verbose=0),
            reference_positions(_table(layer), x.shape),
        )


@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_length_and_start(rng):
    import tensorflow as tf

    layer = PositionEmbedding(9)
    layer.build((None, None, 4))

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, 4)),
            tf.TensorSpec((), tf.int32),
        ],
        autograph=False,
    )
    def run(x, start):
        return layer(x, start_index=start)

    for length, start in ((3, 0), (4, 5), (9, 0)):
        x = rng.normal(size=(2, length, 4)).astype("float32")
        np.testing.assert_array_equal(
            run(x, start).numpy(),
            reference_positions(_table(layer), x.shape, start),
        )
    with pytest.raises(Exception):  # past the last position, at run time
        run(np.zeros((1, 4, 4), "float32"), 6)


def test_keras_mask_passes_through_add(rng):
    tokens = np.array([[3, 4, 0, 0], [5, 6, 7, 0]])
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        positions = PositionEmbedding(6)(embedded)
        summed = keras.layers.Add()([embedded, positions])
    assert not [w for w in caught if "destroy the mask" in str(w.message)]
    assert getattr(summed, "_keras_mask", None) is not None
    layer = PositionEmbedding(6)
    assert layer.compute_mask(embedded, tokens > 0) is not None
    # The mask reaches a downstream layer: masked mean of the rows.
    pooled = keras.layers.GlobalAveragePooling1D()(summed)
    model = keras.Model(inputs, pooled)
    full = keras.Model(inputs, summed).predict(tokens, verbose=0)
    got = model.predict(tokens, verbose=0)
    want = [full[0, :2].mean(0), full[1, :3].mean(0)]
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_saving(tmp_path, rng):
    inputs = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 4)(inputs)
    x = keras.layers.Add()([x, PositionEmbedding(6, name="positions")(x)])
    run_saving_test(
        keras.Model(inputs, x),
        lambda b: rng.integers(0, 10, size=(b, 5)).astype("int32"),
        tmp_path,
        layer_types=[PositionEmbedding],
    )


def test_matches_keras_hub(rng):
    keras_hub = import_keras_hub()
    theirs = keras_hub.layers.PositionEmbedding(sequence_length=7)
    ours = PositionEmbedding(7)
    x = rng.normal(size=(2, 5, 3)).astype("float32")
    theirs(x)
    ours(x)
    ours.set_weights(theirs.get_weights())
    for start in (0, 2):
        np.testing.assert_array_equal(
            to_numpy(ours(x, start_index=start)),
            to_numpy(theirs(x, start_index=start)),
        )
