"""The compat layers reproduce real tensorflow-addons 0.23 outputs.

`tfa_reference.npz` and the `tfa_mha_*.h5` models were written by
`make_tfa_reference.py` under TensorFlow 2.15 with tensorflow-addons 0.23
(fixed weights and inputs); these tests need neither.
"""

import json
import os

import keras
import numpy as np
import pytest

from keras_attention.compat import tfa
from tests.testing import to_numpy

HERE = os.path.dirname(os.path.abspath(__file__))
ATOL = 1e-6


@pytest.fixture(scope="module")
def ref():
    with np.load(os.path.join(HERE, "tfa_reference.npz")) as data:
        return {k: data[k] for k in data.files}


def _cases(prefix):
    with np.load(os.path.join(HERE, "tfa_reference.npz")) as data:
        return sorted(
            {k.split("/")[0] for k in data.files if k.startswith(prefix)}
        )


def _weights(ref, name):
    count = sum(
        1
        for k in ref
        if k.startswith(f"{name}/weight_") and k.split("_")[-1].isdigit()
    )
    return [ref[f"{name}/weight_{i}"] for i in range(count)]


def _tfa_weight_names(ref, name):
    """tfa's `(name, shape)` list, without the layer prefix and `:0`."""
    return [
        (path.split("/")[-1].split(":")[0], tuple(shape))
        for path, shape in json.loads(str(ref[f"{name}/weight_info"]))
    ]


def test_reference_was_made_with_tfa_0_23(ref):
    versions = json.loads(str(ref["versions"]))
    assert versions["tensorflow_addons"] == "0.23.0"
    assert versions["tensorflow"].startswith("2.15")


@pytest.mark.parametrize("name", _cases("mha_"))
def test_multi_head_attention_reproduces_tfa(ref, name):
    # The config as tf.keras serialized the tfa layer.
    config = json.loads(str(ref[f"{name}/config"]))
    assert config["registered_name"] == "Addons>MultiHeadAttention"
    layer = keras.layers.deserialize(config)
    assert type(layer) is tfa.MultiHeadAttention
    inputs = [
        ref[f"{name}/input_{i}"] for i in range(3) if f"{name}/input_{i}" in ref
    ]
    mask = ref.get(f"{name}/mask")
    layer(inputs, mask=mask)
    assert [
        (w.name, tuple(w.shape)) for w in layer.weights
    ] == _tfa_weight_names(ref, name)
    layer.set_weights(_weights(ref, name))
    result = layer(inputs, mask=mask)
    if layer.return_attn_coef:
        result, coef = result
        np.testing.assert_allclose(
            to_numpy(coef), ref[f"{name}/coef"], rtol=0, atol=ATOL
        )
    np.testing.assert_allclose(
        to_numpy(result), ref[f"{name}/output"], rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("name", _cases("mha_"))
def test_converted_multi_head_attention_matches_tfa(ref, name):
    config = json.loads(str(ref[f"{name}/config"]))["config"]
    config["return_attn_coef"] = True
    compat = tfa.MultiHeadAttention.from_config(config)
    inputs = [
        ref[f"{name}/input_{i}"] for i in range(3) if f"{name}/input_{i}" in ref
    ]
    mask = ref.get(f"{name}/mask")
    compat(inputs, mask=mask)
    compat.set_weights(_weights(ref, name))
    native = tfa.to_keras_attention(compat)
    value = inputs[2] if len(inputs) == 3 else inputs[1]
    output, scores = native(
        inputs[0],
        value,
        key=inputs[1],
        attention_mask=None if mask is None else mask.astype(bool),
        return_attention_scores=True,
    )
    output, scores = to_numpy(output), to_numpy(scores)
    expected = ref[f"{name}/output"]
    rows = np.ones(expected.shape[:-1], bool)  # rows with a valid key
    if mask is not None:
        full = mask if mask.ndim == scores.ndim else mask[..., None, :, :]
        full = np.broadcast_to(full, scores.shape).astype(bool)
        rows = full.any(-1).all(-2)
    assert rows.any()
    np.testing.assert_allclose(output[rows], expected[rows], atol=ATOL)
    if f"{name}/coef" in ref:
        keep = np.broadcast_to(rows[..., None, :, None], scores.shape)
        np.testing.assert_allclose(
            scores[keep], ref[f"{name}/coef"][keep], atol=ATOL
        )


def _bahdanau_masks(ref, name):
    masks = {}
    for key in ("memory_sequence_length", "memory_mask"):
        if f"{name}/{key}" in ref:
            masks[key] = ref[f"{name}/{key}"]
    return masks


@pytest.mark.parametrize("name", _cases("bahdanau_"))
def test_bahdanau_attention_reproduces_tfa(ref, name):
    # tfa's mechanism config, with its `memory` placeholder and its query and
    # memory `Dense` layers.
    config = json.loads(str(ref[f"{name}/config"]))
    layer = tfa.BahdanauAttention.from_config(config)
    query, memory = ref[f"{name}/query"], ref[f"{name}/memory"]
    masks = _bahdanau_masks(ref, name)
    layer(query, memory, **masks)
    shapes = [tuple(w.shape) for w in layer.weights]
    assert shapes == [s for _, s in _tfa_weight_names(ref, name)]
    layer.set_weights(_weights(ref, name))
    context, alignments = layer(query, memory, **masks)
    np.testing.assert_allclose(
        to_numpy(alignments), ref[f"{name}/alignments"], rtol=0, atol=ATOL
    )
    np.testing.assert_allclose(
        to_numpy(context), ref[f"{name}/context"], rtol=0, atol=ATOL
    )


@pytest.mark.parametrize("name", _cases("bahdanau_"))
def test_converted_bahdanau_attention_matches_tfa(ref, name):
    config = json.loads(str(ref[f"{name}/config"]))
    if config["probability_fn"] != "softmax":
        pytest.skip("hardmax has no native equivalent")
    compat = tfa.BahdanauAttention.from_config(config)
    query, memory = ref[f"{name}/query"], ref[f"{name}/memory"]
    masks = _bahdanau_masks(ref, name)
    compat(query, memory, **masks)
    compat.set_weights(_weights(ref, name))
    native = tfa.to_keras_attention(compat)
    length = memory.shape[1]
    mask = None
    if "memory_sequence_length" in masks:
        lengths = masks["memory_sequence_length"]
        mask = np.arange(length)[None] < lengths[:, None]
    elif "memory_mask" in masks:
        mask = masks["memory_mask"]
    context, alignments = native(
        query, memory, value_mask=mask, return_attention_scores=True
    )
    rows = np.ones(len(query), bool) if mask is None else mask.any(-1)
    np.testing.assert_allclose(
        to_numpy(alignments)[rows], ref[f"{name}/alignments"][rows], atol=ATOL
    )
    # Contexts agree on every row: tfa's context of a row with no valid
    # memory position is zero too.
    np.testing.assert_allclose(
        to_numpy(context), ref[f"{name}/context"], atol=ATOL
    )


def test_legacy_h5_model_loads_directly(ref):
    model = keras.models.load_model(
        os.path.join(HERE, "tfa_mha_model_nomask.h5"), compile=False
    )
    assert type(model.get_layer("mha")) is tfa.MultiHeadAttention
    got = model.predict(
        [ref["model_nomask/query"], ref["model_nomask/key"]], verbose=0
    )
    np.testing.assert_allclose(got, ref["model_nomask/output"], atol=ATOL)


def _rebuilt_masked_model():
    query = keras.Input((5, 6), name="query")
    key = keras.Input((4, 7), name="key")
    mask = keras.Input((5, 4), name="mask")
    x = tfa.MultiHeadAttention(head_size=3, num_heads=2, name="mha")(
        [query, key], mask=mask
    )
    y = keras.layers.Dense(2, name="head")(x)
    return keras.Model([query, key, mask], y)


def test_legacy_h5_weights_load_into_a_rebuilt_model(ref):
    # The migration path that needs no tfa environment at all.
    model = _rebuilt_masked_model()
    model.load_weights(os.path.join(HERE, "tfa_mha_model.h5"))
    data = [ref["model/query"], ref["model/key"], ref["model/mask"]]
    np.testing.assert_allclose(
        model.predict(data, verbose=0), ref["model/output"], atol=ATOL
    )


def test_legacy_h5_model_with_mask_input_explains_the_fix(ref):
    # Keras 3's legacy loader does not reconnect `mask=model_input`.
    model = keras.models.load_model(
        os.path.join(HERE, "tfa_mha_model.h5"), compile=False
    )
    data = [ref["model/query"], ref["model/key"], ref["model/mask"]]
    with pytest.raises(ValueError, match=r"model.load_weights\(path\)"):
        model.predict(data, verbose=0)
