"""What the character-level text-generation example shares: its offline
corpus, the character vocabulary, and a Kneser-Ney n-gram baseline.

The corpus is the Python standard library's own source code, found through
`sysconfig`, so it needs no download. It is split by file: no file gives
text to both the training and the held-out split, so held-out bits per
character measure generalisation to unseen files, not memorised lines.

    corpus = load_stdlib_corpus()
    ids = encode(corpus.train, corpus.vocabulary)     # int32, ids >= 1
    baseline = KneserNeyCharModel(order=5).fit(corpus.train)
    print(baseline.bits_per_char(corpus.heldout))

The vocabulary is fixed, not learned from the data: printable ASCII (the 95
characters from " " to "~"), then "\\n" and "\\t". Every other character
(non-ASCII letters, "\\x0c" form feeds, ...) becomes `REPLACEMENT`. Token ids:

    0   padding (`PADDING`, the empty string; `decode` drops it)
    1   `REPLACEMENT` ("\\ufffd"), for any character outside the vocabulary
    2+  " ", "!", ..., "~", "\\n", "\\t" (in that order), 97 characters

so `vocabulary[i]` is the text of id `i`, and `len(vocabulary)` is 99.
"""

import collections
import dataclasses
import math
import os
import re
import sysconfig

import numpy as np

PADDING = ""
REPLACEMENT = "\ufffd"
CHARACTERS = "".join(chr(i) for i in range(32, 127)) + "\n\t"
VOCABULARY = [PADDING, REPLACEMENT, *CHARACTERS]

# Folders of the standard library that are not its own code, or that are
# mostly test data, generated tables or fixtures rather than code.
EXCLUDED_DIRECTORIES = frozenset(
    {
        "site-packages",
        "dist-packages",
        "test",
        "tests",
        "idlelib",
        "lib2to3",
        "turtledemo",
        "__pycache__",
    }
)

_OUTSIDE_VOCABULARY = re.compile(f"[^{re.escape(CHARACTERS)}]")


# Data --------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class CharCorpus:
    """The two splits of a corpus, in the vocabulary's characters only.

    `train_paths` and `heldout_paths` are the files that gave text to each
    split (relative to the standard library folder, "/"-separated), in the
    order they were concatenated; the counts are their lengths.
    """

    train: str
    heldout: str
    vocabulary: list
    train_files: int
    heldout_files: int
    train_paths: tuple = ()
    heldout_paths: tuple = ()


def to_vocabulary(text):
    """`text` with every character outside `CHARACTERS` as `REPLACEMENT`.

    Line endings are normalised first: "\\r\\n" and "\\r" become "\\n".
    """
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _OUTSIDE_VOCABULARY.sub(REPLACEMENT, text)


def stdlib_files(root=None):
    """The standard library's `.py` files, sorted, relative to `root`.

    `root` defaults to `sysconfig.get_paths()["stdlib"]`. Folders named in
    `EXCLUDED_DIRECTORIES` are skipped, at any depth. Paths use "/".
    """
    root = root or sysconfig.get_paths()["stdlib"]
    paths = []
    for folder, subfolders, filenames in os.walk(root):
        subfolders[:] = [
            name for name in subfolders if name not in EXCLUDED_DIRECTORIES
        ]
        relative = os.path.relpath(folder, root)
        for name in filenames:
            if name.endswith(".py"):
                path = name if relative == "." else f"{relative}/{name}"
                paths.append(path.replace(os.sep, "/"))
    return sorted(paths)


def split_files(paths, seed=0, heldout_fraction=0.05):
    """Sorts `paths`, shuffles them with `default_rng(seed)`, splits them.

    Returns `(train_paths, heldout_paths)`: the last
    `max(1, round(heldout_fraction * len(paths)))` shuffled files are held
    out, the rest train.
    """
    paths = sorted(paths)
    order = np.random.default_rng(seed).permutation(len(paths))
    shuffled = [paths[i] for i in order]
    n_heldout = max(1, round(heldout_fraction * len(paths)))
    return shuffled[:-n_heldout], shuffled[-n_heldout:]


def _concatenate(root, paths, max_chars, separator="\n\n"):
    """Files' texts joined by `separator` up to `max_chars` characters.

    Files that are not UTF-8, or hold only whitespace, are skipped. The
    last file used is cut at the budget. Returns the text and the paths
    used.
    """
    pieces, used, length = [], [], 0
    for path in paths:
        if length >= max_chars:
            break
        with open(os.path.join(root, path), "rb") as f:
            data = f.read()
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if not text.strip():
            continue
        if pieces:
            length += len(separator)
        pieces.append(to_vocabulary(text))
        used.append(path)
        length += len(pieces[-1])
    return separator.join(pieces)[:max_chars], tuple(used)


def load_stdlib_corpus(
    max_train_chars=2_000_000,
    max_heldout_chars=100_000,
    seed=0,
    heldout_fraction=0.05,
    root=None,
):
    """The standard library's Python source as a character corpus.

    The `.py` files of `stdlib_files(root)` are split by file with
    `split_files(seed, heldout_fraction)` (95% train, 5% held out), then
    each split's files are read in their shuffled order and joined by a
    blank line ("\\n\\n") until the split holds its budget of characters
    (the last file is cut there). Files that are not UTF-8 are skipped.
    The text keeps only the vocabulary's characters (see `to_vocabulary`).
    The result depends only on `seed` and the standard library's files, so
    it is the same on every run of one Python version.

    Args:
        max_train_chars: the training split's length in characters (less
            only if the training files run out).
        max_heldout_chars: the same for the held-out split.
        seed: shuffles the files before the split.
        heldout_fraction: the share of files held out.
        root: the standard library folder (default: `sysconfig`'s).

    Returns:
        A `CharCorpus` with `vocabulary=VOCABULARY`.
    """
    root = root or sysconfig.get_paths()["stdlib"]
    train_paths, heldout_paths = split_files(
        stdlib_files(root), seed=seed, heldout_fraction=heldout_fraction
    )
    train, train_used = _concatenate(root, train_paths, max_train_chars)
    heldout, heldout_used = _concatenate(root, heldout_paths, max_heldout_chars)
    return CharCorpus(
        train=train,
        heldout=heldout,
        vocabulary=list(VOCABULARY),
        train_files=len(train_used),
        heldout_files=len(heldout_used),
        train_paths=train_used,
        heldout_paths=heldout_used,
    )


def encode(text, vocabulary=VOCABULARY):
    """Token ids of `text`, shape `(len(text),)`, int32.

    Characters outside `vocabulary` get id 1 (`REPLACEMENT`); id 0
    (padding) is never produced.
    """
    index = {char: i for i, char in enumerate(vocabulary) if i > 0}
    return np.fromiter(
        (index.get(char, 1) for char in text), dtype=np.int32, count=len(text)
    )


def decode(ids, vocabulary=VOCABULARY):
    """The text of token ids (any shape, read in order); padding is dropped."""
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= len(vocabulary)):
        raise ValueError(
            "Received an invalid value for argument `ids`, expected ids in "
            f"[0, {len(vocabulary)}). Received: ids with min={ids.min()}, "
            f"max={ids.max()}"
        )
    return "".join(vocabulary[i] for i in ids.tolist() if i != 0)


# Model -------------------------------------------------------------------
class KneserNeyCharModel:
    """A character n-gram model with interpolated Kneser-Ney smoothing.

    For a context `h` of `k` characters (at most `order - 1`, the last ones
    before the character `c`) and its suffix `h'` (`h` without its first
    character):

        p(c | h) = (max(N(h c) - D_k, 0) + D_k * T(h) * p(c | h')) / N(h .)

    where `N(h c)` is a count, `N(h .)` its sum over `c` and `T(h)` the
    number of characters `c` with `N(h c) > 0`. Where `N(h .) = 0` (an
    unseen context), `p(c | h) = p(c | h')`. At the highest order the counts
    are the n-grams' own counts; below it they are continuation counts (the
    number of distinct characters seen before `h c`). The lowest order (the
    empty context) interpolates with the uniform distribution over the
    training text's characters plus one unseen symbol that stands for every
    character not in the training text, so unseen characters get a
    probability too, and for any context the probabilities over
    `vocabulary` plus the unseen symbol sum to 1. The first characters of a
    text have shorter contexts, and so take the lower orders' estimates.

    Discounts: one per order. With `discount=None` each order's is the
    estimate of Chen and Goodman (1998), `D = n1 / (n1 + 2 n2)`, with `n1`
    and `n2` the number of n-grams of that order whose count (the same
    counts as in the formula above) is 1 and 2; where no count is 1 it
    falls back to 0.75. A float sets every order's discount. This is
    interpolated Kneser-Ney with one discount per order, not the
    "modified" variant with three.

    Args:
        order: the n of the n-grams: contexts of up to `order - 1`
            characters.
        discount: None (estimated per order) or a float in (0, 1].

    Example:

    >>> model = KneserNeyCharModel(order=2, discount=0.5).fit("abracadabra")
    >>> round(model.prob("r", "a"), 4)
    0.8542

    Reference:
        Chen and Goodman, 1998, "An Empirical Study of Smoothing Techniques
        for Language Modeling", Harvard TR-10-98.
    """

    def __init__(self, order=5, discount=None):
        if not isinstance(order, int) or isinstance(order, bool) or order < 1:
            raise ValueError(
                "Received an invalid value for argument `order`, expected a "
                f"positive integer. Received: order={order}"
            )
        if discount is not None and not 0 < discount <= 1:
            raise ValueError(
                "Received an invalid value for argument `discount`, expected "
                f"None or a float in (0, 1]. Received: discount={discount}"
            )
        self.order = order
        self.discount = discount
        self.vocabulary = None
        self.discounts = None

    def fit(self, text):
        """Counts the n-grams of `text`. Returns the model."""
        if not text:
            raise ValueError(
                "Received an invalid value for argument `text`, expected a "
                "non-empty string. Received: text=''"
            )
        n = self.order
        # counts[k]: the (k + 1)-grams' counts used at order k + 1.
        # Raw counts at the highest order, in one pass over the text.
        starts = range(len(text) - n + 1)
        top = collections.Counter(
            map(text.__getitem__, map(slice, starts, range(n, len(text) + 1)))
        )
        counts = [None] * n
        counts[n - 1] = top
        # The distinct (k + 1)-grams are the suffixes of the distinct
        # (k + 2)-grams, plus the text's first k + 1 characters; each
        # suffix's continuation count is its number of distinct extensions.
        grams = set(top)
        for k in range(n - 2, -1, -1):
            counts[k] = collections.Counter(gram[1:] for gram in grams)
            grams = set(counts[k])
            if len(text) > k:
                grams.add(text[: k + 1])
        self.discounts = tuple(self._discount(c) for c in counts)
        # contexts[k][h]: (N(h .), D_k * T(h)) for the contexts of order k + 1
        self._counts = counts
        self._contexts = []
        for k, c in enumerate(counts):
            totals = collections.Counter()
            types = collections.Counter()
            for gram, count in c.items():
                totals[gram[:-1]] += count
                types[gram[:-1]] += 1
            d = self.discounts[k]
            self._contexts.append(
                {h: (totals[h], d * types[h]) for h in totals}
            )
        self.vocabulary = sorted(set(text))
        self._uniform = 1.0 / (len(self.vocabulary) + 1)
        return self

    def _discount(self, counts):
        if self.discount is not None:
            return float(self.discount)
        histogram = collections.Counter(v for v in counts.values() if v <= 2)
        n1, n2 = histogram[1], histogram[2]
        return n1 / (n1 + 2 * n2) if n1 else 0.75

    def _prob(self, context, char):
        p = self._uniform
        for k in range(min(len(context) + 1, self.order)):
            h = context[len(context) - k :]
            seen = self._contexts[k].get(h)
            if seen is None:
                continue
            total, weight = seen
            count = self._counts[k].get(h + char)
            if count is None:
                p = weight * p / total
            else:
                p = (count - self.discounts[k] + weight * p) / total
        return p

    def prob(self, context, char):
        """p(char | the last `order - 1` characters of `context`).

        A `char` not in the training text gets the unseen symbol's
        probability.
        """
        if self.vocabulary is None:
            raise RuntimeError("Call `fit()` before `prob()`.")
        return self._prob(
            context[max(0, len(context) - self.order + 1) :], char
        )

    def bits_per_char(self, text):
        """The mean of -log2 p(c | preceding characters) over `text`.

        Each character's context is the up to `order - 1` characters before
        it in `text` (nothing before `text` itself).
        """
        if self.vocabulary is None:
            raise RuntimeError("Call `fit()` before `bits_per_char()`.")
        if not text:
            raise ValueError(
                "Received an invalid value for argument `text`, expected a "
                "non-empty string. Received: text=''"
            )
        span = self.order - 1
        prob = self._prob
        total = 0.0
        log2 = math.log2
        for i, char in enumerate(text):
            total -= log2(prob(text[max(0, i - span) : i], char))
        return total / len(text)
