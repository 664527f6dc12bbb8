import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import PatchEmbedding
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import to_numpy


def reference_patches(images, kernel, bias=None):
    """Loops over the patches in row-major order (float64)."""
    images = np.asarray(images, np.float64)
    kernel = np.asarray(kernel, np.float64)
    ph, pw, channels, hidden = kernel.shape
    batch, height, width, _ = images.shape
    flat_kernel = kernel.reshape(ph * pw * channels, hidden)
    rows = []
    for i in range(height // ph):
        for j in range(width // pw):
            patch = images[:, i * ph : (i + 1) * ph, j * pw : (j + 1) * pw]
            rows.append(patch.reshape(batch, -1) @ flat_kernel)
    out = np.stack(rows, axis=1)
    if bias is not None:
        out = out + np.asarray(bias, np.float64)
    return out


def test_exact_values():
    # A 2 x 4 one-channel image, 2 x 2 patches, a kernel of ones: each
    # output is the sum of its patch's pixels (plus the bias).
    image = np.array([[1, 2, 3, 4], [5, 6, 7, 8]], "float32")[None, :, :, None]
    layer = PatchEmbedding(
        2, hidden_dim=2, kernel_initializer="ones", bias_initializer="ones"
    )
    out = to_numpy(layer(image))
    np.testing.assert_array_equal(out, [[[15.0, 15.0], [23.0, 23.0]]])

    # Row-major patch order: patch (i, j) of a 4 x 6 image holds the value
    # 10 * i + j everywhere; the one output feature reads the top-left pixel.
    image = np.zeros((1, 4, 6, 1), "float32")
    for i in range(2):
        for j in range(3):
            image[0, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2] = 10 * i + j
    layer = PatchEmbedding((2, 2), hidden_dim=1, use_bias=False)
    layer.build(image.shape)
    kernel = np.zeros((2, 2, 1, 1), "float32")
    kernel[0, 0, 0, 0] = 1.0
    layer.kernel.assign(kernel)
    out = to_numpy(layer(image))[0, :, 0]
    np.testing.assert_array_equal(out, [0, 1, 2, 10, 11, 12])


# (patch_size, (height, width), dtype, use_bias, integer pixels)
REFERENCE_CASES = [
    ((2, 4), (6, 8), "float32", True, False),
    ((3, 1), (3, 5), "float32", False, False),
    ((2, 4), (6, 8), "float32", True, True),
    ((2, 4), (6, 8), "bfloat16", True, False),
]


def test_matches_numpy_reference(rng):
    for case in REFERENCE_CASES:
        patch_size, image_hw, dtype, use_bias, integer = case
        images = rng.normal(size=(2,) + image_hw + (3,)).astype("float32")
        if integer:  # uint8 pixels are projected as floats
            images = rng.integers(0, 256, size=images.shape).astype("uint8")
        policy = "float32" if dtype == "float32" else f"mixed_{dtype}"
        layer = PatchEmbedding(
            patch_size,
            6,
            use_bias=use_bias,
            bias_initializer="random_normal",
            dtype=policy,
        )
        out = layer(images)
        assert keras.backend.standardize_dtype(out.dtype) == dtype, case
        cast = to_numpy(ops.cast(ops.cast(images, dtype), "float32"))
        want = reference_patches(
            cast,
            to_numpy(layer.kernel.value),
            to_numpy(layer.bias.value) if use_bias else None,
        )
        ph, pw = layer._patch_hw
        grid = (image_hw[0] // ph) * (image_hw[1] // pw)
        assert want.shape == (2, grid, 6), case
        tol = {"float32": 1e-5, "float16": 1e-2, "bfloat16": 6e-2}[dtype]
        np.testing.assert_allclose(
            to_numpy(ops.cast(out, "float32")),
            want,
            atol=tol * (100 if integer else 1),
            rtol=tol,
            err_msg=str(case),
        )


def test_same_as_strided_conv2d_with_the_same_weights(rng):
    images = rng.normal(size=(3, 8, 12, 2)).astype("float32")
    layer = PatchEmbedding((4, 3), 5, bias_initializer="random_normal")
    out = layer(images)
    conv = keras.layers.Conv2D(5, (4, 3), strides=(4, 3))
    conv.build(images.shape)
    conv.set_weights(layer.get_weights())
    want = ops.reshape(conv(images), (3, -1, 5))
    np.testing.assert_allclose(to_numpy(out), to_numpy(want), atol=1e-5)


def test_layer_behaviour(rng):
    run_layer_test(
        PatchEmbedding,
        dict(patch_size=(2, 3), hidden_dim=4),
        dict(inputs=(2, 4, 9, 3)),
        expected_output_shapes=[(2, 6, 4)],
        expected_num_trainable_weights=2,
        rng=rng,
    )
    # An int `patch_size` stays an int in the config.
    config = PatchEmbedding(2, 4, use_bias=False).get_config()
    assert config["patch_size"] == 2 and config["use_bias"] is False
    assert PatchEmbedding.from_config(config).get_config() == config
    # compute_output_shape with unknown sizes, and the symbolic call.
    layer = PatchEmbedding((2, 4), 7)
    assert layer.compute_output_shape((None, 6, 8, 3)) == (None, 6, 7)
    assert layer.compute_output_shape((5, None, 8, 3)) == (5, None, 7)
    symbolic = layer(keras.Input((None, None, 3)))
    assert tuple(symbolic.shape) == (None, None, 7)


def test_one_model_takes_several_image_sizes(rng):
    """A compiled model (XLA on JAX) with unknown height and width."""
    images = keras.Input((None, None, 3))
    layer = PatchEmbedding(2, 4)
    model = keras.Model(images, layer(images))
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    for hw in ((4, 6), (8, 2)):
        x = rng.normal(size=(2,) + hw + (3,)).astype("float32")
        got = model.predict(x, verbose=0)
        assert got.shape == (2, hw[0] * hw[1] // 4, 4)
        np.testing.assert_allclose(got, to_numpy(layer(x)), atol=1e-5)


@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_sizes(rng):
    import tensorflow as tf

    layer = PatchEmbedding((2, 3), 4)

    @tf.function(
        input_signature=[tf.TensorSpec((None, None, None, 2))],
        autograph=False,
    )
    def run(x):
        return layer(x)

    for hw in ((2, 3), (4, 9)):
        x = rng.normal(size=(3,) + hw + (2,)).astype("float32")
        np.testing.assert_allclose(
            run(x).numpy(), to_numpy(layer(x)), atol=1e-6
        )
    # An image size that is not a multiple fails at run time, even when the
    # element count would fit a wrong reshape (batch 8 x 3 rows = 6 x 4).
    with pytest.raises(Exception):
        run(np.zeros((8, 3, 3, 2), "float32"))


def test_saving(tmp_path, rng):
    images = keras.Input((8, 8, 3))
    x = PatchEmbedding(4, 6, name="patches")(images)
    model = keras.Model(images, keras.layers.Dense(2)(x))
    run_saving_test(
        model,
        lambda b: rng.normal(size=(b, 8, 8, 3)).astype("float32"),
        tmp_path,
        layer_types=[PatchEmbedding],
    )
