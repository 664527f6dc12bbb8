"""The chunked kernels agree with the dense ones: outputs and gradients."""

import keras
import numpy as np
import pytest

import keras_attention.ops.attention as attention_module
from keras_attention import AdditiveAttention
from keras_attention import MultiHeadAttention
from keras_attention.ops import additive_attention
from keras_attention.ops import scaled_dot_product_attention
from keras_attention.ops._chunked import _Engine
from tests import reference
from tests.ops import cases
from tests.testing import loss_and_grads
from tests.testing import to_numpy

CASES = {
    # name: (b, t, s, n, kv, chunk, causal, mask kind)
    "self_multiple": (2, 32, 32, 2, 2, 8, False, None),
    "cross_ragged": (3, 29, 37, 2, 2, 8, False, "padding"),
    "causal_ragged": (2, 37, 37, 4, 4, 8, True, "padding"),
    "causal_cross": (2, 23, 41, 2, 2, 16, True, None),
    "random_empty_rows": (2, 19, 26, 2, 2, 8, False, "empty_rows"),
    "gqa_causal": (2, 33, 33, 6, 2, 16, True, "random"),
    "chunk_longer_than_input": (1, 5, 9, 2, 1, 64, False, "padding"),
}

# Our kernels' `"auto"`, whatever fused kernel the backend has.
pytestmark = pytest.mark.usefixtures("our_kernels")


@pytest.mark.parametrize("case", sorted(CASES))
def test_sdpa_chunked_matches_dense_with_gradients(rng, case):
    b, t, s, n, kv, chunk, causal, kind = CASES[case]
    q, k, v = cases.qkv(rng, b, t, s, n, kv)
    mask = cases.mask(kind, rng, b, t, s)

    def run(chunk_size):
        return lambda q, k, v: scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=causal, chunk_size=chunk_size
        )

    dense_out = to_numpy(run(None)(q, k, v))
    chunked_out = to_numpy(run(chunk)(q, k, v))
    np.testing.assert_allclose(chunked_out, dense_out, atol=1e-5, rtol=1e-5)
    want, _ = reference.sdpa(q, k, v, mask=mask, is_causal=causal)
    np.testing.assert_allclose(chunked_out, want, atol=1e-5)
    dense_loss, dense_grads = loss_and_grads(run(None), q, k, v)
    loss, grads = loss_and_grads(run(chunk), q, k, v)
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
    for g, dg in zip(grads, dense_grads):
        assert np.all(np.isfinite(g))
        np.testing.assert_allclose(g, dg, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("kind", [None, "padding", "empty_rows"])
def test_additive_chunked_matches_dense_with_gradients(rng, causal, kind):
    b, t, s, u = 2, 21, 27, 6
    args = [
        rng.normal(size=(b, t, u)).astype("float32"),
        rng.normal(size=(b, s, u)).astype("float32"),
        rng.normal(size=(b, s, 4)).astype("float32"),
        rng.normal(size=(u,)).astype("float32"),
        rng.normal(size=(u,)).astype("float32"),
    ]
    mask = cases.mask(kind, rng, b, t, s)
    if mask is not None:
        mask = mask[:, 0]

    def run(chunk_size):
        return lambda q, k, v, w, bias: additive_attention(
            q,
            k,
            v,
            w,
            hidden_bias=bias,
            mask=mask,
            is_causal=causal,
            chunk_size=chunk_size,
        )

    np.testing.assert_allclose(
        to_numpy(run(8)(*args)), to_numpy(run(None)(*args)), atol=1e-5
    )
    dense_loss, dense_grads = loss_and_grads(run(None), *args)
    loss, grads = loss_and_grads(run(8), *args)
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-5)
    for g, dg in zip(grads, dense_grads):  # q, k, v, attention_v, bias
        np.testing.assert_allclose(g, dg, atol=2e-5, rtol=1e-4)


def _train_step_weights(layer_factory, inputs, chunk_size, weights):
    layer_inputs = [keras.Input(x.shape[1:]) for x in inputs]
    layer = layer_factory(chunk_size)
    out = layer(*layer_inputs)
    model = keras.Model(layer_inputs, out)
    model.set_weights(weights)
    model.compile(optimizer=keras.optimizers.SGD(1.0), loss="mse")
    target = np.random.default_rng(3).normal(size=out.shape[1:])
    target = np.broadcast_to(target, (len(inputs[0]),) + target.shape)
    model.train_on_batch(inputs, target)
    return [to_numpy(w) for w in model.weights], model.predict(
        inputs, verbose=0
    )


@pytest.mark.parametrize("name", ["mha", "mha_causal", "additive"])
def test_layer_training_step_is_the_same_chunked_or_dense(rng, name):
    if name.startswith("mha"):

        def factory(chunk_size):
            return MultiHeadAttention(
                num_heads=2,
                key_dim=4,
                num_key_value_heads=1,
                chunk_size=chunk_size,
            )

        x = rng.normal(size=(2, 19, 6)).astype("float32")
        inputs = [x, x]
        if name == "mha_causal":
            base = factory

            def factory(chunk_size):  # noqa: F811
                layer = base(chunk_size)
                call = layer.call
                layer.call = lambda q, v, **kw: call(
                    q, v, use_causal_mask=True, **kw
                )
                return layer
    else:

        def factory(chunk_size):
            return AdditiveAttention(units=5, chunk_size=chunk_size)

        inputs = [
            rng.normal(size=(2, 13, 6)).astype("float32"),
            rng.normal(size=(2, 17, 3)).astype("float32"),
        ]
    # Same initial weights for both runs.
    layer_inputs = [keras.Input(x.shape[1:]) for x in inputs]
    seed_model = keras.Model(layer_inputs, factory(None)(*layer_inputs))
    weights = seed_model.get_weights()
    dense_w, dense_out = _train_step_weights(factory, inputs, None, weights)
    chunk_w, chunk_out = _train_step_weights(factory, inputs, 4, weights)
    np.testing.assert_allclose(chunk_out, dense_out, atol=1e-5)
    for a, b in zip(chunk_w, dense_w):
        np.testing.assert_allclose(a, b, atol=1e-5)


def test_causal_skips_key_blocks_above_the_diagonal():
    q = np.zeros((1, 1, 40, 4), "float32")
    k = np.zeros((1, 1, 40, 4), "float32")
    engine = _Engine(q, k, k, None, True, 8, 16, None, None, None)
    counts = [int(to_numpy(engine.key_blocks_for(i)[1])) for i in range(5)]
    # Query block i covers rows 8i..8i+7; key block j covers 16j..16j+15.
    assert counts == [1, 1, 2, 2, 3]
    full = _Engine(q, k, k, None, False, 8, 16, None, None, None)
    assert full.key_blocks_for(4) == (0, 3)


@pytest.mark.tensorflow_only
def test_chunked_in_tf_function_with_unknown_lengths(rng):
    import tensorflow as tf

    layer = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=8)
    spec = tf.TensorSpec((None, None, 6), tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def step(q, v):
        with tf.GradientTape() as tape:
            tape.watch([q, v])
            out = layer(q, v, use_causal_mask=True)
            loss = tf.reduce_sum(out * out)
        return out, tape.gradient(loss, [q, v] + layer.trainable_weights)

    for t, s in ((13, 21), (30, 9)):
        q = rng.normal(size=(2, t, 6)).astype("float32")
        v = rng.normal(size=(2, s, 6)).astype("float32")
        out, grads = step(q, v)
        dense = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=None)
        dense(q, v)
        dense.set_weights(layer.get_weights())
        with tf.GradientTape() as tape:
            tape.watch([tf.constant(q), tf.constant(v)])
            qq, vv = tf.constant(q), tf.constant(v)
            tape.watch([qq, vv])
            want = dense(qq, vv, use_causal_mask=True)
            loss = tf.reduce_sum(want * want)
        want_grads = tape.gradient(loss, [qq, vv] + dense.trainable_weights)
        np.testing.assert_allclose(out.numpy(), want.numpy(), atol=1e-5)
        for g, w in zip(grads, want_grads):
            np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-4)


def _count_chunked_calls(monkeypatch):
    """A list that gets an entry for each call of the chunked kernel."""
    calls = []
    original = attention_module._chunked_sdpa
    monkeypatch.setattr(
        attention_module,
        "_chunked_sdpa",
        lambda *a: calls.append(1) or original(*a),
    )
    return calls


def test_auto_switches_between_dense_and_chunked(rng, monkeypatch):
    # A tiny threshold: 2 * 2 * 6 * 6 = 144 logits is dense, more is chunked.
    monkeypatch.setattr(attention_module, "AUTO_DENSE_MAX_LOGITS", 144)
    monkeypatch.setattr(attention_module, "AUTO_CHUNK", 4)
    calls = _count_chunked_calls(monkeypatch)
    for length, chunked in ((6, False), (11, True)):
        calls.clear()
        q = rng.normal(size=(2, length, 2, 4)).astype("float32")
        out = scaled_dot_product_attention(q, q, q, is_causal=True)
        want, _ = reference.sdpa(q, q, q, is_causal=True)
        np.testing.assert_allclose(to_numpy(out), want, atol=1e-5)
        assert bool(calls) == chunked


def test_auto_stays_dense_when_one_block_holds_everything(rng, monkeypatch):
    """Many logits, but short sequences: one block would hold them all, so
    the chunked kernel would save nothing (B=32, L=512 in benchmarks/)."""
    monkeypatch.setattr(attention_module, "AUTO_DENSE_MAX_LOGITS", 1)
    monkeypatch.setattr(attention_module, "AUTO_CHUNK", 8)
    monkeypatch.setattr(attention_module, "AUTO_KEY_CHUNK", 16)
    calls = _count_chunked_calls(monkeypatch)
    for t, s, chunked in ((8, 16, False), (9, 16, True), (8, 17, True)):
        calls.clear()
        q = rng.normal(size=(2, t, 2, 4)).astype("float32")
        k = rng.normal(size=(2, s, 2, 4)).astype("float32")
        out = scaled_dot_product_attention(q, k, k)
        want, _ = reference.sdpa(q, k, k)
        np.testing.assert_allclose(to_numpy(out), want, atol=1e-5)
        assert bool(calls) == chunked, (t, s)


@pytest.mark.tensorflow_only
def test_auto_decides_at_run_time_with_unknown_lengths(rng, monkeypatch):
    import tensorflow as tf

    monkeypatch.setattr(attention_module, "AUTO_DENSE_MAX_LOGITS", 144)
    monkeypatch.setattr(attention_module, "AUTO_CHUNK", 4)
    spec = tf.TensorSpec((2, None, 2, 4), tf.float32)

    @tf.function(input_signature=[spec], autograph=False)
    def run(q):
        return scaled_dot_product_attention(q, q, q, is_causal=True)

    graph = run.get_concrete_function().graph.as_graph_def()
    assert any(node.op in ("If", "StatelessIf") for node in graph.node)
    for length in (6, 11):
        q = rng.normal(size=(2, length, 2, 4)).astype("float32")
        want, _ = reference.sdpa(q, q, q, is_causal=True)
        np.testing.assert_allclose(run(q).numpy(), want, atol=1e-5)


@pytest.mark.tensorflow_only
def test_chunked_model_exports_to_saved_model(tmp_path, rng):
    import tensorflow as tf

    tokens = keras.Input((None, 6))
    memory = keras.Input((None, 6))
    x = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=8)(
        tokens, tokens, use_causal_mask=True
    )
    x = AdditiveAttention(units=4, chunk_size=8)(x, memory)
    model = keras.Model([tokens, memory], x)
    path = str(tmp_path / "export")
    model.export(path, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(path)
    ops_in_graph = {
        node.op
        for f in loaded.serve.get_concrete_function(
            [tf.TensorSpec((None, None, 6)), tf.TensorSpec((None, None, 6))]
        )
        .graph.as_graph_def()
        .library.function
        for node in f.node_def
    }
    assert not ops_in_graph & {"PyFunc", "EagerPyFunc", "XlaDynamicUpdateSlice"}
    for batch, t, s in ((1, 19, 5), (3, 7, 30)):
        a = rng.normal(size=(batch, t, 6)).astype("float32")
        b = rng.normal(size=(batch, s, 6)).astype("float32")
        np.testing.assert_allclose(
            loaded.serve([a, b]).numpy(),
            model.predict([a, b], verbose=0),
            atol=1e-5,
        )
