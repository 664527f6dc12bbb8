"""Generation speed per sampler: `TokenGenerator` on a converted keras-hub
GPT-2 against keras-hub's own `generate`, with the same weights.

A `keras_hub.models.GPT2CausalLM` (random weights from the `GPT2Backbone`
constructor: vocabulary 5000, 4 layers, 4 heads, hidden 256, feed-forward
1024, `max_sequence_length` 256; the token embedding scaled by 10 so that
the next-token distributions are peaked, as a trained model's are), batch
4, equal prompts of 32 tokens, continued to `max_length` 160. Per sampler
(greedy, top-p with p=0.9, beam search with 4 beams):

- ours: `TokenGenerator(convert_causal_lm(model), max_length,
  sampler=keras_attention.samplers.X)`, one compiled call
  (`tf.function(jit_compile=False, autograph=False)`, as TF Serving runs
  it; `jax.jit` of its `stateless_call`; eager under `torch.no_grad()` on
  PyTorch), then the tokens copied to NumPy;
- keras-hub: `model.compile(sampler=keras_hub.samplers.X)` and
  `model.generate({"token_ids", "padding_mask"}, stop_token_ids=None)`,
  which compiles itself (`make_generate_function`) and returns NumPy.

Both get the same input tensors and one untimed first call (the
compilation). Then `--reps` calls each, interleaved in alternating order;
times are medians, ours / keras-hub the median of the ratios of calls run
back to back. Tokens/s: new tokens x batch / time. Checks (exit 1 on
failure): greedy and beam tokens equal keras-hub's; top-p only the shape
and the kept prompt (its random draws differ by design).

Targets: ours >= keras-hub's tokens/s for greedy and top-p; beam within
1.2x of keras-hub's time.

Usage:
    python -m benchmarks.generation                  # about 4 minutes
    KERAS_BACKEND=jax python -m benchmarks.generation  # about 3 minutes
    KERAS_BACKEND=torch python -m benchmarks.generation --max-length 64 --reps 3
    python -m benchmarks.generation --smoke          # seconds; the tests

Writes `benchmarks/results/generation-<machine>-<date>.json` and `.md`
(`generation-jax-...`, `generation-torch-...` under JAX and PyTorch).
"""

import argparse
import os
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
from benchmarks._common import versions as backend_versions

SIZES = dict(
    vocabulary_size=5000,
    num_layers=4,
    num_heads=4,
    hidden_dim=256,
    intermediate_dim=1024,
    max_sequence_length=256,
)
SMOKE_SIZES = dict(
    vocabulary_size=64,
    num_layers=1,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=32,
)
BATCH, PROMPT_LENGTH, MAX_LENGTH = 4, 32, 160
SMOKE_BATCH, SMOKE_PROMPT_LENGTH, SMOKE_MAX_LENGTH = 2, 4, 12
# With the backbone's initializer the logits are nearly uniform: beam
# scores then tie to float32 rounding, and any two implementations part.
EMBEDDING_SCALE = 10.0
TOP_P = 0.9
NUM_BEAMS = 4
SEED = 1
SAMPLERS = ("greedy", "top_p", "beam")
CONTENDERS = ("ours", "hub")
# The largest ours / keras-hub time per sampler (greedy, top-p: tokens/s
# at least keras-hub's).
TIME_RATIO_TARGETS = dict(greedy=1.0, top_p=1.0, beam=1.2)
# The samplers whose tokens must equal keras-hub's.
DETERMINISTIC = ("greedy", "beam")


def _backend():
    import keras

    return keras.backend.backend()


# ----------------------------------------------------------------------------
# Model and contenders
# ----------------------------------------------------------------------------
def build_models(sizes, seed=0):
    """keras-hub's GPT-2 causal LM and its conversion to our layers."""
    import keras
    import keras_hub
    from keras import ops

    from keras_attention.compat.keras_hub import convert_causal_lm

    keras.utils.set_random_seed(seed)
    backbone = keras_hub.models.GPT2Backbone(**sizes)
    model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
    embeddings = backbone.token_embedding.embeddings
    embeddings.assign(ops.convert_to_numpy(embeddings) * EMBEDDING_SCALE)
    return model, convert_causal_lm(model)


def make_samplers(name):
    """`(ours, keras-hub's)`: the same sampler and configuration."""
    import keras_hub

    from keras_attention import samplers

    if name == "greedy":
        return samplers.GreedySampler(), keras_hub.samplers.GreedySampler()
    if name == "top_p":
        return (
            samplers.TopPSampler(p=TOP_P, seed=SEED),
            keras_hub.samplers.TopPSampler(p=TOP_P, seed=SEED),
        )
    return (
        samplers.BeamSampler(num_beams=NUM_BEAMS),
        keras_hub.samplers.BeamSampler(num_beams=NUM_BEAMS),
    )


def ours_call(converted, sampler, max_length, prompt_ids):
    """`(call, traces)`: `call()` generates from `prompt_ids` with a
    compiled `TokenGenerator` and returns NumPy tokens."""
    from keras import ops

    import keras_attention

    generator = keras_attention.TokenGenerator(
        converted, max_length, sampler=sampler
    )
    generator.build(tuple(prompt_ids.shape))  # for `stateless_call`
    if _backend() == "torch":
        import torch

        def call():
            with torch.no_grad():
                return ops.convert_to_numpy(generator(prompt_ids))

        return call, lambda: None
    compiled, traces = compile_call(generator, lambda call, x: call(x))
    return (lambda: ops.convert_to_numpy(compiled(prompt_ids))), traces


def hub_call(model, sampler, inputs):
    """`(call, traces)`: `call()` is keras-hub's `generate` with `sampler`
    on `inputs`, its `token_ids`."""
    model.compile(sampler=sampler)

    def call():
        return model.generate(dict(inputs), stop_token_ids=None)["token_ids"]

    def traces():
        count = getattr(
            model.generate_function, "experimental_get_tracing_count", None
        )
        return count() if callable(count) else None

    return call, traces


def hub_compiled_as(model):
    """How keras-hub's `make_generate_function` compiles `generate_step`."""
    backend = _backend()
    if backend == "tensorflow":
        return f"tf.function(generate_step, jit_compile={model.jit_compile})"
    if backend == "jax":
        return "jax.jit of generate_step, the variables as arguments"
    return "eager generate_step under torch.no_grad()"


def ours_compiled_as():
    return dict(
        tensorflow="tf.function(jit_compile=False, autograph=False)",
        jax="jax.jit of stateless_call",
        torch="eager under torch.no_grad()",
    )[_backend()]


# ----------------------------------------------------------------------------
# Timing and checks
# ----------------------------------------------------------------------------
def _median(values):
    return float(np.median(values))


def check_tokens(name, tokens, prompt, max_length, vocabulary_size):
    """The output checks of one sampler: shapes, prompts kept, tokens in
    the vocabulary, and ours equal to keras-hub's where deterministic."""
    batch = prompt.shape[0]
    checks = {}
    for key, value in tokens.items():
        checks[f"{key}_shape"] = tuple(value.shape) == (batch, max_length)
        checks[f"{key}_prompt_kept"] = bool(
            np.array_equal(value[:, : prompt.shape[1]], prompt)
        )
        checks[f"{key}_in_vocabulary"] = bool(
            ((value >= 0) & (value < vocabulary_size)).all()
        )
    differing = int(np.sum(tokens["ours"] != tokens["hub"]))
    if name in DETERMINISTIC:
        checks["equal_to_keras_hub"] = differing == 0
    return checks, differing


def measure(calls, reps):
    """Times `calls` (`{contender: call}`) after one first call each."""
    first_call_s, tokens = {}, {}
    for key in CONTENDERS:
        start = time.perf_counter()
        tokens[key] = np.asarray(calls[key]())
        first_call_s[key] = time.perf_counter() - start
    times = {key: [] for key in CONTENDERS}
    for rep in range(reps):
        order = CONTENDERS if rep % 2 == 0 else CONTENDERS[::-1]
        for key in order:
            start = time.perf_counter()
            tokens[key] = np.asarray(calls[key]())
            times[key].append(time.perf_counter() - start)
    return first_call_s, times, tokens


def run(sizes, batch, prompt_length, max_length, reps, sampler_names):
    from keras import ops

    model, converted = build_models(sizes)
    vocabulary_size = sizes["vocabulary_size"]
    rng = np.random.default_rng(SEED)
    prompt = rng.integers(1, vocabulary_size, (batch, prompt_length))
    prompt = prompt.astype("int32")
    buffer = np.zeros((batch, max_length), "int32")
    buffer[:, :prompt_length] = prompt
    inputs = dict(
        token_ids=ops.convert_to_tensor(buffer),
        padding_mask=ops.convert_to_tensor(
            np.arange(max_length)[None, :] < np.full((batch, 1), prompt_length)
        ),
    )
    prompt_ids = ops.convert_to_tensor(prompt)
    new_tokens = batch * (max_length - prompt_length)
    rows = []
    for name in sampler_names:
        ours_sampler, hub_sampler = make_samplers(name)
        ours, ours_traces = ours_call(
            converted, ours_sampler, max_length, prompt_ids
        )
        hub, hub_traces = hub_call(model, hub_sampler, inputs)
        first_call_s, times, tokens = measure(dict(ours=ours, hub=hub), reps)
        time_s = {key: _median(times[key]) for key in CONTENDERS}
        paired = [a / b for a, b in zip(times["ours"], times["hub"])]
        checks, differing = check_tokens(
            name, tokens, prompt, max_length, vocabulary_size
        )
        row = dict(
            sampler=name,
            ours_config=ours_sampler.get_config(),
            hub_config=hub_sampler.get_config(),
            time_s=time_s,
            times_s=times,
            tokens_per_s={k: new_tokens / v for k, v in time_s.items()},
            # ours / keras-hub time: the ratio of the medians, and the
            # median of the ratios of calls run back to back.
            ours_over_hub_time=time_s["ours"] / time_s["hub"],
            ours_over_hub_time_paired=_median(paired),
            first_call_s=first_call_s,
            traces=dict(ours=ours_traces(), hub=hub_traces()),
            hub_compiled_as=hub_compiled_as(model),
            checks=checks,
            differing_tokens=differing,
        )
        rows.append(row)
        tps = row["tokens_per_s"]
        print(
            f"{name:7s} ours {time_s['ours']:7.3f} s ({tps['ours']:7.1f} "
            f"tokens/s)  keras-hub {time_s['hub']:7.3f} s "
            f"({tps['hub']:7.1f} tokens/s)  ours/hub time "
            f"{row['ours_over_hub_time_paired']:.2f}  differing tokens "
            f"{differing}",
            flush=True,
        )
    return rows


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def evaluate(rows):
    """The targets and the output checks."""
    targets, checks = [], []
    for row in rows:
        name = row["sampler"]
        ratio, of_medians = (
            row["ours_over_hub_time_paired"],
            row["ours_over_hub_time"],
        )
        limit = TIME_RATIO_TARGETS[name]
        if name == "beam":
            goal = f"ours / keras-hub time <= {limit:.1f}x"
            measured = f"{ratio:.2f}x (ratio of medians {of_medians:.2f}x)"
        else:
            goal = "ours / keras-hub tokens/s >= 1.0x"
            measured = (
                f"{1 / ratio:.2f}x (ratio of medians {1 / of_medians:.2f}x)"
            )
        targets.append(
            dict(target=name, goal=goal, measured=measured, met=ratio <= limit)
        )
        for check, passed in row["checks"].items():
            checks.append(dict(sampler=name, check=check, passed=passed))
        for key, count in row["traces"].items():
            checks.append(
                dict(
                    sampler=name,
                    check=f"one_compilation_{key}",
                    passed=count in (None, 1),
                )
            )
    return targets, checks


def _time(seconds):
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def markdown(report):
    sizes = report["sizes"]
    lines = [
        f"# Generation per sampler: {report['machine']}, {report['date']}",
        "",
        f"Command: `{report['command']}`",
        "",
        f"Backend: {report['backend']}. Device: {report['device']}. "
        f"Versions: {report['versions']}.",
        "",
        "keras-hub `GPT2CausalLM`, random weights: vocabulary "
        f"{sizes['vocabulary_size']}, {sizes['num_layers']} layers, "
        f"{sizes['num_heads']} heads, hidden {sizes['hidden_dim']}, "
        f"feed-forward {sizes['intermediate_dim']} (token embedding x"
        f"{EMBEDDING_SCALE:g}); batch {report['batch']}, prompts of "
        f"{report['prompt_length']} tokens continued to max_length "
        f"{report['max_length']} ({report['new_tokens']} new tokens per "
        "row), float32, no stop tokens.",
        "",
        "Ours: `TokenGenerator(convert_causal_lm(model), max_length, "
        f"sampler=...)` compiled as {report['ours_compiled_as']}; the time "
        "covers the call (prefill and loop) on a prompt tensor and the "
        "copy of the tokens to NumPy. keras-hub: `model.generate(inputs, "
        "stop_token_ids=None)`, its `generate_step` compiled by keras-hub "
        f"as {report['hub_compiled_as']}; the time covers generate's "
        "Python around the compiled function and its NumPy outputs. Same "
        "input tensors; one first call each (compilation) before timing, "
        f"then {report['reps']} interleaved calls each, medians; ours / "
        "hub is the median of the ratios of calls run back to back.",
        "",
        *targets_table(report["targets"]),
        "",
        "## Per sampler",
        "",
        "Tokens/s: new tokens x batch / time (beam: the best beam's; "
        f"it decodes {NUM_BEAMS} beams per row). In brackets: the ratio of "
        "the medians.",
        "",
        "| sampler | ours | tokens/s | keras-hub | tokens/s | ours / hub "
        "time | first call: ours | keras-hub | tokens vs keras-hub |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        t, tps, first = row["time_s"], row["tokens_per_s"], row["first_call_s"]
        if row["sampler"] in DETERMINISTIC:
            same = (
                "equal"
                if row["differing_tokens"] == 0
                else f"**{row['differing_tokens']} differ**"
            )
        else:
            same = f"{row['differing_tokens']} differ (random draws)"
        lines.append(
            f"| {row['sampler']} | {_time(t['ours'])} | {tps['ours']:.0f} | "
            f"{_time(t['hub'])} | {tps['hub']:.0f} | "
            f"{row['ours_over_hub_time_paired']:.2f} "
            f"({row['ours_over_hub_time']:.2f}) | {first['ours']:.1f} s | "
            f"{first['hub']:.1f} s | {same} |"
        )
    lines += [
        "",
        "Checks: shapes `(batch, max_length)`, prompts kept, tokens in the "
        "vocabulary, greedy and beam tokens equal to keras-hub's, one "
        "compilation each. "
        + checks_verdict(report, lambda c: f"{c['check']} ({c['sampler']})"),
        "",
        run_footer(report),
    ]
    return "\n".join(lines) + "\n"


def versions(backend):
    import keras_hub

    return f"{backend_versions(backend)}, keras-hub {keras_hub.__version__}"


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="a tiny model (1 layer, hidden 16), batch 2, 4 + 8 tokens, "
        "one call each, to check the pipeline",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed calls per sampler and contender (default 5; smoke 1)",
    )
    parser.add_argument(
        "--samplers",
        nargs="+",
        choices=SAMPLERS,
        default=list(SAMPLERS),
    )
    parser.add_argument("--batch", type=int, default=None)
    parser.add_argument("--prompt-length", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=None)
    parser.add_argument(
        "--output-dir", "--out", dest="output_dir", default=RESULTS_DIR
    )
    parser.add_argument(
        "--name",
        default=None,
        help="result file stem (default generation[-<backend>]-<machine>-"
        "<date>)",
    )
    args = parser.parse_args(argv)
    smoke = args.smoke
    sizes = SMOKE_SIZES if smoke else SIZES
    batch = args.batch or (SMOKE_BATCH if smoke else BATCH)
    prompt_length = args.prompt_length or (
        SMOKE_PROMPT_LENGTH if smoke else PROMPT_LENGTH
    )
    max_length = args.max_length or (SMOKE_MAX_LENGTH if smoke else MAX_LENGTH)
    reps = args.reps or (1 if smoke else 5)
    if not prompt_length < max_length <= sizes["max_sequence_length"]:
        parser.error(
            "expected prompt_length < max_length <= "
            f"{sizes['max_sequence_length']}, received {prompt_length} and "
            f"{max_length}"
        )

    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    backend = _backend()
    rows = run(sizes, batch, prompt_length, max_length, reps, args.samplers)
    targets, checks = evaluate(rows)
    report = dict(
        **run_header("benchmarks.generation", backend, argv, versions(backend)),
        ours_compiled_as=ours_compiled_as(),
        hub_compiled_as=rows[0]["hub_compiled_as"] if rows else None,
        sizes=sizes,
        embedding_scale=EMBEDDING_SCALE,
        batch=batch,
        prompt_length=prompt_length,
        max_length=max_length,
        new_tokens=max_length - prompt_length,
        reps=reps,
        targets=targets,
        checks=checks,
        rows=rows,
    )
    return finish(
        report, markdown, args, "generation", backend, started, load_before
    )


if __name__ == "__main__":
    sys.exit(main())
