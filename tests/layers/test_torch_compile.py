"""`compile(jit_compile=True)` on PyTorch, which Keras runs with
`torch.compile`: a model of our layers trains, with dropout, and its
compiled inference gives the eager model's outputs."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.testing import to_numpy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile"
)


def _model(dropout):
    inputs = keras.Input((12, 16))
    x = ka.TransformerEncoder(
        intermediate_dim=16, num_heads=2, dropout=dropout
    )(inputs)
    x = ka.MultiHeadAttention(
        num_heads=2, key_dim=8, dropout=dropout, chunk_size=4
    )(x, x)
    x = ka.AdditiveAttention(units=8, dropout=dropout)(x, x)
    x = keras.layers.GlobalAveragePooling1D()(x)
    return keras.Model(inputs, keras.layers.Dense(3)(x))


def test_model_of_our_layers_trains_under_torch_compile(rng):
    x = rng.normal(size=(8, 12, 16)).astype("float32")
    y = rng.integers(0, 3, size=8)
    model = _model(dropout=0.1)
    twin = _model(dropout=0.1)
    twin.set_weights(model.get_weights())
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    twin.compile("sgd", "sparse_categorical_crossentropy", jit_compile=False)
    before = [to_numpy(w) for w in model.trainable_weights]
    losses = model.fit(
        x, y, batch_size=4, epochs=2, shuffle=False, verbose=0
    ).history["loss"]
    assert np.all(np.isfinite(losses))
    after = [to_numpy(w) for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
    # Inference compiled (no dropout) against the eager twin, same weights.
    twin.set_weights(model.get_weights())
    np.testing.assert_allclose(
        model.predict(x, verbose=0), twin.predict(x, verbose=0), atol=1e-5
    )
