"""Tests of examples/_char_lm.py: the standard-library corpus, the character
vocabulary, and the Kneser-Ney baseline.

The model's probabilities are checked against values worked out by hand on
"abracadabra" (as fractions, with the formulas written out), for
normalisation over the vocabulary plus the unseen symbol, and for a 5-gram
beating a 1-gram on held-out files. The corpus is checked with small budgets
for a split by file, determinism, budgets and its characters.
"""

import doctest
import math
from fractions import Fraction

import numpy as np
import pytest

from tests.examples._runner import import_example


@pytest.fixture(scope="module")
def char_lm():
    return import_example("_char_lm")


@pytest.fixture(scope="module")
def corpus(char_lm):
    return char_lm.load_stdlib_corpus(
        max_train_chars=60_000, max_heldout_chars=8_000
    )


def test_docstring_examples_run(char_lm):
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    tests = finder.find(char_lm, globs=vars(char_lm).copy())
    for test in tests:
        if test.filename == char_lm.__file__:
            runner.run(test)
    assert runner.summarize(verbose=False).attempted > 0
    assert runner.summarize(verbose=False).failed == 0


# -- the model: exact values ------------------------------------------------
# "abracadabra", counted by hand.
# Bigrams (raw counts, the highest order of a 2-gram model):
#   ab 2, br 2, ra 2, ac 1, ca 1, ad 1, da 1
# Contexts: N(h .) and T(h), the number of distinct followers:
#   a: 4, 3 (b, c, d)   b: 2, 1   r: 2, 1   c: 1, 1   d: 1, 1
# Unigram continuation counts (distinct characters seen before):
#   a 3 (r, c, d), b 1, r 1, c 1, d 1; sum 7, T("") = 5
# Training characters: a, b, c, d, r, plus the unseen symbol: V = 6.
BIGRAMS = {"ab": 2, "br": 2, "ra": 2, "ac": 1, "ca": 1, "ad": 1, "da": 1}
CONTINUATION = {"a": 3, "b": 1, "r": 1, "c": 1, "d": 1}
UNSEEN = "\x00"


def _unigram(char, d1):
    # p(c) = (max(N1+(. c) - D1, 0) + D1 * T("") / V) / N1+(. .)
    count = CONTINUATION.get(char, 0)
    return (max(count - d1, 0) + d1 * 5 * Fraction(1, 6)) / 7


def _bigram(context, char, d1, d2):
    # p(c | h) = (max(N(h c) - D2, 0) + D2 * T(h) * p(c)) / N(h .)
    followers = {g[1]: n for g, n in BIGRAMS.items() if g[0] == context}
    if not followers:
        return _unigram(char, d1)
    total = sum(followers.values())
    count = followers.get(char, 0)
    return (
        max(count - d2, 0) + d2 * len(followers) * _unigram(char, d1)
    ) / total


def test_abracadabra_with_a_fixed_discount(char_lm):
    d = Fraction(1, 2)
    model = char_lm.KneserNeyCharModel(order=2, discount=0.5)
    model.fit("abracadabra")
    assert model.vocabulary == ["a", "b", "c", "d", "r"]
    assert model.discounts == (0.5, 0.5)
    # The formulas above give, by hand:
    assert _unigram("a", d) == Fraction(5, 12)  # (3 - 1/2)/7 + 5/84
    assert _unigram("b", d) == Fraction(11, 84)  # (1/2)/7 + 5/84
    assert _unigram(UNSEEN, d) == Fraction(5, 84)
    assert _bigram("a", "b", d, d) == Fraction(95, 224)  # 3/8 + 3/8 * 11/84
    assert _bigram("a", "a", d, d) == Fraction(5, 32)  # 3/8 * 5/12
    assert _bigram("r", "a", d, d) == Fraction(41, 48)  # 3/4 + 1/4 * 5/12
    assert _bigram("r", "b", d, d) == Fraction(11, 336)  # 1/4 * 11/84
    cases = [
        ("a", "b"),
        ("a", "a"),
        ("a", "c"),
        ("a", UNSEEN),
        ("r", "a"),
        ("r", "b"),
        ("c", "a"),
        ("z", "a"),  # an unseen context: the unigram estimate
        ("", "a"),
        ("", "d"),
        ("", UNSEEN),
        ("xyzzya", "b"),  # only the last character counts
    ]
    for context, char in cases:
        expected = _bigram(context[-1:], char, d, d)
        assert model.prob(context, char) == pytest.approx(float(expected))


def test_abracadabra_with_estimated_discounts(char_lm):
    # D = n1 / (n1 + 2 n2), per order, over that order's counts:
    #   bigrams (raw): n1 = 4 (ac, ca, ad, da), n2 = 3 -> D2 = 4/10
    #   unigrams (continuation): n1 = 4 (b, r, c, d), n2 = 0 -> D1 = 1
    d1, d2 = Fraction(1), Fraction(2, 5)
    model = char_lm.KneserNeyCharModel(order=2).fit("abracadabra")
    assert model.discounts == pytest.approx((1.0, 0.4))
    assert _unigram("a", d1) == Fraction(17, 42)  # 2/7 + 5/42
    assert _bigram("a", "b", d1, d2) == Fraction(61, 140)  # 2/5 + 3/10 * 5/42
    for context, char in [("a", "b"), ("a", "r"), ("b", "r"), ("", "a")]:
        expected = _bigram(context, char, d1, d2)
        assert model.prob(context, char) == pytest.approx(float(expected))
    # bits per character: the first character has the empty context.
    expected = -sum(
        math.log2(_bigram(context, char, d1, d2))
        for context, char in [("", "a"), ("a", "b"), ("b", "r"), ("r", "a")]
    )
    assert model.bits_per_char("abra") == pytest.approx(expected / 4)


# -- the model: normalisation and quality -------------------------------------
@pytest.mark.parametrize("order", [1, 2, 5], ids=lambda o: f"order{o}")
@pytest.mark.parametrize("discount", [None, 0.3], ids=["estimated", "d0.3"])
def test_probabilities_sum_to_one(char_lm, corpus, order, discount):
    text = corpus.train[:20_000]
    model = char_lm.KneserNeyCharModel(order, discount).fit(text)
    assert UNSEEN not in model.vocabulary
    contexts = [
        text[1000:1004],  # seen
        text[5000:5002],  # seen, shorter than order - 1
        "\x00\x01\x02\x03",  # unseen
        "zq" + text[3000:3002],  # unseen, with a seen suffix
        "",
    ]
    for context in contexts:
        total = sum(model.prob(context, c) for c in model.vocabulary)
        total += model.prob(context, UNSEEN)
        assert total == pytest.approx(1.0, abs=1e-9), context
        assert model.prob(context, UNSEEN) > 0


def test_bits_per_char_is_the_mean_of_the_probs(char_lm, corpus):
    model = char_lm.KneserNeyCharModel(order=4).fit(corpus.train[:20_000])
    text = corpus.heldout[:300]
    expected = -np.mean(
        [math.log2(model.prob(text[:i], c)) for i, c in enumerate(text)]
    )
    assert model.bits_per_char(text) == pytest.approx(expected)


def test_a_5_gram_beats_a_1_gram_on_heldout_files(char_lm, corpus):
    bits = {
        order: char_lm.KneserNeyCharModel(order)
        .fit(corpus.train)
        .bits_per_char(corpus.heldout)
        for order in (1, 3, 5)
    }
    assert bits[5] < bits[3] < bits[1]
    assert bits[5] < bits[1] - 1.0, bits


def test_bad_arguments(char_lm):
    with pytest.raises(ValueError, match="argument `order`"):
        char_lm.KneserNeyCharModel(order=0)
    for discount in (0, 1.5):
        with pytest.raises(ValueError, match="argument `discount`"):
            char_lm.KneserNeyCharModel(discount=discount)
    with pytest.raises(ValueError, match="argument `text`"):
        char_lm.KneserNeyCharModel().fit("")
    with pytest.raises(RuntimeError, match="fit"):
        char_lm.KneserNeyCharModel().prob("a", "b")


# -- the corpus ----------------------------------------------------------------
def test_the_split_is_by_file(char_lm, corpus):
    paths = char_lm.stdlib_files()
    train, heldout = char_lm.split_files(paths, seed=0)
    assert sorted(train + heldout) == paths
    assert not set(train) & set(heldout)
    assert len(heldout) == round(0.05 * len(paths))
    assert set(corpus.train_paths) <= set(train)
    assert set(corpus.heldout_paths) <= set(heldout)
    assert corpus.train_files == len(corpus.train_paths) > 0
    assert corpus.heldout_files == len(corpus.heldout_paths) > 0
    excluded = char_lm.EXCLUDED_DIRECTORIES
    for path in paths:
        assert path.endswith(".py")
        assert not set(path.split("/")[:-1]) & excluded, path


def test_the_text_is_the_files_in_shuffled_order(char_lm, corpus):
    import sysconfig

    root = sysconfig.get_paths()["stdlib"]
    train, _ = char_lm.split_files(char_lm.stdlib_files(), seed=0)
    # The files used are the first readable, non-empty ones of the split.
    assert corpus.train_paths == tuple(train[: corpus.train_files])
    with open(f"{root}/{corpus.train_paths[0]}", encoding="utf-8") as f:
        first = char_lm.to_vocabulary(f.read())
    assert corpus.train.startswith(first[:1000])


def test_the_corpus_is_deterministic(char_lm, corpus):
    again = char_lm.load_stdlib_corpus(
        max_train_chars=60_000, max_heldout_chars=8_000, seed=0
    )
    assert again == corpus
    other = char_lm.load_stdlib_corpus(
        max_train_chars=60_000, max_heldout_chars=8_000, seed=1
    )
    assert other.train != corpus.train
    assert other.train_paths != corpus.train_paths


def test_budgets_and_characters(char_lm, corpus):
    assert len(corpus.train) == 60_000
    assert len(corpus.heldout) == 8_000
    allowed = set(corpus.vocabulary[1:])
    assert set(corpus.train) <= allowed
    assert set(corpus.heldout) <= allowed
    assert "\r" not in corpus.train
    tiny = char_lm.load_stdlib_corpus(max_train_chars=10, max_heldout_chars=5)
    assert (len(tiny.train), len(tiny.heldout)) == (10, 5)
    assert tiny.train_files == tiny.heldout_files == 1


def test_vocabulary_ids(char_lm):
    vocabulary = char_lm.VOCABULARY
    assert len(vocabulary) == 99
    assert vocabulary[0] == char_lm.PADDING == ""
    assert vocabulary[1] == char_lm.REPLACEMENT
    assert vocabulary[2] == " " and vocabulary[96] == "~"
    assert vocabulary[97:] == ["\n", "\t"]
    assert len(set(vocabulary)) == len(vocabulary)
    text = "caf\u00e9\r\n\x0cok"
    assert char_lm.to_vocabulary(text) == "caf\ufffd\n\ufffdok"


def test_encode_decode_round_trip(char_lm, corpus):
    vocabulary = corpus.vocabulary
    text = corpus.heldout[:2000] + "".join(vocabulary)
    ids = char_lm.encode(text, vocabulary)
    assert ids.dtype == np.int32 and ids.shape == (len(text),)
    assert ids.min() >= 1
    assert char_lm.decode(ids, vocabulary) == text
    # Characters outside the vocabulary encode as 1; padding decodes to "".
    assert char_lm.encode("a\u00e9", vocabulary).tolist() == [67, 1]
    padded = np.array([[67, 68, 0, 0], [69, 0, 0, 0]])
    assert char_lm.decode(padded, vocabulary) == "abc"
    with pytest.raises(ValueError, match="argument `ids`"):
        char_lm.decode([99], vocabulary)
