"""Faults during training: an interrupted run resumes exactly.

A model with our three layers trains for 4 epochs without interruption
(the reference). The same training is interrupted after epoch 2 and
resumed:

- from a `.keras` checkpoint written by `keras.callbacks.ModelCheckpoint`
  (`keras.saving.load_model`, then `fit(initial_epoch=2)`);
- by `keras.callbacks.BackupAndRestore`, after an exception, and after the
  training process is killed with SIGKILL (a subprocess).

The resumed run ends with the reference's weights and optimizer state.

Faults during `export_saved_model` (an exception at each stage, a failed
overwrite, a SIGKILL mid-write) are tested in `tests/serving/test_export.py`
(`test_failure_mid_write_leaves_base_path_as_before`,
`test_failed_overwrite_keeps_the_old_version`,
`test_killed_export_leaves_base_path_as_before`).
"""

import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

import keras_attention as ka

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EPOCHS = 4
INTERRUPT_AFTER = 2  # epochs


def build_model():
    keras.utils.set_random_seed(7)
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(30, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=4)(x, x)
    x = ka.AdditiveAttention(units=4)(x, x)
    pooled = ka.AttentionPooling(units=4, num_heads=2)(x)
    outputs = keras.layers.Dense(3)(pooled)
    model = keras.Model(tokens, outputs)
    model.compile(
        optimizer=keras.optimizers.Adam(1e-2),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    return model


def data():
    rng = np.random.default_rng(3)
    tokens = rng.integers(1, 30, size=(32, 9)).astype("int32")
    lengths = rng.integers(1, 10, size=32)
    tokens[np.arange(9)[None] >= lengths[:, None]] = 0
    labels = rng.integers(0, 3, size=32)
    return tokens, labels


FIT = dict(batch_size=8, shuffle=False, verbose=0)


class Interrupt(Exception):
    pass


class InterruptAfter(keras.callbacks.Callback):
    def __init__(self, epochs):
        super().__init__()
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        if epoch + 1 == self.epochs:
            raise Interrupt(f"interrupted after epoch {epoch + 1}")


def _state(model):
    weights = [keras.ops.convert_to_numpy(w) for w in model.weights]
    optimizer = [
        keras.ops.convert_to_numpy(v) for v in model.optimizer.variables
    ]
    return weights, optimizer


@pytest.fixture(scope="module")
def reference():
    tokens, labels = data()
    model = build_model()
    model.fit(tokens, labels, epochs=EPOCHS, **FIT)
    return _state(model)


def _assert_same_state(model, reference):
    weights, optimizer = _state(model)
    want_weights, want_optimizer = reference
    assert len(weights) == len(want_weights)
    assert len(optimizer) == len(want_optimizer)
    for got, want in zip(weights + optimizer, want_weights + want_optimizer):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    # The iteration counter says the resumed run did the same steps.
    assert int(optimizer[0]) == int(want_optimizer[0]) == EPOCHS * 4


def _train_until_interrupted(callback):
    """Trains a new model with `callback` until an exception after epoch
    INTERRUPT_AFTER stops it."""
    tokens, labels = data()
    with pytest.raises(Interrupt):
        build_model().fit(
            tokens,
            labels,
            epochs=EPOCHS,
            callbacks=[callback, InterruptAfter(INTERRUPT_AFTER)],
            **FIT,
        )


def _resume_from_backup(backup, reference):
    """Trains a new model (as a fresh process would) with
    `BackupAndRestore(backup)`: it runs the epochs after INTERRUPT_AFTER
    only and ends in the reference's state."""
    tokens, labels = data()
    resumed = build_model()
    history = resumed.fit(
        tokens,
        labels,
        epochs=EPOCHS,
        callbacks=[keras.callbacks.BackupAndRestore(backup)],
        **FIT,
    )
    assert len(history.epoch) == EPOCHS - INTERRUPT_AFTER
    _assert_same_state(resumed, reference)


def test_resume_from_model_checkpoint(tmp_path, reference):
    tokens, labels = data()
    path = str(tmp_path / "epoch_{epoch}.keras")
    _train_until_interrupted(keras.callbacks.ModelCheckpoint(path))
    keras.backend.clear_session()
    resumed = keras.saving.load_model(
        path.format(epoch=INTERRUPT_AFTER), safe_mode=True
    )
    resumed.fit(
        tokens, labels, epochs=EPOCHS, initial_epoch=INTERRUPT_AFTER, **FIT
    )
    _assert_same_state(resumed, reference)


def test_resume_with_backup_and_restore_after_an_exception(tmp_path, reference):
    backup = str(tmp_path / "backup")
    _train_until_interrupted(keras.callbacks.BackupAndRestore(backup))
    _resume_from_backup(backup, reference)


def test_resume_with_backup_and_restore_after_sigkill(tmp_path, reference):
    backup = str(tmp_path / "backup")
    script = textwrap.dedent(
        f"""
        import os, signal
        import keras
        from tests.test_faults import FIT, INTERRUPT_AFTER, EPOCHS
        from tests.test_faults import build_model, data

        class Kill(keras.callbacks.Callback):
            def on_epoch_end(self, epoch, logs=None):
                if epoch + 1 == INTERRUPT_AFTER:
                    os.kill(os.getpid(), signal.SIGKILL)

        tokens, labels = data()
        build_model().fit(
            tokens,
            labels,
            epochs=EPOCHS,
            callbacks=[keras.callbacks.BackupAndRestore({backup!r}), Kill()],
            **FIT,
        )
        """
    )
    env = dict(os.environ, KERAS_BACKEND=keras.backend.backend())
    result = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == -9, result.stderr[-3000:]
    assert os.listdir(backup)
    _resume_from_backup(backup, reference)
    # A finished run deletes its backup.
    assert not os.path.exists(backup) or not os.listdir(backup)
