"""Decoding with a key/value cache: cached steps against recomputing the
prefix, and our cached MultiHeadAttention against keras-hub's.

One attention layer, `MultiHeadAttention` with 8 heads x 64 (model dim
512), batch 1, float32, under the current `KERAS_BACKEND` (TensorFlow or
JAX). At each context length `C` (256, 1024 and 4096 tokens; the cache
holds `max_length = C` positions), in one process:

- Prefill: one forward over a prompt of `C` tokens that fills the cache
  from index 0 (ours with `use_causal_mask=True`; keras-hub's with the
  causal `(1, C, C)` `attention_mask` it needs).
- Cached decode step: one token written into the cache at
  `cache_update_index` and attending the cache; ours with
  `use_causal_mask=True`, keras-hub's `CachedMultiHeadAttention` (the same
  weights) with the mask `arange(max_length) <= index` built in the step.
  The steps run as a decode loop over the last `--steps` positions
  `C - steps, ..., C - 1`, each step's cache fed to the next, starting from
  the prefilled cache (the steps rewrite those slots with the same keys and
  values, so the work is that of a fresh decode step at that position).
- Recompute: no cache; the full causal forward over the `C` tokens (the
  prefix and the new token; the rows past the new token are masked out by
  causality) and the new token's row taken. One compilation for every
  position, so each step costs a forward over `C` tokens: at the measured
  positions (within `--steps` of `C`) that is the prefix length.
- GroupedQueryAttention, 8 query heads with 2 and 1 key/value heads: the
  cached step, and the cache's bytes against MHA's (computed from the shape
  `(batch, 2, max_length, kv_heads, head_dim)` and checked against the
  returned array's `nbytes`).

Every contender is a compiled step (`tf.function(jit_compile=False,
autograph=False)` on TensorFlow, `jax.jit` over `stateless_call` on JAX),
the cache index passed as a tensor so one compilation serves all steps (the
report records the number of traces), called twice before timing. The
contenders are interleaved: each decode position (and each prefill
repetition) runs every contender once, back to back, in an order that
alternates, so that all of them see the same load on a shared machine.
Times are medians of the per-call wall times (the output fetched to
NumPy); `--rounds N` repeats everything and reports the median of the
rounds' medians. Ours / keras-hub is the median of the ratios of the calls
run back to back (the ratio of the medians is reported too). The outputs
are checked: ours against keras-hub's (prefill, every step and the caches)
within 1e-5, cached steps against the recompute rows within 1e-4 (the
weights are scaled for outputs of order 1); the run exits 1 if a check
fails.

Targets: cached >= 10x faster per token than recompute at C=1024; ours
never slower than keras-hub per step (ours / hub <= 1.0 at every C).

Usage:
    python -m benchmarks.decoding                 # about a minute on 2 cores
    python -m benchmarks.decoding --rounds 3      # steadier; about 2 minutes
    KERAS_BACKEND=jax python -m benchmarks.decoding
    python -m benchmarks.decoding --smoke         # seconds; used by the tests

Writes `benchmarks/results/decoding-<machine>-<date>.json` and `.md`
(`decoding-jax-<machine>-<date>` under JAX).
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

from benchmarks._common import RESULTS_DIR
from benchmarks._common import checks_verdict
from benchmarks._common import compile_call
from benchmarks._common import finish
from benchmarks._common import run_footer
from benchmarks._common import run_header
from benchmarks._common import targets_table
from benchmarks._common import versions as tensorflow_versions

HEADS = 8
HEAD_DIM = 64
BATCH = 1
CONTEXTS = (256, 1024, 4096)
GQA_KV_HEADS = (2, 1)
SPEEDUP_TARGET = 10.0  # cached against recompute, per token
SPEEDUP_CONTEXT = 1024
HUB_RATIO_TARGET = 1.0  # ours / keras-hub, per step
HUB_TOLERANCE = 1e-5  # max |ours - keras-hub|, same weights
RECOMPUTE_TOLERANCE = 1e-4  # max |cached - recompute|

STEPS = ("cached", "hub", "recompute") + tuple(
    f"gqa_kv{n}" for n in GQA_KV_HEADS
)
PREFILLS = ("ours", "hub") + tuple(f"gqa_kv{n}" for n in GQA_KV_HEADS)
# The prefill whose cache a decode loop starts from.
_START_CACHE = {"cached": "ours"}


# ----------------------------------------------------------------------------
# Compiled steps
# ----------------------------------------------------------------------------
def _backend():
    import keras

    return keras.backend.backend()


def cached_step(call, cache, token, index):
    return call(
        token,
        token,
        use_causal_mask=True,
        cache=cache,
        cache_update_index=index,
    )


def hub_step(call, cache, token, index):
    from keras import ops

    max_length = cache.shape[2]
    mask = ops.arange(max_length)[None, None, :] <= index
    mask = ops.broadcast_to(mask, (ops.shape(token)[0], 1, max_length))
    return call(
        token, token, attention_mask=mask, cache=cache, cache_update_index=index
    )


def recompute_step(call, sequence, index):
    from keras import ops

    output = call(sequence, sequence, use_causal_mask=True)
    return ops.expand_dims(ops.take(output, index, axis=1), 1)


def cached_prefill(call, cache, prompt):
    return call(
        prompt, prompt, use_causal_mask=True, cache=cache, cache_update_index=0
    )


def hub_prefill(call, cache, prompt):
    from keras import ops

    length, max_length = prompt.shape[1], cache.shape[2]
    mask = ops.arange(max_length)[None, :] <= ops.arange(length)[:, None]
    mask = ops.broadcast_to(mask, (ops.shape(prompt)[0], length, max_length))
    return call(
        prompt, prompt, attention_mask=mask, cache=cache, cache_update_index=0
    )


# ----------------------------------------------------------------------------
# Layers and timing
# ----------------------------------------------------------------------------
def _weights_like(layer, seed, fan_in):
    """Kernels with std `1 / sqrt(fan_in)` (every projection here has the
    model dim as fan-in), biases with std 0.02: outputs of order 1."""
    rng = np.random.default_rng(seed)
    return [
        (
            rng.standard_normal(w.shape)
            * (0.02 if len(w.shape) < 3 else 1 / np.sqrt(fan_in))
        ).astype("float32")
        for w in layer.get_weights()
    ]


def build_layers(heads, head_dim):
    """Ours and keras-hub's MHA (the same weights) and our GQA layers."""
    import keras
    import keras_hub

    import keras_attention as ka

    dim = heads * head_dim
    x = np.zeros((BATCH, 8, dim), "float32")
    hub = keras_hub.layers.CachedMultiHeadAttention(
        num_heads=heads, key_dim=head_dim
    )
    ours = ka.MultiHeadAttention(num_heads=heads, key_dim=head_dim)
    hub(x, x)
    ours(x, x)
    hub.set_weights(_weights_like(hub, seed=0, fan_in=dim))
    ours.set_weights(hub.get_weights())
    layers = dict(ours=ours, hub=hub)
    for kv_heads in GQA_KV_HEADS:
        gqa = ka.GroupedQueryAttention(
            head_dim=head_dim,
            num_query_heads=heads,
            num_key_value_heads=min(kv_heads, heads),
        )
        gqa(x, x)
        gqa.set_weights(_weights_like(gqa, seed=kv_heads, fan_in=dim))
        layers[f"gqa_kv{kv_heads}"] = gqa
    assert keras.backend.backend() in ("tensorflow", "jax")
    return layers


def _numpy(x):
    from keras import ops

    return ops.convert_to_numpy(x)


def _max_diff(a, b):
    return float(np.max(np.abs(np.asarray(a) - np.asarray(b))))


def _empty_cache(layer, max_length):
    from keras import ops

    kv_heads = getattr(layer, "num_key_value_heads", None) or layer.num_heads
    return ops.zeros((BATCH, 2, max_length, kv_heads, layer.key_dim), "float32")


class Context:
    """The compiled steps of every contender at one context length."""

    def __init__(self, layers, length, steps, seed):
        from keras import ops

        self.length = length
        dim = layers["ours"].num_heads * layers["ours"].key_dim
        rng = np.random.default_rng(seed)
        sequence = rng.standard_normal((BATCH, length, dim)).astype("float32")
        self.sequence = ops.convert_to_tensor(sequence)
        self.positions = list(range(length - steps, length))
        self.tokens = {
            i: ops.convert_to_tensor(sequence[:, i : i + 1])
            for i in self.positions
        }
        self.indices = {
            i: ops.convert_to_tensor(np.int32(i)) for i in self.positions
        }
        prefill_fns = dict(
            ours=(layers["ours"], cached_prefill),
            hub=(layers["hub"], hub_prefill),
        )
        step_fns = dict(
            cached=(layers["ours"], cached_step),
            hub=(layers["hub"], hub_step),
            recompute=(layers["ours"], recompute_step),
        )
        for kv_heads in GQA_KV_HEADS:
            name = f"gqa_kv{kv_heads}"
            prefill_fns[name] = (layers[name], cached_prefill)
            step_fns[name] = (layers[name], cached_step)
        self.cache_layer = {
            "ours": layers["ours"],
            "hub": layers["hub"],
            "cached": layers["ours"],
            **{k: v for k, v in layers.items() if k.startswith("gqa")},
        }
        self.prefill = {
            name: compile_call(layer, fn)
            for name, (layer, fn) in prefill_fns.items()
        }
        self.step = {
            name: compile_call(layer, fn)
            for name, (layer, fn) in step_fns.items()
        }
        self.prefill_outputs = {}
        self.caches = {}
        self.step_outputs = {}

    def _prefill_once(self, name):
        fn, _ = self.prefill[name]
        cache = _empty_cache(self.cache_layer[name], self.length)
        start = time.perf_counter()
        output, new_cache = fn(cache, self.sequence)
        output = _numpy(output)
        elapsed = time.perf_counter() - start
        self.prefill_outputs[name] = output
        self.caches[name] = new_cache
        return elapsed

    def _step_once(self, name, cache, i):
        fn, _ = self.step[name]
        start = time.perf_counter()
        if name == "recompute":
            output = fn(self.sequence, self.indices[i])
        else:
            output, cache = fn(cache, self.tokens[i], self.indices[i])
        output = _numpy(output)
        return time.perf_counter() - start, output, cache

    def warm_up(self):
        for name in PREFILLS:
            for _ in range(2):
                self._prefill_once(name)
        for name in STEPS:
            cache = self.caches.get(_START_CACHE.get(name, name))
            for _ in range(2):
                self._step_once(name, cache, self.positions[0])

    def run_round(self, round_index, prefill_reps):
        """Prefills, then one decode loop per contender, interleaved: every
        repetition (position) runs each contender once, back to back, in an
        order that alternates, so that all see the same machine load."""
        prefill_times = {name: [] for name in PREFILLS}
        for rep in range(prefill_reps):
            flip = (round_index + rep) % 2 == 1
            for name in PREFILLS[::-1] if flip else PREFILLS:
                prefill_times[name].append(self._prefill_once(name))
        caches = {
            name: self.caches[_START_CACHE.get(name, name)]
            for name in STEPS
            if name != "recompute"
        }
        step_times = {name: [] for name in STEPS}
        outputs = {name: [] for name in STEPS}
        for n, i in enumerate(self.positions):
            flip = (round_index + n) % 2 == 1
            for name in STEPS[::-1] if flip else STEPS:
                elapsed, output, cache = self._step_once(
                    name, caches.get(name), i
                )
                caches[name] = cache
                step_times[name].append(elapsed)
                outputs[name].append(output)
        for name in STEPS:
            self.step_outputs[name] = np.concatenate(outputs[name], axis=1)
            if name != "recompute":
                self.caches[f"{name}_after_steps"] = caches[name]
        return prefill_times, step_times

    def traces(self):
        return {
            "prefill": {k: t() for k, (_, t) in self.prefill.items()},
            "step": {k: t() for k, (_, t) in self.step.items()},
        }

    def checks(self):
        outputs, prefill = self.step_outputs, self.prefill_outputs
        caches = {k: _numpy(v) for k, v in self.caches.items()}
        return dict(
            hub_prefill_output=_max_diff(prefill["ours"], prefill["hub"]),
            hub_prefill_cache=_max_diff(caches["ours"], caches["hub"]),
            hub_step_outputs=_max_diff(outputs["cached"], outputs["hub"]),
            hub_step_cache=_max_diff(
                caches["cached_after_steps"], caches["hub_after_steps"]
            ),
            recompute_step_outputs=_max_diff(
                outputs["cached"], outputs["recompute"]
            ),
            # The prefill's last rows are the same positions' outputs.
            prefill_vs_steps=_max_diff(
                prefill["ours"][:, self.positions[0] :], outputs["cached"]
            ),
        )

    def cache_memory(self):
        rows = {}
        for name, layer in (("mha", self.cache_layer["ours"]),) + tuple(
            (n, self.cache_layer[n]) for n in PREFILLS if n.startswith("gqa")
        ):
            kv_heads = layer.num_key_value_heads or layer.num_heads
            shape = (BATCH, 2, self.length, kv_heads, layer.key_dim)
            computed = int(np.prod(shape)) * 4  # float32
            actual = _numpy(self.caches["ours" if name == "mha" else name])
            rows[name] = dict(
                kv_heads=kv_heads,
                shape=list(shape),
                bytes=computed,
                actual_nbytes=int(actual.nbytes),
                actual_shape=list(actual.shape),
                checked=computed == actual.nbytes
                and tuple(actual.shape) == shape,
            )
        return rows


def _median(times):
    return float(np.median(times))


def run(contexts, steps, rounds, prefill_reps, heads, head_dim):
    layers = build_layers(heads, head_dim)
    rows = []
    for length in contexts:
        start = time.perf_counter()
        ctx = Context(layers, length, min(steps, length), seed=length)
        ctx.warm_up()
        warm_up_s = time.perf_counter() - start
        prefill_rounds = {name: [] for name in PREFILLS}
        step_rounds = {name: [] for name in STEPS}
        prefill_times = {name: [] for name in PREFILLS}
        step_times = {name: [] for name in STEPS}
        paired = []  # ours / hub of the steps run back to back
        paired_prefill = []
        for round_index in range(rounds):
            p_times, s_times = ctx.run_round(round_index, prefill_reps)
            for name in PREFILLS:
                prefill_times[name] += p_times[name]
                prefill_rounds[name].append(_median(p_times[name]))
            for name in STEPS:
                step_times[name] += s_times[name]
                step_rounds[name].append(_median(s_times[name]))
            paired += [a / b for a, b in zip(s_times["cached"], s_times["hub"])]
            paired_prefill += [
                a / b for a, b in zip(p_times["ours"], p_times["hub"])
            ]
        step_s = {k: _median(v) for k, v in step_rounds.items()}
        prefill_s = {k: _median(v) for k, v in prefill_rounds.items()}
        row = dict(
            context=length,
            positions=[ctx.positions[0], ctx.positions[-1]],
            step_s=step_s,
            tokens_per_s={k: 1.0 / v for k, v in step_s.items()},
            step_round_medians_s=step_rounds,
            step_times_s=step_times,
            prefill_s=prefill_s,
            prefill_round_medians_s=prefill_rounds,
            prefill_times_s=prefill_times,
            speedup_vs_recompute=step_s["recompute"] / step_s["cached"],
            # The ratio of the medians, and the median of the ratios of
            # the steps run back to back (less sensitive to other load).
            ours_over_hub_step=step_s["cached"] / step_s["hub"],
            ours_over_hub_step_paired=_median(paired),
            ours_over_hub_prefill=prefill_s["ours"] / prefill_s["hub"],
            ours_over_hub_prefill_paired=_median(paired_prefill),
            max_abs_diff=ctx.checks(),
            # The scale of the compared values: the largest |output|.
            output_max_abs=float(np.max(np.abs(ctx.prefill_outputs["hub"]))),
            cache_memory=ctx.cache_memory(),
            traces=ctx.traces(),
            warm_up_s=warm_up_s,
        )
        rows.append(row)
        print(
            f"C={length:5d}  cached {step_s['cached'] * 1e3:8.3f} ms  "
            f"recompute {step_s['recompute'] * 1e3:8.3f} ms  "
            f"({row['speedup_vs_recompute']:.1f}x)  hub "
            f"{step_s['hub'] * 1e3:8.3f} ms (ours/hub "
            f"{row['ours_over_hub_step_paired']:.2f})  prefill ours "
            f"{prefill_s['ours'] * 1e3:.1f} ms, hub "
            f"{prefill_s['hub'] * 1e3:.1f} ms",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def evaluate(rows):
    """The targets and the output checks."""
    targets = []
    speedup_row = next(
        (r for r in rows if r["context"] == SPEEDUP_CONTEXT), None
    )
    if speedup_row:
        value = speedup_row["speedup_vs_recompute"]
        targets.append(
            dict(
                target=f"cached vs recompute, C={SPEEDUP_CONTEXT}",
                goal=f">= {SPEEDUP_TARGET:.0f}x faster per token",
                measured=f"{value:.1f}x",
                met=value >= SPEEDUP_TARGET,
            )
        )
    for row in rows:
        ratio = row["ours_over_hub_step_paired"]
        targets.append(
            dict(
                target=f"ours / keras-hub per step, C={row['context']}",
                goal=f"<= {HUB_RATIO_TARGET:.1f}",
                measured=f"{ratio:.2f} (ratio of medians "
                f"{row['ours_over_hub_step']:.2f})",
                met=ratio <= HUB_RATIO_TARGET,
            )
        )
    checks = []
    for row in rows:
        diffs = row["max_abs_diff"]
        for key, value in diffs.items():
            tolerance = (
                HUB_TOLERANCE if key.startswith("hub") else RECOMPUTE_TOLERANCE
            )
            checks.append(
                dict(
                    context=row["context"],
                    check=key,
                    max_abs_diff=value,
                    tolerance=tolerance,
                    passed=value <= tolerance,
                )
            )
        for name, mem in row["cache_memory"].items():
            checks.append(
                dict(
                    context=row["context"],
                    check=f"cache_bytes_{name}",
                    max_abs_diff=abs(mem["bytes"] - mem["actual_nbytes"]),
                    tolerance=0,
                    passed=mem["checked"],
                )
            )
        for kind, traces in row["traces"].items():
            for name, count in traces.items():
                checks.append(
                    dict(
                        context=row["context"],
                        check=f"one_compilation_{kind}_{name}",
                        max_abs_diff=count,
                        tolerance=1,
                        passed=count in (None, 1),
                    )
                )
    return targets, checks


def _ms(seconds):
    return f"{seconds * 1e3:.2f} ms" if seconds < 10 else f"{seconds:.1f} s"


def _kb(n):
    return f"{n / 2**20:.2f} MiB" if n >= 2**20 else f"{n / 2**10:.0f} KiB"


def markdown(report):
    heads, head_dim = report["heads"], report["head_dim"]
    lines = [
        f"# Decoding with a KV cache: {report['machine']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Backend: {report['backend']}. Device: {report['device']}. "
        f"Versions: {report['versions']}.",
        "",
        f"One attention layer, {heads} heads x {head_dim} (model dim "
        f"{heads * head_dim}), batch {BATCH}, float32; the cache holds "
        "`max_length` = C positions. Decode steps: the median per-step time "
        f"of a decode loop over positions C-{report['steps']}..C-1 (each "
        "step's cache fed to the next); recompute: the full causal forward "
        "over the C tokens, the new token's row taken. Ours: "
        "`keras_attention.MultiHeadAttention` (`use_causal_mask=True`); "
        "keras-hub: `keras_hub.layers.CachedMultiHeadAttention` with the "
        "same weights and the mask `arange(max_length) <= index`. Every "
        f"step is one compiled function ({report['compiled_as']}), the "
        "index a tensor, warmed up before timing; "
        f"{report['rounds']} round(s), medians.",
        "",
        *targets_table(report["targets"]),
        "",
        "## Per-token decode step",
        "",
        "Ours / hub: the median of the ratios of steps run back to back "
        "(in brackets: the ratio of the medians).",
        "",
        "| C | cached | tokens/s | recompute | tokens/s | cached speedup "
        "| keras-hub | ours / hub "
        + "".join(f"| GQA {n} kv " for n in GQA_KV_HEADS)
        + "|",
        "|---" * (8 + len(GQA_KV_HEADS)) + "|",
    ]
    for row in report["rows"]:
        s, tps = row["step_s"], row["tokens_per_s"]
        lines.append(
            f"| {row['context']} | {_ms(s['cached'])} | "
            f"{tps['cached']:.0f} | {_ms(s['recompute'])} | "
            f"{tps['recompute']:.1f} | {row['speedup_vs_recompute']:.1f}x | "
            f"{_ms(s['hub'])} | {row['ours_over_hub_step_paired']:.2f} "
            f"({row['ours_over_hub_step']:.2f}) "
            + "".join(f"| {_ms(s[f'gqa_kv{n}'])} " for n in GQA_KV_HEADS)
            + "|"
        )
    lines += [
        "",
        "## Prefill (a prompt of C tokens into an empty cache)",
        "",
        "| C | ours | keras-hub | ours / hub "
        + "".join(f"| GQA {n} kv " for n in GQA_KV_HEADS)
        + "|",
        "|---" * (4 + len(GQA_KV_HEADS)) + "|",
    ]
    for row in report["rows"]:
        p = row["prefill_s"]
        lines.append(
            f"| {row['context']} | {_ms(p['ours'])} | {_ms(p['hub'])} | "
            f"{row['ours_over_hub_prefill_paired']:.2f} "
            f"({row['ours_over_hub_prefill']:.2f}) "
            + "".join(f"| {_ms(p[f'gqa_kv{n}'])} " for n in GQA_KV_HEADS)
            + "|"
        )
    lines += [
        "",
        "## Cache memory (batch 1, float32)",
        "",
        "Bytes from the shape `(batch, 2, max_length, kv_heads, head_dim)`; "
        "checked: equal to the returned cache's `nbytes`.",
        "",
        f"| C | MHA ({heads} kv heads) "
        + "".join(f"| GQA ({n} kv) " for n in GQA_KV_HEADS)
        + "| checked |",
        "|---" * (3 + len(GQA_KV_HEADS)) + "|",
    ]
    for row in report["rows"]:
        mem = row["cache_memory"]
        mha = mem["mha"]["bytes"]
        cells = "".join(
            f"| {_kb(mem[f'gqa_kv{n}']['bytes'])} "
            f"({mem[f'gqa_kv{n}']['bytes'] / mha:.3g}x) "
            for n in GQA_KV_HEADS
        )
        ok = all(m["checked"] for m in mem.values())
        lines.append(
            f"| {row['context']} | {_kb(mha)} {cells}| "
            f"{'yes' if ok else '**no**'} |"
        )
    lines += [
        "",
        "## Output checks (max absolute difference)",
        "",
        "| C | ours vs hub: prefill | cache | steps | step cache "
        "| cached vs recompute | prefill rows vs steps |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        d = row["max_abs_diff"]
        lines.append(
            f"| {row['context']} | {d['hub_prefill_output']:.1e} | "
            f"{d['hub_prefill_cache']:.1e} | {d['hub_step_outputs']:.1e} | "
            f"{d['hub_step_cache']:.1e} | "
            f"{d['recompute_step_outputs']:.1e} | "
            f"{d['prefill_vs_steps']:.1e} |"
        )
    lines += [
        "",
        f"Tolerances: ours vs keras-hub {HUB_TOLERANCE:g}, cached vs "
        f"recompute {RECOMPUTE_TOLERANCE:g} (the outputs' largest magnitude: "
        + ", ".join(
            f"{r['output_max_abs']:.2f} at C={r['context']}"
            for r in report["rows"]
        )
        + "); each compiled function traced once. "
        + checks_verdict(report, lambda c: f"{c['check']} at C={c['context']}"),
        "",
        run_footer(report),
    ]
    return "\n".join(lines) + "\n"


def versions(backend):
    import keras
    import keras_hub

    import keras_attention

    if backend == "tensorflow":
        text = tensorflow_versions()
    else:
        import jax

        text = (
            f"Python {platform.python_version()}, JAX {jax.__version__}, "
            f"Keras {keras.__version__}, keras_attention "
            f"{keras_attention.__version__}"
        )
    return f"{text}, keras-hub {keras_hub.__version__}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny contexts (16, 32), one round, to check the pipeline",
    )
    parser.add_argument(
        "--contexts",
        type=int,
        nargs="+",
        default=None,
        help=f"context lengths (default {' '.join(map(str, CONTEXTS))})",
    )
    parser.add_argument(
        "--steps",
        type=int,
        default=None,
        help="decode steps per round and contender (default 16; smoke 2)",
    )
    parser.add_argument(
        "--prefill-reps",
        type=int,
        default=None,
        help="prefill calls per round and contender (default 3; smoke 1)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="repeat the measurements this many times, alternating the "
        "order, and report the median of the rounds' medians",
    )
    parser.add_argument(
        "--output-dir", "--out", dest="output_dir", default=RESULTS_DIR
    )
    parser.add_argument(
        "--name",
        default=None,
        help="result file stem (default decoding[-jax]-<machine>-<date>)",
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    contexts = args.contexts or ((16, 32) if smoke else CONTEXTS)
    steps = args.steps or (2 if smoke else 16)
    prefill_reps = args.prefill_reps or (1 if smoke else 3)

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    backend = _backend()
    rows = run(contexts, steps, args.rounds, prefill_reps, HEADS, HEAD_DIM)
    targets, checks = evaluate(rows)
    report = dict(
        **run_header("benchmarks.decoding", backend, argv, versions(backend)),
        compiled_as=(
            "tf.function(jit_compile=False, autograph=False)"
            if backend == "tensorflow"
            else "jax.jit of stateless_call"
        ),
        heads=HEADS,
        head_dim=HEAD_DIM,
        batch=BATCH,
        dtype="float32",
        contexts=list(contexts),
        steps=steps,
        prefill_reps=prefill_reps,
        rounds=args.rounds,
        targets=targets,
        checks=checks,
        rows=rows,
    )
    return finish(
        report, markdown, args, "decoding", backend, started, load_before
    )


if __name__ == "__main__":
    sys.exit(main())
