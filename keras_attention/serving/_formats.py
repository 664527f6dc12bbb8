"""`export_model`: versioned, atomic, checked exports in every format Keras
exports: `"tf_saved_model"`, `"onnx"`, `"litert"` and `"openvino"`."""

import json
import os
import re
import shutil
import uuid

import keras
import numpy as np

from keras_attention.serving import _check
from keras_attention.serving import _export
from keras_attention.serving import _runtimes
from keras_attention.serving import _subprocess
from keras_attention.serving import _wire

FORMATS = ("tf_saved_model", *_runtimes.FORMATS)
# The tolerance of the check against the Keras model: other runtimes fuse
# and reorder float32 arithmetic differently from TensorFlow.
RTOL = ATOL = 1e-4
# TF's MLIR converter names the ops LiteRT's builtins lack this way.
_NOT_BUILTIN = re.compile(
    r"'(tf\.\w+)' op is neither a custom op nor a flex op"
)


class RuntimeMissing(ImportError):
    """A format whose exporter or runtime is not installed."""


def _check_format(fmt):
    if fmt not in FORMATS:
        raise ValueError(
            f"Argument `format` must be one of {', '.join(FORMATS)}. "
            f"Received: format={fmt!r}"
        )
    if fmt == "tf_saved_model":
        return
    missing = _runtimes.missing(fmt)
    if missing:
        raise RuntimeMissing(
            f"The {fmt} export needs {', '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed. "
            f"Install with:\n    {_runtimes.install_command(fmt)}"
        )


def export_model(
    model,
    base_path,
    format="tf_saved_model",
    version=None,
    sample_inputs=None,
    *,
    overwrite=False,
    check=True,
):
    """Exports a Keras model as one version of a model in `format`, checked
    on the format's own runtime.

    The export goes through Keras' own `model.export(path, format=format)`
    under the TensorFlow backend. Each version is a directory
    `base_path/<version>/` that holds the exported file and, beside it, the
    sample request (`sample_request.json`), the Keras model's outputs for it
    (`expected_outputs.npz`) and `keras_attention.json` (format, input and
    output names, versions):

    | format | file | runtime of the check |
    |---|---|---|
    | `"tf_saved_model"` | a SavedModel, as `export_saved_model` | TF |
    | `"onnx"` | `model.onnx` | onnxruntime, CPU provider |
    | `"litert"` | `model.tflite` | LiteRT's `Interpreter`, builtin ops only |
    | `"openvino"` | `model.xml` and `model.bin` | OpenVINO CPU, f32 |

    LiteRT is converted with builtin ops only (no `SELECT_TF_OPS`), so the
    file runs on an interpreter without the Flex delegate, as on a phone.
    Batch size and every dimension the model leaves `None` stay dynamic.

    The version is written into a temporary directory beside `base_path`,
    checked there, then renamed into place, as `export_saved_model` does:
    a failed export or check leaves `base_path` as it was.

    Args:
        model: A built `keras.Model` with symbolic inputs (functional or
            Sequential). Under another backend it is exported by a
            TensorFlow subprocess, as `export_saved_model` does.
        base_path: The model's base directory.
        format: `"tf_saved_model"` (default), `"onnx"`, `"litert"` or
            `"openvino"`.
        version: Integer version; `None` (default) takes one more than the
            largest under `base_path`.
        sample_inputs: Optional dict `{input_name: array}` (or a list of
            them: the SavedModel's warm-up requests; the other formats use
            the first). Defaults to inputs of batch 2 and length 3 (ones for
            integer inputs, seeded normal values for float inputs).
        overwrite: Whether an existing `version` may be replaced.
        check: Whether to run the sample on the format's runtime and compare
            it with the Keras model (`rtol` and `atol` 1e-4; 1e-5 for
            SavedModel) before the version is moved into place. Defaults to
            `True`.

    Returns:
        The path of the new version directory.

    Raises:
        ValueError: An unknown `format`, or bad `sample_inputs`.
        RuntimeMissing: The format's exporter or runtime is not installed;
            the message holds the command that installs it. Nothing is
            written.
        CheckFailed: The export failed to convert, or its runtime's outputs
            differ from the Keras model's. Nothing is written.

    Example:

    >>> import tempfile
    >>> from keras_attention import serving
    >>> inputs = keras.Input((None, 4), name="features")
    >>> x = keras_attention.MultiHeadAttention(2, 4)(inputs, inputs)
    >>> model = keras.Model(inputs, keras.layers.Dense(1, name="score")(x))
    >>> path = serving.export_model(model, tempfile.mkdtemp(), "onnx")
    >>> sorted(os.listdir(path))
    ['expected_outputs.npz', 'keras_attention.json', 'model.onnx', \
'sample_request.json']
    """
    _check_format(format)
    if format == "tf_saved_model":
        if sample_inputs is None and keras.backend.backend() == "tensorflow":
            sample_inputs = _default_sample(_export.input_specs(model, None))
        return _export.export_saved_model(
            model,
            base_path,
            version,
            warmup_inputs=sample_inputs,
            overwrite=overwrite,
            check=check,
        )
    if keras.backend.backend() != "tensorflow":
        return _subprocess.export_through_subprocess(
            model, base_path, version, sample_inputs, overwrite, True, format
        )
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model={type(model).__name__}"
        )
    base_path = os.path.abspath(os.fspath(base_path))
    specs = _export.input_specs(model, None)
    if sample_inputs is None:
        sample_inputs = _default_sample(specs)
    sample = _export.check_warmup(sample_inputs, specs)[0]
    outputs = keras.tree.flatten(model(_structured(model, sample)))
    names = _export.output_names(model)
    if len(names) != len(outputs):
        names = [f"output_{i}" for i in range(len(outputs))]
    expected = {
        n: keras.ops.convert_to_numpy(x) for n, x in zip(names, outputs)
    }

    parent = os.path.dirname(base_path)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(base_path)}.tmp-"
    _export.remove_stale_temporaries(parent, prefix)
    tmp = os.path.join(parent, f"{prefix}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        os.makedirs(tmp)
        path = os.path.join(tmp, _runtimes.FORMATS[format][0])
        _convert(model, path, format, base_path)
        if format == "openvino":
            _drop_dangling_results(path, len(names))
        with open(os.path.join(tmp, "sample_request.json"), "w") as f:
            json.dump(_wire.rest_body(sample, "inputs"), f)
        np.savez(os.path.join(tmp, "expected_outputs.npz"), **expected)
        metadata = {
            "exported_by": "keras_attention.serving.export_model",
            "format": format,
            "file": _runtimes.FORMATS[format][0],
            "model": model.name,
            "inputs": list(specs),
            "outputs": names,
            "versions": _runtimes.versions(format),
        }
        with open(os.path.join(tmp, "keras_attention.json"), "w") as f:
            json.dump(metadata, f, indent=2)
        if check:
            result = _check.check(
                tmp, rtol=RTOL, atol=ATOL, capture=True, timeout=600
            )
            print(result.stdout, end="")
            if result.returncode != 0:
                raise _export.CheckFailed(
                    base_path, result.returncode, result.stderr
                )
        return _export.move_into_place(tmp, base_path, version, overwrite)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _structured(model, sample):
    values = list(sample.values())
    if isinstance(getattr(model, "_inputs_struct", None), dict):
        return dict(sample)
    return values[0] if len(values) == 1 else values


def _default_sample(specs):
    """Batch 2, every unknown size 3: ones for integers, True for booleans,
    seeded normal values for floats."""
    rng = np.random.default_rng(0)
    sample = {}
    for name, spec in specs.items():
        shape = [3 if d is None else d for d in spec.shape.as_list()]
        shape[0] = 2
        dtype = spec.dtype.as_numpy_dtype
        if spec.dtype.is_floating:
            sample[name] = rng.normal(size=shape).astype(dtype)
        else:
            sample[name] = np.ones(shape, dtype)
    return sample


def _convert(model, path, fmt, base_path):
    """`model.export(path, format=fmt)`; a converter's failure becomes
    `CheckFailed` naming the format (and, for LiteRT, the ops it lacks)."""
    options = {}
    if fmt == "litert":
        import tensorflow as tf

        options["target_spec"] = {
            "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]
        }
    try:
        model.export(path, format=fmt, verbose=False, **options)
    except Exception as e:
        message = str(e)
        ops = sorted(set(_NOT_BUILTIN.findall(message)))
        if ops:
            reason = (
                "it needs TensorFlow ops that LiteRT's builtin ops lack "
                f"({', '.join(ops)}), which only the Flex delegate runs"
            )
        else:
            lines = [line for line in message.splitlines() if line.strip()]
            reason = f"{type(e).__name__}: {' '.join(lines[:3])[:1000]}"
        raise _export.CheckFailed(
            base_path,
            1,
            f"The {fmt} converter failed: {reason}",
        ) from e


def _drop_dangling_results(path, num_outputs):
    """OpenVINO's TensorFlow frontend makes a result of every tensor that
    nothing consumes (shape arithmetic the graph never reads), after the
    model's outputs: only the model's outputs are kept."""
    import openvino

    model = openvino.Core().read_model(path)
    results = model.get_results()
    if len(results) <= num_outputs:
        return
    for result in results[num_outputs:]:
        model.remove_result(result)
    stem = path[: -len(".xml")]
    openvino.save_model(model, f"{stem}.pruned.xml", compress_to_fp16=False)
    del model
    for suffix in (".xml", ".bin"):
        os.replace(f"{stem}.pruned{suffix}", f"{stem}{suffix}")
