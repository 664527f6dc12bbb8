"""What runs in the attention benchmark's measuring process.

`run_worker` is what `python -m benchmarks.attention --worker SPEC` runs:
one configuration (`worker`: `tf_worker`, `jax_worker` under JAX,
`torch_worker` under PyTorch), a series of configurations run in one
process, one after the other (`jax_worker`, one JSON line per configuration
as it finishes), or the matmul that measures the machine's peak
(`matmul_peak`). Each prints its result as a JSON line for the parent to
read.

Both implementations get the same shapes and the same weights (drawn from a
fixed NumPy seed), and each result carries a checksum of the forward
pass's output, so that the report can show that both computed the same.
"""

import json
import time

import numpy as np

from benchmarks._common import jax_versions
from benchmarks._common import torch_versions
from benchmarks._common import versions


def _weights_like(layer, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (rng.standard_normal(w.shape) / np.sqrt(max(1, w.shape[0]))).astype(
            "float32"
        )
        for w in layer.get_weights()
    ]


def _alibi_slopes(heads):
    """ALiBi's head slopes, `2 ** (-8 (h + 1) / heads)`."""
    return [2.0 ** (-8.0 * (h + 1) / heads) for h in range(heads)]


def _program_layers():
    """`(ours, keras)`: MultiHeadAttention classes that run a configuration's
    `program` (see `_attention_configs.programmed`). Every tensor a program
    needs (document ids, slopes, the ALiBi bias) is built in the step from
    positions, as a model does, so that nothing large is captured."""
    import keras
    from keras import ops

    import keras_attention as ka

    def document_ids(length, document):
        return ops.arange(length, dtype="int32") // document

    class ProgramAttention(ka.MultiHeadAttention):
        """Ours: `_compute_attention` calls the op with the program's
        arguments (our kernels: `flash_attention=False`)."""

        def __init__(self, program, causal, **kwargs):
            super().__init__(**kwargs)
            self.program, self.causal = program, causal

        def _compute_attention(
            self, query, key, value, mask, training, *_, **__
        ):
            # Keras' contract; only `training` is used.
            program = self.program
            length = ops.shape(query)[1]
            options = dict(
                is_causal=self.causal,
                sliding_window=program.get("window"),
                chunk_size=program.get("chunk_size", "auto"),
            )
            if "documents" in program:
                docs = document_ids(length, program["documents"])
                if program.get("documents_as") == "mask_mod":
                    options["mask_mod"] = lambda b, h, q, k: ops.equal(
                        ops.take(docs, q), ops.take(docs, k)
                    )
                else:
                    ids = docs[None]
                    options.update(query_segment_ids=ids, key_segment_ids=ids)
            if program.get("mask_mod") == "all":
                options["mask_mod"] = lambda b, h, q, k: q + k >= 0
            if "alibi" in program:
                slopes = ops.convert_to_tensor(
                    _alibi_slopes(self.num_heads), "float32"
                )
                if program["alibi"] == "score_mod":
                    options["score_mod"] = lambda s, b, h, q, k: (
                        s + ops.take(slopes, h) * ops.cast(k - q, "float32")
                    )
                else:
                    positions = ops.arange(length, dtype="float32")
                    distance = positions[None, :] - positions[:, None]
                    options["bias"] = (
                        slopes[None, :, None, None] * distance[None, None]
                    )
            out = ka.ops.scaled_dot_product_attention(
                query,
                key,
                value,
                scale=1.0 / float(self.key_dim) ** 0.5,
                training=bool(training),
                flash_attention=False,
                **options,
            )
            return out, None

    class DocumentMaskedAttention(keras.layers.MultiHeadAttention):
        """Keras core with packed documents: the block-diagonal
        `attention_mask` from the document ids."""

        def __init__(self, document, **kwargs):
            super().__init__(**kwargs)
            self.document = document

        def call(self, query, value, key=None, **kwargs):
            docs = document_ids(ops.shape(query)[1], self.document)
            mask = ops.equal(docs[:, None], docs[None, :])[None]
            return super().call(
                query, value, key, attention_mask=mask, **kwargs
            )

    return ProgramAttention, DocumentMaskedAttention


def key_block_fraction(config):
    """`(computed, total)` key blocks of ours' chunked train step: the
    blocks within the causal and window bounds whose documents meet (the
    blocks `"auto"` uses, or `chunk_size`'s); None where a `bias` makes
    it dense."""
    from keras_attention.ops.attention import auto_blocks

    program, length = config["program"], config["length"]
    if program.get("alibi") == "bias" or config["impl"] != "ours":
        return None
    q_chunk = k_chunk = program.get("chunk_size")
    if q_chunk is None:
        q_chunk, k_chunk = auto_blocks(program.get("window"))
    q_chunk, k_chunk = min(q_chunk, length), min(k_chunk, length)
    q_blocks, k_blocks = -(-length // q_chunk), -(-length // k_chunk)
    window, document = program.get("window"), program.get("documents")
    computed = 0
    for i in range(q_blocks):
        first_row = i * q_chunk
        last_row = min((i + 1) * q_chunk, length) - 1
        first, end = 0, k_blocks
        if window is not None:
            first = max(first_row - window + 1, 0) // k_chunk
            end = min(end, (last_row + window - 1) // k_chunk + 1)
        if config["causal"]:
            end = min(end, last_row // k_chunk + 1)
        for j in range(first, end):
            if document is not None:  # the documents' ranges must meet
                last_col = min((j + 1) * k_chunk, length) - 1
                if not (
                    first_row // document <= last_col // document
                    and j * k_chunk // document <= last_row // document
                ):
                    continue
            computed += 1
    return computed, q_blocks * k_blocks


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
        program = config.get("program")
        if program is not None:
            ours_program, keras_documents = _program_layers()
            if config["impl"] == "ours":
                cls = ours_program
                options.update(program=program, causal=config["causal"])
            elif "documents" in program:
                cls = keras_documents
                options["document"] = program["documents"]
            if config["impl"] == "keras" and "window" in program:
                options["sliding_window"] = program["window"]
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
        if program is not None and config["impl"] == "ours":
            kwargs = {}  # the program's op call is causal itself
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
    elif keras.backend.backend() == "torch":
        result = torch_worker(config)
    else:
        result = tf_worker(config)
    return _with_key_blocks(config, result)


def _with_key_blocks(config, result):
    """A program's result with the key blocks its kernel computed."""
    if "program" in config and result.get("status") == "ok":
        result["key_blocks"] = key_block_fraction(config)
    return result


def series_worker(configs, emit):
    """Runs `configs` one after the other in this process (TensorFlow,
    PyTorch: the smoke runs' series). The process's peak RSS can't be
    reset: a configuration that does not raise it gets `peak_exact:
    False`, as under JAX."""
    peak = 0
    for index, config in enumerate(configs):
        try:
            result = worker(config)
        except Exception as error:
            message = f"{type(error).__name__}: {error}"[-300:]
            result = dict(
                status="out of memory" if is_oom(message) else "error",
                detail=message,
            )
        if result.get("status") == "ok":
            result["peak_exact"] = result["peak_rss_bytes"] > peak
            peak = max(peak, result["peak_rss_bytes"])
        emit(index, result)


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
    first, times = _timed(
        lambda: tf.nest.map_structure(lambda r: r.numpy(), fn(*inputs)), reps
    )
    out = forward(*inputs).numpy()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return _result(config, times, first, peak, baseline, out)


def _timed(run, reps):
    """`(first, times)`: the first call of `run` (tracing, compiling and
    warming up), then `reps` timed calls, more when a call is cheap (a
    steadier median). `run` waits for its results."""
    start = time.perf_counter()
    run()
    first = time.perf_counter() - start
    start = time.perf_counter()
    run()
    elapsed = time.perf_counter() - start
    if elapsed < 2.0:
        reps = max(reps, 15 if elapsed < 0.5 else 7)
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return first, times


def _result(config, times, first, peak, baseline, out, **extra):
    """A worker's result: the times, the memory, and the forward output's
    checksum."""
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
        **extra,
    )


def _torch_inputs(inputs, dtype, requires_grad):
    """`inputs` (NumPy arrays, nested in lists) as torch tensors on Keras'
    device; an array that appears twice (self-attention's `x, x`) becomes
    one tensor passed twice, as a user's `layer(x, x)` does."""
    import torch
    from keras import ops

    tensors = {}

    def convert(a):
        if isinstance(a, list):
            return [convert(x) for x in a]
        if id(a) not in tensors:
            t = ops.cast(ops.convert_to_tensor(a), dtype).detach()
            tensors[id(a)] = t.requires_grad_(requires_grad)
        return tensors[id(a)]

    with torch.no_grad():
        converted = [convert(a) for a in inputs]
    return converted, list(tensors.values())


def torch_worker(config):
    """PyTorch: eager calls, as Keras' torch backend runs them. The forward
    pass is a plain `layer(x, x)`; the train step adds the sum of squares
    and `torch.autograd.grad` with respect to the inputs and all trainable
    weights. Memory: the process's peak RSS, as under TensorFlow."""
    import torch
    from keras import ops

    layer, inputs, kwargs = _build(config)
    dtype = config.get("dtype", "float32")
    train_kwargs = _train_kwargs(config, kwargs)
    weights = [v.value for v in layer.trainable_variables]
    train_mode = config["mode"] != "forward"
    xs, leaves = _torch_inputs(inputs, dtype, requires_grad=train_mode)

    def forward():
        return layer(*xs, **kwargs)

    def train():
        out = ops.cast(layer(*xs, **train_kwargs), "float32")
        loss = torch.sum(out * out)
        return torch.autograd.grad(loss, leaves + weights)

    fn = train if train_mode else forward
    reps = config.get("reps", 5)
    baseline = _peak_rss()
    first, times = _timed(fn, reps)
    # The checksum: a forward pass (training=False) without autograd, after
    # the peak was read.
    peak = _peak_rss()
    with torch.no_grad():
        out = ops.convert_to_numpy(ops.cast(layer(*xs, **kwargs), "float32"))
    return _result(
        config,
        times,
        first,
        peak,
        baseline,
        out,
        platform=leaves[0].device.type,
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


def is_oom(message):
    """Whether an error message says that memory ran out."""
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
                status="out of memory" if is_oom(message) else "error",
                detail=message,
            )
        keras.backend.clear_session()
        gc.collect()
        results.append(_with_key_blocks(config, result))
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
    if keras.backend.backend() == "torch":
        return torch_matmul_peak(n, reps)
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


def torch_matmul_peak(n=None, reps=5):
    """A `torch.matmul` of float32 `n x n` matrices (4096 unless `n` says
    otherwise), on Keras' device (the CPU here)."""
    import torch
    from keras import ops

    n = n or 4096
    rng = np.random.default_rng(0)
    a = ops.convert_to_tensor(rng.random((n, n), "float32"))
    with torch.no_grad():
        torch.matmul(a, a)
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            torch.matmul(a, a)
            times.append(time.perf_counter() - start)
    return dict(
        status="ok",
        gflops=2 * n**3 / float(np.median(times)) / 1e9,
        n=n,
        dtype="float32",
        platform=a.device.type,
        device_kind=a.device.type,
        devices=1,
    )


def run_worker(spec):
    """`--worker`: a configuration (prints its result), a series (a list:
    prints one line per configuration as it finishes), or the matmul."""
    config = json.loads(spec)
    if isinstance(config, list):

        def emit(index, result):
            print(json.dumps(dict(index=index, result=result)), flush=True)

        import keras

        if keras.backend.backend() == "jax":
            jax_worker(config, emit=emit)
        else:
            series_worker(config, emit)
    elif config.get("layer") == "matmul":
        result = matmul_peak(**({"n": config["n"]} if "n" in config else {}))
        import keras

        if keras.backend.backend() == "jax":
            result["versions"] = versions("jax")
            result["versions_detail"] = jax_versions()
        elif keras.backend.backend() == "torch":
            result["versions"] = versions("torch")
            result["versions_detail"] = torch_versions()
        print(json.dumps(result))
    else:
        print(json.dumps(worker(config)))
    return 0
