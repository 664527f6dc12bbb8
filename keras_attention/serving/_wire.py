"""TF Serving's wire formats: REST bodies, gRPC `PredictRequest`s and
warm-up `PredictionLog`s."""

import base64
import json
import re
import urllib.request

import numpy as np

from keras_attention import _validation
from keras_attention.serving import _check_worker

_MODEL_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")
SERVING_API_HINT = (
    "This needs `tensorflow-serving-api`. Install it without its "
    "dependencies (it pins `tensorflow`, which clashes with "
    "`tensorflow-cpu`): python -m pip install --no-deps "
    "tensorflow-serving-api"
)


class NotARequestBody(ValueError):
    """A request file that holds no request body; the message names it."""


def _serving_apis():
    try:
        from tensorflow_serving.apis import predict_pb2
        from tensorflow_serving.apis import prediction_log_pb2
    except ImportError as e:
        raise ImportError(SERVING_API_HINT) from e
    return predict_pb2, prediction_log_pb2


def _as_arrays(inputs, dtypes=None):
    if not isinstance(inputs, dict) or not inputs:
        raise ValueError(
            "Argument `inputs` must be a non-empty dict {input_name: array}. "
            f"Received: inputs={type(inputs).__name__}"
        )
    arrays = {}
    for name, value in inputs.items():
        if not isinstance(name, str) or not name:
            raise ValueError(
                f"Input names must be non-empty strings. Received: {name!r}"
            )
        array = np.asarray(value)
        if array.dtype.kind in "SUO":
            flat = [
                v.encode("utf-8") if isinstance(v, str) else v
                for v in array.reshape(-1).tolist()
            ]
            if not all(isinstance(v, bytes) for v in flat):
                raise ValueError(
                    f"Input {name!r} mixes strings with other values."
                )
            array = np.array(flat + [b""], dtype=object)[:-1].reshape(
                array.shape
            )
        elif array.dtype.kind not in "biuf":
            raise ValueError(
                f"Input {name!r} has an unsupported dtype {array.dtype}."
            )
        elif dtypes and name in dtypes:
            array = array.astype(dtypes[name])
        arrays[name] = array
    return arrays


def _json_leaf(value):
    """Bytes that are not UTF-8 text travel as `{"b64": ...}`."""
    if isinstance(value, bytes):
        return {"b64": base64.b64encode(value).decode("ascii")}
    return value


def _to_json(array, binary):
    """Nested lists of an object array of bytes: text or `{"b64": ...}`."""
    if isinstance(array, np.ndarray) and array.ndim > 0:
        return [_to_json(a, binary) for a in array]
    value = array.item() if isinstance(array, np.ndarray) else array
    return _json_leaf(value) if binary else _text(value)


def _text(value):
    return value.decode("utf-8")


def _is_binary(array):
    """Whether a string input needs base64: any value that is not UTF-8."""
    if array.dtype != object:
        return False
    for value in array.reshape(-1):
        try:
            value.decode("utf-8")
        except UnicodeDecodeError:
            return True
    return False


def rest_body(inputs, format="inputs", signature_name=None, binary=None):
    """The JSON body of a TF Serving REST `:predict` request.

    Args:
        inputs: Dict `{input_name: array}`; the arrays share the batch size.
            Strings are `str` or `bytes`.
        format: `"inputs"` (columnar) or `"instances"` (one object per row).
        signature_name: Optional signature; TF Serving uses
            `serving_default` when it is absent.
        binary: Which string inputs are sent base64-encoded as
            `{"b64": ...}`: a collection of input names, or `None` (default)
            for every input that holds bytes that are not valid UTF-8 text.
            Encoded images must be sent this way.

    Returns:
        A dict, ready for `json.dumps`.
    """
    arrays = _as_arrays(inputs)
    if format not in ("inputs", "instances"):
        raise ValueError(
            'Argument `format` must be "inputs" or "instances". '
            f"Received: format={format!r}"
        )
    if binary is None:
        binary = {name for name, a in arrays.items() if _is_binary(a)}
    columns = {
        name: _to_json(a, name in binary) if a.dtype == object else a.tolist()
        for name, a in arrays.items()
    }
    body = {}
    if signature_name is not None:
        body["signature_name"] = signature_name
    if format == "inputs":
        body["inputs"] = columns
        return body
    batch = {a.shape[0] if a.ndim else None for a in arrays.values()}
    if len(batch) != 1 or None in batch:
        raise ValueError(
            'The "instances" format needs inputs with one shared batch '
            "dimension. Received shapes: "
            f"{ {k: a.shape for k, a in arrays.items()} }"
        )
    (n,) = batch
    if len(columns) == 1:
        body["instances"] = next(iter(columns.values()))
    else:
        body["instances"] = [
            {name: column[i] for name, column in columns.items()}
            for i in range(n)
        ]
    return body


def rest_url(host, port, model_name, version=None, label=None):
    """`http://HOST:PORT/v1/models/NAME[/versions/N|/labels/L]:predict`."""
    check_model_name(model_name)
    if version is not None and label is not None:
        raise ValueError("Pass `version` or `label`, not both.")
    path = f"/v1/models/{model_name}"
    if version is not None:
        path += f"/versions/{_validation.check_version(version)}"
    elif label is not None:
        check_model_name(label, "label")
        path += f"/labels/{label}"
    return f"http://{host}:{int(port)}{path}:predict"


def check_model_name(name, what="model_name"):
    if not isinstance(name, str) or not _MODEL_NAME.match(name):
        raise ValueError(
            f"Argument `{what}` must be letters, digits, '_', '.' or '-'. "
            f"Received: {what}={name!r}"
        )


def send_rest(url, body, timeout=30.0):
    """POSTs `body` to `url`; returns the decoded JSON response."""
    data = json.dumps(body).encode("utf-8")
    request = urllib.request.Request(
        url,
        data=data,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read().decode("utf-8"))


def _tensor_proto(array):
    import tensorflow as tf

    if array.dtype == object:
        return tf.make_tensor_proto(array, dtype=tf.string)
    return tf.make_tensor_proto(array)


def predict_request(
    model_name,
    inputs,
    signature_name="serving_default",
    version=None,
    dtypes=None,
):
    """A gRPC `tensorflow.serving.PredictRequest`.

    Args:
        model_name: The served model's name.
        inputs: Dict `{input_name: array}`.
        signature_name: Defaults to `"serving_default"`.
        version: Optional integer version.
        dtypes: Optional `{input_name: dtype}` to cast numeric inputs to,
            e.g. from `signature_dtypes`. gRPC tensors carry their dtype,
            and TF Serving rejects one that differs from the signature's.

    Returns:
        A `PredictRequest`.
    """
    check_model_name(model_name)
    predict_pb2, _ = _serving_apis()
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    if version is not None:
        request.model_spec.version.value = _validation.check_version(version)
    for name, array in _as_arrays(inputs, dtypes).items():
        request.inputs[name].CopyFrom(_tensor_proto(array))
    return request


def signature_dtypes(saved_model_dir, signature_name="serving_default"):
    """`{input_name: numpy dtype name}` read from an export's
    `saved_model.pb`, without loading the model."""
    import os

    import tensorflow as tf
    from tensorflow.core.protobuf import saved_model_pb2

    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(saved_model_dir, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    for meta_graph in proto.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            signatures = meta_graph.signature_def
            if signature_name not in signatures:
                raise ValueError(
                    f"No signature {signature_name!r} in {saved_model_dir}; "
                    f"it has {sorted(signatures)}"
                )
            return _dtypes_of(tf, signatures[signature_name])
    raise ValueError(f"No 'serve' meta graph in {saved_model_dir}")


def _dtypes_of(tf, signature_def):
    return {
        name: tf.dtypes.as_dtype(info.dtype).as_numpy_dtype.__name__
        for name, info in signature_def.inputs.items()
        if info.dtype != tf.string.as_datatype_enum
    }


def grpc_signature_dtypes(target, model_name, signature_name, version=None):
    """Asks a running TF Serving (`GetModelMetadata`) for input dtypes."""
    import grpc
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = get_model_metadata_pb2.GetModelMetadataRequest()
    request.model_spec.name = model_name
    if version is not None:
        request.model_spec.version.value = _validation.check_version(version)
    request.metadata_field.append("signature_def")
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.GetModelMetadata(request, timeout=30.0)
    signatures = get_model_metadata_pb2.SignatureDefMap()
    response.metadata["signature_def"].Unpack(signatures)
    return _dtypes_of(tf, signatures.signature_def[signature_name])


def prediction_log(model_name, signature_name, inputs):
    """A warm-up record: a `PredictionLog` holding one `PredictRequest`."""
    _, prediction_log_pb2 = _serving_apis()
    request = predict_request(model_name, inputs, signature_name)
    return prediction_log_pb2.PredictionLog(
        predict_log=prediction_log_pb2.PredictLog(request=request)
    )


def send_grpc(target, request, timeout=30.0):
    """Sends a `PredictRequest` to `target` ("host:port"); `{name: array}`."""
    try:
        import grpc
        from tensorflow_serving.apis import prediction_service_pb2_grpc
    except ImportError as e:
        raise ImportError(SERVING_API_HINT + " (and grpcio)") from e
    import tensorflow as tf

    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(request, timeout=timeout)
    return {k: tf.make_ndarray(v) for k, v in response.outputs.items()}


def load_request(path):
    """A request body (`.json`, REST format) or arrays (`.npz`); raises
    `NotARequestBody` when the JSON holds no inputs."""
    if path.endswith(".npz"):
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    with open(path) as f:
        body = json.load(f)
    columns = body.get("inputs", body) if isinstance(body, dict) else body
    if not isinstance(columns, dict):
        raise NotARequestBody(
            f"{path}: expected {{'inputs': {{name: values}}}} or an .npz file"
        )
    return {k: _check_worker.decode_leaf(v) for k, v in columns.items()}
