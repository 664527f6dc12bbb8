"""The attention benchmark's results: rounds, tables, targets and plot.

`combine_rounds` makes one result of a configuration's rounds; `pair_rows`
pairs ours with Keras core on the same configuration (time and memory
ratios, checksum difference); `evaluate_targets` reads the targets table
from those rows (`evaluate_torch_targets` the PyTorch one); `markdown` and
`plot` write the report's `.md` and `.png`.
The report's `.json` is written by `benchmarks._common.write_report`.
"""

import json

import numpy as np

from benchmarks._attention_configs import describe
from benchmarks._common import targets_table


def combine_rounds(runs):
    """One result from the rounds of a configuration.

    A failed round (out of memory, killed, error) is the result. Otherwise
    the time is the median of the rounds' medians, the memory the largest
    peak; `round_medians_s` keeps each round's median.
    """
    for run in runs:
        if run.get("status") != "ok":
            return run
    if len(runs) == 1:
        return runs[0]
    medians = [run["median_s"] for run in runs]
    median = float(np.median(medians))
    combined = dict(runs[0])
    combined.update(
        median_s=median,
        round_medians_s=medians,
        times_s=[t for run in runs for t in run["times_s"]],
        peak_rss_bytes=max(run["peak_rss_bytes"] for run in runs),
        gflops=runs[0]["gflops"] * runs[0]["median_s"] / median,
    )
    if "peak_bytes" in runs[0]:
        combined["peak_bytes"] = max(run["peak_bytes"] for run in runs)
        combined["peak_exact"] = all(run["peak_exact"] for run in runs)
    return combined


def _key(config):
    return tuple(
        sorted(
            (k, json.dumps(v, sort_keys=True) if isinstance(v, dict) else v)
            for k, v in config.items()
            if k not in ("impl", "reps", "series")
        )
    )


def _peak(result):
    """The result's peak memory: the device's (JAX) or the process's RSS."""
    if not result:
        return None
    return result.get("peak_bytes", result.get("peak_rss_bytes"))


def _fmt_gb(x):
    return f"{x / 1e9:.2f} GB" if x else "-"


def format_memory(result):
    """The result's peak memory in GB, `<= ` where it is a bound."""
    text = _fmt_gb(_peak(result))
    if result and result.get("peak_exact") is False:
        return f"<= {text}"
    return text


def format_seconds(result):
    """The result's median time in seconds, or its status if it failed."""
    if result.get("status") != "ok":
        return result["status"]
    return f"{result['median_s']:.3f} s"


def format_milliseconds(result):
    """Milliseconds below a second (GPU times), else as `format_seconds`."""
    if result.get("status") == "ok" and result["median_s"] < 1.0:
        return f"{result['median_s'] * 1e3:.3g} ms"
    return format_seconds(result)


def pair_rows(results):
    """One row per configuration: ours and Keras core's results side by
    side, with their time and memory ratios and checksum difference where
    both ran."""
    pairs = {}
    for entry in results:
        pairs.setdefault(_key(entry["config"]), {})[entry["config"]["impl"]] = (
            entry
        )
    rows = []
    for key, pair in pairs.items():
        ours, keras_ = pair.get("ours"), pair.get("keras")
        config = (ours or keras_)["config"]
        row = dict(
            config=config,
            ours=ours["result"] if ours else None,
            keras=keras_["result"] if keras_ else None,
        )
        o, k = row["ours"], row["keras"]
        if o and k and o.get("status") == "ok" and k.get("status") == "ok":
            row["time_ratio"] = o["median_s"] / k["median_s"]
            if o.get("peak_exact", True) and k.get("peak_exact", True):
                row["memory_ratio"] = _peak(o) / _peak(k)
            if config["layer"] == "mha":  # the same computation: compare
                # The checksums come from the forward pass, which runs
                # with training=False: they compare with dropout too.
                row["checksum_rel_diff"] = abs(
                    o["checksum"] - k["checksum"]
                ) / (abs(k["checksum"]) + 1e-6)
        rows.append(row)
    return rows


def _find(rows, **want):
    for row in rows:
        if all(row["config"].get(k) == v for k, v in want.items()):
            return row
    return None


def _find_mha(
    rows, mode, batch, length, dropout=0.0, dtype="float32", train_call=None
):
    return _find(
        rows,
        layer="mha",
        mode=mode,
        batch=batch,
        length=length,
        causal=False,
        dropout=dropout,
        dtype=dtype,
        train_call=train_call,
        program=None,
    )


def _status(result):
    """A result in a few words: its time and memory, or why it failed."""
    if not result:
        return "not run"
    if result.get("status") != "ok":
        return result["status"]
    return f"{format_milliseconds(result)}, {format_memory(result)}"


def evaluate_targets(rows, peak, platform="cpu"):
    """The targets table (see `benchmarks._attention_configs`), as rows.

    All but 6 are for the CPU (float32, 8 heads x 64) and are evaluated
    wherever their configurations ran; 6 (bfloat16, 8k-32k tokens, at least
    Keras core's speed) only on a GPU or TPU.
    """
    targets = []

    def add(name, goal, row, value, ok):
        targets.append(
            dict(
                target=name,
                goal=goal,
                config=describe(row["config"]) if row else "-",
                measured=value,
                met=ok,
            )
        )

    def time_and_memory(name, goal, row, max_time, max_memory):
        if not row or "time_ratio" not in row:
            return
        memory = row.get("memory_ratio")
        add(
            name,
            goal,
            row,
            f"memory {memory:.2f}x, time {row['time_ratio']:.2f}x"
            if memory is not None
            else f"memory -, time {row['time_ratio']:.2f}x",
            memory is not None
            and memory <= max_memory
            and row["time_ratio"] <= max_time,
        )

    time_and_memory(
        "1. MHA train step, L=8192, dropout 0.1",
        "memory <= 0.25x, time <= 1.15x",
        _find_mha(rows, "train", 1, 8192, dropout=0.1),
        1.15,
        0.25,
    )
    row = _find_mha(rows, "train", 1, 16384, dropout=0.1)
    if row and row["ours"]:
        o = row["ours"]
        ok = o.get("status") == "ok" and o.get("peak_exact", True)
        ok = ok and _peak(o) < 6e9
        add(
            "2. MHA train step, L=16384, dropout 0.1",
            "ours runs under 6 GB (Keras core may run out of memory)",
            row,
            f"ours {_status(o)}; Keras: {_status(row['keras'])}",
            ok,
        )
    time_and_memory(
        "3. MHA train step, L=8192, no dropout",
        "time <= 1.12x, memory <= 0.25x",
        _find_mha(rows, "train", 1, 8192),
        1.12,
        0.25,
    )
    for length in (4096, 8192):
        row = _find_mha(rows, "forward", 1, length)
        if row and "time_ratio" in row:
            share = ""
            if peak:
                share = (
                    f" (ours {row['ours']['gflops'] / peak:.0%}, Keras "
                    f"{row['keras']['gflops'] / peak:.0%} of matmul peak)"
                )
            add(
                f"4. MHA forward, L={length}",
                "time <= 1.00x",
                row,
                f"time {row['time_ratio']:.2f}x{share}",
                row["time_ratio"] <= 1.0,
            )
    for length in (128, 512):
        row = _find_mha(rows, "train", 32, length)
        if row and "time_ratio" in row:
            add(
                f"5. MHA train step, B=32, L={length}",
                "time <= 1.05x",
                row,
                f"time {row['time_ratio']:.2f}x",
                row["time_ratio"] <= 1.05,
            )
    time_and_memory(
        "7. MHA train step, L=8192, called without training",
        "time <= 1.12x, memory <= 0.25x",
        _find_mha(rows, "train", 1, 8192, train_call="default"),
        1.12,
        0.25,
    )
    row = _find_mha(rows, "train", 1, 32768, train_call="default")
    if row and row["ours"]:
        o = row["ours"]
        ok = o.get("status") == "ok" and o.get("peak_exact", True)
        ok = ok and _peak(o) < 12 * 2**30
        add(
            "8. MHA train step, L=32768, called without training",
            "ours runs under 12 GiB",
            row,
            f"ours {_status(o)}",
            ok,
        )
    if platform == "cpu":
        return targets
    for mode in ("forward", "train"):
        for length in (8192, 16384, 32768):
            row = _find_mha(rows, mode, 1, length, dtype="bfloat16")
            if not row or not row["ours"]:
                continue
            o, k = row["ours"], row["keras"] or {}
            if "time_ratio" in row:
                value = f"time {row['time_ratio']:.2f}x"
                ok = row["time_ratio"] <= 1.0
            else:  # one of them failed: ours must have run
                value = f"ours {_status(o)}; Keras: {_status(k)}"
                ok = o.get("status") == "ok" and k.get("status") != "ok"
            add(
                f"6. GPU, bfloat16, MHA {mode}, L={length}",
                "time <= 1.00x (at least Keras core's speed)",
                row,
                value,
                ok,
            )
    return targets


def _result_of(results, config):
    """The result of `config` (its implementation included) in `results`,
    or None."""
    want = (config["impl"], _key(config))
    for entry in results:
        if (entry["config"]["impl"], _key(entry["config"])) == want:
            return entry["result"]
    return None


def _ok(result):
    return bool(result) and result.get("status") == "ok"


def evaluate_program_targets(results, targets):
    """The programmable attention's targets (`_attention_configs.
    program_set`), as rows: each configuration against its baseline,
    measured in the same run."""
    rows = []
    for target in targets:
        config, baseline = target["config"], target["baseline"]
        measured, base = (_result_of(results, c) for c in (config, baseline))
        goal = f"time <= {target['max_time']:.2f}x"
        if target["max_memory"] is not None:
            goal += f", memory <= {target['max_memory']:.2f}x"
        who = "Keras core" if baseline["impl"] == "keras" else "ours"
        goal += f" of {who}: {describe(baseline)}"
        if not (_ok(measured) and _ok(base)):
            if measured is None and base is None:
                continue
            value = f"ours {_status(measured)}; baseline: {_status(base)}"
            ok = _ok(measured) and base is not None and not _ok(base)
            ok = ok and target["max_memory"] is not None
        else:
            time_ratio = measured["median_s"] / base["median_s"]
            value = f"time {time_ratio:.2f}x"
            ok = time_ratio <= target["max_time"]
            if target["max_memory"] is not None:
                exact = measured.get("peak_exact", True) and base.get(
                    "peak_exact", True
                )
                memory = _peak(measured) / _peak(base) if exact else None
                value += ", memory " + (
                    "-" if memory is None else f"{memory:.2f}x"
                )
                ok = (
                    ok and memory is not None and memory <= target["max_memory"]
                )
        rows.append(
            dict(
                target=target["target"],
                goal=goal,
                config=describe(config),
                measured=value,
                met=ok,
            )
        )
    return rows


def skip_series_rows(results, series):
    """The skip-fraction series: `(config, result, fraction, relative)`,
    `fraction` the share of key blocks computed, `relative` the time over
    the last configuration's (full causal)."""
    found = [(c, _result_of(results, c)) for c in series]
    last = found[-1][1] if found else None
    rows = []
    for config, result in found:
        fraction = relative = None
        if _ok(result) and result.get("key_blocks"):
            computed, total = result["key_blocks"]
            fraction = computed / total
        if _ok(result) and _ok(last):
            relative = result["median_s"] / last["median_s"]
        rows.append((config, result, fraction, relative))
    return rows


def _skip_series_table(report):
    lines = [
        "## Time against the key blocks computed",
        "",
        "Ours, train step, causal, one sliding window per row (the last row "
        "none): the chunked kernel computes only the key blocks within the "
        "causal and window bounds.",
        "",
        "| configuration | key blocks computed | time | time / full causal "
        "| peak |",
        "|---|---|---|---|---|",
    ]
    fmt = format_milliseconds if _is_jax(report) else format_seconds
    for config, result, fraction, relative in skip_series_rows(
        report["results"], report["skip_series"]
    ):
        computed = "-"
        if fraction is not None:
            done, total = result["key_blocks"]
            computed = f"{done}/{total} ({fraction:.0%})"
        lines.append(
            f"| {describe(config)} | {computed} | "
            f"{fmt(result) if result else 'not run'} | "
            f"{'-' if relative is None else f'{relative:.2f}x'} | "
            f"{format_memory(result) if result else '-'} |"
        )
    return lines + [""]


def _rounds(row):
    """How many rounds both results of a row combine."""
    return min(
        len(row[impl].get("round_medians_s", [None]))
        for impl in ("ours", "keras")
    )


def evaluate_torch_targets(rows):
    """The PyTorch targets table (T1-T4, see `benchmarks._attention_configs`),
    as rows. T1 counts as met only over 3 or more interleaved rounds."""
    targets = []

    def add(name, goal, config, max_time, max_memory=None, rounds=1):
        row = _find_mha(rows, *config)
        if not row or "time_ratio" not in row:
            return
        memory = row.get("memory_ratio")
        measured = f"time {row['time_ratio']:.2f}x"
        ok = row["time_ratio"] <= max_time
        if max_memory is not None:
            text = "-" if memory is None else f"{memory:.2f}x"
            measured = f"{measured}, memory {text}"
            ok = ok and memory is not None and memory <= max_memory
        if rounds > 1:
            done = _rounds(row)
            measured += f" ({done} round{'s' if done > 1 else ''})"
            ok = ok and done >= rounds
        targets.append(
            dict(
                target=name,
                goal=goal,
                config=describe(row["config"]),
                measured=measured,
                met=ok,
            )
        )

    for length in (1024, 4096):
        add(
            f"T1. MHA forward, L={length}",
            "time <= 1.03x, memory <= 1.00x (median of 3 interleaved rounds)",
            ("forward", 1, length),
            1.03,
            1.00,
            rounds=3,
        )
    add(
        "T2. MHA train step, L=4096",
        "time <= 1.05x, memory <= 1.00x",
        ("train", 1, 4096),
        1.05,
        1.00,
    )
    add(
        "T3. MHA train step, L=8192, dropout 0.1",
        "memory <= 0.30x, time <= 1.10x",
        ("train", 1, 8192, 0.1),
        1.10,
        0.30,
    )
    for length in (128, 512):
        add(
            f"T4. MHA train step, B=32, L={length}",
            "time <= 1.05x",
            ("train", 32, length),
            1.05,
        )
    return targets


def _is_jax(report):
    return report.get("backend", "tensorflow") == "jax"


def _intro(report):
    if report.get("backend") == "torch":
        return [
            f"Versions: {report['versions']}. Float32 matmul peak (measured, "
            f"`torch.matmul` {report['matmul']['n']}^3): "
            f"{report['matmul_gflops']:.1f} GFLOP/s.",
            "",
            "Backend PyTorch, on the CPU, eager (as Keras' torch backend "
            "runs). Ratios are ours / Keras core, measured in the same run, "
            "each configuration in a fresh process. Times are medians of "
            "repeated calls after a warm-up call: the forward pass is a plain "
            "`layer(x, x)` call, the train step that call with "
            "`training=True`, the sum of squares and `torch.autograd.grad` "
            "with respect to the input and all weights. Memory is the "
            "process's peak RSS (it includes the PyTorch runtime). GFLOP/s "
            "count the same nominal FLOPs for both (forward: projections plus "
            "4*B*H*T*S*d; train step: 3x forward).",
            "",
        ]
    if not _is_jax(report):
        return [
            f"Versions: {report['versions']}. Float32 matmul peak (measured, "
            f"4096^3): {report['matmul_gflops']:.1f} GFLOP/s.",
            "",
            "Ratios are ours / Keras core, measured in the same run, each "
            "configuration in a fresh process; memory is the process's peak "
            "RSS (which includes the TensorFlow runtime, about 0.6 GB). "
            "GFLOP/s count the same nominal FLOPs for both (forward: "
            "projections plus 4*B*H*T*S*d; train step: 3x forward). "
            "AdditiveAttention: Keras core's layer has no projections, so "
            "ours does more work and the outputs differ by design.",
            "",
        ]
    matmul = report["matmul"]
    sources = sorted(
        {
            r.get("memory_source")
            for row in report["rows"]
            for r in (row["ours"], row["keras"])
            if r and r.get("memory_source")
        }
    )
    return [
        f"Device: {report['device']}. Versions: {report['versions']}. "
        f"Matmul peak (measured, `jax.jit`, {matmul['dtype']} "
        f"{matmul['n']}^3): {report['matmul_gflops'] / 1e3:.2f} TFLOP/s.",
        "",
        "Backend JAX. Ratios are ours / Keras core, measured in the same "
        "run; times are medians of calls of the `jax.jit`-compiled forward "
        "pass or train step (`jax.value_and_grad` of `stateless_call` with "
        "respect to the inputs and all weights), after compilation and a "
        "warm-up, each synchronised with `block_until_ready`. Memory: "
        + (", ".join(sources) or "-")
        + " (a configuration that did not raise its process's running peak "
        "shows `<=` that peak, and no memory ratio). TFLOP/s count the same "
        "nominal FLOPs for both (forward: projections plus 4*B*H*T*S*d; "
        "train step: 3x forward); % of peak is against the matmul above.",
        "",
    ]


def markdown(report):
    jax_report = _is_jax(report)
    title = report.get("device_name", report["machine"])
    lines = [
        f"# Attention benchmark: {title}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        *_intro(report),
    ]
    for note in report.get("notes", []):
        lines += [f"Note: {note}", ""]
    if report["targets"]:
        lines += targets_table(report["targets"]) + [""]
    if report.get("skip_series"):
        lines += _skip_series_table(report)
    if jax_report:
        rate = (
            "| ours TFLOP/s | Keras TFLOP/s | ours % of peak | Keras % of peak"
        )
        lines += [
            "## All configurations",
            "",
            "| configuration | mode | ours time | Keras time | time ratio | "
            f"ours peak | Keras peak | memory ratio {rate} | checksum rel. "
            "diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    else:
        lines += [
            "## All configurations",
            "",
            "| configuration | mode | ours time | Keras time | time ratio | "
            "ours peak | Keras peak | memory ratio | ours GFLOP/s | "
            "Keras GFLOP/s | checksum rel. diff |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
    peak = report["matmul_gflops"]
    for row in report["rows"]:
        o, k = row["ours"] or {}, row["keras"] or {}
        ratio = f"{row['time_ratio']:.2f}x" if "time_ratio" in row else "-"
        mem = f"{row['memory_ratio']:.2f}x" if "memory_ratio" in row else "-"
        diff = (
            f"{row['checksum_rel_diff']:.1e}"
            if "checksum_rel_diff" in row
            else "-"
        )
        if jax_report:
            rates = [
                f"{r['gflops'] / 1e3:.2f}" if "gflops" in r else "-"
                for r in (o, k)
            ] + [
                f"{r['gflops'] / peak:.0%}" if "gflops" in r and peak else "-"
                for r in (o, k)
            ]
            memory = (format_memory(o), format_memory(k))
        else:
            rates = [f"{o.get('gflops', 0):.1f}", f"{k.get('gflops', 0):.1f}"]
            memory = (
                _fmt_gb(o.get("peak_rss_bytes")),
                _fmt_gb(k.get("peak_rss_bytes")),
            )
        fmt = format_milliseconds if jax_report else format_seconds
        lines.append(
            f"| {describe(row['config'])} | {row['config']['mode']} | "
            f"{fmt(o) if o else '-'} | {fmt(k) if k else '-'} | "
            f"{ratio} | {memory[0]} | {memory[1]} | {mem} | "
            + " | ".join(rates)
            + f" | {diff} |"
        )
    return "\n".join(lines) + "\n"


def plot(report, path):
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    # One dtype per figure: bfloat16 where it ran (the GPU set), else
    # float32; without dropout.
    dtypes = {r["config"].get("dtype", "float32") for r in report["rows"]}
    dtype = "bfloat16" if "bfloat16" in dtypes else "float32"
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for mode, style in (("forward", "--"), ("train", "-")):
        for impl, color in (("ours", "tab:blue"), ("keras", "tab:orange")):
            pts = sorted(
                (r["config"]["length"], r[impl])
                for r in report["rows"]
                if r["config"]["layer"] == "mha"
                and r["config"]["batch"] == 1
                and r["config"]["mode"] == mode
                and not r["config"]["causal"]
                and not r["config"].get("dropout")
                and "train_call" not in r["config"]
                and "program" not in r["config"]
                and r["config"].get("dtype", "float32") == dtype
                and r[impl]
                and r[impl].get("status") == "ok"
            )
            if not pts:
                continue
            xs = [p[0] for p in pts]
            label = f"{'keras_attention' if impl == 'ours' else 'Keras core'}"
            axes[0].plot(
                xs,
                [p[1]["median_s"] for p in pts],
                style,
                color=color,
                marker="o",
                label=f"{label}, {mode}",
            )
            axes[1].plot(
                xs,
                [_peak(p[1]) / 1e9 for p in pts],
                style,
                color=color,
                marker="o",
                label=f"{label}, {mode}",
            )
    if not axes[0].lines:
        plt.close(fig)
        return None
    memory = "peak device memory (GB)" if _is_jax(report) else "peak RSS (GB)"
    for ax, ylabel in zip(axes, ("median time (s)", memory)):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel(f"sequence length (B=1, 8 heads x 64, {dtype})")
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(
        f"MultiHeadAttention on {report.get('device_name', report['machine'])}"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
