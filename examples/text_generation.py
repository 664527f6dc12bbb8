"""Text generation: a character-level decoder-only Transformer with a KV cache.

What it shows:
    A small GPT-style language model built from `keras_attention`:
    pre-norm `TransformerDecoder` blocks with grouped-query attention and
    rotary position embeddings, trained with `model.fit` to predict the
    next character of Python source code. `keras_attention.TokenGenerator`
    generates: a prefill fills fixed-size key/value caches, then a
    `keras.ops.while_loop` decodes from left-padded ragged prompts, with a
    `keras_attention.samplers` sampler: greedy, seeded top-p (nucleus)
    sampling or beam search. The script reports held-out bits per
    character next to a character 5-gram Kneser-Ney model fitted on the
    same text, prints the three's samples, plots the last block's
    attention, and exports a string-in, string-out SavedModel for TF
    Serving (lookup, padding, prefill, loop and join in the graph) with
    the signatures `serving_default` (greedy), `sample` (text and seed)
    and `beam`, plus the three as ONNX and LiteRT files; each is checked
    on its runtime against eager generation. Under JAX or PyTorch the
    greedy string model is saved as a `.keras` file and exported by a
    TensorFlow process (`serving_default` only); see
    docs/cross-backend-export.md.

The data (offline): the Python standard library's own `.py` files, found
through `sysconfig`, split by file into training and held-out text
(`examples/_char_lm.py`): no held-out file contributes training text.

How to run:
    python examples/text_generation.py       # trains, evaluates, exports
    KERAS_BACKEND=jax python examples/text_generation.py     # see above
    KERAS_BACKEND=torch python examples/text_generation.py   # see above
    python examples/text_generation.py --help
    python examples/text_generation.py --max-steps 4 --epochs 1 --no-export
    python examples/text_generation.py --pack   # packed rows against padding

Expected result (default flags, seed 0, 2 CPU cores): held-out bits per
character below the Kneser-Ney 5-gram's (about 2.06 against 2.26) in about
17 minutes; exits non-zero if the export's continuations differ from eager
generation, or if the model does not beat the baseline. Measured:
examples/RESULTS.md ("Text generation").
"""

import functools
import json
import os
import sys
import time

import _char_lm
import _common  # noqa: F401  (before keras: it may split the CPU)
import keras
import numpy as np
from keras import ops

import keras_attention
from keras_attention import samplers

PROMPT_LENGTH = 64
DEMO_PROMPTS = [
    "def ",
    "import os\nimport sys\n\n\nclass ",
    "    def __init__(self",
    "        for i in range(",
    '    """Return the',
]


def add_arguments(parser):
    group = parser.add_argument_group("text generation")
    group.add_argument("--sequence-length", type=int, default=128)
    group.add_argument("--hidden-dim", type=int, default=128)
    group.add_argument("--num-layers", type=int, default=3)
    group.add_argument("--num-heads", type=int, default=4)
    group.add_argument("--num-key-value-heads", type=int, default=2)
    group.add_argument("--intermediate-dim", type=int, default=256)
    group.add_argument("--dropout", type=float, default=0.0)
    group.add_argument("--learning-rate", type=float, default=2e-3)
    group.add_argument(
        "--train-chars",
        type=int,
        default=2_000_000,
        help="characters of training text (default: %(default)s)",
    )
    group.add_argument(
        "--heldout-chars",
        type=int,
        default=100_000,
        help="characters of held-out text (default: %(default)s)",
    )
    group.add_argument(
        "--eval-chars",
        type=int,
        default=50_000,
        help="held-out characters the model is scored on (default: "
        "%(default)s); the baseline is scored on the same ones",
    )
    group.add_argument("--max-new-tokens", type=int, default=120)
    group.add_argument(
        "--pack",
        action="store_true",
        help="instead of the default run: pack the training text's "
        "documents (blocks between blank lines) into full rows with "
        "segment ids, and compare an epoch's wall time, tokens/s and "
        "padding with padding each document to the longest",
    )


# Model -------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="text_generation")
class CharTransformerLM(keras.Model):
    """Token ids -> next-token logits; with `init_cache` and
    `call_with_cache`, the interface `keras_attention.TokenGenerator`
    decodes with.

    Embedding, `num_layers` pre-norm `TransformerDecoder` blocks (no
    cross-attention; GQA and RoPE, so no position embedding), a final
    `LayerNormalization` and the output projection.
    """

    def __init__(
        self,
        vocabulary_size,
        hidden_dim=128,
        num_layers=3,
        num_heads=4,
        num_key_value_heads=2,
        intermediate_dim=256,
        dropout=0.0,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.vocabulary_size = vocabulary_size
        self.hidden_dim = hidden_dim
        self.num_layers = num_layers
        self.num_heads = num_heads
        self.num_key_value_heads = num_key_value_heads
        self.intermediate_dim = intermediate_dim
        self.dropout = dropout
        self.head_dim = hidden_dim // num_heads
        self.embedding = keras.layers.Embedding(
            vocabulary_size, hidden_dim, name="tokens"
        )
        self.blocks = [
            keras_attention.TransformerDecoder(
                intermediate_dim,
                num_heads,
                dropout=dropout,
                activation="gelu",
                normalize_first=True,
                num_key_value_heads=num_key_value_heads,
                rope_max_wavelength=10_000,
                # Short sequences: the dense kernel (what "auto" picks),
                # without the chunked one's branch in the exported graph.
                chunk_size=None,
                name=f"block_{i}",
            )
            for i in range(num_layers)
        ]
        self.final_norm = keras.layers.LayerNormalization(name="final_norm")
        self.head = keras.layers.Dense(vocabulary_size, name="logits")

    def call(
        self, token_ids, padding_mask=None, segment_ids=None, training=None
    ):
        if isinstance(token_ids, dict):  # `--pack`'s rows
            segment_ids = token_ids.get("segment_ids")
            token_ids = token_ids["token_ids"]
        x = self.embedding(token_ids)
        for block in self.blocks:
            x = block(
                x,
                decoder_padding_mask=padding_mask,
                decoder_segment_ids=segment_ids,
                training=training,
            )
        return self.head(self.final_norm(x))

    def init_cache(self, batch_size, max_length):
        shape = (
            batch_size,
            2,
            max_length,
            self.num_key_value_heads,
            self.head_dim,
        )
        return tuple(ops.zeros(shape, self.compute_dtype) for _ in self.blocks)

    def call_with_cache(self, token_ids, cache, cache_update_index, mask):
        x = self.embedding(token_ids)
        caches = []
        for block, block_cache in zip(self.blocks, cache):
            x, block_cache = block(
                x,
                decoder_padding_mask=mask,
                self_attention_cache=block_cache,
                self_attention_cache_update_index=cache_update_index,
            )
            caches.append(block_cache)
        return self.head(self.final_norm(x)), tuple(caches)

    def attention_scores(self, token_ids, block_index=-1):
        """The self-attention weights of one block `(batch, heads, T, T)`."""
        x = self.embedding(token_ids)
        blocks = self.blocks[: len(self.blocks) + block_index + 1]
        for block in blocks[:-1]:
            x = block(x)
        _, scores = blocks[-1](x, return_attention_scores=True)
        return scores

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "vocabulary_size": self.vocabulary_size,
                "hidden_dim": self.hidden_dim,
                "num_layers": self.num_layers,
                "num_heads": self.num_heads,
                "num_key_value_heads": self.num_key_value_heads,
                "intermediate_dim": self.intermediate_dim,
                "dropout": self.dropout,
            }
        )
        return config


def build_model(args):
    model = CharTransformerLM(
        len(_char_lm.VOCABULARY),
        hidden_dim=args.hidden_dim,
        num_layers=args.num_layers,
        num_heads=args.num_heads,
        num_key_value_heads=args.num_key_value_heads,
        intermediate_dim=args.intermediate_dim,
        dropout=args.dropout,
        name="char_transformer_lm",
    )
    model(np.zeros((1, args.sequence_length), "int32"))
    return model


# Data --------------------------------------------------------------------
def windows(ids, length, stride, rng=None):
    """`(inputs, targets)`: windows of `length + 1` ids, every `stride`."""
    starts = np.arange(0, len(ids) - length - 1, stride)
    if rng is not None:
        starts = starts + rng.integers(0, stride, size=len(starts))
        starts = np.minimum(starts, len(ids) - length - 1)
    index = starts[:, None] + np.arange(length + 1)[None, :]
    chunk = ids[index]
    return chunk[:, :-1], chunk[:, 1:]


def split_documents(ids, max_length):
    """Variable-length documents: the text's blocks between blank lines
    (functions, methods, paragraphs of code), each cut into pieces of at
    most `max_length + 1` ids (inputs and their next-id targets)."""
    newline = _char_lm.encode("\n")[0]
    breaks = np.flatnonzero((ids[:-1] == newline) & (ids[1:] == newline))
    documents = []
    for document in np.split(ids, breaks + 2):
        for start in range(0, len(document), max_length + 1):
            piece = document[start : start + max_length + 1]
            if len(piece) >= 2:
                documents.append(piece)
    return documents


def pack_documents(documents, length):
    """Documents packed into full rows of `length`, in order (a document
    that does not fit starts the next row).

    Returns `(inputs, targets, segment_ids, positions)`, each `(rows,
    length)` int32: each document's inputs and next-id targets (its own
    ids only: no target crosses a document), its segment id (1, 2, ... in
    the row; 0 for padding, whose target is 0), and positions restarting at
    0 with each document (for absolute position embeddings; RoPE, which
    this model uses, depends only on the distance between a query and a
    key, and segment ids keep both in one document).
    """
    rows, row, used = [], [], 0
    for document in documents:
        n = len(document) - 1
        if used + n > length:
            rows.append(row)
            row, used = [], 0
        row.append(document)
        used += n
    if row:
        rows.append(row)
    shape = (len(rows), length)
    inputs, targets, segment_ids, positions = (
        np.zeros(shape, "int32") for _ in range(4)
    )
    for r, row in enumerate(rows):
        start = 0
        for segment, document in enumerate(row, 1):
            n = len(document) - 1
            span = slice(start, start + n)
            inputs[r, span] = document[:-1]
            targets[r, span] = document[1:]
            segment_ids[r, span] = segment
            positions[r, span] = np.arange(n)
            start += n
    return inputs, targets, segment_ids, positions


def pad_documents(documents):
    """One document per row, padded to the longest: `(inputs, targets)`."""
    width = max(len(d) - 1 for d in documents)
    inputs = np.zeros((len(documents), width), "int32")
    targets = np.zeros((len(documents), width), "int32")
    for r, document in enumerate(documents):
        inputs[r, : len(document) - 1] = document[:-1]
        targets[r, : len(document) - 1] = document[1:]
    return inputs, targets


def padding_fraction(targets):
    """The share of a batch's positions that are padding (target 0)."""
    return float(np.mean(targets == 0))


def compare_packing(args, run, train_ids):
    """`--pack`: one epoch on packed rows against one on padded rows."""
    documents = split_documents(train_ids, args.sequence_length)
    packed = pack_documents(documents, args.sequence_length)
    padded = pad_documents(documents)
    tokens = sum(len(d) - 1 for d in documents)
    summary = {
        "backend": run.backend,
        "documents": len(documents),
        "tokens": tokens,
    }
    for name, (inputs, targets, *extra) in (
        ("packed", packed),
        ("padded", padded),
    ):
        keras.utils.set_random_seed(args.seed)
        model = build_model(args)
        model.compile(
            optimizer=keras.optimizers.AdamW(args.learning_rate),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=run.jit_compile,
        )
        features = {"token_ids": inputs}
        if extra:
            features["segment_ids"] = extra[0]
        weights = (targets > 0).astype("float32")
        steps = run.steps(len(inputs), args.batch_size)
        epoch = functools.partial(
            model.fit,
            features,
            targets,
            sample_weight=weights,
            batch_size=args.batch_size,
            epochs=1,
            steps_per_epoch=steps,
        )
        epoch(verbose=0)  # compile, warm up
        start = time.perf_counter()
        epoch(verbose=2)
        seconds = time.perf_counter() - start
        fed = min(len(inputs), steps * args.batch_size)
        real = int((targets[:fed] > 0).sum())
        summary[name] = {
            "rows": len(inputs),
            "row_length": inputs.shape[1],
            "padding_fraction": padding_fraction(targets),
            "epoch_seconds": seconds,
            "tokens_per_second": real / seconds,
        }
    summary["padding_removed"] = (
        summary["padded"]["padding_fraction"]
        - summary["packed"]["padding_fraction"]
    )
    summary["speedup"] = (
        summary["padded"]["epoch_seconds"] / summary["packed"]["epoch_seconds"]
    )
    print(
        f"packing: {len(documents):,} documents, {tokens:,} tokens; padded "
        f"{summary['padded']['rows']} rows x {padded[0].shape[1]} "
        f"({summary['padded']['padding_fraction']:.1%} padding, "
        f"{summary['padded']['tokens_per_second']:,.0f} tokens/s), packed "
        f"{summary['packed']['rows']} rows x {args.sequence_length} "
        f"({summary['packed']['padding_fraction']:.1%} padding, "
        f"{summary['packed']['tokens_per_second']:,.0f} tokens/s): "
        f"{summary['speedup']:.2f}x the padded epoch's speed"
    )
    with open(os.path.join(args.output_dir, "packing.json"), "w") as f:
        json.dump(summary, f, indent=1)
    return summary


# Evaluation ----------------------------------------------------------------
def bits_per_char(model, ids, length, batch_size=64):
    """Held-out bits per character, each scored character with at least
    `length // 2` characters of context (except the first window's)."""
    half = length // 2
    starts = list(range(0, max(1, len(ids) - length), half))
    inputs = np.stack(
        [_pad_to(ids[s : s + length], length) for s in starts]
    ).astype("int32")
    targets = np.stack(
        [_pad_to(ids[s + 1 : s + length + 1], length) for s in starts]
    )
    logits = model.predict(inputs, batch_size=batch_size, verbose=0)
    logits = logits.astype("float64")
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, targets[..., None], -1)[..., 0]
    scored = np.zeros_like(targets, bool)
    scored[:, half:] = True
    scored[0, :] = True
    scored &= targets > 0
    nats = -picked[scored]
    return float(nats.mean() / np.log(2)), int(scored.sum()), starts


def _pad_to(x, length):
    return np.concatenate([x, np.zeros(length - len(x), x.dtype)])


def baseline_bits(train_text, heldout_text, starts, length, order=5):
    """The Kneser-Ney baseline on exactly the characters the model scored."""
    model = _char_lm.KneserNeyCharModel(order=order).fit(train_text)
    half = length // 2
    total, count = 0.0, 0
    for n, s in enumerate(starts):
        first = s + 1 if n == 0 else s + 1 + half
        for i in range(first, min(s + length + 1, len(heldout_text))):
            context = heldout_text[max(0, i - order + 1) : i]
            total -= np.log2(model.prob(context, heldout_text[i]))
            count += 1
    return total / count, count


# Generation ----------------------------------------------------------------
def left_pad(prompts, length=PROMPT_LENGTH):
    """Left-padded prompt ids `(batch, length)`: each prompt's last
    `length` characters, right-aligned."""
    out = np.zeros((len(prompts), length), "int32")
    for row, text in enumerate(prompts):
        ids = _char_lm.encode(text)[-length:]
        out[row, length - len(ids) :] = ids
    return out


def generate(generator, prompts, seed=None):
    """The continuations of `prompts` (strings), drawn with `seed` if
    given."""
    kwargs = {} if seed is None else {"seed": np.int32(seed)}
    ids = keras.ops.convert_to_numpy(generator(left_pad(prompts), **kwargs))
    return [_char_lm.decode(row) for row in ids]


def plot_attention(model, text, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ids = _char_lm.encode(text)[None]
    scores = keras.ops.convert_to_numpy(model.attention_scores(ids))[0]
    heads = scores.shape[0]
    fig, axes = plt.subplots(1, heads, figsize=(4.2 * heads, 4.6))
    labels = [repr(c)[1:-1] for c in text]
    for h, ax in enumerate(np.atleast_1d(axes)):
        ax.imshow(scores[h], cmap="viridis", vmin=0, vmax=scores.max())
        ax.set_xticks(range(len(text)), labels, fontsize=6, rotation=90)
        ax.set_yticks(range(len(text)), labels, fontsize=6)
        ax.set_title(f"last block, head {h}", fontsize=10)
    fig.suptitle(
        "Causal self-attention (RoPE, grouped-query): each row is a "
        "character attending to the characters before it",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# Export --------------------------------------------------------------------
@keras.saving.register_keras_serializable(package="text_generation")
class PromptIds(keras.layers.Layer):
    """Prompts (strings `(batch,)`) to ids `(batch, PROMPT_LENGTH)`: each
    prompt's last `PROMPT_LENGTH` characters, right-aligned (`left_pad`, in
    the graph). TensorFlow string ops: it runs under TensorFlow only."""

    def call(self, text):
        import tensorflow as tf

        def char_ids(code_points):
            """Code points -> ids, by arithmetic (`_char_lm`'s id scheme):
            no lookup table, so nothing to track."""
            printable = (code_points >= 32) & (code_points <= 126)
            ids = tf.where(printable, code_points - 30, 1)
            ids = tf.where(code_points == 10, 97, ids)
            return tf.where(code_points == 9, 98, ids)

        text = tf.strings.regex_replace(text, "\r\n?", "\n")
        points = tf.strings.unicode_decode(text, "UTF-8", errors="replace")
        ragged = tf.ragged.map_flat_values(char_ids, points[:, -PROMPT_LENGTH:])
        lengths = tf.cast(ragged.row_lengths(), tf.int32)
        dense = ragged.to_tensor(0, shape=[None, PROMPT_LENGTH])
        reversed_rows = tf.reverse_sequence(dense, lengths, 1, 0)
        return tf.reverse(reversed_rows, axis=[1])

    def compute_output_spec(self, text):
        return keras.KerasTensor(text.shape + (PROMPT_LENGTH,), dtype="int32")


@keras.saving.register_keras_serializable(package="text_generation")
class IdsToText(keras.layers.Layer):
    """Ids `(batch, length)` to strings `(batch,)` (TensorFlow only)."""

    def call(self, ids):
        import tensorflow as tf

        table = tf.constant(_char_lm.VOCABULARY)
        return tf.strings.reduce_join(tf.gather(table, ids), axis=-1)

    def compute_output_spec(self, ids):
        return keras.KerasTensor(ids.shape[:-1], dtype="string")


def export(run, model, greedy, sample, beam):
    """`text` -> `continuation` and `token_ids` (`greedy`'s), and, from
    TensorFlow, `(text, seed)` -> `continuation` (`sample`'s top-p
    sampling) and `text` -> `continuation` (`beam`'s search), for TF
    Serving. Returns the version path, or None where export is skipped.

    The greedy string model is built symbolically on every backend: under
    JAX or PyTorch it is only saved, and exported by a TensorFlow process.
    """
    if not run.args.export:
        return None
    text = keras.Input((), dtype="string", name="text")
    token_ids = greedy(PromptIds(name="prompt_ids")(text))
    continuation = IdsToText(name="continuation")(token_ids)
    serving_model = keras.Model(
        text,
        {"continuation": continuation, "token_ids": token_ids},
        name="text_generation",
    )
    warmup = {"text": np.asarray(DEMO_PROMPTS[:2], dtype=object)}
    if run.backend != "tensorflow":
        print(
            "endpoints sample (seeded top-p sampling) and beam (beam "
            "search): TensorFlow-only; exporting serving_default (greedy)"
        )
        return run.export(serving_model, warmup_inputs=warmup)
    import tensorflow as tf

    @tf.function(
        input_signature=[
            tf.TensorSpec([None, PROMPT_LENGTH], tf.int32),
            tf.TensorSpec([], tf.int32),
            tf.TensorSpec([], tf.float32),
        ],
        autograph=False,
    )
    def generate_ids(prompt_ids, seed, temperature):
        # One generator, one traced graph: temperature 0 is greedy decoding.
        return sample(prompt_ids, seed=seed, temperature=temperature)

    to_ids = PromptIds()
    to_text = IdsToText()

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
        autograph=False,
    )
    def serve_text(text):
        token_ids = generate_ids(to_ids(text), 0, 0.0)
        return {"continuation": to_text(token_ids), "token_ids": token_ids}

    @tf.function(
        input_signature=[
            tf.TensorSpec([None], tf.string, name="text"),
            tf.TensorSpec([], tf.int32, name="seed"),
        ],
        autograph=False,
    )
    def serve_sample(text, seed):
        temperature = sample.sampler.temperature
        token_ids = generate_ids(to_ids(text), seed, temperature)
        return {"continuation": to_text(token_ids)}

    @tf.function(
        input_signature=[tf.TensorSpec([None], tf.string, name="text")],
        autograph=False,
    )
    def serve_beam(text):
        return {"continuation": to_text(beam(to_ids(text)))}

    return run.export(
        model,
        signatures={
            "serving_default": serve_text,
            "sample": serve_sample,
            "beam": serve_beam,
        },
        warmup_inputs=warmup,
    )


RUNTIME_FORMATS = {"onnx": "onnx", "litert": "tflite"}


def export_runtime_files(base_path, greedy, sample, beam, prompts, seed=7):
    """Greedy, seeded top-p and beam generation (token ids in, token ids
    out) as ONNX and LiteRT (builtin ops only) files next to the
    SavedModel, in `base_path` (TF Serving ignores them there), each run
    on its runtime and compared with eager generation. TensorFlow only
    (Keras exports these formats from TensorFlow; see docs/formats.md).
    Returns the number of mismatching continuations, or None where
    skipped."""
    import importlib.util

    missing = [
        m
        for m in ("tf2onnx", "onnxruntime", "ai_edge_litert")
        if importlib.util.find_spec(m) is None
    ]
    if keras.backend.backend() != "tensorflow" or missing:
        print(
            "ONNX and LiteRT generation: skipped (TensorFlow backend and "
            f"the deploy extra needed; missing: {missing or 'none'})"
        )
        return None
    import tensorflow as tf

    from keras_attention import serving

    prompt_ids = left_pad(prompts)
    prompt = keras.Input((PROMPT_LENGTH,), dtype="int32", name="prompt_ids")
    seed_input = keras.Input(batch_shape=(), dtype="int32", name="seed")
    models = {
        "greedy": (keras.Model(prompt, greedy(prompt)), {}),
        "sample": (
            keras.Model([prompt, seed_input], sample(prompt, seed=seed_input)),
            # Keras' exporters give every input a batch axis unless told.
            dict(
                input_signature=[
                    [
                        tf.TensorSpec(
                            (None, PROMPT_LENGTH), tf.int32, name="prompt_ids"
                        ),
                        tf.TensorSpec((), tf.int32, name="seed"),
                    ]
                ]
            ),
        ),
        "beam": (keras.Model(prompt, beam(prompt)), {}),
    }
    mismatches = 0
    for name, (model, options) in models.items():
        inputs = {"prompt_ids": prompt_ids}
        if name == "sample":
            inputs["seed"] = np.array(seed, "int32")
        # Eager generation (a model Keras exports must have been called).
        eager = keras.ops.convert_to_numpy(
            model(list(inputs.values()) if len(inputs) > 1 else prompt_ids)
        )
        for fmt, suffix in RUNTIME_FORMATS.items():
            path = os.path.join(base_path, f"generate_{name}.{suffix}")
            if fmt == "litert":
                options = dict(
                    options,
                    target_spec={
                        "supported_ops": [tf.lite.OpsSet.TFLITE_BUILTINS]
                    },
                )
            model.export(path, format=fmt, verbose=False, **options)
            (tokens,) = serving.run_exported(path, inputs)
            wrong = int((tokens != eager).any(axis=1).sum())
            mismatches += wrong
            print(
                f"{path}: {os.path.getsize(path) / 1e6:.2f} MB; {name} "
                f"tokens on {fmt}'s runtime == eager: {wrong} mismatch(es) "
                f"in {len(prompts)} prompts"
            )
    return mismatches


def greedy_margins(model, prompts, token_ids):
    """Per prompt, the smallest gap between the two largest logits (the
    padding id left out, as `TokenGenerator` never picks it) over the
    greedy continuation `token_ids`, from one pass of the model over the
    prompt and its continuation. Where a gap is small, another backend's
    rounding may pick the other character."""
    margins = []
    for prompt, ids in zip(prompts, np.asarray(token_ids)):
        prompt_ids = _char_lm.encode(prompt)[-PROMPT_LENGTH:]
        sequence = np.concatenate([prompt_ids, ids])[None].astype("int32")
        logits = keras.ops.convert_to_numpy(model(sequence))[0]
        logits = logits[len(prompt_ids) - 1 : -1, 1:]  # predicting `ids`
        top = np.sort(logits, axis=-1)
        margins.append(float((top[:, -1] - top[:, -2]).min()))
    return np.array(margins)


def check_served(path, greedy, sample, beam, prompts, margins, min_margin=1e-3):
    """Reloads the export and compares it with eager generation.

    From TensorFlow, the greedy, sampled and beam search continuations
    (its three signatures) must all match. From
    another backend (through `serving.check`, greedy only), the prompts
    whose greedy margins are at most `min_margin` are left out.
    """
    if keras.backend.backend() != "tensorflow":
        ids = keras.ops.convert_to_numpy(greedy(left_pad(prompts)))
        keep = margins > min_margin
        continuations = [_char_lm.decode(row).encode() for row in ids[keep]]
        return _common.check_served_outputs(
            path,
            {"text": np.asarray(prompts, dtype=object)[keep]},
            {
                "continuation": np.array(continuations, dtype="S"),
                "token_ids": ids[keep],
            },
            f"the greedy continuations of {int(keep.sum())} of "
            f"{len(prompts)} prompts (the others: a greedy margin <= "
            f"{min_margin})",
        )
    import tensorflow as tf

    loaded = tf.saved_model.load(path)
    text = tf.constant(prompts)
    signatures = {
        # signature: (its extra inputs, the eager continuations)
        "serving_default": ({}, generate(greedy, prompts)),
        "sample": ({"seed": tf.constant(7)}, generate(sample, prompts, 7)),
        "beam": ({}, generate(beam, prompts)),
    }
    mismatches = 0
    for name, (inputs, eager) in signatures.items():
        served = loaded.signatures[name](text=text, **inputs)
        served = [s.decode() for s in served["continuation"].numpy()]
        mismatches += sum(a != b for a, b in zip(served, eager))
    print(
        f"served == eager generation on {len(prompts)} prompts (greedy, "
        f"sampled with seed 7, beam search): {mismatches} mismatch(es)"
    )
    return mismatches == 0


# Main ----------------------------------------------------------------------
def main(argv=None):
    args = _common.parse_args(
        __doc__,
        "text_generation",
        argv=argv,
        add_arguments=add_arguments,
        epochs=4,
        batch_size=32,
    )
    run = _common.setup(args)
    corpus = _char_lm.load_stdlib_corpus(
        args.train_chars, args.heldout_chars, seed=args.seed
    )
    train_ids = _char_lm.encode(corpus.train)
    heldout_ids = _char_lm.encode(corpus.heldout)[: args.eval_chars]
    print(
        f"data: {len(corpus.train):,} training characters from "
        f"{corpus.train_files} files, {len(corpus.heldout):,} held-out "
        f"characters from {corpus.heldout_files} other files"
    )
    if args.pack:
        compare_packing(args, run, train_ids)
        return 0
    rng = np.random.default_rng(args.seed)
    x, y = windows(train_ids, args.sequence_length, args.sequence_length, rng)
    with run.scope():
        model = build_model(args)
        steps = run.steps(len(x), args.batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(
            args.learning_rate,
            decay_steps=steps * args.epochs,
            alpha=0.05,
            warmup_target=None,
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(
                schedule, weight_decay=0.01, clipnorm=1.0
            ),
            loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
            jit_compile=run.jit_compile,
        )
    model.summary()

    # Training --------------------------------------------------------------
    fit_samples = min(len(x), steps * args.batch_size)
    history = model.fit(
        x[:fit_samples],
        y[:fit_samples],
        batch_size=args.batch_size,
        epochs=args.epochs,
        steps_per_epoch=steps,
        shuffle=args.shuffle,
    )
    losses, train_seconds = run.training_done(
        model, history, history_file=False
    )

    # Evaluation --------------------------------------------------------------
    model_bpc, scored, starts = bits_per_char(
        model, heldout_ids, args.sequence_length
    )
    heldout_text = _char_lm.decode(heldout_ids)
    baseline_bpc, counted = baseline_bits(
        corpus.train, heldout_text, starts, args.sequence_length
    )
    print(
        f"held-out bits/char on {scored:,} characters: model "
        f"{model_bpc:.3f}, character 5-gram Kneser-Ney baseline "
        f"{baseline_bpc:.3f} ({counted:,} characters)"
    )

    max_length = PROMPT_LENGTH + args.max_new_tokens
    greedy = keras_attention.TokenGenerator(
        model, max_length, sampler="greedy", name="greedy"
    )
    sample = keras_attention.TokenGenerator(
        model,
        max_length,
        sampler=samplers.TopPSampler(p=0.9, temperature=0.8),
        name="sample",
    )
    beam = keras_attention.TokenGenerator(
        model,
        max_length,
        sampler=samplers.BeamSampler(num_beams=4),
        name="beam",
    )
    greedy_ids = keras.ops.convert_to_numpy(greedy(left_pad(DEMO_PROMPTS)))
    margins = greedy_margins(model, DEMO_PROMPTS, greedy_ids)
    samples = {
        "greedy": [_char_lm.decode(row) for row in greedy_ids],
        "sample": generate(sample, DEMO_PROMPTS, seed=7),
        "beam": generate(beam, DEMO_PROMPTS),
    }
    for decoding, texts in samples.items():
        for prompt, text in zip(DEMO_PROMPTS, texts):
            print(f"--- {decoding}: {prompt!r}\n{prompt}{text}")
    figure = run.figure_path("attention.png")
    plot_attention(model, "def add(a, b):\n    return a + b\n", figure)
    print(f"saved {figure}")

    summary = {
        "backend": run.backend,
        "bits_per_char": model_bpc,
        "baseline_bits_per_char": baseline_bpc,
        "scored_characters": scored,
        "loss": losses,
        "train_seconds": train_seconds,
        "samples": samples,
        "greedy_margins": margins.tolist(),
    }

    # Export ----------------------------------------------------------------
    path = export(run, model, greedy, sample, beam)
    summary["export"] = path
    runtime_mismatches = None
    if path is not None:
        runtime_mismatches = export_runtime_files(
            os.path.dirname(path), greedy, sample, beam, DEMO_PROMPTS
        )
    summary["runtime_mismatches"] = runtime_mismatches
    status = run.finish(
        summary,
        path,
        lambda path: (
            check_served(path, greedy, sample, beam, DEMO_PROMPTS, margins)
            and not runtime_mismatches
        ),
    )
    if status != 0:
        return status
    return 0 if model_bpc < baseline_bpc or args.max_steps else 1


if __name__ == "__main__":
    sys.exit(main())
