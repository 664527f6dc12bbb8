"""Models, data and commands shared by the serving tests (and the examples'
cross-backend round trips)."""

import json
import os
import subprocess
import sys

import keras
import numpy as np

import keras_attention as ka

VOCAB = 20


def masked_model(chunk_size="auto"):
    """Token ids -> class probabilities and per-token scores (masked).
    `chunk_size=None`: the dense kernels alone, a graph a quarter the size
    that converts to other formats several times faster."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(VOCAB, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=chunk_size)(
        x, x
    )
    x = ka.AdditiveAttention(units=4, chunk_size=chunk_size)(x, x)
    pooled = ka.AttentionPooling(units=4, num_heads=2)(x)
    probabilities = keras.layers.Dense(
        3, activation="softmax", name="probabilities"
    )(pooled)
    per_token = keras.layers.Dense(2, name="per_token")(x)
    return keras.Model(tokens, [probabilities, per_token], name="masked")


def two_input_model():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    memory = keras.Input((None, 6), name="memory")
    x = keras.layers.Embedding(VOCAB, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4)(x, memory)
    pooled = ka.AttentionPooling(units=4)(x)
    score = keras.layers.Dense(1, name="score")(pooled)
    return keras.Model([tokens, memory], score, name="two_inputs")


def ragged_tokens(rng, lengths, width=None):
    """Zero-padded token rows of the given lengths."""
    width = width or max(lengths)
    tokens = np.zeros((len(lengths), width), "int32")
    for i, n in enumerate(lengths):
        tokens[i, :n] = rng.integers(1, VOCAB, size=n)
    return tokens


def tree(path):
    """Every file and folder under `path`, relative, with file sizes."""
    entries = set()
    for root, dirs, files in os.walk(path):
        rel = os.path.relpath(root, path)
        entries.update(os.path.join(rel, d) + "/" for d in dirs)
        entries.update(
            (os.path.join(rel, f), os.path.getsize(os.path.join(root, f)))
            for f in files
        )
    return entries


ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))


def _serving(*argv, env=None):
    """`python -m keras_attention.serving ARGV` from the repository root."""
    return subprocess.run(
        [sys.executable, "-m", "keras_attention.serving", *map(str, argv)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=300,
    )


def export_with_cli(model_file, base, *imports):
    """`serving export MODEL_FILE BASE [--import M ...]` under this
    session's backend (from JAX it re-runs under TensorFlow); returns the
    version path it printed."""
    argv = ["export", model_file, base]
    for name in imports:
        argv += ["--import", name]
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = _serving(*argv, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout.strip().splitlines()[-1]


def check_expect(path, tmp_path, inputs, expected):
    """`serving check PATH --inputs --expect`: the request `inputs` must
    give the `expected` outputs (floats within 1e-5, the rest equal)."""
    from keras_attention.serving import _wire

    body = tmp_path / "check_request.json"
    body.write_text(json.dumps(_wire.rest_body(inputs)))
    npz = tmp_path / "expected.npz"
    np.savez(npz, **expected)
    result = _serving("check", path, "--inputs", body, "--expect", npz)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr
    assert "CHECK PASSED" in result.stdout


def serving_without(module, argv, cwd):
    """`python -m keras_attention.serving *argv` in a Python where
    `importlib.util.find_spec(module)` finds nothing (the module is not
    installed), under Keras' numpy backend, in `cwd`."""
    import os
    import subprocess
    import sys

    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    script = (
        "import importlib.util, runpy, sys\n"
        "real = importlib.util.find_spec\n"
        f"importlib.util.find_spec = lambda name, *a: None if name == "
        f"{module!r} else real(name, *a)\n"
        f"sys.argv = ['serving', *{list(argv)!r}]\n"
        "runpy.run_module('keras_attention.serving', run_name='__main__')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script],
        cwd=cwd,
        env=dict(os.environ, KERAS_BACKEND="numpy", PYTHONPATH=root),
        capture_output=True,
        text=True,
        timeout=120,
    )
