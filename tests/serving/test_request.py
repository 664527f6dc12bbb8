"""TF Serving requests: REST bodies and gRPC `PredictRequest`s, checked
against an exported signature.

No real TF Serving runs here (it cannot be installed on our machines). The
sending code is exercised against test doubles: a local HTTP server and a
local gRPC server that answer by running the exported signature. They prove
the client speaks the documented wire formats, not that a server accepted it.
"""

import base64
import json
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler
from http.server import HTTPServer

import keras
import numpy as np
import pytest

from keras_attention import serving
from keras_attention.serving import __main__ as cli
from keras_attention.serving import _check_worker
from keras_attention.serving import _wire
from tests.serving.helpers import ragged_tokens
from tests.serving.helpers import two_input_model

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow_only


@pytest.fixture(scope="module")
def export(tmp_path_factory):
    keras.utils.set_random_seed(2)
    model = two_input_model()
    path = serving.export_saved_model(
        model, tmp_path_factory.mktemp("req") / "two_inputs"
    )
    sig = tf.saved_model.load(path).signatures["serving_default"]
    return model, path, sig


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    return {
        "tokens": ragged_tokens(rng, [3, 1, 4]),
        "memory": rng.normal(size=(3, 2, 6)).astype("float32"),
    }


def _signature_dtypes(sig):
    return {
        k: v.dtype.name for k, v in sig.structured_input_signature[1].items()
    }


@pytest.mark.parametrize("fmt", ["inputs", "instances"])
def test_rest_body_matches_the_signature(export, fmt):
    model, _, sig = export
    inputs = _inputs()
    body = json.loads(json.dumps(serving.rest_body(inputs, format=fmt)))
    if fmt == "inputs":
        assert sorted(body["inputs"]) == sorted(_signature_dtypes(sig))
    else:
        assert len(body["instances"]) == 3
        assert sorted(body["instances"][0]) == ["memory", "tokens"]
    decoded = _check_worker.decode_body(body, _signature_dtypes(sig))
    for name, value in inputs.items():
        np.testing.assert_array_equal(decoded[name], value)
    got = sig(**decoded)["score"]
    expected = model.predict([inputs["tokens"], inputs["memory"]], verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_rest_body_single_input_and_bytes():
    images = [b"\x89PNG\r\n\x1a\n\x00\xff", b"\x00\x01"]
    body = serving.rest_body({"image_bytes": images}, format="instances")
    assert body == {
        "instances": [
            {"b64": base64.b64encode(images[0]).decode()},
            {"b64": base64.b64encode(images[1]).decode()},
        ]
    }
    decoded = _check_worker.decode_body(body, {"image_bytes": "string"})
    assert decoded["image_bytes"].tolist() == images
    text = serving.rest_body({"text": ["sat 21 nov 2026"]}, signature_name="s")
    assert text == {
        "signature_name": "s",
        "inputs": {"text": ["sat 21 nov 2026"]},
    }


def test_rest_url():
    assert (
        serving.rest_url("localhost", 8501, "digits")
        == "http://localhost:8501/v1/models/digits:predict"
    )
    assert (
        serving.rest_url("h", 1, "digits", version=3)
        == "http://h:1/v1/models/digits/versions/3:predict"
    )
    assert serving.rest_url("h", 1, "d", label="stable").endswith(
        "/v1/models/d/labels/stable:predict"
    )
    with pytest.raises(ValueError, match="`model_name`"):
        serving.rest_url("h", 1, "a/b")
    with pytest.raises(ValueError, match="`version` must be an integer from 0"):
        serving.rest_url("h", 1, "a", version=-1)


def test_rest_body_errors():
    with pytest.raises(ValueError, match="`inputs` must be a non-empty dict"):
        serving.rest_body([1, 2])
    with pytest.raises(ValueError, match='`format` must be "inputs"'):
        serving.rest_body({"a": [1]}, format="rows")
    with pytest.raises(ValueError, match="shared batch"):
        serving.rest_body({"a": [1, 2], "b": [1]}, format="instances")


def test_request_file_without_inputs(tmp_path, capsys):
    path = tmp_path / "body.json"
    path.write_text("[1, 2]")
    with pytest.raises(ValueError, match="expected {'inputs'"):
        _wire.load_request(str(path))
    argv = ["request", "--model", "m", "--inputs", str(path), "--dry-run"]
    assert cli.main(argv) == 1
    assert capsys.readouterr().err == (
        f"{path}: expected {{'inputs': {{name: values}}}} or an .npz file\n"
    )


class _FakeRestServer(BaseHTTPRequestHandler):
    """Answers `:predict` by running the signature (a test double)."""

    signature = None
    seen = []

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append((self.path, self.headers["Content-Type"], body))
        dtypes = _signature_dtypes(self.signature)
        outputs = self.signature(**_check_worker.decode_body(body, dtypes))
        reply = json.dumps(
            {"outputs": {k: v.numpy().tolist() for k, v in outputs.items()}}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply)))
        self.end_headers()
        self.wfile.write(reply)

    def log_message(self, *args):
        pass


def test_send_rest_to_a_local_double(export):
    model, _, sig = export
    _FakeRestServer.signature = sig
    _FakeRestServer.seen = []
    server = HTTPServer(("127.0.0.1", 0), _FakeRestServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        inputs = _inputs(1)
        url = serving.rest_url("127.0.0.1", server.server_port, "m", version=1)
        reply = _wire.send_rest(url, serving.rest_body(inputs))
    finally:
        server.shutdown()
    ((path, content_type, _),) = _FakeRestServer.seen
    assert path == "/v1/models/m/versions/1:predict"
    assert content_type == "application/json"
    expected = model.predict([inputs["tokens"], inputs["memory"]], verbose=0)
    np.testing.assert_allclose(reply["outputs"]["score"], expected, atol=1e-5)


def test_predict_request_matches_the_signature(export):
    model, _, sig = export
    inputs = _inputs(2)
    request = serving.predict_request("two_inputs", inputs, version=4)
    assert request.model_spec.name == "two_inputs"
    assert request.model_spec.signature_name == "serving_default"
    assert request.model_spec.version.value == 4
    dtypes = _signature_dtypes(sig)
    assert sorted(request.inputs) == sorted(dtypes)
    arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
    for name, array in arrays.items():
        assert tf.as_dtype(array.dtype).name == dtypes[name]
    got = sig(**arrays)["score"]
    expected = model.predict([inputs["tokens"], inputs["memory"]], verbose=0)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_send_grpc_to_a_local_double(export):
    grpc = pytest.importorskip("grpc")
    from concurrent import futures

    from tensorflow_serving.apis import predict_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    model, _, sig = export
    seen = []

    class Servicer(prediction_service_pb2_grpc.PredictionServiceServicer):
        def Predict(self, request, context):
            seen.append(request)
            arrays = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
            assert {k: v.dtype for k, v in request.inputs.items()} == {
                "tokens": tf.int32.as_datatype_enum,
                "memory": 1,
            }
            response = predict_pb2.PredictResponse()
            for k, v in sig(**arrays).items():
                response.outputs[k].CopyFrom(tf.make_tensor_proto(v.numpy()))
            return response

    server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(
        Servicer(), server
    )
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        inputs = _inputs(3)
        as_json = {k: v.tolist() for k, v in inputs.items()}  # int64, float64
        dtypes = _wire.signature_dtypes(export[1])
        request = serving.predict_request("two_inputs", as_json, dtypes=dtypes)
        outputs = _wire.send_grpc(f"127.0.0.1:{port}", request, timeout=30)
    finally:
        server.stop(0)
    assert seen[0].model_spec.name == "two_inputs"
    expected = model.predict([inputs["tokens"], inputs["memory"]], verbose=0)
    np.testing.assert_allclose(outputs["score"], expected, atol=1e-5)


def test_request_cli_dry_run(tmp_path, export):
    body = {"inputs": {"tokens": [[1, 2, 0]], "memory": [[[0.5] * 6]]}}
    (tmp_path / "body.json").write_text(json.dumps(body))
    base = [sys.executable, "-m", "keras_attention.serving", "request"]
    args = ["--model", "two_inputs", "--inputs", str(tmp_path / "body.json")]
    rest = subprocess.run(
        base + args + ["--version", "2", "--dry-run"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert rest.returncode == 0, rest.stderr
    lines = rest.stdout.strip().split("\n")
    assert lines[-2] == (
        "POST http://localhost:8501/v1/models/two_inputs/versions/2:predict"
    )
    assert json.loads(lines[-1]) == body
    grpc = subprocess.run(
        base
        + args
        + ["--protocol", "grpc", "--dry-run"]
        + ["--saved-model", export[1]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert grpc.returncode == 0, grpc.stderr
    assert "gRPC PredictionService/Predict -> localhost:8500" in grpc.stdout
    assert 'name: "two_inputs"' in grpc.stdout
    assert "DT_INT32" in grpc.stdout and "DT_FLOAT" in grpc.stdout
