"""The attention benchmark's configurations, and the targets table.

A configuration is a JSON-able dict: the layer (`"mha"` or `"additive"`),
the implementation (`"ours"` or `"keras"`), the mode (`"forward"` or
`"train"`) and the shapes. `both` lists a configuration for ours and for
Keras core; the sets (`target_configs`, `torch_target_configs`,
`sweep_configs`, `gpu_configs`, `quick_configs`, `smoke_configs`,
`gpu_smoke_configs`) are lists of such pairs. `describe` names a
configuration in tables and in `--only`.

`target_configs` holds the configurations of the targets table, which
`_attention_report.evaluate_targets` evaluates: 8 heads x 64, float32, B=1
unless said otherwise:

1. train step, L=8192, dropout 0.1: memory <= 0.25x, time <= 1.15x;
2. train step, L=16384, dropout 0.1: ours under 6 GB;
3. train step, L=8192: time <= 1.12x, memory <= 0.25x;
4. forward, L=4096 and 8192: time <= 1.00x;
5. train step, B=32, L=128 and 512: time <= 1.05x;
6. on a GPU or TPU (`gpu_configs`), bfloat16, forward and train step,
   L=8192 to 32768: time <= 1.00x;
7. train step, L=8192, the layers called without `training`: as 3;
8. the same at L=32768, ours alone: under 12 GiB.

`program_set` (`--programs`) holds the programmable attention's
configurations and targets (P1-P6, below), and the skip-fraction series:
ours calls `scaled_dot_product_attention` with the op's arguments from
`_compute_attention` (our kernels, `flash_attention=False`), train step,
8 heads x 64, float32, B=1.

`torch_target_configs` holds those of the PyTorch targets table (CPU,
eager calls), which `_attention_report.evaluate_torch_targets` evaluates,
under the same conventions:

T1. forward, L=1024 and 4096: time <= 1.03x and memory <= 1.00x (the
    median of 3 interleaved rounds);
T2. train step, L=4096: time <= 1.05x, memory <= 1.00x;
T3. train step, L=8192, dropout 0.1: memory <= 0.30x, time <= 1.10x;
T4. train step, B=32, L=128 and 512: time <= 1.05x.
"""


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
    # Only when not the default: configurations then compare equal with
    # those of results files that have no such key.
    if train_call != "training":
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
    """The configurations of the targets table (targets 1-5, 7 and 8)."""
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


def torch_target_configs():
    """The configurations of the PyTorch targets table (T1-T4)."""
    configs = []
    for length in (1024, 4096):  # T1
        configs += both(mha, "forward", 1, length)
    configs += both(mha, "train", 1, 4096)  # T2
    configs += both(mha, "train", 1, 8192, dropout=0.1)  # T3
    for length in (128, 512):  # T4
        configs += both(mha, "train", 32, length)
    return configs


def sweep_configs():
    configs = []
    for length in (512, 1024, 2048, 4096, 8192, 16384):
        for mode in ("forward", "train"):
            configs += both(mha, mode, 1, length)
    configs += both(mha, "train", 1, 32768)
    configs += both(mha, "train", 1, 8192, causal=True)
    # Causal inference (a prompt's prefill): the online softmax's forward.
    configs += both(mha, "forward", 1, 8192, causal=True)
    for length in (256, 512):
        configs += both(additive, "train", 8, length)
    # Keras core runs out of memory at B=8 here; B=4 is a size where it
    # fits.
    configs += both(additive, "train", 8, 1024)
    configs += both(additive, "train", 4, 1024)
    return configs


GPU_LENGTHS = (1024, 2048, 4096, 8192, 16384, 32768)


def gpu_configs():
    """The GPU set (target 6): 8 heads x 64, B=1, 1k-32k tokens, forward
    and train step, bfloat16 and float32, ours against Keras core.

    Listed per (dtype, mode, implementation) with the lengths increasing:
    each such `series` runs in one subprocess. Fewer repetitions at the
    longest lengths are meant to keep the whole set near two minutes on an
    H200.
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


def programmed(impl, length, causal=True, heads=8, head_dim=64, **program):
    """A train step of MultiHeadAttention running an attention program.

    `program` (all optional): `window` (the op's `sliding_window`; Keras
    core's layer gets its own `sliding_window`), `documents` (the length of
    equal documents packed in the row: ours gets segment ids, Keras core
    the block-diagonal `attention_mask`), `documents_as="mask_mod"` (ours
    compares document ids in a `mask_mod` instead), `mask_mod="all"` (a
    `mask_mod` that is True everywhere), `alibi` (`"score_mod"` or
    `"bias"`, ALiBi's slopes as a `score_mod` or an explicit `bias`),
    `chunk_size` (ours; the smoke run's tiny blocks; Keras core ignores
    it). An empty program is
    the op with no mask beyond `causal`.
    """
    config = mha(impl, "train", 1, length, heads, head_dim, causal=causal)
    config["program"] = dict(program)
    return config


def program_set(
    length=8192,
    long_length=32768,
    window=512,
    document=1024,
    windows=(512, 1024, 2048, 4096),
    **shape,
):
    """`(configs, targets, series)` of `--programs` (with `--smoke`, tiny
    sizes). A target compares a configuration with a baseline measured in
    the same run: ratios of the medians and of the peaks, at most
    `max_time` and `max_memory`:

    P1. causal, window 512, L=8192, against Keras core's `sliding_window`:
        time <= 0.25x, memory <= 0.20x;
    P2. the same at L=32768, against ours at 8192: time <= 4.6x, memory
        <= 4.5x;
    P3. 8 packed documents of 1024 (segment ids), causal, L=8192, against
        Keras core with the block-diagonal causal mask: time <= 0.25x,
        memory <= 0.20x;
    P4. the documents as a `mask_mod` on a tensor of document ids, against
        segment ids: time <= 1.50x;
    P5. a `mask_mod` that is all True (not causal), against no mask: time
        <= 1.10x;
    P6. causal ALiBi as a `score_mod`, against the same as a `bias`
        tensor: time <= 1.10x, memory <= 0.30x.

    `series`: ours, causal, windows `windows` and none, at `length`: the
    report shows the time against the fraction of key blocks computed.
    `shape`: `heads`, `head_dim`, and `chunk_size` for ours.
    """
    chunk = {}
    if "chunk_size" in shape:
        chunk["chunk_size"] = shape.pop("chunk_size")

    def ours(length, causal=True, **program):
        return programmed("ours", length, causal, **shape, **chunk, **program)

    def keras_(length, **program):
        return programmed("keras", length, **shape, **chunk, **program)

    windowed = ours(length, window=window)
    packed = ours(length, documents=document)
    no_mask = ours(length, causal=False)
    all_true = ours(length, causal=False, mask_mod="all")
    targets = [
        (
            "P1. causal sliding window",
            windowed,
            keras_(length, window=window),
            0.25,
            0.20,
        ),
        (
            "P2. causal sliding window, long",
            ours(long_length, window=window),
            windowed,
            4.6,
            4.5,
        ),
        (
            "P3. packed documents, segment ids",
            packed,
            keras_(length, documents=document),
            0.25,
            0.20,
        ),
        (
            "P4. packed documents as a mask_mod",
            ours(length, documents=document, documents_as="mask_mod"),
            packed,
            1.50,
            None,
        ),
        ("P5. mask_mod all True", all_true, no_mask, 1.10, None),
        (
            "P6. ALiBi as a score_mod",
            ours(length, alibi="score_mod"),
            ours(length, alibi="bias"),
            1.10,
            0.30,
        ),
    ]
    targets = [
        dict(
            target=name,
            config=config,
            baseline=baseline,
            max_time=max_time,
            max_memory=max_memory,
        )
        for name, config, baseline, max_time, max_memory in targets
    ]
    series = [ours(length, window=w) for w in windows] + [ours(length)]
    configs = []
    for target in targets:
        configs += [target["config"], target["baseline"]]
    return configs + series, targets, series


def program_smoke_set():
    """`program_set` at toy sizes, blocks of 16, as one series (one
    process: seconds)."""
    configs, targets, series = program_set(
        length=64,
        long_length=128,
        window=8,
        document=16,
        windows=(8, 16, 32),
        heads=2,
        head_dim=8,
        chunk_size=16,
    )
    return [dict(c, series="programs") for c in configs], targets, series


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


def describe(config):
    """A configuration in a few words, as the tables and `--only` see it."""
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
        if "program" in config:
            call += describe_program(config["program"])
        return (
            f"MHA B={config['batch']} L={config['length']} "
            f"h={config['heads']}x{config['head_dim']}{causal}{dropout}{dtype}"
            f"{call}"
        )
    return (
        f"Additive B={config['batch']} {config['length']}x{config['length']}"
        f" dim={config['dim']}"
    )


def describe_program(program):
    """A program's words in `describe`: what ours is asked to compute."""
    words = []
    if "window" in program:
        words.append(f"window {program['window']}")
    if "documents" in program:
        how = program.get("documents_as", "segment ids")
        words.append(f"documents of {program['documents']} as {how}")
    if program.get("mask_mod") == "all":
        words.append("mask_mod all True")
    if "alibi" in program:
        words.append(f"ALiBi as {program['alibi']}")
    if "chunk_size" in program:
        words.append(f"blocks of {program['chunk_size']} (ours)")
    return ", " + (", ".join(words) if words else "no program")
