"""Every public layer through Keras' own `model.export` to ONNX, LiteRT and
OpenVINO, run on the format's real runtime and compared with the Keras
model, at two batch sizes and lengths from one export.

- ONNX: onnxruntime, CPU provider.
- LiteRT: the `ai_edge_litert` Interpreter, converted with builtin ops only
  (no Flex delegate, as on a phone).
- OpenVINO: CPU at f32 inference precision.

Each case also asserts which kernel the exported program holds: a `while`
loop for the chunked kernel (an explicit `chunk_size`, or `"auto"` with
unknown lengths, where a `cond` chooses at run time), none for the dense
kernel.
"""

import os

import keras
import numpy as np
import pytest

import keras_attention

pytestmark = pytest.mark.skipif(
    keras.backend.backend() != "tensorflow",
    reason="Keras exports ONNX, LiteRT and OpenVINO from TensorFlow here",
)

FORMATS = {
    "onnx": "model.onnx",
    "litert": "model.tflite",
    "openvino": "model.xml",
}
VOCAB = 11
DIM = 8
# Two calls per export: (batch, length) dynamic in every format.
SHAPES = ((2, 7), (3, 12))


def _ids(name="ids"):
    return keras.Input((None,), dtype="int32", name=name)


def _embedded(ids, name):
    """Token ids -> `(batch, length, DIM)` with a padding mask (id 0)."""
    return keras.layers.Embedding(VOCAB, DIM, mask_zero=True, name=name)(ids)


def mha(chunk_size):
    ids = _ids()
    x = _embedded(ids, "tokens")
    y = keras_attention.MultiHeadAttention(2, 4, chunk_size=chunk_size)(
        x, x, use_causal_mask=True
    )
    return keras.Model(ids, y)


def mha_padding(chunk_size):
    ids = _ids()
    x = _embedded(ids, "tokens")
    y = keras_attention.MultiHeadAttention(2, 4, chunk_size=chunk_size)(x, x)
    return keras.Model(ids, y)


def mha_explicit_mask(chunk_size):
    x = keras.Input((None, DIM), name="x")
    mask = keras.Input((None, None), dtype="bool", name="attention_mask")
    y = keras_attention.MultiHeadAttention(2, 4, chunk_size=chunk_size)(
        x, x, attention_mask=mask
    )
    return keras.Model([x, mask], y)


def gqa(chunk_size):
    ids = _ids()
    x = _embedded(ids, "tokens")
    y = keras_attention.GroupedQueryAttention(
        4, 4, 2, rope_max_wavelength=100, chunk_size=chunk_size
    )(x, x, use_causal_mask=True)
    return keras.Model(ids, y)


def programmable(chunk_size):
    """Packed documents (segment ids an input), a registered `score_mod`
    and trained attention sinks."""
    from tests import mods

    ids = _ids()
    segments = _ids("segment_ids")
    x = _embedded(ids, "tokens")
    layer = keras_attention.MultiHeadAttention(
        2,
        4,
        chunk_size=chunk_size,
        score_mod=mods.distance_penalty,
        use_attention_sinks=True,
    )
    y = layer(
        x,
        x,
        use_causal_mask=True,
        query_segment_ids=segments,
        key_segment_ids=segments,
    )
    layer.sinks.assign([0.5, -1.0])
    return keras.Model([ids, segments], y)


def additive(chunk_size):
    query_ids, value_ids = _ids("query_ids"), _ids("value_ids")
    query = _embedded(query_ids, "query_tokens")
    value = _embedded(value_ids, "value_tokens")
    y = keras_attention.AdditiveAttention(6, chunk_size=chunk_size)(
        query, value
    )
    return keras.Model([query_ids, value_ids], y)


def attention_pooling(chunk_size):
    del chunk_size
    ids = _ids()
    y = keras_attention.AttentionPooling(6, num_heads=2)(
        _embedded(ids, "tokens")
    )
    return keras.Model(ids, y)


def encoder(chunk_size):
    ids = _ids()
    x = _embedded(ids, "tokens")
    y = keras_attention.TransformerEncoder(
        16, 2, activation="gelu", chunk_size=chunk_size
    )(x)
    return keras.Model(ids, y)


def decoder(chunk_size):
    ids, encoder_ids = _ids(), _ids("encoder_ids")
    x = _embedded(ids, "tokens")
    memory = _embedded(encoder_ids, "encoder_tokens")
    y = keras_attention.TransformerDecoder(16, 2, chunk_size=chunk_size)(
        x, memory
    )
    return keras.Model([ids, encoder_ids], y)


def positions(layer):
    def build(chunk_size):
        del chunk_size
        x = keras.Input((None, DIM), name="x")
        return keras.Model(x, layer()(x))

    return build


def patches(chunk_size):
    del chunk_size
    images = keras.Input((None, None, 3), name="images")
    y = keras_attention.PatchEmbedding(2, DIM)(images)
    return keras.Model(images, y)


# name: (build(chunk_size), the chunk sizes to export). "auto" with unknown
# lengths holds both kernels behind a run-time `cond`; 4 is the chunked
# kernel alone.
CASES = {
    "mha": (mha, ("auto", 4)),
    "mha_padding": (mha_padding, ("auto",)),
    "mha_explicit_mask": (mha_explicit_mask, ("auto", 4)),
    "gqa_rope": (gqa, ("auto", 4)),
    "mha_programmable": (programmable, ("auto", 4)),
    "additive": (additive, ("auto", 4)),
    "attention_pooling": (attention_pooling, (None,)),
    "encoder": (encoder, ("auto", 4)),
    "decoder_cross": (decoder, (4,)),
    "rotary": (positions(keras_attention.RotaryEmbedding), (None,)),
    "position": (
        positions(lambda: keras_attention.PositionEmbedding(16)),
        (None,),
    ),
    "sinusoidal": (
        positions(keras_attention.SinusoidalPositionEncoding),
        (None,),
    ),
    "patches": (patches, (None,)),
}


def _sample(model, batch, length, rng):
    """Inputs by name: token ids with padding at the end of some rows."""
    inputs = {}
    for x in model.inputs:
        if x.name == "images":
            value = rng.normal(size=(batch, 2 * length, 6, 3))
        elif x.name == "segment_ids":  # packed documents, in order
            value = np.sort(rng.integers(0, 3, size=(batch, length)), axis=1)
        elif x.dtype == "bool":
            value = rng.random((batch, length, length)) < 0.7
            value[0, 1] = False  # a fully masked row
        elif "int" in x.dtype:
            value = rng.integers(1, VOCAB, size=(batch, length))
            value[0, length // 2 :] = 0  # padding
        else:
            value = rng.normal(size=(batch, length, DIM))
        inputs[x.name] = value.astype(x.dtype)
    return inputs


def _args(sample):
    values = list(sample.values())
    return values[0] if len(values) == 1 else values


def _export(model, path, fmt):
    options = {}
    if fmt == "litert":
        import tensorflow as tf

        # Builtins only: what passes runs on a phone's interpreter.
        options["target_spec"] = {
            "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]
        }
    model.export(path, format=fmt, verbose=False, **options)


PARAMS = [
    pytest.param(name, chunk_size, fmt, id=f"{name}-{chunk_size}-{fmt}")
    for name, (_, sizes) in CASES.items()
    for chunk_size in sizes
    for fmt in FORMATS
]


@pytest.mark.parametrize("name, chunk_size, fmt", PARAMS)
def test_export_runs_on_its_runtime(name, chunk_size, fmt, tmp_path):
    from keras_attention.serving import _runtimes

    for module in _runtimes.FORMATS[fmt][1]:
        pytest.importorskip(module)
    keras.utils.set_random_seed(0)
    build, _ = CASES[name]
    model = build(chunk_size)
    rng = np.random.default_rng(0)
    samples = [_sample(model, b, n, rng) for b, n in SHAPES]
    expected = [np.asarray(model(_args(s))) for s in samples]
    path = os.fspath(tmp_path / FORMATS[fmt])
    _export(model, path, fmt)
    for sample, want in zip(samples, expected):
        (got,) = _runtimes.run_exported(path, sample, num_outputs=1)
        np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)
    ops = _runtimes.op_types(path)
    loops, branches = (
        ops & _runtimes.LOOP_OPS[fmt],
        ops & _runtimes.BRANCH_OPS[fmt],
    )
    if chunk_size is None:  # no attention kernel: straight-line code
        assert not loops and not branches, ops
    elif chunk_size == "auto":
        # Unknown lengths: both kernels, chosen at run time (these small
        # inputs take the dense one; chunk_size=4 runs the chunked one).
        assert branches, f"no run-time choice of kernel in {sorted(ops)}"
    else:
        assert loops and not branches, f"not the chunked kernel: {sorted(ops)}"


def test_programmable_saved_model_serves_equal_outputs(tmp_path):
    """The same model as a SavedModel: `serving.export_model` checks it in
    the isolated checker (no Python op, no XLA-only op, keras_attention
    not importable there), and TensorFlow's loader serves the Keras
    model's outputs at other shapes."""
    import tensorflow as tf

    from keras_attention import serving

    keras.utils.set_random_seed(0)
    model = programmable(4)
    rng = np.random.default_rng(0)
    first, second = (_sample(model, b, n, rng) for b, n in SHAPES)
    path = serving.export_model(
        model, os.fspath(tmp_path / "model"), sample_inputs=first
    )
    served = tf.saved_model.load(path).signatures["serving_default"]
    outputs = served(**{k: tf.constant(v) for k, v in second.items()})
    got = outputs[model.output_names[0]]
    want = np.asarray(model(_args(second)))
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)
