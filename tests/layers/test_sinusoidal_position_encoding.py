import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import SinusoidalPositionEncoding
from tests.testing import assert_start_index_may_be_a_tensor
from tests.testing import import_keras_hub
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import sum_over_start_indices
from tests.testing import to_numpy


def reference_encoding(length, dim, start_index=0, max_wavelength=10000.0):
    """Vaswani et al. (2017), section 3.5, one entry at a time (float64):
    PE(p, 2k) = sin(p / w ** (2k / d)), PE(p, 2k + 1) = cos(p / w ** (2k / d)).
    """
    out = np.zeros((length, dim))
    for row in range(length):
        p = start_index + row
        for i in range(dim):
            k = i // 2
            angle = p / max_wavelength ** (2 * k / dim)
            out[row, i] = math.sin(angle) if i % 2 == 0 else math.cos(angle)
    return out


def test_exact_values_tiny():
    layer = SinusoidalPositionEncoding()
    out = to_numpy(layer(np.zeros((1, 3, 2), "float32")))[0]
    # dim 2: one frequency, wavelength 2 pi: [sin p, cos p].
    want = [[0.0, 1.0], [math.sin(1), math.cos(1)], [math.sin(2), math.cos(2)]]
    np.testing.assert_allclose(out, want, atol=1e-7)
    # dim 4, max_wavelength 100: the second pair has frequency 1 / 10.
    layer = SinusoidalPositionEncoding(max_wavelength=100)
    out = to_numpy(layer(np.zeros((1, 1, 4), "float32"), start_index=5))
    want = [math.sin(5), math.cos(5), math.sin(0.5), math.cos(0.5)]
    np.testing.assert_allclose(out[0, 0], want, atol=1e-6)


# (inputs shape, start_index, max_wavelength): an even feature size; an
# odd one at rank 4 with an offset and another wavelength; rank 2.
REFERENCE_CASES = [
    ((2, 12, 16), 0, 10000),
    ((3, 2, 5, 7), 3, 100.0),
    ((9, 4), 40, 10000),
]


def test_matches_numpy_reference(rng):
    for case in REFERENCE_CASES:
        shape, start_index, max_wavelength = case
        layer = SinusoidalPositionEncoding(max_wavelength=max_wavelength)
        x = rng.normal(size=shape).astype("float32")  # values are ignored
        out = to_numpy(layer(x, start_index=start_index))
        table = reference_encoding(
            shape[-2], shape[-1], start_index, max_wavelength
        )
        np.testing.assert_allclose(
            out, np.broadcast_to(table, shape), atol=2e-5, err_msg=str(case)
        )


def test_long_positions_stay_exact_under_mixed_precision():
    """Computed in float32, then rounded: at positions 1000..1063 a
    computation in bfloat16 (as keras-hub's) is off by up to 2; ours is off
    by the output's rounding only."""
    want = reference_encoding(64, 16, start_index=1000)
    for dtype, tol in (("float16", 1e-3), ("bfloat16", 4e-3)):
        layer = SinusoidalPositionEncoding(dtype=f"mixed_{dtype}")
        out = layer(np.zeros((1, 64, 16), "float32"), start_index=1000)
        assert keras.backend.standardize_dtype(out.dtype) == dtype
        np.testing.assert_allclose(
            to_numpy(ops.cast(out, "float32"))[0], want, atol=tol, err_msg=dtype
        )


def test_start_index_tensor_and_traced_loop(rng):
    layer = SinusoidalPositionEncoding()
    x = np.zeros((1, 1, 6), "float32")
    assert_start_index_may_be_a_tensor(layer, x, 3)
    total = sum_over_start_indices(layer, x, 5)
    np.testing.assert_allclose(
        total[0, 0], reference_encoding(5, 6).sum(0), atol=1e-5
    )


def test_layer_harness(rng):
    layer = run_layer_test(
        SinusoidalPositionEncoding,
        dict(max_wavelength=500),
        {"inputs": (2, 5, 6)},
        expected_output_shapes=[(2, 5, 6)],
        expected_num_trainable_weights=0,
        expected_num_non_trainable_variables=0,
        run_training_check=False,  # nothing to train
        rng=rng,
    )
    # In a model that trains: gradients flow around it, not into it.
    x = rng.normal(size=(2, 5, 6)).astype("float32")
    inputs = keras.Input((None, 6))
    hidden = keras.layers.Dense(6)(inputs)
    outputs = keras.layers.Add()([hidden, layer(hidden)])
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="sgd", loss="mse")
    before = to_numpy(model.trainable_weights[0])
    model.fit(x, x, verbose=0)
    assert not np.allclose(before, to_numpy(model.trainable_weights[0]))


def test_compiled_model_with_unknown_length(rng):
    """Any backend: a compiled `predict` (XLA on JAX) at two lengths."""
    inputs = keras.Input((None, 4))
    model = keras.Model(inputs, SinusoidalPositionEncoding()(inputs))
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    for length in (3, 11):
        x = rng.normal(size=(2, length, 4)).astype("float32")
        np.testing.assert_allclose(
            model.predict(x, verbose=0),
            np.broadcast_to(reference_encoding(length, 4), x.shape),
            atol=2e-5,
        )


@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_shape(rng):
    import tensorflow as tf

    layer = SinusoidalPositionEncoding()

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, None)),
            tf.TensorSpec((), tf.int32),
        ],
        autograph=False,
    )
    def run(x, start):
        return layer(x, start_index=start)

    for length, dim, start in ((3, 4, 0), (6, 5, 7)):
        x = np.zeros((2, length, dim), "float32")
        np.testing.assert_allclose(
            run(x, start).numpy(),
            np.broadcast_to(reference_encoding(length, dim, start), x.shape),
            atol=2e-5,
        )


def test_keras_mask_passes_through():
    tokens = np.array([[3, 4, 0]])
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    summed = keras.layers.Add()(
        [embedded, SinusoidalPositionEncoding()(embedded)]
    )
    assert getattr(summed, "_keras_mask", None) is not None
    model = keras.Model(inputs, keras.layers.GlobalAveragePooling1D()(summed))
    full = keras.Model(inputs, summed).predict(tokens, verbose=0)
    np.testing.assert_allclose(
        model.predict(tokens, verbose=0), [full[0, :2].mean(0)], atol=1e-6
    )


def test_saving(tmp_path, rng):
    inputs = keras.Input((None, 4))
    x = keras.layers.Dense(4)(inputs)
    encoding = SinusoidalPositionEncoding(max_wavelength=50, name="sines")
    model = keras.Model(inputs, keras.layers.Add()([x, encoding(x)]))
    run_saving_test(
        model,
        lambda b: rng.normal(size=(b, 5, 4)).astype("float32"),
        tmp_path,
        layer_types=[SinusoidalPositionEncoding],
    )


def test_matches_keras_hub(rng):
    keras_hub = import_keras_hub()
    x = rng.normal(size=(2, 9, 8)).astype("float32")
    for start in (0, 4):
        np.testing.assert_allclose(
            to_numpy(SinusoidalPositionEncoding()(x, start_index=start)),
            to_numpy(
                keras_hub.layers.SinePositionEncoding()(x, start_index=start)
            ),
            atol=1e-5,
        )
