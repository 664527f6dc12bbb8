"""Text classification: a Transformer that reads word order, vs bag-of-words.

What it shows:
    A sentiment classifier that takes raw strings. `TextVectorization` sits
    inside the model (adapted on the training texts, zero-padded to a fixed
    length), then token embeddings (`Embedding(mask_zero=True)`) plus
    learned `keras_attention.PositionEmbedding`s, a stack of
    `keras_attention.TransformerEncoder` blocks that take the padding mask
    from the embedding, and a `keras_attention.AttentionPooling` head before
    `Dense(2, softmax)` named "probabilities". Next to it the script trains
    a bag-of-words baseline (scikit-learn `LogisticRegression` on word
    counts) and prints both accuracies, overall and per construction, to
    show what attention over word order buys. It saves a figure of the
    attention weights per token (runs/text_classification/attention.png) and
    exports the model for TensorFlow Serving: `serving_default` takes `text`
    (strings, shape [None]) and returns `{"probabilities": ...}`,
    vectorization included. Under JAX or PyTorch (no string tensors) the
    same layers train on token ids, and the string-in model that shares them
    is saved and exported by a TensorFlow process; see
    docs/cross-backend-export.md.

The data (offline default, generated from --seed): short reviews whose
label depends on word order and context (negation, "X but Y", "although X,
Y"), so that bag-of-words cannot get them right; see "Data: generated
reviews" below. `--dataset imdb`: the IMDB movie reviews from
`keras.datasets.imdb` (internet needed).

How to run:
    python examples/text_classification.py        # trains, evaluates, exports
    KERAS_BACKEND=jax python examples/text_classification.py
    KERAS_BACKEND=torch python examples/text_classification.py
    python examples/text_classification.py --dataset imdb    # needs internet
    python examples/text_classification.py --help

Expected result (default flags, seed 0, 2 CPU cores): about 99% test
accuracy against about 53% for bag-of-words, in under 2 minutes; exits
non-zero if the export's answers differ from the model's. Measured:
examples/RESULTS.md.
"""

import _common  # noqa: F401  (first: it may split the CPU before keras)

# isort: split
import re
import sys

import keras
import numpy as np

import keras_attention as ka

# Setup ------------------------------------------------------------------
CLASS_NAMES = ("negative", "positive")

# Defaults that depend on --dataset.
DATASET_DEFAULTS = {
    "generated": dict(
        epochs=10,
        train_samples=8000,
        test_samples=2000,
        max_length=24,
        vocabulary_size=None,
        num_layers=2,
        embed_dim=32,
        intermediate_dim=64,
        learning_rate=2e-3,
    ),
    "imdb": dict(
        epochs=3,
        train_samples=None,
        test_samples=None,
        max_length=200,
        vocabulary_size=20000,
        num_layers=1,
        embed_dim=32,
        intermediate_dim=32,
        learning_rate=1e-3,
    ),
}

# Sentences for the figure, the demo predictions and the export's warm-up.
DEMO = (
    "the food was not bad",
    "the food was not good",
    "good service but terrible food",
    "the service was good but the food was terrible",
    "although the plot was boring, i loved the acting",
    "i loved the acting although the plot was boring",
)


def add_arguments(parser):
    group = parser.add_argument_group("text_classification")
    group.add_argument(
        "--dataset",
        choices=sorted(DATASET_DEFAULTS),
        default="generated",
        help="generated: offline, word order matters (default); imdb: "
        "keras.datasets.imdb (downloads). The flags below default per "
        "dataset: "
        + "; ".join(
            f"{name}: " + ", ".join(f"{k}={v}" for k, v in defaults.items())
            for name, defaults in DATASET_DEFAULTS.items()
        ),
    )
    group.add_argument("--train-samples", type=int, default=None)
    group.add_argument("--test-samples", type=int, default=None)
    group.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="tokens per text (longer texts are cut, shorter ones padded)",
    )
    group.add_argument(
        "--vocabulary-size",
        type=int,
        default=None,
        help="TextVectorization's max_tokens (padding and OOV included)",
    )
    group.add_argument("--num-layers", type=int, default=None)
    group.add_argument("--embed-dim", type=int, default=None)
    group.add_argument("--intermediate-dim", type=int, default=None)
    group.add_argument("--num-heads", type=int, default=2)
    group.add_argument("--dropout", type=float, default=0.1)
    group.add_argument("--learning-rate", type=float, default=None)


def resolve_defaults(args):
    for key, value in DATASET_DEFAULTS[args.dataset].items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args


# Data: generated reviews ---------------------------------------------------
# Short reviews whose label depends on word order and context:
#     negation     "the food was not bad" is positive, "not good" negative,
#                  also through an intensifier ("wasn't really boring")
#     contrast     "X but Y": Y decides ("the food was good but the service
#                  was rude" is negative; swap the clauses and it is positive)
#     concession   "although X, Y" and "Y although X": Y (the main clause)
#                  decides, wherever it stands
#     agreement    "X and Y", with X and Y of the same sentiment
# Intensifiers ("very", "really", ...) change no label; they sit between a
# negation and its adjective. `sentiment(text)` states the rules as code.
# Swapping the clauses of a contrast keeps the bag of words and flips the
# label: the script also scores both models on the test contrasts together
# with their swapped twins, where any bag-of-words model gets exactly half
# right. The validation and test sets hold only sentences that are not in
# the training set.
ASPECTS = (
    "food",
    "service",
    "staff",
    "room",
    "view",
    "music",
    "coffee",
    "price",
    "movie",
    "plot",
    "acting",
    "ending",
)
# Adjective -> polarity (1 positive, 0 negative).
ADJECTIVES = {
    **dict.fromkeys(
        ("good", "great", "excellent", "nice", "tasty", "friendly", "lovely"),
        1,
    ),
    **dict.fromkeys(
        ("bad", "terrible", "awful", "poor", "bland", "rude", "boring"), 0
    ),
}
# Past tense -> (base form, polarity): "i loved ...", "i did not love ...".
VERBS = {
    "liked": ("like", 1),
    "loved": ("love", 1),
    "enjoyed": ("enjoy", 1),
    "hated": ("hate", 0),
    "disliked": ("dislike", 0),
}
INTENSIFIERS = ("very", "really", "quite", "so", "extremely", "truly")
COPULAS = ("was", "is")
NEGATED_COPULAS = ("was not", "is not", "wasn't", "isn't", "was never")
NEGATED_DID = ("did not", "didn't")
NEGATORS = {"not", "never", "wasn't", "isn't", "didn't"}
# Construction -> share of the generated sentences.
KINDS = {
    "plain": 0.15,  # one clause, no negation
    "negated": 0.2,  # one negated clause
    "but": 0.3,  # "X but Y", X and Y of opposite sentiment
    "although": 0.2,  # "although X, Y" or "Y although X", opposite
    "and": 0.15,  # "X and Y", same sentiment
}


def _pick(rng, options):
    return options[rng.integers(len(options))]


def _words_of(lexicon, polarity):
    return tuple(w for w, p in lexicon.items() if p == polarity)


def make_clause(rng, polarity, negated):
    """One clause of the given sentiment, negated or not."""
    word_polarity = 1 - polarity if negated else polarity
    form = rng.integers(3 if not negated else 2)
    if form == 0:  # "the food was (not) (really) good"
        adjective = _pick(rng, _words_of(ADJECTIVES, word_polarity))
        copula = _pick(rng, NEGATED_COPULAS if negated else COPULAS)
        intensifier = rng.random() < 0.35
        words = ["the", _pick(rng, ASPECTS), copula]
        words += [_pick(rng, INTENSIFIERS)] if intensifier else []
        return " ".join(words + [adjective])
    if form == 1:  # "i (did not) loved/love the plot", "i never liked ..."
        verbs = [v for v, (_, p) in VERBS.items() if p == word_polarity]
        past = _pick(rng, verbs)
        if not negated:
            verb = past
        elif rng.random() < 0.25:
            verb = f"never {past}"
        else:
            verb = f"{_pick(rng, NEGATED_DID)} {VERBS[past][0]}"
        return f"i {verb} the {_pick(rng, ASPECTS)}"
    # "(really) good service"
    adjective = _pick(rng, _words_of(ADJECTIVES, word_polarity))
    intensifier = [_pick(rng, INTENSIFIERS)] if rng.random() < 0.35 else []
    return " ".join(intensifier + [adjective, _pick(rng, ASPECTS)])


def make_sentence(rng, kind=None):
    """A generated review: `(text, label, kind)`."""
    if kind is None:
        kind = _pick(rng, tuple(KINDS))
    label = int(rng.integers(2))

    def clause(polarity):
        return make_clause(rng, polarity, negated=rng.random() < 0.4)

    if kind == "plain":
        return make_clause(rng, label, negated=False), label, kind
    if kind == "negated":
        return make_clause(rng, label, negated=True), label, kind
    if kind == "but":
        return f"{clause(1 - label)} but {clause(label)}", label, kind
    if kind == "although":
        main, concession = clause(label), clause(1 - label)
        if rng.random() < 0.5:
            return f"although {concession}, {main}", label, kind
        return f"{main} although {concession}", label, kind
    if kind == "and":
        return f"{clause(label)} and {clause(label)}", label, kind
    raise ValueError(f"Unknown kind: {kind!r}")


def make_dataset(train_samples, test_samples, seed):
    """Generated train, validation and test splits, deterministic in `seed`.

    Returns `{split: {"text", "label", "kind"}}` of NumPy arrays. The
    validation and test splits hold `test_samples` sentences each, none of
    which is in the training split.
    """
    rng = np.random.default_rng(seed)
    kinds = tuple(KINDS)
    weights = np.array([KINDS[k] for k in kinds])

    def draw(n, exclude):
        rows = []
        while len(rows) < n:
            kind = kinds[rng.choice(len(kinds), p=weights)]
            row = make_sentence(rng, kind)
            if row[0] not in exclude:
                rows.append(row)
        text, label, kind = zip(*rows) if rows else ((), (), ())
        return {
            "text": np.array(text, dtype=object),
            "label": np.array(label, dtype="int32"),
            "kind": np.array(kind, dtype=object),
        }

    train = draw(train_samples, exclude=set())
    seen = set(train["text"])
    validation = draw(test_samples, exclude=seen)
    test = draw(test_samples, exclude=seen)
    return {"train": train, "validation": validation, "test": test}


def _clause_sentiment(clause):
    words = clause.split()
    polar = [ADJECTIVES[w] for w in words if w in ADJECTIVES]
    polar += [VERBS[w][1] for w in words if w in VERBS]
    polar += [p for w in words for b, p in VERBS.values() if w == b]
    if len(polar) != 1:
        raise ValueError(f"No single sentiment word in {clause!r}")
    negated = any(w in NEGATORS for w in words)
    return 1 - polar[0] if negated else polar[0]


def sentiment(text):
    """The labelling rules, stated independently of the generator.

    A clause's sentiment is its adjective's or verb's, flipped by a negation
    anywhere in the clause ("not", "never", "wasn't", ...). "X but Y" takes
    Y's; "although X, Y" and "Y although X" take Y's; "X and Y" takes the
    sentiment X and Y share. Returns 1 (positive) or 0 (negative).
    """
    text = text.lower().strip()
    if text.startswith("although "):
        concession, main = text[len("although ") :].split(",", 1)
        return _clause_sentiment(main)
    if " although " in text:
        return _clause_sentiment(text.split(" although ", 1)[0])
    if " but " in text:
        return _clause_sentiment(text.split(" but ", 1)[1])
    if " and " in text:
        first, second = text.split(" and ", 1)
        first, second = _clause_sentiment(first), _clause_sentiment(second)
        if first != second:
            raise ValueError(f"'and' joins opposite sentiments: {text!r}")
        return first
    return _clause_sentiment(text)


def words(text):
    """The bag-of-words view of a text, as the vectorizer standardizes it."""
    return re.sub(r"[^\w\s]", "", text.lower()).split()


def swap_clauses(text):
    """The twin of a contrast: its two clauses swapped, or None.

    "X but Y" -> "Y but X", "although X, Y" -> "although Y, X", "Y although
    X" -> "X although Y". The twin has the same words and, as X and Y have
    opposite sentiments, the other label: bag-of-words cannot tell them
    apart.
    """
    if text.startswith("although "):
        first, second = text[len("although ") :].split(", ", 1)
        return f"although {second}, {first}"
    for joint in (" although ", " but "):
        if joint in text:
            first, second = text.split(joint, 1)
            return f"{second}{joint}{first}"
    return None


def contrast_twins(split):
    """The split's contrasts ("but", "although") and their clause swaps."""
    text, label = [], []
    for t, y in zip(split["text"], split["label"]):
        twin = swap_clauses(t)
        if twin is not None:
            text += [t, twin]
            label += [y, 1 - y]
    return {
        "text": np.array(text, dtype=object),
        "label": np.array(label, dtype="int32"),
    }


# Data: IMDB ---------------------------------------------------------------
IMDB_PAD, IMDB_START, IMDB_OOV = 0, 1, 2
IMDB_INDEX_FROM = 3  # word of rank r (1 = most frequent) has id r + 3


def load_imdb(load_data=None, get_word_index=None, validation_fraction=0.1):
    """IMDB reviews as text, from `keras.datasets.imdb`'s word-index form.

    `load_data` and `get_word_index` default to `keras.datasets.imdb`'s
    (tests pass fakes of the same format). Every id is shifted by
    `index_from=3` from the word's rank in `get_word_index()`; ids 0
    (padding), 1 (start) and 2 (out of vocabulary) are dropped. All words
    are kept (`num_words=None`): the model's `TextVectorization` picks its
    own vocabulary from the training texts. The last `validation_fraction`
    of the (shuffled) training reviews become the validation split.
    """
    if load_data is None:
        load_data = keras.datasets.imdb.load_data
    if get_word_index is None:
        get_word_index = keras.datasets.imdb.get_word_index
    (x_train, y_train), (x_test, y_test) = load_data(
        num_words=None,
        start_char=IMDB_START,
        oov_char=IMDB_OOV,
        index_from=IMDB_INDEX_FROM,
    )
    index_to_word = {
        index + IMDB_INDEX_FROM: word
        for word, index in get_word_index().items()
    }

    def decode(sequences):
        return np.array(
            [
                " ".join(
                    index_to_word[i]
                    for i in map(int, ids)
                    if i >= IMDB_INDEX_FROM and i in index_to_word
                )
                for ids in sequences
            ],
            dtype=object,
        )

    def split(text, label):
        label = np.asarray(label, dtype="int32")
        return {"text": text, "label": label, "kind": np.full(len(text), "")}

    train_text, test_text = decode(x_train), decode(x_test)
    n_val = int(round(len(train_text) * validation_fraction))
    n_train = len(train_text) - n_val
    return {
        "train": split(train_text[:n_train], y_train[:n_train]),
        "validation": split(train_text[n_train:], y_train[n_train:]),
        "test": split(test_text, y_test),
    }


def load_data(args):
    if args.dataset == "generated":
        return make_dataset(args.train_samples, args.test_samples, args.seed)
    data = load_imdb()
    limits = {"train": args.train_samples, "test": args.test_samples}
    for name, limit in limits.items():
        if limit is not None:
            data[name] = {k: v[:limit] for k, v in data[name].items()}
    return data


# Model -------------------------------------------------------------------
def make_vectorizer(texts, vocabulary_size, max_length):
    """`TextVectorization` adapted on `texts`: 0 is padding, 1 unknown."""
    vectorizer = keras.layers.TextVectorization(
        max_tokens=vocabulary_size,
        standardize="lower_and_strip_punctuation",
        split="whitespace",
        output_mode="int",
        output_sequence_length=max_length,
        name="vectorizer",
    )
    vectorizer.adapt(texts, batch_size=1024)
    return vectorizer


def build_models(vectorizer, args):
    """The classifier on token ids, its explainer, and (TF) on strings.

    Returns `(token_model, explainer, text_model)`: `token_model` maps token
    ids `(batch, max_length)` to probabilities; `explainer` (same layers)
    also returns the pooling weights `(batch, pooling_heads, max_length)`
    and the last block's attention `(batch, heads, max_length,
    max_length)`; `text_model` maps strings `(batch,)` to probabilities
    with `vectorizer` inside. Under JAX or PyTorch (no string tensors)
    `text_model` is only built symbolically, to be saved and exported from
    TensorFlow.
    """
    embed = keras.layers.Embedding(
        vectorizer.vocabulary_size(),
        args.embed_dim,
        mask_zero=True,
        name="token_embedding",
    )
    positions = ka.PositionEmbedding(args.max_length, name="position_embedding")
    add = keras.layers.Add(name="add_positions")
    encoders = [
        ka.TransformerEncoder(
            intermediate_dim=args.intermediate_dim,
            num_heads=args.num_heads,
            dropout=args.dropout,
            seed=args.seed + i,
            name=f"encoder_{i}",
        )
        for i in range(args.num_layers)
    ]
    pooling = ka.AttentionPooling(
        units=args.embed_dim, num_heads=2, name="attention_pooling"
    )
    dropout = keras.layers.Dropout(args.dropout, name="head_dropout")
    head = keras.layers.Dense(2, activation="softmax", name="probabilities")

    def classify(token_ids):
        x = embed(token_ids)
        x = add([x, positions(x)])  # keeps the padding mask
        for encoder in encoders[:-1]:
            x = encoder(x)  # the padding mask comes with x
        x, encoder_scores = encoders[-1](x, return_attention_scores=True)
        pooled, pooling_scores = pooling(x, return_attention_scores=True)
        return head(dropout(pooled)), pooling_scores, encoder_scores

    token_ids = keras.Input((args.max_length,), dtype="int32", name="tokens")
    probabilities, pooling_scores, encoder_scores = classify(token_ids)
    token_model = keras.Model(token_ids, probabilities, name="classifier")
    explainer = keras.Model(
        token_ids,
        [probabilities, pooling_scores, encoder_scores],
        name="explainer",
    )
    text = keras.Input((), dtype="string", name="text")
    text_model = keras.Model(
        text, classify(vectorizer(text))[0], name="text_classification"
    )
    return token_model, explainer, text_model


def vectorize(vectorizer, texts, batch_size=4096):
    """Token ids for NumPy texts, as a NumPy int32 array."""
    chunks = [
        np.asarray(vectorizer(np.asarray(texts[i : i + batch_size])))
        for i in range(0, len(texts), batch_size)
    ]
    return np.concatenate(chunks).astype("int32")


# Bag-of-words baseline -----------------------------------------------------
def bag_of_words_baseline(train, test, ngram_range=(1, 1)):
    """Logistic regression on word counts: accuracy and predictions."""
    from sklearn.feature_extraction.text import CountVectorizer
    from sklearn.linear_model import LogisticRegression

    counts = CountVectorizer(
        token_pattern=r"(?u)\b\w+\b", ngram_range=ngram_range
    )
    features = counts.fit_transform([" ".join(words(t)) for t in train["text"]])
    classifier = LogisticRegression(max_iter=2000, C=1.0)
    classifier.fit(features, train["label"])
    predicted = classifier.predict(
        counts.transform([" ".join(words(t)) for t in test["text"]])
    )
    return float(np.mean(predicted == test["label"])), predicted


# Figure --------------------------------------------------------------------
def plot_attention(texts, tokens, probabilities, pooling, encoder, path):
    """Per-token pooling weights and the last block's attention, per text.

    Left: each pooling head's weights over the tokens; right: the last
    encoder block's self-attention. The weights are over contextual vectors
    (the encoder blocks' outputs), so a position can stand for its
    neighbours too.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = len(texts)
    fig, axes = plt.subplots(
        rows,
        2,
        figsize=(13, 2.7 * rows),
        gridspec_kw={"width_ratios": [1.6, 1]},
        squeeze=False,
    )
    for row, text in enumerate(texts):
        n = len(tokens[row])
        p = probabilities[row][1]
        expected = CLASS_NAMES[sentiment(text)]
        ax = axes[row, 0]
        weights = pooling[row][:, :n]
        ax.imshow(weights, cmap="viridis", aspect="auto", vmin=0)
        for h in range(weights.shape[0]):
            for t in range(n):
                ax.text(
                    t,
                    h,
                    f"{weights[h, t]:.2f}",
                    ha="center",
                    va="center",
                    fontsize=7,
                    color="white" if weights[h, t] < weights.max() / 2 else "k",
                )
        ax.set_xticks(range(n), tokens[row], rotation=40, ha="right")
        ax.set_yticks(
            range(weights.shape[0]),
            [f"pool head {h}" for h in range(weights.shape[0])],
        )
        ax.set_title(
            f'"{text}"\nP(positive) = {p:.3f}; rules say {expected}',
            fontsize=9,
            loc="left",
        )
        ax = axes[row, 1]
        attention = encoder[row][:, :n, :n].mean(0)
        ax.imshow(attention, cmap="magma", vmin=0)
        ax.set_xticks(range(n), tokens[row], rotation=60, ha="right")
        ax.set_yticks(range(n), tokens[row], fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
        ax.set_title(
            "last encoder block: query (row) attends key (column),\n"
            "mean over heads",
            fontsize=8,
        )
    fig.suptitle(
        "AttentionPooling weights per token (left) and self-attention of the "
        "last TransformerEncoder (right)",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# Export ------------------------------------------------------------------
def check_served(path, texts, expected):
    """Reloads the export and compares its outputs with the Keras model's
    (from another backend: through `serving.check`)."""
    if keras.backend.backend() != "tensorflow":
        return _common.check_served_outputs(
            path,
            {"text": texts},
            {"probabilities": expected},
            f"{len(texts)} texts",
        )
    import tensorflow as tf

    serve = tf.saved_model.load(path).signatures["serving_default"]
    served = serve(text=tf.constant(list(texts)))["probabilities"].numpy()
    diff = float(np.max(np.abs(served - expected)))
    print(
        f"served (serving_default) vs Keras on {len(texts)} texts: max abs "
        f"diff {diff:.2e}"
    )
    for text, probs in list(zip(texts, served))[:3]:
        print(f"  served {text!r} -> P(positive) {probs[1]:.3f}")
    return diff <= 1e-5


# Main --------------------------------------------------------------------
def main(argv=None):
    args = _common.parse_args(
        __doc__,
        "text_classification",
        argv=argv,
        add_arguments=add_arguments,
        multiworker=True,
        epochs=None,
    )
    args = resolve_defaults(args)
    run = _common.setup(args)

    data = load_data(args)
    train, validation, test = data["train"], data["validation"], data["test"]
    print(
        f"data ({args.dataset}): {len(train['text'])} training, "
        f"{len(validation['text'])} validation, {len(test['text'])} test "
        f"texts; {np.mean(train['label']):.1%} of training labels positive"
    )
    for text, label in list(zip(train["text"], train["label"]))[:4]:
        print(f"  {CLASS_NAMES[label]}: {text[:100]!r}")
    with run.scope():
        vectorizer = make_vectorizer(
            train["text"], args.vocabulary_size, args.max_length
        )
        token_model, explainer, text_model = build_models(vectorizer, args)
        # Under TensorFlow the string-in model is trained. Under JAX or
        # PyTorch (no string tensors) and under a tf.distribute strategy
        # (which cannot split string batches) it is the token-id model, on
        # pre-vectorized texts; the layers, and so the weights, are the same.
        train_on_text = run.backend == "tensorflow" and run.strategy is None
        model = text_model if train_on_text else token_model
        jit_compile = run.jit_compile
        if model is text_model and jit_compile is True:
            print("jit_compile off: XLA cannot compile TextVectorization")
            jit_compile = False
        steps = run.steps(len(train["text"]), args.batch_size)
        schedule = keras.optimizers.schedules.CosineDecay(
            args.learning_rate, decay_steps=steps * args.epochs, alpha=0.05
        )
        model.compile(
            optimizer=keras.optimizers.AdamW(schedule, weight_decay=1e-4),
            loss="sparse_categorical_crossentropy",
            metrics=["accuracy"],
            jit_compile=jit_compile,
        )
    print(f"vocabulary: {vectorizer.vocabulary_size()} tokens")
    model.summary()

    def inputs(split):
        """The model's inputs: texts (the string-in model) or token ids."""
        if model is text_model:
            return split["text"]
        return vectorize(vectorizer, split["text"])

    # Training --------------------------------------------------------------
    # With --max-steps, every epoch trains on the same first `steps` batches.
    fit_samples = min(len(train["text"]), steps * args.batch_size)
    history = run.fit(
        model,
        inputs(train)[:fit_samples],
        train["label"][:fit_samples],
        batch_size=args.batch_size,
        epochs=args.epochs,
        validation_data=(inputs(validation), validation["label"]),
        shuffle=args.shuffle,
    )
    losses, train_seconds = run.training_done(model, history)

    # Evaluation ------------------------------------------------------------
    def predict(texts):
        """The trained model's probabilities for NumPy texts."""
        x = texts if model is text_model else vectorize(vectorizer, texts)
        return np.asarray(model.predict(x, batch_size=512, verbose=0))

    demo = np.array(DEMO, dtype=object)
    # Texts to compare the export with: the demo and some test sentences.
    check_texts = np.concatenate([demo, test["text"][:26]]).astype(object)
    twins = contrast_twins(test) if args.dataset == "generated" else None
    groups = [test["text"], check_texts]
    groups += [twins["text"]] if twins is not None else []
    # One predict call (one traced function) for all of them.
    test_probabilities, check_probabilities, *twin_probabilities = np.split(
        predict(np.concatenate(groups)),
        np.cumsum([len(g) for g in groups])[:-1],
    )
    predicted = np.argmax(test_probabilities, axis=-1)
    accuracy = float(np.mean(predicted == test["label"]))
    bow_accuracy, bow_predicted = bag_of_words_baseline(train, test)
    bigram_accuracy, _ = bag_of_words_baseline(train, test, ngram_range=(1, 2))
    results = {
        "test_accuracy": {
            "attention": accuracy,
            "bag_of_words": bow_accuracy,
            "bag_of_words_and_bigrams": bigram_accuracy,
        }
    }
    print(
        f"test accuracy: attention model {accuracy:.2%}, bag-of-words "
        f"(logistic regression on word counts) {bow_accuracy:.2%}, "
        f"bag of words and bigrams {bigram_accuracy:.2%}"
    )
    if twins is not None:
        by_kind = {}
        print(f"  {'construction':<13} {'n':>5} {'attention':>10} {'BoW':>7}")
        for kind in KINDS:
            rows = test["kind"] == kind
            labels = test["label"][rows]
            by_kind[kind] = {
                "n": int(rows.sum()),
                "attention": float(np.mean(predicted[rows] == labels)),
                "bag_of_words": float(np.mean(bow_predicted[rows] == labels)),
            }
            print(
                f"  {kind:<13} {by_kind[kind]['n']:>5} "
                f"{by_kind[kind]['attention']:>10.1%} "
                f"{by_kind[kind]['bag_of_words']:>7.1%}"
            )
        results["by_construction"] = by_kind
        twin_predicted = np.argmax(twin_probabilities[0], axis=-1)
        _, twin_bow = bag_of_words_baseline(train, twins)
        results["contrast_twins"] = {
            "n": len(twins["text"]),
            "attention": float(np.mean(twin_predicted == twins["label"])),
            "bag_of_words": float(np.mean(twin_bow == twins["label"])),
        }
        print(
            f"contrast twins ({len(twins['text'])}: the test contrasts and "
            "their clause swaps, same words, other label): attention model "
            f"{results['contrast_twins']['attention']:.2%}, bag-of-words "
            f"{results['contrast_twins']['bag_of_words']:.2%}"
        )
        for i in np.flatnonzero(predicted != test["label"])[:3]:
            print(
                f"  wrong: {test['text'][i]!r} -> {CLASS_NAMES[predicted[i]]}"
            )

    demo_ids = vectorize(vectorizer, demo)
    probabilities, pooling, encoder = (
        np.asarray(x) for x in explainer.predict(demo_ids, verbose=0)
    )
    vocabulary = vectorizer.get_vocabulary()
    tokens = [[vocabulary[i] for i in ids if i != 0] for ids in demo_ids]
    for text, probs in zip(DEMO, probabilities):
        print(f"  {text!r} -> P(positive) {probs[1]:.3f}")
    figure = run.figure_path("attention.png")
    plot_attention(DEMO, tokens, probabilities, pooling, encoder, figure)
    print(f"saved {figure}")
    results.update(
        {
            "loss": losses,
            "train_seconds": train_seconds,
            "backend": run.backend,
            "dataset": args.dataset,
            "check_texts": list(check_texts),
            "check_probabilities": check_probabilities.tolist(),
        }
    )

    # Export ----------------------------------------------------------------
    path = run.export(
        text_model, warmup_inputs={"text": np.array(DEMO[:4], dtype=object)}
    )
    if path is not None:
        results["export"] = path
    return run.finish(
        results,
        path,
        lambda path: check_served(path, check_texts, check_probabilities),
    )


if __name__ == "__main__":
    sys.exit(main())
