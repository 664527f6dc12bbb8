"""Checks a SavedModel the way TensorFlow Serving loads it.

This file is run as a script, in a subprocess started with `python -I`, by
`python -m keras_attention.serving check`. It imports only the standard
library, NumPy and TensorFlow: `keras` and `keras_attention` are blocked,
to prove that the export needs no Python code of ours (TF Serving is C++).
It never imports or executes anything from the SavedModel directory.

It loads the export with the SavedModel loader and the `serve` tag (as TF
Serving's `SavedModelBundle` does), lists the signatures, scans every graph
and function for Python ops (`PyFunc`, `EagerPyFunc`), unregistered (custom)
ops and functions that must be XLA-compiled, then feeds the sample inputs to
the signature's tensors by name and compares the outputs with the expected
ones.

Exit status: 0 when every check passed, 1 when one failed, 2 for bad usage.
"""

import base64
import json
import os
import sys

BLOCKED = ("keras", "keras_attention", "tf_keras")
PYTHON_OPS = {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
SAMPLE = os.path.join("assets.extra", "sample_request.json")
EXPECTED = os.path.join("assets.extra", "expected_outputs.npz")


class _Blocker:
    """A meta-path finder that makes the blocked packages unimportable.

    It finds them first, with a spec that has no origin (so TensorFlow's
    lazy-loader probes treat them as absent) and a loader that refuses.
    """

    def find_spec(self, name, path=None, target=None):
        import importlib.machinery

        if name.split(".")[0] in BLOCKED:
            return importlib.machinery.ModuleSpec(name, self)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        raise ImportError(f"{module.__name__} is blocked in the serving check")


class CheckError(Exception):
    pass


# -- request bodies (TF Serving's REST format) --------------------------------
def decode_leaf(value):
    """A JSON leaf: `{"b64": ...}` becomes bytes, anything else stays."""
    if isinstance(value, dict):
        if set(value) != {"b64"}:
            raise CheckError(
                f"A JSON object inside a tensor must be {{'b64': ...}}; "
                f"got keys {sorted(value)}"
            )
        return base64.b64decode(value["b64"], validate=True)
    if isinstance(value, list):
        return [decode_leaf(v) for v in value]
    return value


def to_array(value, dtype):
    """A decoded JSON value as a NumPy array of TensorFlow dtype `dtype`."""
    import numpy as np

    if dtype == "string":
        array = np.array(value, dtype=object)
        flat = [
            v.encode("utf-8") if isinstance(v, str) else v
            for v in array.reshape(-1)
        ]
        if not all(isinstance(v, bytes) for v in flat):
            raise CheckError("a string input holds a non-string value")
        out = np.empty(len(flat), dtype=object)
        out[:] = flat
        return out.reshape(array.shape)
    return np.asarray(value, dtype=np.dtype(dtype))


def _named(value):
    return isinstance(value, dict) and set(value) != {"b64"}


def decode_body(body, input_dtypes):
    """`{name: array}` from a TF Serving REST predict body.

    Both formats are accepted: row (`{"instances": [...]}`) and columnar
    (`{"inputs": ...}`). `input_dtypes` maps the signature's input names to
    their TensorFlow dtype names.
    """
    if not isinstance(body, dict):
        raise CheckError("the request body must be a JSON object")
    names = sorted(input_dtypes)
    if ("instances" in body) == ("inputs" in body):
        raise CheckError(
            'the request body needs exactly one of "instances" or "inputs"'
        )
    # As in TF Serving: a JSON object (other than {"b64": ...}) names the
    # inputs; anything else is the value of the signature's only input.
    if "inputs" in body:
        inputs = body["inputs"]
        if _named(inputs) or len(names) != 1:
            columns = inputs
        else:
            columns = {names[0]: inputs}
    else:
        instances = body["instances"]
        if not isinstance(instances, list) or not instances:
            raise CheckError('"instances" must be a non-empty list')
        if not _named(instances[0]) and len(names) == 1:
            columns = {names[0]: instances}
        else:
            columns = {}
            for i, row in enumerate(instances):
                if not _named(row) or set(row) != set(names):
                    raise CheckError(
                        f"instance {i} must be an object with the inputs "
                        f"{names}"
                    )
                for name in names:
                    columns.setdefault(name, []).append(row[name])
    if not isinstance(columns, dict) or set(columns) != set(names):
        got = sorted(columns) if isinstance(columns, dict) else columns
        raise CheckError(f"the request must give the inputs {names}; got {got}")
    return {
        name: to_array(decode_leaf(columns[name]), input_dtypes[name])
        for name in names
    }


# -- the checks ---------------------------------------------------------------
def _dtype_name(tf, enum):
    return tf.dtypes.as_dtype(enum).name


def _shape(tensor_info):
    if tensor_info.tensor_shape.unknown_rank:
        return None
    return [
        None if d.size < 0 else int(d.size)
        for d in tensor_info.tensor_shape.dim
    ]


def describe(tf, meta_graph):
    signatures = {}
    for key, sig in sorted(meta_graph.signature_def.items()):
        if key.startswith("__"):
            continue
        signatures[key] = {
            "method": sig.method_name,
            "inputs": {
                k: {
                    "dtype": _dtype_name(tf, v.dtype),
                    "shape": _shape(v),
                    "tensor": v.name,
                }
                for k, v in sorted(sig.inputs.items())
            },
            "outputs": {
                k: {
                    "dtype": _dtype_name(tf, v.dtype),
                    "shape": _shape(v),
                    "tensor": v.name,
                }
                for k, v in sorted(sig.outputs.items())
            },
        }
    return signatures


def scan_graph(meta_graph):
    """Problems that would stop TF Serving: Python, custom or XLA ops
    (`Xla*`, e.g. the `XlaDynamicUpdateSlice` of `keras.ops.slice_update`
    on TensorFlow)."""
    from tensorflow.python.framework import op_def_registry

    graph = meta_graph.graph_def
    nodes = [("graph", n) for n in graph.node]
    problems = []
    for function in graph.library.function:
        fname = function.signature.name
        nodes += [(fname, n) for n in function.node_def]
        attr = function.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            problems.append(
                f"function {fname} must be compiled with XLA (jit_compile), "
                "which TF Serving disables by default"
            )
    for where, node in nodes:
        if node.op in PYTHON_OPS:
            problems.append(
                f"Python op {node.op} ({node.name} in {where}): TF Serving "
                "cannot run Python"
            )
        elif op_def_registry.get(node.op) is None and not any(
            f.signature.name == node.op for f in graph.library.function
        ):
            problems.append(
                f"op {node.op} ({node.name} in {where}) is not a registered "
                "TensorFlow op (a custom op TF Serving does not have)"
            )
        elif node.op.startswith("Xla"):
            problems.append(
                f"XLA op {node.op} ({node.name} in {where}): it is compiled "
                "by XLA on demand, and TF Serving runs without XLA by default"
            )
        attr = node.attr.get("_XlaMustCompile")
        if attr is not None and attr.b:
            problems.append(
                f"node {node.name} in {where} must be compiled with XLA"
            )
    return problems, len(nodes)


def run_check(path, inputs_path, expect_path, signature, rtol, atol):
    sys.meta_path.insert(0, _Blocker())
    runtime_file = _runtime_file(path)
    if runtime_file is not None:
        return run_runtime_check(
            path, runtime_file, inputs_path, expect_path, rtol, atol
        )
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # the v1 loader's deprecation notice
    for name in BLOCKED:
        if name in sys.modules:
            raise CheckError(f"{name} was imported during the check")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
        raise CheckError(
            f"no saved_model.pb, model.onnx, model.tflite or model.xml in "
            f"{path}"
        )
    report = {"path": path}
    graph = tf.Graph()
    with tf.compat.v1.Session(graph=graph) as sess:
        meta_graph = tf.compat.v1.saved_model.loader.load(sess, ["serve"], path)
        report["signatures"] = describe(tf, meta_graph)
        problems, n_nodes = scan_graph(meta_graph)
        report["nodes_scanned"] = n_nodes
        report["problems"] = problems
        _print_signatures(report)
        print(f"graph scan: {n_nodes} nodes, {len(problems)} problem(s)")
        for problem in problems:
            print(f"  PROBLEM: {problem}")
        if signature not in report["signatures"]:
            raise CheckError(
                f"no signature {signature!r}; the export has "
                f"{sorted(report['signatures'])}"
            )
        inputs_path, expect_path = _stored_sample(
            path, inputs_path, expect_path, SAMPLE, EXPECTED
        )
        if inputs_path is not None:
            sig = meta_graph.signature_def[signature]
            dtypes = {
                k: _dtype_name(tf, v.dtype) for k, v in sig.inputs.items()
            }
            with open(inputs_path) as f:
                body = json.load(f)
            feeds = decode_body(body, dtypes)
            fetches = {k: v.name for k, v in sig.outputs.items()}
            outputs = sess.run(
                fetches, {sig.inputs[k].name: v for k, v in feeds.items()}
            )
            _show_and_compare(
                signature,
                inputs_path,
                dict(sorted(outputs.items())),
                expect_path,
                rtol,
                atol,
                report,
            )
    if problems:
        raise CheckError(f"{len(problems)} graph problem(s), listed above")
    return report


def _stored_sample(folder, inputs_path, expect_path, sample, expected):
    """`(inputs_path, expect_path)`: without `--inputs`, the export's own
    sample request (`folder/sample`) and, without `--expect`, its expected
    outputs (`folder/expected`), where they exist."""
    if inputs_path is None and os.path.isfile(os.path.join(folder, sample)):
        inputs_path = os.path.join(folder, sample)
        if expect_path is None and os.path.isfile(
            os.path.join(folder, expected)
        ):
            expect_path = os.path.join(folder, expected)
    return inputs_path, expect_path


def _show_and_compare(
    what, inputs_path, outputs, expect_path, rtol, atol, report
):
    """Prints a preview of each output of the run of `what` on
    `inputs_path`, then compares them with `expect_path` (if any)."""
    import numpy as np

    print(f"ran {what} on {inputs_path}:")
    for key, value in outputs.items():
        preview = np.asarray(value).reshape(-1)[:4]
        print(f"  {key}: {value.dtype} {list(value.shape)} {preview}")
    report["ran"] = True
    if expect_path is not None:
        compare(outputs, expect_path, rtol, atol)
        print(f"outputs match {expect_path} (rtol={rtol}, atol={atol})")


def _runtime_file(path):
    """The ONNX, LiteRT or OpenVINO file that `path` is or holds; None for a
    SavedModel."""
    for name in ("model.onnx", "model.tflite", "model.xml"):
        if os.path.isfile(os.path.join(path, name)):
            return os.path.join(path, name)
    if os.path.isfile(path) and path.endswith((".onnx", ".tflite", ".xml")):
        return path
    return None


def run_runtime_check(path, model_file, inputs_path, expect_path, rtol, atol):
    """The check of an ONNX, LiteRT or OpenVINO export on its own runtime:
    lists its inputs and outputs, counts its loops and branches, runs the
    sample inputs and compares the outputs."""

    # `_runtimes` imports neither Keras nor TensorFlow; it is loaded from
    # this file's directory, never from the export's.
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import _runtimes

    fmt = _runtimes.file_format(model_file)
    missing = _runtimes.missing(fmt)
    if missing:
        raise CheckError(
            f"{fmt} needs {', '.join(missing)}: "
            f"{_runtimes.install_command(fmt)}"
        )
    folder = os.path.dirname(model_file)
    metadata = {}
    if os.path.isfile(os.path.join(folder, "keras_attention.json")):
        with open(os.path.join(folder, "keras_attention.json")) as f:
            metadata = json.load(f)
    inputs, outputs = _runtimes.describe(model_file)
    ops = _runtimes.op_types(model_file)
    report = {
        "path": path,
        "format": fmt,
        "inputs": inputs,
        "outputs": outputs,
        "loops": sorted(ops & _runtimes.LOOP_OPS[fmt]),
        "branches": sorted(ops & _runtimes.BRANCH_OPS[fmt]),
    }
    print(f"{fmt}: {model_file}")
    for kind in ("inputs", "outputs"):
        for name, dtype, shape in report[kind]:
            print(f"  {kind[:-1]:6s} {name}: {dtype} {shape}")
    print(
        f"loops: {report['loops'] or 'none'}; branches: "
        f"{report['branches'] or 'none'}"
    )
    inputs_path, expect_path = _stored_sample(
        folder,
        inputs_path,
        expect_path,
        os.path.basename(SAMPLE),
        os.path.basename(EXPECTED),
    )
    if inputs_path is None:
        return report
    names = metadata.get("inputs") or [name for name, _, _ in inputs]
    dtypes = dict(zip(names, (dtype for _, dtype, _ in inputs)))
    with open(inputs_path) as f:
        feeds = decode_body(json.load(f), dtypes)
    output_names = metadata.get("outputs") or [
        f"output_{i}" for i in range(len(outputs))
    ]
    results = _runtimes.run_exported(
        model_file, {n: feeds[n] for n in names}, len(output_names)
    )
    values = dict(zip(output_names, results))
    _show_and_compare(fmt, inputs_path, values, expect_path, rtol, atol, report)
    for name in BLOCKED + ("tensorflow",):
        if name in sys.modules:
            raise CheckError(f"{name} was imported during the check")
    return report


def compare(outputs, expect_path, rtol, atol):
    import numpy as np

    with np.load(expect_path, allow_pickle=False) as expected:
        missing = sorted(set(expected.files) - set(outputs))
        if missing:
            raise CheckError(f"the signature has no outputs {missing}")
        for key in expected.files:
            want, got = expected[key], np.asarray(outputs[key])
            if want.shape != got.shape:
                raise CheckError(
                    f"output {key!r}: shape {list(got.shape)}, expected "
                    f"{list(want.shape)}"
                )
            if want.dtype.kind in "fc":
                ok = np.allclose(got, want, rtol=rtol, atol=atol)
                diff = float(np.max(np.abs(got - want))) if got.size else 0.0
            else:
                ok = np.array_equal(got, want)
                diff = None
            if not ok:
                raise CheckError(
                    f"output {key!r} differs from the expected values "
                    f"(max abs diff {diff}, rtol={rtol}, atol={atol})"
                )


def _print_signatures(report):
    print(f"SavedModel: {report['path']}")
    for name, sig in report["signatures"].items():
        print(f"signature {name} ({sig['method']})")
        for kind in ("inputs", "outputs"):
            for key, info in sig[kind].items():
                shape = "unknown" if info["shape"] is None else info["shape"]
                shape = str(shape).replace("None", "-1")
                print(f"  {kind[:-1]:6s} {key}: {info['dtype']} {shape}")


def main(argv):
    import argparse

    parser = argparse.ArgumentParser(prog="keras_attention.serving check")
    parser.add_argument("path")
    parser.add_argument("--inputs")
    parser.add_argument("--expect")
    parser.add_argument("--signature", default="serving_default")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--atol", type=float, default=1e-5)
    parser.add_argument("--json", dest="json_path")
    args = parser.parse_args(argv)
    try:
        report = run_check(
            os.path.abspath(args.path),
            args.inputs,
            args.expect,
            args.signature,
            args.rtol,
            args.atol,
        )
    except CheckError as e:
        print(f"CHECK FAILED: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # a loader or runtime error from TensorFlow
        print(f"CHECK FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    if args.json_path:
        with open(args.json_path, "w") as f:
            json.dump(report, f, indent=2)
    print("CHECK PASSED")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
