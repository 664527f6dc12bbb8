"""Writes the golden `.keras` files: one small model per public layer.

Each golden model wraps one public layer, with non-default arguments, in a
functional model. Its file goes to `saved_models/golden/<version>/<Layer>.keras`
next to `<Layer>.npz`, which holds the inputs and the outputs the model gave
when it was saved. `tests/test_artifacts.py` loads every committed golden
file with the current code and checks it still gives those outputs: that is
how we prove that models saved by older releases still load.

Usage:
    python saved_models/make_golden.py            # this release's version
    python saved_models/make_golden.py --only PatchEmbedding

A release adds a new `golden/<version>/` folder; existing files are never
regenerated (the script refuses to overwrite them).
"""

import argparse
import os
import sys

import keras
import numpy as np

import keras_attention as ka

HERE = os.path.dirname(os.path.abspath(__file__))
# The registered `score_mod` and `mask_mod` that the programmable golden
# models name live in `tests/mods.py`.
sys.path.insert(0, os.path.dirname(HERE))
from tests import mods  # noqa: E402


def _tokens(rng, batch=3, length=7, vocab=20):
    tokens = rng.integers(1, vocab, size=(batch, length)).astype("int32")
    tokens[0, 4:] = 0  # a padded row: the masks are part of what is checked
    tokens[2, 2:] = 0
    return tokens


def multi_head_attention(rng):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    memory = keras.Input((None, 6), name="memory")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(
        num_heads=4,
        key_dim=3,
        value_dim=5,
        num_key_value_heads=2,
        output_shape=7,
        chunk_size=4,
    )(x, memory, use_causal_mask=False)
    model = keras.Model([tokens, memory], x)
    inputs = [_tokens(rng), rng.normal(size=(3, 5, 6)).astype("float32")]
    return model, inputs


def multi_head_attention_gated(rng):
    """Gated (Keras' `use_gate`), soft-capped, chunked, causal."""
    features = keras.Input((None, 6), name="features")
    x = ka.MultiHeadAttention(
        num_heads=2,
        key_dim=3,
        use_gate=True,
        logits_soft_cap=4.0,
        chunk_size=3,
    )(features, features, use_causal_mask=True)
    model = keras.Model(features, x)
    return model, [rng.normal(size=(2, 7, 6)).astype("float32")]


def grouped_query_attention(rng):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.GroupedQueryAttention(
        head_dim=3,
        num_query_heads=4,
        num_key_value_heads=2,
        use_gate=True,
        sliding_window=3,
        logits_soft_cap=5.0,
        chunk_size=4,
    )(x, x, use_causal_mask=True)
    return keras.Model(tokens, x), [_tokens(rng)]


def additive_attention(rng):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.AdditiveAttention(units=6, normalize=True, chunk_size=3)(x, x)
    return keras.Model(tokens, x), [_tokens(rng)]


def attention_pooling(rng):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.AttentionPooling(units=5, num_heads=2)(x)
    return keras.Model(tokens, x), [_tokens(rng)]


def patch_embedding(rng):
    pixels = keras.Input((8, 6, 2), name="pixels")
    x = ka.PatchEmbedding(patch_size=(4, 2), hidden_dim=5)(pixels)
    return keras.Model(pixels, x), [rng.normal(size=(2, 8, 6, 2))]


def position_embedding(rng):
    features = keras.Input((None, 4), name="features")
    x = ka.PositionEmbedding(sequence_length=10)(features)
    x = keras.layers.Add()([features, x])
    return keras.Model(features, x), [rng.normal(size=(2, 7, 4))]


def sinusoidal_position_encoding(rng):
    features = keras.Input((None, 6), name="features")
    x = ka.SinusoidalPositionEncoding(max_wavelength=100)(features)
    x = keras.layers.Dense(3)(keras.layers.Add()([features, x]))
    return keras.Model(features, x), [rng.normal(size=(2, 5, 6))]


def transformer_encoder(rng):
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.TransformerEncoder(
        intermediate_dim=12, num_heads=2, normalize_first=True, dropout=0.1
    )(x)
    x = ka.TransformerEncoder(intermediate_dim=12, num_heads=2)(x)
    return keras.Model(tokens, x), [_tokens(rng)]


def multi_head_attention_rope(rng):
    """RoPE (scaled), grouped-query heads, causal, over a padded batch."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.MultiHeadAttention(
        num_heads=4,
        key_dim=4,
        num_key_value_heads=2,
        rope_max_wavelength=100.0,
        rope_scaling_factor=2.0,
    )(x, x, use_causal_mask=True)
    return keras.Model(tokens, x), [_tokens(rng)]


def rotary_embedding(rng):
    """Queries laid out (batch, length, heads, head_dim), from step 3."""
    features = keras.Input((None, 2, 4), name="features")
    x = ka.RotaryEmbedding(max_wavelength=100, scaling_factor=2.0)(
        features, start_index=3
    )
    return keras.Model(features, x), [rng.normal(size=(2, 5, 2, 4))]


def transformer_encoder_rope(rng):
    """The encoder's 0.2 options: GQA, RoPE, window, soft-cap."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.TransformerEncoder(
        intermediate_dim=12,
        num_heads=2,
        num_key_value_heads=1,
        rope_max_wavelength=100.0,
        rope_scaling_factor=2.0,
        sliding_window=3,
        logits_soft_cap=10.0,
    )(x)
    return keras.Model(tokens, x), [_tokens(rng)]


def transformer_decoder(rng):
    """Pre-norm, cross-attention to a memory of another width, GQA, RoPE
    and a sliding window; the tokens' padding mask reaches the block."""
    tokens = keras.Input((None,), dtype="int32", name="tokens")
    memory = keras.Input((None, 6), name="memory")
    x = keras.layers.Embedding(20, 8, mask_zero=True)(tokens)
    x = ka.TransformerDecoder(
        intermediate_dim=12,
        num_heads=2,
        normalize_first=True,
        num_key_value_heads=1,
        rope_max_wavelength=100.0,
        sliding_window=3,
    )(x, memory)
    model = keras.Model([tokens, memory], x)
    inputs = [_tokens(rng), rng.normal(size=(3, 5, 6)).astype("float32")]
    return model, inputs


def multi_head_attention_programmable(rng):
    """Registered `score_mod` and `mask_mod`, sinks, GQA, chunked."""
    features = keras.Input((None, 6), name="features")
    x = ka.MultiHeadAttention(
        num_heads=4,
        key_dim=3,
        num_key_value_heads=2,
        score_mod=mods.distance_penalty,
        mask_mod=mods.prefix_lm,
        use_attention_sinks=True,
        chunk_size=3,
    )(features, features)
    model = keras.Model(features, x)
    return model, [rng.normal(size=(2, 7, 6)).astype("float32")]


@keras.saving.register_keras_serializable(package="golden")
class GoldenLM(keras.Model):
    """The smallest language model with `TokenGenerator`'s interface: an
    embedding, one cached `TransformerDecoder` (RoPE, GQA), logits."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.embedding = keras.layers.Embedding(11, 8, name="tokens")
        self.block = ka.TransformerDecoder(
            12,
            2,
            normalize_first=True,
            num_key_value_heads=1,
            rope_max_wavelength=100.0,
            name="block",
        )
        self.head = keras.layers.Dense(11, name="logits")

    def call(self, token_ids):
        return self.head(self.block(self.embedding(token_ids)))

    def init_cache(self, batch_size, max_length):
        return keras.ops.zeros((batch_size, 2, max_length, 1, 4))

    def call_with_cache(self, token_ids, cache, index, padding_mask):
        x, cache = self.block(
            self.embedding(token_ids),
            decoder_padding_mask=padding_mask,
            self_attention_cache=cache,
            self_attention_cache_update_index=index,
        )
        return self.head(x), cache


def token_generator(rng):
    """Seeded top-k sampling from a small cached LM, left-padded prompts."""
    lm = GoldenLM()
    lm(np.ones((1, 3), "int32"))
    prompts = keras.Input((5,), dtype="int32", name="prompts")
    x = ka.TokenGenerator(
        lm, max_length=9, strategy="sample", temperature=0.7, top_k=4
    )(prompts, seed=3)
    tokens = rng.integers(1, 11, size=(3, 5)).astype("int32")
    tokens[1, :3] = 0  # left padding
    return keras.Model(prompts, x), [tokens]


def _golden_generator(rng, **generator_kwargs):
    """`TokenGenerator(GoldenLM, max_length=9, **generator_kwargs)` on
    left-padded prompts."""
    lm = GoldenLM()
    lm(np.ones((1, 3), "int32"))
    prompts = keras.Input((5,), dtype="int32", name="prompts")
    x = ka.TokenGenerator(lm, max_length=9, **generator_kwargs)(prompts)
    tokens = rng.integers(1, 11, size=(3, 5)).astype("int32")
    tokens[1, :3] = 0  # left padding
    return keras.Model(prompts, x), [tokens]


def token_generator_samplers(rng):
    """Top-p with penalties and stop sequences: the sampler's config."""
    nucleus = ka.samplers.TopPSampler(
        p=0.8,
        k=6,
        seed=5,
        temperature=0.9,
        logits_processors=[
            ka.samplers.RepetitionPenalty(1.3),
            ka.samplers.FrequencyPenalty(0.2),
            ka.samplers.BanTokens([10]),
        ],
    )
    return _golden_generator(rng, sampler=nucleus, stop_token_ids=[[3, 4], 7])


def token_generator_beam(rng):
    """Beam search: the best of three beams."""
    beams = ka.samplers.BeamSampler(num_beams=3)
    return _golden_generator(rng, sampler=beams)


GOLDEN = {
    "MultiHeadAttention": multi_head_attention,
    "MultiHeadAttention-gated": multi_head_attention_gated,
    "MultiHeadAttention-rope": multi_head_attention_rope,
    "MultiHeadAttention-programmable": multi_head_attention_programmable,
    "GroupedQueryAttention": grouped_query_attention,
    "AdditiveAttention": additive_attention,
    "AttentionPooling": attention_pooling,
    "PatchEmbedding": patch_embedding,
    "PositionEmbedding": position_embedding,
    "RotaryEmbedding": rotary_embedding,
    "SinusoidalPositionEncoding": sinusoidal_position_encoding,
    "TransformerEncoder": transformer_encoder,
    "TransformerEncoder-rope": transformer_encoder_rope,
    "TransformerDecoder": transformer_decoder,
    "TokenGenerator": token_generator,
    "TokenGenerator-samplers": token_generator_samplers,
    "TokenGenerator-beam": token_generator_beam,
}


def _randomize(model, rng):
    """Non-trivial weights (biases too), so a mis-loaded weight shows."""
    model.set_weights(
        [
            rng.normal(scale=0.5, size=w.shape).astype(w.dtype)
            for w in model.get_weights()
        ]
    )


def _structure(inputs):
    return inputs[0] if len(inputs) == 1 else inputs


def load(path):
    """The golden model and its stored `(inputs, outputs)`."""
    model = keras.saving.load_model(path)  # safe_mode=True, the default
    with np.load(path[: -len(".keras")] + ".npz", allow_pickle=False) as data:
        n = len([k for k in data.files if k.startswith("input_")])
        inputs = [data[f"input_{i}"] for i in range(n)]
        return model, _structure(inputs), data["output"]


def write(name, version, seed=0):
    directory = os.path.join(HERE, "golden", version)
    path = os.path.join(directory, f"{name}.keras")
    if os.path.exists(path):
        raise FileExistsError(
            f"{path} exists: golden files are never regenerated. Add a new "
            "release version instead."
        )
    os.makedirs(directory, exist_ok=True)
    keras.utils.set_random_seed(seed)
    rng = np.random.default_rng(seed)
    model, inputs = GOLDEN[name](rng)
    _randomize(model, rng)
    outputs = model.predict(_structure(inputs), verbose=0)
    model.save(path)
    arrays = {f"input_{i}": x for i, x in enumerate(inputs)}
    np.savez(os.path.join(directory, f"{name}.npz"), output=outputs, **arrays)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=ka.__version__)
    parser.add_argument("--only", nargs="*", choices=sorted(GOLDEN))
    args = parser.parse_args(argv)
    for name in args.only or sorted(GOLDEN):
        print(write(name, args.version))
    return 0


if __name__ == "__main__":
    sys.exit(main())
