"""`export_saved_model`: versioned, atomic SavedModel exports for TF Serving."""

import datetime
import json
import os
import re
import shutil
import sys
import uuid

import keras
import numpy as np
import tensorflow as tf

from keras_attention import _validation
from keras_attention.serving import _check
from keras_attention.serving import _subprocess
from keras_attention.serving import _wire

# TF Serving's file-system source loads every all-digit directory under the
# model's base path as a version; everything else there is ignored.
_VERSION_DIR = re.compile(r"^[0-9]+$")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.\-/]*$")
METADATA_FILE = "keras_attention.json"
SAMPLE_FILE = "sample_request.json"
EXPECTED_FILE = "expected_outputs.npz"
WARMUP_FILE = "tf_serving_warmup_requests"
MAX_WARMUP_RECORDS = 1000  # TF Serving refuses more


class CheckFailed(RuntimeError):
    """An export that failed `check` and was not moved into `base_path`.

    `returncode` is the checker's exit code; `stderr` its message (the
    report it printed on stdout says which signature or op failed)."""

    def __init__(self, base_path, returncode, stderr):
        self.base_path = base_path
        self.returncode = returncode
        self.stderr = stderr
        tail = stderr.strip()[-2000:] or "(the checker wrote nothing)"
        super().__init__(
            f"The export failed its check (exit code {returncode}); "
            f"nothing was written to {base_path}. The checker said:\n{tail}"
        )


def export_saved_model(
    model,
    base_path,
    version=None,
    signatures=None,
    warmup_inputs=None,
    *,
    overwrite=False,
    input_signature=None,
    output_masks=True,
    check=False,
):
    """Exports a Keras model as one version of a TF Serving model.

    The export is a pure TensorFlow graph: TF Serving (C++) loads it with no
    Python code of ours. It is written into a temporary directory beside
    `base_path` and, with `check=True`, checked there; it is renamed into
    `base_path/<version>/` only once it is complete (and has passed), so a
    server that polls `base_path` never sees a partial or failing version,
    and an exception (or a crash) before that rename leaves `base_path` as
    it was.

    With `overwrite=True`, the old version directory is renamed out of
    `base_path` (beside it, under a hidden temporary name), then the new
    one is renamed in, and the old one deleted. Between those two renames
    `base_path/<version>` does not exist: a server that polls at that
    instant sees the version gone. Otherwise it sees the old version or
    the new one, each complete. If the second rename fails, the old
    directory is renamed back; a crash between the two leaves the version
    missing, and the next export to `base_path` deletes the old directory
    with the other leftovers. TF Serving tracks versions by number: a
    server that loaded the old version and never saw it gone keeps serving
    it; export a new version to roll out a new model.

    The `serving_default` signature takes the model's inputs by their
    `keras.Input` names, with a dynamic batch size (and every dimension the
    model leaves as `None` dynamic too), and returns a dict named after the
    model's output layers (`{"probabilities": ...}`, never `output_0`).
    Keras masks are computed inside the graph, so padded batches give the
    same outputs as in Keras; an output that carries a Keras mask also
    returns it as `<name>_mask`, because Keras masks are otherwise lost
    when an export is reloaded (keras-team/keras#21133).

    Args:
        model: A built `keras.Model` (functional or Sequential). A
            subclassed model needs `input_signature`. Under another backend
            (JAX, PyTorch), the model is saved to a temporary `.keras` file and
            exported by `python -m keras_attention.serving export` in a
            TensorFlow subprocess (TensorFlow must be installed; its custom
            classes must be importable and registered); `signatures` and
            `input_signature` are then refused.
        base_path: The model's base directory, as given to TF Serving's
            `--model_base_path` (or `base_path` in a model config).
        version: Integer version, 0 to 2**63 - 1 (TF Serving's range). `None`
            (default) takes one more than
            the largest version under `base_path` (1 if there is none).
        signatures: Optional dict of extra endpoints, `{name: fn}`. Each `fn`
            is a `tf.function` with an `input_signature` whose `TensorSpec`s
            are named (the request's input names), and returns a dict of
            named tensors. A `"serving_default"` entry replaces the default
            signature. Use these for raw inputs, e.g. encoded image bytes
            decoded inside the graph.
        warmup_inputs: Optional dict `{input_name: array}` (one request) or a
            list of them, for `serving_default`. They are written as
            `assets.extra/tf_serving_warmup_requests` (TF Serving replays them
            when it loads the version), together with
            `assets.extra/sample_request.json` and the model's outputs for
            the first request in `assets.extra/expected_outputs.npz`, which
            `python -m keras_attention.serving check` uses. Needs
            `tensorflow-serving-api` (install it with `--no-deps`).
        overwrite: Whether an existing `version` may be replaced. Defaults to
            `False`: exporting an existing version raises `FileExistsError`.
        input_signature: Optional dict `{input_name: keras.InputSpec or
            tf.TensorSpec}`, in the order the model takes its inputs. By
            default it comes from `model.inputs`.
        output_masks: Whether outputs that carry a Keras mask also return it
            as `<name>_mask`. Defaults to `True`.
        check: Whether to run `keras_attention.serving.check` on the export
            in its temporary directory (printing its report) before it is
            moved into place. An export that fails it raises `CheckFailed`
            and leaves `base_path` as it was. Defaults to `False`. From
            another backend the export is always checked (the `export`
            command checks it).

    Returns:
        The path of the new version directory.

    Example:

    >>> import tempfile
    >>> from keras_attention import serving
    >>> inputs = keras.Input((None, 4), name="features")
    >>> x = keras_attention.MultiHeadAttention(2, 4)(inputs, inputs)
    >>> outputs = keras.layers.Dense(1, name="score")(x)
    >>> model = keras.Model(inputs, outputs)
    >>> base = tempfile.mkdtemp()
    >>> path = serving.export_saved_model(model, base)
    >>> os.path.basename(path)
    '1'
    >>> os.path.basename(serving.export_saved_model(model, base))
    '2'
    """
    if not isinstance(model, keras.Model):
        raise ValueError(
            "Argument `model` must be a `keras.Model`. "
            f"Received: model={type(model).__name__}"
        )
    if keras.backend.backend() != "tensorflow":
        for name, value in (
            ("signatures", signatures),
            ("input_signature", input_signature),
        ):
            if value is not None:
                raise ValueError(
                    f"Argument `{name}` holds Python functions or specs, "
                    "which can't cross to the TensorFlow process that "
                    f"exports a {keras.backend.backend()} model. Export from "
                    "a KERAS_BACKEND=tensorflow process to use it. "
                    f"Received: {name}={value!r}"
                )
        return _subprocess.export_through_subprocess(
            model, base_path, version, warmup_inputs, overwrite, output_masks
        )
    if not isinstance(base_path, (str, os.PathLike)) or not str(base_path):
        raise ValueError(
            "Argument `base_path` must be a non-empty path. "
            f"Received: base_path={base_path!r}"
        )
    base_path = os.path.abspath(os.fspath(base_path))
    if os.path.exists(base_path) and not os.path.isdir(base_path):
        raise ValueError(
            "Argument `base_path` must be a directory. "
            f"Received: base_path={base_path!r} (a file)"
        )
    if version is not None:
        _validation.check_version(version)
    for name, value in (("overwrite", overwrite), ("check", check)):
        if not isinstance(value, bool):
            raise ValueError(
                f"Argument `{name}` must be a bool. Received: {name}={value!r}"
            )
    extra = _check_signatures(signatures)
    if "serving_default" in extra:  # replaced: its own inputs
        specs = {
            s.name: s
            for s in tf.nest.flatten(extra["serving_default"].input_signature)
        }
    else:
        specs = input_specs(model, input_signature)
    requests = check_warmup(warmup_inputs, specs)

    archive = keras.export.ExportArchive()
    archive.track(model)  # its lookup tables (TextVectorization, ...)
    # `track` also lists the model's Keras variables, which the SavedModel
    # would then store a second time next to the endpoints' own variables
    # (`_all_variables`): the variables/ files would be twice the model.
    for name in ("variables", "trainable_variables", "non_trainable_variables"):
        setattr(archive._tf_trackable, name, [])
    endpoints = {}
    if "serving_default" not in extra:
        endpoints["serving_default"] = archive.add_endpoint(
            "serving_default",
            _default_endpoint(model, specs, output_masks),
            list(specs.values()),
        )
    for name, fn in extra.items():
        endpoints[name] = archive.add_endpoint(
            name, fn, list(fn.input_signature)
        )
    archive_outputs = _check_outputs(endpoints)
    expected = None
    if requests:
        default = endpoints["serving_default"]
        args = [tf.constant(requests[0][name]) for name in specs]
        expected = {k: _saveable(v.numpy()) for k, v in default(*args).items()}

    parent = os.path.dirname(base_path)
    os.makedirs(parent, exist_ok=True)
    prefix = f".{os.path.basename(base_path)}.tmp-"
    remove_stale_temporaries(parent, prefix)
    tmp = os.path.join(parent, f"{prefix}{os.getpid()}-{uuid.uuid4().hex}")
    try:
        archive.write_out(tmp, verbose=False)
        _write_assets_extra(
            tmp,
            model,
            archive_outputs,
            requests,
            expected,
            os.path.basename(base_path),
        )
        if check:
            _check_staged(tmp, base_path)
        return move_into_place(tmp, base_path, version, overwrite)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)


def _check_staged(tmp, base_path):
    """`check` on the export in its temporary directory; raises
    `CheckFailed`. Nothing in the export names its own directory (the
    SavedModel finds its assets relative to itself), so the rename that
    follows changes nothing the check saw."""
    result = _check.check(tmp, capture=True)
    sys.stdout.write(result.stdout)  # the report, as `check` prints it
    sys.stdout.flush()
    if result.returncode != 0:
        raise CheckFailed(base_path, result.returncode, result.stderr)


def remove_stale_temporaries(parent, prefix):
    """Removes what exports killed mid-write left (their process is gone)."""
    for name in os.listdir(parent):
        if not name.startswith(prefix):
            continue
        try:
            pid = int(name[len(prefix) :].split("-", 1)[0])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(os.path.join(parent, name), ignore_errors=True)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# -- versions ---------------------------------------------------------------


def existing_versions(base_path):
    """The integer versions under `base_path`, sorted."""
    if not os.path.isdir(base_path):
        return []
    return sorted(
        int(name)
        for name in os.listdir(base_path)
        if _VERSION_DIR.match(name)
        and os.path.isdir(os.path.join(base_path, name))
    )


def move_into_place(tmp, base_path, version, overwrite):
    """Renames the finished export to `base_path/<version>` (atomic)."""
    os.makedirs(base_path, exist_ok=True)
    pick_next = version is None
    for _ in range(100):
        if pick_next:
            version = max(existing_versions(base_path), default=0) + 1
        target = os.path.join(base_path, str(version))
        if os.path.exists(target):
            if pick_next:
                continue  # another exporter took it: take the next one
            if not overwrite:
                raise FileExistsError(
                    f"Version {version} already exists at {target}. Pass "
                    "`overwrite=True` to replace it, or `version=None` to "
                    "export the next version."
                )
            return _replace(tmp, target)
        try:
            os.rename(tmp, target)
        except OSError:
            if pick_next and os.path.exists(target):
                continue  # lost a race for this version number
            raise
        return target
    raise RuntimeError(f"Could not pick a free version under {base_path}")


def _replace(tmp, target):
    """Swaps `target` for `tmp`; the old version is restored on failure."""
    old = f"{tmp}.old"
    os.rename(target, old)
    try:
        os.rename(tmp, target)
    except BaseException:
        os.rename(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
    return target


# -- signatures -------------------------------------------------------------
def input_specs(model, input_signature):
    """`{name: tf.TensorSpec}` in the model's input order."""
    if input_signature is not None:
        if not isinstance(input_signature, dict) or not input_signature:
            raise ValueError(
                "Argument `input_signature` must be a non-empty dict "
                "{input_name: keras.InputSpec or tf.TensorSpec}. "
                f"Received: input_signature={input_signature!r}"
            )
        specs = {}
        for name, spec in input_signature.items():
            _check_name("input_signature", name)
            shape = getattr(spec, "shape", None)
            dtype = getattr(spec, "dtype", "missing") or keras.config.floatx()
            if shape is None or dtype == "missing":
                raise ValueError(
                    "Each value of `input_signature` must have a shape and a "
                    f"dtype. Received: input_signature[{name!r}]={spec!r}"
                )
            specs[name] = tf.TensorSpec(
                tuple(shape), tf.as_dtype(dtype), name=name
            )
        return specs
    inputs = getattr(model, "inputs", None)
    if not inputs:
        raise ValueError(
            "The model has no symbolic inputs (a subclassed model, or one "
            "that was never built). Pass `input_signature={name: "
            "keras.InputSpec(shape, dtype)}`."
        )
    specs = {}
    for i, x in enumerate(inputs):
        name = getattr(x, "name", None) or f"input_{i}"
        _check_name("model input", name)
        if name in specs:
            raise ValueError(
                f"The model has two inputs named {name!r}; give each "
                "`keras.Input` a unique `name`."
            )
        shape = (None,) + tuple(x.shape[1:])  # dynamic batch size
        specs[name] = tf.TensorSpec(shape, tf.as_dtype(x.dtype), name=name)
    return specs


def _check_name(what, name):
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(
            f"Invalid {what} name for a serving signature: {name!r}. Names "
            "must start with a letter or underscore and contain letters, "
            "digits, '_', '.', '-' or '/'."
        )


def output_names(model):
    """Meaningful output names: the output layers' names."""
    names = list(getattr(model, "output_names", None) or [])
    outputs = model.outputs if getattr(model, "outputs", None) else None
    if outputs is not None and len(names) != len(outputs):
        names = [f"output_{i}" for i in range(len(outputs))]
    return names


def _default_endpoint(model, specs, output_masks):
    names = list(specs)
    out_names = output_names(model) if hasattr(model, "outputs") else []

    def serve(*args):
        if len(names) == 1:
            structured = args[0]
        elif isinstance(getattr(model, "_inputs_struct", None), dict):
            structured = dict(zip(names, args))
        else:
            structured = list(args)
        outputs = model(structured, training=False)
        if isinstance(outputs, dict):
            named = dict(outputs)
        else:
            flat = tf.nest.flatten(outputs)
            keys = out_names if len(out_names) == len(flat) else None
            if keys is None:
                keys = ["outputs"] if len(flat) == 1 else []
                keys += [f"outputs_{i}" for i in range(len(keys), len(flat))]
            named = dict(zip(keys, flat))
        result = {}
        for key, value in named.items():
            result[key] = value
            mask = getattr(value, "_keras_mask", None)
            if output_masks and mask is not None:
                result[f"{key}_mask"] = mask
        return result

    return serve


def _check_signatures(signatures):
    if signatures is None:
        return {}
    if not isinstance(signatures, dict):
        raise ValueError(
            "Argument `signatures` must be a dict {name: tf.function}. "
            f"Received: signatures={type(signatures).__name__}"
        )
    for name, fn in signatures.items():
        _check_name("signature", name)
        spec = getattr(fn, "input_signature", None)
        if spec is None:
            raise ValueError(
                f"Signature {name!r} must be a `tf.function` with an "
                "`input_signature` (named `tf.TensorSpec`s). "
                f"Received: {fn!r}"
            )
        for s in tf.nest.flatten(spec):
            if not getattr(s, "name", None):
                raise ValueError(
                    f"Signature {name!r}: every `tf.TensorSpec` in its "
                    "`input_signature` needs a `name` (the request's input "
                    f"name). Received: {s!r}"
                )
    return dict(signatures)


def _check_outputs(endpoints):
    """Every endpoint returns a non-empty dict of named tensors."""
    outputs = {}
    for name, fn in endpoints.items():
        concrete = fn.get_concrete_function()
        structured = concrete.structured_outputs
        if not isinstance(structured, dict) or not structured:
            raise ValueError(
                f"Signature {name!r} must return a non-empty dict of named "
                f"tensors, e.g. {{'probabilities': ...}}. Received: "
                f"{type(structured).__name__}"
            )
        outputs[name] = {
            key: {"dtype": spec.dtype.name, "shape": _shape(spec.shape)}
            for key, spec in structured.items()
        }
        outputs[name]["__inputs__"] = {
            spec.name: {"dtype": spec.dtype.name, "shape": _shape(spec.shape)}
            for spec in tf.nest.flatten(concrete.structured_input_signature)
        }
    return outputs


def _shape(shape):
    return None if shape.rank is None else [d for d in shape.as_list()]


# -- warm-up and metadata ----------------------------------------------------
def check_warmup(warmup_inputs, specs):
    """A list of `{name: np.ndarray}` requests matching `specs`."""
    if warmup_inputs is None:
        return []
    requests = (
        [warmup_inputs] if isinstance(warmup_inputs, dict) else warmup_inputs
    )
    if not isinstance(requests, (list, tuple)) or not requests:
        raise ValueError(
            "Argument `warmup_inputs` must be a dict {input_name: array} or "
            "a non-empty list of them. "
            f"Received: warmup_inputs={type(warmup_inputs).__name__}"
        )
    if len(requests) > MAX_WARMUP_RECORDS:
        raise ValueError(
            f"Argument `warmup_inputs` may hold at most {MAX_WARMUP_RECORDS} "
            f"requests (TF Serving's limit). Received: {len(requests)}"
        )
    checked = []
    for i, request in enumerate(requests):
        if not isinstance(request, dict) or set(request) != set(specs):
            got = sorted(request) if isinstance(request, dict) else request
            raise ValueError(
                f"Each warm-up request must be a dict with the inputs "
                f"{sorted(specs)}. Received: warmup_inputs[{i}] keys={got!r}"
            )
        arrays = {}
        for name, spec in specs.items():
            array = np.asarray(request[name])
            if array.dtype == object or array.dtype.kind in "SU":
                array = array.astype(object)
            else:
                array = array.astype(spec.dtype.as_numpy_dtype)
            if not spec.shape.is_compatible_with(array.shape):
                raise ValueError(
                    f"Warm-up input {name!r} must have shape compatible with "
                    f"{_shape(spec.shape)}. Received: shape={array.shape} "
                    f"(warmup_inputs[{i}])"
                )
            arrays[name] = array
        checked.append(arrays)
    return checked


def _saveable(array):
    """String outputs as fixed-width bytes, which `np.load` reads back with
    `allow_pickle=False` (an object array would need pickle)."""
    return array.astype(bytes) if array.dtype == object else array


def _write_assets_extra(path, model, outputs, requests, expected, name):
    extra = os.path.join(path, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    import keras_attention

    metadata = {
        "exported_by": "keras_attention.serving.export_saved_model",
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(),
        "model": model.name,
        "versions": {
            "tensorflow": tf.__version__,
            "keras": keras.__version__,
            "keras_attention": keras_attention.__version__,
        },
        "signatures": outputs,
    }
    with open(os.path.join(extra, METADATA_FILE), "w") as f:
        json.dump(metadata, f, indent=2, sort_keys=True)
    if not requests:
        return
    records = [
        _wire.prediction_log(name, "serving_default", request)
        for request in requests
    ]
    with tf.io.TFRecordWriter(os.path.join(extra, WARMUP_FILE)) as writer:
        for record in records:
            writer.write(record.SerializeToString())
    with open(os.path.join(extra, SAMPLE_FILE), "w") as f:
        json.dump(_wire.rest_body(requests[0], "inputs"), f)
    np.savez(os.path.join(extra, EXPECTED_FILE), **expected)
