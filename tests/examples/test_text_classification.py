"""Tests of examples/text_classification.py.

The CLI runs as a subprocess (under the test session's Keras backend) for a
few steps on a tiny slice of the generated data; under JAX and PyTorch the
string model it saves, exported by the CLI under TensorFlow, must serve that
backend's probabilities. The generator is checked against the labelling
rules; the IMDB loader, which needs the internet, runs
on a fake dataset in `keras.datasets.imdb`'s format.
"""

import collections
import json
import os
import sys

import keras
import numpy as np
import pytest

from tests import testing
from tests.examples import _runner
from tests.examples._runner import BACKEND
from tests.examples._runner import import_example
from tests.examples._runner import read_json
from tests.serving import helpers


@pytest.fixture(scope="module")
def example():
    """The example as a module (for its data functions)."""
    return import_example("text_classification")


def run_example(tmp_path, *flags, timeout=300):
    return _runner.run_example(
        "text_classification", tmp_path, *flags, timeout=timeout
    )


# -- the CLI -----------------------------------------------------------------
def test_smoke_trains_evaluates_and_exports(tmp_path):
    output = run_example(
        tmp_path,
        "--train-samples=256",
        "--test-samples=64",
        "--epochs=3",
        "--max-steps=4",
    )
    history = read_json(tmp_path, "history.json")
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    results = read_json(tmp_path, "results.json")
    assert results["backend"] == BACKEND
    assert set(results["test_accuracy"]) == {
        "attention",
        "bag_of_words",
        "bag_of_words_and_bigrams",
    }
    assert results["contrast_twins"]["bag_of_words"] == 0.5
    assert (tmp_path / "run" / "attention.png").stat().st_size > 10_000

    base = tmp_path / "saved_models" / "text_classification"
    if BACKEND != "tensorflow":
        # Trained on token ids under JAX or PyTorch; the string model (same
        # layers, TextVectorization inside) is saved, and the CLI exports it
        # under TensorFlow: it serves this backend's probabilities.
        assert (base / "1" / "saved_model.pb").exists()
        assert "on 32 texts: match" in output
        if _runner.ON_TORCH_LEG:
            return  # the CLI export below: see _runner.ON_TORCH_LEG
        path = helpers.export_with_cli(
            tmp_path / "run" / "text_classification.keras",
            tmp_path / "cli" / "text_classification",
        )
        helpers.check_expect(
            path,
            tmp_path,
            {"text": np.array(results["check_texts"], dtype=object)},
            {"probabilities": np.array(results["check_probabilities"])},
        )
        return
    import tensorflow as tf

    path = base / "1"
    assert results["export"] == str(path.resolve())
    assert "CHECK PASSED" in output
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    spec = serve.structured_input_signature[1]["text"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    texts = results["check_texts"]
    served = serve(text=tf.constant(texts))
    assert list(served) == ["probabilities"]
    np.testing.assert_allclose(
        served["probabilities"].numpy(),
        np.array(results["check_probabilities"]),
        rtol=0,
        atol=1e-5,
    )
    # A single text, and a batch of one, work too.
    one = serve(text=tf.constant(texts[:1]))["probabilities"].numpy()
    np.testing.assert_allclose(
        one, np.array(results["check_probabilities"][:1]), atol=1e-5
    )


def test_help(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in ("--dataset", "--max-steps", "--jit-compile", "--export"):
        assert flag in text


# -- the generated data -------------------------------------------------------
def test_generator_is_deterministic(example):
    first = example.make_dataset(300, 100, seed=5)
    second = example.make_dataset(300, 100, seed=5)
    other = example.make_dataset(300, 100, seed=6)
    for split in ("train", "validation", "test"):
        for key in ("text", "label", "kind"):
            np.testing.assert_array_equal(first[split][key], second[split][key])
    assert list(first["train"]["text"]) != list(other["train"]["text"])


@pytest.fixture(scope="module")
def generated(example):
    return example.make_dataset(2000, 500, seed=0)


def test_generated_labels_follow_the_rules(example, generated):
    for split in generated.values():
        rules = [example.sentiment(text) for text in split["text"]]
        np.testing.assert_array_equal(rules, split["label"])
    kinds = collections.Counter(generated["train"]["kind"])
    assert set(kinds) == set(example.KINDS)
    # Balanced enough, and every construction shows up in both labels.
    assert 0.4 < generated["train"]["label"].mean() < 0.6
    for kind in example.KINDS:
        rows = generated["train"]["kind"] == kind
        assert set(generated["train"]["label"][rows]) == {0, 1}, kind


def test_held_out_sentences_are_new(generated):
    seen = set(generated["train"]["text"])
    for split in ("validation", "test"):
        assert not seen & set(generated[split]["text"])


# (One test over a table: each test case pays the session's Keras teardown.)
HAND_WRITTEN = [
    ("the food was bad", 0),
    ("the food was not bad", 1),
    ("the food was not good", 0),
    ("the plot wasn't really boring", 1),
    ("the staff is very friendly", 1),
    ("i did not like the movie", 0),
    ("i didn't hate the ending", 1),
    ("i never enjoyed the music", 0),
    ("terrible food", 0),
    ("good service but terrible food", 0),
    ("terrible food but good service", 1),
    ("the service was good but the food was terrible", 0),
    ("the food was not good but the service was not bad", 1),
    ("although the plot was boring, i loved the acting", 1),
    ("i loved the acting although the plot was boring", 1),
    ("although i loved the acting, the plot was boring", 0),
    ("the room was nice and the view was lovely", 1),
    ("the coffee was not tasty and the price was awful", 0),
]


def test_rules_on_hand_written_sentences(example):
    got = {text: example.sentiment(text) for text, _ in HAND_WRITTEN}
    assert got == dict(HAND_WRITTEN)


def test_rules_refuse_sentences_they_cannot_label(example):
    with pytest.raises(ValueError, match="opposite"):
        example.sentiment("the food was good and the service was bad")
    with pytest.raises(ValueError, match="sentiment word"):
        example.sentiment("the food was fine")


def test_bag_of_words_cannot_tell_contrast_twins_apart(example, generated):
    # Hand-written: the same words, opposite labels.
    a = "the service was good but the food was terrible"
    b = "the food was terrible but the service was good"
    assert example.swap_clauses(a) == b
    assert sorted(example.words(a)) == sorted(example.words(b))
    assert example.sentiment(a) != example.sentiment(b)
    assert example.swap_clauses("the food was not bad") is None

    twins = example.contrast_twins(generated["test"])
    assert len(twins["text"]) > 200
    pairs = zip(twins["text"][::2], twins["text"][1::2])
    for (x, y), (label_x, label_y) in zip(
        pairs, zip(twins["label"][::2], twins["label"][1::2])
    ):
        assert collections.Counter(example.words(x)) == collections.Counter(
            example.words(y)
        )
        assert label_x != label_y
        assert example.sentiment(y) == label_y
    # So any bag-of-words model gets exactly half of them right.
    accuracy, _ = example.bag_of_words_baseline(generated["train"], twins)
    assert accuracy == 0.5
    accuracy, _ = example.bag_of_words_baseline(
        generated["train"], generated["test"]
    )
    assert accuracy < 0.7


# -- IMDB, on a fake dataset in keras.datasets.imdb's format -----------------
# Ranks as in imdb_word_index.json: 1 is the most frequent word.
FAKE_WORD_INDEX = {
    "the": 1,
    "movie": 2,
    "was": 3,
    "not": 4,
    "bad": 5,
    "great": 6,
    "plot": 7,
    "boring": 8,
}
FAKE_REVIEWS = [
    ("the movie was great", 1),
    ("the plot was boring", 0),
    ("the movie was not bad", 1),
    ("not great", 0),
    ("the plot was great the movie was not boring", 1),
]


def fake_imdb(reviews=FAKE_REVIEWS, test_reviews=FAKE_REVIEWS[:2], calls=None):
    """`load_data` and `get_word_index` fakes, in the real format."""

    def encode(text, oov_at=None):
        # What load_data gives: start char 1, ranks shifted by 3, and an
        # out-of-vocabulary 2 where a word was beyond `num_words`.
        ids = [1] + [FAKE_WORD_INDEX[w] + 3 for w in text.split()]
        if oov_at is not None:
            ids.insert(oov_at, 2)
        return ids

    def load_data(**kwargs):
        if calls is not None:
            calls.append(kwargs)
        assert kwargs["start_char"] == 1
        assert kwargs["oov_char"] == 2
        assert kwargs["index_from"] == 3
        x_train = np.empty(len(reviews), dtype=object)
        x_train[:] = [
            encode(t, oov_at=2 if i == 0 else None)
            for i, (t, _) in enumerate(reviews)
        ]
        x_test = np.empty(len(test_reviews), dtype=object)
        x_test[:] = [encode(t) for t, _ in test_reviews]
        y_train = np.array([y for _, y in reviews], dtype="int64")
        y_test = np.array([y for _, y in test_reviews], dtype="int64")
        return (x_train, y_train), (x_test, y_test)

    def get_word_index():
        return dict(FAKE_WORD_INDEX)

    return load_data, get_word_index


def test_load_imdb_decodes_word_indices_to_text(example):
    calls = []
    load_data, get_word_index = fake_imdb(calls=calls)
    data = example.load_imdb(load_data, get_word_index, validation_fraction=0.2)
    assert calls and calls[0]["num_words"] is None
    texts = [t for t, _ in FAKE_REVIEWS]
    labels = [y for _, y in FAKE_REVIEWS]
    # The start (1) and out-of-vocabulary (2) ids are dropped.
    assert list(data["train"]["text"]) == texts[:4]
    assert list(data["validation"]["text"]) == texts[4:]
    assert list(data["test"]["text"]) == texts[:2]
    assert list(data["train"]["label"]) == labels[:4]
    assert list(data["validation"]["label"]) == labels[4:]
    assert list(data["test"]["label"]) == labels[:2]
    for split in data.values():
        assert split["text"].dtype == object
        assert split["label"].dtype == np.int32
        assert len(split["kind"]) == len(split["text"])


def test_load_data_uses_keras_datasets_imdb(example, monkeypatch):
    load_data, get_word_index = fake_imdb(reviews=FAKE_REVIEWS * 4)
    monkeypatch.setattr(keras.datasets.imdb, "load_data", load_data)
    monkeypatch.setattr(keras.datasets.imdb, "get_word_index", get_word_index)
    args = example._common.parse_args(
        example.__doc__,
        "text_classification",
        argv=["--dataset=imdb", "--train-samples=7", "--test-samples=1"],
        add_arguments=example.add_arguments,
        epochs=None,
    )
    args = example.resolve_defaults(args)
    assert (args.max_length, args.vocabulary_size, args.epochs) == (
        200,
        20000,
        3,
    )
    data = example.load_data(args)
    assert len(data["train"]["text"]) == 7
    assert len(data["validation"]["text"]) == 2  # 10% of 20
    assert list(data["test"]["text"]) == [FAKE_REVIEWS[0][0]]
    # The model's TextVectorization sees the decoded words.
    vectorizer = example.make_vectorizer(data["train"]["text"], 50, 12)
    vocabulary = set(vectorizer.get_vocabulary())
    assert set(FAKE_WORD_INDEX) <= vocabulary


# -- multi-worker training (tf.distribute) ----------------------------------
MULTIWORKER_FLAGS = (
    "--train-samples=256",
    "--test-samples=32",
    "--epochs=1",
    "--max-steps=3",
    "--batch-size=16",
    "--dropout=0",
    "--no-shuffle",
)


@pytest.mark.skipif(BACKEND != "tensorflow", reason="tf.distribute")
def test_two_workers_train_like_one_process_and_only_the_chief_exports(
    tmp_path,
):
    """2 workers on localhost (`--distribute multiworker`, TF_CONFIG), each
    fed its share of every global batch of 16, end with the weights of one
    process trained on the same global batches; the chief exports."""
    workers = [f"localhost:{port}" for port in testing.free_ports(2)]
    saved_models = tmp_path / "saved_models"
    commands, envs = [], []
    for index in range(2):
        config = {
            "cluster": {"worker": workers},
            "task": {"type": "worker", "index": index},
        }
        envs.append(
            dict(
                os.environ,
                KERAS_BACKEND="tensorflow",
                TF_CONFIG=json.dumps(config),
                TF_CPP_MIN_LOG_LEVEL="2",
            )
        )
        commands.append(
            [
                sys.executable,
                os.path.join(_runner.EXAMPLES, "text_classification.py"),
                f"--output-dir={tmp_path / f'worker{index}'}",
                f"--saved-models-dir={saved_models}",
                f"--save-weights={tmp_path / f'worker{index}.npz'}",
                "--distribute=multiworker",
                *MULTIWORKER_FLAGS,
            ]
        )
    codes, logs = testing.run_together(
        commands, envs, cwd=_runner.ROOT, timeout=300
    )
    for code, log in zip(codes, logs):
        assert code == 0, log[-4000:]
    assert "distribute multiworker (2 replica(s))" in logs[0]
    assert "CHECK PASSED" in logs[0]
    assert "written by the chief" in logs[1]
    # One export, the chief's; nothing else under saved_models/.
    written = sorted(
        os.path.relpath(os.path.join(root, name), saved_models)
        for root, dirs, names in os.walk(saved_models)
        for name in dirs + names
    )
    assert [w for w in written if os.sep not in w] == ["text_classification"]
    assert os.listdir(saved_models / "text_classification") == ["1"]

    run_example(
        tmp_path,
        f"--save-weights={tmp_path / 'single.npz'}",
        "--no-export",
        *MULTIWORKER_FLAGS,
    )
    single = np.load(tmp_path / "single.npz")
    assert len(single.files) > 10
    for index in range(2):
        worker = np.load(tmp_path / f"worker{index}.npz")
        assert worker.files == single.files
        for name in single.files:
            np.testing.assert_allclose(
                worker[name], single[name], rtol=0, atol=1e-5, err_msg=name
            )


MULTIWORKER_REFUSALS = {
    # JAX distributes through keras.distribution instead.
    "jax": "keras.distribution.initialize()",
    "torch": "no distribution strategy for the 'torch' backend",
}


@pytest.mark.skipif(BACKEND == "tensorflow", reason="the others' side")
def test_multiworker_outside_tensorflow_is_refused(example, tmp_path):
    argv = [f"--output-dir={tmp_path / 'run'}", "--distribute=multiworker"]
    with pytest.raises(SystemExit) as exit_info:
        example.main(argv)
    assert MULTIWORKER_REFUSALS[BACKEND] in str(exit_info.value)
    assert not (tmp_path / "run").exists()
