"""Tests of examples/text_generation.py.

The CLI runs as a subprocess for a few steps on a small slice of the corpus:
it trains, scores held-out text against the Kneser-Ney baseline, samples,
plots, and under TensorFlow exports and compares the served continuations
(greedy and seeded sampling) with eager generation, on TF's loader and on
onnxruntime and LiteRT, exiting non-zero on a mismatch; under JAX and
PyTorch the greedy string model it saves, exported by the CLI under
TensorFlow, must serve that backend's continuations. The
model's cached generation is checked against recomputing the whole prefix;
the export comparison also checks the in-graph prompt encoding against
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
    assert len(results["samples"]["greedy"]) == 5
    assert (tmp_path / "run" / "attention.png").exists()
    if BACKEND == "tensorflow":
        assert "CHECK PASSED" in output
        assert "0 mismatch(es)" in output
        assert results["export"]
        # Greedy and sampled generation on onnxruntime and LiteRT, next to
        # the SavedModel, give the eager continuations.
        assert results["runtime_mismatches"] == 0
        base = tmp_path / "saved_models" / "text_generation"
        for name in ("generate_greedy", "generate_sample"):
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
    assert "endpoint sample (seeded top-k sampling): TensorFlow-only" in output
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
