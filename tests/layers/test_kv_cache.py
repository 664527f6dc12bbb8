"""The key/value cache of `MultiHeadAttention` and `GroupedQueryAttention`.

- Decoding with a cache (a prefill, then one token at a time) gives the
  outputs and scores of one uncached causal call, with RoPE, sliding
  windows, padding and attention masks; the cache holds the projected (and
  rotated) keys and values. Hypothesis draws the configurations.
- A causal prefill runs through the chunked kernel without a mask.
- keras-hub's `CachedMultiHeadAttention`, with the same weights, called by
  keyword as keras-hub code calls it: same outputs and caches, also for
  inputs that carry a Keras mask (it covers the keys being written).
- A traced `cache_update_index` (`tf.function`, `jax.jit`) equals eager.
- A static cache (cross-attention) equals uncached cross-attention.
- A Keras bug seen through the layer (TensorFlow, head dim 1), `xfail`.

On JAX every eager op is compiled per shape, so the layers run under
`jax.jit` there (one compile per call shape instead of one per op).
"""

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_attention import GroupedQueryAttention
from keras_attention import MultiHeadAttention
from keras_attention.ops import attention as attention_ops
from tests import reference
from tests.testing import ci_examples
from tests.testing import compiled
from tests.testing import import_keras_hub
from tests.testing import to_numpy
from tests.testing import traced as traced_fn

TOL = 1e-5
FEATURES = 8


def _assert_close(got, want, what, tol=TOL):
    got = np.asarray(got, np.float64)
    want = np.asarray(want, np.float64)
    assert got.shape == want.shape, (what, got.shape, want.shape)
    assert np.all(np.isfinite(got)), f"{what}: non-finite values"
    scale = max(1.0, float(np.abs(want).max(initial=0.0)))
    np.testing.assert_allclose(
        got, want, atol=tol * scale, rtol=tol, err_msg=what
    )


# Built with zeros, then given random weights from NumPy: JAX compiles the
# random initializers for every new weight shape (about 2 s a layer).
ZEROS = dict(kernel_initializer="zeros", bias_initializer="zeros")


def _build(layer, rng, query_shape, value_shape=None):
    layer.build(query_shape, value_shape or query_shape)
    layer.set_weights(
        [
            rng.normal(scale=0.4, size=w.shape).astype("float32")
            for w in layer.weights
        ]
    )
    return layer


def _weights(layer):
    return {
        "/".join(w.path.split("/")[-2:]): to_numpy(w) for w in layer.weights
    }


def _empty_cache(layer, batch, max_length):
    heads = layer.num_key_value_heads or layer.num_heads
    dim = max(layer.key_dim, layer.value_dim or layer.key_dim)
    return np.zeros((batch, 2, max_length, heads, dim), "float32")


def _decode(layer, x, split, max_length, **kwargs):
    """Prefills `x[:, :split]` at index 0, then feeds one token per call.

    Returns the outputs `(B, T, E)`, the scores `(B, H, T, max_length)` (or
    None) and the final cache. `kwargs` are the slot masks (over
    `max_length`), `attention_mask` `(B, T, max_length)` (its rows are split
    with the queries) and `return_attention_scores`.
    """
    scores_on = kwargs.pop("return_attention_scores", False)
    attention_mask = kwargs.pop("attention_mask", None)

    def step(tokens, cache, index, rows):
        return layer(
            tokens,
            tokens,
            use_causal_mask=True,
            cache=cache,
            cache_update_index=index,
            attention_mask=rows,
            return_attention_scores=scores_on,
            **kwargs,
        )

    def rows(start, stop):
        if attention_mask is None:
            return None
        return attention_mask[:, start:stop]

    # The prefill's index is a Python int (static); the steps' indices are
    # traced under `jax.jit`.
    prefill = compiled(lambda tokens, cache, r: step(tokens, cache, 0, r))
    one = compiled(step)
    cache = _empty_cache(layer, x.shape[0], max_length)
    results = [prefill(x[:, :split], cache, rows(0, split))]
    for i in range(split, x.shape[1]):
        results.append(one(x[:, i : i + 1], results[-1][-1], i, rows(i, i + 1)))
    outputs = np.concatenate([to_numpy(r[0]) for r in results], axis=1)
    scores = None
    if scores_on:
        scores = np.concatenate([to_numpy(r[1]) for r in results], axis=2)
    return outputs, scores, to_numpy(results[-1][-1])


def _slot_mask(rng, kind, batch, max_length):
    if kind == "left_padding":
        # Row 0 unpadded; the others lose 0 .. max_length - 1 leading slots
        # (their first queries then see no key at all: zero rows).
        starts = rng.integers(0, max_length, size=batch)
        starts[0] = 0
        return np.arange(max_length)[None, :] >= starts[:, None]
    return rng.random((batch, max_length)) < 0.7


def _expected_cache(layer, x, max_length):
    """The cache after writing all of `x`, from the NumPy reference: the
    projected keys (rotated by RoPE at positions 0, 1, ...) and values,
    zero-padded to the cache dim and over the unwritten slots."""
    weights = _weights(layer)
    k = reference.project(x, weights["key/kernel"], weights.get("key/bias"))
    v = reference.project(x, weights["value/kernel"], weights.get("value/bias"))
    if layer.rope_max_wavelength is not None:
        k = reference.rotary_embedding(
            k,
            np.arange(x.shape[1]),
            layer.rope_max_wavelength,
            layer.rope_scaling_factor,
        )
    cache = np.zeros(_empty_cache(layer, x.shape[0], max_length).shape)
    cache[:, 0, : x.shape[1], :, : k.shape[-1]] = k
    cache[:, 1, : x.shape[1], :, : v.shape[-1]] = v
    return cache


@ci_examples(tensorflow=25, jax=8)
@given(st.data())
def test_cached_decoding_equals_uncached(data):
    draw = data.draw
    batch = draw(st.integers(1, 2), label="batch")
    length = draw(st.integers(2, 9), label="length")
    split = draw(st.integers(1, length - 1), label="prefill_length")
    max_length = length + draw(st.integers(0, 3), label="spare_slots")
    kind = draw(st.sampled_from(["mha", "mha_kv_heads", "gqa"]), label="kind")
    kv_heads = draw(st.integers(1, 2), label="kv_heads")
    num_heads = kv_heads * draw(st.integers(1, 2), label="groups")
    key_dim = 2 * draw(st.integers(1, 3), label="half_key_dim")
    rope = draw(
        st.one_of(
            st.none(),
            st.tuples(
                st.floats(2.0, 1e4, allow_nan=False),
                st.floats(0.25, 8.0, allow_nan=False),
            ),
        ),
        label="rope (max_wavelength, scaling_factor)",
    )
    window = draw(st.one_of(st.none(), st.integers(1, 5)), label="window")
    chunk_size = draw(st.sampled_from([None, "auto", 3]), label="chunk")
    padding = draw(
        st.sampled_from(["none", "left_padding", "random"]), label="padding"
    )
    mask_name = draw(st.sampled_from(["value_mask", "key_mask"]), label="arg")
    use_attention_mask = draw(st.booleans(), label="attention_mask")
    scores_on = draw(st.booleans(), label="return_attention_scores")
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))

    options = dict(
        sliding_window=window,
        chunk_size=chunk_size,
        **ZEROS,
    )
    if rope is not None:
        options.update(rope_max_wavelength=rope[0], rope_scaling_factor=rope[1])
    if kind == "gqa":
        layer = GroupedQueryAttention(
            head_dim=key_dim,
            num_query_heads=num_heads,
            num_key_value_heads=kv_heads,
            **options,
        )
    else:
        # Not 1: see `test_head_dim_one_with_as_many_heads_as_tokens`.
        value_dim = draw(
            st.one_of(st.none(), st.integers(2, 6)), label="value_dim"
        )
        layer = MultiHeadAttention(
            num_heads=num_heads,
            key_dim=key_dim,
            value_dim=value_dim,
            num_key_value_heads=kv_heads if kind == "mha_kv_heads" else None,
            **options,
        )
    x = rng.normal(size=(batch, length, FEATURES)).astype("float32")
    _build(layer, rng, x.shape)  # eagerly: the weights exist before jit
    cached_masks, uncached_masks = {}, {}
    if padding != "none":
        slots = _slot_mask(rng, padding, batch, max_length)
        cached_masks[mask_name] = slots
        uncached_masks[mask_name] = slots[:, :length]
    if use_attention_mask:
        pairs = rng.random((batch, length, max_length)) < 0.8
        cached_masks["attention_mask"] = pairs
        uncached_masks["attention_mask"] = pairs[:, :, :length]

    full = compiled(
        lambda x: layer(
            x,
            x,
            use_causal_mask=True,
            return_attention_scores=True,
            **uncached_masks,
        )
    )
    want, want_scores = (to_numpy(y) for y in full(x))
    got, got_scores, cache = _decode(
        layer,
        x,
        split,
        max_length,
        return_attention_scores=scores_on,
        **cached_masks,
    )
    _assert_close(got, want, "outputs")
    if scores_on:
        spare = max_length - length
        padded = np.pad(want_scores, [(0, 0)] * 3 + [(0, spare)])
        _assert_close(got_scores, padded, "scores")
    _assert_close(cache, _expected_cache(layer, x, max_length), "cache")


@pytest.mark.xfail(
    keras.backend.backend() == "tensorflow",
    strict=True,
    reason="Keras' TensorFlow `ops.add` turns `x + bias` into `tf.nn."
    "bias_add` when the bias squeezes to one axis; EinsumDense's value bias "
    "(num_heads, 1) then lands on the sequence axis when the length equals "
    "num_heads (uncached: wrong outputs; the one-token steps are right).",
)
def test_head_dim_one_with_as_many_heads_as_tokens(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=2, value_dim=1, **ZEROS)
    x = rng.normal(size=(1, 2, FEATURES)).astype("float32")
    _build(layer, rng, x.shape)
    want, _ = reference.mha(_weights(layer), x, x, is_causal=True)
    got, _, _ = _decode(layer, x, 1, 2)
    _assert_close(got, want, "cached")
    full = compiled(lambda x: layer(x, x, use_causal_mask=True))
    _assert_close(to_numpy(full(x)), want, "uncached")


# -- The chunked kernel -------------------------------------------------------


def test_causal_prefill_runs_chunked_without_a_mask(rng, monkeypatch):
    calls = []
    chunked = attention_ops._chunked_sdpa

    def recording(query, key, value, mask, program, *args, **kwargs):
        calls.append((mask, program.is_causal, query.shape[1], key.shape[1]))
        return chunked(query, key, value, mask, program, *args, **kwargs)

    monkeypatch.setattr(attention_ops, "_chunked_sdpa", recording)
    rope = dict(rope_max_wavelength=100.0, **ZEROS)
    layer = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=4, **rope)
    dense = MultiHeadAttention(num_heads=2, key_dim=4, chunk_size=None, **rope)
    x = rng.normal(size=(2, 17, FEATURES)).astype("float32")
    _build(layer, rng, x.shape)
    dense.build(x.shape, x.shape)
    dense.set_weights(layer.get_weights())

    def decode(x):
        # A prefill of 13 at index 0, then a block of 4 at index 13 (the
        # kernel's causal offset), into a cache of 20.
        cache = np.zeros((2, 2, 20, 2, 4), "float32")
        kwargs = dict(use_causal_mask=True)
        prefill, cache = layer(
            x[:, :13], x[:, :13], cache=cache, cache_update_index=0, **kwargs
        )
        block, cache = layer(
            x[:, 13:], x[:, 13:], cache=cache, cache_update_index=13, **kwargs
        )
        return prefill, block, cache

    prefill, block, cache = (to_numpy(y) for y in compiled(decode)(x))
    assert [c[1:] for c in calls] == [(True, 13, 20), (True, 4, 20)], calls
    for mask, *_ in calls:
        assert mask is None, "a (q_len, max_length) mask reached the kernel"
    calls.clear()
    want = to_numpy(compiled(lambda x: dense(x, x, use_causal_mask=True))(x))
    assert not calls  # the dense layer stays dense
    _assert_close(prefill, want[:, :13], "prefill")
    _assert_close(block, want[:, 13:], "block")
    _assert_close(cache, _expected_cache(layer, x, 20), "cache")


# -- keras-hub parity ---------------------------------------------------------

# One set of shapes for all keras-hub cases (JAX compiles once per shape).
HUB_BATCH, HUB_SLOTS, HUB_HEADS, HUB_DIM = 2, 6, 2, 4


def _hub_pair(rng):
    """keras-hub's `CachedMultiHeadAttention` and ours, equal weights."""
    keras_hub = import_keras_hub()
    kwargs = dict(num_heads=HUB_HEADS, key_dim=HUB_DIM, **ZEROS)
    hub = keras_hub.layers.CachedMultiHeadAttention(**kwargs)
    ours = MultiHeadAttention(**kwargs)
    shape = (HUB_BATCH, HUB_SLOTS, FEATURES)
    _build(hub, rng, shape)
    ours.build(shape, shape)
    ours.set_weights(hub.get_weights())
    return hub, ours


def _by_keyword(layer, **kwargs):
    """A call as keras-hub code writes it, every argument by keyword; the
    results as NumPy arrays."""
    return [to_numpy(y) for y in compiled(lambda: layer(**kwargs))()]


def _hub_cache(rng):
    shape = (HUB_BATCH, 2, HUB_SLOTS, HUB_HEADS, HUB_DIM)
    return rng.normal(size=shape).astype("float32")


def test_keras_hub_parity_self_attention_cache(rng):
    hub, ours = _hub_pair(rng)
    split = 4
    x = rng.normal(size=(HUB_BATCH, split + 1, FEATURES)).astype("float32")
    slots = np.arange(HUB_SLOTS)
    # The prefill, with keras-hub's hand-made causal mask over the slots.
    prefill_mask = slots[None, :] <= np.arange(split)[:, None]
    prefill = dict(
        query=x[:, :split],
        value=x[:, :split],
        attention_mask=np.broadcast_to(
            prefill_mask, (HUB_BATCH, split, HUB_SLOTS)
        ),
        cache=_hub_cache(rng),
        cache_update_index=0,
        return_attention_scores=True,
    )
    want = _by_keyword(hub, **prefill)
    got = _by_keyword(ours, **prefill)
    for what, g, w in zip(("output", "scores", "cache"), got, want):
        _assert_close(g, w, f"prefill {what}")
    # One step, with the mask `arange(max_length) <= index`.
    step_mask = np.broadcast_to(slots <= split, (HUB_BATCH, 1, HUB_SLOTS))
    step = dict(
        query=x[:, split:],
        value=x[:, split:],
        attention_mask=step_mask,
        cache=want[2],
        cache_update_index=split,
    )
    want = _by_keyword(hub, **step)
    got = _by_keyword(ours, **step)
    for what, g, w in zip(("output", "cache"), got, want):
        _assert_close(g, w, f"step {what}")
    # Ours, the same step with `use_causal_mask` instead of the mask.
    step.pop("attention_mask")
    got = _by_keyword(ours, use_causal_mask=True, **step)
    for what, g, w in zip(("output", "cache"), got, want):
        _assert_close(g, w, f"causal step {what}")


def test_keras_hub_parity_no_mask_attends_every_slot(rng):
    # A cache, no mask, use_causal_mask=False: every slot is attended, the
    # unwritten ones too, as in keras-hub.
    hub, ours = _hub_pair(rng)
    x = rng.normal(size=(HUB_BATCH, 2, FEATURES)).astype("float32")
    cache = _hub_cache(rng)
    cache[:, :, 3:] = 0.0  # unwritten slots
    kwargs = dict(
        query=x,
        value=x,
        cache=cache,
        cache_update_index=1,
        return_attention_scores=True,
    )
    want = _by_keyword(hub, attention_mask=None, **kwargs)
    got = _by_keyword(ours, **kwargs)
    for what, g, w in zip(("output", "scores", "cache"), got, want):
        _assert_close(g, w, what)
    assert np.all(got[1] > 0.0), "a slot was not attended"


def test_keras_hub_parity_static_cache(rng):
    hub, ours = _hub_pair(rng)
    query = rng.normal(size=(HUB_BATCH, 3, FEATURES)).astype("float32")
    ignored = rng.normal(size=(HUB_BATCH, 1, FEATURES)).astype("float32")
    cache = _hub_cache(rng)
    padding = np.ones((HUB_BATCH, 3, HUB_SLOTS), bool)
    padding[1, :, 3:] = False
    for mask in (None, padding):
        kwargs = dict(
            query=query, value=ignored, attention_mask=mask, cache=cache
        )
        want = _by_keyword(hub, **kwargs)
        got = _by_keyword(ours, **kwargs)
        for what, g, w in zip(("output", "cache"), got, want):
            _assert_close(g, w, f"{what}, mask={mask is not None}")
        np.testing.assert_array_equal(got[1], cache)


def test_keras_hub_parity_inputs_with_a_keras_mask(rng):
    # keras-hub code whose inputs carry a Keras mask (`mask_zero=True`
    # embeddings, right padding): keras-hub ignores it; ours zeroes the
    # padded query rows (documented), and the other rows and the cache
    # match keras-hub.
    hub, ours = _hub_pair(rng)
    tokens = np.array([[1, 2, 3], [3, 4, 0]])
    embedding = keras.layers.Embedding(10, FEATURES, mask_zero=True)
    embedding.build(tokens.shape)
    causal = np.arange(HUB_SLOTS)[None, :] <= np.arange(3)[:, None]

    cache = np.zeros((HUB_BATCH, 2, HUB_SLOTS, HUB_HEADS, HUB_DIM), "float32")

    def prefill(layer):
        x = embedding(tokens)
        return layer(
            query=x,
            value=x,
            attention_mask=np.broadcast_to(causal, (HUB_BATCH, 3, HUB_SLOTS)),
            cache=cache,
            cache_update_index=0,
        )

    want_output, want_cache = (
        to_numpy(y) for y in compiled(lambda: prefill(hub))()
    )
    got_output, got_cache = (
        to_numpy(y) for y in compiled(lambda: prefill(ours))()
    )
    rows = tokens != 0
    _assert_close(got_output[rows], want_output[rows], "unpadded rows")
    np.testing.assert_array_equal(got_output[~rows], 0.0)
    _assert_close(got_cache, want_cache, "cache")


# -- A traced index -----------------------------------------------------------


@pytest.mark.parametrize(
    "options, masked",
    [
        (dict(), False),
        (dict(sliding_window=3, rope_max_wavelength=50.0, value_dim=6), True),
    ],
    ids=["causal_only", "window_rope_value_dim_padding"],
)
def test_traced_index_equals_eager(rng, options, masked):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, **options, **ZEROS)
    batch, max_length, index = 2, 8, 5
    x = rng.normal(size=(batch, 1, FEATURES)).astype("float32")
    _build(layer, rng, x.shape)
    cache = rng.normal(size=(batch, 2, max_length, 2, 6 if options else 4))
    cache = cache.astype("float32")
    masks = {}
    if masked:
        masks["value_mask"] = np.arange(max_length)[None, :] >= [[0], [2]]

    def step(x, cache, index):
        return layer(
            x,
            x,
            use_causal_mask=True,
            cache=cache,
            cache_update_index=index,
            return_attention_scores=True,
            **masks,
        )

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        eager = step(x, cache, index)
        # Unknown batch, length and max_length, as in an export.
        signature = [
            tf.TensorSpec((None, None, FEATURES)),
            tf.TensorSpec((None, 2, None) + cache.shape[3:]),
            tf.TensorSpec((), tf.int32),
        ]
        traced_step = tf.function(
            step, autograph=False, input_signature=signature
        )
        traced = traced_step(x, cache, tf.constant(index, "int32"))
    elif keras.backend.backend() == "jax":
        import jax

        # A static index runs eager's code (a known Python int), compiled
        # once rather than op by op.
        eager = jax.jit(step, static_argnums=2)(x, cache, index)
        traced = jax.jit(step)(x, cache, np.int32(index))
    else:  # PyTorch: the index a traced tensor under `torch.compile`
        eager = step(x, cache, index)
        traced = traced_fn(step)(
            x, cache, keras.ops.convert_to_tensor(index, "int32")
        )
    eager = [to_numpy(y) for y in eager]
    for what, got, want in zip(("output", "scores", "cache"), traced, eager):
        _assert_close(to_numpy(got), want, what)


# -- A static cache: cross-attention ------------------------------------------


def test_static_cache_equals_uncached_cross_attention(rng):
    layer = MultiHeadAttention(num_heads=2, key_dim=4, value_dim=3, **ZEROS)
    batch, source, target, enc_dim = 2, 6, 4, 5
    enc = rng.normal(size=(batch, source, enc_dim)).astype("float32")
    queries = rng.normal(size=(batch, target, FEATURES)).astype("float32")
    _build(layer, rng, queries.shape, enc.shape)
    padding = np.ones((batch, source), bool)
    padding[1, 4:] = False
    ignored = np.zeros((batch, 1, enc_dim), "float32")

    def run(queries, enc, padding):
        want = layer(queries, enc, value_mask=padding)
        # Fill the cache once from the encoder sequence (its query unused).
        empty = keras.ops.zeros((batch, 2, source, 2, 4))
        _, cache = layer(queries[:, :1], enc, cache=empty, cache_update_index=0)
        # Then the decoder's queries read it, all at once and one by one.
        got, same = layer(queries, ignored, cache=cache, value_mask=padding)
        steps = [
            layer(
                queries[:, t : t + 1], ignored, cache=cache, value_mask=padding
            )[0]
            for t in range(target)
        ]
        return want, got, keras.ops.concatenate(steps, axis=1), same, cache

    for mask in (None, padding):
        run_ = compiled(lambda q, e, m=mask: run(q, e, m))
        want, got, steps, same, cache = (
            to_numpy(y) for y in run_(queries, enc)
        )
        what = f"mask={mask is not None}"
        _assert_close(got, want, what)
        _assert_close(steps, want, f"{what}, one query at a time")
        np.testing.assert_array_equal(same, cache)
