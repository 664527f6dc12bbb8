"""What the example tests share: running an example's CLI, reading its files."""

import importlib
import json
import os
import subprocess
import sys

import keras

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
EXAMPLES = os.path.join(ROOT, "examples")
BACKEND = keras.backend.backend()
# CI's torch leg has about four minutes for these tests. There each example
# script runs once, end to end: training, evaluation, the export through a
# TensorFlow process and the check that it serves the torch model's outputs.
# Checks that repeat a path which that run, or the JAX leg, already covers
# (the CLI export of the run's `.keras` file) are left to the other legs.
ON_TORCH_LEG = BACKEND == "torch"


def import_example(name):
    """`examples/<name>.py` as a module (for its data and model functions)."""
    sys.path.insert(0, EXAMPLES)
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(EXAMPLES)


def run_example(name, tmp_path, *flags, timeout=300):
    """Runs `examples/<name>.py` under the test session's backend.

    Its run files go to `tmp_path/run` and its exports to
    `tmp_path/saved_models`. Returns stdout and stderr; fails the test
    with their tail if the script exits non-zero.
    """
    env = dict(os.environ, KERAS_BACKEND=BACKEND, TF_CPP_MIN_LOG_LEVEL="2")
    command = [
        sys.executable,
        os.path.join(EXAMPLES, f"{name}.py"),
        f"--output-dir={tmp_path / 'run'}",
        f"--saved-models-dir={tmp_path / 'saved_models'}",
        *flags,
    ]
    result = subprocess.run(
        command,
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-4000:]
    return output


def read_json(tmp_path, name):
    """A JSON file the example wrote to its run directory."""
    with open(tmp_path / "run" / name) as f:
        return json.load(f)
