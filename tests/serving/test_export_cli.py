"""`python -m keras_attention.serving export MODEL.keras BASE_PATH`, and
`export_saved_model` from the JAX and PyTorch backends, which goes through
it.

Under TensorFlow the command runs in this process (`__main__.main`); under
JAX or PyTorch it re-runs itself in a TensorFlow subprocess, and the tests
of those backends check that a model trained there serves its predictions
there."""

import hashlib
import json
import os
import shutil
import subprocess
import zipfile

import keras
import numpy as np
import pytest

from keras_attention.serving import __main__ as cli
from keras_attention.serving import _check
from keras_attention.serving import _wire
from tests.serving import helpers

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
BACKEND = keras.backend.backend()
tensorflow_only = pytest.mark.tensorflow_only
# The side of a backend other than TensorFlow (JAX, PyTorch).
elsewhere_only = pytest.mark.skipif(
    BACKEND == "tensorflow", reason="trained under JAX or PyTorch"
)


def _inputs():
    rng = np.random.default_rng(0)
    return {"tokens": helpers.ragged_tokens(rng, [5, 3, 1])}


def _trained_model():
    keras.utils.set_random_seed(0)
    model = helpers.masked_model()
    model.compile(
        optimizer="adam",
        loss=[
            "sparse_categorical_crossentropy",
            keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        ],
    )
    rng = np.random.default_rng(1)
    tokens = helpers.ragged_tokens(rng, [6, 4, 2, 5] * 4)
    model.fit(
        tokens,
        [np.arange(16) % 3, np.zeros(tokens.shape, "int32")],
        epochs=1,
        batch_size=8,
        verbose=0,
    )
    outputs = model.predict(_inputs()["tokens"], verbose=0)
    assert all(np.isfinite(o).all() for o in outputs)
    return model


def _files(path):
    """Every path under `path` with its size and mtime (nothing written)."""
    if not os.path.exists(path):
        return None
    return sorted(
        (
            os.path.relpath(os.path.join(root, n), path),
            os.stat(os.path.join(root, n)).st_mtime_ns,
        )
        for root, dirs, names in os.walk(path)
        for n in dirs + names
    )


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "model.keras"
    _trained_model().save(path)
    return path


def _export(capfd, *argv):
    code = cli.main(["export", *map(str, argv)])
    out = capfd.readouterr()
    return code, out.out, out.err


@tensorflow_only
def test_export_writes_a_checked_version_that_serves_the_models_outputs(
    saved, tmp_path, capfd
):
    import tensorflow as tf

    body = tmp_path / "request.json"
    body.write_text(json.dumps(_wire.rest_body(_inputs())))
    base = tmp_path / "models" / "masked"
    code, out, err = _export(capfd, saved, base, "--warmup", body)
    assert code == 0, err
    assert out.strip().splitlines()[-1] == str(base / "1")
    assert "CHECK PASSED" in out
    assert (base / "1" / "assets.extra" / "tf_serving_warmup_requests").exists()
    model = keras.saving.load_model(saved)
    expected = model.predict(_inputs()["tokens"], verbose=0)
    serve = tf.saved_model.load(str(base / "1")).signatures["serving_default"]
    served = serve(tokens=tf.constant(_inputs()["tokens"]))
    np.testing.assert_allclose(
        served["probabilities"].numpy(), expected[0], rtol=0, atol=1e-6
    )
    code, out, err = _export(capfd, saved, base, "--version", "7")
    assert code == 0 and (base / "7").is_dir(), err


def _refused(capfd, tmp_path, argv, names):
    """Exit 1, a message naming `names`, and nothing written."""
    before = _files(tmp_path)
    code, out, err = _export(capfd, *argv)
    assert code == 1, (out, err)
    assert str(names) in err, err
    assert _files(tmp_path) == before
    return err


@tensorflow_only
def test_not_a_keras_archive(tmp_path, capfd):
    model = tmp_path / "model.keras"
    model.write_text("not a zip")
    err = _refused(capfd, tmp_path, [model, tmp_path / "base"], model)
    assert "not a .keras archive" in err


@tensorflow_only
def test_truncated_archive(saved, tmp_path, capfd):
    data = saved.read_bytes()
    saved.write_bytes(data[: len(data) // 2])
    err = _refused(capfd, tmp_path, [saved, tmp_path / "base"], saved)
    assert "archive" in err


@tensorflow_only
def test_layer_that_cannot_be_deserialized(saved, tmp_path, capfd):
    broken = tmp_path / "broken.keras"
    with zipfile.ZipFile(saved) as src, zipfile.ZipFile(broken, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "config.json":
                data = data.replace(
                    b'"keras_attention>AttentionPooling"', b'"gone>Missing"'
                )
                assert b"gone>Missing" in data
            dst.writestr(item, data)
    saved.unlink()
    err = _refused(capfd, tmp_path, [broken, tmp_path / "base"], broken)
    assert "safe mode" in err


@tensorflow_only
def test_lambda_layer_is_refused_in_safe_mode(tmp_path, capfd):
    inputs = keras.Input((3,), name="x")
    outputs = keras.layers.Lambda(lambda x: x * 2, name="y")(inputs)
    model = tmp_path / "lambda.keras"
    keras.Model(inputs, outputs).save(model)
    err = _refused(capfd, tmp_path, [model, tmp_path / "base"], model)
    assert "Lambda" in err


@tensorflow_only
def test_existing_version_without_overwrite(saved, tmp_path, capfd):
    base = tmp_path / "base"
    assert _export(capfd, saved, base)[0] == 0
    err = _refused(capfd, tmp_path, [saved, base, "--version", "1"], base / "1")
    assert "--overwrite" in err
    code, _, err = _export(capfd, saved, base, "--version", "1", "--overwrite")
    assert code == 0, err


def _contents(path):
    """Every folder and file under `path`, files with a hash of their bytes."""
    entries = {}
    for root, dirs, names in os.walk(path):
        for name in dirs:
            entries[os.path.relpath(os.path.join(root, name), path)] = "dir"
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
            entries[os.path.relpath(os.path.join(root, name), path)] = digest
    return entries


def _failing_check(path, **kwargs):
    return subprocess.CompletedProcess(
        ["check", path], 1, "", "CHECK FAILED: injected problem\n"
    )


@tensorflow_only
def test_overwrite_that_fails_its_check_keeps_the_old_version(
    saved, tmp_path, capfd, monkeypatch
):
    base = tmp_path / "base"
    assert _export(capfd, saved, base)[0] == 0
    before = _contents(tmp_path)
    monkeypatch.setattr(_check, "check", _failing_check)
    err = _refused(
        capfd, tmp_path, [saved, base, "--version", "1", "--overwrite"], saved
    )
    assert "failed its check" in err and "injected problem" in err, err
    assert _contents(tmp_path) == before  # the old version, byte for byte


@tensorflow_only
def test_new_version_that_fails_its_check_is_never_in_base_path(
    saved, tmp_path, capfd, monkeypatch
):
    base = tmp_path / "base"
    assert _export(capfd, saved, base)[0] == 0
    seen = []

    def check(path, **kwargs):
        seen.append(sorted(os.listdir(base)))
        return _failing_check(path, **kwargs)

    monkeypatch.setattr(_check, "check", check)
    before = _files(tmp_path)
    code, out, err = _export(capfd, saved, base)
    assert seen == [["1"]]  # version 2 was not in `base` during its check
    assert code == 1 and "failed its check" in err, (out, err)
    assert _files(tmp_path) == before


@tensorflow_only
def test_check_runs_in_staging_before_the_version_appears(
    saved, tmp_path, capfd, monkeypatch
):
    """The check sees the export at a temporary path outside `base_path`;
    once moved into place, it still passes and names no temporary path."""
    body = tmp_path / "request.json"
    body.write_text(json.dumps(_wire.rest_body(_inputs())))
    base = tmp_path / "models" / "masked"
    assert _export(capfd, saved, base)[0] == 0
    real_check = _check.check
    checked = []

    def check(path, **kwargs):
        checked.append((str(path), (base / "1").exists(), os.listdir(base)))
        return real_check(path, **kwargs)

    monkeypatch.setattr(_check, "check", check)
    code, out, err = _export(
        capfd, saved, base, "--version", "1", "--overwrite", "--warmup", body
    )
    assert code == 0, err
    assert "CHECK PASSED" in out
    assert out.strip().splitlines()[-1] == str(base / "1")
    [(staged, old_still_there, listing)] = checked
    assert old_still_there and listing == ["1"]
    assert os.path.dirname(staged) == str(base.parent)
    assert not os.path.exists(staged)
    assert sorted(os.listdir(base.parent)) == ["masked"]  # no temporaries
    extra = base / "1" / "assets.extra"
    for name in [
        "tf_serving_warmup_requests",
        "sample_request.json",
        "expected_outputs.npz",
    ]:
        assert (extra / name).is_file(), name
    staged_name = os.path.basename(staged).encode()
    for root, _, names in os.walk(base / "1"):
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                assert staged_name not in f.read(), name
    monkeypatch.undo()
    result = _check.check(base / "1", capture=True)
    assert result.returncode == 0, result.stdout + result.stderr


@tensorflow_only
def test_base_path_that_is_not_writable(saved, tmp_path, capfd):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    base = blocker / "models" / "masked"
    err = _refused(capfd, tmp_path, [saved, base], base)
    assert "not writable" in err


@tensorflow_only
def test_module_that_cannot_be_imported(saved, tmp_path, capfd):
    err = _refused(
        capfd,
        tmp_path,
        [saved, tmp_path / "base", "--import", "no_such_module_here"],
        saved,
    )
    assert "no_such_module_here" in err


def test_without_tensorflow_it_fails_at_once_with_the_command(tmp_path):
    """A Python without TensorFlow (as on the GPU machines): Keras on
    another backend (numpy here, which any install has), and
    `importlib.util.find_spec("tensorflow")` finding nothing."""
    result = helpers.serving_without(
        "tensorflow", ["export", "m.keras", "base"], tmp_path
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert "needs TensorFlow, which is not installed" in result.stderr
    assert "python -m keras_attention.serving export m.keras base" in (
        result.stderr
    )
    assert os.listdir(tmp_path) == []
    assert "tensorflow" not in result.stderr.split("needs TensorFlow")[0]


@elsewhere_only
def test_model_trained_elsewhere_exported_by_the_cli_serves_its_predictions(
    saved, tmp_path
):
    model = keras.saving.load_model(saved)
    inputs = _inputs()
    probabilities, per_token = model.predict(inputs["tokens"], verbose=0)
    base = tmp_path / "models" / "masked"
    assert helpers.export_with_cli(saved, base) == str(base / "1")
    helpers.check_expect(
        base / "1",
        tmp_path,
        inputs,
        {"probabilities": probabilities, "per_token": per_token},
    )


@elsewhere_only
def test_export_saved_model_elsewhere_goes_through_tensorflow(tmp_path):
    from keras_attention import serving

    model = _trained_model()
    inputs = _inputs()
    probabilities, per_token = model.predict(inputs["tokens"], verbose=0)
    path = serving.export_saved_model(
        model, tmp_path / "models" / "masked", warmup_inputs=inputs
    )
    assert path == str(tmp_path / "models" / "masked" / "1")
    assert os.path.exists(
        os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
    )
    helpers.check_expect(
        path,
        tmp_path,
        inputs,
        {"probabilities": probabilities, "per_token": per_token},
    )
    with pytest.raises(ValueError, match="`signatures`"):
        serving.export_saved_model(model, tmp_path / "x", signatures={})
    assert not (tmp_path / "x").exists()
    shutil.rmtree(tmp_path / "models")
