"""A smoke run of the benchmark suite: the pipeline works end to end."""

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _smoke_run(module, tmp_path):
    """Runs `python -m <module> --smoke`; returns its JSON report."""
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
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
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
