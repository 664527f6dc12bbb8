"""SavedModel export and TensorFlow Serving deployment.

The one part of `keras_attention` that imports TensorFlow. It needs the
TensorFlow backend for export; the configuration writers, warm-up records and
gRPC requests need `tensorflow-serving-api`, installed without its
dependencies (it pins `tensorflow`, which clashes with `tensorflow-cpu`):

    python -m pip install --no-deps tensorflow-serving-api

Command line (`python -m keras_attention.serving --help`):

    check PATH [--inputs body.json] [--expect outputs.npz]
        Loads an export the way TF Serving does (or an ONNX, LiteRT or
        OpenVINO version on its own runtime), in a subprocess where neither
        `keras` nor `keras_attention` can be imported, lists its signatures,
        scans for Python and custom ops, runs sample inputs and compares
        the outputs.
    export MODEL.keras BASE_PATH [--format FORMAT] [--version N]
           [--overwrite] [--warmup body.json] [--import MODULE]
        Loads a `.keras` file under the TensorFlow backend (re-running
        itself there from any other backend) in safe mode, exports it as
        `export_model` does (`tf_saved_model`, `onnx`, `litert` or
        `openvino`), and checks the export on its runtime.
    request --model NAME --inputs body.json [--protocol rest|grpc] ...
        Sends a predict request to a running TF Serving.
"""

import importlib.util

# Loaded on first use, so that `python -m keras_attention.serving export`
# (and `check`) can run, and say what is missing, where TensorFlow is not
# installed.
_WHERE = {
    "CheckFailed": "_export",
    "check": "_check",
    "export_model": "_formats",
    "export_saved_model": "_export",
    "predict_request": "_wire",
    "rest_body": "_wire",
    "rest_url": "_wire",
    "run_exported": "_runtimes",
    "write_batching_config": "_config",
    "write_model_config": "_config",
}

__all__ = sorted(_WHERE)


def __getattr__(name):
    if name not in _WHERE:
        raise AttributeError(
            f"module 'keras_attention.serving' has no attribute {name!r}"
        )
    if _WHERE[name] in ("_export", "_config", "_formats"):
        if importlib.util.find_spec("tensorflow") is None:
            from keras_attention.serving import _subprocess

            raise ImportError(_subprocess.tensorflow_missing_message())
    return getattr(_module(_WHERE[name]), name)


def _module(name):
    # Static imports: nothing here imports a module by a computed name.
    if name == "_check":
        from keras_attention.serving import _check as module
    elif name == "_wire":
        from keras_attention.serving import _wire as module
    elif name == "_config":
        from keras_attention.serving import _config as module
    elif name == "_runtimes":
        from keras_attention.serving import _runtimes as module
    elif name == "_formats":
        from keras_attention.serving import _formats as module
    else:
        from keras_attention.serving import _export as module
    return module


def __dir__():
    return sorted(set(globals()) | set(_WHERE))
