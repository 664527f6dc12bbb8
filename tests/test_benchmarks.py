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


BACKEND = keras.backend.backend()
jax_only = pytest.mark.skipif(
    BACKEND != "jax", reason="runs in the JAX suite (it forces JAX itself)"
)


@pytest.mark.skipif(
    BACKEND not in ("tensorflow", "jax"),
    reason="benchmarks.attention runs on TensorFlow and JAX",
)
def test_benchmark_smoke_run(tmp_path):
    # Under the session's backend: each suite checks its own path.
    report = _smoke_run("benchmarks.attention", tmp_path, "--backend", BACKEND)
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
    if BACKEND == "jax":
        assert report["backend"] == "jax"
        assert report["machine"].startswith("jax-cpu-")
        assert "TensorFlow" not in report["versions"]
        assert "jaxlib" in report["versions_detail"]
        for impl in ("ours", "keras"):
            # A CPU keeps no device memory statistics: the peak RSS.
            assert row[impl]["memory_source"] == "process peak RSS"
            assert row[impl]["peak_bytes"] > 0 and row[impl]["peak_exact"]
            assert row[impl]["gflops"] > 0
        assert "TFLOP/s" in table and "% of peak" in table
    else:
        assert "backend" not in report  # the TensorFlow report as before
        assert "GFLOP/s" in table


@pytest.mark.skipif(
    BACKEND == "jax", reason="runs in the TensorFlow suite (it forces torch)"
)
def test_torch_benchmark_smoke_run(tmp_path):
    # The workers run under KERAS_BACKEND=torch whatever this suite's is.
    report = _smoke_run("benchmarks.attention", tmp_path, "--backend", "torch")
    assert report["backend"] == "torch" and report["platform"] == "cpu"
    assert report["machine"].startswith("torch-cpu-")
    assert "PyTorch" in report["versions"]
    assert "TensorFlow" not in report["versions"]
    assert report["versions_detail"]["torch"]
    assert report["matmul"]["n"] == 1024 and report["matmul_gflops"] > 0
    (row,) = report["rows"]
    for impl in ("ours", "keras"):
        result = row[impl]
        assert result["status"] == "ok" and result["median_s"] > 0
        # Memory as under TensorFlow: the process's peak RSS.
        assert result["peak_rss_bytes"] >= result["rss_before_run_bytes"] > 0
        assert "peak_bytes" not in result
    assert row["checksum_rel_diff"] < 1e-4
    assert report["targets"] == []  # none of the smoke run's rows
    table = (tmp_path / "smoke.md").read_text()
    assert "| MHA B=2 L=64 h=2x8 | train |" in table
    assert "Backend PyTorch" in table and "`torch.matmul` 1024^3" in table


def test_targets_are_evaluated_from_their_rows():
    from benchmarks._attention_configs import target_configs
    from benchmarks._attention_report import evaluate_targets
    from benchmarks._attention_report import pair_rows

    def result(config):
        length, train = config["length"], config["mode"] == "train"
        ours = config["impl"] == "ours"
        if not ours and length == 16384:  # Keras core: the memory cap
            return dict(status="killed: RSS above 22 GB", peak_rss_bytes=2e10)
        return dict(
            status="ok",
            median_s=(1.0 if ours else 1.1) * length / 1000,
            times_s=[1.0],
            peak_rss_bytes=(1e9 if ours else 8e9) if train else 1e9,
            gflops=10.0,
            checksum=1.0,
        )

    rows = pair_rows(
        [dict(config=c, result=result(c)) for c in target_configs()]
    )
    targets = evaluate_targets(rows, peak=20.0)
    assert [t["target"] for t in targets] == [
        "1. MHA train step, L=8192, dropout 0.1",
        "2. MHA train step, L=16384, dropout 0.1",
        "3. MHA train step, L=8192, no dropout",
        "4. MHA forward, L=4096",
        "4. MHA forward, L=8192",
        "5. MHA train step, B=32, L=128",
        "5. MHA train step, B=32, L=512",
        "7. MHA train step, L=8192, called without training",
        "8. MHA train step, L=32768, called without training",
    ]
    assert all(t["met"] for t in targets), targets
    assert "Keras: killed: RSS above 22 GB" in targets[1]["measured"]
    assert targets[-1]["measured"] == "ours 32.768 s, 1.00 GB"
    # The GPU target appears on a GPU only.
    assert len(evaluate_targets(rows, peak=20.0, platform="gpu")) == 9


def test_torch_targets_are_evaluated_from_their_rows():
    import argparse

    from benchmarks._attention_configs import torch_target_configs
    from benchmarks._attention_report import evaluate_torch_targets
    from benchmarks._attention_report import pair_rows
    from benchmarks.attention import _configs

    flags = dict(
        gpu_sweep=False, smoke=False, quick=False, targets=True, programs=False
    )
    configs, _, _ = _configs(
        argparse.Namespace(backend="torch", **flags), "cpu"
    )
    assert configs == torch_target_configs()

    def rows(rounds, keras_memory=1e9):
        def result(config):
            ours = config["impl"] == "ours"
            medians = [1.0 if ours else 1.02] * rounds
            return dict(
                status="ok",
                median_s=medians[0],
                round_medians_s=medians,
                times_s=medians,
                peak_rss_bytes=0.25e9 if ours else keras_memory,
                gflops=10.0,
                checksum=1.0,
            )

        return pair_rows(
            [dict(config=c, result=result(c)) for c in torch_target_configs()]
        )

    targets = evaluate_torch_targets(rows(3))
    assert [t["target"] for t in targets] == [
        "T1. MHA forward, L=1024",
        "T1. MHA forward, L=4096",
        "T2. MHA train step, L=4096",
        "T3. MHA train step, L=8192, dropout 0.1",
        "T4. MHA train step, B=32, L=128",
        "T4. MHA train step, B=32, L=512",
    ]
    assert all(t["met"] for t in targets), targets
    assert targets[0]["measured"] == "time 0.98x, memory 0.25x (3 rounds)"
    # The forward targets count over 3 interleaved rounds.
    one_round = evaluate_torch_targets(rows(1))
    assert [t["met"] for t in one_round] == [False] * 2 + [True] * 4
    assert one_round[0]["measured"].endswith("(1 round)")
    # Ours at 0.50x of Keras core's memory misses T3 only; at 1.25x every
    # memory target.
    half = evaluate_torch_targets(rows(3, keras_memory=0.5e9))
    assert [t["met"] for t in half] == [True] * 3 + [False] + [True] * 2
    more = evaluate_torch_targets(rows(3, keras_memory=0.2e9))
    assert [t["met"] for t in more] == [False] * 4 + [True] * 2
    assert more[2]["measured"] == "time 0.98x, memory 1.25x"


def _no_tensorflow(tmp_path):
    """A PYTHONPATH entry under which `import tensorflow` fails, as on the
    GPU machine (which has none)."""
    blocker = tmp_path / "no_tensorflow" / "tensorflow"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text(
        "raise ImportError(\"No module named 'tensorflow' (blocked)\")\n"
    )
    return str(blocker.parent)


@jax_only
def test_device_run_smoke(tmp_path):
    """`bash benchmarks/device_run.sh --smoke`, without TensorFlow."""
    out = tmp_path / "out"
    env = dict(
        os.environ,
        PYTHONPATH=os.pathsep.join(
            [_no_tensorflow(tmp_path)]
            + [p for p in [os.environ.get("PYTHONPATH")] if p]
        ),
        PYTHON=sys.executable,
    )
    env.pop("OUT", None)
    result = subprocess.run(
        ["bash", "benchmarks/device_run.sh", "--smoke", "--out", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=900,
    )
    output = result.stdout + result.stderr
    log = out / "device-run.log"
    detail = output[-3000:] + (log.read_text()[-6000:] if log.exists() else "")
    assert result.returncode == 0, detail
    files = sorted(p.name for p in out.iterdir())
    assert files == [
        "attention.json",
        "attention.md",
        "attention.png",
        "device-run.json",
        "device-run.log",
        "device-run.md",
        "gpu-checks.json",
    ]
    assert all(p.is_file() for p in out.iterdir())  # no folders

    summary = json.loads((out / "device-run.json").read_text())
    assert summary["passed"] and summary["smoke"]
    assert summary["command"].startswith("bash benchmarks/device_run.sh")
    assert summary["device"]
    for name in ("jax", "jaxlib", "keras", "numpy", "python"):
        assert summary["versions"][name]
    assert [s["name"] for s in summary["stages"]] == [
        "gpu_checks",
        "attention",
        "image_classification",
        "date_translation",
        "text_generation",
    ]
    assert all(s["ok"] and s["seconds"] > 0 for s in summary["stages"])

    checks = json.loads((out / "gpu-checks.json").read_text())
    assert checks["passed"] and checks["failed"] == 0
    assert checks["cases"] == 12
    # On a CPU the fused kernel never runs, and none was expected to.
    assert checks["platform"] == "cpu"
    assert checks["fused_cases"] == checks["expected_fused_cases"] == 0
    assert {c["path"] for c in checks["results"]} == {
        "dense",
        "chunked",
        "auto",
    }
    assert all(c["ok_zero_rows"] for c in checks["results"])
    assert sum(c["empty_rows"] > 0 for c in checks["results"]) == 12

    bench = json.loads((out / "attention.json").read_text())
    assert bench["backend"] == "jax" and bench["gpu_set"]
    assert bench["matmul_gflops"] > 0
    assert len(bench["rows"]) == 2
    for row in bench["rows"]:
        assert row["config"]["dtype"] == "bfloat16"
        for impl in ("ours", "keras"):
            assert row[impl]["status"] == "ok"
            assert row[impl]["median_s"] > 0
            assert row[impl]["gflops"] > 0
        assert row["checksum_rel_diff"] < 0.05  # bfloat16
    for entry in bench["results"]:  # two lengths per process (a series)
        assert entry["config"]["series"].endswith("-train-bfloat16")
        assert entry["result"]["memory_source"] == "process peak RSS"
        assert entry["result"]["peak_exact"] in (True, False)

    examples = summary["examples"]
    assert 0.0 <= examples["image_classification"]["value"] <= 1.0
    assert 0.0 <= examples["date_translation"]["value"] <= 1.0
    assert examples["text_generation"]["value"] > 0
    assert examples["text_generation"]["baseline_bits_per_char"] > 0
    for metrics in examples.values():
        assert metrics["precision"] == "float32"  # --mixed-precision auto
        assert metrics["train_seconds"] > 0
    table = (out / "device-run.md").read_text()
    assert "| text_generation |" in table and "Passed: yes" in table


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
    from benchmarks._attention_report import combine_rounds

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


@pytest.mark.skipif(
    BACKEND != "tensorflow", reason="runs both backends itself; once is enough"
)
def test_dropout_rng_smoke_run(tmp_path):
    report = _smoke_run("benchmarks.dropout_rng", tmp_path)
    generators = [
        "matmuls",
        "random.uniform",
        "random.randint",
        "randint16",
        "hash32",
        "hash16",
    ]
    for backend in ("tensorflow", "jax", "torch"):
        times = report["backends"][backend]
        assert list(times) == generators
        assert all(t > 0 for t in times.values())
    assert report["machine"] and report["command"]
    table = (tmp_path / "smoke.md").read_text()
    assert "| backend | " + " | ".join(generators) + " |" in table


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


def test_generation_benchmark_smoke_run(tmp_path):
    from tests.testing import import_keras_hub

    import_keras_hub()
    report = _smoke_run("benchmarks.generation", tmp_path)
    assert report["backend"] == keras.backend.backend()
    assert report["device"] and report["versions"] and report["command"]
    assert (report["batch"], report["max_length"]) == (2, 12)
    assert [row["sampler"] for row in report["rows"]] == [
        "greedy",
        "top_p",
        "beam",
    ]
    for row in report["rows"]:
        for name in ("ours", "hub"):
            assert row["time_s"][name] > 0
            assert row["tokens_per_s"][name] > 0
            assert row["first_call_s"][name] > 0
        assert row["traces"]["ours"] in (None, 1)
        assert row["ours_over_hub_time_paired"] > 0
        assert all(row["checks"].values())
    # Greedy and beam search give keras-hub's tokens.
    assert [r["differing_tokens"] for r in report["rows"][::2]] == [0, 0]
    assert report["rows"][1]["ours_config"]["p"] == 0.9
    assert report["passed"]
    assert [t["target"] for t in report["targets"]] == [
        "greedy",
        "top_p",
        "beam",
    ]
    table = (tmp_path / "smoke.md").read_text()
    assert "## Per sampler" in table
    assert "| greedy |" in table and "| equal |" in table


@jax_only
def test_sharding_benchmark_smoke_run(tmp_path):
    report = _smoke_run("benchmarks.sharding", tmp_path)
    rows = {(tuple(r["mesh"]), r["fsdp"]): r for r in report["rows"]}
    assert set(rows) == {
        (mesh, fsdp) for mesh in ((1, 8), (2, 4)) for fsdp in (False, True)
    }
    total = report["parameter_bytes"]
    for row in rows.values():
        assert row["max_abs_diff"] <= 1e-4
        assert 0 < row["bytes_per_device"] < total
    # More model-axis devices, less per device; fsdp shards further.
    assert (
        rows[(1, 8), False]["bytes_per_device"]
        < rows[(2, 4), False]["bytes_per_device"]
    )
    assert (
        rows[(2, 4), True]["bytes_per_device"]
        < rows[(2, 4), False]["bytes_per_device"]
    )


@pytest.mark.tensorflow_only
def test_export_size_smoke_run(tmp_path):
    report = _smoke_run("benchmarks.export_size", tmp_path)
    auto, dense = report["chunk_size"]["auto"], report["chunk_size"]["None"]
    assert dense["kernel_choice_bytes"] == 0 < auto["kernel_choice_bytes"]
    assert dense["saved_model_pb"] < auto["saved_model_pb"]
    assert report["served_max_abs_diff"] <= 1e-6
    # Each variable once: the checkpoint's floats are most of variables/.
    assert auto["checkpoint_float_bytes"] <= auto["variables"]
    assert auto["variables"] < 1.5 * auto["checkpoint_float_bytes"]
    # Every format it ran, loaded afresh on its runtime, serves the Keras
    # model's outputs.
    assert {r["format"] for r in report["formats"].values()} == {
        "onnx",
        "litert",
    }
    for row in report["formats"].values():
        assert row["max_abs_diff"] <= 1e-4
        assert row["model_bytes"] > 0 and row["first_call_seconds"] > 0


@pytest.mark.tensorflow_only
def test_program_benchmark_smoke_run(tmp_path):
    # `--programs --smoke`: every program at toy sizes in one process. The
    # programs run the same way on every backend (the backends' workers
    # have their own smoke runs above): once, in the TensorFlow leg.
    args = ["--programs", "--backend", BACKEND]
    result = subprocess.run(
        [sys.executable, "-m", "benchmarks.attention", "--smoke", *args]
        + ["--output-dir", str(tmp_path), "--name", "smoke"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads((tmp_path / "smoke-programs.json").read_text())
    for entry in report["results"]:
        assert entry["result"]["status"] == "ok", entry
    # Ours and Keras core compute the same window and the same documents.
    paired = [row for row in report["rows"] if row["keras"]]
    assert len(paired) == 2
    for row in paired:
        assert row["checksum_rel_diff"] < 1e-4
    # The documents as a mask_mod compute what segment ids do.
    by_words = {
        entry["config"]["program"].get("documents_as", "segment ids"): entry
        for entry in report["results"]
        if entry["config"]["impl"] == "ours"
        and "documents" in entry["config"]["program"]
    }
    assert by_words["mask_mod"]["result"]["checksum"] == pytest.approx(
        by_words["segment ids"]["result"]["checksum"], rel=1e-4
    )
    assert [t["target"][:3] for t in report["targets"]] == [
        "P1.",
        "P2.",
        "P3.",
        "P4.",
        "P5.",
        "P6.",
    ]
    table = (tmp_path / "smoke-programs.md").read_text()
    # Blocks of 16 at L=64: window 8 computes 7 of 16 key blocks, full
    # causal 10.
    assert "| 7/16 (44%) |" in table and "| 10/16 (62%) | " in table
    assert "| 1.00x |" in table  # full causal against itself
