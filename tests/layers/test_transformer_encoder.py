import json
import math
import warnings

import keras
import numpy as np
import pytest
from keras import ops

import keras_attention as ka
from keras_attention import TransformerEncoder
from tests import reference
from tests.testing import assert_close_in_float32
from tests.testing import import_keras_hub
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import to_numpy


# ----------------------------------------------------------------------
# An independent NumPy reference of the block (float64).
# ----------------------------------------------------------------------
def _weights(layer):
    """{"query/kernel": ..., "feedforward_layer_norm/gamma": ...}."""
    return {
        "/".join(w.path.split("/")[-2:]): to_numpy(w.value).astype(np.float64)
        for w in layer.weights
    }


def _layer_norm(x, gamma, beta, epsilon):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + epsilon) * gamma + beta


def _activation(name, x):
    if name == "relu":
        return np.maximum(x, 0.0)
    if name == "gelu":  # Keras' default: the exact (erf) form.
        erf = np.vectorize(math.erf)
        return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))
    raise NotImplementedError(name)


def reference_encoder(
    w,
    x,
    normalize_first,
    padding_mask=None,
    attention_mask=None,
    causal=False,
    activation="relu",
    epsilon=1e-5,
):
    """The block's outputs and attention weights, given its weights `w`.

    Padded keys are masked; a query row with no key to attend to (a padded
    position, or a row the masks empty) gets a zero attention output.
    """
    x = np.asarray(x, np.float64)
    b, t, _ = x.shape
    mask = np.ones((b, t, t), bool)
    query_ok = np.ones((b, t), bool)
    if padding_mask is not None:
        padding_mask = np.asarray(padding_mask, bool)
        mask &= padding_mask[:, None, :]
        query_ok &= padding_mask
    if attention_mask is not None:
        mask &= np.asarray(attention_mask, bool)
    if causal:
        mask &= np.tril(np.ones((t, t), bool))
    mask &= query_ok[:, :, None]

    def norm(name, h):
        return _layer_norm(h, w[f"{name}/gamma"], w[f"{name}/beta"], epsilon)

    h = norm("self_attention_layer_norm", x) if normalize_first else x
    attended, scores = reference.mha(w, h, h, mask=mask)
    attended = attended * mask.any(-1)[:, :, None]
    h = x + attended
    if not normalize_first:
        h = norm("self_attention_layer_norm", h)
    residual = h
    if normalize_first:
        h = norm("feedforward_layer_norm", h)
    hidden = _activation(
        activation,
        h @ w["feedforward_intermediate_dense/kernel"]
        + w["feedforward_intermediate_dense/bias"],
    )
    h = (
        hidden @ w["feedforward_output_dense/kernel"]
        + w["feedforward_output_dense/bias"]
        + residual
    )
    if not normalize_first:
        h = norm("feedforward_layer_norm", h)
    return h, scores


def _randomize_norms(layer, rng):
    """Non-trivial layer-norm weights, so that a swapped norm is caught."""
    for w in layer.weights:
        if w.path.endswith(("gamma", "beta")):
            w.assign(rng.normal(size=w.shape).astype("float32") * 0.5 + 1.0)


# One input shape for (almost) every test: the JAX backend compiles each op
# once per shape, so new shapes cost seconds and repeated ones nothing.
B, T, D = 3, 6, 8


def _lengths_mask(lengths, t):
    return np.arange(t)[None] < np.asarray(lengths)[:, None]


MASK_CASES = ["none", "padding", "padding+causal", "attention+padding"]


def _masks(case, rng, b, t):
    padding = attention = None
    causal = False
    if "padding" in case:
        padding = _lengths_mask([t, t - 2, 1], t)
    if "causal" in case:
        causal = True
    if "attention" in case:
        attention = rng.random((b, t, t)) < 0.7
        attention |= np.eye(t, dtype=bool)[None]  # every row attends itself
    return padding, attention, causal


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post", "pre"])
def test_matches_numpy_reference(rng, normalize_first):
    layer = TransformerEncoder(
        intermediate_dim=16,
        num_heads=2,
        normalize_first=normalize_first,
        bias_initializer="random_normal",
    )
    x = rng.normal(size=(B, T, D)).astype("float32")
    layer.build(x.shape)
    _randomize_norms(layer, rng)
    w = _weights(layer)
    for case in MASK_CASES:
        padding, attention, causal = _masks(case, rng, B, T)
        out, scores = layer(
            x,
            padding_mask=padding,
            attention_mask=attention,
            use_causal_mask=causal,
            return_attention_scores=True,
        )
        want, want_scores = reference_encoder(
            w, x, normalize_first, padding, attention, causal
        )
        np.testing.assert_allclose(
            to_numpy(out), want, atol=2e-5, rtol=1e-5, err_msg=case
        )
        # Padded query rows have all-zero weights in both.
        np.testing.assert_allclose(
            to_numpy(scores), want_scores, atol=2e-6, err_msg=case
        )


# (normalize_first, activation, key_dim, dtype policy)
OPTION_CASES = [
    (False, "relu", None, "mixed_float16"),
    (True, "gelu", None, "mixed_bfloat16"),
]


def test_matches_numpy_reference_options(rng):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding = _lengths_mask([6, 3, 1], T)
    for case in OPTION_CASES:
        normalize_first, activation, key_dim, policy = case
        layer = TransformerEncoder(
            intermediate_dim=16,
            num_heads=2,
            activation=activation,
            key_dim=key_dim,
            layer_norm_epsilon=1e-3,
            normalize_first=normalize_first,
            bias_initializer="random_normal",
            dtype=policy,
        )
        out = layer(x, padding_mask=padding)
        w = _weights(layer)
        assert w["query/kernel"].shape == (D, 2, key_dim or D // 2)
        compute = policy.split("_")[-1]
        assert keras.backend.standardize_dtype(out.dtype) == compute
        assert all(v.dtype == "float32" for v in layer.weights)
        x_r = to_numpy(ops.cast(ops.cast(x, compute), "float32"))
        want, _ = reference_encoder(
            w,
            x_r,
            normalize_first,
            padding,
            activation=activation,
            epsilon=1e-3,
        )
        tol = {"float32": 2e-5, "float16": 2e-2, "bfloat16": 1e-1}[compute]
        assert_close_in_float32(out, want, tol, err_msg=str(case))


def test_exact_values_tiny():
    """Zero kernels and biases: attention and feed-forward add nothing, so
    post-norm is LayerNorm(LayerNorm(x)) and pre-norm returns x. Rows of
    alternating 1 and 3 (mean 2, variance 1) normalize to -1 and 1; constant
    rows to 0."""
    x = np.zeros((B, T, D), "float32")
    x[:, ::2] = [1.0, 3.0] * (D // 2)
    x[:, 1::2] = 2.0
    normalized = np.zeros_like(x)
    normalized[:, ::2] = [-1.0, 1.0] * (D // 2)
    for normalize_first, want in ((False, normalized), (True, x)):
        layer = TransformerEncoder(
            16,
            num_heads=2,
            normalize_first=normalize_first,
            kernel_initializer="zeros",
            layer_norm_epsilon=1e-12,
        )
        np.testing.assert_allclose(to_numpy(layer(x)), want, atol=1e-5)


def test_padding_does_not_influence_real_positions(rng):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding = _lengths_mask([6, 4, 1], T)
    noisy = x.copy()
    noisy[~padding] = rng.normal(size=noisy[~padding].shape) * 100.0
    for normalize_first in (False, True):
        layer = TransformerEncoder(16, 2, normalize_first=normalize_first)
        out = to_numpy(layer(x, padding_mask=padding))
        out_noisy = to_numpy(layer(noisy, padding_mask=padding))
        np.testing.assert_allclose(
            out_noisy[padding], out[padding], atol=1e-5, rtol=1e-5
        )
        # Without the mask, the noise does reach the real positions.
        leaky = to_numpy(layer(noisy))
        assert np.abs(leaky[padding] - out[padding]).max() > 1e-2


def test_chunked_attention_matches_dense(rng):
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding = _lengths_mask([6, 5, 1], T)
    dense = TransformerEncoder(16, 2, chunk_size=None)
    chunked = TransformerEncoder(16, 2, chunk_size=4)
    want = dense(x, padding_mask=padding, use_causal_mask=True)
    chunked(x)
    chunked.set_weights(dense.get_weights())
    got = chunked(x, padding_mask=padding, use_causal_mask=True)
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)


def test_layer_behaviour(rng):
    run_layer_test(
        TransformerEncoder,
        dict(
            intermediate_dim=16,
            num_heads=2,
            dropout=0.1,
            activation="gelu",
            normalize_first=True,
            key_dim=D // 2,
            chunk_size=None,
            seed=5,
        ),
        dict(inputs=(B, T, D)),
        call_kwargs=dict(use_causal_mask=True, return_attention_scores=True),
        expected_output_shapes=[(B, T, D), (B, 2, T, T)],
        expected_num_trainable_weights=16,
        rng=rng,
    )
    # The defaults' config round trip.
    layer = TransformerEncoder(16, 2)
    config = json.loads(json.dumps(layer.get_config()))
    assert TransformerEncoder.from_config(config).get_config() == config


def test_gelu_is_computed_with_erf():
    """Keras' exact `"gelu"` runs as `0.5 * x * (1 + erf(x / sqrt(2)))`
    (TensorFlow's `erfc` form does not export to ONNX); the config keeps
    the user's `"gelu"`, and other activations pass through."""
    layer = TransformerEncoder(16, 2, activation="gelu")
    layer.build((B, T, D))
    assert layer.get_config()["activation"] == "gelu"
    x = np.linspace(-12.0, 12.0, 4801, dtype="float32")
    got = to_numpy(layer._feedforward_intermediate_dense.activation(x))
    want = to_numpy(keras.activations.gelu(x))
    # About a float32 ulp (1e-6 at |x| = 12).
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(
        got, _activation("gelu", x), rtol=1e-6, atol=1e-6
    )
    relu = TransformerEncoder(16, 2, activation="relu")
    relu.build((B, T, D))
    activation = relu._feedforward_intermediate_dense.activation
    assert activation is keras.activations.relu


def test_regularizers_and_constraints(rng):
    layer = TransformerEncoder(
        16,
        2,
        kernel_regularizer="l2",
        bias_regularizer="l1",
        activity_regularizer=keras.regularizers.L1(0.5),
        kernel_constraint="non_neg",
        bias_constraint=keras.constraints.MaxNorm(2.0),
    )
    revived = TransformerEncoder.from_config(
        json.loads(json.dumps(layer.get_config()))
    )
    assert revived.get_config() == layer.get_config()
    config = layer.get_config()
    assert config["activity_regularizer"]["config"] == {"l1": 0.5}
    assert config["kernel_constraint"]["class_name"] == "NonNeg"
    x = rng.normal(size=(B, T, D)).astype("float32")
    layer(x)
    # 6 kernels and 6 biases (attention q/k/v/output and two dense), and
    # the activity regularizer once, on the block's output.
    assert len(layer.losses) == 13
    kernels = [w for w in layer.weights if w.path.endswith("kernel")]
    assert len(kernels) == 6
    assert all(w.constraint is not None for w in kernels)


def test_weight_names_and_order_follow_keras_hub():
    layer = TransformerEncoder(16, 2)
    layer.build((None, None, D))
    names = ["/".join(w.path.split("/")[1:]) for w in layer.weights]
    # With `key_dim`, the heads' size no longer follows the inputs'.
    other = TransformerEncoder(16, 2, key_dim=3)
    other.build((None, None, D))
    assert tuple(other.weights[0].shape) == (D, 2, 3)
    assert names == [
        "self_attention_layer/query/kernel",
        "self_attention_layer/query/bias",
        "self_attention_layer/key/kernel",
        "self_attention_layer/key/bias",
        "self_attention_layer/value/kernel",
        "self_attention_layer/value/bias",
        "self_attention_layer/attention_output/kernel",
        "self_attention_layer/attention_output/bias",
        "self_attention_layer_norm/gamma",
        "self_attention_layer_norm/beta",
        "feedforward_layer_norm/gamma",
        "feedforward_layer_norm/beta",
        "feedforward_intermediate_dense/kernel",
        "feedforward_intermediate_dense/bias",
        "feedforward_output_dense/kernel",
        "feedforward_output_dense/bias",
    ]


def test_dropout_only_in_training(rng):
    x = rng.normal(size=(B, T, D)).astype("float32")
    layer = TransformerEncoder(16, 2, dropout=0.5, seed=1)
    plain = TransformerEncoder(16, 2)
    inference = layer(x)
    plain(x)
    plain.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        to_numpy(inference), to_numpy(plain(x)), atol=1e-6
    )
    trained = to_numpy(layer(x, training=True))
    assert np.abs(trained - to_numpy(inference)).max() > 1e-2


# ----------------------------------------------------------------------
# Keras masks
# ----------------------------------------------------------------------
TOKENS = np.array([[5, 3, 8, 2, 0, 0], [7, 0, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6]])


def _embedding_model(*blocks, attention=False):
    tokens = keras.Input((None,), dtype="int32")
    inputs = [tokens]
    x = keras.layers.Embedding(10, 8, mask_zero=True, name="embed")(tokens)
    kwargs = {}
    if attention:
        inputs.append(keras.Input((None, None), dtype="bool"))
        kwargs["attention_mask"] = inputs[1]
    outputs = []
    for block in blocks:
        x = block(x, **kwargs)
        outputs.append(x)
    return keras.Model(inputs, outputs), outputs


def test_keras_mask_is_used_and_propagated(rng):
    first = TransformerEncoder(16, 2)
    second = TransformerEncoder(16, 2, normalize_first=True)
    model, outputs = _embedding_model(first, second)
    for out in outputs:
        assert getattr(out, "_keras_mask", None) is not None
    got_first, got = [to_numpy(o) for o in model(TOKENS)]
    embedded = to_numpy(model.get_layer("embed")(TOKENS))
    padding = TOKENS > 0
    want_first = to_numpy(first(embedded, padding_mask=padding))
    want = to_numpy(second(want_first, padding_mask=padding))
    np.testing.assert_allclose(got_first, want_first, atol=1e-5)
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert first.compute_mask(embedded, padding) is padding


def test_keras_mask_is_combined_with_an_attention_mask_tensor(rng):
    """With two tensor arguments Keras fills `inputs_mask`, not `mask`."""
    block = TransformerEncoder(16, 2)
    model, _ = _embedding_model(block, attention=True)
    attention = rng.random((3, 6, 6)) < 0.6
    attention |= np.eye(6, dtype=bool)[None]
    got = to_numpy(model([TOKENS, attention]))
    embedded = to_numpy(model.get_layer("embed")(TOKENS))
    want = to_numpy(
        block(embedded, padding_mask=TOKENS > 0, attention_mask=attention)
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    # And the padding really matters: without it the result differs.
    unpadded = to_numpy(block(embedded, attention_mask=attention))
    assert np.abs(unpadded[TOKENS > 0] - want[TOKENS > 0]).max() > 1e-3


def test_keras_mask_in_a_sequential_model_and_eagerly(rng):
    block = TransformerEncoder(16, 2)
    embed = keras.layers.Embedding(10, 8, mask_zero=True)
    model = keras.Sequential(
        [keras.Input((None,), dtype="int32"), embed, block]
    )
    got = to_numpy(model(TOKENS))
    embedded = to_numpy(embed(TOKENS))
    want = to_numpy(block(embedded, padding_mask=TOKENS > 0))
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Eager call on a masked tensor, with no warning about lost masks.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        eager = block(embed(TOKENS))
    assert not [w for w in caught if "destroy the mask" in str(w.message)]
    np.testing.assert_allclose(to_numpy(eager), want, atol=1e-5)
    # An explicit `padding_mask` takes precedence over the Keras mask.
    everything = np.ones(TOKENS.shape, bool)
    np.testing.assert_allclose(
        to_numpy(block(embed(TOKENS), padding_mask=everything)),
        to_numpy(block(embedded)),
        atol=1e-6,
    )


# ----------------------------------------------------------------------
# Graphs, compiled models and persistence
# ----------------------------------------------------------------------
@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_length(rng):
    import tensorflow as tf

    layer = TransformerEncoder(16, 2, normalize_first=True)
    layer.build((None, None, 8))

    @tf.function(
        input_signature=[
            tf.TensorSpec((None, None, 8)),
            tf.TensorSpec((None, None), tf.bool),
        ],
        autograph=False,
    )
    def run(x, padding):
        return layer(x, padding_mask=padding, use_causal_mask=True)

    for length in (3, 7):
        x = rng.normal(size=(2, length, 8)).astype("float32")
        padding = _lengths_mask([length, 2], length)
        np.testing.assert_allclose(
            run(x, padding).numpy(),
            to_numpy(layer(x, padding_mask=padding, use_causal_mask=True)),
            atol=1e-5,
        )


def test_compiled_model_with_unknown_length(rng):
    """Any backend: a compiled `predict` (XLA on JAX) at two lengths."""
    block = TransformerEncoder(16, 2)
    model, _ = _embedding_model(block)
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    embedded = to_numpy(model.get_layer("embed")(TOKENS))
    for length in (4, 6):
        # Cutting the sequences at `length` is the same as padding the rest.
        padding = (TOKENS > 0) & (np.arange(T) < length)
        want = to_numpy(block(embedded, padding_mask=padding))[:, :length]
        got = model.predict(TOKENS[:, :length], verbose=0)
        np.testing.assert_allclose(got, want, atol=1e-5)


def _model():
    """Text and image branches: all four new layers in one model."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = keras.layers.Add()([x, ka.PositionEmbedding(10)(x)])
    x = keras.layers.Add()([x, ka.SinusoidalPositionEncoding()(x)])
    x = TransformerEncoder(16, 2, dropout=0.1, seed=2)(x)
    x = TransformerEncoder(16, 2, normalize_first=True, chunk_size=None)(x)
    text = ka.AttentionPooling(units=4)(x)
    images = keras.Input((4, 6, 1), name="images")
    y = ka.PatchEmbedding(2, 8)(images)  # (batch, 6, 8), as the text
    y = keras.layers.Add()([y, ka.PositionEmbedding(6)(y)])
    y = TransformerEncoder(16, 2, normalize_first=True, activation="gelu")(y)
    image = keras.layers.GlobalAveragePooling1D()(y)
    merged = keras.layers.Concatenate()([text, image])
    return keras.Model([tokens, images], keras.layers.Dense(3)(merged))


def _data(rng, batch):
    tokens = rng.integers(1, 20, size=(batch, T)).astype("int32")
    tokens[0, 3:] = 0
    images = rng.random((batch, 4, 6, 1), np.float32)
    return [tokens, images]


def test_saving(tmp_path, rng):
    run_saving_test(
        _model(),
        lambda b: _data(rng, b),
        tmp_path,
        layer_types=[
            ka.PatchEmbedding,
            ka.PositionEmbedding,
            ka.SinusoidalPositionEncoding,
            TransformerEncoder,
        ],
    )


def test_matches_keras_hub(rng):
    keras_hub = import_keras_hub()
    x = rng.normal(size=(B, T, D)).astype("float32")
    padding = _lengths_mask([6, 3, 1], T)
    for normalize_first in (False, True):
        theirs = keras_hub.layers.TransformerEncoder(
            16, 2, normalize_first=normalize_first
        )
        ours = TransformerEncoder(16, 2, normalize_first=normalize_first)
        want = to_numpy(theirs(x, padding_mask=padding))
        ours(x)
        ours.set_weights(theirs.get_weights())
        got = to_numpy(ours(x, padding_mask=padding))
        # Padded rows differ by design (ours zero their attention output).
        np.testing.assert_allclose(got[padding], want[padding], atol=1e-5)


# ----------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------


def test_segment_ids_equal_the_block_diagonal_attention_mask():
    import numpy as np

    from keras_attention import TransformerEncoder

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    ids = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]], "int32")
    block = TransformerEncoder(16, 2, use_attention_sinks=True)
    got = block(x, segment_ids=ids)
    want = block(x, attention_mask=ids[:, :, None] == ids[:, None, :])
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got),
        keras.ops.convert_to_numpy(want),
        atol=1e-5,
    )
    assert block.get_config()["use_attention_sinks"] is True
