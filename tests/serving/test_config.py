"""TF Serving config files, parsed back with TF Serving's own protos."""

import os

import keras
import pytest

from keras_attention import serving
from keras_attention.serving import _config

pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow_only
text_format = pytest.importorskip("google.protobuf.text_format")
model_server_config_pb2 = pytest.importorskip(
    "tensorflow_serving.config.model_server_config_pb2"
)


@pytest.fixture
def model_root(tmp_path):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(1, name="y")(inputs))
    for name, versions in [("alpha", 2), ("beta", 3)]:
        for _ in range(versions):
            serving.export_saved_model(model, tmp_path / name)
    return tmp_path


def _parse_model_config(path):
    with open(path) as f:
        return text_format.Parse(
            f.read(), model_server_config_pb2.ModelServerConfig()
        )


def test_model_config_parses_with_tf_serving_protos(model_root):
    path = serving.write_model_config(
        model_root, {"alpha": "latest", "beta": [1, 3]}
    )
    assert path == os.path.join(model_root, "models.config")
    config = _parse_model_config(path)
    entries = {c.name: c for c in config.model_config_list.config}
    assert sorted(entries) == ["alpha", "beta"]
    assert entries["alpha"].base_path == "/models/alpha"
    assert entries["alpha"].model_platform == "tensorflow"
    assert entries["alpha"].model_version_policy.latest.num_versions == 1
    assert list(entries["beta"].model_version_policy.specific.versions) == [
        1,
        3,
    ]


def test_model_config_all_versions_and_serving_root(model_root):
    path = serving.write_model_config(
        model_root,
        {"beta": "all"},
        serving_root="/srv/models/",
        filename="beta.config",
    )
    (entry,) = _parse_model_config(path).model_config_list.config
    assert entry.base_path == "/srv/models/beta"
    assert entry.model_version_policy.HasField("all")


@pytest.mark.parametrize(
    "models,match",
    [
        ([], "non-empty list"),
        ({"gamma": "latest"}, "no version folders"),
        ({"alpha": [5]}, "existing integer versions"),
        ({"alpha": "newest"}, "expected 'latest', 'all'"),
        ({"bad name": "latest"}, "`models` must be letters"),
    ],
)
def test_model_config_errors(model_root, models, match):
    with pytest.raises(ValueError, match=match):
        serving.write_model_config(model_root, models)
    assert not os.path.exists(os.path.join(model_root, "models.config"))


def test_batching_config_parses_back(tmp_path):
    path = str(tmp_path / "batching.config")
    serving.write_batching_config(
        path,
        max_batch_size=16,
        batch_timeout_micros=500,
        max_enqueued_batches=8,
        num_batch_threads=3,
        allowed_batch_sizes=[2, 8, 16],
        pad_variable_length_inputs=True,
    )
    with open(path) as f:
        text = f.read()
    message = text_format.Parse(text, _config.batching_parameters_class()())
    assert message.max_batch_size.value == 16
    assert message.batch_timeout_micros.value == 500
    assert message.max_enqueued_batches.value == 8
    assert message.num_batch_threads.value == 3
    assert list(message.allowed_batch_sizes) == [2, 8, 16]
    assert message.pad_variable_length_inputs is True
    # The exact text TF Serving's parser reads (wrapper messages, not ints).
    assert "max_batch_size {\n  value: 16\n}" in text
    assert "pad_variable_length_inputs: true" in text


def test_batching_message_matches_tf_serving_field_numbers():
    """Field numbers of tensorflow_serving/servables/tensorflow/
    session_bundle_config.proto, which the pip package does not ship."""
    fields = _config.batching_parameters_class().DESCRIPTOR.fields_by_name
    assert {name: f.number for name, f in fields.items()} == {
        "max_batch_size": 1,
        "batch_timeout_micros": 2,
        "max_enqueued_batches": 3,
        "num_batch_threads": 4,
        "thread_pool_name": 5,
        "allowed_batch_sizes": 6,
        "pad_variable_length_inputs": 7,
    }


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(max_batch_size=0), "`max_batch_size` must be an integer >= 1"),
        (dict(batch_timeout_micros=-1), "`batch_timeout_micros`"),
        (dict(num_batch_threads=1.5), "`num_batch_threads`"),
        (dict(allowed_batch_sizes=[4, 2, 32]), "`allowed_batch_sizes`"),
        (dict(allowed_batch_sizes=[1, 8]), "ending with max_batch_size=32"),
        (dict(pad_variable_length_inputs=1), "must be a bool"),
    ],
)
def test_batching_config_errors(tmp_path, kwargs, match):
    path = tmp_path / "b.config"
    with pytest.raises(ValueError, match=match):
        serving.write_batching_config(str(path), **kwargs)
    assert not path.exists()
