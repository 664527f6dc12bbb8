"""Runs a model exported by Keras' `model.export` on its runtime: an ONNX
file on onnxruntime's CPU provider, a `.tflite` file on the LiteRT
interpreter. Each skips the calling test when its runtime is missing."""

import re

import pytest


def run_onnx(path, inputs):
    """Runs an ONNX file on onnxruntime's CPU provider.

    Args:
        path: the `.onnx` file.
        inputs: dict, the model's input names to NumPy arrays.

    Returns:
        The list of outputs (NumPy arrays), in the model's output order.
    """
    onnxruntime = pytest.importorskip("onnxruntime")
    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )
    return session.run(None, inputs)


def run_litert(path, inputs):
    """Runs a `.tflite` file on the LiteRT interpreter, through its
    `serving_default` signature.

    Args:
        path: the `.tflite` file.
        inputs: dict, the model's input names to NumPy arrays.

    Returns:
        The list of outputs (NumPy arrays), in the model's output order.
    """
    litert = pytest.importorskip("ai_edge_litert.interpreter")
    interpreter = litert.Interpreter(model_path=str(path))
    runner = interpreter.get_signature_runner("serving_default")
    outputs = runner(**inputs)
    # The signature lists names sorted as strings: Keras' `output_<i>`
    # are put back in the model's order.
    return [outputs[name] for name in sorted(outputs, key=_output_index)]


def _output_index(name):
    match = re.fullmatch(r"output_(\d+)", name)
    return (0, int(match.group(1))) if match else (1, name)
