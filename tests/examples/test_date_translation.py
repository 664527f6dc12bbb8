"""Tests of examples/date_translation.py, date_translation_transformer.py
and their shared _dates.py.

Each script runs as a subprocess (under the test session's Keras backend)
for a few steps on a tiny slice of the generated data; under TensorFlow its
export must reload and answer as the Keras model does; under JAX and PyTorch
the string model it saves, exported by the CLI under TensorFlow, must answer
as that backend's model does. `date_translation.py --model transformer`
hands over to the Transformer's script. The Transformer's cached greedy
decoding must give what the training model, run on the whole prefix at every
step, gives. The generator is checked for determinism, for held-out days and
formats that training never sees, and against `datetime.strptime` reading
the same inputs independently.
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
    """The Bahdanau example as a module (for its models)."""
    return import_example("date_translation")


@pytest.fixture(scope="module")
def transformer():
    """The Transformer example as a module (for its models)."""
    return import_example("date_translation_transformer")


@pytest.fixture(scope="module")
def dates():
    """What both examples share: data, encoding, evaluation, export."""
    return import_example("_dates")


# -- the CLI -----------------------------------------------------------------
SMOKE_FLAGS = (
    "--train-samples=512",
    "--test-samples=32",
    "--epochs=3",
    "--max-steps=4",
    "--batch-size=32",
)


def test_smoke_trains_evaluates_and_exports(tmp_path):
    # On the torch leg (see _runner) without its export: the Transformer's
    # run takes the same export code (_dates.export), and the CLI test below
    # exports this model's string model from torch.
    no_export = ("--no-export",) if _runner.ON_TORCH_LEG else ()
    output = _runner.run_example(
        "date_translation", tmp_path, *SMOKE_FLAGS, *no_export
    )
    check_smoke_run(tmp_path, output, "bahdanau", "date_translation")


def test_smoke_transformer(tmp_path):
    name = "date_translation_transformer"
    output = _runner.run_example(name, tmp_path, *SMOKE_FLAGS)
    check_smoke_run(tmp_path, output, "transformer", name)


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
    if results["export"] is None:  # --no-export
        assert not base.exists()
        return
    if BACKEND != "tensorflow":
        check_round_trip_through_tensorflow(tmp_path, output, name)
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


def check_round_trip_through_tensorflow(tmp_path, output, name):
    """Trained under JAX or PyTorch: the example saved the string model,
    exported it through TensorFlow, and checked the served answers."""
    assert (tmp_path / "run" / f"{name}.keras").exists()
    assert (tmp_path / "saved_models" / name / "1" / "saved_model.pb").exists()
    assert "endpoint translate_ids (token ids in): TensorFlow-only" in output
    assert re.search(r"greedy decoding of \d+ of 32 inputs .*: match", output)


@pytest.mark.skipif(BACKEND == "tensorflow", reason="a JAX or torch model")
def test_string_model_exported_by_the_cli_answers_as_the_backend(
    example, dates, tmp_path
):
    """An untrained model (its answers vary, unlike a few steps' worth of
    training): its string model, saved under JAX or PyTorch and exported by
    the CLI under TensorFlow, serves that backend's greedy decodings
    exactly, on the inputs whose greedy margins exceed 1e-3."""
    keras.utils.set_random_seed(1)
    training, inference = example.build_models(16)
    # Larger logits: larger gaps between an untrained model's choices.
    logits = training.get_layer("decoder").logits
    kernel, bias = logits.get_weights()
    logits.set_weights([30 * kernel, bias])
    texts = np.array(
        dates.DEMO + ["1/2/03", "2026.11.21", "5 March 1987", "31-12-99"],
        dtype=object,
    )
    iso, _ = dates.translate(inference, texts)
    keep = dates.greedy_margins(training, texts, iso) > 1e-3
    assert keep.sum() >= 6 and len(set(iso[keep])) >= 3, iso
    dates.string_model(inference).save(tmp_path / "model.keras")
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
def test_transformer_cached_decoding_equals_recomputing_the_prefix(
    transformer, dates
):
    keras.utils.set_random_seed(3)
    training, inference = transformer.build_models(
        dim=32, num_heads=4, num_layers=2, dropout=0.1
    )
    texts = dates.DEMO + ["21-11-2026", "1/2/03", ""]  # "": all padding
    source = dates.encode_inputs(texts)
    outputs = inference.predict(source, verbose=0)
    cached = outputs["target_ids"]
    assert cached.shape == (len(texts), dates.TARGET_LENGTH)

    # The reference: at step i, the start token and the i ids so far go
    # through the encoder and the blocks again, without caches: the
    # training model's teacher-forced pass over that prefix (causal: the
    # ids after it, still zeros, change nothing), read at step i.
    ids = np.zeros_like(cached)
    for i in range(dates.TARGET_LENGTH):
        logits = training([source, dates.teacher_forcing(ids)])
        logits = keras.ops.convert_to_numpy(logits)[:, i]
        ids[:, i] = np.argmax(logits, axis=-1)
    np.testing.assert_array_equal(cached, ids)
    # Untrained, but the ids vary within and across rows.
    assert len(np.unique(cached)) > 1 and len(np.unique(cached, axis=0)) > 1

    # Alignments: the last block's cross-attention weights, a distribution
    # over each input's characters (none on padding; zero rows for "").
    alignments = outputs["alignments"]
    assert alignments.shape == (len(texts), 10, dates.MAX_INPUT_LENGTH)
    real = source != 0
    expected = np.broadcast_to(real.any(-1)[:, None], alignments.shape[:2])
    np.testing.assert_allclose(alignments.sum(-1), expected, atol=1e-5)
    assert not (alignments * ~real[:, None, :]).any()


def test_greedy_margins_come_from_the_greedy_loops_logits(example, dates):
    """A teacher-forced pass over the greedy output gives the greedy loop's
    logits: their argmax is the greedy output, and `greedy_margins` is the
    smallest gap between the two largest of them."""
    keras.utils.set_random_seed(5)
    training, inference = example.build_models(16)
    texts = np.array(dates.DEMO + ["1/2/03", "2026.11.21"], dtype=object)
    iso, _ = dates.translate(inference, texts)
    source = dates.encode_inputs(texts)
    decoder_inputs = dates.teacher_forcing(dates.encode_targets(iso))
    logits = training.predict([source, decoder_inputs], verbose=0)
    predicted = dates.decode_targets(np.argmax(logits, axis=-1))
    np.testing.assert_array_equal(predicted, iso)
    top = np.sort(logits, axis=-1)
    np.testing.assert_allclose(
        dates.greedy_margins(training, texts, iso),
        (top[..., -1] - top[..., -2]).min(axis=-1),
    )


def help_text(module, argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    assert exit_info.value.code == 0
    return capsys.readouterr().out


COMMON_FLAGS = ("--train-samples", "--test-samples", "--max-steps", "--export")


def test_help(example, capsys):
    text = help_text(example, ["--help"], capsys)
    for flag in COMMON_FLAGS + ("--model", "--units", "--dropout"):
        assert flag in text
    assert "--num-heads" not in text


@pytest.mark.parametrize(
    "argv",
    [["--model", "transformer", "--help"], ["--help", "--model=transformer"]],
    ids=["model-first", "help-first"],
)
def test_model_transformer_hands_over_to_the_transformer_script(
    example, argv, capsys
):
    """`date_translation.py --model transformer` runs the Transformer's
    script with the other flags: its help, its flags."""
    text = help_text(example, argv, capsys)
    assert "Date translation with an encoder-decoder Transformer" in text
    for flag in COMMON_FLAGS + ("--dim", "--num-heads", "--num-layers"):
        assert flag in text
    assert "--units" not in text and "{bahdanau,transformer}" not in text


def test_transformer_help(transformer, capsys):
    text = help_text(transformer, ["--help"], capsys)
    assert "Date translation with an encoder-decoder Transformer" in text
    for flag in COMMON_FLAGS + ("--dim", "--num-heads", "--learning-rate"):
        assert flag in text
    assert "(default: 0.002)" in text


# -- the generated data -------------------------------------------------------
def test_generator_is_deterministic(dates):
    first = dates.make_dataset(300, 100, seed=5)
    second = dates.make_dataset(300, 100, seed=5)
    other = dates.make_dataset(300, 100, seed=6)
    for split in first:
        for key in ("text", "iso", "day", "format"):
            np.testing.assert_array_equal(first[split][key], second[split][key])
    assert list(first["train"]["text"]) != list(other["train"]["text"])


@pytest.fixture(scope="module")
def generated(dates):
    return dates.make_dataset(5000, 1000, seed=0)


def test_held_out_days_and_formats_are_unseen(dates, generated):
    train_days, test_days = dates.split_days(0)
    assert not set(train_days) & set(test_days)
    first, last = dates.FIRST_DAY, dates.LAST_DAY
    every_day = range(first.toordinal(), last.toordinal() + 1)
    assert sorted(set(train_days) | set(test_days)) == list(every_day)
    assert len(test_days) == round(0.1 * len(every_day))
    assert not set(dates.TRAIN_FORMATS) & set(dates.HELD_OUT_FORMATS)

    train = generated["train"]
    assert set(train["day"]) <= set(train_days)
    assert set(train["format"]) == set(dates.TRAIN_FORMATS)
    for split in ("held_out_dates", "held_out_formats"):
        assert not set(generated[split]["day"]) & set(train["day"])
        assert set(generated[split]["day"]) <= set(test_days)
        assert not set(generated[split]["text"]) & set(train["text"])
    assert set(generated["held_out_dates"]["format"]) <= set(
        dates.TRAIN_FORMATS
    )
    assert set(generated["held_out_formats"]["format"]) == set(
        dates.HELD_OUT_FORMATS
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


def test_inputs_read_by_strptime_give_the_targets(dates):
    # One test for all formats: each test pays the Keras teardown.
    days, _ = dates.split_days(0)
    rng = np.random.default_rng(1)
    for template, strptime_format in STRPTIME.items():
        pairs = dates.make_pairs(days, [template], 200, rng)
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


def test_ordinals(dates):
    days = {1: "1st", 2: "2nd", 3: "3rd", 4: "4th", 11: "11th", 12: "12th"}
    days.update({13: "13th", 21: "21st", 22: "22nd", 23: "23rd", 31: "31st"})
    for day, text in days.items():
        assert dates.ordinal(day) == text


def test_renders_the_demo_forms(dates):
    date = datetime.date(2026, 11, 21)
    assert dates.render(date, "{wd} {d} {mon} {yyyy}") == "sat 21 nov 2026"
    assert dates.render(date, "{dd}/{mm}/{yy}") == "21/11/26"
    assert (
        dates.render(date, "{month} {d}, {yyyy}", "title")
        == "November 21, 2026"
    )
    assert dates.render(date, "{yyyy}.{mm}.{dd}") == "2026.11.21"
    assert (
        dates.render(date, "{do} of {month} {yyyy}", "title")
        == "21st of November 2026"
    )
    assert dates.render(date, "{d} {mon} {yyyy}", "upper") == "21 NOV 2026"


def test_encoding(dates):
    texts = ["Sat 21 Nov 2026", "21/11/26", "é" + "1" * 40]
    ids = dates.encode_inputs(texts)
    assert ids.shape == (3, dates.MAX_INPUT_LENGTH) and ids.dtype == "int32"
    # Lower-cased; padding 0, unknown 1, then INPUT_CHARS from 2.
    chars = dates.INPUT_CHARS
    assert list(ids[1, :8]) == [chars.index(c) + 2 for c in "21/11/26"]
    assert not ids[1, 8:].any()
    np.testing.assert_array_equal(
        ids[0], dates.encode_inputs(["sat 21 nov 2026"])[0]
    )
    assert ids[2, 0] == 1 and ids[2, -1] == chars.index("1") + 2
    isos = np.array(["2026-11-21", "1969-01-01"], dtype=object)
    targets = dates.encode_targets(isos)
    assert targets.min() >= 1  # 0 is the decoder's start token
    np.testing.assert_array_equal(dates.decode_targets(targets), isos)
    np.testing.assert_array_equal(
        dates.teacher_forcing(targets)[:, 1:], targets[:, :-1]
    )
    assert not dates.teacher_forcing(targets)[:, 0].any()


def test_encoding_matches_text_vectorization(dates):
    """The NumPy encoder is the twin of the export's in-graph one."""
    layer = keras.layers.TextVectorization(
        standardize="lower",
        split="character",
        vocabulary=list(dates.INPUT_CHARS),
        output_sequence_length=dates.MAX_INPUT_LENGTH,
    )
    texts = ["Sat 21 Nov 2026", "The 3rd of MAY, 1999", "21/11/26", "x" * 40]
    np.testing.assert_array_equal(
        keras.ops.convert_to_numpy(layer(texts)), dates.encode_inputs(texts)
    )
