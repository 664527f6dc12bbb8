"""Tests of examples/date_translation.py.

The CLI runs as a subprocess (under the test session's Keras backend) for a
few steps on a tiny slice of the generated data, with each `--model`; under
TensorFlow its export must reload and answer as the Keras model does; under
JAX the string model it saves, exported by the CLI under TensorFlow, must
answer as the JAX model does. The
Transformer's cached greedy decoding must give what recomputing the whole
prefix at every step gives. The generator is checked for determinism, for
held-out days and formats that training never sees, and against
`datetime.strptime` reading the same inputs independently.
"""

import datetime
import json
import os
import re

import keras
import numpy as np
import pytest

from tests.examples import _runner
from tests.examples._runner import BACKEND
from tests.examples._runner import import_example
from tests.examples._runner import read_json
from tests.serving import helpers


@pytest.fixture(scope="module")
def example():
    """The example as a module (for its data functions)."""
    return import_example("date_translation")


def run_example(tmp_path, *flags, timeout=300):
    return _runner.run_example(
        "date_translation", tmp_path, *flags, timeout=timeout
    )


# -- the CLI -----------------------------------------------------------------
SMOKE_FLAGS = (
    "--train-samples=512",
    "--test-samples=32",
    "--epochs=3",
    "--max-steps=4",
    "--batch-size=32",
)


def test_smoke_trains_evaluates_and_exports(tmp_path):
    output = run_example(tmp_path, *SMOKE_FLAGS)
    check_smoke_run(tmp_path, output, "bahdanau", "date_translation")


def test_smoke_transformer(tmp_path):
    output = run_example(tmp_path, "--model=transformer", *SMOKE_FLAGS)
    check_smoke_run(
        tmp_path, output, "transformer", "date_translation_transformer"
    )


def check_smoke_run(tmp_path, output, model, name):
    """The run's files, and under TensorFlow its export at `name`/1."""
    history = read_json(tmp_path, "history.json")
    assert len(history["loss"]) == 3
    assert history["loss"][-1] < history["loss"][0], history["loss"]
    results = read_json(tmp_path, "results.json")
    assert results["backend"] == BACKEND
    assert results["model"] == model
    assert set(results["exact_match"]) == {
        "overall",
        "held_out_dates",
        "held_out_formats",
    }
    # The printed line agrees with the history.
    printed = re.search(r"loss by epoch: (\[.*\])", output)
    np.testing.assert_allclose(
        json.loads(printed.group(1)), history["loss"], atol=1e-4
    )
    assert (tmp_path / "run" / "alignments.png").stat().st_size > 10_000

    base = tmp_path / "saved_models" / name
    if BACKEND != "tensorflow":
        check_jax_round_trip(tmp_path, output, name, results)
        return
    import tensorflow as tf

    path = base / "1"
    assert results["export"] == os.path.abspath(path)
    assert "CHECK PASSED" in output
    loaded = tf.saved_model.load(str(path))
    assert set(loaded.signatures) == {"serving_default", "translate_ids"}
    serve = loaded.signatures["serving_default"]
    spec = serve.structured_input_signature[1]["text"]
    assert spec.dtype == tf.string and spec.shape.as_list() == [None]
    texts = results["check_texts"]
    served = serve(text=tf.constant(texts))
    assert list(served) == ["iso_date"]
    served = [s.decode() for s in served["iso_date"].numpy()]
    # The export's in-graph lower-casing, lookup, greedy loop and join give
    # the Keras model's greedy decoding of the NumPy-encoded inputs.
    assert served == results["check_iso"]
    one = serve(text=tf.constant(texts[:1]))["iso_date"].numpy()
    assert [s.decode() for s in one] == results["check_iso"][:1]


def check_jax_round_trip(tmp_path, output, name, results):
    """Trained under JAX: the example saved the string model, exported it
    through TensorFlow, and checked the served answers."""
    assert (tmp_path / "run" / f"{name}.keras").exists()
    assert (tmp_path / "saved_models" / name / "1" / "saved_model.pb").exists()
    assert "endpoint translate_ids (token ids in): TensorFlow-only" in output
    assert re.search(r"greedy decoding of \d+ of 32 inputs .*: match", output)


@pytest.mark.skipif(BACKEND != "jax", reason="a JAX model")
def test_jax_string_model_exported_by_the_cli_answers_as_jax(example, tmp_path):
    """An untrained model (its answers vary, unlike a few steps' worth of
    training): its string model, saved under JAX and exported by the CLI
    under TensorFlow, serves the JAX model's greedy decodings exactly, on
    the inputs whose greedy margins exceed 1e-3."""
    keras.utils.set_random_seed(1)
    training, inference = example.build_models(16)
    # Larger logits: larger gaps between an untrained model's choices.
    logits = training.get_layer("decoder").logits
    kernel, bias = logits.get_weights()
    logits.set_weights([30 * kernel, bias])
    texts = np.array(
        example.DEMO + ["1/2/03", "2026.11.21", "5 March 1987", "31-12-99"],
        dtype=object,
    )
    iso, _ = example.translate(inference, texts)
    keep = example.greedy_margins(training, texts, iso) > 1e-3
    assert keep.sum() >= 6 and len(set(iso[keep])) >= 3, iso
    example.string_model(inference).save(tmp_path / "model.keras")
    path = helpers.export_with_cli(
        tmp_path / "model.keras",
        tmp_path / "cli",
        "examples.date_translation",
    )
    helpers.check_expect(
        path,
        tmp_path,
        {"text": texts[keep]},
        {"iso_date": np.array([s.encode() for s in iso[keep]], dtype="S")},
    )


# -- the Transformer's decoding ----------------------------------------------
def test_transformer_cached_decoding_equals_recomputing_the_prefix(example):
    keras.utils.set_random_seed(3)
    _, inference, encoder, decoder = example.build_transformer_models(
        dim=32, num_heads=4, num_layers=2, dropout=0.1
    )
    texts = example.DEMO + ["21-11-2026", "1/2/03", ""]  # "": all padding
    source = example.encode_inputs(texts)
    outputs = inference.predict(source, verbose=0)
    cached = outputs["target_ids"]
    assert cached.shape == (len(texts), example.TARGET_LENGTH)

    # The reference: at step i, the start token and the i ids so far go
    # through the blocks again, without caches.
    encoded = encoder(source)
    ids = np.zeros_like(cached)
    for i in range(example.TARGET_LENGTH):
        logits = decoder.uncached_step_logits(encoded, source, ids, i)
        ids[:, i] = np.argmax(keras.ops.convert_to_numpy(logits), axis=-1)
    np.testing.assert_array_equal(cached, ids)
    # Untrained, but the ids vary within and across rows.
    assert len(np.unique(cached)) > 1 and len(np.unique(cached, axis=0)) > 1

    # Alignments: the last block's cross-attention weights, a distribution
    # over each input's characters (none on padding; zero rows for "").
    alignments = outputs["alignments"]
    assert alignments.shape == (len(texts), 10, example.MAX_INPUT_LENGTH)
    real = source != 0
    expected = np.broadcast_to(real.any(-1)[:, None], alignments.shape[:2])
    np.testing.assert_allclose(alignments.sum(-1), expected, atol=1e-5)
    assert not (alignments * ~real[:, None, :]).any()


def test_greedy_margins_come_from_the_greedy_loops_logits(example):
    """A teacher-forced pass over the greedy output gives the greedy loop's
    logits: their argmax is the greedy output, and `greedy_margins` is the
    smallest gap between the two largest of them."""
    keras.utils.set_random_seed(5)
    training, inference = example.build_models(16)
    texts = np.array(example.DEMO + ["1/2/03", "2026.11.21"], dtype=object)
    iso, _ = example.translate(inference, texts)
    source = example.encode_inputs(texts)
    decoder_inputs = example.teacher_forcing(example.encode_targets(iso))
    logits = training.predict([source, decoder_inputs], verbose=0)
    predicted = example.decode_targets(np.argmax(logits, axis=-1))
    np.testing.assert_array_equal(predicted, iso)
    top = np.sort(logits, axis=-1)
    np.testing.assert_allclose(
        example.greedy_margins(training, texts, iso),
        (top[..., -1] - top[..., -2]).min(axis=-1),
    )


def test_help(example, capsys):
    with pytest.raises(SystemExit) as exit_info:
        example.main(["--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for flag in (
        "--train-samples",
        "--test-samples",
        "--max-steps",
        "--export",
        "--model",
    ):
        assert flag in text


# -- the generated data -------------------------------------------------------
def test_generator_is_deterministic(example):
    first = example.make_dataset(300, 100, seed=5)
    second = example.make_dataset(300, 100, seed=5)
    other = example.make_dataset(300, 100, seed=6)
    for split in first:
        for key in ("text", "iso", "day", "format"):
            np.testing.assert_array_equal(first[split][key], second[split][key])
    assert list(first["train"]["text"]) != list(other["train"]["text"])


@pytest.fixture(scope="module")
def generated(example):
    return example.make_dataset(5000, 1000, seed=0)


def test_held_out_days_and_formats_are_unseen(example, generated):
    train_days, test_days = example.split_days(0)
    assert not set(train_days) & set(test_days)
    first, last = example.FIRST_DAY, example.LAST_DAY
    every_day = range(first.toordinal(), last.toordinal() + 1)
    assert sorted(set(train_days) | set(test_days)) == list(every_day)
    assert len(test_days) == round(0.1 * len(every_day))
    assert not set(example.TRAIN_FORMATS) & set(example.HELD_OUT_FORMATS)

    train = generated["train"]
    assert set(train["day"]) <= set(train_days)
    assert set(train["format"]) == set(example.TRAIN_FORMATS)
    for split in ("held_out_dates", "held_out_formats"):
        assert not set(generated[split]["day"]) & set(train["day"])
        assert set(generated[split]["day"]) <= set(test_days)
        assert not set(generated[split]["text"]) & set(train["text"])
    assert set(generated["held_out_dates"]["format"]) <= set(
        example.TRAIN_FORMATS
    )
    assert set(generated["held_out_formats"]["format"]) == set(
        example.HELD_OUT_FORMATS
    )


def test_targets_are_iso_dates_of_the_days(generated):
    for split in generated.values():
        for iso, day in zip(split["iso"], split["day"]):
            date = datetime.date.fromisoformat(iso)
            assert date.isoformat() == iso and len(iso) == 10
            assert date.toordinal() == day


# The same inputs read by `datetime.strptime` (case-insensitive, and it takes
# unpadded numbers for %d and %m; %y reads 69-99 as 19xx, 00-68 as 20xx).
STRPTIME = {
    "{dd}/{mm}/{yyyy}": "%d/%m/%Y",
    "{d}/{m}/{yy}": "%d/%m/%y",
    "{d}.{m}.{yyyy}": "%d.%m.%Y",
    "{yyyy}.{mm}.{dd}": "%Y.%m.%d",
    "{yyyy}{mm}{dd}": "%Y%m%d",
    "{dd}-{mon}-{yy}": "%d-%b-%y",
    "{month} {d}, {yyyy}": "%B %d, %Y",
    "{wd} {d} {mon} {yyyy}": "%a %d %b %Y",
    "{weekday}, {month} {d}, {yyyy}": "%A, %B %d, %Y",
    "{do} of {month} {yyyy}": "%d of %B %Y",
    "the {do} of {month}, {yyyy}": "the %d of %B, %Y",
    # held out
    "{wd} {dd}/{mm}/{yy}": "%a %d/%m/%y",
    "{d}-{m}-{yyyy}": "%d-%m-%Y",
    "{weekday}, {d} {mon} {yyyy}": "%A, %d %b %Y",
    "{mon} {do}, {yyyy}": "%b %d, %Y",
}


def test_inputs_read_by_strptime_give_the_targets(example):
    # One test for all formats: each test pays the Keras teardown.
    days, _ = example.split_days(0)
    rng = np.random.default_rng(1)
    for template, strptime_format in STRPTIME.items():
        pairs = example.make_pairs(days, [template], 200, rng)
        for text, iso in zip(pairs["text"], pairs["iso"]):
            # strptime has no ordinals: drop the suffix of "21st", "2nd", ...
            plain = re.sub(r"\b(\d+)(st|nd|rd|th)\b", r"\1", text, flags=re.I)
            parsed = datetime.datetime.strptime(plain, strptime_format)
            assert parsed.date().isoformat() == iso, (template, text)
            # strptime ignores the weekday: it must be the date's.
            if template.startswith(("{wd}", "{weekday}")):
                weekday = re.match(r"[a-z]+", text, flags=re.I).group()
                assert (
                    parsed.strftime("%A").lower().startswith(weekday.lower())
                ), (template, text)


def test_ordinals(example):
    days = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th"}
    days.update({13: "13th", 21: "21st", 22: "22nd", 23: "23rd", 31: "31st"})
    for day, text in days.items():
        assert example.ordinal(day) == text


def test_issue_examples_render(example):
    date = datetime.date(2026, 11, 21)
    assert example.render(date, "{wd} {d} {mon} {yyyy}") == "sat 21 nov 2026"
    assert example.render(date, "{dd}/{mm}/{yy}") == "21/11/26"
    assert (
        example.render(date, "{month} {d}, {yyyy}", "title")
        == "November 21, 2026"
    )
    assert example.render(date, "{yyyy}.{mm}.{dd}") == "2026.11.21"
    assert (
        example.render(date, "{do} of {month} {yyyy}", "title")
        == "21st of November 2026"
    )
    assert example.render(date, "{d} {mon} {yyyy}", "upper") == "21 NOV 2026"


def test_encoding(example):
    texts = ["Sat 21 Nov 2026", "21/11/26", "é" + "1" * 40]
    ids = example.encode_inputs(texts)
    assert ids.shape == (3, example.MAX_INPUT_LENGTH) and ids.dtype == "int32"
    # Lower-cased; padding 0, unknown 1, then INPUT_CHARS from 2.
    chars = example.INPUT_CHARS
    assert list(ids[1, :8]) == [chars.index(c) + 2 for c in "21/11/26"]
    assert not ids[1, 8:].any()
    np.testing.assert_array_equal(
        ids[0], example.encode_inputs(["sat 21 nov 2026"])[0]
    )
    assert ids[2, 0] == 1 and ids[2, -1] == chars.index("1") + 2
    isos = np.array(["2026-11-21", "1969-01-01"], dtype=object)
    targets = example.encode_targets(isos)
    assert targets.min() >= 1  # 0 is the decoder's start token
    np.testing.assert_array_equal(example.decode_targets(targets), isos)
    np.testing.assert_array_equal(
        example.teacher_forcing(targets)[:, 1:], targets[:, :-1]
    )
    assert not example.teacher_forcing(targets)[:, 0].any()


def test_encoding_matches_text_vectorization(example):
    """The NumPy encoder is the twin of the export's in-graph one."""
    layer = keras.layers.TextVectorization(
        standardize="lower",
        split="character",
        vocabulary=list(example.INPUT_CHARS),
        output_sequence_length=example.MAX_INPUT_LENGTH,
    )
    texts = ["Sat 21 Nov 2026", "The 3rd of MAY, 1999", "21/11/26", "x" * 40]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(texts)), example.encode_inputs(texts)
    )
