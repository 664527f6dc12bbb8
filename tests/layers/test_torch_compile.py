"""`compile(jit_compile=True)` on PyTorch, which Keras runs with
`torch.compile`: a model of our layers trains with dropout ("auto": the
dense kernel at this length; the chunked kernel's loops compile for
minutes here). Compiled inference of every layer, at two lengths, is in
`test_all_layers.py`."""

import keras
import numpy as np
import pytest

import keras_attention as ka
from tests.testing import to_numpy

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="torch.compile"
)


def test_model_of_our_layers_trains_under_torch_compile(rng):
    inputs = keras.Input((12, 16))
    x = ka.MultiHeadAttention(num_heads=2, key_dim=8, dropout=0.1, seed=1)(
        inputs, inputs
    )
    x = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(inputs, keras.layers.Dense(3)(x))
    model.compile("sgd", "sparse_categorical_crossentropy", jit_compile=True)
    x = rng.normal(size=(8, 12, 16)).astype("float32")
    y = rng.integers(0, 3, size=8)
    before = [to_numpy(w) for w in model.trainable_weights]
    losses = model.fit(
        x, y, batch_size=4, epochs=2, shuffle=False, verbose=0
    ).history["loss"]
    assert np.all(np.isfinite(losses))
    after = [to_numpy(w) for w in model.trainable_weights]
    assert all(not np.array_equal(a, b) for a, b in zip(before, after))
