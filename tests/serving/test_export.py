"""`export_saved_model`: layout, versions, atomic writes, signatures, masks,
warm-up and the three reload paths."""

import os

import keras
import numpy as np
import pytest

import keras_attention as ka
from keras_attention import serving
from keras_attention.serving import _export
from tests.serving.helpers import masked_model
from tests.serving.helpers import ragged_tokens
from tests.serving.helpers import tree
from tests.serving.helpers import two_input_model

tf = pytest.importorskip("tensorflow")
pytestmark = pytest.mark.tensorflow_only


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """One export of `masked_model`, shared by the read-only tests."""
    keras.utils.set_random_seed(7)
    model = masked_model()
    rng = np.random.default_rng(3)
    warmup = [
        {"tokens": ragged_tokens(rng, [3, 5, 1])},
        {"tokens": ragged_tokens(rng, [7])},
    ]
    base = tmp_path_factory.mktemp("export") / "masked"
    path = serving.export_saved_model(model, base, warmup_inputs=warmup)
    return model, path, warmup


def _signature(path, name="serving_default"):
    return tf.saved_model.load(path).signatures[name]


# -- layout and versions -----------------------------------------------------
def test_variables_are_stored_once(exported):
    """variables/ holds each weight once (Keras' `track` lists them a
    second time, beside the endpoints' own `_all_variables`)."""
    model, path, _ = exported
    reader = tf.train.load_checkpoint(
        os.path.join(path, "variables", "variables")
    )
    stored = sum(
        int(np.prod(shape))
        for name, shape in reader.get_variable_to_shape_map().items()
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH"
    )
    assert stored == sum(int(np.prod(v.shape)) for v in model.variables)


def test_layout_is_tf_serving_layout(exported):
    _, path, _ = exported
    assert os.path.basename(path) == "1"
    for name in ("saved_model.pb", "variables", "assets", "assets.extra"):
        assert os.path.exists(os.path.join(path, name)), name
    assert os.listdir(os.path.join(path, "variables"))
    # Nothing but the version folder lives in the base path.
    assert os.listdir(os.path.dirname(path)) == ["1"]


def test_versions_count_up_from_the_largest(tmp_path):
    model = two_input_model()
    base = tmp_path / "m"
    os.makedirs(base / "7")  # an older version
    os.makedirs(base / "notes")  # not a version: ignored
    (base / "12").write_text("a file, not a version")
    assert os.path.basename(serving.export_saved_model(model, base)) == "8"
    assert os.path.basename(serving.export_saved_model(model, base)) == "9"
    path = serving.export_saved_model(model, base, version=42)
    assert os.path.basename(path) == "42"
    assert _export.existing_versions(str(base)) == [7, 8, 9, 42]
    # Version 0 is a TF Serving version too (it reads names as int64).
    path = serving.export_saved_model(model, base, version=0)
    assert _export.existing_versions(str(base)) == [0, 7, 8, 9, 42]


def test_existing_version_is_not_overwritten_unless_asked(tmp_path, rng):
    base = tmp_path / "m"
    first = two_input_model()
    path = serving.export_saved_model(first, base, version=3)
    before = tree(path)
    second = two_input_model()  # different random weights
    with pytest.raises(FileExistsError, match="Version 3 already exists"):
        serving.export_saved_model(second, base, version=3)
    assert tree(path) == before
    tokens = ragged_tokens(rng, [4, 2])
    memory = rng.normal(size=(2, 5, 6)).astype("float32")
    got = _signature(path)(tokens=tokens, memory=memory)["score"]
    np.testing.assert_allclose(got, first.predict([tokens, memory]), atol=1e-5)

    serving.export_saved_model(second, base, version=3, overwrite=True)
    got = _signature(path)(tokens=tokens, memory=memory)["score"]
    np.testing.assert_allclose(got, second.predict([tokens, memory]), atol=1e-5)
    assert sorted(os.listdir(tmp_path)) == ["m"]  # no temporary leftovers
    assert os.listdir(base) == ["3"]


class _Injected(RuntimeError):
    pass


@pytest.mark.parametrize("stage", ["saved_model", "assets_extra", "rename"])
def test_failure_mid_write_leaves_base_path_as_before(
    tmp_path, monkeypatch, stage
):
    model = two_input_model()
    base = tmp_path / "m"
    serving.export_saved_model(model, base)  # version 1 exists
    before = tree(tmp_path)
    if stage == "saved_model":
        real = tf.saved_model.save

        def partial_save(obj, export_dir, *args, **kwargs):
            real(obj, export_dir, *args, **kwargs)
            os.remove(os.path.join(export_dir, "saved_model.pb"))
            raise _Injected("disk full")

        monkeypatch.setattr(tf.saved_model, "save", partial_save)
    elif stage == "assets_extra":
        real_write = _export._write_assets_extra

        def write_then_fail(path, *args):
            real_write(path, *args)
            raise _Injected("killed while writing assets.extra")

        monkeypatch.setattr(_export, "_write_assets_extra", write_then_fail)
    else:

        def fail_rename(src, dst):
            raise _Injected("rename failed")

        monkeypatch.setattr(_export.os, "rename", fail_rename)
    with pytest.raises(_Injected):
        serving.export_saved_model(model, base)
    assert tree(tmp_path) == before


def test_failed_overwrite_keeps_the_old_version(tmp_path, monkeypatch, rng):
    base = tmp_path / "m"
    model = two_input_model()
    path = serving.export_saved_model(model, base, version=1)
    before = tree(tmp_path)
    real_rename = os.rename
    calls = []

    def second_rename_fails(src, dst):
        calls.append((src, dst))
        if len(calls) == 2:  # old version moved aside; now the new one
            raise _Injected("rename of the new version failed")
        real_rename(src, dst)

    monkeypatch.setattr(_export.os, "rename", second_rename_fails)
    with pytest.raises(_Injected):
        serving.export_saved_model(
            two_input_model(), base, version=1, overwrite=True
        )
    monkeypatch.undo()
    assert tree(tmp_path) == before
    tokens = ragged_tokens(rng, [3])
    memory = rng.normal(size=(1, 2, 6)).astype("float32")
    got = _signature(path)(tokens=tokens, memory=memory)["score"]
    np.testing.assert_allclose(got, model.predict([tokens, memory]), atol=1e-5)


# -- signatures ----------------------------------------------------------------
def test_signature_has_named_inputs_and_dict_outputs(exported):
    _, path, _ = exported
    sig = _signature(path)
    inputs = sig.structured_input_signature[1]
    assert list(inputs) == ["tokens"]
    assert inputs["tokens"].dtype == tf.int32
    assert inputs["tokens"].shape.as_list() == [None, None]
    outputs = sig.structured_outputs
    assert sorted(outputs) == ["per_token", "per_token_mask", "probabilities"]
    assert outputs["probabilities"].shape.as_list() == [None, 3]
    assert outputs["per_token"].shape.as_list() == [None, None, 2]


@pytest.mark.parametrize("batch,width", [(1, 3), (5, 9), (2, 40)])
def test_dynamic_batch_and_length_match_keras(exported, batch, width):
    model, path, _ = exported
    rng = np.random.default_rng(batch * width)
    lengths = rng.integers(1, width + 1, size=batch)
    lengths[0] = width
    tokens = ragged_tokens(rng, lengths, width)
    got = _signature(path)(tokens=tf.constant(tokens))
    probabilities, per_token = model(tokens)
    np.testing.assert_allclose(got["probabilities"], probabilities, atol=1e-6)
    np.testing.assert_allclose(got["per_token"], per_token, atol=1e-6)
    np.testing.assert_array_equal(got["per_token_mask"], tokens != 0)


def test_masks_survive_the_export(exported):
    """A ragged batch: each row's outputs ignore the padding, as in Keras."""
    model, path, _ = exported
    sig = _signature(path)
    rng = np.random.default_rng(11)
    tokens = ragged_tokens(rng, [2, 6, 4], width=6)
    batched = sig(tokens=tf.constant(tokens))
    for i, n in enumerate([2, 6, 4]):
        alone = sig(tokens=tf.constant(tokens[i : i + 1, :n]))
        np.testing.assert_allclose(
            batched["probabilities"][i], alone["probabilities"][0], atol=1e-6
        )
        np.testing.assert_allclose(
            batched["per_token"][i, :n], alone["per_token"][0], atol=1e-6
        )
    # Without the mask the padded rows would differ: prove the test can fail.
    unmasked = model.get_layer("embedding")
    assert unmasked.mask_zero


def test_multiple_inputs_keep_their_names(tmp_path, rng):
    model = two_input_model()
    path = serving.export_saved_model(model, tmp_path / "m")
    sig = _signature(path)
    assert sorted(sig.structured_input_signature[1]) == ["memory", "tokens"]
    assert list(sig.structured_outputs) == ["score"]
    tokens = ragged_tokens(rng, [5, 2, 3])
    memory = rng.normal(size=(3, 4, 6)).astype("float32")
    got = sig(tokens=tokens, memory=memory)["score"]
    np.testing.assert_allclose(got, model.predict([tokens, memory]), atol=1e-5)


def test_extra_signatures_for_raw_inputs(tmp_path, rng):
    """An endpoint that takes encoded PNG bytes next to one taking pixels."""
    pixels = keras.Input((8, 8, 1), dtype="uint8", name="pixels")
    x = keras.layers.Rescaling(1 / 255)(pixels)
    x = keras.layers.Reshape((16, 4))(x)
    import keras_attention as ka

    x = ka.MultiHeadAttention(num_heads=2, key_dim=4)(x, x)
    pooled = ka.AttentionPooling(units=4)(x)
    probabilities = keras.layers.Dense(
        10, activation="softmax", name="probabilities"
    )(pooled)
    model = keras.Model(pixels, probabilities)

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="image_bytes")]
    )
    def from_bytes(image_bytes):
        def decode(data):
            image = tf.io.decode_png(data, channels=1)
            return tf.ensure_shape(image, (8, 8, 1))

        images = tf.map_fn(
            decode,
            image_bytes,
            fn_output_signature=tf.TensorSpec((8, 8, 1), tf.uint8),
        )
        return {"probabilities": model(images, training=False)}

    path = serving.export_saved_model(
        model, tmp_path / "digits", signatures={"serving_bytes": from_bytes}
    )
    images = rng.integers(0, 256, size=(3, 8, 8, 1)).astype("uint8")
    encoded = tf.stack([tf.io.encode_png(image) for image in images])
    loaded = tf.saved_model.load(path)
    by_pixels = loaded.signatures["serving_default"](pixels=images)
    by_bytes = loaded.signatures["serving_bytes"](image_bytes=encoded)
    expected = model.predict(images, verbose=0)
    np.testing.assert_allclose(by_pixels["probabilities"], expected, atol=1e-6)
    np.testing.assert_allclose(by_bytes["probabilities"], expected, atol=1e-6)


# -- warm-up -------------------------------------------------------------------
def test_warmup_records_are_prediction_logs(exported):
    from tensorflow_serving.apis import prediction_log_pb2

    model, path, warmup = exported
    records = list(
        tf.data.TFRecordDataset(
            os.path.join(path, "assets.extra", "tf_serving_warmup_requests")
        ).as_numpy_iterator()
    )
    assert len(records) == len(warmup)
    sig = _signature(path)
    for record, request in zip(records, warmup):
        log = prediction_log_pb2.PredictionLog.FromString(record)
        spec = log.predict_log.request.model_spec
        assert spec.name == "masked"
        assert spec.signature_name == "serving_default"
        inputs = {
            k: tf.make_ndarray(v)
            for k, v in log.predict_log.request.inputs.items()
        }
        assert list(inputs) == ["tokens"]
        np.testing.assert_array_equal(inputs["tokens"], request["tokens"])
        got = sig(**inputs)["probabilities"]
        np.testing.assert_allclose(got, model(inputs["tokens"])[0], atol=1e-6)


def test_sample_request_and_expected_outputs_are_stored(exported):
    import json

    model, path, warmup = exported
    extra = os.path.join(path, "assets.extra")
    with open(os.path.join(extra, "sample_request.json")) as f:
        body = json.load(f)
    np.testing.assert_array_equal(body["inputs"]["tokens"], warmup[0]["tokens"])
    expected = np.load(os.path.join(extra, "expected_outputs.npz"))
    probabilities, per_token = model(warmup[0]["tokens"])
    np.testing.assert_allclose(
        expected["probabilities"], probabilities, atol=1e-6
    )
    np.testing.assert_allclose(expected["per_token"], per_token, atol=1e-6)
    with open(os.path.join(extra, "keras_attention.json")) as f:
        metadata = json.load(f)
    assert metadata["versions"]["tensorflow"] == tf.__version__
    assert "serving_default" in metadata["signatures"]


# -- reload paths --------------------------------------------------------------
def test_reload_with_tfsm_layer_in_a_new_model(exported):
    model, path, _ = exported
    rng = np.random.default_rng(5)
    tokens = ragged_tokens(rng, [4, 1, 6])
    layer = keras.layers.TFSMLayer(path, call_endpoint="serving_default")
    inputs = keras.Input((None,), dtype="int32", name="tokens")
    outputs = layer(inputs)
    wrapper = keras.Model(inputs, outputs["probabilities"])
    np.testing.assert_allclose(
        wrapper.predict(tokens, verbose=0), model(tokens)[0], atol=1e-6
    )


def test_reload_with_tf_saved_model_load(exported):
    model, path, _ = exported
    tokens = ragged_tokens(np.random.default_rng(6), [2, 3])
    got = tf.saved_model.load(path).signatures["serving_default"](
        tokens=tf.constant(tokens)
    )
    np.testing.assert_allclose(
        got["probabilities"], model(tokens)[0], atol=1e-6
    )


def test_keras_file_round_trip_then_export_agree(tmp_path, exported):
    model, path, _ = exported
    model.save(tmp_path / "m.keras")
    reloaded = keras.models.load_model(tmp_path / "m.keras")
    tokens = ragged_tokens(np.random.default_rng(8), [5, 2])
    got = _signature(path)(tokens=tf.constant(tokens))["probabilities"]
    np.testing.assert_allclose(reloaded(tokens)[0], got, atol=1e-6)


# -- errors --------------------------------------------------------------------
@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(version=-1), "`version` must be an integer from 0"),
        (dict(version="2"), "`version` must be an integer from 0"),
        (dict(version=True), "`version` must be an integer from 0"),
        (dict(overwrite="yes"), "`overwrite` must be a bool"),
        (dict(check=1), "`check` must be a bool"),
        (dict(signatures=[1]), "`signatures` must be a dict"),
        (dict(signatures={"x": lambda t: t}), "needs|must be a `tf.function`"),
        (dict(warmup_inputs={"wrong": [[1]]}), "inputs \\['tokens'\\]"),
        (dict(warmup_inputs={"tokens": [1, 2]}), "shape compatible"),
        (dict(warmup_inputs=[]), "non-empty list"),
        (dict(input_signature={"x": 3}), "shape and a dtype"),
    ],
)
def test_bad_arguments_raise_before_writing(tmp_path, kwargs, match):
    model = masked_model()
    with pytest.raises(ValueError, match=match):
        serving.export_saved_model(model, tmp_path / "m", **kwargs)
    assert os.listdir(tmp_path) == []


def test_base_path_must_not_be_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="`base_path` must be a directory"):
        serving.export_saved_model(masked_model(), tmp_path / "f")


def test_signature_must_return_a_dict(tmp_path):
    model = masked_model()

    @tf.function(
        input_signature=[tf.TensorSpec([None, None], tf.int32, name="t")]
    )
    def bare(t):
        return model(t)[0]

    with pytest.raises(ValueError, match="must return a non-empty dict"):
        serving.export_saved_model(
            model, tmp_path / "m", signatures={"bare": bare}
        )
    assert os.listdir(tmp_path) == []


def test_unnamed_tensor_spec_is_rejected(tmp_path):
    model = masked_model()

    @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int32)])
    def fn(t):
        return {"p": model(t)[0]}

    with pytest.raises(ValueError, match="needs a `name`"):
        serving.export_saved_model(model, tmp_path / "m", signatures={"s": fn})


def test_subclassed_model_needs_an_input_signature(tmp_path, rng):
    import keras_attention as ka

    class Tiny(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.attention = ka.MultiHeadAttention(num_heads=1, key_dim=4)
            self.out = keras.layers.Dense(2)

        def call(self, x):
            return self.out(self.attention(x, x))

    model = Tiny()
    x = rng.normal(size=(2, 3, 4)).astype("float32")
    expected = model(x)
    with pytest.raises(ValueError, match="Pass `input_signature"):
        serving.export_saved_model(model, tmp_path / "m")
    path = serving.export_saved_model(
        model,
        tmp_path / "m",
        input_signature={"features": keras.InputSpec(shape=(None, None, 4))},
    )
    got = _signature(path)(features=x)
    assert list(got) == ["outputs"]
    np.testing.assert_allclose(got["outputs"], expected, atol=1e-6)


def test_killed_export_leaves_base_path_as_before(tmp_path):
    """SIGKILL mid-write: no partial version; the next export cleans up."""
    import signal
    import subprocess
    import sys
    import time

    base = tmp_path / "m"
    model = two_input_model()
    serving.export_saved_model(model, base)
    before = tree(base)
    started = tmp_path / "started"
    script = f"""
import time
import keras_attention.serving._export as e
from tests.serving.helpers import two_input_model
real = e._write_assets_extra
def slow(path, *args):
    real(path, *args)
    open({str(started)!r}, "w").close()
    time.sleep(600)
e._write_assets_extra = slow
e.export_saved_model(two_input_model(), {str(base)!r})
"""
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    process = subprocess.Popen([sys.executable, "-c", script], cwd=root)
    try:
        deadline = time.time() + 300
        while not started.exists():
            assert process.poll() is None, "the exporter died early"
            assert time.time() < deadline, "the exporter never got mid-write"
            time.sleep(0.2)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert tree(base) == before
    leftovers = [n for n in os.listdir(tmp_path) if n.startswith(".m.tmp-")]
    assert len(leftovers) == 1  # the killed export's temporary directory
    path = serving.export_saved_model(model, base)
    assert os.path.basename(path) == "2"
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".m.tmp-")]


def test_string_signature_replacing_serving_default(tmp_path):
    """A string-in, string-out `serving_default` with its own inputs: the
    warm-up and the stored expected outputs follow its signature, and the
    checker reads the string outputs back without pickle."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(30, 8, mask_zero=True)(tokens)
    pooled = keras.layers.GlobalAveragePooling1D()(x)
    model = keras.Model(tokens, keras.layers.Dense(2, name="logits")(pooled))

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="text")]
    )
    def from_text(text):
        chars = tf.strings.unicode_decode(text, "UTF-8").to_tensor()
        logits = model(tf.math.floormod(chars, 29) + 1, training=False)
        label = tf.gather(tf.constant(["even", "odd"]), tf.argmax(logits, -1))
        return {"label": label, "logits": logits}

    path = serving.export_saved_model(
        model,
        tmp_path / "m",
        signatures={"serving_default": from_text},
        warmup_inputs={"text": ["abc", "hello world"]},
    )
    expected = np.load(
        os.path.join(path, "assets.extra", "expected_outputs.npz"),
        allow_pickle=False,
    )
    got = _signature(path)(text=tf.constant(["abc", "hello world"]))
    np.testing.assert_array_equal(expected["label"], got["label"].numpy())
    np.testing.assert_allclose(expected["logits"], got["logits"], atol=1e-6)
    result = serving.check(path, capture=True)
    assert result.returncode == 0, result.stdout + result.stderr
    with pytest.raises(ValueError, match=r"inputs \['text'\]"):
        serving.export_saved_model(
            model,
            tmp_path / "m",
            signatures={"serving_default": from_text},
            warmup_inputs={"tokens": [[1, 2]]},
        )


def test_model_with_dropout_exports_without_dropout(tmp_path, rng):
    """Attention dropout (chunked kernels) in training; the signature is the
    inference graph: no random ops, outputs equal `model(x)` every call."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(2, 4, dropout=0.5, seed=1, chunk_size=3)(x, x)
    x = ka.AdditiveAttention(units=4, dropout=0.5, seed=2, chunk_size=3)(x, x)
    score = keras.layers.Dense(1, name="score")(ka.AttentionPooling(4)(x))
    model = keras.Model(tokens, score)
    model.compile("adam", "mse")
    data = rng.integers(1, 20, size=(8, 7)).astype("int32")
    model.fit(data, rng.normal(size=(8, 1)), epochs=1, verbose=0)
    train_a = model(data, training=True)
    train_b = model(data, training=True)
    assert not np.allclose(train_a, train_b)  # dropout was active
    path = serving.export_saved_model(model, tmp_path / "dropout")
    signature = _signature(path)
    graph = signature.graph.as_graph_def()
    ops_used = {node.op for node in graph.node} | {
        node.op
        for function in graph.library.function
        for node in function.node_def
    }
    assert any("MatMul" in op for op in ops_used), ops_used  # the body
    assert not [op for op in ops_used if "Random" in op], ops_used
    for _ in range(2):
        got = signature(tokens=tf.constant(data))["score"]
        np.testing.assert_allclose(got, model(data), atol=1e-6)
