"""Smoke tests of examples/image_classification.py.

The CLI runs as a subprocess (under the test session's Keras backend) for a
few steps on a tiny slice of the digits; under JAX and PyTorch the model it
saves, exported by the CLI under TensorFlow, must serve that backend's
probabilities. The `keras.datasets` loaders, which need the internet, are
replaced by fakes in the same format.
"""

import argparse
import io
import re

import keras
import numpy as np
import pytest

from benchmarks.device_run import IMAGE_TINY
from tests.examples import _runner
from tests.examples._runner import BACKEND
from tests.examples._runner import import_example
from tests.examples._runner import read_json
from tests.serving import helpers

# A tiny, fast configuration (the GPU run's smoke size): every smoke run
# uses it.
TINY = [*IMAGE_TINY, "--learning-rate=3e-3"]


def run_example(tmp_path, *flags, timeout=240):
    return _runner.run_example(
        "image_classification", tmp_path, *TINY, *flags, timeout=timeout
    )


@pytest.fixture(scope="module")
def example():
    """The example as a module (for its data functions)."""
    return import_example("image_classification")


def test_smoke_trains_and_exports(tmp_path):
    output = run_example(tmp_path, "--epochs=3", "--max-steps=4")
    history = read_json(tmp_path, "history.json")
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    assert (tmp_path / "run" / "attention.png").stat().st_size > 1000
    results = read_json(tmp_path, "results.json")
    assert 0.0 <= results["test_accuracy"] <= 1.0
    export_base = tmp_path / "saved_models" / "image_classification"
    assert "CHECK PASSED" in output
    if BACKEND != "tensorflow":
        # Exported by a TensorFlow subprocess; the example checked that
        # serving_default serves this backend's probabilities (1e-5).
        assert "endpoint serving_bytes (PNG bytes)" in output
        served = rf"vs Keras \({BACKEND}\) on \d+ test images: match"
        assert re.search(served, output)
        assert (export_base / "1" / "saved_model.pb").exists()
        if _runner.ON_TORCH_LEG:
            return  # the CLI export below: see _runner.ON_TORCH_LEG
        # The CLI, on the file the run saved, with the example's ClassToken.
        path = helpers.export_with_cli(
            tmp_path / "run" / "image_classification.keras",
            tmp_path / "cli" / "image_classification",
            "examples.image_classification",
        )
        keras_outputs = np.load(tmp_path / "run" / "predictions.npz")
        helpers.check_expect(
            path,
            tmp_path,
            {"pixels": keras_outputs["pixels"]},
            {"probabilities": keras_outputs["probabilities"]},
        )
        return

    import tensorflow as tf
    from PIL import Image

    assert "CHECK PASSED" in output
    keras_outputs = np.load(tmp_path / "run" / "predictions.npz")
    pixels = keras_outputs["pixels"]
    expected = keras_outputs["probabilities"]
    assert pixels.dtype == np.uint8 and pixels.shape[1:] == (8, 8, 1)

    loaded = tf.saved_model.load(str(export_base / "1"))
    by_pixels = loaded.signatures["serving_default"](
        pixels=tf.constant(pixels)
    )["probabilities"].numpy()
    np.testing.assert_allclose(by_pixels, expected, atol=1e-5)

    # PNG bytes encoded here with Pillow, decoded inside the graph.
    encoded = []
    for image in pixels:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0]).save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    by_bytes = loaded.signatures["serving_bytes"](
        image_bytes=tf.constant(encoded)
    )["probabilities"].numpy()
    np.testing.assert_allclose(by_bytes, expected, atol=1e-5)


@pytest.mark.skipif(BACKEND == "torch", reason="Keras can't distribute torch")
def test_distribute_mirrored_on_two_cpu_devices(tmp_path):
    output = run_example(
        tmp_path,
        "--distribute=mirrored",
        "--cpu-devices=2",
        "--epochs=1",
        "--max-steps=2",
        "--no-export",
    )
    assert "distribute mirrored (2 replica(s))" in output
    assert len(read_json(tmp_path, "history.json")["loss"]) == 1


@pytest.mark.skipif(BACKEND != "torch", reason="the torch side of the flag")
def test_distribute_mirrored_under_torch_is_refused(example, tmp_path):
    argv = [f"--output-dir={tmp_path / 'run'}", "--distribute=mirrored"]
    with pytest.raises(SystemExit, match="no distribution strategy for the"):
        example.main(argv)
    assert not (tmp_path / "run").exists()


def run_in_process(example, tmp_path, *flags):
    """`main()` in this process: no start-up cost, and loaders can be faked."""
    argv = [f"--output-dir={tmp_path / 'run'}", *TINY, *flags, "--no-export"]
    assert example.main(argv) == 0
    return read_json(tmp_path, "history.json")


def test_conv_attention(example, tmp_path, capsys):
    history = run_in_process(
        example,
        tmp_path,
        "--model=conv-attention",
        "--epochs=2",
        "--max-steps=3",
    )
    assert "model: conv_attention" in capsys.readouterr().out
    assert len(history["loss"]) == 2
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    assert (tmp_path / "run" / "attention.png").stat().st_size > 1000


def fake_mnist():
    rng = np.random.default_rng(0)
    return (
        (
            rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, (12,), dtype=np.uint8),
        ),
        (
            rng.integers(0, 256, (4, 28, 28), dtype=np.uint8),
            rng.integers(0, 10, (4,), dtype=np.uint8),
        ),
    )


def fake_cifar10():
    rng = np.random.default_rng(1)
    return (
        (
            rng.integers(0, 256, (12, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, (12, 1), dtype=np.int64),
        ),
        (
            rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8),
            rng.integers(0, 10, (4, 1), dtype=np.int64),
        ),
    )


@pytest.mark.parametrize(
    "name, fake, shape",
    [
        ("mnist", fake_mnist, (28, 28, 1)),
        ("cifar10", fake_cifar10, (32, 32, 3)),
    ],
)
def test_keras_datasets_with_fake_loaders(
    example, monkeypatch, name, fake, shape
):
    # `keras.datasets.<name>.load_data` is what the example calls.
    monkeypatch.setattr(getattr(keras.datasets, name), "load_data", fake)
    (x_train, y_train), (x_test, y_test) = example.load_dataset(name, seed=0)
    (raw_x, raw_y), _ = fake()
    assert x_train.shape == (12,) + shape and x_test.shape == (4,) + shape
    assert x_train.dtype == np.uint8 and x_test.dtype == np.uint8
    assert y_train.shape == (12,) and y_test.shape == (4,)
    assert y_train.dtype == np.int32 and y_test.dtype == np.int32
    np.testing.assert_array_equal(x_train.reshape(raw_x.shape), raw_x)
    np.testing.assert_array_equal(y_train, raw_y.reshape(-1))
    info = example.DATASETS[name]
    assert info.image_shape == shape and info.num_classes == 10
    assert len(info.class_names) == 10 and info.patch_size == 4


def test_script_on_a_fake_keras_dataset(example, monkeypatch, tmp_path, capsys):
    # The whole script on fake CIFAR-10 (colour images), with the dataset's
    # defaults: image size, channels, patch size 4.
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fake_cifar10)
    history = run_in_process(
        example, tmp_path, "--dataset=cifar10", "--epochs=1", "--batch-size=4"
    )
    assert len(history["loss"]) == 1
    assert read_json(tmp_path, "results.json")["args"]["patch_size"] == 4
    out = capsys.readouterr().out
    assert "test images of shape (32, 32, 3) (uint8)" in out
    assert (tmp_path / "run" / "attention.png").stat().st_size > 1000


@pytest.mark.parametrize(
    "model, head",
    [("vit", "cls"), ("conv-attention", "pool")],
)
def test_attention_maps_are_distributions_over_the_patches(
    example, model, head
):
    info = example.DATASETS["mnist"]
    args = argparse.Namespace(
        model=model,
        head=head,
        position="sinusoidal",
        patch_size=info.patch_size,
        hidden_dim=16,
        num_layers=2,
        num_heads=2,
        mlp_dim=16,
        dropout=0.0,
    )
    classifier, explainer = example.build_models(info, args)
    assert classifier.inputs[0].name == "pixels"
    assert classifier.inputs[0].dtype == "uint8"
    images = np.random.default_rng(0).integers(
        0, 256, (3,) + info.image_shape, dtype=np.uint8
    )
    maps, probabilities = example.attention_maps(explainer, images, (7, 7))
    assert maps.shape == (3, 7, 7)
    assert np.all(maps >= 0)
    np.testing.assert_allclose(maps.sum((1, 2)), 1.0, atol=1e-5)
    # The explainer's probabilities are the classifier's output tensor.
    assert any(out is classifier.outputs[0] for out in explainer.outputs)
    assert probabilities.shape == (3, 10)


def test_keras_dataset_in_the_wrong_format_is_refused(example):
    def wrong():
        (x, y), test = fake_mnist()
        return (x.astype("float32"), y), test

    with pytest.raises(ValueError, match="uint8"):
        example.load_keras_dataset("mnist", load_data=wrong)


def test_digits_split_is_stratified_and_fixed(example):
    (x_train, y_train), (x_test, y_test) = example.load_dataset("digits", 0)
    assert x_train.shape[1:] == (8, 8, 1) and x_train.dtype == np.uint8
    assert len(x_train) + len(x_test) == 1797
    assert x_train.max() == 255
    # 25% of each class (43.5 to 45.75 images) in the test set.
    assert set(np.bincount(y_test)) <= {43, 44, 45, 46}
    (x_again, _), _ = example.load_dataset("digits", 0)
    np.testing.assert_array_equal(x_train, x_again)
