"""Head-sharded model parallelism on 8 virtual CPU devices, and data
parallelism across 2 processes, each in fresh JAX processes
(`tests/distribution/_worker.py`): `XLA_FLAGS` must be set before JAX
starts. They run in the JAX suite; the worker forces JAX itself."""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tests import testing

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
MESHES = ("1x8", "2x4", "4x2")
TIMEOUT = 600

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "jax",
    reason="runs in the JAX suite (the worker forces JAX itself)",
)


def _worker(*args):
    return [sys.executable, "-m", "tests.distribution._worker", *args]


def _env():
    env = dict(os.environ, KERAS_BACKEND="jax")
    env.pop("XLA_FLAGS", None)
    return env


def _run_worker(*args):
    """One worker process; returns its stdout (fails on a non-zero exit)."""
    result = subprocess.run(
        _worker(*args),
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=_env(),
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


@pytest.fixture(scope="module")
def sharded():
    out = _run_worker("sharded", "--meshes", *MESHES)
    return json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("mesh", MESHES)
def test_sharded_model_equals_the_unsharded_one(sharded, mesh):
    """Forward, prefill into a placed cache, greedy cached decoding and one
    SGD train step (loss and every updated weight), on two models: a
    decoder LM (subclassed, GQA, RoPE) and a functional encoder classifier
    with gated attention."""
    assert sharded["devices"] == 8
    diffs = sharded["meshes"][mesh]["diffs"]
    assert set(diffs) == {
        "lm_logits",
        "classifier_logits",
        "prefill_logits",
        "generated",
        "lm_loss",
        "classifier_loss",
        "lm_trained",
        "classifier_trained",
    }
    assert diffs["generated"] == 0
    assert max(diffs.values()) <= 1e-5, diffs


@pytest.mark.parametrize("mesh", MESHES)
def test_weights_are_sharded_as_the_layout_says(sharded, mesh):
    report = sharded["meshes"][mesh]
    specs, expected = report["specs"], report["expected_specs"]
    # Every variable the layout names exists in the rebuilt models (the
    # paths are stable across the rebuild) and carries its layout.
    assert len(expected) == report["layout_keys"] == 41
    assert {path: specs[path] for path in expected} == expected
    model_size = int(mesh.split("x")[1])
    query = "lm/block_0/self_attention/query/kernel"
    assert specs[query] == "P(None, 'model', None)"
    key = "lm/block_0/self_attention/key/kernel"
    # 2 key/value heads: sharded on a model axis of 2, replicated on 4 or 8.
    assert specs[key] == (
        "P(None, 'model', None)" if model_size == 2 else "P(None, None, None)"
    )
    assert specs["lm/final_norm/gamma"] == "P(None,)"


def test_parameter_memory_per_device_shrinks_with_the_model_axis(sharded):
    per_device = {
        mesh: sharded["meshes"][mesh]["param_bytes_per_device"]
        for mesh in MESHES
    }
    full = sharded["meshes"]["1x8"]["param_bytes"]
    assert per_device["1x8"] < per_device["2x4"] < per_device["4x2"] < full


@pytest.mark.parametrize("mesh", MESHES)
def test_cache_is_placed_with_the_heads_sharding(sharded, mesh):
    model_size = int(mesh.split("x")[1])
    heads = "'model'" if model_size == 2 else "None"
    expected = f"P('batch', None, None, {heads}, None)"
    assert sharded["meshes"][mesh]["cache_specs"] == [expected, expected]


def test_two_processes_train_like_one(tmp_path):
    """`keras.distribution.initialize` on localhost (gloo CPU collectives):
    2 processes, each feeding half the global batch to a `DataParallel`
    train step, end with the weights of 1 process fed the whole batch."""
    (port,) = testing.free_ports(1)
    commands = [
        _worker(
            "data",
            "--processes",
            "2",
            "--process-id",
            str(i),
            "--port",
            str(port),
            "--out",
            str(tmp_path / f"process{i}.npz"),
        )
        for i in range(2)
    ]
    codes, logs = testing.run_together(
        commands, [_env()] * 2, cwd=ROOT, timeout=TIMEOUT
    )
    for code, log in zip(codes, logs):
        assert code == 0, log[-3000:]
    _run_worker("data", "--out", str(tmp_path / "single.npz"))
    runs = [np.load(tmp_path / f"{n}.npz") for n in ("process0", "process1")]
    reference = np.load(tmp_path / "single.npz")
    assert len(reference.files) > 10
    for run in runs:
        assert run.files == reference.files
        for name in reference.files:
            np.testing.assert_allclose(
                run[name], reference[name], rtol=0, atol=1e-5, err_msg=name
            )
    # Both processes hold the same replicated weights, bit for bit.
    for name in reference.files:
        np.testing.assert_array_equal(runs[0][name], runs[1][name])
