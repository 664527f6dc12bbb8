"""Every committed artifact in `saved_models/` still loads and gives its
stored outputs: golden `.keras` files (one per public layer, per release)
and the example models' SavedModel exports."""

import glob
import os

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAVED = os.path.join(ROOT, "saved_models")
GOLDEN = sorted(glob.glob(os.path.join(SAVED, "golden", "*", "*.keras")))
EXPORTS = sorted(
    os.path.dirname(p)
    for p in glob.glob(os.path.join(SAVED, "*", "[0-9]*", "saved_model.pb"))
)


def _id(path):
    return os.path.relpath(path, SAVED)


def test_artifacts_are_committed():
    assert len(GOLDEN) >= 3
    assert EXPORTS, "no exported example models in saved_models/"


def test_every_public_layer_has_a_golden_file():
    import keras_attention

    # By class name: `GroupQueryAttention` is an alias.
    layers = {
        getattr(keras_attention.layers, name).__name__
        for name in keras_attention.layers.__all__
    }
    golden = {os.path.basename(p)[: -len(".keras")] for p in GOLDEN}
    assert layers <= golden, f"no golden file for {sorted(layers - golden)}"


@pytest.mark.parametrize("path", GOLDEN, ids=_id)
def test_golden_keras_file_gives_stored_outputs(path):
    import importlib.util

    spec = importlib.util.spec_from_file_location(
        "make_golden", os.path.join(SAVED, "make_golden.py")
    )
    make_golden = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_golden)
    model, inputs, expected = make_golden.load(path)
    got = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("path", EXPORTS, ids=_id)
def test_export_gives_stored_outputs(path):
    """In-process: the signature on the stored sample request."""
    import json

    import tensorflow as tf

    from keras_attention.serving import _check_worker

    signature = tf.saved_model.load(path).signatures["serving_default"]
    with open(os.path.join(path, "assets.extra", "sample_request.json")) as f:
        body = json.load(f)
    dtypes = {
        k: v.dtype.name
        for k, v in signature.structured_input_signature[1].items()
    }
    got = signature(**_check_worker.decode_body(body, dtypes))
    expected = np.load(
        os.path.join(path, "assets.extra", "expected_outputs.npz")
    )
    assert set(expected.files) == set(got)
    for key in expected.files:
        want, value = expected[key], got[key].numpy()
        if want.dtype.kind in "fc":
            np.testing.assert_allclose(value, want, atol=1e-5)
        else:  # strings (e.g. ISO dates), booleans (masks), integers
            np.testing.assert_array_equal(value, want)


@pytest.mark.tensorflow_only
@pytest.mark.parametrize("path", EXPORTS, ids=_id)
def test_serving_check_passes_on_committed_export(path):
    """As TF Serving loads it, in a subprocess without keras."""
    from keras_attention import serving

    result = serving.check(path, capture=True)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CHECK PASSED" in result.stdout
    assert "0 problem(s)" in result.stdout


@pytest.mark.tensorflow_only
def test_models_config_lists_the_committed_models():
    from google.protobuf import text_format
    from tensorflow_serving.config import model_server_config_pb2

    with open(os.path.join(SAVED, "models.config")) as f:
        config = text_format.Parse(
            f.read(), model_server_config_pb2.ModelServerConfig()
        )
    names = {c.name for c in config.model_config_list.config}
    exported = {os.path.basename(os.path.dirname(p)) for p in EXPORTS}
    assert names == exported
    for entry in config.model_config_list.config:
        assert entry.base_path == f"/models/{entry.name}"


@pytest.mark.tensorflow_only
def test_batching_config_parses():
    from google.protobuf import text_format

    from keras_attention.serving import _config

    with open(os.path.join(SAVED, "batching.config")) as f:
        message = text_format.Parse(
            f.read(), _config.batching_parameters_class()()
        )
    assert message.max_batch_size.value == 32
    assert list(message.allowed_batch_sizes) == [1, 8, 32]
    assert message.pad_variable_length_inputs


def test_saved_models_folder_is_under_13_mb():
    # Raised from 10 MB for the text-generation export (2.5 MB: a 3-block
    # language model, and its prefill and decoding loop in the graph), the
    # one export that needs its own weights to show anything.
    total = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(SAVED)
        for f in files
    )
    assert total < 13 * 2**20, f"saved_models/ holds {total / 2**20:.1f} MB"


def test_text_generation_export_is_at_most_3_mb():
    path = os.path.join(SAVED, "text_generation")
    total = sum(
        os.path.getsize(os.path.join(root, f))
        for root, _, files in os.walk(path)
        for f in files
    )
    assert 0 < total <= 3 * 10**6, f"{path} holds {total / 1e6:.2f} MB"
