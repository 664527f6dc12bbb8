"""`keras_attention.compat.tfa.MultiHeadAttention` against tfa's formulas."""

import keras
import numpy as np
import pytest

from keras_attention.compat import tfa
from tests.compat import tfa_numpy
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import to_numpy

B, N, M = 2, 5, 4


def _randomize(layer, rng):
    """Non-trivial weights, including a non-zero projection bias."""
    layer.set_weights(
        [rng.normal(scale=0.5, size=w.shape) for w in layer.weights]
    )


def _reference(layer, inputs, mask=None):
    weights = layer.get_weights()
    bias = weights[4] if layer.use_projection_bias else None
    query, key = inputs[0], inputs[1]
    value = inputs[2] if len(inputs) == 3 else key
    return tfa_numpy.multi_head_attention(
        query, key, value, *weights[:4], projection_bias=bias, mask=mask
    )


def _mask(rng, shape, empty_row=False):
    mask = (rng.random(shape) > 0.4).astype("float32")
    mask[..., 0] = 1.0
    if empty_row:
        mask[(0,) * (len(shape) - 2) + (1,)] = 0.0
    return mask


CASES = {
    # id: (init kwargs, input shapes, mask shape or None, empty row)
    "self_attention": (
        dict(head_size=4, num_heads=3),
        [(B, N, 6), (B, N, 6)],
        None,
        False,
    ),
    "query_key_value": (
        dict(head_size=4, num_heads=3),
        [(B, N, 6), (B, M, 7), (B, M, 3)],
        None,
        False,
    ),
    "mask_3d": (
        dict(head_size=4, num_heads=2),
        [(B, N, 6), (B, M, 7), (B, M, 3)],
        (B, N, M),
        False,
    ),
    "mask_2d": (
        dict(head_size=2, num_heads=2),
        [(B, N, 6), (B, M, 7)],
        (N, M),
        False,
    ),
    "mask_per_head": (
        dict(head_size=4, num_heads=3),
        [(B, N, 6), (B, M, 7), (B, M, 3)],
        (B, 3, N, M),
        False,
    ),
    "mask_fully_masked_row": (
        dict(head_size=4, num_heads=2),
        [(B, N, 6), (B, M, 7), (B, M, 3)],
        (B, N, M),
        True,
    ),
    "output_size": (
        dict(head_size=3, num_heads=2, output_size=9),
        [(B, N, 6), (B, M, 7), (B, M, 3)],
        (B, N, M),
        False,
    ),
    "no_projection_bias": (
        dict(head_size=3, num_heads=2, use_projection_bias=False),
        [(B, N, 6), (B, M, 7), (B, M, 3)],
        (B, N, M),
        False,
    ),
    "no_bias_output_size": (
        dict(
            head_size=5, num_heads=1, output_size=2, use_projection_bias=False
        ),
        [(B, N, 6), (B, M, 7)],
        None,
        False,
    ),
    "rank4_inputs": (
        dict(head_size=3, num_heads=2, output_size=4),
        [(B, 3, N, 6), (B, 3, M, 7)],
        (B, 3, N, M),
        True,
    ),
}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_matches_numpy_reference(case, rng):
    init, shapes, mask_shape, empty_row = CASES[case]
    layer = tfa.MultiHeadAttention(**init, return_attn_coef=True)
    inputs = [rng.normal(size=s).astype("float32") for s in shapes]
    mask = None
    if mask_shape is not None:
        mask = _mask(rng, mask_shape, empty_row)
    layer(inputs, mask=mask)
    _randomize(layer, rng)
    output, coef = layer(inputs, mask=mask)
    expected_output, expected_coef = _reference(layer, inputs, mask)
    np.testing.assert_allclose(to_numpy(coef), expected_coef, atol=1e-6)
    np.testing.assert_allclose(to_numpy(output), expected_output, atol=1e-5)
    if mask is not None:
        # Masked keys get a weight of exactly zero (rows with a valid key).
        full = np.broadcast_to(
            mask if mask.ndim == coef.ndim else np.expand_dims(mask, -3),
            coef.shape,
        )
        has_key = full.any(-1, keepdims=True)
        assert np.all(to_numpy(coef)[(full == 0) & has_key] == 0.0)


def test_fully_masked_row_is_uniform_as_in_tfa(rng):
    layer = tfa.MultiHeadAttention(
        head_size=2, num_heads=2, return_attn_coef=True
    )
    query = rng.normal(size=(1, 2, 3)).astype("float32")
    key = rng.normal(size=(1, 4, 3)).astype("float32")
    mask = np.array([[[1, 0, 1, 0], [0, 0, 0, 0]]], "float32")
    _, coef = layer([query, key], mask=mask)
    np.testing.assert_allclose(to_numpy(coef)[0, :, 1], 0.25, atol=1e-7)
    assert np.all(to_numpy(coef)[0, :, 0, [1, 3]] == 0.0)


def test_exact_values_tiny():
    # One head of size 1, identity projections: logits [0, ln 3] give weights
    # [1/4, 3/4]; values [2, 6] give 5, plus the bias 1.
    layer = tfa.MultiHeadAttention(head_size=1, num_heads=1)
    query = np.array([[[1.0]]], "float32")
    key = np.array([[[0.0], [np.log(3.0)]]], "float32")
    value = np.array([[[2.0], [6.0]]], "float32")
    layer([query, key, value])
    layer.set_weights(
        [np.ones((1, 1, 1))] * 4 + [np.ones((1,))]  # kernels, bias
    )
    np.testing.assert_allclose(
        to_numpy(layer([query, key, value])), [[[6.0]]], atol=1e-6
    )
    # Masking the second key leaves only the first: 2 + 1.
    mask = np.array([[[1.0, 0.0]]], "float32")
    np.testing.assert_allclose(
        to_numpy(layer([query, key, value], mask=mask)), [[[3.0]]], atol=1e-6
    )


def test_weights_have_tfas_names_order_and_shapes():
    layer = tfa.MultiHeadAttention(head_size=4, num_heads=3, output_size=9)
    layer([np.zeros((1, 2, 6)), np.zeros((1, 3, 7)), np.zeros((1, 3, 5))])
    assert [(w.name, tuple(w.shape)) for w in layer.weights] == [
        ("query_kernel", (3, 6, 4)),
        ("key_kernel", (3, 7, 4)),
        ("value_kernel", (3, 5, 4)),
        ("projection_kernel", (3, 4, 9)),
        ("projection_bias", (9,)),
    ]
    no_bias = tfa.MultiHeadAttention(2, 2, use_projection_bias=False)
    no_bias([np.zeros((1, 2, 6)), np.zeros((1, 3, 7))])
    assert [w.name for w in no_bias.weights] == [
        "query_kernel",
        "key_kernel",
        "value_kernel",
        "projection_kernel",
    ]


@pytest.mark.parametrize(
    "shapes, expected",
    [([(1, 2, 6), (1, 3, 7), (1, 3, 5)], 5), ([(1, 2, 6), (1, 3, 7)], 7)],
    ids=["value_dim", "key_dim_without_value"],
)
def test_default_output_size_is_tfas(shapes, expected):
    # tfa defaults to the value's size, not the query's (Keras core's).
    layer = tfa.MultiHeadAttention(head_size=2, num_heads=2)
    output = layer([np.zeros(s, "float32") for s in shapes])
    assert output.shape == (1, 2, expected)


def test_return_attn_coef_off_returns_one_tensor(rng):
    layer = tfa.MultiHeadAttention(head_size=2, num_heads=2)
    output = layer([rng.normal(size=(2, 3, 4)), rng.normal(size=(2, 5, 4))])
    assert not isinstance(output, (tuple, list))
    assert output.shape == (2, 3, 4)


@pytest.mark.parametrize("return_attn_coef", [False, True], ids=["out", "coef"])
def test_symbolic_shapes_match_eager(return_attn_coef, rng):
    init = dict(head_size=3, num_heads=2, return_attn_coef=return_attn_coef)
    query = keras.Input((None, 6))
    key = keras.Input((None, 7))
    mask = keras.Input((None, None))
    symbolic = tfa.MultiHeadAttention(**init)([query, key], mask=mask)
    data = [
        rng.normal(size=(2, 8, 6)).astype("float32"),
        rng.normal(size=(2, 5, 7)).astype("float32"),
        np.ones((2, 8, 5), "float32"),
    ]
    layer = tfa.MultiHeadAttention(**init)
    eager = layer(data[:2], mask=data[2])
    symbolic = symbolic if return_attn_coef else (symbolic,)
    eager = eager if return_attn_coef else (eager,)
    assert [tuple(s.shape) for s in symbolic] == [
        (None, None, 7),
        (None, 2, None, None),
    ][: len(symbolic)]
    assert [tuple(e.shape) for e in eager] == [(2, 8, 7), (2, 2, 8, 5)][
        : len(eager)
    ]
    shapes = layer.compute_output_shape([(2, 8, 6), (2, 5, 7)])
    shapes = shapes if return_attn_coef else (shapes,)
    assert [tuple(s) for s in shapes] == [tuple(e.shape) for e in eager]


def test_layer_harness(rng):
    layer = run_layer_test(
        tfa.MultiHeadAttention,
        dict(
            head_size=3,
            num_heads=2,
            output_size=5,
            dropout=0.25,
            use_projection_bias=False,
            return_attn_coef=True,
            kernel_regularizer="l2",
            bias_initializer="ones",
            seed=7,
        ),
        {"inputs": [(B, N, 6), (B, M, 7)]},
        expected_output_shapes=[(B, N, 5), (B, 2, N, M)],
        expected_num_trainable_weights=4,
        expected_num_non_trainable_variables=1,  # the dropout's seed
        rng=rng,
    )
    assert (
        keras.saving.serialize_keras_object(layer)["registered_name"]
        == "keras_attention.compat.tfa>MultiHeadAttention"
    )


def test_tfa_registered_name_deserializes_to_compat_layer():
    # As tf.keras 2 wrote it (no "module"), and as Keras 3 would name it.
    config = {
        "name": "mha",
        "trainable": True,
        "dtype": "float32",
        "head_size": 4,
        "num_heads": 2,
        "output_size": None,
        "dropout": 0.1,
        "use_projection_bias": True,
        "return_attn_coef": False,
        "kernel_initializer": {
            "class_name": "GlorotUniform",
            "config": {"seed": None},
        },
        "kernel_regularizer": None,
        "kernel_constraint": None,
        "bias_initializer": {"class_name": "Zeros", "config": {}},
        "bias_regularizer": None,
        "bias_constraint": None,
    }
    legacy = {"class_name": "Addons>MultiHeadAttention", "config": config}
    layer = keras.layers.deserialize(legacy)
    assert type(layer) is tfa.MultiHeadAttention
    assert (layer.head_size, layer.num_heads, layer.dropout) == (4, 2, 0.1)
    modern = {
        "module": "tensorflow_addons.layers.multihead_attention",
        "class_name": "MultiHeadAttention",
        "config": config,
        "registered_name": "Addons>MultiHeadAttention",
    }
    assert type(keras.saving.deserialize_keras_object(modern)) is (
        tfa.MultiHeadAttention
    )


def _masked_model():
    query = keras.Input((None, 6), name="query")
    key = keras.Input((None, 7), name="key")
    mask = keras.Input((None, None), name="mask")
    x = tfa.MultiHeadAttention(
        head_size=3, num_heads=2, dropout=0.1, seed=1, name="mha"
    )([query, key], mask=mask)
    return keras.Model([query, key, mask], keras.layers.Dense(2)(x))


def _model_data(rng, batch):
    return [
        rng.normal(size=(batch, 5, 6)).astype("float32"),
        rng.normal(size=(batch, 4, 7)).astype("float32"),
        _mask(rng, (batch, 5, 4), empty_row=True),
    ]


def test_saving(tmp_path, rng):
    run_saving_test(
        _masked_model(),
        lambda b: _model_data(rng, b),
        tmp_path,
        layer_types=[tfa.MultiHeadAttention],
    )


def test_fit_step_changes_every_weight(rng):
    model = _masked_model()
    data = _model_data(rng, 4)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [w.numpy() for w in model.trainable_weights]
    model.fit(data, rng.normal(size=(4, 5, 2)), epochs=1, verbose=0)
    after = [w.numpy() for w in model.trainable_weights]
    assert all(not np.allclose(b, a) for b, a in zip(before, after))


def test_dropout_only_in_training_and_coef_before_dropout(rng):
    inputs = [rng.normal(size=(2, 6, 4)).astype("float32")] * 2
    layer = tfa.MultiHeadAttention(
        head_size=4, num_heads=2, dropout=0.5, return_attn_coef=True, seed=3
    )
    out_infer, coef_infer = layer(inputs)
    out_train, coef_train = layer(inputs, training=True)
    assert not np.allclose(to_numpy(out_train), to_numpy(out_infer))
    np.testing.assert_allclose(to_numpy(coef_train), to_numpy(coef_infer))
    expected, _ = _reference(layer, inputs)
    np.testing.assert_allclose(to_numpy(out_infer), expected, atol=1e-5)


def test_keras_masks_exclude_padded_keys(rng):
    # tfa could not take Keras masks; here they exclude the padded keys, and
    # the output carries the query's mask.
    tokens = keras.Input((None,), dtype="int32")
    x = keras.layers.Embedding(10, 6, mask_zero=True)(tokens)
    layer = tfa.MultiHeadAttention(head_size=3, num_heads=2)
    y = layer([x, x])
    assert y._keras_mask is not None
    model = keras.Model(tokens, y)
    ids = np.array([[3, 4, 5, 0, 0], [1, 2, 3, 4, 6]], "int32")
    got = model.predict(ids, verbose=0)
    embedded = to_numpy(model.layers[1](ids))
    mask = np.broadcast_to((ids != 0)[:, None, :], (2, 5, 5))
    expected, _ = _reference(layer, [embedded, embedded], mask)
    np.testing.assert_allclose(got, expected, atol=1e-5)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
def test_mixed_precision(policy, rng):
    inputs = [
        rng.normal(size=(2, 5, 6)).astype("float32"),
        rng.normal(size=(2, 4, 7)).astype("float32"),
    ]
    mask = _mask(rng, (2, 5, 4), empty_row=True)
    full = tfa.MultiHeadAttention(
        head_size=3, num_heads=2, return_attn_coef=True
    )
    expected = full(inputs, mask=mask)
    mixed = tfa.MultiHeadAttention(
        head_size=3, num_heads=2, return_attn_coef=True, dtype=policy
    )
    mixed(inputs, mask=mask)
    mixed.set_weights(full.get_weights())
    output, coef = mixed(inputs, mask=mask)
    compute = policy.split("_")[1]
    for x in (output, coef):
        assert keras.backend.standardize_dtype(x.dtype) == compute
    assert all(w.dtype == "float32" for w in mixed.weights)
    tol = 2e-2 if compute == "bfloat16" else 3e-3
    for got, want in zip((output, coef), expected):
        np.testing.assert_allclose(
            to_numpy(got).astype("float32"), to_numpy(want), atol=tol * 5
        )
