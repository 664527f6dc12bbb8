"""Side-by-side benchmark: keras_attention against Keras core.

Each configuration runs in a fresh subprocess, so peak memory (the process's
peak RSS on CPU) belongs to that configuration alone. Ours and Keras core get
identical shapes and identical weights (drawn from a fixed NumPy seed); each
worker reports an output checksum so the report shows that both computed the
same thing. Times are medians over repetitions of `tf.function`s: the forward
pass, and a train step (forward plus the gradients with respect to the inputs
and all weights).

`--backend jax` runs the same layers under JAX: the forward pass and the
train step (`jax.value_and_grad` over `Layer.stateless_call`) are `jax.jit`
compiled ahead of time, calls are timed with `block_until_ready`, and memory
is the device's `peak_bytes_in_use` (`Device.memory_stats()`; on a CPU, where
JAX keeps no statistics, the process's peak RSS). On a GPU (`--gpu-sweep`,
the default there) one subprocess runs the lengths of an implementation,
mode and dtype in increasing order: the device's peak, which can't be reset,
then grows with each configuration and is read as that configuration's
(a configuration that does not raise it is reported as a bound).

Usage:
    python -m benchmarks.attention --quick    # a few minutes on 2 cores
    python -m benchmarks.attention            # full: the targets, sweeps
    python -m benchmarks.attention --smoke    # seconds; used by the tests
    python -m benchmarks.attention --targets --rounds 3   # issue 15's table
    python -m benchmarks.attention --backend jax --gpu-sweep   # on a GPU

Writes `benchmarks/results/<machine>-<date>.json` and `.md` (the table of
targets), and a `.png` plot of time and memory against sequence length
(`jax-<device>-<date>` under `--backend jax`).
"""

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time

import numpy as np

RESULTS_DIR = os.path.join(os.path.dirname(__file__), "results")
MEMORY_CAP_GB = 22.5  # the machine has 24 GB; a worker above this is killed


# ----------------------------------------------------------------------------
# Configurations
# ----------------------------------------------------------------------------
def mha(
    impl,
    mode,
    batch,
    length,
    heads=8,
    head_dim=64,
    causal=False,
    dropout=0.0,
    dtype="float32",
    train_call="training",
):
    """A MultiHeadAttention configuration.

    `dropout`: both layers get `dropout=...`, and the train step calls them
    with `training=True` (the forward pass stays `training=False`); every
    train step passes `training=True`, as `fit` does.
    `dtype`: both layers get `dtype=...` and inputs of that dtype.
    `train_call`: `"training"`, the train step calls the layers with
    `training=True`; `"default"`, without `training` (inference mode), as a
    custom gradient loop, a saliency map or fine-tuning in inference mode
    does.
    """
    config = dict(
        layer="mha",
        impl=impl,
        mode=mode,
        batch=batch,
        length=length,
        heads=heads,
        head_dim=head_dim,
        causal=causal,
        dropout=dropout,
        dtype=dtype,
    )
    if train_call != "training":  # earlier results have no such key
        config["train_call"] = train_call
    return config


def additive(impl, mode, batch, length, dim=128):
    return dict(
        layer="additive",
        impl=impl,
        mode=mode,
        batch=batch,
        length=length,
        dim=dim,
    )


def both(factory, *args, **kwargs):
    return [factory(impl, *args, **kwargs) for impl in ("ours", "keras")]


def target_configs():
    """The targets table of issue 15 (`evaluate_targets` reads it)."""
    configs = []
    configs += both(mha, "train", 1, 8192, dropout=0.1)  # target 1
    configs += both(mha, "train", 1, 16384, dropout=0.1)  # target 2
    configs += both(mha, "train", 1, 8192)  # target 3
    for length in (4096, 8192):  # target 4
        configs += both(mha, "forward", 1, length)
    for length in (128, 512):  # target 5
        configs += both(mha, "train", 32, length)
    # Targets 7 and 8: the gradient of a call without `training`.
    configs += both(mha, "train", 1, 8192, train_call="default")
    configs.append(mha("ours", "train", 1, 32768, train_call="default"))
    return configs


def sweep_configs():
    configs = []
    for length in (512, 1024, 2048, 4096, 8192, 16384):
        for mode in ("forward", "train"):
            configs += both(mha, mode, 1, length)
    configs += both(mha, "train", 1, 32768)  # the first issue's target 2
    configs += both(mha, "train", 1, 8192, causal=True)
    for length in (256, 512):
        configs += both(additive, "train", 8, length)
    # The first issue's target 5; Keras core runs out of memory at B=8
    # here, B=4 is a size where it fits.
    configs += both(additive, "train", 8, 1024)
    configs += both(additive, "train", 4, 1024)
    return configs


GPU_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)


def gpu_configs():
    """Issue 15's GPU run: 8 heads x 64, B=1, 1k-32k tokens, forward and
    train step, bfloat16 and float32, ours against Keras core.

    Listed per (dtype, mode, implementation) with the lengths increasing:
    `run_configs` runs each such series in one subprocess. Fewer repetitions
    at the longest lengths keep the whole set near two minutes on an H200.
    """
    configs = []
    for dtype in ("bfloat16", "float32"):
        for mode in ("forward", "train"):
            for impl in ("ours", "keras"):
                for length in GPU_LENGTHS:
                    config = mha(impl, mode, 1, length, dtype=dtype)
                    config["reps"] = 3 if length >= 16384 else 5
                    config["series"] = f"{impl}-{mode}-{dtype}"
                    configs.append(config)
    return configs


def quick_configs():
    configs = []
    for length in (1024, 2048, 4096):
        for mode in ("forward", "train"):
            configs += both(mha, mode, 1, length)
    for length in (128, 512):
        configs += both(mha, "train", 32, length)
    configs += both(additive, "train", 8, 256)
    return configs


def smoke_configs():
    return both(mha, "train", 2, 64, heads=2, head_dim=8)


def gpu_smoke_configs():
    """The GPU set's pipeline at toy sizes, for `device_run.sh --smoke`:
    one series (two lengths in one subprocess) per implementation, bfloat16
    train step."""
    configs = []
    for impl in ("ours", "keras"):
        for length in (32, 64):
            config = mha(
                impl, "train", 1, length, heads=2, head_dim=8, dtype="bfloat16"
            )
            config["series"] = f"{impl}-train-bfloat16"
            configs.append(config)
    return configs


# ----------------------------------------------------------------------------
# Worker (runs in a subprocess)
# ----------------------------------------------------------------------------
def _weights_like(layer, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(w.shape) / np.sqrt(max(1, w.shape[0]))).astype(
            "float32"
        )
        for w in layer.get_weights()
    ]


def _build(config):
    import keras

    import keras_attention as ka

    rng = np.random.default_rng(1)
    b, t = config["batch"], config["length"]
    if config["layer"] == "mha":
        dim = config["heads"] * config["head_dim"]
        cls = (
            ka.MultiHeadAttention
            if config["impl"] == "ours"
            else keras.layers.MultiHeadAttention
        )
        options = {}
        if config.get("dropout"):
            options["dropout"] = config["dropout"]
        if config.get("dtype", "float32") != "float32":
            options["dtype"] = config["dtype"]
        jax_backend = keras.backend.backend() == "jax"
        if jax_backend:
            # Overwritten below: zeros spare JAX the compilation of the
            # random initializers (seconds per process on a CPU).
            options["kernel_initializer"] = "zeros"
        layer = cls(
            num_heads=config["heads"], key_dim=config["head_dim"], **options
        )
        x = rng.standard_normal((b, t, dim)).astype("float32")
        inputs = [x, x]
        kwargs = dict(use_causal_mask=config["causal"])
        if jax_backend:  # no eager call: each op would compile on its own
            layer.build(x.shape, x.shape)
        else:
            layer(x[:, :8], x[:, :8])
    else:
        dim = config["dim"]
        q = rng.standard_normal((b, t, dim)).astype("float32")
        v = rng.standard_normal((b, t, dim)).astype("float32")
        inputs = [q, v]
        kwargs = {}
        if config["impl"] == "ours":
            layer = ka.AdditiveAttention(units=dim)
        else:
            layer = keras.layers.AdditiveAttention()
            inputs = [[q, v]]
        layer(
            *[
                np.asarray(a)[:, :8]
                if not isinstance(a, list)
                else [x[:, :8] for x in a]
                for a in inputs
            ]
        )
    layer.set_weights(_weights_like(layer))
    return layer, inputs, kwargs


def _train_kwargs(config, kwargs):
    """The train step's call arguments: `training=True`, as `fit` passes,
    or none more (`train_call="default"`)."""
    if config.get("train_call") == "default":
        return dict(kwargs)
    return dict(kwargs, training=True)


def _flops(config):
    """Nominal FLOPs of one forward pass (the same formula for both)."""
    b, t = config["batch"], config["length"]
    if config["layer"] == "mha":
        n, h = config["heads"], config["head_dim"]
        d = n * h
        attention = 4 * b * n * t * t * h
        projections = 4 * 2 * b * t * d * n * h
        return attention + projections
    u = config["dim"]
    return 3 * b * t * t * u + 2 * b * t * t * u


def worker(config):
    import keras

    if keras.backend.backend() == "jax":
        (result,) = jax_worker([config])
        return result
    return tf_worker(config)


def tf_worker(config):
    import resource

    import tensorflow as tf

    layer, inputs, kwargs = _build(config)
    inputs = tf.nest.map_structure(tf.constant, inputs)
    dtype = config.get("dtype", "float32")
    if dtype != "float32":
        inputs = tf.nest.map_structure(lambda x: tf.cast(x, dtype), inputs)
    train_kwargs = _train_kwargs(config, kwargs)

    @tf.function(autograph=False)
    def forward(*xs):
        return layer(*xs, **kwargs)

    @tf.function(autograph=False)
    def train(*xs):
        flat = tf.nest.flatten(xs)
        with tf.GradientTape() as tape:
            tape.watch(flat)
            out = tf.cast(layer(*xs, **train_kwargs), "float32")
            loss = tf.reduce_sum(out * out)
        return tape.gradient(loss, flat + layer.trainable_weights)

    fn = forward if config["mode"] == "forward" else train
    reps = config.get("reps", 5)
    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    start = time.perf_counter()
    result = fn(*inputs)  # trace, compile and warm up
    first = time.perf_counter() - start
    start = time.perf_counter()
    tf.nest.map_structure(lambda r: r.numpy(), fn(*inputs))
    elapsed = time.perf_counter() - start
    if elapsed < 2.0:  # cheap: more repetitions, a steadier median
        reps = max(reps, 15 if elapsed < 0.5 else 7)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        result = fn(*inputs)
        tf.nest.map_structure(lambda r: r.numpy(), result)
        times.append(time.perf_counter() - start)
    out = forward(*inputs).numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    flops = _flops(config) * (1 if config["mode"] == "forward" else 3)
    median = float(np.median(times))
    return dict(
        status="ok",
        median_s=median,
        times_s=times,
        first_call_s=first,
        peak_rss_bytes=peak,
        rss_before_run_bytes=baseline,
        gflops=flops / median / 1e9,
        checksum=float(np.sum(out.astype("float64"))),
        sample=[float(x) for x in out.reshape(-1)[:4]],
    )


def _peak_rss():
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _device_peak(device):
    """`(peak_bytes_in_use, bytes_in_use)` of a JAX device, or None where it
    keeps no memory statistics (the CPU)."""
    stats = device.memory_stats()
    if not stats or "peak_bytes_in_use" not in stats:
        return None
    return stats["peak_bytes_in_use"], stats.get("bytes_in_use", 0)


def _compiled_memory(compiled):
    """XLA's own memory plan of a compiled function, when it has one."""
    try:
        analysis = compiled.memory_analysis()
    except Exception:  # not every platform has one
        return None
    if analysis is None:
        return None
    fields = ("argument", "output", "temp", "alias", "generated_code")
    return {
        f"{name}_bytes": int(getattr(analysis, f"{name}_size_in_bytes", 0))
        for name in fields
    }


def _is_oom(message):
    return any(
        token in message
        for token in ("ResourceExhausted", "RESOURCE_EXHAUSTED", "OOM")
    ) or ("out of memory" in message.lower())


def jax_worker(configs, emit=None):
    """Runs `configs` one after the other in this process (JAX).

    The device's peak memory can't be reset: a configuration whose run
    raises the process's running peak gets that peak as its own
    (`peak_exact`); one that doesn't is reported with the running peak as
    an upper bound (`peak_exact: False`). `emit(index, result)` is called as
    each configuration finishes.
    """
    import gc

    import jax
    import jax.numpy as jnp
    import keras

    device = jax.devices()[0]
    results = []
    for index, config in enumerate(configs):
        try:
            result = _jax_run(config, device, jax, jnp)
        except Exception as error:  # out of memory, above all
            message = f"{type(error).__name__}: {error}"[-300:]
            result = dict(
                status="out of memory" if _is_oom(message) else "error",
                detail=message,
            )
        keras.backend.clear_session()
        gc.collect()
        results.append(result)
        if emit is not None:
            emit(index, result)
    return results


def _jax_run(config, device, jax, jnp):
    dtype = config.get("dtype", "float32")
    before_device = _device_peak(device)
    before_rss = _peak_rss()
    layer, inputs, kwargs = _build(config)
    inputs = jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype), inputs)
    train_kwargs = _train_kwargs(config, kwargs)
    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def forward(trainable, non_trainable, *xs):
        out, _ = layer.stateless_call(trainable, non_trainable, *xs, **kwargs)
        return out

    def loss(trainable, xs, non_trainable):
        out, _ = layer.stateless_call(
            trainable, non_trainable, *xs, **train_kwargs
        )
        out = out.astype("float32")
        return jnp.sum(out * out)

    def train(trainable, non_trainable, *xs):
        # Gradients with respect to all weights and the inputs.
        return jax.value_and_grad(loss, argnums=(0, 1))(
            trainable, xs, non_trainable
        )

    args = (trainable, non_trainable, *inputs)
    fn = jax.jit(forward if config["mode"] == "forward" else train)
    start = time.perf_counter()
    compiled = fn.lower(*args).compile()
    jax.block_until_ready(compiled(*args))  # warm up
    first = time.perf_counter() - start
    start = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    elapsed = time.perf_counter() - start
    reps = config.get("reps", 5)
    # Cheap: more repetitions (about a second's worth, at most 15).
    reps = max(reps, min(15, int(1.0 / max(elapsed, 1e-6))))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    if config["mode"] != "forward":
        out = jax.jit(forward)(*args)
    else:
        out = compiled(*args)
    out = np.asarray(out.astype("float32"))
    flops = _flops(config) * (1 if config["mode"] == "forward" else 3)
    median = float(np.median(times))
    after_device = _device_peak(device)
    peak_rss = _peak_rss()
    if after_device is not None:
        source = "device peak_bytes_in_use"
        peak, before = after_device[0], before_device[0]
        in_use_before = before_device[1]
    else:
        source = "process peak RSS"
        peak, before, in_use_before = peak_rss, before_rss, None
    result = dict(
        status="ok",
        median_s=median,
        times_s=times,
        first_call_s=first,
        peak_bytes=peak,
        peak_exact=peak > before,
        memory_source=source,
        peak_rss_bytes=peak_rss,
        rss_before_run_bytes=before_rss,
        gflops=flops / median / 1e9,
        checksum=float(np.sum(out.astype("float64"))),
        sample=[float(x) for x in out.reshape(-1)[:4]],
        platform=device.platform,
    )
    if in_use_before is not None:
        result["device_bytes_in_use_before"] = in_use_before
    memory = _compiled_memory(compiled)
    if memory:
        result["compiled_memory"] = memory
    return result


def matmul_peak(n=None, reps=5):
    """Measured float32 matmul GFLOP/s on this machine (TensorFlow: 4096^3
    unless `n` says otherwise; JAX: `jax_matmul_peak`)."""
    import keras

    if keras.backend.backend() == "jax":
        return jax_matmul_peak(n)
    import tensorflow as tf

    n = n or 4096

    a = tf.constant(np.random.default_rng(0).random((n, n), "float32"))

    @tf.function
    def mm(x):
        return tf.matmul(x, x)

    mm(a).numpy()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        mm(a).numpy()
        times.append(time.perf_counter() - start)
    return dict(status="ok", gflops=2 * n**3 / float(np.median(times)) / 1e9)


def jax_matmul_peak(n=None, reps=10):
    """A `jax.jit` matmul: bfloat16 8192^3 on an accelerator, float32
    4096^3 on a CPU (`n` for another size). Also says which device ran
    it."""
    import jax
    import jax.numpy as jnp

    device = jax.devices()[0]
    if device.platform == "cpu":
        n, dtype, reps, warmups = n or 4096, "float32", 5, 1
    else:
        n, dtype, warmups = n or 8192, "bfloat16", 3
    rng = np.random.default_rng(0)
    a = jnp.asarray(rng.standard_normal((n, n), "float32"), dtype)
    b = jnp.asarray(rng.standard_normal((n, n), "float32"), dtype)
    mm = jax.jit(jnp.matmul)
    for _ in range(warmups):
        jax.block_until_ready(mm(a, b))
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        jax.block_until_ready(mm(a, b))
        times.append(time.perf_counter() - start)
    return dict(
        status="ok",
        gflops=2 * n**3 / float(np.median(times)) / 1e9,
        n=n,
        dtype=dtype,
        platform=device.platform,
        device_kind=device.device_kind,
        devices=jax.device_count(),
    )


# ----------------------------------------------------------------------------
# Parent: subprocesses, memory cap, reports
# ----------------------------------------------------------------------------
def _rss_bytes(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _subprocess_env(backend):
    return dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", KERAS_BACKEND=backend)


def _failure(stdout, stderr):
    tail = (stderr or stdout).strip().splitlines()[-3:]
    message = " | ".join(tail)[-300:]
    if _is_oom(message):
        return dict(status="out of memory", detail=message)
    return dict(status="error", detail=message)


def run_in_subprocess(
    config, timeout_s, cap_gb=MEMORY_CAP_GB, backend="tensorflow"
):
    """Runs one configuration (a dict) in a fresh process; returns its
    result. A list of configurations (a series, JAX only) runs in one
    process, one after the other, and gives a list of results."""
    series = isinstance(config, list)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "benchmarks.attention",
            "--worker",
            json.dumps(config),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_subprocess_env(backend),
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    )
    if series:
        timeout_s *= len(config)
    start, max_rss, killed = time.time(), 0, None
    while proc.poll() is None:
        rss = _rss_bytes(proc.pid)
        max_rss = max(max_rss, rss)
        if rss > cap_gb * 1e9:
            killed = f"killed: RSS above {cap_gb:.0f} GB"
        elif time.time() - start > timeout_s:
            killed = f"killed: over {timeout_s} s"
        if killed:
            proc.kill()
            break
        time.sleep(0.05)
    stdout, stderr = proc.communicate()
    if not series:
        if killed:
            return dict(status=killed, peak_rss_bytes=max_rss)
        for line in reversed(stdout.splitlines()):
            if line.startswith("{"):
                return json.loads(line)
        return _failure(stdout, stderr)
    # A series prints one line per finished configuration; the ones that
    # did not finish get the reason the process ended.
    done = {}
    for line in stdout.splitlines():
        if line.startswith('{"index"'):
            entry = json.loads(line)
            done[entry["index"]] = entry["result"]
    if killed:
        rest = dict(status=killed, peak_rss_bytes=max_rss)
    else:
        rest = _failure(stdout, stderr)
    return [done.get(i, rest) for i in range(len(config))]


def _round_key(config):
    return json.dumps(config, sort_keys=True)


def _units(configs, backend):
    """What runs in one subprocess: single configurations, or (JAX) the
    configurations of one `series`, in their listed order."""
    units, by_series = [], {}
    for config in configs:
        name = config.get("series") if backend == "jax" else None
        if name is None:
            units.append(config)
        elif name in by_series:
            by_series[name].append(config)
        else:
            by_series[name] = [config]
            units.append(by_series[name])
    return units


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
            (k, v)
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


def _fmt_mem(result):
    text = _fmt_gb(_peak(result))
    if result and result.get("peak_exact") is False:
        return f"<= {text}"
    return text


def _fmt_s(r):
    return f"{r['median_s']:.3f} s" if r.get("status") == "ok" else r["status"]


def _fmt_ms(r):
    """Milliseconds below a second (GPU times), else as `_fmt_s`."""
    if r.get("status") == "ok" and r["median_s"] < 1.0:
        return f"{r['median_s'] * 1e3:.3g} ms"
    return _fmt_s(r)


def _describe(config):
    if config["layer"] == "mha":
        causal = ", causal" if config["causal"] else ""
        dropout = (
            f", dropout {config['dropout']:g}" if config.get("dropout") else ""
        )
        dtype = config.get("dtype", "float32")
        dtype = f", {dtype}" if dtype != "float32" else ""
        call = ""
        if config.get("train_call") == "default":
            call = ", called without training"
        return (
            f"MHA B={config['batch']} L={config['length']} "
            f"h={config['heads']}x{config['head_dim']}{causal}{dropout}{dtype}"
            f"{call}"
        )
    return (
        f"Additive B={config['batch']} {config['length']}x{config['length']}"
        f" dim={config['dim']}"
    )


def pair_rows(results):
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
    )


def _status(result):
    """A result in a few words: its time and memory, or why it failed."""
    if not result:
        return "not run"
    if result.get("status") != "ok":
        return result["status"]
    return f"{_fmt_ms(result)}, {_fmt_mem(result)}"


def evaluate_targets(rows, peak, platform="cpu"):
    """The targets of issue 15, as table rows.

    1-5 are for the CPU (float32, 8 heads x 64) and are evaluated wherever
    their configurations ran; 6 (bfloat16, 8k-32k tokens, at least Keras
    core's speed) only on a GPU or TPU.
    """
    targets = []

    def add(name, goal, row, value, ok):
        targets.append(
            dict(
                target=name,
                goal=goal,
                config=_describe(row["config"]) if row else "-",
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


def _is_jax(report):
    return report.get("backend", "tensorflow") == "jax"


def _intro(report):
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
        lines += [
            "## Targets",
            "",
            "| target | goal | measured | met |",
            "|---|---|---|---|",
        ]
        for t in report["targets"]:
            lines.append(
                f"| {t['target']} | {t['goal']} | {t['measured']} "
                f"| {'yes' if t['met'] else '**no**'} |"
            )
        lines.append("")
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
            memory = (_fmt_mem(o), _fmt_mem(k))
        else:
            rates = [f"{o.get('gflops', 0):.1f}", f"{k.get('gflops', 0):.1f}"]
            memory = (
                _fmt_gb(o.get("peak_rss_bytes")),
                _fmt_gb(k.get("peak_rss_bytes")),
            )
        fmt = _fmt_ms if jax_report else _fmt_s
        lines.append(
            f"| {_describe(row['config'])} | {row['config']['mode']} | "
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


def machine_name(matmul=None):
    """`cpu-<arch>-<n>cores` (TensorFlow); under JAX, from the device that
    ran the matmul: `jax-cpu-<arch>-<n>cores` or `jax-gpu-<device kind>`."""
    cpu = platform.machine()
    name = f"cpu-{cpu}-{os.cpu_count()}cores"
    if matmul is None:
        return name
    if matmul.get("platform", "cpu") == "cpu":
        return f"jax-{name}"
    kind = re.sub(r"[^a-z0-9]+", "-", matmul["device_kind"].lower()).strip("-")
    return f"jax-{matmul['platform']}-{kind}"


def write_report(report, text, output_dir, stem, indent=2):
    """Writes `<stem>.json` (the report) and `<stem>.md` (`text`).

    Returns the path without extension.
    """
    os.makedirs(output_dir, exist_ok=True)
    base = os.path.join(output_dir, stem)
    with open(base + ".json", "w") as f:
        json.dump(report, f, indent=indent)
    with open(base + ".md", "w") as f:
        f.write(text)
    return base


def versions(backend="tensorflow"):
    """The versions line of a report. Under JAX it imports no TensorFlow."""
    if backend == "jax":
        detail = jax_versions()
        return (
            f"Python {detail['python']}, JAX {detail['jax']} (jaxlib "
            f"{detail['jaxlib']}), Keras {detail['keras']}, NumPy "
            f"{detail['numpy']}, keras_attention {detail['keras_attention']}"
        )
    import keras
    import tensorflow as tf

    import keras_attention

    return (
        f"Python {platform.python_version()}, TensorFlow {tf.__version__},"
        f" Keras {keras.__version__}, keras_attention "
        f"{keras_attention.__version__}"
    )


def jax_versions():
    """Python, JAX, jaxlib, Keras, NumPy and keras_attention versions."""
    import jax
    import jaxlib
    import keras

    import keras_attention

    return dict(
        python=platform.python_version(),
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        keras=keras.__version__,
        numpy=np.__version__,
        keras_attention=keras_attention.__version__,
    )


def _run_worker(spec):
    """`--worker`: a configuration (prints its result), a series (a list:
    prints one line per configuration as it finishes), or the matmul."""
    config = json.loads(spec)
    if isinstance(config, list):

        def emit(index, result):
            print(json.dumps(dict(index=index, result=result)), flush=True)

        jax_worker(config, emit=emit)
    elif config.get("layer") == "matmul":
        result = matmul_peak(**({"n": config["n"]} if "n" in config else {}))
        import keras

        if keras.backend.backend() == "jax":
            result["versions"] = versions("jax")
            result["versions_detail"] = jax_versions()
        print(json.dumps(result))
    else:
        print(json.dumps(worker(config)))
    return 0


def _configs(args, platform_):
    """The configurations the flags ask for, and their default reps."""
    gpu = args.gpu_sweep or (
        args.backend == "jax"
        and platform_ in ("gpu", "tpu")
        and not (args.smoke or args.quick or args.targets)
    )
    if gpu:
        return (gpu_smoke_configs() if args.smoke else gpu_configs()), 1, True
    if args.smoke:
        return smoke_configs(), 1, False
    if args.quick:
        return quick_configs(), 3, False
    if args.targets:
        return target_configs(), 3, False
    return target_configs() + sweep_configs(), 3, False


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--quick",
        action="store_true",
        help="a small set of configurations (minutes)",
    )
    mode.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes, to check the pipeline (seconds)",
    )
    mode.add_argument(
        "--targets",
        action="store_true",
        help="the targets of issue 15 only, without the sweeps",
    )
    mode.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument(
        "--backend",
        choices=["tensorflow", "jax"],
        default="tensorflow",
        help="the Keras backend of the workers (default: %(default)s)",
    )
    parser.add_argument(
        "--gpu-sweep",
        action="store_true",
        help="the GPU set: 8 heads x 64, B=1, 1k-32k tokens, forward and "
        "train, bfloat16 and float32 (JAX; the default under --backend jax "
        "on a GPU or TPU); with --smoke, the same pipeline at toy sizes",
    )
    parser.add_argument(
        "--reps",
        type=int,
        default=None,
        help="timed repetitions per configuration",
    )
    parser.add_argument(
        "--timeout",
        type=int,
        default=900,
        help="seconds before a configuration is killed",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="run every configuration this many times, interleaved (each "
        "round in the opposite order), and report the median of the rounds",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="only the configurations whose description and mode match "
        "this regular expression (e.g. 'forward', 'Additive')",
    )
    parser.add_argument("--output-dir", default=RESULTS_DIR)
    parser.add_argument(
        "--name",
        default=None,
        help="result file stem (default <machine>-<date>)",
    )
    args = parser.parse_args(argv)

    if args.worker:
        return _run_worker(args.worker)
    if args.gpu_sweep and (args.quick or args.targets):
        parser.error("--gpu-sweep goes alone or with --smoke")
    if args.gpu_sweep and args.backend != "jax":
        parser.error("--gpu-sweep needs --backend jax")

    # The first round's matmul also says which device the workers see (the
    # parent itself never starts a backend: under JAX it would hold the
    # GPU's memory).
    matmul = {"layer": "matmul"}
    if args.smoke and args.backend == "jax":
        matmul["n"] = 1024  # seconds, not a minute, on 2 CPU cores
    first_peak = run_in_subprocess(matmul, args.timeout, backend=args.backend)
    if first_peak.get("status") != "ok":
        raise SystemExit(f"the matmul worker failed: {first_peak}")
    platform_ = first_peak.get("platform", "cpu")
    configs, default_reps, gpu = _configs(args, platform_)
    seen, unique = set(), []
    for c in configs:
        k = json.dumps(c, sort_keys=True)
        if k not in seen:
            seen.add(k)
            reps = args.reps or c.get("reps") or default_reps
            unique.append(dict(c, reps=reps))

    if args.only:
        unique = [
            c
            for c in unique
            if re.search(args.only, f"{_describe(c)} {c['mode']}")
        ]
    units = _units(unique, args.backend)
    fmt = _fmt_ms if args.backend == "jax" else _fmt_s
    peaks = []
    by_key = {}
    for round_index in range(args.rounds):
        # The matmul peak is measured in every round and the largest kept:
        # anything else running on the machine can only lower it.
        peak = first_peak
        if round_index:
            peak = run_in_subprocess(matmul, args.timeout, backend=args.backend)
        peaks.append(peak.get("gflops", 0.0))
        if args.backend == "jax":
            print(
                f"{first_peak['dtype']} matmul peak: "
                f"{peaks[-1] / 1e3:.2f} TFLOP/s",
                flush=True,
            )
        else:
            print(f"float32 matmul peak: {peaks[-1]:.1f} GFLOP/s", flush=True)
        # Odd rounds run in reverse order, so neither implementation always
        # runs first (after the other one's memory was freed). A series
        # keeps its order (increasing lengths).
        order = units if round_index % 2 == 0 else units[::-1]
        for unit in order:
            results = run_in_subprocess(
                unit, args.timeout, backend=args.backend
            )
            if not isinstance(unit, list):
                unit, results = [unit], [results]
            for config, result in zip(unit, results):
                by_key.setdefault(_round_key(config), (config, []))[1].append(
                    result
                )
                print(
                    f"{config['impl']:5s} {config['mode']:7s} "
                    f"{_describe(config):40s} {fmt(result):>22s} "
                    f"{_fmt_mem(result):>12s}",
                    flush=True,
                )
    results = [
        dict(config=config, result=combine_rounds(runs))
        for config, runs in (by_key[_round_key(c)] for c in unique)
    ]
    rows = pair_rows(results)
    jax_run = args.backend == "jax"
    command = (
        "python -m benchmarks.attention"
        + "".join(
            f" --{flag}"
            for flag in ("quick", "smoke", "targets")
            if getattr(args, flag)
        )
        + (" --backend jax" if jax_run else "")
        + (" --gpu-sweep" if args.gpu_sweep else "")
        + (f" --rounds {args.rounds}" if args.rounds > 1 else "")
        + (f" --only '{args.only}'" if args.only else "")
    )
    report = dict(
        machine=machine_name(first_peak if jax_run else None),
        date=datetime.date.today().isoformat(),
        command=command,
        versions=first_peak["versions"] if jax_run else versions(),
        matmul_gflops=max(peaks),
        matmul_gflops_rounds=peaks,
        results=results,
        rows=rows,
    )
    if jax_run:
        report.update(
            backend="jax",
            platform=platform_,
            device=f"{first_peak['device_kind']} ({platform_}, "
            f"{first_peak['devices']} device(s))",
            device_name=first_peak["device_kind"]
            if platform_ != "cpu"
            else report["machine"],
            versions_detail=first_peak["versions_detail"],
            matmul=dict(
                n=first_peak["n"],
                dtype=first_peak["dtype"],
                tflops=max(peaks) / 1e3,
            ),
            gpu_set=gpu,
        )
        if gpu and not args.gpu_sweep:
            report["notes"] = [
                "the GPU set was chosen because the workers run on a "
                f"{platform_.upper()}."
            ]
    if any(r["config"].get("dropout") for r in rows):
        report.setdefault("notes", []).append(
            "the checksums come from the forward pass (training=False), so "
            "they compare with dropout too; the train steps draw different "
            "dropout masks in the two layers."
        )
    report["targets"] = evaluate_targets(
        rows, report["matmul_gflops"], platform_
    )
    stem = args.name or f"{report['machine']}-{report['date']}"
    if args.quick or args.targets:
        stem += "-quick" if args.quick else "-targets"
    base = write_report(
        report, markdown(report), args.output_dir, stem, indent=1
    )
    png = plot(report, base + ".png")
    print(f"wrote {base}.json, {base}.md" + (f", {png}" if png else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
