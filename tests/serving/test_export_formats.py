"""`python -m keras_attention.serving export ... --format onnx|litert|
openvino` and `serving.export_model`: a checked version directory whose file
runs on its runtime with the Keras model's outputs, and the refusals (exit 2
with nothing written)."""

import json
import os

import keras
import numpy as np
import pytest

from keras_attention import serving
from keras_attention.serving import __main__ as cli
from keras_attention.serving import _runtimes
from keras_attention.serving import _wire
from tests.serving import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
tensorflow_only = pytest.mark.tensorflow_only
FILES = {"onnx": ["model.onnx"], "litert": ["model.tflite"]}
FILES["openvino"] = ["model.bin", "model.xml"]


def _sample():
    return {"tokens": helpers.ragged_tokens(np.random.default_rng(0), [5, 3])}


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("model") / "model.keras"
    # The kernels' export is the matrix's (test_formats.py): the dense
    # kernels alone convert fastest.
    helpers.masked_model(chunk_size=None).save(path)
    return path


def _run(capfd, *argv):
    code = cli.main([*map(str, argv)])
    out = capfd.readouterr()
    return code, out.out, out.err


@tensorflow_only
@pytest.mark.parametrize("fmt", sorted(FILES))
def test_export_writes_a_checked_version_that_its_runtime_runs(
    fmt, saved, tmp_path, capfd
):
    for module in _runtimes.FORMATS[fmt][1]:
        pytest.importorskip(module)
    body = tmp_path / "request.json"
    body.write_text(json.dumps(_wire.rest_body(_sample())))
    base = tmp_path / "models" / "masked"
    code, out, err = _run(
        capfd, "export", saved, base, "--format", fmt, "--warmup", body
    )
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(base / "1")
    assert "CHECK PASSED" in out
    version = base / "1"
    assert sorted(os.listdir(version)) == sorted(
        FILES[fmt]
        + [
            "expected_outputs.npz",
            "keras_attention.json",
            "sample_request.json",
        ]
    )
    # The file itself, on its runtime, against the Keras model at another
    # batch size and length than the sample's.
    model = keras.saving.load_model(saved)
    tokens = helpers.ragged_tokens(np.random.default_rng(1), [7, 2, 4])
    expected = model.predict(tokens, verbose=0)
    got = _runtimes.run_exported(
        version / FILES[fmt][-1], {"tokens": tokens}, num_outputs=2
    )
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4)
    # Exactly the model's two outputs (OpenVINO's dangling results are
    # dropped).
    assert len(_runtimes.describe(version / FILES[fmt][-1])[1]) == 2
    # `check` finds the format by the file and reruns the stored sample.
    code, out, err = _run(capfd, "check", version)
    assert code == 0 and "CHECK PASSED" in out, err
    assert f"{fmt}: " in out
    # Different expected outputs fail the check.
    wrong = tmp_path / "wrong.npz"
    np.savez(wrong, probabilities=np.zeros((2, 3), "float32"))
    code, out, err = _run(
        capfd, "check", version, "--inputs", body, "--expect", wrong
    )
    assert code == 1 and "'probabilities' differs" in err, err


@tensorflow_only
def test_existing_version_is_kept_without_overwrite(saved, tmp_path, capfd):
    pytest.importorskip("ai_edge_litert")
    base = tmp_path / "models"
    assert _run(capfd, "export", saved, base, "--format", "litert")[0] == 0
    before = (base / "1" / "model.tflite").stat().st_mtime_ns
    code, _, err = _run(
        capfd, "export", saved, base, "--format", "litert", "--version", "1"
    )
    assert code == 1 and "version 1 exists" in err, err
    assert (base / "1" / "model.tflite").stat().st_mtime_ns == before
    code, _, err = _run(
        capfd,
        "export",
        saved,
        base,
        "--format",
        "litert",
        "--version",
        "1",
        "--overwrite",
    )
    assert code == 0, err
    assert sorted(os.listdir(base)) == ["1"]


def test_unknown_format_is_refused_with_nothing_written(tmp_path, capfd):
    code, _, err = _run(
        capfd,
        "export",
        tmp_path / "m.keras",
        tmp_path / "out",
        "--format",
        "pb",
    )
    assert code == 2
    assert "--format must be one of tf_saved_model, onnx, litert" in err
    assert "Received: --format pb" in err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    "fmt, module, command",
    [
        ("onnx", "onnxruntime", "python -m pip install tf2onnx onnxruntime"),
        ("litert", "ai_edge_litert", "python -m pip install ai-edge-litert"),
        ("openvino", "openvino", "python -m pip install openvino"),
    ],
)
def test_missing_runtime_exits_2_with_its_install_command(
    fmt, module, command, tmp_path
):
    """A Python without the format's runtime: `find_spec` finds nothing."""
    result = helpers.serving_without(
        module, ["export", "m.keras", "base", "--format", fmt], tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert f"--format {fmt} needs {module}" in result.stderr
    assert command in result.stderr
    assert "nothing was written" in result.stderr
    assert os.listdir(tmp_path) == []


@tensorflow_only
def test_export_model_that_fails_its_check_writes_nothing(
    tmp_path, monkeypatch
):
    """The real check runs on the staged version; one that fails raises
    `CheckFailed` and `base_path` never gets the version."""
    pytest.importorskip("ai_edge_litert")
    from keras_attention.serving import _check

    real = _check.check
    staged = []

    def failing(path, **kwargs):
        staged.append(sorted(os.listdir(path)))
        result = real(path, **kwargs)
        assert result.returncode == 0, result.stderr
        result.returncode, result.stderr = 1, "CHECK FAILED: stubbed"
        return result

    monkeypatch.setattr(_check, "check", failing)
    base = tmp_path / "models"
    with pytest.raises(serving.CheckFailed, match="stubbed"):
        serving.export_model(
            helpers.masked_model(chunk_size=None),
            base,
            "litert",
            sample_inputs=_sample(),
        )
    assert "model.tflite" in staged[0]
    assert not base.exists() or os.listdir(base) == []
    assert [n for n in os.listdir(tmp_path) if n != "models"] == []


@pytest.mark.skipif(
    keras.backend.backend() == "tensorflow",
    reason="trained under JAX or PyTorch",
)
def test_export_model_from_another_backend_goes_through_tensorflow(tmp_path):
    """Under JAX or PyTorch, `export_model` saves the model and exports it
    in a TensorFlow process; the file serves this backend's outputs."""
    pytest.importorskip("ai_edge_litert")
    keras.utils.set_random_seed(0)
    model = helpers.masked_model(chunk_size=None)
    path = serving.export_model(
        model, tmp_path / "models", "litert", sample_inputs=_sample()
    )
    assert sorted(os.listdir(path))[-1] == "sample_request.json"
    tokens = helpers.ragged_tokens(np.random.default_rng(1), [7, 2, 4])
    expected = model.predict(tokens, verbose=0)
    got = _runtimes.run_exported(
        os.path.join(path, "model.tflite"), {"tokens": tokens}, num_outputs=2
    )
    for g, e in zip(got, expected):
        np.testing.assert_allclose(g, e, rtol=0, atol=1e-4)
