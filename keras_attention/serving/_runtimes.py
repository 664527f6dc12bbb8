"""The ONNX, LiteRT and OpenVINO runtimes: which are installed, and running
an exported file on its own runtime.

This module imports neither Keras nor TensorFlow: what it runs is the
exported file alone, as a server or a phone would.
"""

import importlib.util

import numpy as np

# format: (the file in a version directory, the modules its export and its
# runtime need, the packages that install them).
FORMATS = {
    "onnx": ("model.onnx", ("tf2onnx", "onnxruntime"), "tf2onnx onnxruntime"),
    "litert": ("model.tflite", ("ai_edge_litert",), "ai-edge-litert"),
    "openvino": ("model.xml", ("openvino",), "openvino"),
}


def install_command(fmt):
    """The command that installs what `fmt` needs."""
    return f"python -m pip install {FORMATS[fmt][2]}"


def versions(fmt):
    """`{package: version}` of what `fmt` needs (and NumPy)."""
    from importlib import metadata

    names = [p for p in FORMATS[fmt][2].split()] + ["numpy"]
    return {name: metadata.version(name) for name in names}


def missing(fmt):
    """The modules `fmt` needs that are not installed (empty if none)."""
    return [m for m in FORMATS[fmt][1] if importlib.util.find_spec(m) is None]


def file_format(path):
    """The format of an exported file, by its suffix; None if none matches."""
    suffix = str(path).rsplit(".", 1)[-1]
    for fmt, (name, _, _) in FORMATS.items():
        if name.rsplit(".", 1)[-1] == suffix:
            return fmt
    return None


# The op types of a loop (the chunked kernel's `while`) and of a run-time
# branch (`"auto"`'s `cond` between the kernels) in each format.
LOOP_OPS = {
    "onnx": {"Loop"},
    "litert": {"WHILE"},
    "openvino": {"Loop", "TensorIterator"},
}
BRANCH_OPS = {"onnx": {"If"}, "litert": {"IF"}, "openvino": {"If"}}


def op_types(path):
    """The set of op types in an exported file, its loop and branch bodies
    included (LiteRT, OpenVINO: the main graph's)."""
    fmt = file_format(path)
    if fmt == "onnx":
        import onnx

        def graph_ops(graph):
            for node in graph.node:
                yield node.op_type
                for attribute in node.attribute:
                    if attribute.g.node:
                        yield from graph_ops(attribute.g)

        return set(graph_ops(onnx.load(str(path)).graph))
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        interpreter = Interpreter(model_path=str(path))
        return {op["op_name"] for op in interpreter._get_ops_details()}
    if fmt == "openvino":
        import openvino

        model = openvino.Core().read_model(str(path))
        return {op.get_type_name() for op in model.get_ordered_ops()}
    raise ValueError(
        "Argument `path` must name a .onnx, .tflite or OpenVINO .xml file. "
        f"Received: path={path!r}"
    )


def describe(path):
    """`(inputs, outputs)`: lists of `(name, dtype, shape)` of an exported
    file as its runtime sees them (-1 or a name for a dynamic size)."""
    fmt = file_format(path)
    if fmt == "onnx":
        import onnxruntime

        session = onnxruntime.InferenceSession(
            str(path), providers=["CPUExecutionProvider"]
        )
        return tuple(
            [(p.name, _ONNX_DTYPES.get(p.type, p.type), p.shape) for p in ports]
            for ports in (session.get_inputs(), session.get_outputs())
        )
    if fmt == "litert":
        from ai_edge_litert.interpreter import Interpreter

        runner = Interpreter(model_path=str(path)).get_signature_runner(
            "serving_default"
        )
        return tuple(
            [
                (name, np.dtype(d["dtype"]).name, d["shape_signature"].tolist())
                for name, d in details.items()
            ]
            for details in (
                runner.get_input_details(),
                runner.get_output_details(),
            )
        )
    import openvino

    model = openvino.Core().read_model(str(path))
    return tuple(
        [
            (
                p.get_any_name(),
                p.get_element_type().to_dtype().name,
                str(p.get_partial_shape()),
            )
            for p in ports
        ]
        for ports in (model.inputs, model.outputs)
    )


def run_exported(path, inputs, num_outputs=None):
    """Runs an ONNX, LiteRT or OpenVINO file on its format's runtime (CPU):
    onnxruntime's CPU provider, the LiteRT `Interpreter` without the Flex
    delegate, or OpenVINO's CPU plugin at f32 precision.

    Args:
        path: A `.onnx`, `.tflite` or OpenVINO `.xml` file, e.g. from
            Keras' `model.export` or `export_model`.
        inputs: A dict `{input_name: array}` in the model's input order;
            arrays are cast to the dtypes the file declares.
        num_outputs: How many outputs the model has; later results (none
            in what `export_model` writes) are dropped. Defaults to all.

    Returns:
        The list of output arrays, in the model's output order.

    Example:

    >>> import tempfile
    >>> from keras_attention import serving
    >>> inputs = keras.Input((None, 4), name="features")
    >>> model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    >>> path = os.path.join(tempfile.mkdtemp(), "model.onnx")
    >>> model.export(path, format="onnx", verbose=False)
    >>> features = np.ones((2, 3, 4), "float32")
    >>> (out,) = serving.run_exported(path, {"features": features})
    >>> bool(np.allclose(out, model.predict(features, verbose=0), atol=1e-5))
    True
    """
    return runner(path, num_outputs)(inputs)


def runner(path, num_outputs=None):
    """`run` as a function of `inputs`, with the file loaded once (an ONNX
    session, a LiteRT interpreter, a compiled OpenVINO model)."""
    fmt = file_format(path)
    if fmt == "onnx":
        call = _onnx_runner(path)
    elif fmt == "litert":
        call = _litert_runner(path)
    elif fmt == "openvino":
        call = _openvino_runner(path)
    else:
        raise ValueError(
            "Argument `path` must name a .onnx, .tflite or OpenVINO .xml "
            f"file. Received: path={path!r}"
        )
    return lambda inputs: call(inputs)[:num_outputs]


_ONNX_DTYPES = {
    "tensor(float)": "float32",
    "tensor(double)": "float64",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
}


def _onnx_runner(path):
    import onnxruntime

    session = onnxruntime.InferenceSession(
        str(path), providers=["CPUExecutionProvider"]
    )

    def call(inputs):
        feed = {
            spec.name: np.asarray(value, _ONNX_DTYPES.get(spec.type))
            for spec, value in zip(session.get_inputs(), inputs.values())
        }
        return session.run(None, feed)

    return call


def _litert_runner(path):
    from ai_edge_litert.interpreter import Interpreter

    # No Flex delegate: a model that needs TensorFlow's own ops fails here,
    # as it would on a phone.
    signature = Interpreter(model_path=str(path)).get_signature_runner(
        "serving_default"
    )
    details = signature.get_input_details()

    def call(inputs):
        outputs = signature(
            **{
                name: np.asarray(value, details[name]["dtype"])
                for name, value in inputs.items()
            }
        )
        # Keras names them output_0, output_1, ...: by their number.
        return [
            outputs[k]
            for k in sorted(outputs, key=lambda k: int(k.split("_")[-1]))
        ]

    return call


def _openvino_runner(path):
    import openvino

    compiled = openvino.Core().compile_model(
        str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"}
    )

    def call(inputs):
        feed = {
            port.get_any_name(): np.asarray(
                value, port.get_element_type().to_dtype()
            )
            for port, value in zip(compiled.inputs, inputs.values())
        }
        results = compiled(feed)
        return [results[port] for port in compiled.outputs]

    return call
