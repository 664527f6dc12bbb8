"""A smoke run of the benchmark suite: the pipeline works end to end."""

import json
import os
import shutil
import subprocess
import sys

import keras
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_run(module, tmp_path, *args, returncode=0):
    """Runs `python -m <module> --smoke <args>`; returns its JSON report."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            module,
            "--smoke",
            "--output-dir",
            str(tmp_path),
            "--name",
            "smoke",
            *args,
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == returncode, result.stderr[-2000:]
    return json.loads((tmp_path / "smoke.json").read_text())


@pytest.mark.tensorflow_only
def test_benchmark_smoke_run(tmp_path):
    report = _smoke_run("benchmarks.attention", tmp_path)
    assert report["matmul_gflops"] > 0
    (row,) = report["rows"]
    for impl in ("ours", "keras"):
        assert row[impl]["status"] == "ok"
        assert row[impl]["median_s"] > 0
        assert row[impl]["peak_rss_bytes"] > 0
    # Identical weights and inputs: both layers computed the same outputs.
    assert row["checksum_rel_diff"] < 1e-4
    table = (tmp_path / "smoke.md").read_text()
    assert "| MHA B=2 L=64 h=2x8 | train |" in table


@pytest.mark.tensorflow_only
def test_serving_benchmark_smoke_run(tmp_path):
    report = _smoke_run("benchmarks.serving", tmp_path)
    assert [r["batch"] for r in report["rows"]] == [1, 4]
    for row in report["rows"]:
        for name in ("direct", "direct_static", "signature", "session"):
            assert row["median_ms"][name] > 0
    # The outputs of all four calls agreed (the benchmark asserts it).
    assert (
        "signature / direct (target <= 1.1)"
        in (tmp_path / "smoke.md").read_text()
    )


@pytest.mark.tensorflow_only
def test_soak_smoke_run(tmp_path):
    # A 1 s warm-up is too short for the 5% memory limit (the full run's
    # warm-up is 10 s); the smoke run checks the loop and the counts.
    report = _smoke_run("benchmarks.soak", tmp_path, "--max-growth", "0.5")
    assert report["export_dir"] == os.path.join(
        "saved_models", "quickstart", "1"
    )
    assert report["loader"] == "session"
    assert report["keras_attention_imported"] is False  # the export alone
    assert report["requests"] > 10 and report["rows"] >= report["requests"]
    assert report["probes"] > 0
    assert report["errors"] == 0 and report["first_errors"] == []
    assert report["rss_after_warmup_bytes"] > 0
    assert report["passed"]
    assert "| errors |" in (tmp_path / "smoke.md").read_text()


@pytest.mark.tensorflow_only
def test_soak_counts_failed_requests(tmp_path):
    # An export whose sample request has token ids past the vocabulary
    # (32): the soak draws ids up to 40, the embedding lookup fails for
    # them, and the soak reports the errors and exits 1.
    export = tmp_path / "export"
    shutil.copytree(
        os.path.join(ROOT, "saved_models", "quickstart", "1"), export
    )
    sample = export / "assets.extra" / "sample_request.json"
    body = json.loads(sample.read_text())
    body["inputs"]["tokens"][0][0] = 40
    sample.write_text(json.dumps(body))
    out = tmp_path / "out"
    report = _smoke_run(
        "benchmarks.soak",
        out,
        "--export-dir",
        str(export),
        "--loader",
        "function",
        "--max-growth",
        "0.5",
        returncode=1,
    )
    assert report["errors"] > 0 and not report["passed"]
    assert "indices" in report["first_errors"][0].lower()
    assert f"| {report['errors']} |" in (out / "smoke.md").read_text()


def test_rounds_combine_into_the_median_of_their_medians():
    from benchmarks.attention import combine_rounds

    def ok(median, peak):
        return dict(
            status="ok",
            median_s=median,
            times_s=[median],
            peak_rss_bytes=peak,
            gflops=12.0 / median,
        )

    combined = combine_rounds([ok(3.0, 5), ok(1.0, 9), ok(2.0, 7)])
    assert combined["median_s"] == 2.0
    assert combined["round_medians_s"] == [3.0, 1.0, 2.0]
    assert combined["peak_rss_bytes"] == 9
    assert combined["gflops"] == pytest.approx(6.0)
    assert sorted(combined["times_s"]) == [1.0, 2.0, 3.0]
    # A failed round is the result: a configuration that ran out of memory
    # once is not reported with the time of the rounds that fit.
    oom = dict(status="out of memory", detail="OOM")
    assert combine_rounds([ok(1.0, 5), oom, ok(1.0, 5)]) is oom
    single = ok(1.5, 3)
    assert combine_rounds([single]) is single


def test_decoding_benchmark_smoke_run(tmp_path):
    from tests.testing import import_keras_hub

    import_keras_hub()
    report = _smoke_run("benchmarks.decoding", tmp_path)
    assert report["contexts"] == [16, 32]
    assert report["backend"] == keras.backend.backend()
    assert report["device"] and report["versions"] and report["command"]
    for row in report["rows"]:
        for name in ("cached", "hub", "recompute", "gqa_kv2", "gqa_kv1"):
            assert row["step_s"][name] > 0
            assert row["tokens_per_s"][name] > 0
            # One compilation served every step (the index is a tensor).
            assert row["traces"]["step"][name] in (None, 1)
        for name in ("ours", "hub", "gqa_kv2", "gqa_kv1"):
            assert row["prefill_s"][name] > 0
        assert row["speedup_vs_recompute"] > 0
        assert row["ours_over_hub_step_paired"] > 0
        # Cached steps computed the recompute rows, and our layer
        # keras-hub's outputs and cache with the same weights.
        diffs = row["max_abs_diff"]
        assert diffs["recompute_step_outputs"] < 1e-4
        assert diffs["prefill_vs_steps"] < 1e-4
        for key in ("prefill_output", "prefill_cache", "step_outputs"):
            assert diffs[f"hub_{key}"] < 1e-5
        memory = row["cache_memory"]
        assert memory["mha"]["bytes"] == 2 * row["context"] * 8 * 64 * 4
        for name, kv_heads in (("mha", 8), ("gqa_kv2", 2), ("gqa_kv1", 1)):
            assert memory[name]["kv_heads"] == kv_heads
            assert memory[name]["actual_nbytes"] == memory[name]["bytes"]
    assert report["passed"]
    assert [t["target"] for t in report["targets"]] == [
        "ours / keras-hub per step, C=16",
        "ours / keras-hub per step, C=32",
    ]
    table = (tmp_path / "smoke.md").read_text()
    assert "## Per-token decode step" in table
    assert "| 16 | 64 KiB | 16 KiB (0.25x) | 8 KiB (0.125x) | yes |" in table
