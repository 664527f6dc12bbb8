import keras
import numpy as np
import pytest

from keras_attention import MultiHeadAttention
from tests import reference
from tests.testing import run_layer_test
from tests.testing import run_saving_test
from tests.testing import to_numpy


def _weights_dict(layer):
    return {
        "/".join(w.path.split("/")[-2:]): to_numpy(w) for w in layer.weights
    }


def _pair(kwargs, query, value, key=None, **ours_kwargs):
    """Keras core and ours, built on the same shapes, with equal weights."""
    core = keras.layers.MultiHeadAttention(**kwargs)
    ours = MultiHeadAttention(**kwargs, **ours_kwargs)
    # Build through Keras' explicit path: its fused path cannot run
    # value_dim != key_dim under JAX.
    core(query, value, key=key, return_attention_scores=True)
    ours(query, value, key=key)
    ours.set_weights(core.get_weights())
    return core, ours


def _padding(rng, b, length, min_len=1):
    lengths = rng.integers(min_len, length + 1, size=b)
    lengths[0] = length
    return np.arange(length)[None, :] < lengths[:, None]


CORE_CASES = {
    "self": (dict(num_heads=2, key_dim=4), (2, 6, 8), None, None, {}),
    "cross": (dict(num_heads=3, key_dim=5), (2, 8, 8), (2, 5, 6), None, {}),
    "cross_key": (
        dict(num_heads=2, key_dim=4, value_dim=3),
        (2, 8, 8),
        (2, 5, 6),
        (2, 5, 7),
        {},
    ),
    "causal": (
        dict(num_heads=2, key_dim=4),
        (2, 7, 8),
        None,
        None,
        dict(use_causal_mask=True),
    ),
    "causal_cross": (
        dict(num_heads=2, key_dim=4),
        (2, 6, 8),
        (2, 9, 8),
        None,
        dict(use_causal_mask=True),
    ),
    "attention_mask": (
        dict(num_heads=2, key_dim=4),
        (2, 6, 8),
        (2, 5, 8),
        None,
        dict(attention_mask="random"),
    ),
    "value_mask": (
        dict(num_heads=2, key_dim=4),
        (2, 6, 8),
        (2, 5, 8),
        None,
        dict(value_mask="padding"),
    ),
    "no_bias_output_shape": (
        dict(num_heads=2, key_dim=4, use_bias=False, output_shape=(3, 2)),
        (2, 6, 8),
        None,
        None,
        {},
    ),
    "sliding_window": (
        dict(num_heads=2, key_dim=4, sliding_window=3),
        (2, 8, 8),
        None,
        None,
        dict(use_causal_mask=True),
    ),
    "axes_2d": (
        dict(num_heads=2, key_dim=4, attention_axes=(1, 2)),
        (2, 3, 4, 8),
        None,
        None,
        {},
    ),
    "axes_inner": (
        dict(num_heads=2, key_dim=4, attention_axes=2),
        (2, 3, 4, 8),
        (2, 3, 5, 8),
        None,
        {},
    ),
    "axes_outer_negative": (
        dict(num_heads=2, key_dim=4, attention_axes=-3),
        (2, 3, 4, 8),
        None,
        None,
        {},
    ),
}


# (use_gate, our chunk_size): Keras' gated attention on our dense path, and
# on our chunked path (blocks of 3 positions).
VARIANTS = {
    "plain": (False, "auto"),
    "gate": (True, "auto"),
    "gate_chunked": (True, 3),
}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
@pytest.mark.parametrize("case", sorted(CORE_CASES))
def test_matches_keras_core_with_same_weights(rng, case, variant):
    kwargs, q_shape, v_shape, k_shape, call = CORE_CASES[case]
    use_gate, chunk_size = VARIANTS[variant]
    kwargs = dict(kwargs, use_gate=use_gate)
    query = rng.normal(size=q_shape).astype("float32")
    value = (
        query if v_shape is None else rng.normal(size=v_shape).astype("float32")
    )
    key = (
        None if k_shape is None else rng.normal(size=k_shape).astype("float32")
    )
    call = dict(call)
    b, t, s = q_shape[0], q_shape[1], value.shape[1]
    if call.get("attention_mask") == "random":
        mask = rng.random((b, t, s)) > 0.3
        mask[..., 0] = True  # no empty rows: Keras core differs there
        call["attention_mask"] = mask
    if call.get("value_mask") == "padding":
        call["value_mask"] = _padding(rng, b, s)
    core, ours = _pair(kwargs, query, value, key, chunk_size=chunk_size)
    want, want_scores = core(
        query, value, key=key, return_attention_scores=True, **call
    )
    got, got_scores = ours(
        query, value, key=key, return_attention_scores=True, **call
    )
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
    np.testing.assert_allclose(
        to_numpy(got_scores), to_numpy(want_scores), atol=1e-5
    )
    # Without scores we take the same kernel; Keras core switches to its
    # fused path, which under JAX cannot run value_dim != key_dim, so compare
    # with Keras' explicit path above.
    np.testing.assert_allclose(
        to_numpy(ours(query, value, key=key, **call)),
        to_numpy(want),
        atol=1e-5,
    )


@pytest.mark.parametrize("use_gate", [False, True])
def test_same_weight_names_shapes_and_order(rng, use_gate):
    query = rng.normal(size=(2, 4, 8)).astype("float32")
    core, ours = _pair(
        dict(num_heads=2, key_dim=3, value_dim=5, use_gate=use_gate),
        query,
        query,
    )
    core_w = [(w.path.split("/", 1)[1], tuple(w.shape)) for w in core.weights]
    ours_w = [(w.path.split("/", 1)[1], tuple(w.shape)) for w in ours.weights]
    assert core_w == ours_w


def test_query_padding_matches_core_on_valid_rows_and_is_zero_elsewhere(rng):
    query = rng.normal(size=(3, 6, 8)).astype("float32")
    # Non-zero biases: an unzeroed padded row would be the output bias.
    core, ours = _pair(
        dict(num_heads=2, key_dim=4, bias_initializer="random_normal"),
        query,
        query,
    )
    q_mask = _padding(rng, 3, 6, min_len=2)
    want = to_numpy(core(query, query, query_mask=q_mask, value_mask=q_mask))
    got = to_numpy(ours(query, query, query_mask=q_mask, value_mask=q_mask))
    np.testing.assert_allclose(got[q_mask], want[q_mask], atol=1e-5)
    assert np.all(got[~q_mask] == 0.0)


def test_matches_reference_with_bias_and_grouped_query_heads(rng):
    layer = MultiHeadAttention(
        num_heads=4,
        key_dim=3,
        num_key_value_heads=2,
        bias_initializer="random_normal",
    )
    query = rng.normal(size=(2, 5, 6)).astype("float32")
    value = rng.normal(size=(2, 7, 6)).astype("float32")
    bias = rng.normal(size=(2, 5, 7)).astype("float32")
    mask = rng.random((2, 5, 7)) > 0.3
    mask[1, 2] = False  # an empty row
    out, scores = layer(
        query,
        value,
        attention_mask=mask,
        attention_bias=bias,
        return_attention_scores=True,
    )
    weights = _weights_dict(layer)
    assert weights["key/kernel"].shape == (6, 2, 3)
    want, want_scores = reference.mha(
        weights, query, value, mask=mask, bias=bias
    )
    want[1, 2] = 0.0  # fully masked query rows are zeros
    np.testing.assert_allclose(to_numpy(out), want, atol=1e-5)
    np.testing.assert_allclose(to_numpy(scores), want_scores, atol=1e-5)


def test_symbolic_cross_attention_scores_shape():
    query = keras.Input((8, 16))
    value = keras.Input((5, 16))
    out, scores = MultiHeadAttention(num_heads=2, key_dim=4)(
        query, value, return_attention_scores=True
    )
    assert tuple(out.shape) == (None, 8, 16)
    assert tuple(scores.shape) == (None, 2, 8, 5)
    model = keras.Model([query, value], [out, scores])
    real = model.predict(
        [np.zeros((3, 8, 16)), np.zeros((3, 5, 16))], verbose=0
    )
    assert real[1].shape == (3, 2, 8, 5)


@pytest.mark.parametrize(
    "init, shapes, expected",
    [
        (
            dict(num_heads=2, key_dim=4),
            dict(query=(2, 6, 8), value=(2, 5, 8)),
            [(2, 6, 8), (2, 2, 6, 5)],
        ),
        (
            dict(num_heads=2, key_dim=4, output_shape=5),
            dict(query=(2, 6, 8), value=(2, 5, 3), key=(2, 5, 7)),
            [(2, 6, 5), (2, 2, 6, 5)],
        ),
        (
            dict(num_heads=2, key_dim=4, attention_axes=(1, 2)),
            dict(query=(2, 3, 4, 8), value=(2, 2, 5, 8)),
            [(2, 3, 4, 8), (2, 2, 3, 4, 2, 5)],
        ),
        (
            dict(num_heads=4, key_dim=4, num_key_value_heads=1, dropout=0.1),
            dict(query=(2, 6, 8), value=(2, 5, 8)),
            [(2, 6, 8), (2, 4, 6, 5)],
        ),
    ],
    ids=["cross", "key_output_shape", "axes_2d", "mqa_dropout"],
)
def test_layer_behaviour(rng, init, shapes, expected):
    layer = run_layer_test(
        MultiHeadAttention,
        init,
        shapes,
        call_kwargs=dict(return_attention_scores=True),
        expected_output_shapes=expected,
        expected_num_trainable_weights=8,
        rng=rng,
    )
    spec = layer.compute_output_spec(
        *[keras.KerasTensor(s) for s in shapes.values()],
        return_attention_scores=True,
    )
    assert [tuple(x.shape) for x in spec] == expected


def test_masks_flow_from_embedding_and_output_carries_query_mask():
    tokens = np.array([[3, 4, 5, 0, 0], [6, 7, 0, 0, 0]])
    embedding = keras.layers.Embedding(10, 8, mask_zero=True)
    layer = MultiHeadAttention(
        num_heads=2, key_dim=4, bias_initializer="random_normal"
    )
    x = embedding(tokens)
    out = layer(x, x)
    explicit = layer(x, x, query_mask=tokens > 0, value_mask=tokens > 0)
    np.testing.assert_allclose(to_numpy(out), to_numpy(explicit), atol=1e-6)
    assert np.all(to_numpy(out)[tokens == 0] == 0.0)
    # Functional: the output's mask reaches a downstream layer.
    inputs = keras.Input((None,), dtype="int32")
    h = keras.layers.Embedding(10, 8, mask_zero=True)(inputs)
    h = MultiHeadAttention(num_heads=2, key_dim=4)(h, h)
    pooled = keras.layers.GlobalAveragePooling1D()(h)
    model = keras.Model(inputs, pooled)
    model_out = model.predict(tokens, verbose=0)
    seq = keras.Model(inputs, h).predict(tokens, verbose=0)
    lengths = (tokens > 0).sum(1, keepdims=True)
    np.testing.assert_allclose(model_out, seq.sum(1) / lengths, atol=1e-5)


@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_sequence_length(rng):
    import tensorflow as tf

    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    spec = tf.TensorSpec((None, None, 8), tf.float32)
    mask_spec = tf.TensorSpec((None, None), tf.bool)

    @tf.function(input_signature=[spec, spec, mask_spec], autograph=False)
    def run(q, v, v_mask):
        return layer(q, v, value_mask=v_mask, use_causal_mask=True)

    for t, s in ((3, 5), (7, 2)):
        q = rng.normal(size=(2, t, 8)).astype("float32")
        v = rng.normal(size=(2, s, 8)).astype("float32")
        v_mask = _padding(rng, 2, s)
        eager = layer(q, v, value_mask=v_mask, use_causal_mask=True)
        np.testing.assert_allclose(
            run(q, v, v_mask).numpy(), to_numpy(eager), atol=1e-6
        )


def test_jit_compiled_predict_matches_eager(rng):
    inputs = keras.Input((None, 8))
    out = MultiHeadAttention(num_heads=2, key_dim=4)(
        inputs, inputs, use_causal_mask=True
    )
    model = keras.Model(inputs, out)
    data = rng.normal(size=(3, 6, 8)).astype("float32")
    model.compile(jit_compile=True)
    assert model.jit_compile is True
    np.testing.assert_allclose(
        model.predict(data, verbose=0), to_numpy(model(data)), atol=1e-5
    )


def test_flash_attention_true_defers_to_backend(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, flash_attention=True)
    query = rng.normal(size=(1, 4, 8)).astype("float32")
    if keras.backend.backend() == "torch":
        # PyTorch's fused kernel runs on a CPU too: the same outputs as ours.
        out = layer(query, query)
        exact = MultiHeadAttention(num_heads=2, key_dim=4)
        exact(query, query)
        exact.set_weights(layer.get_weights())
        np.testing.assert_allclose(
            to_numpy(out), to_numpy(exact(query, query)), atol=1e-6
        )
    else:
        # No fused kernel on this CPU: the backend's own error comes
        # through (Keras' ValueError on TensorFlow, JAX's RuntimeError).
        with pytest.raises(
            (ValueError, RuntimeError), match="[Ff]lash attention|cuDNN"
        ):
            layer(query, query)
    with pytest.raises(ValueError, match="return_attention_scores"):
        MultiHeadAttention(2, 4, flash_attention=True)(
            query, query, return_attention_scores=True
        )


def test_dropout_in_training_only(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, dropout=0.5, seed=1)
    query = rng.normal(size=(2, 6, 8)).astype("float32")
    inference = to_numpy(layer(query, query))
    np.testing.assert_array_equal(inference, to_numpy(layer(query, query)))
    training = to_numpy(layer(query, query, training=True))
    assert not np.allclose(training, inference)


@keras.saving.register_keras_serializable(package="keras_attention_tests")
class HookedAttention(MultiHeadAttention):
    """keras-hub's `CachedMultiHeadAttention` pattern: its own `call`, the
    base class's projections and `_compute_attention`."""

    def call(self, query, value, key=None, attention_mask=None, training=None):
        q = self._query_dense(query)
        k = self._key_dense(value if key is None else key)
        v = self._value_dense(value)
        out, _ = self._compute_attention(q, k, v, attention_mask, training)
        return self._output_dense(out)


def test_subclass_overriding_call_reuses_compute_attention(rng, tmp_path):
    x = rng.normal(size=(3, 6, 8)).astype("float32")
    causal = np.tril(np.ones((6, 6), bool))[None]
    inputs = keras.Input((6, 8))
    mask = keras.Input((6, 6), dtype="bool")
    hooked = HookedAttention(num_heads=2, key_dim=4, chunk_size=4)
    model = keras.Model(
        [inputs, mask], hooked(inputs, inputs, attention_mask=mask)
    )
    plain = MultiHeadAttention(num_heads=2, key_dim=4)
    plain(x, x)
    plain.set_weights(hooked.get_weights())
    masks = np.repeat(causal, 3, axis=0)
    want = to_numpy(plain(x, x, use_causal_mask=True))
    np.testing.assert_allclose(to_numpy(model([x, masks])), want, atol=1e-5)
    model.compile(optimizer="sgd", loss="mse")
    model.fit([x, masks], want, verbose=0)
    run_saving_test(
        model,
        lambda b: [x[:b], masks[:b]],
        tmp_path,
        layer_types=[HookedAttention],
    )


# -- Programmable attention: segment ids, score_mod, mask_mod, sinks ------


def _projected_attention(layer, x, **op_kwargs):
    """The layer's output computed by hand: its projections, the op with
    `op_kwargs`, its output projection."""
    from keras_attention.ops import scaled_dot_product_attention

    q = layer.query_dense(x)
    k = layer.key_dense(x)
    v = layer.value_dense(x)
    attended = scaled_dot_product_attention(
        q, k, v, scale=1.0 / np.sqrt(layer.key_dim), **op_kwargs
    )
    return to_numpy(layer.output_dense(attended))


SEGMENTS = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]], "int32")


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["dense", "chunked"])
def test_segment_ids_equal_the_block_diagonal_mask(chunk_size):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    layer = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=chunk_size)
    block = SEGMENTS[:, :, None] == SEGMENTS[:, None, :]
    for causal in (False, True):
        got = layer(
            x,
            x,
            query_segment_ids=SEGMENTS,
            key_segment_ids=SEGMENTS,
            use_causal_mask=causal,
        )
        want = layer(x, x, attention_mask=block, use_causal_mask=causal)
        np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)


def test_cross_segment_ids_zero_rows_without_keys_as_a_mask_does():
    rng = np.random.default_rng(1)
    q = rng.normal(size=(2, 4, 8)).astype("float32")
    v = rng.normal(size=(2, 5, 8)).astype("float32")
    q_ids = np.array([[0, 0, 1, 3], [2, 2, 2, 2]], "int32")  # 3: no key
    k_ids = np.array([[0, 1, 1, 1, 2], [2, 2, 0, 0, 0]], "int32")
    # Non-zero biases: a row without keys would show the output's bias.
    layer = MultiHeadAttention(num_heads=2, key_dim=4, bias_initializer="ones")
    got = layer(q, v, query_segment_ids=q_ids, key_segment_ids=k_ids)
    want = layer(q, v, attention_mask=q_ids[:, :, None] == k_ids[:, None])
    np.testing.assert_allclose(to_numpy(got), to_numpy(want), atol=1e-5)
    assert np.all(to_numpy(got)[0, 3] == 0)


@pytest.mark.parametrize("chunk_size", [None, 2], ids=["dense", "chunked"])
def test_score_mod_and_mask_mod_change_outputs_as_the_op_does(chunk_size):
    from tests import mods

    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    layer = MultiHeadAttention(
        num_heads=2,
        key_dim=4,
        chunk_size=chunk_size,
        score_mod=mods.distance_penalty,
        mask_mod=mods.prefix_lm,
        use_bias=False,
    )
    got = to_numpy(layer(x, x))
    want = _projected_attention(
        layer, x, score_mod=mods.distance_penalty, mask_mod=mods.prefix_lm
    )
    np.testing.assert_allclose(got, want, atol=1e-5)
    plain = MultiHeadAttention(num_heads=2, key_dim=4, use_bias=False)
    plain(x, x)
    plain.set_weights(layer.get_weights())
    assert np.abs(to_numpy(plain(x, x)) - got).max() > 1e-3


def test_sinks_are_a_trained_weight_passed_to_the_op():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 5, 8)).astype("float32")
    layer = MultiHeadAttention(
        num_heads=2, key_dim=4, use_attention_sinks=True, use_bias=False
    )
    layer(x, x)
    assert tuple(layer.sinks.shape) == (2,)
    assert layer.sinks.path.endswith("sinks")
    np.testing.assert_array_equal(to_numpy(layer.sinks), np.zeros(2))
    layer.sinks.assign(np.array([0.5, -1.0], "float32"))
    want = _projected_attention(layer, x, sinks=np.array([0.5, -1.0]))
    np.testing.assert_allclose(to_numpy(layer(x, x)), want, atol=1e-5)

    inputs = keras.Input((5, 8))
    model = keras.Model(inputs, layer(inputs, inputs))
    model.compile(optimizer=keras.optimizers.SGD(0.5), loss="mse")
    before = to_numpy(layer.sinks).copy()
    model.fit(x, rng.normal(size=(2, 5, 8)), epochs=1, verbose=0)
    assert np.all(to_numpy(layer.sinks) != before), "sinks got no gradient"


def test_mask_mod_decodes_step_by_step_as_the_full_call():
    """Prefix-LM with a cache: the queries' `q_idx` are the cache
    positions, so a prefill of the prefix and steps equal the full call."""
    from tests import mods

    rng = np.random.default_rng(4)
    x = rng.normal(size=(2, 7, 8)).astype("float32")
    layer = MultiHeadAttention(
        num_heads=2, key_dim=4, mask_mod=mods.prefix_lm, sliding_window=4
    )
    full = to_numpy(layer(x, x))
    cache = np.zeros((2, 2, 7, 2, 4), "float32")
    out, cache = layer(x[:, :3], x[:, :3], cache=cache, cache_update_index=0)
    steps = [to_numpy(out)]
    for i in range(3, 7):
        step = x[:, i : i + 1]
        out, cache = layer(step, step, cache=cache, cache_update_index=i)
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)


def test_key_segment_ids_cover_the_cache_slots():
    rng = np.random.default_rng(5)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    layer = MultiHeadAttention(num_heads=2, key_dim=4)
    full = to_numpy(
        layer(
            x,
            x,
            query_segment_ids=SEGMENTS,
            key_segment_ids=SEGMENTS,
            use_causal_mask=True,
        )
    )
    cache = np.zeros((2, 2, 6, 2, 4), "float32")
    steps = []
    for i in range(6):
        step = x[:, i : i + 1]
        out, cache = layer(
            step,
            step,
            cache=cache,
            cache_update_index=i,
            use_causal_mask=True,
            query_segment_ids=SEGMENTS[:, i : i + 1],
            key_segment_ids=SEGMENTS,
        )
        steps.append(to_numpy(out))
    np.testing.assert_allclose(np.concatenate(steps, 1), full, atol=1e-5)
    with pytest.raises(ValueError, match="max_length"):
        layer(
            x[:, :1],
            x[:, :1],
            cache=cache,
            cache_update_index=0,
            query_segment_ids=SEGMENTS[:, :1],
            key_segment_ids=SEGMENTS[:, :1],
        )


def test_programmable_layer_keras_file_round_trip(tmp_path):
    from tests import mods

    rng = np.random.default_rng(6)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    inputs = keras.Input((6, 8))
    layer = MultiHeadAttention(
        num_heads=2,
        key_dim=4,
        score_mod=mods.distance_penalty,
        mask_mod=mods.prefix_lm,
        use_attention_sinks=True,
    )
    model = keras.Model(inputs, layer(inputs, inputs))
    layer.sinks.assign(np.array([0.3, -0.7], "float32"))
    path = str(tmp_path / "programmable.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    config = loaded.layers[-1].get_config()
    assert config["mask_mod"] == "keras_attention_tests>prefix_lm"
    assert config["score_mod"] == "keras_attention_tests>distance_penalty"
    np.testing.assert_allclose(
        to_numpy(loaded(x)), to_numpy(model(x)), atol=1e-6
    )


def test_unregistered_functions_are_refused_at_get_config():
    layer = MultiHeadAttention(2, 4, mask_mod=lambda b, h, q, k: q >= k)
    with pytest.raises(ValueError, match="mask_mod.*register_keras_serial"):
        layer.get_config()
