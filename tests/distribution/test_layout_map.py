"""`keras_attention.distribution.layout_map`, read on meshes of named devices
(no devices are needed to read a layout). The sharded runs themselves are in
`test_model_parallel.py`."""

import re

import keras
import numpy as np
import pytest

import keras_attention
from keras_attention.distribution import layout_map


def _mesh(shape, axes=("batch", "model")):
    devices = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, axes, devices)


def _model(kv_heads=2):
    """Our blocks next to a user's own layers named like our sublayers."""
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(40, 16, name="tokens")(inputs)
    x = keras_attention.TransformerDecoder(
        32, 8, num_key_value_heads=kv_heads, name="decoder"
    )(x)
    x = keras.layers.Dense(16, name="query")(x)
    x = keras.layers.Dense(16, name="feedforward_output_dense")(x)
    x = keras_attention.MultiHeadAttention(4, 4, use_gate=True, name="mha")(
        x, x
    )
    return keras.Model(inputs, x)


def _axes(layouts, model):
    return {
        v.path: (layouts[v.path].axes if layouts[v.path] is not None else None)
        for v in model.weights
    }


def test_shards_heads_feedforward_and_embeddings_and_nothing_else():
    model = _model()
    axes = _axes(layout_map(_mesh((2, 4)), model), model)
    m = "model"
    expected = {
        "tokens/embeddings": (m, None),
        "decoder/self_attention/query/kernel": (None, m, None),
        "decoder/self_attention/query/bias": (m, None),
        # 2 key/value heads on a model axis of 4: replicated.
        "decoder/self_attention/key/kernel": (None, None, None),
        "decoder/self_attention/key/bias": (None, None),
        "decoder/self_attention/value/kernel": (None, None, None),
        "decoder/self_attention/value/bias": (None, None),
        "decoder/self_attention/attention_output/kernel": (m, None, None),
        "decoder/feedforward_intermediate_dense/kernel": (None, m),
        "decoder/feedforward_intermediate_dense/bias": (m,),
        "decoder/feedforward_output_dense/kernel": (m, None),
        "mha/query/kernel": (None, m, None),
        "mha/query/bias": (m, None),
        "mha/gate/kernel": (None, m, None),
        "mha/gate/bias": (m, None),
        "mha/key/kernel": (None, m, None),
        "mha/key/bias": (m, None),
        "mha/value/kernel": (None, m, None),
        "mha/value/bias": (m, None),
        "mha/attention_output/kernel": (m, None, None),
    }
    sharded = {path: a for path, a in axes.items() if a is not None}
    assert sharded == expected
    # The user's `query` and `feedforward_output_dense`, layer norms and
    # output biases are not in the map: replicated.
    assert axes["query/kernel"] is None
    assert axes["feedforward_output_dense/kernel"] is None
    assert axes["decoder/self_attention/attention_output/bias"] is None


def test_key_value_heads_are_sharded_when_the_model_axis_divides_them():
    model = _model(kv_heads=4)
    axes = _axes(layout_map(_mesh((2, 4)), model), model)
    assert axes["decoder/self_attention/key/kernel"] == (None, "model", None)
    assert axes["decoder/self_attention/value/bias"] == ("model", None)


def test_fsdp_also_shards_the_model_dimension_on_the_batch_axis():
    model = _model(kv_heads=4)
    axes = _axes(layout_map(_mesh((2, 4)), model, fsdp=True), model)
    b, m = "batch", "model"
    assert axes["decoder/self_attention/query/kernel"] == (b, m, None)
    assert axes["decoder/self_attention/attention_output/kernel"] == (
        m,
        None,
        b,
    )
    assert axes["decoder/feedforward_intermediate_dense/kernel"] == (b, m)
    assert axes["decoder/feedforward_output_dense/kernel"] == (m, b)
    assert axes["tokens/embeddings"] == (m, b)


def test_embeddings_can_be_left_replicated():
    model = _model()
    axes = _axes(layout_map(_mesh((2, 4)), model, embeddings=False), model)
    assert axes["tokens/embeddings"] is None


def test_vocabulary_the_model_axis_does_not_divide_is_replicated():
    inputs = keras.Input((6,), dtype="int32")
    x = keras.layers.Embedding(30, 16, name="tokens")(inputs)
    model = keras.Model(inputs, keras_attention.TransformerEncoder(8, 4)(x))
    axes = _axes(layout_map(_mesh((1, 4)), model), model)
    assert axes["tokens/embeddings"] == (None, None)


@pytest.mark.parametrize("names", [("data", "tp"), ("tp", "data")])
def test_axis_names_are_arguments(names):
    model = _model()
    layouts = layout_map(
        _mesh((2, 4) if names[1] == "tp" else (4, 2), names),
        model,
        model_axis="tp",
        batch_axis="data",
        fsdp=True,
    )
    axes = _axes(layouts, model)
    assert axes["decoder/self_attention/query/kernel"] == ("data", "tp", None)


def test_keys_are_exact_paths():
    """Every key matches its own path only, never another variable's."""
    model = _model()
    layouts = layout_map(_mesh((2, 4)), model)
    paths = [v.path for v in model.weights]
    for key in layouts:
        assert [p for p in paths if re.fullmatch(key, p)] == [key]
