"""Whole-model persistence: `.keras` files and SavedModel exports."""

import json
import os
import subprocess
import sys

import keras

import keras_attention as ka
from tests.testing import run_saving_test

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


def test_saving_in_a_new_process_and_as_saved_model(tmp_path, rng):
    model = _model()
    tokens, memory = _data(rng, 4)
    model.compile(optimizer="adam", loss="mse")
    model.fit([tokens, memory], rng.normal(size=(4, 3)), verbose=0)
    run_saving_test(
        model,
        lambda b: list(_data(rng, b)),
        tmp_path,
        layer_types=[
            ka.MultiHeadAttention,
            ka.GroupedQueryAttention,
            ka.AdditiveAttention,
            ka.AttentionPooling,
        ],
        new_process=True,
    )


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
    # Under JAX too: exported by a TensorFlow subprocess, and the served
    # outputs equal the JAX model's predictions.
    assert "CHECK PASSED" in result.stdout
    assert "outputs match" in result.stdout.split("exported to")[1]
    assert "served predictions" in result.stdout
    version = tmp_path / "saved_models" / "quickstart" / "1"
    assert (version / "saved_model.pb").exists()
    assert (version / "assets.extra" / "tf_serving_warmup_requests").exists()


def test_sequential_model_saving(tmp_path, rng):
    model = keras.Sequential(
        [
            keras.Input((None,), dtype="int32"),
            keras.layers.Embedding(20, 8, mask_zero=True),
            ka.AttentionPooling(units=4, num_heads=2),
            keras.layers.Dense(2),
        ]
    )
    run_saving_test(
        model,
        lambda b: rng.integers(0, 20, size=(b, 6)).astype("int32"),
        tmp_path,
        layer_types=[ka.AttentionPooling],
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
    run_saving_test(
        model,
        lambda b: [x[:b], memory[:b]],
        tmp_path,
        layer_types=[ka.MultiHeadAttention, ka.AdditiveAttention],
    )
