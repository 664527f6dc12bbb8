"""`export_saved_model` from another backend: the TensorFlow subprocess
that exports the model, with `subprocess.run` replaced by a stub."""

import subprocess

import keras
import pytest

from keras_attention.serving import _subprocess


class _Completed:
    """A stub for `subprocess.run`: records the command, returns `result`."""

    def __init__(self, returncode, stdout, stderr):
        self.result = subprocess.CompletedProcess(
            [], returncode, stdout, stderr
        )
        self.commands = []

    def __call__(self, command, **kwargs):
        self.commands.append(command)
        return self.result


def _through_subprocess(tmp_path, monkeypatch, returncode, stdout, stderr):
    run = _Completed(returncode, stdout, stderr)
    monkeypatch.setattr(_subprocess.subprocess, "run", run)
    inputs = keras.Input((3,), name="x")
    model = keras.Model(inputs, keras.layers.Dense(2, name="y")(inputs))
    try:
        return _subprocess.export_through_subprocess(
            model, tmp_path / "base", None, None, False, True
        )
    finally:
        assert len(run.commands) == 1
        assert run.commands[0][1:4] == [
            "-m",
            "keras_attention.serving",
            "export",
        ]


def test_subprocess_that_prints_no_path_is_an_error(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="exit code 0") as info:
        _through_subprocess(tmp_path, monkeypatch, 0, "", "a warning\n")
    assert "printed no version path" in str(info.value)
    assert "a warning" in str(info.value)


def test_subprocess_failure_reports_exit_code_and_stderr_tail(
    tmp_path, monkeypatch
):
    stderr = "x" * 10000 + "\nerror: the real reason\n"
    with pytest.raises(RuntimeError, match="exit code 3") as info:
        _through_subprocess(tmp_path, monkeypatch, 3, "", stderr)
    message = str(info.value)
    assert "error: the real reason" in message
    assert len(message) < 5000  # the tail, not all of it


def test_subprocess_path_is_the_last_line_of_stdout(tmp_path, monkeypatch):
    version = tmp_path / "base" / "4"
    stdout = f"CHECK PASSED\n{version}\n"
    assert _through_subprocess(tmp_path, monkeypatch, 0, stdout, "") == str(
        version
    )
