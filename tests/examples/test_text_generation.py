"""Tests of examples/text_generation.py.

The CLI runs as a subprocess for a few steps on a small slice of the corpus:
it trains, scores held-out text against the Kneser-Ney baseline, samples,
plots, and under TensorFlow exports and compares the served continuations
(greedy, seeded top-p sampling and beam search) with eager generation, on
TF's loader and on onnxruntime and LiteRT, exiting non-zero on a mismatch;
under JAX and PyTorch the greedy string model it saves, exported by the
CLI under TensorFlow, must serve that backend's continuations. The model's
cached generation is checked against recomputing the whole prefix; the
export comparison also checks the in-graph prompt encoding against
`left_pad`.
"""

import re

import numpy as np
import pytest

from tests.examples import _runner
from tests.examples._runner import BACKEND
from tests.examples._runner import import_example
from tests.examples._runner import read_json
from tests.serving import helpers
from tests.testing import to_numpy


@pytest.fixture(scope="module")
def example():
    return import_example("text_generation")


def test_smoke_trains_evaluates_generates_and_exports(tmp_path):
    output = _runner.run_example(
        "text_generation",
        tmp_path,
        "--max-steps=3",
        "--epochs=1",
        "--batch-size=8",
        "--num-layers=1",
        "--train-chars=20000",
        "--heldout-chars=4000",
        "--eval-chars=600",
        "--max-new-tokens=6",
        timeout=600,
    )
    results = read_json(tmp_path, "results.json")
    assert results["baseline_bits_per_char"] > 0
    assert results["bits_per_char"] > 0
    for decoding in ("greedy", "sample", "beam"):
        assert len(results["samples"][decoding]) == 5
        assert f"--- {decoding}: " in output
    assert (tmp_path / "run" / "attention.png").exists()
    if BACKEND == "tensorflow":
        assert "CHECK PASSED" in output
        assert "0 mismatch(es)" in output
        assert results["export"]
        # The three signatures, served from TF's loader, and greedy,
        # sampled and beam generation on onnxruntime and LiteRT, next to
        # the SavedModel, give the eager continuations.
        assert "(greedy, sampled with seed 7, beam search): 0 " in output
        assert results["runtime_mismatches"] == 0
        base = tmp_path / "saved_models" / "text_generation"
        for name in ("generate_greedy", "generate_sample", "generate_beam"):
            for suffix in ("onnx", "tflite"):
                assert (base / f"{name}.{suffix}").is_file()
                assert f"{name}.{suffix}: " in output
    else:
        check_round_trip_through_tensorflow(tmp_path, output, results)


def check_round_trip_through_tensorflow(tmp_path, output, results):
    """Trained under JAX or PyTorch: the greedy string model, saved to the
    run folder and exported by the CLI under TensorFlow, serves that
    backend's continuations exactly, for the prompts whose greedy margins
    exceed 1e-3."""
    assert "endpoints sample (seeded top-p sampling) and beam" in output
    assert re.search(r"continuations of \d of 5 prompts .*: match", output)
    if _runner.ON_TORCH_LEG:
        return  # the CLI export below: see _runner.ON_TORCH_LEG
    path = helpers.export_with_cli(
        tmp_path / "run" / "text_generation.keras",
        tmp_path / "cli" / "text_generation",
        "examples.text_generation",
    )
    example = import_example("text_generation")
    keep = np.array(results["greedy_margins"]) > 1e-3
    assert keep.sum() >= 3, results["greedy_margins"]
    prompts = np.array(example.DEMO_PROMPTS, dtype=object)[keep]
    greedy = [s for s, k in zip(results["samples"]["greedy"], keep) if k]
    helpers.check_expect(
        path,
        tmp_path,
        {"text": prompts},
        {
            "continuation": np.array([s.encode() for s in greedy], dtype="S"),
            "token_ids": np.stack([example._char_lm.encode(s) for s in greedy]),
        },
    )


def test_cached_generation_equals_recompute(example):
    """Greedy `TokenGenerator` output equals argmax decoding that reruns
    the whole (unpadded) prefix each step, for ragged prompts."""
    import keras

    import keras_attention

    keras.utils.set_random_seed(0)
    args = type(
        "Args",
        (),
        dict(
            hidden_dim=32,
            num_layers=2,
            num_heads=4,
            num_key_value_heads=2,
            intermediate_dim=48,
            dropout=0.0,
            sequence_length=16,
        ),
    )
    model = example.build_model(args)
    prompts = ["def f(x", "a", "  return"]
    new = 6
    generator = keras_attention.TokenGenerator(
        model, example.PROMPT_LENGTH + new
    )
    got = to_numpy(generator(example.left_pad(prompts)))
    for row, prompt in enumerate(prompts):
        ids = list(example._char_lm.encode(prompt))
        for _ in range(new):
            # A fixed-size buffer: one shape, one JAX compilation.
            buffer = np.zeros((1, 16), "int32")
            buffer[0, : len(ids)] = ids
            logits = to_numpy(model(buffer))[0, len(ids) - 1]
            logits[0] = -np.inf  # never the padding token
            top2 = np.sort(logits)[-2:]
            assert top2[1] - top2[0] > 1e-5  # a meaningful comparison
            ids.append(int(np.argmax(logits)))
        np.testing.assert_array_equal(got[row], ids[-new:])


def test_left_pad_keeps_the_last_characters(example):
    ids = example.left_pad(["ab", "x" * 70], length=64)
    codec = example._char_lm
    np.testing.assert_array_equal(ids[0, :62], 0)
    np.testing.assert_array_equal(ids[0, 62:], codec.encode("ab"))
    np.testing.assert_array_equal(ids[1], codec.encode("x" * 64))


def test_packing_keeps_documents_apart(example):
    codec = example._char_lm
    text = "def a():\n    pass\n\n\nx = 1\n\n\nclass B:\n    y = 22\n"
    documents = example.split_documents(codec.encode(text), 12)
    assert [codec.decode(d) for d in documents][:2] == [
        "def a():\n    ",
        "pass\n\n",
    ]
    inputs, targets, segments, positions = example.pack_documents(documents, 16)
    tokens = sum(len(d) - 1 for d in documents)
    assert int((segments > 0).sum()) == tokens
    for r in range(len(inputs)):
        ids = segments[r][segments[r] > 0]
        # Segments are 1, 2, ... in order, padding (0) only at the end.
        assert list(np.unique(ids)) == list(range(1, ids.max() + 1))
        assert (segments[r][len(ids) :] == 0).all()
        assert (np.diff(ids) >= 0).all()
        for segment in np.unique(ids):
            where = np.flatnonzero(segments[r] == segment)
            # Positions restart at 0 per document (RoPE).
            np.testing.assert_array_equal(
                positions[r, where], np.arange(len(where))
            )
            # Each target is the document's next id: inputs shifted by one
            # within the segment, so no target crosses a document.
            np.testing.assert_array_equal(
                inputs[r, where[1:]], targets[r, where[:-1]]
            )
    # The targets of each document are its own ids, in order.
    packed = [
        targets[r][segments[r] == s]
        for r in range(len(inputs))
        for s in range(1, segments[r].max() + 1)
    ]
    for got, document in zip(packed, documents):
        np.testing.assert_array_equal(got, document[1:])
    padded_inputs, padded_targets = example.pad_documents(documents)
    assert padded_inputs.shape[1] == max(len(d) - 1 for d in documents)
    assert example.padding_fraction(padded_targets) == pytest.approx(
        1 - tokens / padded_targets.size
    )
    assert example.padding_fraction(targets) == pytest.approx(
        1 - tokens / targets.size
    )


def test_pack_run_reports_both_epochs(tmp_path):
    _runner.run_example(
        "text_generation",
        tmp_path,
        "--pack",
        "--max-steps=2",
        "--batch-size=4",
        "--num-layers=1",
        "--hidden-dim=16",
        "--intermediate-dim=16",
        "--sequence-length=256",
        "--train-chars=6000",
        "--heldout-chars=2000",
        timeout=600,
    )
    summary = read_json(tmp_path, "packing.json")
    for name in ("packed", "padded"):
        assert summary[name]["epoch_seconds"] > 0
        assert summary[name]["tokens_per_second"] > 0
    assert summary["packed"]["rows"] < summary["padded"]["rows"]
    assert summary["padding_removed"] == pytest.approx(
        summary["padded"]["padding_fraction"]
        - summary["packed"]["padding_fraction"]
    )
    assert summary["padding_removed"] > 0
