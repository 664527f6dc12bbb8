"""`check`: runs the SavedModel checker in an isolated subprocess."""

import os
import subprocess
import sys
import tempfile

from keras_attention.serving import _check_worker


def check(
    path,
    inputs=None,
    expect=None,
    signature="serving_default",
    rtol=1e-5,
    atol=1e-5,
    report=None,
    capture=False,
    timeout=600,
):
    """Checks an export the way TF Serving loads it, with no Keras around.

    It runs a checker script in a subprocess where neither `keras` nor
    `keras_attention` can be imported. The script loads `path` with the
    SavedModel loader and the `serve` tag, lists the signatures with their
    dtypes and shapes, scans every graph and function for Python ops
    (`PyFunc`, `EagerPyFunc`), custom ops and functions that must be
    compiled with XLA, runs the sample inputs through the signature's
    tensors by name and compares the outputs with the expected ones.

    The subprocess runs `python -I` (no `PYTHONPATH`, no user site, no
    script or working directory on `sys.path`) in an empty temporary working
    directory, so no Python file in the export can be imported.

    Args:
        path: A version directory (with `saved_model.pb`).
        inputs: Optional REST request body (JSON file, `"inputs"` or
            `"instances"` format). Defaults to the export's
            `assets.extra/sample_request.json` when present.
        expect: Optional `.npz` of expected outputs by output name. Defaults
            to the export's `assets.extra/expected_outputs.npz` when the
            stored sample is used.
        signature: Defaults to `"serving_default"`.
        rtol: Relative tolerance of the comparison. Defaults to 1e-5.
        atol: Absolute tolerance of the comparison. Defaults to 1e-5.
        report: Optional path of a JSON report to write.
        capture: Whether to capture the output instead of printing it.
        timeout: Seconds before the subprocess is killed. Defaults to 600.

    Returns:
        The `subprocess.CompletedProcess`; `returncode` is 0 when every check
        passed and 1 otherwise, with the reason on stderr.

    Example:

    >>> import tempfile
    >>> from keras_attention import serving
    >>> inputs = keras.Input((None, 4), name="features")
    >>> outputs = keras.layers.Dense(1, name="score")(inputs)
    >>> model = keras.Model(inputs, outputs)
    >>> path = serving.export_saved_model(model, tempfile.mkdtemp(),
    ...     warmup_inputs={"features": np.ones((2, 3, 4))})
    >>> result = serving.check(path, capture=True)
    >>> result.returncode, result.stdout.strip().split("\\n")[-1]
    (0, 'CHECK PASSED')
    """
    args = [
        "--signature",
        signature,
        "--rtol",
        str(rtol),
        "--atol",
        str(atol),
    ]
    for flag, value in [
        ("--inputs", inputs),
        ("--expect", expect),
        ("--json", report),
    ]:
        if value is not None:
            args += [flag, os.path.abspath(value)]
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PYTHON") and k != "KERAS_BACKEND"
    }
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    with tempfile.TemporaryDirectory() as cwd:
        return subprocess.run(
            [
                sys.executable,
                "-I",
                os.path.abspath(_check_worker.__file__),
                os.path.abspath(path),
                *args,
            ],
            cwd=cwd,
            env=env,
            capture_output=capture,
            text=True,
            timeout=timeout,
        )
