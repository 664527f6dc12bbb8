"""`TransformerDecoder`: the layer harness, keras-hub parity, and cached
decoding equal to one uncached call.

- `run_layer_test` for a decoder-only block and one with cross-attention,
  mixed precision included.
- keras-hub's `TransformerDecoder` with the same constructor arguments:
  the same weight paths and order; with its weights, the same outputs
  (pre- and post-norm, with and without cross-attention, with padding
  masks, and with keras-hub's caches called by keyword, which give the
  same caches too); its config loads into ours.
- Hypothesis: a prefill then one token per call, with GQA, RoPE, sliding
  windows and left padding, equals the uncached causal call.

Bad arguments are in the catalogue, `tests/test_bad_inputs.py`. On JAX
every eager op is compiled once per shape and dtype, so the tests share
one set of shapes, and the cached calls run under `jax.jit` (a compile
per call shape instead of one per op).
"""

import json

import keras
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from keras_attention import TransformerDecoder
from tests.testing import ci_examples
from tests.testing import compiled
from tests.testing import import_keras_hub
from tests.testing import run_layer_test
from tests.testing import to_numpy

# Decoder batch, length and features; encoder length and features.
B, T, D = 2, 5, 8
S, E = 3, 6
HEADS = 2
TOL = 1e-5


def _inputs(rng, encoder_dim=D):
    x = rng.normal(size=(B, T, D)).astype("float32")
    memory = rng.normal(size=(B, S, encoder_dim)).astype("float32")
    return x, memory


def _lengths_mask(lengths, t):
    return np.arange(t)[None] < np.asarray(lengths)[:, None]


def _randomize(layer, rng):
    """Random weights, biases and layer norms included, so that a swapped
    or mis-loaded weight shows."""
    layer.set_weights(
        [
            rng.normal(scale=0.5, size=w.shape).astype("float32")
            + (1.0 if w.path.endswith("gamma") else 0.0)
            for w in layer.weights
        ]
    )


def _close(got, want, what=""):
    np.testing.assert_allclose(
        to_numpy(got), to_numpy(want), atol=TOL, rtol=TOL, err_msg=what
    )


# ----------------------------------------------------------------------
# The harness
# ----------------------------------------------------------------------
def test_layer_behaviour_decoder_only(rng):
    run_layer_test(
        TransformerDecoder,
        dict(
            intermediate_dim=16,
            num_heads=HEADS,
            dropout=0.1,
            activation="gelu",
            normalize_first=True,
            seed=5,
        ),
        dict(decoder_sequence=(B, T, D)),
        expected_output_shapes=[(B, T, D)],
        # Attention q/k/v/output, two norms, two dense: kernels and biases.
        expected_num_trainable_weights=16,
        # The cross-attention block's `fit` step below trains the same
        # sublayers and more; each step is a compile on JAX.
        run_training_check=False,
        rng=rng,
    )


def test_layer_behaviour_with_cross_attention(rng):
    run_layer_test(
        TransformerDecoder,
        dict(
            intermediate_dim=16,
            num_heads=HEADS,
            key_dim=4,
            num_key_value_heads=1,
            rope_max_wavelength=100.0,
            rope_scaling_factor=2.0,
            sliding_window=3,
            logits_soft_cap=20.0,
            chunk_size=None,
            layer_norm_epsilon=1e-3,
        ),
        dict(decoder_sequence=(B, T, D), encoder_sequence=(B, S, E)),
        expected_output_shapes=[(B, T, D)],
        # Plus the cross-attention's 8 and its norm's 2.
        expected_num_trainable_weights=26,
        rng=rng,
    )
    # The defaults' config round trip.
    layer = TransformerDecoder(16, HEADS)
    config = json.loads(json.dumps(layer.get_config()))
    assert TransformerDecoder.from_config(config).get_config() == config


# ----------------------------------------------------------------------
# keras-hub parity
# ----------------------------------------------------------------------
def _pair(keras_hub, rng, cross, normalize_first=False, build=True):
    """keras-hub's decoder with random weights, and ours with its weights."""
    kwargs = dict(
        intermediate_dim=16,
        num_heads=HEADS,
        activation="gelu",
        normalize_first=normalize_first,
    )
    theirs = keras_hub.layers.TransformerDecoder(**kwargs)
    ours = TransformerDecoder(**kwargs)
    if not build:
        return theirs, ours
    shapes = [(None, None, D)] + ([(None, None, D)] if cross else [])
    theirs.build(*shapes)
    ours.build(*shapes)
    _randomize(theirs, rng)
    ours.set_weights(theirs.get_weights())
    return theirs, ours


def _paths(layer):
    """Weight paths without the layer's own name."""
    return ["/".join(w.path.split("/")[1:]) for w in layer.weights]


@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross"])
def test_weight_paths_and_order_match_keras_hub(cross, rng):
    keras_hub = import_keras_hub()
    theirs, ours = _pair(keras_hub, rng, cross)
    assert _paths(ours) == _paths(theirs)
    assert [tuple(w.shape) for w in ours.weights] == [
        tuple(w.shape) for w in theirs.weights
    ]
    assert len(ours.weights) == (26 if cross else 16)


@pytest.mark.parametrize("normalize_first", [False, True], ids=["post", "pre"])
@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross"])
def test_matches_keras_hub(cross, normalize_first, rng):
    keras_hub = import_keras_hub()
    theirs, ours = _pair(keras_hub, rng, cross, normalize_first)
    x, memory = _inputs(rng)
    args = (x, memory) if cross else (x,)
    _close(ours(*args), theirs(*args), "no masks")
    _close(
        ours(*args, use_causal_mask=False),
        theirs(*args, use_causal_mask=False),
        "not causal",
    )

    # Padding: row 0 right-padded, row 1 left-padded; the encoder's row 1
    # right-padded (no row is fully padded). What differs, by design: ours
    # zeroes the self-attention output of a padded query row (it has no
    # key of its own to attend); keras-hub lets it attend the unpadded
    # keys before it (row 1's first query, which has none, gets Keras'
    # softmax of fully masked logits). Cross-attention and the
    # feed-forward network run on every row in both. Padded rows feed
    # nothing into unpadded ones, so only the unpadded rows are compared.
    padding = np.array([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]], bool)
    masks = dict(decoder_padding_mask=padding)
    if cross:
        masks["encoder_padding_mask"] = _lengths_mask([S, 2], S)
    got = to_numpy(ours(*args, **masks))
    want = to_numpy(theirs(*args, **masks))
    _close(got[padding], want[padding], "padding masks")
    # And the masks matter.
    assert np.abs(got[padding] - to_numpy(theirs(*args))[padding]).max() > 1e-3


def _hub_cache(max_length):
    return np.zeros((B, 2, max_length, HEADS, D // HEADS), "float32")


@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross"])
def test_caches_match_keras_hub(cross, rng):
    """keras-hub's cached calls, by keyword as keras-hub's models make
    them: a prefill of 3 tokens, then one token per call."""
    keras_hub = import_keras_hub()
    theirs, ours = _pair(keras_hub, rng, cross, normalize_first=True)
    x, memory = _inputs(rng)
    split = 3

    def decode(layer):
        def call(tokens, caches, index, fill):
            kwargs = dict(
                self_attention_cache=caches[0],
                self_attention_cache_update_index=index,
            )
            if cross:
                kwargs.update(
                    encoder_sequence=memory,
                    cross_attention_cache=caches[1],
                    cross_attention_cache_update_index=0 if fill else None,
                )
            result = layer(tokens, **kwargs)
            assert len(result) == (3 if cross else 2)
            return result[0], tuple(result[1:])

        prefill = compiled(lambda tokens, caches: call(tokens, caches, 0, True))
        one = compiled(lambda tokens, caches, i: call(tokens, caches, i, False))
        caches = (_hub_cache(T), _hub_cache(S)) if cross else (_hub_cache(T),)
        out, caches = prefill(x[:, :split], caches)
        outputs = [to_numpy(out)]
        for i in range(split, T):
            out, caches = one(x[:, i : i + 1], caches, i)
            outputs.append(to_numpy(out))
        caches = [to_numpy(c) for c in caches]
        return np.concatenate(outputs, axis=1), caches

    got, got_caches = decode(ours)
    want, want_caches = decode(theirs)
    _close(got, want, "outputs")
    for name, g, w in zip(["self", "cross"], got_caches, want_caches):
        _close(g, w, f"{name}-attention cache")
    # And the cached calls are the uncached causal call.
    _close(got, theirs(x, memory) if cross else theirs(x), "uncached")


@pytest.mark.parametrize("cross", [False, True], ids=["decoder", "cross"])
def test_keras_hub_config_loads(cross, rng):
    """keras-hub's config (through JSON) gives our layer, built from its
    `decoder_sequence_shape` and `encoder_sequence_shape` keys, that
    computes what keras-hub's does with its weights."""
    keras_hub = import_keras_hub()
    theirs, _ = _pair(keras_hub, rng, cross, build=False)
    x, memory = _inputs(rng)
    args = (x, memory) if cross else (x,)
    theirs(*args)
    _randomize(theirs, rng)
    config = json.loads(json.dumps(theirs.get_config()))
    assert ("decoder_sequence_shape" in config) and (
        "encoder_sequence_shape" in config
    )
    ours = TransformerDecoder.from_config(config)
    assert ours.built
    assert _paths(ours) == _paths(theirs)
    ours.set_weights(theirs.get_weights())
    _close(ours(*args), theirs(*args))


# ----------------------------------------------------------------------
# Cached decoding equals one uncached call
# ----------------------------------------------------------------------
def _decode(layer, x, split, memory=None, padding=None):
    """Prefills `x[:, :split]` at index 0, then one token per call; a
    cross-attention cache is filled by the prefill and read afterwards.
    Returns the outputs `(B, T, D)`."""
    heads = layer.num_key_value_heads or layer.num_heads
    head_dim = layer.key_dim or D // layer.num_heads
    self_cache = np.zeros((B, 2, T, heads, head_dim), "float32")
    cross_cache = np.zeros((B, 2, S, heads, head_dim), "float32")

    def step(tokens, caches, index, fill):
        kwargs = dict(
            decoder_padding_mask=padding,
            self_attention_cache=caches[0],
            self_attention_cache_update_index=index,
        )
        if memory is not None:
            kwargs.update(
                encoder_sequence=memory,
                cross_attention_cache=caches[1],
                cross_attention_cache_update_index=0 if fill else None,
            )
        result = layer(tokens, **kwargs)
        return result[0], tuple(result[1:])

    # The prefill's index is a Python int (static); the steps' indices are
    # traced under `jax.jit`.
    prefill = compiled(lambda tokens, caches: step(tokens, caches, 0, True))
    one = compiled(lambda tokens, caches, i: step(tokens, caches, i, False))
    caches = (self_cache, cross_cache) if memory is not None else (self_cache,)
    out, caches = prefill(x[:, :split], caches)
    outputs = [to_numpy(out)]
    for i in range(split, T):
        out, caches = one(x[:, i : i + 1], caches, i)
        outputs.append(to_numpy(out))
    return np.concatenate(outputs, axis=1)


@ci_examples(tensorflow=8, jax=5)
@given(st.data())
def test_cached_decoding_equals_uncached(data):
    draw = data.draw
    cross = draw(st.booleans(), label="cross_attention")
    kv_heads = draw(st.sampled_from([None, 1]), label="num_key_value_heads")
    rope = draw(st.sampled_from([None, 100.0]), label="rope_max_wavelength")
    scaling = draw(st.sampled_from([1.0, 4.0]), label="rope_scaling_factor")
    window = draw(st.sampled_from([None, 2, 3]), label="sliding_window")
    normalize_first = draw(st.booleans(), label="normalize_first")
    left_pad = draw(st.integers(0, 2), label="left_padding of row 1")
    split = draw(st.integers(1, T - 1), label="prefill_length")
    rng = np.random.default_rng(draw(st.integers(0, 2**16), label="seed"))

    layer = TransformerDecoder(
        16,
        HEADS,
        normalize_first=normalize_first,
        num_key_value_heads=kv_heads,
        rope_max_wavelength=rope,
        rope_scaling_factor=scaling,
        sliding_window=window,
        bias_initializer="random_normal",
    )
    x, memory = _inputs(rng)
    memory = memory if cross else None
    layer.build(x.shape, None if memory is None else memory.shape)
    padding = None
    if left_pad:
        # With a cache the mask covers its slots, (B, max_length = T).
        padding = np.arange(T)[None] >= np.array([0, left_pad])[:, None]
    args = (x,) if memory is None else (x, memory)
    uncached = compiled(lambda *a: layer(*a, decoder_padding_mask=padding))
    want = to_numpy(uncached(*args))
    got = _decode(layer, x, split, memory, padding)
    # Uncached, a padded query row's self-attention output is zero; with a
    # cache the mask covers the slots (keys) only: compare the real rows.
    rows = np.ones((B, T), bool) if padding is None else padding
    _close(got[rows], want[rows], "cached vs uncached")


# ----------------------------------------------------------------------
# Attention weights
# ----------------------------------------------------------------------
@pytest.mark.parametrize("normalize_first", [False, True], ids=["post", "pre"])
def test_attention_scores_are_the_sublayers_weights(normalize_first, rng):
    """The weights are those of the block's two attention sublayers, fed
    as the block feeds them (pre- or post-norm); the outputs don't change,
    and the scores come before the caches."""
    x, memory = _inputs(rng)
    mask = _lengths_mask([S, S - 1], S)
    decoder = TransformerDecoder(
        16, num_heads=HEADS, normalize_first=normalize_first
    )
    decoder(x, memory)
    _randomize(decoder, rng)
    outputs, self_scores, cross_scores = decoder(
        x, memory, encoder_padding_mask=mask, return_attention_scores=True
    )
    _close(outputs, decoder(x, memory, encoder_padding_mask=mask))

    self_attention = decoder._self_attention_layer
    self_norm = decoder._self_attention_layer_norm
    query = self_norm(x) if normalize_first else x
    attended, want_self = self_attention(
        query, query, use_causal_mask=True, return_attention_scores=True
    )
    residual = keras.ops.add(x, attended)
    x1 = residual if normalize_first else self_norm(residual)
    query = decoder._cross_attention_layer_norm(x1) if normalize_first else x1
    _, want_cross = decoder._cross_attention_layer(
        query, memory, value_mask=mask, return_attention_scores=True
    )
    _close(self_scores, want_self, "self-attention weights")
    _close(cross_scores, want_cross, "cross-attention weights")
    assert to_numpy(cross_scores)[1, :, :, S - 1].max() == 0.0

    self_cache = np.zeros((B, 2, T, HEADS, D // HEADS), "float32")
    cross_cache = np.zeros((B, 2, S, HEADS, D // HEADS), "float32")
    results = decoder(
        x,
        memory,
        encoder_padding_mask=mask,
        self_attention_cache=self_cache,
        self_attention_cache_update_index=0,
        cross_attention_cache=cross_cache,
        cross_attention_cache_update_index=0,
        return_attention_scores=True,
    )
    assert len(results) == 5
    _close(results[0], outputs, "cached outputs")
    _close(results[1], self_scores, "cached self-attention weights")
    _close(results[2], cross_scores, "cached cross-attention weights")
    assert tuple(results[3].shape) == self_cache.shape
    assert tuple(results[4].shape) == cross_cache.shape


def test_attention_scores_symbolic_shapes():
    decoder = TransformerDecoder(16, num_heads=HEADS)
    only = keras.Input((T, D))
    outputs, scores = decoder(only, return_attention_scores=True)
    assert tuple(outputs.shape) == (None, T, D)
    assert tuple(scores.shape) == (None, HEADS, T, T)
    cross = TransformerDecoder(16, num_heads=HEADS)
    memory = keras.Input((S, E))
    cache = keras.Input((2, 7, HEADS, D // HEADS))
    results = cross(
        only,
        memory,
        self_attention_cache=cache,
        self_attention_cache_update_index=0,
        cross_attention_cache=keras.Input((2, S, HEADS, D // HEADS)),
        return_attention_scores=True,
    )
    shapes = [tuple(r.shape) for r in results]
    assert shapes == [
        (None, T, D),
        (None, HEADS, T, 7),
        (None, HEADS, T, S),
        (None, 2, 7, HEADS, D // HEADS),
        (None, 2, S, HEADS, D // HEADS),
    ]


def test_segment_ids_equal_the_explicit_attention_masks():
    import numpy as np

    from keras_attention import TransformerDecoder
    from tests import mods

    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, 6, 8)).astype("float32")
    memory = rng.normal(size=(2, 5, 8)).astype("float32")
    dec_ids = np.array([[0, 0, 0, 1, 1, 1], [0, 1, 1, 1, 2, 2]], "int32")
    enc_ids = np.array([[0, 0, 1, 1, 1], [0, 1, 1, 2, 2]], "int32")
    block = TransformerDecoder(16, 2, mask_mod=mods.prefix_lm)
    got = block(
        x, memory, decoder_segment_ids=dec_ids, encoder_segment_ids=enc_ids
    )
    want = block(
        x,
        memory,
        decoder_attention_mask=dec_ids[:, :, None] == dec_ids[:, None],
        encoder_attention_mask=dec_ids[:, :, None] == enc_ids[:, None],
    )
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(got),
        keras.ops.convert_to_numpy(want),
        atol=1e-5,
    )
    config = block.get_config()
    assert config["mask_mod"] == "keras_attention_tests>prefix_lm"
    assert TransformerDecoder.from_config(config).mask_mod is mods.prefix_lm
