"""Whole-model persistence: `.keras` files and SavedModel exports."""

import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_attention as ka

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _model():
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    memory = keras.Input((None, 6), name="memory")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(
        num_heads=2, key_dim=4, num_key_value_heads=1, dropout=0.1, seed=3
    )(x, x, use_causal_mask=True)
    x = ka.MultiHeadAttention(
        num_heads=2, key_dim=3, use_gate=True, logits_soft_cap=8.0, chunk_size=3
    )(x, x)
    x = ka.GroupedQueryAttention(
        head_dim=3,
        num_query_heads=4,
        num_key_value_heads=2,
        use_gate=True,
        sliding_window=4,
        logits_soft_cap=6.0,
        chunk_size=4,
    )(x, x, use_causal_mask=True)
    x = ka.AdditiveAttention(units=5, normalize=True)(x, memory)
    pooled = ka.AttentionPooling(units=4, num_heads=2)(x)
    return keras.Model([tokens, memory], keras.layers.Dense(3)(pooled))


def _data(rng, batch):
    tokens = rng.integers(1, 20, size=(batch, 7)).astype("int32")
    tokens[0, 4:] = 0
    memory = rng.normal(size=(batch, 5, 6)).astype("float32")
    return tokens, memory


def test_keras_file_reloads_in_a_new_process(tmp_path, rng):
    model = _model()
    tokens, memory = _data(rng, 4)
    model.compile(optimizer="adam", loss="mse")
    model.fit([tokens, memory], rng.normal(size=(4, 3)), verbose=0)
    expected = model.predict([tokens, memory], verbose=0)
    path = tmp_path / "m.keras"
    model.save(path)
    np.savez(
        tmp_path / "io.npz", tokens=tokens, memory=memory, expected=expected
    )
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import keras_attention  # registers the layers; nothing else of ours
        import keras
        data = np.load({str(tmp_path / "io.npz")!r})
        model = keras.models.load_model({str(path)!r})
        got = model.predict([data["tokens"], data["memory"]], verbose=0)
        assert "tests" not in sys.modules
        np.testing.assert_allclose(got, data["expected"], rtol=0, atol=1e-6)
        print("RELOADED-OK", [type(l).__name__ for l in model.layers])
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RELOADED-OK" in result.stdout
    for name in (
        "MultiHeadAttention",
        "GroupedQueryAttention",
        "AdditiveAttention",
        "AttentionPooling",
    ):
        assert name in result.stdout


def test_config_names_our_package(tmp_path):
    model = _model()
    config = json.dumps(keras.saving.serialize_keras_object(model))
    for name in (
        "MultiHeadAttention",
        "GroupedQueryAttention",
        "AdditiveAttention",
        "AttentionPooling",
    ):
        assert f'"registered_name": "keras_attention>{name}"' in config


@pytest.mark.tensorflow_only
def test_saved_model_export_reloads_at_two_batch_sizes(tmp_path, rng):
    import tensorflow as tf

    model = _model()
    export_dir = str(tmp_path / "export")
    model.export(export_dir, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(export_dir)
    for batch in (1, 5):
        tokens, memory = _data(rng, batch)
        expected = model.predict([tokens, memory], verbose=0)
        got = loaded.serve([tf.constant(tokens), tf.constant(memory)])
        np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)


def test_quickstart_runs(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            os.path.join(ROOT, "examples", "quickstart.py"),
            "--epochs",
            "1",
            "--samples",
            "512",
            "--output-dir",
            str(tmp_path),
            "--saved-models-dir",
            str(tmp_path / "saved_models"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "outputs match" in result.stdout
    assert (tmp_path / "quickstart.keras").exists()
    if keras.backend.backend() == "tensorflow":
        assert "CHECK PASSED" in result.stdout
        assert "served predictions" in result.stdout
        version = tmp_path / "saved_models" / "quickstart" / "1"
        assert (version / "saved_model.pb").exists()
        assert (
            version / "assets.extra" / "tf_serving_warmup_requests"
        ).exists()
    else:
        assert "export skipped" in result.stdout


def test_sequential_model_roundtrip(tmp_path, rng):
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(20, 8, mask_zero=True),
            ka.AttentionPooling(units=4, num_heads=2),
            keras.layers.Dense(2),
        ]
    )
    tokens = rng.integers(0, 20, size=(3, 6)).astype("int32")
    expected = model.predict(tokens, verbose=0)
    model.save(tmp_path / "seq.keras")
    reloaded = keras.models.load_model(tmp_path / "seq.keras")
    np.testing.assert_allclose(
        reloaded.predict(tokens, verbose=0), expected, rtol=0, atol=1e-6
    )


@keras.saving.register_keras_serializable(package="keras_attention_tests")
class TinyDecoder(keras.Model):
    """A subclassed model holding all three layers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.self_attention = ka.MultiHeadAttention(num_heads=2, key_dim=4)
        self.cross_attention = ka.AdditiveAttention(units=6)
        self.pool = ka.AttentionPooling()
        self.head = keras.layers.Dense(1)

    def call(self, inputs):
        x, memory = inputs
        x = self.self_attention(x, x, use_causal_mask=True)
        x = self.cross_attention(x, memory)
        return self.head(self.pool(x))


def test_subclassed_model_trains_and_reloads(tmp_path, rng):
    model = TinyDecoder()
    x = rng.normal(size=(8, 5, 4)).astype("float32")
    memory = rng.normal(size=(8, 3, 4)).astype("float32")
    y = rng.normal(size=(8, 1)).astype("float32")
    model.compile(optimizer="adam", loss="mse")
    first = model.train_on_batch([x, memory], y)
    for _ in range(20):
        last = model.train_on_batch([x, memory], y)
    assert last < first
    expected = model.predict([x, memory], verbose=0)
    model.save(tmp_path / "sub.keras")
    reloaded = keras.models.load_model(tmp_path / "sub.keras")
    np.testing.assert_allclose(
        reloaded.predict([x, memory], verbose=0), expected, atol=1e-6
    )
