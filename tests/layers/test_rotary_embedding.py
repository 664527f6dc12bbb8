import math

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import RotaryEmbedding
from keras_attention.layers.rotary_embedding import apply_rotary
from keras_attention.layers.rotary_embedding import rotary_positions
from tests import reference
from tests.testing import assert_start_index_may_be_a_tensor
from tests.testing import import_keras_hub
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import sum_over_start_indices
from tests.testing import to_numpy

# id: (inputs shape, sequence_axis, feature_axis).
LAYOUTS = {
    "BTHD": ((2, 5, 3, 4), 1, -1),
    "BHTD": ((2, 3, 5, 4), 2, -1),
    "BTD": ((2, 5, 6), 1, -1),
}
# id: positions of the 5 steps, or None for `start_index`.
POSITIONS = {
    "positions_1d": np.array([3, 1, 4, 1, 5], "int32"),
    "positions_2d": np.array([[0, 1, 2, 3, 4], [9, 2, 6, 5, 3]], "int32"),
    "positions_float": np.array([0.5, 7.0, 2.25, 11.0, 0.0], "float32"),
}
CASES = [
    pytest.param(
        layout, scaling, start, None, id=f"{layout}-s{scaling}-i{start}"
    )
    for layout in LAYOUTS
    for scaling in (1.0, 4.0)
    for start in (0, 5)
] + [
    pytest.param(layout, 4.0, 0, name, id=f"{layout}-{name}")
    for layout in LAYOUTS
    for name in POSITIONS
]


def _case(rng, layout, start, positions_id):
    shape, sequence_axis, feature_axis = LAYOUTS[layout]
    x = rng.normal(size=shape).astype("float32")
    call = {"start_index": start}
    positions = np.arange(start, start + 5)
    if positions_id is not None:
        positions = call["positions"] = POSITIONS[positions_id]
    axes = dict(sequence_axis=sequence_axis, feature_axis=feature_axis)
    return x, call, positions, axes


def test_exact_values_tiny():
    # Two features: [1, 0] at position p rotates to [cos p, sin p], and
    # [0, 1] to [-sin p, cos p]; scaling_factor 2 halves the angle.
    x = np.array([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]]], "float32")
    out = to_numpy(RotaryEmbedding()(x))[0]
    want = [[1, 0], [-math.sin(1), math.cos(1)], [math.cos(2), math.sin(2)]]
    np.testing.assert_allclose(out, want, atol=1e-7)
    out = to_numpy(RotaryEmbedding(scaling_factor=2)(x, start_index=2))[0]
    want = [
        [math.cos(1), math.sin(1)],
        [-math.sin(1.5), math.cos(1.5)],
        [math.cos(2), math.sin(2)],
    ]
    np.testing.assert_allclose(out, want, atol=1e-7)
    # Four features, max_wavelength 100: the second pair (features 1 and
    # 3) turns at a tenth of the first's rate.
    x = np.array([[[1.0, 1.0, 0.0, 0.0]]], "float32")
    out = to_numpy(RotaryEmbedding(max_wavelength=100)(x, start_index=5))
    want = [math.cos(5), math.cos(0.5), math.sin(5), math.sin(0.5)]
    np.testing.assert_allclose(out[0, 0], want, atol=1e-6)


@pytest.mark.parametrize("layout, scaling, start, positions_id", CASES)
def test_matches_numpy_reference(rng, layout, scaling, start, positions_id):
    x, call, positions, axes = _case(rng, layout, start, positions_id)
    layer = RotaryEmbedding(max_wavelength=100, scaling_factor=scaling, **axes)
    want = reference.rotary_embedding(x, positions, 100, scaling, **axes)
    np.testing.assert_allclose(to_numpy(layer(x, **call)), want, atol=2e-6)


@pytest.mark.parametrize("layout, scaling, start, positions_id", CASES)
def test_matches_keras_hub(rng, layout, scaling, start, positions_id):
    kh = import_keras_hub()
    x, call, _, axes = _case(rng, layout, start, positions_id)
    kwargs = dict(max_wavelength=100, scaling_factor=scaling, **axes)
    np.testing.assert_allclose(
        to_numpy(RotaryEmbedding(**kwargs)(x, **call)),
        to_numpy(kh.layers.RotaryEmbedding(**kwargs)(x, **call)),
        rtol=0,
        atol=1e-6,
    )


def test_mixed_bfloat16_matches_keras_hub(rng):
    """Cosines and sines from float32 angles, rounded once to bfloat16:
    exact to bfloat16 rounding at positions 1000.., equal to keras-hub."""
    kh = import_keras_hub()
    x = rng.normal(size=(2, 4, 2, 8)).astype("float32")
    want = reference.rotary_embedding(x, np.arange(1000, 1004))
    ours = RotaryEmbedding(dtype="mixed_bfloat16")(x, start_index=1000)
    theirs = kh.layers.RotaryEmbedding(dtype="mixed_bfloat16")(
        x, start_index=1000
    )
    assert keras.backend.standardize_dtype(ours.dtype) == "bfloat16"
    ours = to_numpy(ops.cast(ours, "float32"))
    np.testing.assert_array_equal(ours, to_numpy(ops.cast(theirs, "float32")))
    np.testing.assert_allclose(ours, want, atol=0.05)


def test_rotation_depends_on_relative_position_only(rng):
    """RoPE's point: <R(p) q, R(s) k> depends on p - s only."""
    q = rng.normal(size=(1, 1, 1, 8)).astype("float32")
    k = rng.normal(size=(1, 1, 1, 8)).astype("float32")
    layer = RotaryEmbedding()

    def score(p, s):
        rq = to_numpy(layer(q, start_index=p))
        rk = to_numpy(layer(k, start_index=s))
        return float(np.sum(rq * rk))

    np.testing.assert_allclose(score(3, 1), score(10, 8), atol=1e-5)
    np.testing.assert_allclose(score(0, 0), float(np.sum(q * k)), atol=1e-5)


def test_positions_override_start_index(rng):
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    layer = RotaryEmbedding()
    np.testing.assert_array_equal(
        to_numpy(layer(x, start_index=7, positions=np.array([2, 3, 4]))),
        to_numpy(layer(x, start_index=2)),
    )
    # A batch of one broadcasts, as 1-D positions do.
    np.testing.assert_array_equal(
        to_numpy(layer(x, positions=np.array([[5, 0, 2]]))),
        to_numpy(layer(x, positions=np.array([5, 0, 2]))),
    )


def test_apply_rotary_helper(rng):
    """The helper the attention layers use: (batch, length, heads,
    head_dim), positions from `rotary_positions` or given."""
    x = rng.normal(size=(2, 4, 3, 6)).astype("float32")
    out = apply_rotary(x, rotary_positions(4, 2), 500, 2.0, "float32")
    want = reference.rotary_embedding(x, np.arange(2, 6), 500, 2.0)
    np.testing.assert_allclose(to_numpy(out), want, atol=2e-6)
    positions = np.array([[1, 2, 3, 4], [8, 0, 8, 0]])
    out = apply_rotary(x, positions, compute_dtype="bfloat16")
    assert keras.backend.standardize_dtype(out.dtype) == "bfloat16"
    np.testing.assert_allclose(
        to_numpy(ops.cast(out, "float32")),
        reference.rotary_embedding(x, positions),
        atol=0.05,
    )


def test_start_index_tensor_and_traced_loop(rng):
    layer = RotaryEmbedding()
    x = rng.normal(size=(1, 1, 2, 4)).astype("float32")
    assert_start_index_may_be_a_tensor(layer, x, 3)
    total = sum_over_start_indices(layer, x, 4)
    want = sum(reference.rotary_embedding(x, [p]) for p in range(4))
    np.testing.assert_allclose(total, want, atol=1e-5)


def test_layer_harness(rng):
    run_layer_test(
        RotaryEmbedding,
        dict(max_wavelength=500, scaling_factor=2.0, sequence_axis=2),
        {"inputs": (2, 3, 5, 4)},
        expected_output_shapes=[(2, 3, 5, 4)],
        expected_num_trainable_weights=0,
        expected_num_non_trainable_variables=0,
        run_training_check=False,  # nothing to train
        rng=rng,
    )


def test_compiled_model_with_unknown_length(rng):
    """Any backend: a compiled `predict` (XLA on JAX) at two lengths, with
    positions as a model input."""
    inputs = keras.Input((None, 2, 4))
    positions = keras.Input((None,), dtype="int32")
    outputs = RotaryEmbedding()(inputs, positions=positions)
    model = keras.Model([inputs, positions], outputs)
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    for length in (3, 6):
        x = rng.normal(size=(2, length, 2, 4)).astype("float32")
        p = rng.integers(0, 50, size=(2, length)).astype("int32")
        np.testing.assert_allclose(
            model.predict([x, p], verbose=0),
            reference.rotary_embedding(x, p),
            atol=1e-5,
        )


@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_shape(rng):
    import tensorflow as tf

    layer = RotaryEmbedding(sequence_axis=2)

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, None, None)),
            tf.TensorSpec((), tf.int32),
        ],
        autograph=False,
    )
    def run(x, start):
        return layer(x, start_index=start)

    for shape, start in (((2, 1, 3, 4), 0), ((1, 2, 5, 6), 7)):
        x = rng.normal(size=shape).astype("float32")
        want = reference.rotary_embedding(
            x, np.arange(start, start + shape[2]), sequence_axis=2
        )
        np.testing.assert_allclose(run(x, start).numpy(), want, atol=1e-5)


def test_keras_mask_passes_through():
    inputs = keras.Input((None,), dtype="int32")
    embedded = keras.layers.Embedding(10, 4, mask_zero=True)(inputs)
    rotated = RotaryEmbedding()(embedded)
    assert getattr(rotated, "_keras_mask", None) is not None


def test_saving(tmp_path, rng):
    inputs = keras.Input((None, 4))
    x = keras.layers.Dense(4)(inputs)
    rope = RotaryEmbedding(max_wavelength=50, scaling_factor=2.0, name="rope")
    model = keras.Model(inputs, rope(x))
    run_saving_test(
        model,
        lambda b: rng.normal(size=(b, 5, 4)).astype("float32"),
        tmp_path,
        layer_types=[RotaryEmbedding],
    )
