"""Attention dropout inside the chunked kernels.

The kernel's keep masks are read back by attending values that are the
identity (each output column is then one key's dropped weight), and the NumPy
reference is rerun with those masks: outputs and gradients (central finite
differences of the same seeded function) must agree. Statistical tests check
the keep rate against a binomial bound and the mean over seeds against the
no-dropout output.
"""

import keras
import numpy as np
import pytest

import keras_attention.ops.attention as attention_module
from keras_attention import AdditiveAttention
from keras_attention import MultiHeadAttention
from keras_attention.ops import additive_attention
from keras_attention.ops import scaled_dot_product_attention
from keras_attention.ops._chunked import keep_scale
from tests import reference
from tests.testing import compiled
from tests.testing import loss_and_grads
from tests.testing import numeric_grads
from tests.testing import to_numpy

RATE = 0.3
# Sigmas of the statistical bounds: a false failure has odds below 1e-6.
SIGMAS = 5.0

CASES = {
    # name: (b, t, s, n, kv, chunk, causal, masked)
    "ragged": (2, 7, 9, 2, 2, 4, False, False),
    "causal_gqa": (1, 9, 9, 4, 2, 4, True, False),
    "masked_empty_row": (2, 6, 7, 2, 1, 3, False, True),
}


def _identity_values(b, s, heads):
    return np.broadcast_to(
        np.eye(s, dtype="float32")[None, :, None, :], (b, s, heads, s)
    ).copy()


def _sdpa_inputs(rng, case):
    b, t, s, n, kv, chunk, causal, masked = CASES[case]
    q = rng.normal(size=(b, t, n, 4)).astype("float32")
    k = rng.normal(size=(b, s, kv, 4)).astype("float32")
    v = rng.normal(size=(b, s, kv, 3)).astype("float32")
    mask = None
    if masked:
        mask = rng.random((b, 1, t, s)) > 0.4
        mask[0, :, 1] = False  # a fully masked row
    kwargs = dict(mask=mask, is_causal=causal, chunk_size=chunk)
    return (q, k, v), kwargs


def _sdpa(kwargs, seed=11, rate=RATE):
    def fn(q, k, v):
        return scaled_dot_product_attention(
            q, k, v, dropout_rate=rate, training=True, seed=seed, **kwargs
        )

    return compiled(fn)


def _sdpa_keep(q, k, kwargs, seed=11):
    """The kernel's keep mask `(B, N, T, S)` and its undropped weights."""
    b, s, kv = k.shape[0], k.shape[1], k.shape[2]
    eye = _identity_values(b, s, kv)
    dropped = to_numpy(_sdpa(kwargs, seed)(q, k, eye))
    plain = to_numpy(_sdpa(kwargs, seed, rate=0.0)(q, k, eye))
    dropped, plain = (np.transpose(x, (0, 2, 1, 3)) for x in (dropped, plain))
    keep = dropped > 0
    # Kept weights are the undropped ones scaled by 1 / P(keep); the rest 0.
    np.testing.assert_allclose(
        dropped[keep], plain[keep] * keep_scale(RATE), rtol=1e-5
    )
    return keep, plain


def _reference_with_keep(keep, kwargs):
    """The NumPy reference with the kernel's keep mask applied."""
    scale = keep_scale(RATE)

    def fn(q, k, v):
        _, weights = reference.sdpa(
            q, k, v, mask=kwargs["mask"], is_causal=kwargs["is_causal"]
        )
        weights = weights * keep * scale
        groups = q.shape[2] // k.shape[2]
        v_heads = np.repeat(np.asarray(v, np.float64), groups, axis=2)
        return np.einsum("bnts,bsnh->btnh", weights, v_heads)

    return fn


@pytest.mark.parametrize("case", sorted(CASES))
def test_sdpa_dropout_outputs_and_gradients_match_reference(rng, case):
    args, kwargs = _sdpa_inputs(rng, case)
    keep, plain = _sdpa_keep(args[0], args[1], kwargs)
    # Something was dropped, and not everything.
    assert 0 < keep[plain > 0].mean() < 1
    ref = _reference_with_keep(keep, kwargs)
    out = to_numpy(_sdpa(kwargs)(*args))
    np.testing.assert_allclose(out, ref(*args), atol=1e-5)
    _, grads = loss_and_grads(_sdpa(kwargs), *args)
    for grad, want in zip(grads, numeric_grads(ref, args)):
        np.testing.assert_allclose(grad, want, atol=1e-4, rtol=1e-3)
    if kwargs["mask"] is not None:
        # The fully masked row: zero output, and its query gets no gradient.
        np.testing.assert_array_equal(out[0, 1], 0.0)
        np.testing.assert_array_equal(grads[0][0, 1], 0.0)


def test_sdpa_dropout_is_reproducible_and_seeded(rng):
    args, kwargs = _sdpa_inputs(rng, "ragged")
    first = loss_and_grads(_sdpa(kwargs, seed=3), *args)
    again = loss_and_grads(_sdpa(kwargs, seed=3), *args)
    other = loss_and_grads(_sdpa(kwargs, seed=4), *args)
    np.testing.assert_array_equal(first[0], again[0])
    for g, h in zip(first[1], again[1]):
        np.testing.assert_array_equal(g, h)
    assert first[0] != other[0]
    # Inference: no dropout, whatever the seed.
    out = scaled_dot_product_attention(*args, dropout_rate=RATE, **kwargs)
    want, _ = reference.sdpa(
        *args, mask=kwargs["mask"], is_causal=kwargs["is_causal"]
    )
    np.testing.assert_allclose(to_numpy(out), want, atol=1e-5)


def test_sdpa_dropout_keep_rate_within_binomial_bound(rng):
    b, t, s, n = 4, 48, 40, 4
    q = rng.normal(size=(b, t, n, 8)).astype("float32")
    k = rng.normal(size=(b, s, n, 8)).astype("float32")
    kwargs = dict(mask=None, is_causal=False, chunk_size=16)
    keep, _ = _sdpa_keep(q, k, kwargs, seed=21)
    # The keep rate the kernel scales by, the requested one to 16 bits.
    p_keep = 1.0 / keep_scale(RATE)
    assert abs(p_keep - (1 - RATE)) <= 2.0**-17
    count = keep.size
    bound = SIGMAS * np.sqrt(p_keep * (1 - p_keep) / count)
    assert abs(keep.mean() - p_keep) <= bound, (keep.mean(), bound)
    # Rows r and r + 8 of a 16-row block share a 32-bit Philox word on
    # TensorFlow (its low and high 16 bits): they are still independent.
    blocks = keep.reshape(b, n, t // 16, 2, 8, s)
    both = (blocks[:, :, :, 0] & blocks[:, :, :, 1]).mean()
    pairs = blocks[:, :, :, 0].size
    bound = SIGMAS * np.sqrt(p_keep**2 * (1 - p_keep**2) / pairs)
    assert abs(both - p_keep**2) <= bound, (both, p_keep**2, bound)
    # Blocks and heads draw different masks.
    assert not np.array_equal(keep[:, :, :16, :16], keep[:, :, 16:32, :16])
    assert not np.array_equal(keep[:, 0], keep[:, 1])


def test_sdpa_dropout_mean_over_seeds_is_the_no_dropout_output(rng):
    """The mean of `seeds` dropped outputs is within `SIGMAS` standard
    errors of the exact output, each element's variance computed from the
    reference: `sum_s (p_s v_s)^2 * rate / (1 - rate)`."""
    q = rng.normal(size=(1, 5, 2, 4)).astype("float32")
    k = rng.normal(size=(1, 6, 2, 4)).astype("float32")
    v = rng.normal(size=(1, 6, 2, 3)).astype("float32")
    replicas, seeds = 128, 4
    args = [np.repeat(x, replicas, axis=0) for x in (q, k, v)]
    kwargs = dict(mask=None, is_causal=False, chunk_size=4)
    outs = [to_numpy(_sdpa(kwargs, seed)(*args)) for seed in range(seeds)]
    mean = np.mean(outs, axis=(0, 1))
    want, weights = reference.sdpa(q, k, v)
    pv = np.einsum("nts,bsnh->btnhs", weights[0], v)[0]
    sd = np.sqrt(np.sum(pv**2, axis=-1) * RATE / (1 - RATE))
    stderr = sd / np.sqrt(replicas * seeds)
    assert np.all(np.abs(mean - want[0]) <= SIGMAS * stderr + 1e-6)
    # ... and each single draw is not (the test can fail).
    assert np.max(np.abs(outs[0][0] - want[0])) > 0.1


def _additive_args(rng):
    b, t, s, u = 2, 7, 8, 5
    return [
        rng.normal(size=(b, t, u)).astype("float32"),
        rng.normal(size=(b, s, u)).astype("float32"),
        rng.normal(size=(b, s, 3)).astype("float32"),
        rng.normal(size=(u,)).astype("float32"),
        rng.normal(size=(u,)).astype("float32"),
    ]


def _additive(mask, seed=5, rate=RATE, chunk=3):
    def fn(q, k, v, w, bias):
        return additive_attention(
            q,
            k,
            v,
            w,
            hidden_bias=bias,
            mask=mask,
            dropout_rate=rate,
            training=True,
            seed=seed,
            chunk_size=chunk,
        )

    return compiled(fn)


def test_additive_dropout_outputs_and_gradients_match_reference(rng):
    args = _additive_args(rng)
    mask = rng.random((2, 7, 8)) > 0.3
    mask[1, 2] = False
    q, k = args[0], args[1]
    eye = np.broadcast_to(np.eye(8, dtype="float32"), (2, 8, 8)).copy()
    dropped = to_numpy(_additive(mask)(q, k, eye, *args[3:]))
    plain = to_numpy(_additive(mask, rate=0.0)(q, k, eye, *args[3:]))
    keep = dropped > 0
    assert 0 < keep[plain > 0].mean() < 1
    np.testing.assert_allclose(
        dropped[keep], plain[keep] * keep_scale(RATE), rtol=1e-5
    )

    def ref(q, k, v, w, bias):
        eye = np.eye(q.shape[-1])
        _, weights = reference.additive(q, k, v, eye, eye, w, b=bias, mask=mask)
        return np.einsum("bts,bsd->btd", weights * keep * keep_scale(RATE), v)

    out = to_numpy(_additive(mask)(*args))
    np.testing.assert_allclose(out, ref(*args), atol=1e-5)
    _, grads = loss_and_grads(_additive(mask), *args)
    for grad, want in zip(grads, numeric_grads(ref, args)):
        np.testing.assert_allclose(grad, want, atol=1e-4, rtol=1e-3)
    np.testing.assert_array_equal(out[1, 2], 0.0)


def _spy_kernels(monkeypatch):
    """Records which kernel each call used; lowers "auto"'s threshold so
    that the small test inputs count as long."""
    calls = []
    for name in ("_chunked_sdpa", "_dense_sdpa", "_chunked_additive"):
        real = getattr(attention_module, name)

        def spy(*args, _real=real, _name=name, **kwargs):
            calls.append(_name)
            return _real(*args, **kwargs)

        monkeypatch.setattr(attention_module, name, spy)
    for name, value in (
        ("AUTO_DENSE_MAX_LOGITS", 64),
        ("AUTO_CHUNK", 4),
        ("AUTO_KEY_CHUNK", 4),
        ("AUTO_ADDITIVE_DENSE_MAX", 64),
        ("AUTO_ADDITIVE_CHUNK", 4),
    ):
        monkeypatch.setattr(attention_module, name, value)
    return calls


def test_auto_chooses_chunked_for_long_training_calls_with_dropout(
    rng, monkeypatch
):
    calls = _spy_kernels(monkeypatch)
    args, _ = _sdpa_inputs(rng, "ragged")
    scaled_dot_product_attention(
        *args, dropout_rate=RATE, training=True, seed=1
    )
    assert calls == ["_chunked_sdpa"]
    calls.clear()
    *args, bias = _additive_args(rng)
    additive_attention(
        *args, hidden_bias=bias, dropout_rate=RATE, training=True, seed=1
    )
    assert calls == ["_chunked_additive"]


def test_mha_seed_generator_advances_and_a_fixed_seed_reproduces(rng):
    x = rng.normal(size=(2, 9, 8)).astype("float32")

    def layer():
        mha = MultiHeadAttention(2, 4, dropout=RATE, seed=7, chunk_size=4)
        mha(x, x)
        mha.set_weights(
            [np.random.default_rng(0).normal(size=w.shape) for w in mha.weights]
        )
        return mha

    first, second = layer(), layer()
    steps = [to_numpy(first(x, x, training=True)) for _ in range(2)]
    assert not np.allclose(steps[0], steps[1])  # the seed advanced
    np.testing.assert_array_equal(
        to_numpy(second(x, x, training=True)), steps[0]
    )
    np.testing.assert_allclose(
        to_numpy(first(x, x)), to_numpy(second(x, x)), rtol=1e-6
    )


@pytest.mark.parametrize("layer_kind", ["mha", "additive"])
def test_fit_with_chunked_dropout(rng, layer_kind):
    inputs = keras.Input((12, 8))
    if layer_kind == "mha":
        layer = MultiHeadAttention(2, 4, dropout=0.2, seed=1, chunk_size=4)
        hidden = layer(inputs, inputs)
    else:
        layer = AdditiveAttention(units=8, dropout=0.2, seed=1, chunk_size=4)
        hidden = layer(inputs, inputs)
    model = keras.Model(inputs, keras.layers.Dense(1)(hidden))
    model.compile("adam", "mse")
    x = rng.normal(size=(8, 12, 8)).astype("float32")
    y = rng.normal(size=(8, 12, 1)).astype("float32")
    history = model.fit(x, y, epochs=2, batch_size=4, verbose=0)
    assert np.all(np.isfinite(history.history["loss"]))


@pytest.mark.tensorflow_only
def test_tf_function_with_unknown_lengths_matches_eager(rng):
    import tensorflow as tf

    args, kwargs = _sdpa_inputs(rng, "masked_empty_row")
    kwargs = dict(kwargs, mask=None)
    fn = _sdpa(kwargs, seed=9)
    spec = [tf.TensorSpec((None, None) + a.shape[2:], "float32") for a in args]
    traced = tf.function(fn, input_signature=spec)
    # The same masks: equal up to float rounding (graph against eager).
    np.testing.assert_allclose(
        traced(*args).numpy(), to_numpy(fn(*args)), atol=1e-6
    )
    # chunk_size="auto" with unknown lengths: the run-time choice.
    auto = _sdpa(dict(kwargs, chunk_size="auto"), seed=9)
    traced_auto = tf.function(auto, input_signature=spec)
    np.testing.assert_allclose(
        traced_auto(*args).numpy(), to_numpy(auto(*args)), atol=1e-6
    )


@pytest.mark.skipif(keras.backend.backend() != "jax", reason="JAX only")
def test_grad_of_a_jitted_call_with_traced_mask_and_dropout(rng):
    """Tensors made inside the jitted function (a mask, the dropout key) are
    inputs of the custom gradient, not closed over: `jax.grad(jax.jit(f))`
    works and agrees with `jax.jit(jax.grad(f))`."""
    import jax
    import jax.numpy as jnp

    args, _ = _sdpa_inputs(rng, "ragged")

    def f(q, k, v):
        mask = (jnp.sum(k, axis=(2, 3)) > -1.0)[:, None, None, :]
        out = scaled_dot_product_attention(
            q, k, v, mask=mask, chunk_size=4, **_TRAIN
        )
        return jnp.sum(out * out)

    outer = jax.grad(jax.jit(f), argnums=(0, 1, 2))(*args)
    inner = jax.jit(jax.grad(f, argnums=(0, 1, 2)))(*args)
    for g, h in zip(outer, inner):
        np.testing.assert_allclose(np.asarray(g), np.asarray(h), atol=1e-6)
        assert np.any(np.asarray(g) != 0)


_TRAIN = dict(dropout_rate=RATE, training=True, seed=2)
