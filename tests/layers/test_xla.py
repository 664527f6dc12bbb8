"""Training and inference compiled by XLA: `compile(jit_compile=True)`,
which Keras' default `"auto"` picks on a TensorFlow machine with a GPU, and
what every compiled function is on JAX.

Each test trains a model compiled with XLA and a twin with the same
weights compiled without it, on the same batches, and asserts equal
weights after training; then `predict_on_batch` of the XLA model against
its eager call. Lengths are static (NumPy inputs: `fit` traces with an
unknown batch) or dynamic (a `tf.data` pipeline with `padded_batch`).

`MultiHeadAttention` runs the full product of model kind, lengths, dropout
and kernel (`chunk_size` `"auto"` on both sides of its thresholds, `None`,
an int); every other public layer runs a pairwise design.
"""

import itertools

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

import keras_attention as ka
from keras_attention.compat import tfa
from keras_attention.ops import attention as attention_module
from tests.testing import to_numpy

# PyTorch compiles with `torch.compile`, not XLA:
# tests/layers/test_torch_compile.py.
pytestmark = pytest.mark.skipif(
    keras.backend.backend() == "torch", reason="XLA: TensorFlow and JAX"
)

# One batch: lengths 3 and 5, padded to 5 (XLA compiles once per shape).
LENGTHS = (3, 5)


def _loss(y_true, y_pred):
    """The targets are unused: the mean square of the outputs."""
    del y_true
    return ops.mean(ops.square(ops.cast(y_pred, "float32")))


def _batches(make_example, lengths):
    """A `tf.data` pipeline of `(x, y)` batches of 2, and its batches as
    NumPy arrays. `"static"`: every example of length 5 (`.batch`: an
    unknown batch size, as `fit` traces NumPy inputs); `"dynamic"`: the
    lengths of `LENGTHS`, `padded_batch`ed (unknown lengths too)."""
    sizes = (5,) * len(LENGTHS) if lengths == "static" else LENGTHS
    examples = [make_example(n) for n in sizes]
    shapes = np.array([x.shape for x in examples], "int32")
    largest = shapes.max(axis=0)
    padded = np.stack(
        [
            np.pad(x, [(0, m - n) for m, n in zip(largest, x.shape)])
            for x in examples
        ]
    )
    targets = np.zeros((len(examples),), "float32")
    dataset = tf.data.Dataset.from_tensor_slices((padded, shapes, targets))
    if lengths == "static":
        dataset = dataset.map(lambda x, shape, y: (x, y)).batch(2)
    else:
        # Unknown lengths; the feature axis of sequences and images stays.
        static = (None,) * len(largest)
        if len(largest) > 1:
            static = static[:-1] + (int(largest[-1]),)

        def cut(x, shape, y):
            x = tf.slice(x, tf.zeros_like(shape), shape)
            return tf.ensure_shape(x, static), y

        pad = (examples[0].dtype.type(1), np.float32(0))
        dataset = dataset.map(cut).padded_batch(2, padding_values=pad)
    return dataset, [(x.numpy(), y.numpy()) for x, y in dataset]


class _Subclassed(keras.Model):
    """`call` is the layer's call on `x`, as in a user's subclassed model."""

    def __init__(self, layer, call):
        super().__init__(name="subclassed")
        self.inner = layer
        self.call_inner = call

    def call(self, x, training=None):
        # Passed on: on JAX, Keras leaves it None in the layers inside.
        return self.call_inner(self.inner, x, training=training)


def _model(kind, make_layer, call, input_shape, dtype="float32"):
    layer = make_layer()
    if kind == "functional":
        inputs = keras.Input(input_shape, dtype=dtype)
        return keras.Model(inputs, call(layer, inputs))
    return _Subclassed(layer, call)


def _train_with_and_without_xla(kind, make_layer, call, batches, dropout):
    """Trains an XLA model and a twin without XLA, from the same weights,
    on `batches`; then checks XLA `predict_on_batch` against the eager call.

    Without dropout the two end with equal weights. With dropout their
    masks differ (XLA draws other bits than TensorFlow's kernels), so the
    twin trains without dropout, and the XLA model's weights must differ
    from it: the dropout ran.
    """
    dataset, batches = batches
    x0 = batches[0][0]
    input_shape = (None,) * (x0.ndim - 2) + x0.shape[-1:]
    models = []
    for jit_compile, rate in ((True, dropout), (False, 0.0)):
        model = _model(kind, lambda: make_layer(rate), call, input_shape)
        model(x0)
        model.compile(
            optimizer=keras.optimizers.SGD(0.5),
            loss=_loss,
            jit_compile=jit_compile,
        )
        assert model.jit_compile is jit_compile
        models.append(model)
    xla, plain = models
    plain.set_weights(xla.get_weights())
    before = [to_numpy(w) for w in xla.weights]
    for model in models:
        model.fit(dataset, epochs=1, shuffle=False, verbose=0)
    after = [to_numpy(w) for w in xla.weights]
    assert all(np.all(np.isfinite(w)) for w in after)
    assert any(not np.allclose(a, b) for a, b in zip(after, before))
    same = [
        np.allclose(got, to_numpy(want), atol=1e-4)
        for got, want in zip(after, plain.weights)
    ]
    if dropout:
        assert not all(same)
    else:
        for got, want in zip(after, plain.weights):
            np.testing.assert_allclose(got, to_numpy(want), atol=1e-4)
    for x, _ in batches:
        np.testing.assert_allclose(
            _flat(xla.predict_on_batch(x)), _flat(xla(x)), atol=1e-4
        )


def _flat(outputs):
    if isinstance(outputs, dict):
        outputs = [outputs[k] for k in sorted(outputs)]
    if isinstance(outputs, (list, tuple)):
        return np.concatenate([to_numpy(o).ravel() for o in outputs])
    return to_numpy(outputs)


@pytest.fixture
def kernel_calls(monkeypatch):
    """The chunked kernel's traces, counted."""
    calls = []
    chunked = attention_module._chunked_sdpa

    def record(*args, **kwargs):
        calls.append(args[6])
        return chunked(*args, **kwargs)

    monkeypatch.setattr(attention_module, "_chunked_sdpa", record)
    return calls


def _cross_auto_thresholds(monkeypatch):
    """`"auto"` chunks inputs of these tests: blocks of 2 x 2 and whole
    rows of 2."""
    for name, value in (
        ("AUTO_DENSE_MAX_LOGITS", 8),
        ("AUTO_CHUNK", 2),
        ("AUTO_KEY_CHUNK", 2),
        ("AUTO_ROWS", 2),
        ("AUTO_MIN_ROWS", 1),
    ):
        monkeypatch.setattr(attention_module, name, value)


# JAX traces every batch with its static shape, so "dynamic" lengths run
# the programs of "static" ones there (the layers' pairwise design still
# feeds it padded batches).
MHA_LENGTHS = ["static", "dynamic"]
if keras.backend.backend() == "jax":
    MHA_LENGTHS = ["static"]
KERNELS = {
    "auto-dense": "auto",
    "auto-chunked": "auto",
    "dense": None,
    "chunked": 3,
}


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("dropout", [0.0, 0.3])
@pytest.mark.parametrize("lengths", MHA_LENGTHS)
@pytest.mark.parametrize("kind", ["functional", "subclassed"])
def test_multi_head_attention_trains_under_xla(
    rng, monkeypatch, kernel_calls, kind, lengths, dropout, kernel
):
    if kernel == "auto-chunked":
        _cross_auto_thresholds(monkeypatch)

    def make_layer(rate):
        return ka.MultiHeadAttention(
            num_heads=2,
            key_dim=3,
            dropout=rate,
            chunk_size=KERNELS[kernel],
            seed=7,
        )

    batches = _batches(
        lambda n: rng.normal(size=(n, 6)).astype("float32"), lengths
    )
    _train_with_and_without_xla(
        kind, make_layer, _self_attention, batches, dropout
    )
    # Lengths unknown when traced (TensorFlow only: JAX traces every
    # shape): "auto" decides at run time, within the chunked kernel under
    # XLA, between the kernels with a `cond` without it.
    unknown = lengths == "dynamic" and keras.backend.backend() == "tensorflow"
    chunked = kernel in ("chunked", "auto-chunked")
    assert bool(kernel_calls) == (
        chunked or (kernel == "auto-dense" and unknown)
    )


def _images(rng):
    return lambda n: rng.normal(size=(2 * n, 2 * n + 2, 3)).astype("float32")


def _sequence(rng):
    return lambda n: rng.normal(size=(n, 8)).astype("float32")


def _token_ids(rng):
    return lambda n: rng.integers(1, 10, size=(n,)).astype("int32")


class _AfterDense(keras.layers.Layer):
    """`call(inner, dense(x))`: gives weights to train to a layer without
    its own."""

    def __init__(self, inner, call, **kwargs):
        super().__init__(name="after_dense", **kwargs)
        self.dense = keras.layers.Dense(8)
        self.inner = inner
        self.call_inner = call

    def call(self, x, training=None):
        return self.call_inner(self.inner, self.dense(x), training=training)


class _Bigram(keras.layers.Layer):
    """Logits from an embedding, with `TokenGenerator`'s model protocol."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.table = keras.layers.Embedding(10, 10)

    def init_cache(self, batch_size, max_length):
        return ()

    def call_with_cache(self, token_ids, cache, index, padding_mask):
        return self.table(token_ids), cache


def _call(layer, x, **kwargs):
    return layer(x, **kwargs)


def _self_attention(layer, x, **kwargs):
    return layer(x, x, **kwargs)


# name: (layer factory of the dropout rate, call, examples of an rng).
LAYERS = {
    "additive": (
        lambda rate: ka.AdditiveAttention(units=4, dropout=rate, seed=3),
        _self_attention,
        _sequence,
    ),
    "pooling": (
        lambda rate: ka.AttentionPooling(units=4, num_heads=2),
        _call,
        _sequence,
    ),
    "gqa": (
        lambda rate: ka.GroupedQueryAttention(4, 4, 2, dropout=rate, seed=3),
        lambda layer, x, **kw: layer(x, x, use_causal_mask=True, **kw),
        _sequence,
    ),
    "patches": (
        lambda rate: ka.PatchEmbedding(patch_size=2, hidden_dim=8),
        _call,
        _images,
    ),
    "position": (
        lambda rate: ka.PositionEmbedding(sequence_length=16),
        lambda layer, x, **kw: x + layer(x, **kw),
        _sequence,
    ),
    "rotary": (
        lambda rate: _AfterDense(ka.RotaryEmbedding(), _call),
        _call,
        _sequence,
    ),
    "sinusoidal": (
        lambda rate: _AfterDense(
            ka.SinusoidalPositionEncoding(),
            lambda layer, x, **kw: x + layer(x, **kw),
        ),
        _call,
        _sequence,
    ),
    "encoder": (
        lambda rate: ka.TransformerEncoder(16, 2, dropout=rate, seed=3),
        _call,
        _sequence,
    ),
    "decoder": (
        lambda rate: ka.TransformerDecoder(16, 2, dropout=rate, seed=3),
        _self_attention,
        _sequence,
    ),
    "generator": (
        lambda rate: ka.TokenGenerator(_Bigram(), max_length=9),
        _call,
        _token_ids,
    ),
    "tfa-mha": (
        lambda rate: tfa.MultiHeadAttention(
            head_size=4, num_heads=2, dropout=rate
        ),
        lambda layer, x, **kw: layer([x, x], **kw),
        _sequence,
    ),
    "tfa-bahdanau": (
        lambda rate: tfa.BahdanauAttention(units=4, normalize=True),
        lambda layer, x, **kw: layer(x[:, 0], x, **kw)[0],
        _sequence,
    ),
}
# Layers without dropout: the dropout factor does not apply.
NO_DROPOUT = ("generator", "pooling", "patches", "position", "rotary")
NO_DROPOUT += ("sinusoidal", "tfa-bahdanau")


def _pairwise_cases():
    """Every pair of levels of (layer, model kind), (layer, lengths),
    (layer, dropout) and (kind, lengths), (kind, dropout), (lengths,
    dropout): each layer runs twice, with opposite levels of the three
    other factors, rotated by the layer's index."""
    levels = list(itertools.product((0, 1), repeat=3))
    # Four rows whose complements cover every pair of the 3 binary factors.
    rows = [levels[0], levels[3], levels[5], levels[6]]
    cases = []
    for index, name in enumerate(sorted(LAYERS)):
        row = rows[index % len(rows)]
        for bits in (row, tuple(1 - b for b in row)):
            kind = ("functional", "subclassed")[bits[0]]
            lengths = ("static", "dynamic")[bits[1]]
            dropout = 0.0 if name in NO_DROPOUT else (0.0, 0.3)[bits[2]]
            cases.append(pytest.param(name, kind, lengths, dropout))
    return cases


@pytest.mark.parametrize("name,kind,lengths,dropout", _pairwise_cases())
def test_every_layer_trains_under_xla(rng, name, kind, lengths, dropout):
    make_layer, call, examples = LAYERS[name]
    batches = _batches(examples(rng), lengths)
    if name != "generator":
        _train_with_and_without_xla(kind, make_layer, call, batches, dropout)
        return
    # Token ids in, token ids out (argmax): nothing to train; the compiled
    # generation equals the eager one.
    model = _model(kind, lambda: make_layer(0.0), call, (None,), "int32")
    model.compile(loss=_loss, jit_compile=True)
    assert model.jit_compile is True
    for x, _ in batches[1]:
        np.testing.assert_array_equal(
            model.predict_on_batch(x), to_numpy(model(x))
        )
