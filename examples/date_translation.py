"""Date translation: a character-level seq2seq model with Bahdanau attention
(or, with --model transformer, an encoder-decoder Transformer).

What it shows:
    The classic Bahdanau setting with `keras_attention.AdditiveAttention`:
    a model that reads a human-written date in one of many formats ("sat 21
    nov 2026", "21/11/26", "November 21, 2026", "2026.11.21", "21st of
    November 2026", ...) one character at a time and writes it in ISO 8601
    ("2026-11-21"). A bidirectional GRU encodes the characters; a GRU
    decoder attends over them at every output step, with the keys projected
    once (`AdditiveAttention.project_keys`) and reused at every step. The
    model trains with teacher forcing through `model.fit`; inference is
    greedy decoding in a `keras.ops.fori_loop`, so the same graph runs under
    TensorFlow and JAX and is exported as is. The script reports exact-match
    accuracy on held-out dates in the training formats and on held-out
    formats, saves a heat map of the alignments (which input characters each
    output character attends to), and exports a string-in, string-out
    SavedModel for TF Serving: lower-casing, character lookup, the decoding
    loop and the join back to a string all run inside the graph. Under JAX
    that string model is built around the trained layers without being run
    (JAX arrays hold no strings), saved to runs/date_translation/
    date_translation.keras and exported by a TensorFlow process, with
    `serving_default` only (`translate_ids` is a TensorFlow function); see
    "Trained on JAX" in the README.

    `--model transformer`: the same task, data, evaluation and export with
    an encoder-decoder Transformer (64 wide, 4 heads, 172k weights): two
    `keras_attention.TransformerEncoder` blocks over the characters, with
    rotary position embeddings and the source's padding masked, and two
    `keras_attention.TransformerDecoder` blocks (causal self-attention,
    cross-attention to the encoder outputs) over the target characters,
    with `keras_attention.PositionEmbedding`; teacher forcing in training.
    Greedy decoding uses the blocks' key/value caches: the encoder runs
    once, each block's cross-attention cache is filled once at the first
    step (`cross_attention_cache_update_index=0`) and then only read, and
    a `keras.ops.fori_loop` feeds one character per step through the
    blocks, writing its keys and values into fixed-size self-attention
    caches at `self_attention_cache_update_index=step`. Its defaults
    differ in one place: Adam peaks at 2e-3 (not 3e-3) after a linear
    warmup over the first epoch. The alignments in its plot are the last
    decoder block's cross-attention weights averaged over the heads (one
    teacher-forced pass over the decoded characters, as `TransformerDecoder`
    returns no weights). Its run files go to runs/date_translation_transformer/
    and its export to saved_models/date_translation_transformer/.

The data (generated deterministically from --seed, offline): every day from
1969-01-01 to 2068-12-31 (so that two-digit years read as Python's `%y`
does: 69-99 are 19xx, 00-68 are 20xx), in one of 31 training formats with
random capitalisation. A random tenth of the days is held out: no training
input mentions them. Seven more formats are held out too; each one
recombines parts that the training formats use ("Sat 21/11/26", "5-3-2026",
"November 21 2026", "21st November 2026", "Nov 21st, 2026", ...). The test
sets hold the held-out days in the training formats, and the held-out days
in the held-out formats. Dropout on the character embeddings is what lets
the model read the held-out formats (in a 3-epoch trial without it,
"{d}-{m}-{yyyy}" fell to 95%).

How to run:
    python examples/date_translation.py        # trains, evaluates, exports
    python examples/date_translation.py --model transformer
    KERAS_BACKEND=jax python examples/date_translation.py   # see below
    python examples/date_translation.py --help
    python examples/date_translation.py --max-steps 4 --epochs 2 --no-export

Expected result (default flags, seed 0; measured on 2 CPU cores shared with
other jobs, load average about 5; TF 2.21, Keras 3.15.1, JAX 0.10.2):
    TensorFlow: exact match 99.83% overall, 100.00% on held-out dates in the
    training formats and 99.65% on held-out formats (six of them at 100%,
    "{d}-{m}-{yyyy}" as in "6-12-2014" at 97.4%), in 2.4 minutes in all
    (145 s wall: 121 s of training, 4 epochs of 313 steps at 80-92 ms per
    step, then evaluation, export and its check; 187 s in an earlier run
    with the same training at load average 3 to 8, 183 s in a rerun beside
    the Transformer's, at load average 3).
    JAX: 100.00% on both test sets in 2.2 minutes (132 s wall: 124 s of
    training at 76-111 ms per step, compilation included), before the
    export under JAX existed. Rerun with it (load average about 1.6): 100.00%
    on both, 81 s to the end of training, 107 s wall in all; the export
    through TensorFlow (1.02 MB) serves all 32 check inputs as the JAX
    model decodes them.
    Then `alignments.png` in runs/date_translation/ (the committed one is
    examples/figures/date_translation_alignments.png: each output digit
    attends to the input character it copies, month names to their letters)
    and an export to saved_models/date_translation/<next version>/ (1.2 MB)
    whose `serving_default` signature maps strings to ISO dates:
    `{"inputs": {"text": ["sat 21 nov 2026"]}}` gives `{"outputs":
    ["2026-11-21"]}`. The script exits non-zero if the export's answers
    differ from the Keras model's.
    --model transformer, TensorFlow: exact match 99.85% overall, 99.70% on
    held-out dates in the training formats (the errors: run-together or
    unpadded numbers, "20411209" read as 2041-11-09) and 100.00% on all
    seven held-out formats, in 5.8 minutes (349 s wall, load average about
    3: 310 s of training at 162-177 ms per step; a 3.6 MB export). With
    learned absolute positions in the encoder instead of RoPE (and Adam at
    1e-3), "{wd} {dd}/{mm}/{yy}" fell to 3.8%: the numbers sat four
    characters later than in any training format.
    --model transformer, JAX: 99.80% overall (99.60% and 100.00%) in 5.1
    minutes (307 s wall: 292 s of training at 202-257 ms per step).
"""

import datetime
import json
import os
import sys

import _common  # noqa: F401  (before keras: it may split the CPU)
import keras
import numpy as np
from keras import ops

import keras_attention as ka

# Setup ------------------------------------------------------------------
FIRST_DAY = datetime.date(1969, 1, 1)
LAST_DAY = datetime.date(2068, 12, 31)
HELD_OUT_DAY_FRACTION = 0.1

# Inputs are lower-cased, split into characters, looked up in INPUT_CHARS
# (id 0: padding, 1: unknown, then INPUT_CHARS from 2, as TextVectorization
# numbers them) and padded or cut to MAX_INPUT_LENGTH.
INPUT_CHARS = " ,-./0123456789abcdefghijklmnopqrstuvwxyz"
MAX_INPUT_LENGTH = 32
# Outputs: id 0 is the decoder's start token; TARGET_CHARS from 1.
TARGET_CHARS = "-0123456789"
START = 0
TARGET_LENGTH = 10  # "2026-11-21"
TRANSFORMER_LEARNING_RATE = 2e-3
ROPE_MAX_WAVELENGTH = 100.0  # the source has 32 positions


def add_arguments(parser):
    group = parser.add_argument_group("date_translation")
    group.add_argument(
        "--train-samples",
        type=int,
        default=40000,
        help="training pairs (default: %(default)s)",
    )
    group.add_argument(
        "--test-samples",
        type=int,
        default=2000,
        help="pairs in each test set: held-out dates, held-out formats "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--model",
        choices=["bahdanau", "transformer"],
        default="bahdanau",
        help="bahdanau: GRU encoder and decoder with AdditiveAttention; "
        "transformer: TransformerEncoder and TransformerDecoder blocks "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--units",
        type=int,
        default=64,
        help="bahdanau: GRU units per direction in the encoder; the decoder "
        "GRU has twice as many (default: %(default)s)",
    )
    group.add_argument(
        "--dim",
        type=int,
        default=64,
        help="transformer: the model width; the feed-forward networks have "
        "twice as many units (default: %(default)s)",
    )
    group.add_argument(
        "--num-heads",
        type=int,
        default=4,
        help="transformer: attention heads (default: %(default)s)",
    )
    group.add_argument(
        "--num-layers",
        type=int,
        default=2,
        help="transformer: encoder blocks, and as many decoder blocks "
        "(default: %(default)s)",
    )
    group.add_argument(
        "--dropout",
        type=float,
        default=0.1,
        help="dropout on the character embeddings (transformer: also in the "
        "blocks) (default: %(default)s)",
    )
    group.add_argument(
        "--learning-rate",
        type=float,
        default=None,
        help="Adam's peak rate, cosine decay (default: 3e-3 for bahdanau; "
        f"{TRANSFORMER_LEARNING_RATE} for transformer, after a linear warmup "
        "over the first epoch)",
    )


# Data --------------------------------------------------------------------
MONTHS = [
    "january",
    "february",
    "march",
    "april",
    "may",
    "june",
    "july",
    "august",
    "september",
    "october",
    "november",
    "december",
]
WEEKDAYS = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
]

# Format templates. Fields: {d} 5, {dd} 05, {do} 5th, {m} 3, {mm} 03,
# {mon} mar, {month} march, {yy} 26, {yyyy} 2026, {wd} thu, {weekday}
# thursday. Numeric dates are day-first (or year-first with four-digit
# years), so no input is ambiguous.
TRAIN_FORMATS = [
    "{dd}/{mm}/{yyyy}",
    "{d}/{m}/{yyyy}",
    "{dd}/{mm}/{yy}",
    "{d}/{m}/{yy}",
    "{dd}-{mm}-{yyyy}",
    "{dd}.{mm}.{yyyy}",
    "{d}.{m}.{yy}",
    "{d}.{m}.{yyyy}",
    "{yyyy}-{mm}-{dd}",
    "{yyyy}-{m}-{d}",
    "{yyyy}/{mm}/{dd}",
    "{yyyy}.{mm}.{dd}",
    "{yyyy}{mm}{dd}",
    "{d} {mon} {yyyy}",
    "{dd} {mon} {yyyy}",
    "{d} {month} {yyyy}",
    "{d} {mon} {yy}",
    "{dd}{mon}{yyyy}",
    "{dd}-{mon}-{yy}",
    "{month} {d}, {yyyy}",
    "{mon} {d}, {yyyy}",
    "{mon}-{dd}-{yyyy}",
    "{wd} {d} {mon} {yyyy}",
    "{weekday} {d} {month} {yyyy}",
    "{weekday}, {month} {d}, {yyyy}",
    "{wd} {month} {d} {yyyy}",
    "{wd}, {dd}/{mm}/{yyyy}",
    "{do} of {month} {yyyy}",
    "the {do} of {month}, {yyyy}",
    "{do} {mon} {yyyy}",
    "{month} {do}, {yyyy}",
]
# Never seen in training; each recombines parts of the training formats.
HELD_OUT_FORMATS = [
    "{wd} {dd}/{mm}/{yy}",
    "{d}-{m}-{yyyy}",
    "{month} {d} {yyyy}",
    "{do} {month} {yyyy}",
    "{d}-{mon}-{yyyy}",
    "{weekday}, {d} {mon} {yyyy}",
    "{mon} {do}, {yyyy}",
]
CASES = ("lower", "title", "upper")


def ordinal(day):
    """1st, 2nd, 3rd, 4th, ..., 11th, 12th, 13th, ..., 21st, ..."""
    suffix = {1: "st", 2: "nd", 3: "rd"}.get(day % 10, "th")
    return f"{day}{'th' if day in (11, 12, 13) else suffix}"


def render(date, template, case="lower"):
    """One human-written form of `date` (a `datetime.date`)."""

    def name(word):
        return word.title() if case == "title" else word

    text = template.format(
        d=date.day,
        dd=f"{date.day:02d}",
        do=ordinal(date.day),
        m=date.month,
        mm=f"{date.month:02d}",
        mon=name(MONTHS[date.month - 1][:3]),
        month=name(MONTHS[date.month - 1]),
        yy=f"{date.year % 100:02d}",
        yyyy=date.year,
        wd=name(WEEKDAYS[date.weekday()][:3]),
        weekday=name(WEEKDAYS[date.weekday()]),
    )
    return text.upper() if case == "upper" else text


def split_days(seed):
    """All days of the range, split into (training days, held-out days)."""
    days = np.arange(FIRST_DAY.toordinal(), LAST_DAY.toordinal() + 1)
    days = np.random.default_rng(seed).permutation(days)
    n_held_out = int(round(len(days) * HELD_OUT_DAY_FRACTION))
    return np.sort(days[n_held_out:]), np.sort(days[:n_held_out])


def make_pairs(days, formats, num_samples, rng):
    """`num_samples` random (text, ISO date) pairs from `days` x `formats`.

    Returns a dict of arrays: `text`, `iso` (the targets), `day` (ordinals)
    and `format` (the templates).
    """
    picked = rng.choice(days, size=num_samples)
    templates = rng.choice(np.asarray(formats, dtype=object), num_samples)
    cases = rng.choice(len(CASES), size=num_samples, p=[0.5, 0.3, 0.2])
    texts, targets = [], []
    for day, template, case in zip(picked, templates, cases):
        date = datetime.date.fromordinal(int(day))
        texts.append(render(date, template, CASES[case]))
        targets.append(date.isoformat())
    return {
        "text": np.array(texts, dtype=object),
        "iso": np.array(targets, dtype=object),
        "day": picked,
        "format": templates,
    }


def make_dataset(train_samples, test_samples, seed):
    """Training pairs and the two test sets, all from `seed`.

    `held_out_dates`: days never seen in training, in training formats.
    `held_out_formats`: the same held-out days, in formats never seen.
    """
    train_days, test_days = split_days(seed)
    rng = np.random.default_rng([seed, 1])
    return {
        "train": make_pairs(train_days, TRAIN_FORMATS, train_samples, rng),
        "held_out_dates": make_pairs(
            test_days, TRAIN_FORMATS, test_samples, rng
        ),
        "held_out_formats": make_pairs(
            test_days, HELD_OUT_FORMATS, test_samples, rng
        ),
    }


_INPUT_IDS = {c: i + 2 for i, c in enumerate(INPUT_CHARS)}


def encode_inputs(texts):
    """Lower-cases and maps characters to ids, `(n, MAX_INPUT_LENGTH)`.

    The NumPy twin of the export's in-graph `TextVectorization`.
    """
    ids = np.zeros((len(texts), MAX_INPUT_LENGTH), "int32")
    for row, text in enumerate(texts):
        chars = text.lower()[:MAX_INPUT_LENGTH]
        ids[row, : len(chars)] = [_INPUT_IDS.get(c, 1) for c in chars]
    return ids


def encode_targets(isos):
    """ISO dates to target ids `(n, TARGET_LENGTH)` (the inverse of
    `decode_targets`: "?" is the start token)."""
    chars = "?" + TARGET_CHARS
    return np.array([[chars.index(c) for c in iso] for iso in isos], "int32")


def decode_targets(ids):
    """Target ids back to strings (the start token reads as "?")."""
    chars = "?" + TARGET_CHARS
    return np.array(
        ["".join(chars[int(i)] for i in row) for row in ids], dtype=object
    )


def teacher_forcing(targets):
    """Decoder inputs: the start token, then the targets shifted right."""
    start = np.full((len(targets), 1), START, "int32")
    return np.concatenate([start, targets[:, :-1]], axis=1)


# Model -------------------------------------------------------------------
class _TargetDecoder(keras.layers.Layer):
    """What both target decoders share: `(batch, target_length,
    vocabulary_size)` logits, without the source's mask."""

    def compute_output_spec(self, encoder_outputs, *args, **kwargs):
        shape = encoder_outputs.shape[:1] + (
            self.target_length,
            self.vocabulary_size,
        )
        return keras.KerasTensor(shape, dtype="float32")

    def compute_mask(self, *args, **kwargs):
        return None  # the source mask does not carry over to the targets


@keras.saving.register_keras_serializable(package="date_translation")
class AttentionDecoder(_TargetDecoder):
    """A GRU decoder with Bahdanau attention over the encoder outputs.

    At each step the previous decoder state queries the encoder outputs; the
    context and the previous character feed the GRU cell, and the new state
    and the context predict the next character. The keys are projected once
    per sequence (`project_keys`) and reused at every step.

    Called with the `decoder_inputs` (teacher forcing: the start token, then
    the targets shifted right), it returns the logits `(batch,
    target_length, vocabulary)`. `greedy()` runs the same step in a
    `keras.ops.fori_loop`, feeding back its own predictions, and returns
    the ids `(batch, target_length)` and the attention weights `(batch,
    target_length, source_length)`.
    """

    def __init__(
        self,
        units,
        attention_units,
        vocabulary_size,
        target_length,
        embedding_dim=16,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.units = units
        self.attention_units = attention_units
        self.vocabulary_size = vocabulary_size
        self.target_length = target_length
        self.embedding_dim = embedding_dim
        self.embedding = keras.layers.Embedding(
            vocabulary_size, embedding_dim, name="embedding"
        )
        self.attention = ka.AdditiveAttention(attention_units, name="attention")
        self.cell = keras.layers.GRUCell(units, name="gru_cell")
        self.logits = keras.layers.Dense(
            vocabulary_size, dtype="float32", name="logits"
        )

    def build(self, encoder_outputs_shape, *args, **kwargs):
        batch, length, encoder_dim = encoder_outputs_shape
        self.embedding.build((batch,))
        self.attention.build((batch, self.units), encoder_outputs_shape)
        self.cell.build((batch, self.embedding_dim + encoder_dim))
        self.logits.build((batch, self.units + encoder_dim))

    def step(self, token, state, encoder_outputs, keys, source_mask):
        """One decoding step: previous token and state in, logits out."""
        context, weights = self.attention(
            state,
            encoder_outputs,
            projected_key=keys,
            value_mask=source_mask,
            return_attention_scores=True,
        )
        inputs = ops.concatenate([self.embedding(token), context], axis=-1)
        output, state = self.cell(inputs, state)
        logits = self.logits(ops.concatenate([output, context], axis=-1))
        return logits, state, weights

    def call(self, encoder_outputs, initial_state, source_ids, decoder_inputs):
        source_mask = ops.not_equal(source_ids, 0)
        keys = self.attention.project_keys(encoder_outputs)  # once
        state = initial_state
        logits = []
        # Teacher forcing: the step's input is the previous target character.
        # The target length is static, so the steps unroll (XLA-friendly,
        # and differentiable on every backend).
        for i in range(self.target_length):
            step_logits, state, _ = self.step(
                decoder_inputs[:, i], state, encoder_outputs, keys, source_mask
            )
            logits.append(step_logits)
        return ops.stack(logits, axis=1)

    def greedy(self, encoder_outputs, initial_state, source_ids):
        """Greedy decoding in a `keras.ops.fori_loop`: ids and weights."""
        source_mask = ops.not_equal(source_ids, 0)
        keys = self.attention.project_keys(encoder_outputs)  # once
        batch, source_length = ops.shape(source_ids)[:2]
        steps = self.target_length

        def body(i, carry):
            token, state, ids, alignments = carry
            logits, state, weights = self.step(
                token, state, encoder_outputs, keys, source_mask
            )
            token = ops.cast(ops.argmax(logits, axis=-1), "int32")
            # Write step i into the outputs (shapes stay fixed in the loop).
            at_i = ops.one_hot(i, steps, dtype="int32")
            ids = ids + at_i[None, :] * token[:, None]
            at_i = ops.cast(at_i, "float32")
            weights = ops.cast(weights, "float32")
            alignments = alignments + at_i[None, :, None] * weights[:, None]
            return token, state, ids, alignments

        initial = (
            ops.zeros((batch,), "int32") + START,
            initial_state,
            ops.zeros((batch, steps), "int32"),
            ops.zeros((batch, steps, source_length), "float32"),
        )
        _, _, ids, alignments = ops.fori_loop(0, steps, body, initial)
        return ids, alignments

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "attention_units": self.attention_units,
                "vocabulary_size": self.vocabulary_size,
                "target_length": self.target_length,
                "embedding_dim": self.embedding_dim,
            }
        )
        return config


@keras.saving.register_keras_serializable(package="date_translation")
class GreedyDecoding(keras.layers.Layer):
    """Greedy decoding with a decoder's `greedy()` (its weights, shared).

    For an `AttentionDecoder` or a `TransformerTargetDecoder`: called with
    the arguments of its `greedy()`, it returns the ids `(batch,
    target_length)` and the attention weights `(batch, target_length,
    source_length)`. A layer of its own because a Keras layer keeps one
    output structure across its calls.
    """

    def __init__(self, decoder, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.decoder = decoder

    def call(self, encoder_outputs, *args):
        return self.decoder.greedy(encoder_outputs, *args)

    def build(self, encoder_outputs_shape, *args):
        if not self.decoder.built:  # loaded: the decoder comes unbuilt
            self.decoder.build(encoder_outputs_shape)

    def get_config(self):
        config = super().get_config()
        config["decoder"] = keras.saving.serialize_keras_object(self.decoder)
        return config

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["decoder"] = keras.saving.deserialize_keras_object(
            config["decoder"]
        )
        return cls(**config)

    def compute_output_spec(self, encoder_outputs, *args):
        batch, length = encoder_outputs.shape[:2]
        target_length = self.decoder.target_length
        return (
            keras.KerasTensor((batch, target_length), dtype="int32"),
            keras.KerasTensor((batch, target_length, length), dtype="float32"),
        )

    def compute_mask(self, *args, **kwargs):
        return None


def build_models(units, dropout=0.0):
    """The training model and the greedy inference model (shared layers).

    training: `[source_ids, decoder_inputs]` -> logits.
    inference: `source_ids` -> `{"target_ids", "alignments"}`.
    """
    source_ids = keras.Input((MAX_INPUT_LENGTH,), dtype="int32", name="source")
    decoder_inputs = keras.Input(
        (TARGET_LENGTH,), dtype="int32", name="decoder_inputs"
    )
    # Encoder: characters -> a bidirectional GRU; its final states give the
    # decoder's initial state.
    embedded = keras.layers.Embedding(
        len(INPUT_CHARS) + 2, 32, mask_zero=True, name="characters"
    )(source_ids)
    embedded = keras.layers.Dropout(dropout)(embedded)
    encoder_outputs, forward, backward = keras.layers.Bidirectional(
        keras.layers.GRU(units, return_sequences=True, return_state=True),
        name="encoder",
    )(embedded)
    initial_state = keras.layers.Dense(
        2 * units, activation="tanh", name="initial_state"
    )(keras.layers.Concatenate()([forward, backward]))

    decoder = AttentionDecoder(
        units=2 * units,
        attention_units=units,
        vocabulary_size=len(TARGET_CHARS) + 1,
        target_length=TARGET_LENGTH,
        name="decoder",
    )
    logits = decoder(encoder_outputs, initial_state, source_ids, decoder_inputs)
    target_ids, alignments = GreedyDecoding(decoder, name="greedy")(
        encoder_outputs, initial_state, source_ids
    )
    training = keras.Model(
        [source_ids, decoder_inputs], logits, name="date_translation"
    )
    inference = keras.Model(
        source_ids,
        {"target_ids": target_ids, "alignments": alignments},
        name="date_translation_greedy",
    )
    return training, inference


@keras.saving.register_keras_serializable(package="date_translation")
class TransformerTargetDecoder(_TargetDecoder):
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
    `keras.ops.fori_loop`. `uncached_step_logits()` is the slow reference:
    the whole prefix again at every step.
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
        super().__init__(**kwargs)
        self.supports_masking = True
        self.vocabulary_size = vocabulary_size
        self.target_length = target_length
        self.dim = dim
        self.num_heads = num_heads
        self.num_layers = num_layers
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.head_dim = dim // num_heads
        self.embedding = keras.layers.Embedding(
            vocabulary_size, dim, name="embedding"
        )
        self.positions = ka.PositionEmbedding(target_length, name="positions")
        self.embedding_dropout = keras.layers.Dropout(dropout)
        self.blocks = [
            ka.TransformerDecoder(
                intermediate_dim,
                num_heads,
                dropout=dropout,
                chunk_size=None,  # see build_transformer_models
                name=f"decoder_block_{i}",
            )
            for i in range(num_layers)
        ]
        self.logits = keras.layers.Dense(
            vocabulary_size, dtype="float32", name="logits"
        )

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
        x = self.embed(ops.zeros((batch, 1), "int32") + START)
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
        start = ops.zeros((batch, 1), "int32") + START
        decoder_inputs = ops.concatenate([start, ids[:, :-1]], axis=1)
        alignments = self.cross_attention_weights(
            encoder_outputs, source_ids, decoder_inputs
        )
        return ids, alignments

    def cross_attention_weights(self, encoder_outputs, source_ids, inputs):
        """The last block's cross-attention weights, averaged over heads,
        `(batch, target_length, source_length)`, for the decoder inputs
        `inputs` (one teacher-forced pass, no caches).

        `TransformerDecoder` returns no attention weights, so this re-runs
        the last block's first two sublayers (keras-hub's names, which
        `TransformerDecoder` keeps): post-norm, the cross-attention's query
        is `self_attention_layer_norm(x + self_attention(x))`.
        """
        source_mask = ops.not_equal(source_ids, 0)
        x = self.embed(inputs)
        for block in self.blocks[:-1]:
            x = block(x, encoder_outputs, encoder_padding_mask=source_mask)
        last = self.blocks[-1]
        y = last._self_attention_layer(x, x, use_causal_mask=True)
        query = last._self_attention_layer_norm(x + y)
        _, weights = last._cross_attention_layer(
            query,
            encoder_outputs,
            value_mask=source_mask,
            return_attention_scores=True,
        )
        return ops.mean(ops.cast(weights, "float32"), axis=1)

    def uncached_step_logits(self, encoder_outputs, source_ids, ids, i):
        """The logits of step `i` by recomputing the whole prefix: the
        start token and `ids[:, :i]` through the blocks without caches.
        The prefix sits in a buffer of `target_length` ids (causal: what
        follows it changes nothing), so every step has one shape."""
        start = ops.zeros((ops.shape(ids)[0], 1), "int32") + START
        prefix = ops.concatenate([start, ids[:, :-1]], axis=1)
        source_mask = ops.not_equal(source_ids, 0)
        x = self.embed(prefix)
        for block in self.blocks:
            x = block(x, encoder_outputs, encoder_padding_mask=source_mask)
        return self.logits(x)[:, i]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "target_length": self.target_length,
                "dim": self.dim,
                "num_heads": self.num_heads,
                "num_layers": self.num_layers,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
            }
        )
        return config


def build_transformer_models(dim=64, num_heads=4, num_layers=2, dropout=0.0):
    """The Transformer's training and greedy inference models (shared
    layers), with the inputs and outputs of `build_models`'.

    Also returns the encoder model, `source_ids` -> encoder outputs, and the
    `TransformerTargetDecoder`, for the cache test.
    """
    source_ids = keras.Input((MAX_INPUT_LENGTH,), dtype="int32", name="source")
    decoder_inputs = keras.Input(
        (TARGET_LENGTH,), dtype="int32", name="decoder_inputs"
    )
    # Encoder: characters -> TransformerEncoder blocks that attend over the
    # source's characters, never its padding. Rotary position embeddings
    # (relative positions) rather than learned absolute ones: "sat 21/11/26"
    # reads like "21/11/26" four characters on. `chunk_size=None`: dense
    # attention, as the sequences are short; "auto" would also put the
    # chunked kernel in the graph, for batches too big for the dense one.
    source_mask = ops.not_equal(source_ids, 0)
    x = keras.layers.Embedding(len(INPUT_CHARS) + 2, dim, name="characters")(
        source_ids
    )
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
        vocabulary_size=len(TARGET_CHARS) + 1,
        target_length=TARGET_LENGTH,
        dim=dim,
        num_heads=num_heads,
        num_layers=num_layers,
        intermediate_dim=2 * dim,
        dropout=dropout,
        name="decoder",
    )
    logits = decoder(encoder_outputs, source_ids, decoder_inputs)
    target_ids, alignments = GreedyDecoding(decoder, name="greedy")(
        encoder_outputs, source_ids
    )
    training = keras.Model(
        [source_ids, decoder_inputs], logits, name="date_translation"
    )
    inference = keras.Model(
        source_ids,
        {"target_ids": target_ids, "alignments": alignments},
        name="date_translation_greedy",
    )
    encoder = keras.Model(source_ids, encoder_outputs, name="encoder")
    return training, inference, encoder, decoder


def translate(inference_model, texts, batch_size=256):
    """Greedy translations and alignments of a list of strings."""
    ids = encode_inputs(texts)
    # Padded to whole batches (empty rows): one batch shape for every call,
    # so JAX compiles the decoding loop once.
    padding = -len(ids) % batch_size
    ids = np.concatenate([ids, np.zeros((padding, ids.shape[1]), ids.dtype)])
    outputs = inference_model.predict(ids, batch_size=batch_size, verbose=0)
    n = len(texts)
    return decode_targets(outputs["target_ids"][:n]), outputs["alignments"][:n]


# Evaluation --------------------------------------------------------------
def exact_match(inference_model, pairs):
    predicted, _ = translate(inference_model, pairs["text"])
    return float(np.mean(predicted == pairs["iso"])), predicted


def plot_alignments(texts, predictions, alignments, path, model="bahdanau"):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 2
    rows = -(-len(texts) // columns)
    fig, axes = plt.subplots(
        rows, columns, figsize=(6.5 * columns, 2.8 * rows), squeeze=False
    )
    for ax, text, predicted, weights in zip(
        axes.flat, texts, predictions, alignments
    ):
        n = min(len(text), MAX_INPUT_LENGTH)
        ax.imshow(weights[:, :n], cmap="viridis", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(n), list(text[:n]))
        ax.set_yticks(range(TARGET_LENGTH), list(predicted))
        ax.tick_params(length=0)
        ax.set_title(f"{text!r} -> {predicted}", fontsize=10)
    for ax in axes.flat[len(texts) :]:
        ax.axis("off")
    title = {
        "bahdanau": "AdditiveAttention weights",
        "transformer": "Cross-attention weights of the last decoder block "
        "(mean over heads)",
    }[model]
    fig.suptitle(
        f"{title}: output characters (rows) over input characters (columns)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Export ------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="date_translation")
class TargetIdsToText(keras.layers.Layer):
    """Target ids to strings: inverse lookup and join (TensorFlow only)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        # Id 0, the start token, reads as "?", as in `decode_targets`.
        self.lookup = keras.layers.StringLookup(
            vocabulary=list(TARGET_CHARS),
            invert=True,
            oov_token="?",
            name="lookup",
        )

    def build(self, ids_shape):
        self.lookup.build(ids_shape)

    def call(self, ids):
        import tensorflow as tf

        return tf.strings.reduce_join(self.lookup(ids), axis=-1)

    def compute_output_spec(self, ids):
        return keras.KerasTensor(ids.shape[:-1], dtype="string")


def string_model(inference_model):
    """`text` (strings `(batch,)`) -> `iso_date` (strings): lower-casing and
    character lookup (`TextVectorization`), `inference_model`'s greedy
    decoding, and the join back to strings (`TargetIdsToText`).

    It is built symbolically on every backend: under JAX it is never called
    (JAX arrays hold no strings), only saved, and the TensorFlow process
    that `serving.export_saved_model` starts loads and exports it.
    """
    text = keras.Input((), dtype="string", name="text")
    characters = keras.layers.TextVectorization(
        standardize="lower",
        split="character",
        vocabulary=list(INPUT_CHARS),
        output_sequence_length=MAX_INPUT_LENGTH,
        name="characters",
    )(text)
    decoded = inference_model(characters)  # int64 ids, read as int32
    iso_date = TargetIdsToText(name="iso_date")(decoded["target_ids"])
    return keras.Model(text, iso_date, name="date_translation")


def export(run, inference_model, sample_texts):
    """Exports `string_model(inference_model)` for TF Serving (and, from
    TensorFlow, `translate_ids`: `source` ids -> ids and alignments)."""
    if not run.args.export:
        return None
    serving_model = string_model(inference_model)
    warmup = {"text": np.asarray(sample_texts, dtype=object)}
    if run.backend != "tensorflow":
        print(
            "endpoint translate_ids (token ids in): TensorFlow-only; "
            "exporting serving_default (text -> iso_date)"
        )
        return run.export(serving_model, warmup_inputs=warmup)
    import tensorflow as tf

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
        autograph=False,
    )
    def serve_text(text):
        return {"iso_date": serving_model(text)}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, MAX_INPUT_LENGTH], tf.int32, name="source")
        ],
        autograph=False,
    )
    def serve_ids(source):
        return inference_model(source)

    return run.export(
        serving_model,
        signatures={"serving_default": serve_text, "translate_ids": serve_ids},
        warmup_inputs=warmup,
    )


def greedy_margins(model, texts, iso):
    """Per input, the smallest gap between the two largest logits over the
    steps of its greedy decoding `iso`.

    One teacher-forced pass of the training `model` over the decoded
    characters gives the greedy loop's logits (the input of each step is the
    character chosen before it). Where a gap is small, another backend's
    rounding may choose the other character.
    """
    logits = model.predict(
        [encode_inputs(texts), teacher_forcing(encode_targets(iso))],
        verbose=0,
    )
    top = np.sort(logits, axis=-1)[..., -2:]
    return (top[..., 1] - top[..., 0]).min(axis=-1)


def check_served(path, texts, expected, margins, min_margin=1e-3):
    """Reloads the export and compares its answers with the Keras model's.

    From TensorFlow every answer must match. From another backend (through
    `serving.check`), the inputs whose greedy `margins` are at most
    `min_margin` are left out.
    """
    if keras.backend.backend() != "tensorflow":
        keep = margins > min_margin
        iso = np.array([s.encode() for s in expected[keep]], dtype="S")
        return _common.check_served_outputs(
            path,
            {"text": texts[keep]},
            {"iso_date": iso},
            f"the greedy decoding of {int(keep.sum())} of {len(texts)} "
            f"inputs (the others: a greedy margin <= {min_margin})",
        )
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(text=tf.constant(list(texts)))["iso_date"].numpy()
    served = np.array([s.decode() for s in served], dtype=object)
    mismatches = int(np.sum(served != expected))
    print(
        f"served (serving_default) == Keras greedy decoding on {len(texts)} "
        f"inputs: {mismatches} mismatch(es)"
    )
    for text, iso in list(zip(texts, served))[:3]:
        print(f"  served {text!r} -> {iso!r}")
    return mismatches == 0


DEMO = [
    "sat 21 nov 2026",
    "21/11/26",
    "November 21, 2026",
    "2026.11.21",
    "21st of November 2026",
    "Thursday, 5 Mar 1987",  # a held-out format
]


# Main --------------------------------------------------------------------
def main(argv=None):
    args = _common.parse_args(
        __doc__,
        "date_translation",
        argv=argv,
        add_arguments=add_arguments,
        epochs=4,
        batch_size=128,
    )
    if args.model == "transformer":
        # Its own run directory and servable, beside the Bahdanau model's.
        if args.output_dir == os.path.join("runs", args.name):
            args.output_dir += "_transformer"
        args.name += "_transformer"
    if args.learning_rate is None:
        args.learning_rate = {
            "bahdanau": 3e-3,
            "transformer": TRANSFORMER_LEARNING_RATE,
        }[args.model]
    run = _common.setup(args)

    data = make_dataset(args.train_samples, args.test_samples, args.seed)
    train = data["train"]
    source = encode_inputs(train["text"])
    targets = encode_targets(train["iso"])
    print(
        f"data: {len(source)} training pairs in {len(TRAIN_FORMATS)} formats; "
        f"test: {len(data['held_out_dates']['text'])} held-out dates, "
        f"{len(data['held_out_formats']['text'])} held-out formats "
        f"({len(HELD_OUT_FORMATS)} formats)"
    )
    for text, iso in list(zip(train["text"], train["iso"]))[:3]:
        print(f"  {text!r} -> {iso!r}")

    with run.scope():
        steps = run.steps(len(source), args.batch_size)
        if args.model == "bahdanau":
            model, inference_model = build_models(args.units, args.dropout)
            schedule = keras.optimizers.schedules.CosineDecay(
                args.learning_rate, decay_steps=steps * args.epochs, alpha=0.05
            )
        else:
            model, inference_model, _, _ = build_transformer_models(
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
        model.compile(
            optimizer=keras.optimizers.Adam(schedule, clipnorm=1.0),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            metrics=["accuracy"],
            jit_compile=run.jit_compile,
        )
    model.summary()

    # Training --------------------------------------------------------------
    # With --max-steps, every epoch trains on the same first `steps` batches.
    fit_samples = min(len(source), steps * args.batch_size)
    source, targets = source[:fit_samples], targets[:fit_samples]
    history = model.fit(
        [source, teacher_forcing(targets)],
        targets,
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=steps,
        shuffle=args.shuffle,
    )
    run.save_weights(model)
    losses = [float(x) for x in history.history["loss"]]
    with open(os.path.join(args.output_dir, "history.json"), "w") as f:
        json.dump(history.history, f, indent=1)
    print(f"loss by epoch: {json.dumps([round(x, 4) for x in losses])}")
    train_seconds = run.elapsed()
    print(f"trained in {train_seconds:.0f} s (since setup)")

    # Evaluation ------------------------------------------------------------
    results = {}
    predictions = {}
    for split in ("held_out_dates", "held_out_formats"):
        results[split], predictions[split] = exact_match(
            inference_model, data[split]
        )
    results["overall"] = float(np.mean(list(results.values())))
    print(
        f"exact match: overall {results['overall']:.2%}, held-out dates "
        f"(training formats) {results['held_out_dates']:.2%}, held-out "
        f"formats {results['held_out_formats']:.2%}"
    )
    formats = data["held_out_formats"]["format"]
    for template in HELD_OUT_FORMATS:
        right = predictions["held_out_formats"][formats == template]
        right = right == data["held_out_formats"]["iso"][formats == template]
        print(f"  held-out format {template!r}: {np.mean(right):.2%}")
    for split in ("held_out_dates", "held_out_formats"):
        wrong = np.flatnonzero(predictions[split] != data[split]["iso"])
        for i in wrong[:3]:
            print(
                f"  wrong ({split}): {data[split]['text'][i]!r} -> "
                f"{predictions[split][i]!r}, expected "
                f"{data[split]['iso'][i]!r}"
            )

    demo, alignments = translate(inference_model, DEMO)
    for text, iso in zip(DEMO, demo):
        print(f"  {text!r} -> {iso!r}")
    figure = run.figure_path("alignments.png")
    plot_alignments(DEMO, demo, alignments, figure, args.model)
    print(f"saved {figure}")

    # Inputs to compare the export with: the demo and some test inputs.
    check_texts = np.concatenate(
        [
            DEMO,
            data["held_out_dates"]["text"][:13],
            data["held_out_formats"]["text"][:13],
        ]
    ).astype(object)
    check_iso, _ = translate(inference_model, check_texts)
    check_margins = greedy_margins(model, check_texts, check_iso)
    summary = {
        "backend": run.backend,
        "model": args.model,
        "exact_match": results,
        "loss": losses,
        "train_seconds": train_seconds,
        "check_texts": list(check_texts),
        "check_iso": list(check_iso),
        "check_margins": check_margins.tolist(),
    }

    # Export ----------------------------------------------------------------
    path = export(run, inference_model, DEMO[:4])
    summary["export"] = path
    if path is not None:
        if not check_served(path, check_texts, check_iso, check_margins):
            return 1
        print(f"export size: {_common.directory_size(path) / 1e6:.2f} MB")
    summary["seconds"] = run.elapsed()
    with open(os.path.join(args.output_dir, "results.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(f"done in {summary['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
