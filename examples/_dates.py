"""What the date translation examples share: data, encoding, evaluation,
the string model and its export, and the run from data to export.

`date_translation.py` (Bahdanau attention) and
`date_translation_transformer.py` (an encoder-decoder Transformer) differ
only in their models; everything else lives here.

The data (generated deterministically from a seed, offline): every day from
1969-01-01 to 2068-12-31 (so that two-digit years read as Python's `%y`
does: 69-99 are 19xx, 00-68 are 20xx), in one of 31 training formats with
random capitalisation. A random tenth of the days is held out: no training
input mentions them. Seven more formats are held out too; each one
recombines parts that the training formats use ("Sat 21/11/26", "5-3-2026",
"November 21 2026", "21st November 2026", "Nov 21st, 2026", ...). The test
sets hold the held-out days in the training formats, and the held-out days
in the held-out formats.
"""

import datetime

import _common
import keras
import numpy as np

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


def parse_args(doc, name, argv, add_model_arguments, learning_rate):
    """The examples' shared flags (`_common.parse_args`), the data's, and
    the model's (`add_model_arguments(group)`); 4 epochs of batches of 128
    and Adam's peak `learning_rate` by default."""

    def add_arguments(parser):
        group = parser.add_argument_group(name)
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
        add_model_arguments(group)
        group.add_argument(
            "--learning-rate",
            type=float,
            help="Adam's peak rate, cosine decay (default: %(default)s)",
        )

    return _common.parse_args(
        doc,
        name,
        argv=argv,
        add_arguments=add_arguments,
        epochs=4,
        batch_size=128,
        learning_rate=learning_rate,
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
class TargetDecoder(keras.layers.Layer):
    """What both target decoders share: the target characters' `embedding`,
    `(batch, target_length, vocabulary_size)` float32 logits (the layer
    `logits_layer()` returns), and no mask: the source's does not carry over
    to the targets."""

    def __init__(self, vocabulary_size, target_length, embedding_dim, **kwargs):
        super().__init__(**kwargs)
        self.supports_masking = True
        self.vocabulary_size = vocabulary_size
        self.target_length = target_length
        self.embedding = keras.layers.Embedding(
            vocabulary_size, embedding_dim, name="embedding"
        )

    def logits_layer(self):
        return keras.layers.Dense(
            self.vocabulary_size, dtype="float32", name="logits"
        )

    def get_config(self):
        config = super().get_config()
        config["vocabulary_size"] = self.vocabulary_size
        config["target_length"] = self.target_length
        return config

    def compute_output_spec(self, encoder_outputs, *args, **kwargs):
        shape = encoder_outputs.shape[:1] + (
            self.target_length,
            self.vocabulary_size,
        )
        return keras.KerasTensor(shape, dtype="float32")

    def compute_mask(self, *args, **kwargs):
        return None  # the source mask does not carry over to the targets


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


def model_inputs():
    """The models' inputs: `source_ids` and (training) `decoder_inputs`."""
    source_ids = keras.Input((MAX_INPUT_LENGTH,), dtype="int32", name="source")
    decoder_inputs = keras.Input(
        (TARGET_LENGTH,), dtype="int32", name="decoder_inputs"
    )
    return source_ids, decoder_inputs


def training_and_inference(inputs, logits, decoder, *greedy_inputs):
    """The training model, `[source_ids, decoder_inputs]` -> `logits`, and
    the greedy inference model, `source_ids` -> `{"target_ids",
    "alignments"}` (`GreedyDecoding(decoder)` of `greedy_inputs`), from
    `model_inputs()`."""
    greedy = GreedyDecoding(decoder, name="greedy")
    target_ids, alignments = greedy(*greedy_inputs)
    training = keras.Model(list(inputs), logits, name="date_translation")
    inference = keras.Model(
        inputs[0],
        {"target_ids": target_ids, "alignments": alignments},
        name="date_translation_greedy",
    )
    return training, inference


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


def plot_alignments(texts, predictions, alignments, path, title):
    """A heat map per text: `title`'s weights of each output character
    (rows) over the input characters (columns)."""
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

    It is built symbolically on every backend: under JAX or PyTorch it is
    never called (their tensors hold no strings), only saved, and the
    TensorFlow process that `serving.export_saved_model` starts loads and
    exports it.
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
def train_evaluate_export(args, model_name, build, alignments_title):
    """The run from data to export, with the models and the learning rate
    schedule that `build(args, steps_per_epoch)` returns as `(training
    model, inference model, schedule)`. Returns the exit status."""
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
        model, inference_model, schedule = build(args, steps)
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
    losses, train_seconds = run.training_done(model, history)

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
    plot_alignments(DEMO, demo, alignments, figure, alignments_title)
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
        "model": model_name,
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
    return run.finish(
        summary,
        path,
        lambda path: check_served(path, check_texts, check_iso, check_margins),
    )
