"""SavedModel export and TensorFlow Serving deployment.

The one part of `keras_attention` that imports TensorFlow. It needs the
TensorFlow backend for export; the configuration writers, warm-up records and
gRPC requests need `tensorflow-serving-api`, installed without its
dependencies (it pins `tensorflow`, which clashes with `tensorflow-cpu`):

    python -m pip install --no-deps tensorflow-serving-api

Command line (`python -m keras_attention.serving --help`):

    check PATH [--inputs body.json] [--expect outputs.npz]
        Loads an export the way TF Serving does, in a subprocess where
        neither `keras` nor `keras_attention` can be imported, lists its
        signatures, scans for Python and custom ops, runs sample inputs and
        compares the outputs.
    request --model NAME --inputs body.json [--protocol rest|grpc] ...
        Sends a predict request to a running TF Serving.
"""

from keras_attention.serving._check import check
from keras_attention.serving._config import write_batching_config
from keras_attention.serving._config import write_model_config
from keras_attention.serving._export import export_saved_model
from keras_attention.serving._wire import predict_request
from keras_attention.serving._wire import rest_body
from keras_attention.serving._wire import rest_url

__all__ = [
    "check",
    "export_saved_model",
    "predict_request",
    "rest_body",
    "rest_url",
    "write_batching_config",
    "write_model_config",
]
