"""What every example shares: command line, device, precision, distribution,
and export.

Import this module before `keras`: with `--cpu-devices N` it splits the CPU
into N logical devices, which under JAX must happen before JAX starts.

    import _common  # noqa: F401  (first)
    import keras

    args = _common.parse_args(__doc__, "image_classification", epochs=20)
    run = _common.setup(args)
    with run.scope():
        model = build_model()
        model.compile(..., jit_compile=run.jit_compile)
"""

import argparse
import contextlib
import json
import os
import sys
import time


def _early_cpu_devices(argv):
    """`--cpu-devices N` from the raw command line, before keras is imported."""
    for i, arg in enumerate(argv):
        if arg == "--cpu-devices" and i + 1 < len(argv):
            return int(argv[i + 1])
        if arg.startswith("--cpu-devices="):
            return int(arg.split("=", 1)[1])
    return 1


_CPU_DEVICES = _early_cpu_devices(sys.argv[1:])
if _CPU_DEVICES > 1:
    flag = f"--xla_force_host_platform_device_count={_CPU_DEVICES}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"


def parse_args(
    doc, name, argv=None, add_arguments=None, multiworker=False, **defaults
):
    """The shared flags, plus the example's own (`add_arguments(parser)`).

    `multiworker`: the example trains through `Run.fit`, which supports
    `--distribute multiworker`. `defaults` sets the example's defaults, e.g.
    `epochs=20`.
    """
    parser = argparse.ArgumentParser(
        description=doc.split("\n\n")[0],
        epilog=doc.split("\n\n", 1)[1] if "\n\n" in doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    shared = parser.add_argument_group("shared by all examples")
    shared.add_argument(
        "--epochs", type=int, default=10, help="(default: %(default)s)"
    )
    shared.add_argument(
        "--batch-size", type=int, default=64, help="(default: %(default)s)"
    )
    shared.add_argument("--seed", type=int, default=0)
    shared.add_argument(
        "--output-dir",
        default=os.path.join("runs", name),
        help=f"checkpoints, figures and logs (default: runs/{name})",
    )
    shared.add_argument(
        "--mixed-precision",
        choices=["auto", "off"],
        default="auto",
        help="auto: mixed_float16 on NVIDIA GPUs, mixed_bfloat16 on TPUs, "
        "off on CPUs",
    )
    shared.add_argument(
        "--jit-compile",
        choices=["auto", "on", "off"],
        default="auto",
        help="compilation of the train step: XLA, or torch.compile under "
        "PyTorch (auto: Keras' choice)",
    )
    shared.add_argument(
        "--distribute",
        choices=["none", "mirrored", "multiworker"],
        default="none",
        help="mirrored: tf.distribute.MirroredStrategy (TensorFlow) or "
        "keras.distribution.DataParallel (JAX) over all local devices; "
        "multiworker: tf.distribute.MultiWorkerMirroredStrategy over the "
        "workers in TF_CONFIG (TensorFlow; start one process per worker); "
        "neither under PyTorch, which Keras does not distribute",
    )
    shared.add_argument(
        "--shuffle",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shuffle the training data every epoch",
    )
    shared.add_argument(
        "--save-weights",
        default=None,
        metavar="PATH",
        help="write the trained weights to PATH (.npz), in model.weights order",
    )
    shared.add_argument(
        "--cpu-devices",
        type=int,
        default=1,
        help="split the CPU into this many logical devices (to try "
        "--distribute mirrored without GPUs; TensorFlow and JAX)",
    )
    shared.add_argument(
        "--export",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="export a SavedModel for TF Serving to "
        "<saved-models-dir>/<name>/<next version>/ (from another backend: "
        "<output-dir>/<name>.keras, exported under TensorFlow)",
    )
    shared.add_argument("--saved-models-dir", default="saved_models")
    shared.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="cap on train steps per epoch (smoke tests); train on the "
        "first max-steps x batch-size samples so epochs stay aligned",
    )
    if add_arguments is not None:
        add_arguments(parser)
    parser.set_defaults(**defaults)
    args = parser.parse_args(argv)
    if args.cpu_devices != _CPU_DEVICES and args.cpu_devices > 1:
        parser.error("--cpu-devices must be given on the command line")
    if args.distribute == "multiworker" and not multiworker:
        parser.error(
            "--distribute multiworker: only text_classification.py trains "
            "through the multi-worker loop so far (Run.fit)"
        )
    args.name = name
    return args


class Run:
    """The resolved device, precision, compilation and distribution."""

    def __init__(self, args):
        import keras

        self.args = args
        self.backend = keras.backend.backend()
        if args.distribute != "none":
            # Before anything else: a refusal leaves no run directory.
            _check_distribution(self.backend, args.distribute)
        self.strategy = None
        if args.distribute == "multiworker":
            # Before anything else touches TensorFlow's runtime: the
            # strategy configures its collectives at start-up.
            self.strategy = _multiworker()
        self.platform, self.devices = _devices(self.backend, args.cpu_devices)
        self.policy = _policy(args.mixed_precision, self.platform)
        keras.config.set_dtype_policy(self.policy)
        self.jit_compile = {"auto": "auto", "on": True, "off": False}[
            args.jit_compile
        ]
        if args.distribute == "mirrored":
            self.strategy = _distribute(self.backend, self.platform)
        keras.utils.set_random_seed(args.seed)
        os.makedirs(args.output_dir, exist_ok=True)
        self.start = time.time()

    def scope(self):
        """Build and compile the model inside this."""
        if self.strategy is not None and self.backend == "tensorflow":
            return self.strategy.scope()
        return contextlib.nullcontext()

    @property
    def replicas(self):
        if self.strategy is None:
            return 1
        if self.backend == "tensorflow":
            return self.strategy.num_replicas_in_sync
        return len(self.strategy.device_mesh.devices.reshape(-1))

    def fit(self, model, x, y, batch_size, epochs, **kwargs):
        """`model.fit(x, y, ...)`; under `--distribute multiworker`, the same
        train steps in a loop of our own.

        Keras 3's `fit` fails under `MultiWorkerMirroredStrategy`: its
        symbolic build reduces the first distributed batch eagerly, which
        the multi-worker strategy cannot do (keras-team/keras#20585). The
        loop runs Keras' own `model.train_step` on each worker's share of
        every global batch (`strategy.run`; the optimizer all-reduces the
        gradients), so the weights follow the same steps as one process
        fed the whole batch. Validation data is skipped there.
        Returns the `History`.
        """
        if self.args.distribute != "multiworker":
            return model.fit(
                x, y, batch_size=batch_size, epochs=epochs, **kwargs
            )
        import keras
        import tensorflow as tf

        strategy = self.strategy
        with strategy.scope():
            model.optimizer.build(model.trainable_variables)
        dataset = tf.data.Dataset.from_tensor_slices((x, y))
        if kwargs.get("shuffle", True):
            dataset = dataset.shuffle(len(x), seed=self.args.seed)
        options = tf.data.Options()
        options.experimental_distribute.auto_shard_policy = (
            tf.data.experimental.AutoShardPolicy.DATA
        )
        dataset = strategy.experimental_distribute_dataset(
            dataset.batch(batch_size).with_options(options)
        )

        @tf.function
        def step(batch):
            logs = strategy.run(model.train_step, args=(batch,))
            return {
                k: strategy.reduce("MEAN", v, axis=None)
                for k, v in logs.items()
            }

        history = keras.callbacks.History()
        history.history = {}
        for epoch in range(epochs):
            for metric in model.metrics:
                metric.reset_state()
            for batch in dataset:
                logs = step(batch)
            for key, value in logs.items():
                history.history.setdefault(key, []).append(float(value))
            print(
                f"epoch {epoch + 1}/{epochs}: "
                + ", ".join(f"{k} {float(v):.4f}" for k, v in logs.items())
            )
        return history

    @property
    def is_chief(self):
        """False on the workers of a multi-worker run other than the chief:
        they train but write no exports."""
        if self.args.distribute != "multiworker":
            return True
        return bool(self.strategy.extended.should_checkpoint)

    def save_weights(self, model):
        """`--save-weights PATH`: the trained weights, as NumPy arrays."""
        if self.args.save_weights is None:
            return
        import numpy as np

        weights = model.get_weights()
        np.savez(self.args.save_weights, *(np.asarray(w) for w in weights))
        print(f"saved weights to {self.args.save_weights}")

    def training_done(self, model, history, history_file=True):
        """After `fit`: `--save-weights`, `history.json` in the run
        directory (unless not `history_file`), and the losses by epoch and
        the time since setup, printed. Returns `(losses, seconds)`."""
        self.save_weights(model)
        losses = [float(x) for x in history.history["loss"]]
        if history_file:
            path = os.path.join(self.args.output_dir, "history.json")
            with open(path, "w") as f:
                json.dump(history.history, f, indent=1)
        print(f"loss by epoch: {json.dumps([round(x, 4) for x in losses])}")
        seconds = self.elapsed()
        print(f"trained in {seconds:.0f} s (since setup)")
        return losses, seconds

    def finish(self, results, export_path, check_export):
        """The end of a run: `check_export(export_path)` (unless there is no
        export) and the export's size, then `results` with the seconds
        since setup to `results.json`. Returns the exit status: 1 if the
        check failed (nothing written), else 0."""
        if export_path is not None:
            if not check_export(export_path):
                return 1
            size = directory_size(export_path) / 1e6
            print(f"export size: {size:.2f} MB")
        results["seconds"] = self.elapsed()
        path = os.path.join(self.args.output_dir, "results.json")
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"done in {results['seconds']:.0f} s")
        return 0

    def describe(self):
        import keras

        import keras_attention

        print(
            f"backend {self.backend} (keras {keras.__version__}, "
            f"keras_attention {keras_attention.__version__}); device: "
            f"{self.platform.upper()} {', '.join(self.devices)}; precision "
            f"{self.policy}; jit_compile {self.jit_compile}; distribute "
            f"{self.args.distribute} ({self.replicas} replica(s))"
        )

    def steps(self, n_samples, batch_size):
        """Steps per epoch, capped by `--max-steps`."""
        steps = max(1, -(-n_samples // batch_size))
        if self.args.max_steps:
            steps = min(steps, self.args.max_steps)
        return steps

    def elapsed(self):
        return time.time() - self.start

    def export(self, model, name=None, signatures=None, warmup_inputs=None):
        """Exports for TF Serving and checks it.

        Under another backend (JAX, PyTorch) the model is saved first, to
        `<output-dir>/<name>.keras`, and exported in a TensorFlow subprocess
        (`serving.export_saved_model` does that); where TensorFlow is not
        installed, the command that exports the file on a machine with it
        is printed instead. Extra `signatures` are TensorFlow-only: they
        are dropped there, with a note.

        Returns the version path, or None where export is skipped (no
        `--export`, or no TensorFlow installed).
        """
        if not self.args.export:
            return None
        name = name or self.args.name
        base = os.path.join(self.args.saved_models_dir, name)
        if self.backend != "tensorflow":
            if signatures:
                print(
                    f"endpoints {sorted(signatures)}: TensorFlow-only "
                    "(Python-defined signatures can't cross to the "
                    f"TensorFlow process that exports a {self.backend} "
                    "model); exporting serving_default"
                )
                signatures = None
            if not self._save_to_export(model, name, base):
                return None
        from keras_attention import serving

        if not self.is_chief:
            # TensorFlow's multi-worker recipe: every worker saves (saving
            # may run collectives), the others into a directory they delete.
            import tempfile

            with tempfile.TemporaryDirectory() as scratch:
                serving.export_saved_model(
                    model,
                    os.path.join(scratch, "export"),
                    signatures=signatures,
                    warmup_inputs=warmup_inputs,
                )
            print("export: written by the chief (this worker's copy deleted)")
            return None
        path = serving.export_saved_model(
            model, base, signatures=signatures, warmup_inputs=warmup_inputs
        )
        print(f"exported to {path}")
        result = serving.check(path)
        if result.returncode != 0:
            raise SystemExit(f"the export at {path} failed its check")
        return path

    def _save_to_export(self, model, name, base):
        """Saves `model` to `<output-dir>/<name>.keras` and prints the
        command that exports it. Returns False where this Python has no
        TensorFlow to run it."""
        import importlib.util

        path = os.path.join(self.args.output_dir, f"{name}.keras")
        model.save(path)
        inputs = ", ".join(f"{x.name} ({x.dtype})" for x in model.inputs)
        print(
            f"saved the model to export, {model.name!r} ({inputs} -> "
            f"{', '.join(model.output_names)}), to {path}"
        )
        command = f"python -m keras_attention.serving export {path} {base}"
        for module in _example_modules(model):
            command += f" --import examples.{module}"
        if importlib.util.find_spec("tensorflow") is None:
            print(
                "export skipped: SavedModel export needs TensorFlow, which "
                "this Python lacks. On a machine with TensorFlow, from the "
                f"repository root: {command}"
            )
            return False
        print(f"exporting it under TensorFlow (as `{command}` does)")
        return True

    def figure_path(self, filename):
        return os.path.join(self.args.output_dir, filename)


def _example_modules(model):
    """The example modules that define `model`'s layers (the script for
    `__main__`): the exporter imports them to register the layers."""
    script = os.path.splitext(os.path.basename(sys.argv[0]))[0]
    modules = set()
    for layer in model._flatten_layers():
        module = type(layer).__module__
        if module.split(".")[0] not in ("keras", "keras_attention"):
            modules.add(script if module == "__main__" else module)
    return sorted(modules)


def setup(args):
    run = Run(args)
    run.describe()
    return run


def _devices(backend, cpu_devices):
    if backend == "tensorflow":
        import tensorflow as tf

        if cpu_devices > 1:
            (cpu,) = tf.config.list_physical_devices("CPU")
            tf.config.set_logical_device_configuration(
                cpu,
                [tf.config.LogicalDeviceConfiguration()] * cpu_devices,
            )
        gpus = tf.config.list_logical_devices("GPU")
        tpus = tf.config.list_logical_devices("TPU")
        if tpus:
            return "tpu", [d.name for d in tpus]
        if gpus:
            return "gpu", [d.name for d in gpus]
        return "cpu", [d.name for d in tf.config.list_logical_devices("CPU")]
    if backend == "jax":
        import jax

        devices = jax.devices()
        platform = devices[0].platform
        names = [
            f"{d.platform}:{d.id} ({getattr(d, 'device_kind', '')})"
            for d in devices
        ]
        return platform, names
    if backend == "torch":
        import torch

        if cpu_devices > 1:
            print(
                f"--cpu-devices {cpu_devices}: ignored under torch (no "
                "logical CPU devices; they serve --distribute mirrored)"
            )
        # Keras' torch backend puts everything on the current CUDA device
        # when there is one, else on the CPU.
        if torch.cuda.is_available():
            index = torch.cuda.current_device()
            name = torch.cuda.get_device_name(index)
            return "gpu", [f"cuda:{index} ({name})"]
        return "cpu", ["cpu"]
    return "cpu", ["cpu"]


def _policy(mode, platform):
    if mode == "off":
        return "float32"
    return {"gpu": "mixed_float16", "tpu": "mixed_bfloat16"}.get(
        platform, "float32"
    )


def _check_distribution(backend, distribute):
    """Exits with a message where `backend` has no strategy for
    `--distribute DISTRIBUTE` (`mirrored` or `multiworker`)."""
    if backend == "tensorflow":
        return
    if backend == "jax":
        if distribute == "mirrored":
            return
        raise SystemExit(
            "--distribute multiworker is tf.distribute's multi-worker "
            "strategy, for the TensorFlow backend (this run uses 'jax'). "
            "On JAX, start one process per host and call "
            "keras.distribution.initialize() before building the model, then "
            "use --distribute mirrored (keras.distribution.DataParallel); see "
            "docs/distribution.md."
        )
    raise SystemExit(
        f"--distribute {distribute}: Keras has no distribution strategy for "
        f"the {backend!r} backend (tf.distribute is TensorFlow's, "
        "keras.distribution JAX's). Train on one device here, or run under "
        "KERAS_BACKEND=tensorflow or jax; see docs/distribution.md."
    )


def _distribute(backend, platform):
    if backend == "tensorflow":
        import tensorflow as tf

        kind = "GPU" if platform == "gpu" else "CPU"
        devices = [d.name for d in tf.config.list_logical_devices(kind)]
        return tf.distribute.MirroredStrategy(devices)
    import keras  # JAX: _check_distribution refused the other backends

    distribution = keras.distribution.DataParallel(
        devices=keras.distribution.list_devices()
    )
    keras.distribution.set_distribution(distribution)
    return distribution


def _multiworker():
    if "TF_CONFIG" not in os.environ:
        raise SystemExit(
            "--distribute multiworker needs the TF_CONFIG environment "
            "variable: the cluster's workers and this process's task, e.g. "
            'TF_CONFIG=\'{"cluster": {"worker": ["host0:12345", '
            '"host1:12345"]}, "task": {"type": "worker", "index": 0}}\''
        )
    json.loads(os.environ["TF_CONFIG"])  # a clear error if it is not JSON
    import tensorflow as tf

    return tf.distribute.MultiWorkerMirroredStrategy()


def check_served_outputs(path, inputs, expected, what):
    """`serving.check` of the export at `path`: the request `inputs`
    (`{name: array}`) must give the `expected` outputs (`{name: array}`:
    floats within 1e-5, strings as bytes, equal). Prints the verdict on
    `what` (e.g. "32 test images"); returns True if they match."""
    import tempfile

    import keras
    import numpy as np

    from keras_attention import serving

    with tempfile.TemporaryDirectory() as tmp:
        request = os.path.join(tmp, "request.json")
        with open(request, "w") as f:
            json.dump(serving.rest_body(inputs), f)
        outputs = os.path.join(tmp, "expected.npz")
        np.savez(outputs, **expected)
        ok = serving.check(path, inputs=request, expect=outputs).returncode == 0
    print(
        f"served (serving_default) vs Keras ({keras.backend.backend()}) on "
        f"{what}: {'match' if ok else 'DIFFER'}"
    )
    return ok


def directory_size(path):
    """Bytes in the files under `path` (an export's size on disk)."""
    return sum(
        os.path.getsize(os.path.join(root, name))
        for root, _, names in os.walk(path)
        for name in names
    )
