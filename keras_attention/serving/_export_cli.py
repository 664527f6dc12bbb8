"""`python -m keras_attention.serving export MODEL.keras BASE_PATH`: a
`.keras` file to a checked TF Serving export, from any backend.

The export always runs under the TensorFlow backend. Called from another
backend (e.g. `KERAS_BACKEND=jax` on a GPU machine), the command re-runs
itself in a subprocess with `KERAS_BACKEND=tensorflow`; `export_saved_model`
under JAX goes through the same command (`_subprocess.py`).

This module imports no TensorFlow: it must run, and fail clearly, where
TensorFlow is not installed.
"""

import importlib
import importlib.util
import os
import subprocess
import sys
import tempfile
import zipfile

from keras_attention.serving import _subprocess


class ExportFailed(Exception):
    """An export that did not happen; the message names the file."""


def add_parser(sub):
    p = sub.add_parser(
        "export",
        help="export a .keras file for TF Serving, ONNX Runtime, LiteRT or "
        "OpenVINO (under TensorFlow, from any backend), then check it on "
        "its runtime",
    )
    p.add_argument("model", help="a .keras file")
    p.add_argument(
        "base_path",
        help="the model's base path: each version is a directory in it "
        "(TF Serving's layout, for every format)",
    )
    p.add_argument(
        "--format",
        default="tf_saved_model",
        help="tf_saved_model (default), onnx (BASE_PATH/N/model.onnx), "
        "litert (BASE_PATH/N/model.tflite, builtin ops only) or openvino "
        "(BASE_PATH/N/model.xml and model.bin)",
    )
    p.add_argument(
        "--version",
        type=int,
        help="default: one more than the largest version there (1 if none)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --version",
    )
    p.add_argument(
        "--warmup",
        action="append",
        default=[],
        metavar="REQUEST.json",
        help="a REST request body (the format `check --inputs` reads): the "
        "sample request the check runs and, for tf_saved_model, the "
        "warm-up records (repeat for more); other formats keep the first",
    )
    p.add_argument(
        "--import",
        dest="imports",
        action="append",
        default=[],
        metavar="MODULE",
        help="import MODULE before loading (it registers custom layers); "
        "repeatable",
    )
    p.add_argument(
        "--no-output-masks",
        dest="output_masks",
        action="store_false",
        help="don't return Keras masks as <name>_mask outputs",
    )
    return p


def run(args, argv):
    """The `export` command; returns the exit code: 0, 1 when the export or
    its check failed, 2 for bad usage or a missing runtime (nothing
    written)."""
    from keras_attention.serving import _runtimes

    formats = ("tf_saved_model", *_runtimes.FORMATS)
    if args.format not in formats:
        print(
            f"error: --format must be one of {', '.join(formats)}. "
            f"Received: --format {args.format}",
            file=sys.stderr,
        )
        return 2
    if args.format != "tf_saved_model" and _runtimes.missing(args.format):
        print(
            f"error: --format {args.format} needs "
            f"{', '.join(_runtimes.missing(args.format))}, not installed in "
            f"this Python ({sys.executable}); nothing was written. Install "
            f"with:\n    {_runtimes.install_command(args.format)}",
            file=sys.stderr,
        )
        return 2
    if importlib.util.find_spec("tensorflow") is None:
        message = _subprocess.tensorflow_missing_message(
            args.model, args.base_path
        )
        print(f"error: {message}", file=sys.stderr)
        return 2
    import keras

    if keras.backend.backend() != "tensorflow":
        # Re-run under TensorFlow, with the caller's import path.
        command = [sys.executable, "-m", "keras_attention.serving", *argv]
        env = _subprocess.tensorflow_env()
        return subprocess.run(command, env=env).returncode
    try:
        path = export_file(
            args.model,
            args.base_path,
            version=args.version,
            overwrite=args.overwrite,
            warmup=args.warmup,
            imports=args.imports,
            output_masks=args.output_masks,
            fmt=args.format,
        )
    except ExportFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(path)
    return 0


def _check_archive(model):
    if not os.path.isfile(model):
        raise ExportFailed(f"{model}: no such file")
    if not zipfile.is_zipfile(model):
        raise ExportFailed(
            f"{model}: not a .keras archive (not a zip file; truncated or "
            "another format)"
        )
    try:
        with zipfile.ZipFile(model) as archive:
            names = set(archive.namelist())
            broken = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ExportFailed(f"{model}: a damaged .keras archive ({e})") from e
    if broken is not None:
        raise ExportFailed(
            f"{model}: a damaged .keras archive ({broken} fails its CRC)"
        )
    if "config.json" not in names:
        raise ExportFailed(
            f"{model}: not a .keras archive (no config.json inside)"
        )


def _check_writable(base_path):
    """The nearest existing ancestor of `base_path` must be a directory we
    can create files in (probed by creating one)."""
    parent = os.path.dirname(os.path.abspath(base_path))
    existing = parent
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ExportFailed(
            f"{base_path}: not writable ({existing} is a file, not a directory)"
        )
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as e:
        raise ExportFailed(f"{base_path}: not writable ({e})") from e
    if os.path.exists(base_path) and not os.path.isdir(base_path):
        raise ExportFailed(f"{base_path}: exists and is not a directory")


def _read_warmup(paths):
    from keras_attention.serving import _wire

    requests = []
    for path in paths:
        try:
            requests.append(_wire.load_request(path))
        except Exception as e:
            raise ExportFailed(f"{path}: not a request body ({e})") from e
    return requests or None


def export_file(
    model,
    base_path,
    version=None,
    overwrite=False,
    warmup=(),
    imports=(),
    output_masks=True,
    fmt="tf_saved_model",
):
    """Exports the `.keras` file `model` to `base_path` and checks it (under
    the TensorFlow backend); returns the version path. The check runs before
    the export is moved into `base_path`, so only a checked version appears
    there. Raises `ExportFailed` with `base_path` as it was (with
    `overwrite`, the old version stays)."""
    import keras

    from keras_attention.serving import _export

    _check_archive(model)
    _check_writable(base_path)
    if version is not None and not overwrite:
        target = os.path.join(base_path, str(version))
        if os.path.exists(target):
            raise ExportFailed(
                f"{target}: version {version} exists (pass --overwrite to "
                f"replace it); {model} was not exported"
            )
    requests = _read_warmup(warmup)
    for name in imports:
        try:
            importlib.import_module(name)
        except Exception as e:
            raise ExportFailed(
                f"--import {name}: cannot be imported ({e}); {model} was not "
                "exported"
            ) from e
    try:
        loaded = keras.saving.load_model(model, compile=False, safe_mode=True)
    except Exception as e:
        raise ExportFailed(
            f"{model}: cannot be loaded in safe mode: {type(e).__name__}: "
            f"{e}".rstrip()
        ) from e
    from keras_attention.serving import _formats

    try:
        if fmt != "tf_saved_model":
            return _formats.export_model(
                loaded,
                base_path,
                fmt,
                version,
                sample_inputs=requests,
                overwrite=overwrite,
            )
        return _export.export_saved_model(
            loaded,
            base_path,
            version=version,
            warmup_inputs=requests,
            overwrite=overwrite,
            output_masks=output_masks,
            check=True,
        )
    except _export.CheckFailed as e:
        raise ExportFailed(f"{model}: {e}") from e
    except Exception as e:
        raise ExportFailed(
            f"{model}: export failed: {type(e).__name__}: {e}"
        ) from e
