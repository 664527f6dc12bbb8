"""Export from another backend through a TensorFlow subprocess.

`export_saved_model` under JAX (or any backend but TensorFlow) saves the
model to a temporary `.keras` and runs `python -m keras_attention.serving
export` on it with `KERAS_BACKEND=tensorflow`. Nothing of JAX crosses over:
the TensorFlow process loads the file (in Keras' safe mode) and traces the
model with TensorFlow ops, so the export has no `XlaCallModule` tied to the
platform it came from.

This module imports no TensorFlow: it must run, and fail clearly, where
TensorFlow is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile

COMMAND = "python -m keras_attention.serving export"


def tensorflow_missing_message(model="MODEL.keras", base_path="BASE_PATH"):
    return (
        "SavedModel export needs TensorFlow, which is not installed in this "
        f"Python ({sys.executable}). Copy {model} to a machine with "
        "TensorFlow (`pip install keras-attention-layers[tensorflow-cpu,"
        "serving]`) and run there:\n"
        f"    {COMMAND} {model} {base_path}"
    )


def tensorflow_env(first=None):
    """This process's environment under the TensorFlow backend, with its
    import path (and `first` before it)."""
    paths = [p for p in [first, *sys.path] if p and os.path.isdir(p)]
    env = dict(os.environ, KERAS_BACKEND="tensorflow")
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def export_through_subprocess(
    model,
    base_path,
    version,
    warmup_inputs,
    overwrite,
    output_masks,
    fmt="tf_saved_model",
):
    """`export_saved_model` from a backend other than TensorFlow: the model
    goes to a temporary `.keras`, the warm-up requests to REST bodies, and
    `export` runs on them under TensorFlow. Returns the version path (the
    last line it prints); raises `RuntimeError` with its exit code and the
    end of its stderr when it fails or prints none."""
    if importlib.util.find_spec("tensorflow") is None:
        raise RuntimeError(tensorflow_missing_message())
    from keras_attention.serving import _wire

    modules = {type(layer).__module__ for layer in model._flatten_layers()}
    script_dir = None
    if "__main__" in modules:
        # Classes defined in a script: the TensorFlow process imports the
        # script as a module (its `if __name__ == "__main__"` part doesn't
        # run), from the script's directory.
        script = getattr(sys.modules["__main__"], "__file__", None)
        if script is None or not script.endswith(".py"):
            in_main = sorted(
                type(layer).__name__
                for layer in model._flatten_layers()
                if type(layer).__module__ == "__main__"
            )
            raise ValueError(
                "Argument `model` uses classes defined in `__main__` "
                f"({', '.join(sorted(set(in_main)))}) of an interactive "
                "session, which the TensorFlow export process cannot "
                "import: move them to an importable module (and register "
                "them with `keras.saving.register_keras_serializable`). "
                f"Received: a model with {len(in_main)} such layer(s)"
            )
        modules.discard("__main__")
        modules.add(os.path.splitext(os.path.basename(script))[0])
        script_dir = os.path.dirname(os.path.abspath(script))
    imports = sorted(
        m for m in modules if not m.startswith(("keras.", "keras_attention."))
    )
    requests = warmup_inputs
    if isinstance(requests, dict):
        requests = [requests]
    with tempfile.TemporaryDirectory() as scratch:
        path = os.path.join(scratch, "model.keras")
        model.save(path)
        argv = ["export", path, os.fspath(base_path)]
        if version is not None:
            argv += ["--version", str(version)]
        if overwrite:
            argv.append("--overwrite")
        if not output_masks:
            argv.append("--no-output-masks")
        if fmt != "tf_saved_model":
            argv += ["--format", fmt]
        for i, request in enumerate(requests or []):
            body = os.path.join(scratch, f"warmup{i}.json")
            with open(body, "w") as f:
                json.dump(_wire.rest_body(request), f)
            argv += ["--warmup", body]
        for name in imports:
            argv += ["--import", name]
        result = subprocess.run(
            [sys.executable, "-m", "keras_attention.serving", *argv],
            env=tensorflow_env(script_dir),
            capture_output=True,
            text=True,
        )
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        what = "failed" if result.returncode != 0 else "printed no version path"
        stderr = result.stderr.strip()[-4000:] or "(nothing on stderr)"
        raise RuntimeError(
            f"The export under the TensorFlow backend {what} (exit code "
            f"{result.returncode}). Its stderr ends:\n{stderr}"
        )
    return lines[-1]
