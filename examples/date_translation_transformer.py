"""Date translation with an encoder-decoder Transformer and KV-cached decoding.

What it shows:
    The task, data, evaluation and export of `date_translation.py` (dates
    in many formats to ISO 8601, one character at a time; the data:
    `examples/_dates.py`) with an encoder-decoder Transformer (64 wide, 4
    heads, 172k weights): two `keras_attention.TransformerEncoder` blocks
    over the characters, with rotary position embeddings and the source's
    padding masked, and two `keras_attention.TransformerDecoder` blocks
    (causal self-attention, cross-attention to the encoder outputs) over
    the target characters, with `keras_attention.PositionEmbedding`;
    teacher forcing in training. Greedy decoding uses the blocks'
    key/value caches: the encoder runs once, each block's cross-attention
    cache is filled once at the first step
    (`cross_attention_cache_update_index=0`) and then only read, and a
    `keras.ops.fori_loop` feeds one character per step through the blocks,
    writing its keys and values into fixed-size self-attention caches at
    `self_attention_cache_update_index=step`. Adam peaks at 2e-3 after a
    linear warmup over the first epoch. The alignments plot
    (runs/date_translation_transformer/alignments.png) shows the last
    decoder block's cross-attention weights averaged over the heads. The
    export goes to saved_models/date_translation_transformer/; under JAX or
    PyTorch, as in `date_translation.py`, through a TensorFlow process.

How to run:
    python examples/date_translation_transformer.py
    python examples/date_translation.py --model transformer   # the same
    KERAS_BACKEND=jax python examples/date_translation_transformer.py
    KERAS_BACKEND=torch python examples/date_translation_transformer.py
    python examples/date_translation_transformer.py --help
    python examples/date_translation_transformer.py --max-steps 4 \\
        --epochs 2 --no-export

Expected result (default flags, seed 0, 2 CPU cores): about 99.8% exact
match in about 6 minutes. The script exits non-zero if the export's answers
differ from the Keras model's. Measured runs: examples/RESULTS.md.
"""

import sys

import _common  # noqa: F401  (before keras: it may split the CPU)
import _dates
import keras
from keras import ops

import keras_attention as ka

# Setup ------------------------------------------------------------------
LEARNING_RATE = 2e-3
ROPE_MAX_WAVELENGTH = 100.0  # the source has 32 positions


def add_arguments(group):
    group.add_argument(
        "--dim",
        type=int,
        default=64,
        help="the model width; the feed-forward networks have twice as many "
        "units (default: %(default)s)",
    )
    group.add_argument(
        "--num-heads",
        type=int,
        default=4,
        help="attention heads (default: %(default)s)",
    )
    group.add_argument(
        "--num-layers",
        type=int,
        default=2,
        help="encoder blocks, and as many decoder blocks (default: "
        "%(default)s)",
    )
    group.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout on the character embeddings and in the blocks "
        "(default: %(default)s)",
    )


# Model -------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="date_translation")
class TransformerTargetDecoder(_dates.TargetDecoder):
    """The Transformer's target side: characters in, next characters out.

    Target characters (the start token, then the targets shifted right)
    are embedded, with learned positions (`keras_attention.
    PositionEmbedding`), and go through `num_layers`
    `keras_attention.TransformerDecoder` blocks: causal self-attention over
    the target, cross-attention over the encoder outputs (the source's
    padding masked) and a feed-forward network. A `Dense` gives the logits.

    Called with the `decoder_inputs` (teacher forcing), it returns the
    logits `(batch, target_length, vocabulary)`. `greedy()` decodes with
    the blocks' key/value caches: the encoder outputs are projected into
    each block's cross-attention cache once, at the first step, and each
    later step runs one character through the blocks, writing its keys and
    values into the fixed-size self-attention caches, in a
    `keras.ops.fori_loop`.
    """

    def __init__(
        self,
        vocabulary_size,
        target_length,
        dim,
        num_heads,
        num_layers,
        intermediate_dim,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(vocabulary_size, target_length, dim, **kwargs)
        self.dim = dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.head_dim = dim // num_heads
        self.positions = ka.PositionEmbedding(target_length, name="positions")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.blocks = [
            ka.TransformerDecoder(
                intermediate_dim,
                num_heads,
                dropout=dropout,
                chunk_size=None,  # see build_models
                name=f"decoder_block_{i}",
            )
            for i in range(num_layers)
        ]
        self.logits = self.logits_layer()

    def build(self, encoder_outputs_shape, *args, **kwargs):
        batch = encoder_outputs_shape[0]
        shape = (batch, self.target_length, self.dim)
        self.embedding.build((batch, self.target_length))
        self.positions.build(shape)
        for block in self.blocks:
            block.build(shape, encoder_outputs_shape)
        self.logits.build(shape)

    def embed(self, tokens, start_index=0, training=None):
        """Character and position embeddings of `tokens` `(batch, length)`,
        the first at position `start_index`."""
        x = self.embedding(tokens)
        x = x + self.positions(x, start_index=start_index)
        return self.embedding_dropout(x, training=training)

    def call(
        self,
        encoder_outputs,
        source_ids,
        decoder_inputs,
        training=None,
    ):
        source_mask = ops.not_equal(source_ids, 0)
        x = self.embed(decoder_inputs, training=training)
        for block in self.blocks:
            # Causal self-attention: position i sees the targets before i.
            x = block(
                x,
                encoder_outputs,
                encoder_padding_mask=source_mask,
                training=training,
            )
        return self.logits(x)

    def _cache(self, batch, length):
        shape = (batch, 2, length, self.num_heads, self.head_dim)
        return ops.zeros(shape, self.compute_dtype)

    def greedy(self, encoder_outputs, source_ids):
        """Greedy decoding with KV caches: ids and cross-attention weights."""
        source_mask = ops.not_equal(source_ids, 0)
        batch, source_length = ops.shape(source_ids)[0], source_ids.shape[1]
        steps = self.target_length

        def next_token(x):
            logits = self.logits(x)[:, 0]
            return ops.cast(ops.argmax(logits, axis=-1), "int32")

        def write(ids, i, token):
            # Write step i into the ids (shapes stay fixed in the loop).
            at_i = ops.one_hot(i, steps, dtype="int32")
            return ids + at_i[None, :] * token[:, None]

        # Step 0, the start token: fills each block's cross-attention cache
        # with the projected encoder outputs (once) and slot 0 of its
        # self-attention cache.
        x = self.embed(ops.zeros((batch, 1), "int32") + _dates.START)
        self_caches, cross_caches = [], []
        for block in self.blocks:
            x, self_cache, cross_cache = block(
                x,
                encoder_outputs,
                encoder_padding_mask=source_mask,
                self_attention_cache=self._cache(batch, steps),
                self_attention_cache_update_index=0,
                cross_attention_cache=self._cache(batch, source_length),
                cross_attention_cache_update_index=0,
            )
            self_caches.append(self_cache)
            cross_caches.append(cross_cache)
        token = next_token(x)
        ids = write(ops.zeros((batch, steps), "int32"), 0, token)

        def body(i, carry):
            # Step i: the previous character at position i; its keys and
            # values go to slot i, the causal mask hides the slots after i,
            # and the cross-attention caches are only read (index None).
            token, ids, self_caches = carry
            x = self.embed(token[:, None], start_index=i)
            updated = []
            for block, self_cache, cross_cache in zip(
                self.blocks, self_caches, cross_caches
            ):
                x, self_cache, _ = block(
                    x,
                    encoder_outputs,
                    encoder_padding_mask=source_mask,
                    self_attention_cache=self_cache,
                    self_attention_cache_update_index=i,
                    cross_attention_cache=cross_cache,
                    cross_attention_cache_update_index=None,
                )
                updated.append(self_cache)
            token = next_token(x)
            return token, write(ids, i, token), updated

        _, ids, _ = ops.fori_loop(1, steps, body, (token, ids, self_caches))
        start = ops.zeros((batch, 1), "int32") + _dates.START
        decoder_inputs = ops.concatenate([start, ids[:, :-1]], axis=1)
        alignments = self.cross_attention_weights(
            encoder_outputs, source_ids, decoder_inputs
        )
        return ids, alignments

    def cross_attention_weights(self, encoder_outputs, source_ids, inputs):
        """The last block's cross-attention weights, averaged over heads,
        `(batch, target_length, source_length)`, for the decoder inputs
        `inputs` (one teacher-forced pass, no caches).
        """
        source_mask = ops.not_equal(source_ids, 0)
        x = self.embed(inputs)
        for block in self.blocks[:-1]:
            x = block(x, encoder_outputs, encoder_padding_mask=source_mask)
        _, _, weights = self.blocks[-1](
            x,
            encoder_outputs,
            encoder_padding_mask=source_mask,
            return_attention_scores=True,
        )
        return ops.mean(ops.cast(weights, "float32"), axis=1)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "dim": self.dim,
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
            }
        )
        return config


def build_models(dim=64, num_heads=4, num_layers=2, dropout=0.0):
    """The training and greedy inference models (shared layers), with the
    inputs and outputs of `date_translation.build_models`'."""
    source_ids, decoder_inputs = inputs = _dates.model_inputs()
    # Encoder: characters -> TransformerEncoder blocks that attend over the
    # source's characters, never its padding. Rotary position embeddings
    # (relative positions) rather than learned absolute ones: "sat 21/11/26"
    # reads like "21/11/26" four characters on. `chunk_size=None`: dense
    # attention, as the sequences are short; "auto" would also put the
    # chunked kernel in the graph, for batches too big for the dense one.
    source_mask = ops.not_equal(source_ids, 0)
    x = keras.layers.Embedding(
        len(_dates.INPUT_CHARS) + 2, dim, name="characters"
    )(source_ids)
    x = keras.layers.Dropout(dropout)(x)
    for i in range(num_layers):
        x = ka.TransformerEncoder(
            2 * dim,
            num_heads,
            dropout=dropout,
            rope_max_wavelength=ROPE_MAX_WAVELENGTH,
            chunk_size=None,
            name=f"encoder_block_{i}",
        )(x, padding_mask=source_mask)
    encoder_outputs = x

    decoder = TransformerTargetDecoder(
        vocabulary_size=len(_dates.TARGET_CHARS) + 1,
        target_length=_dates.TARGET_LENGTH,
        dim=dim,
        num_heads=num_heads,
        num_layers=num_layers,
        intermediate_dim=2 * dim,
        dropout=dropout,
        name="decoder",
    )
    logits = decoder(encoder_outputs, source_ids, decoder_inputs)
    return _dates.training_and_inference(
        inputs, logits, decoder, encoder_outputs, source_ids
    )


# Main --------------------------------------------------------------------
def main(argv=None):
    args = _dates.parse_args(
        __doc__,
        "date_translation_transformer",
        argv,
        add_arguments,
        learning_rate=LEARNING_RATE,
    )

    def build(args, steps):
        model, inference_model = build_models(
            args.dim, args.num_heads, args.num_layers, args.dropout
        )
        # A linear warmup over the first epoch, then the cosine decay.
        warmup = steps if args.epochs > 1 else 0
        schedule = keras.optimizers.schedules.CosineDecay(
            0.0 if warmup else args.learning_rate,
            decay_steps=max(1, steps * args.epochs - warmup),
            alpha=0.05,
            warmup_target=args.learning_rate if warmup else None,
            warmup_steps=warmup,
        )
        return model, inference_model, schedule

    return _dates.train_evaluate_export(
        args,
        "transformer",
        build,
        "Cross-attention weights of the last decoder block (mean over heads)",
    )


if __name__ == "__main__":
    sys.exit(main())
