"""`python -m keras_attention.serving check`: loads exports as TF Serving
does, in a subprocess without keras or keras_attention."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from keras_attention import serving
from keras_attention.serving import _check_worker
from tests.serving.helpers import masked_model
from tests.serving.helpers import ragged_tokens

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow_only


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "keras_attention.serving", "check", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    keras.utils.set_random_seed(4)
    model = masked_model()
    tokens = ragged_tokens(np.random.default_rng(0), [2, 5, 3])
    base = tmp_path_factory.mktemp("check") / "masked"
    path = serving.export_saved_model(
        model, base, warmup_inputs={"tokens": tokens}
    )
    return model, path


def test_check_passes_with_stored_sample(export, tmp_path):
    _, path = export
    report_path = tmp_path / "report.json"
    result = _cli(path, "--json", str(report_path))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "CHECK PASSED" in result.stdout
    assert "input  tokens: int32 [-1, -1]" in result.stdout
    assert "output probabilities: float32 [-1, 3]" in result.stdout
    assert "outputs match" in result.stdout
    report = json.loads(report_path.read_text())
    assert report["problems"] == []
    assert report["nodes_scanned"] > 100
    assert report["ran"] is True


def test_check_runs_given_inputs_and_compares(export, tmp_path):
    model, path = export
    tokens = ragged_tokens(np.random.default_rng(9), [4, 1, 7, 2])
    body = serving.rest_body({"tokens": tokens}, format="instances")
    (tmp_path / "body.json").write_text(json.dumps(body))
    probabilities, per_token = model(tokens)
    np.savez(
        tmp_path / "expected.npz",
        probabilities=probabilities,
        per_token=per_token,
        per_token_mask=tokens != 0,
    )
    args = ["--inputs", str(tmp_path / "body.json")]
    result = _cli(path, *args, "--expect", str(tmp_path / "expected.npz"))
    assert result.returncode == 0, result.stdout + result.stderr

    np.savez(tmp_path / "wrong.npz", probabilities=probabilities + 1e-3)
    result = _cli(path, *args, "--expect", str(tmp_path / "wrong.npz"))
    assert result.returncode == 1
    assert "output 'probabilities' differs" in result.stderr


def test_check_fails_clearly(export, tmp_path):
    _, path = export
    result = _cli(str(tmp_path))
    assert result.returncode == 1
    assert "no saved_model.pb" in result.stderr
    result = _cli(path, "--signature", "nope")
    assert result.returncode == 1
    assert "no signature 'nope'" in result.stderr
    (tmp_path / "bad.json").write_text(json.dumps({"inputs": {"x": [1]}}))
    result = _cli(path, "--inputs", str(tmp_path / "bad.json"))
    assert result.returncode == 1
    assert "must give the inputs ['tokens']" in result.stderr


def _export_fn(tmp_path, fn_factory):
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    return serving.export_saved_model(
        model, tmp_path / "m", signatures={"extra": fn_factory(model)}
    )


def test_check_rejects_python_ops(tmp_path):
    def factory(model):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], name="x")])
        def fn(x):
            y = tf.py_function(lambda t: t * 2.0, [x], tf.float32)
            y = tf.ensure_shape(y, [None, 3])
            return {"y": model(y)}

        return fn

    result = _cli(_export_fn(tmp_path, factory))
    assert result.returncode == 1
    assert "Python op EagerPyFunc" in result.stdout
    assert "graph problem(s)" in result.stderr


def test_check_rejects_functions_that_need_xla(tmp_path):
    def factory(model):
        @tf.function(
            input_signature=[tf.TensorSpec([None, 3], name="x")],
            jit_compile=True,
        )
        def fn(x):
            return {"y": model(x)}

        return fn

    result = _cli(_export_fn(tmp_path, factory))
    assert result.returncode == 1
    assert "must be compiled with XLA" in result.stdout


def test_check_rejects_xla_ops(tmp_path):
    """`keras.ops.slice_update` lowers to `XlaDynamicUpdateSlice` on TF."""

    def factory(model):
        @tf.function(input_signature=[tf.TensorSpec([None, 3], name="x")])
        def fn(x):
            y = keras.ops.slice_update(x, [0, 1], tf.ones_like(x[:, :1]))
            return {"y": model(y)}

        return fn

    result = _cli(_export_fn(tmp_path, factory))
    assert result.returncode == 1
    assert "XLA op XlaDynamicUpdateSlice" in result.stdout


def test_check_never_runs_python_from_the_export(export, tmp_path):
    """Files planted in the SavedModel directory are never imported."""
    _, path = export
    marker = tmp_path / "executed"
    payload = f"open({str(marker)!r}, 'w').write('x')\n"
    planted = []
    for name in ("numpy.py", "tensorflow.py", "sitecustomize.py", "json.py"):
        planted.append(os.path.join(path, name))
        with open(planted[-1], "w") as f:
            f.write(payload)
    try:
        result = _cli(path)
    finally:
        for name in planted:
            os.remove(name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()


def test_keras_cannot_be_imported_in_the_checker():
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        "import _check_worker as w; sys.meta_path.insert(0, w._Blocker()); "
        "import importlib\n"
        "for name in ('keras', 'keras_attention', 'keras.ops'):\n"
        "    try:\n"
        "        importlib.import_module(name)\n"
        "    except ImportError:\n"
        "        print('blocked', name)\n"
    )
    result = subprocess.run(
        [
            sys.executable,
            "-I",
            "-c",
            code,
            os.path.dirname(_check_worker.__file__),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.stdout.split("\n")[:3] == [
        "blocked keras",
        "blocked keras_attention",
        "blocked keras.ops",
    ], result.stderr


@pytest.mark.parametrize(
    "body,message",
    [
        ({"instances": [1], "inputs": [1]}, 'exactly one of "instances"'),
        ({"instances": []}, "non-empty list"),
        ({"inputs": {"a": {"b64": "AA==", "x": 1}}}, "must be {'b64'"),
        ([1, 2], "must be a JSON object"),
    ],
)
def test_decode_body_errors(body, message):
    with pytest.raises(_check_worker.CheckError, match=message):
        _check_worker.decode_body(body, {"a": "float32"})
