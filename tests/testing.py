"""The layer-test and saving harness, modelled on keras-hub's `TestCase`:
`run_layer_test`, `run_serialization_test` and `run_saving_test`."""

import inspect
import json
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest


def import_keras_hub():
    """keras-hub for the comparison tests: required in CI (`CI` set, where
    `.ci/run` installs it), skipped elsewhere when it isn't installed."""

    if os.environ.get("CI"):
        import keras_hub

        return keras_hub
    return pytest.importorskip("keras_hub")


def tiny_causal_lm(family, **backbone_kwargs):
    """A keras-hub causal LM of two tiny layers, with random weights and no
    preprocessor. `family`: "gpt2", "llama" or "gemma"; `backbone_kwargs`
    add to or replace the backbone's arguments."""
    keras_hub = import_keras_hub()
    models = keras_hub.models
    sizes = dict(vocabulary_size=64, num_layers=2, hidden_dim=16)
    sizes["intermediate_dim"] = 32
    backbone, task, arguments = {
        "gpt2": (
            models.GPT2Backbone,
            models.GPT2CausalLM,
            dict(num_heads=2, max_sequence_length=32),
        ),
        "llama": (
            models.LlamaBackbone,
            models.LlamaCausalLM,
            dict(num_query_heads=4, num_key_value_heads=2),
        ),
        "gemma": (
            models.GemmaBackbone,
            models.GemmaCausalLM,
            dict(num_query_heads=2, num_key_value_heads=1, head_dim=8),
        ),
    }[family]
    arguments = {**sizes, **arguments, **backbone_kwargs}
    return task(backbone=backbone(**arguments), preprocessor=None)


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def assert_close_in_float32(got, want, tol, err_msg=""):
    """`got`, a tensor of any float dtype cast to float32, is within `tol`
    of `want`, absolutely and relatively."""
    np.testing.assert_allclose(
        to_numpy(keras.ops.cast(got, "float32")),
        want,
        atol=tol,
        rtol=tol,
        err_msg=err_msg,
    )


def assert_start_index_may_be_a_tensor(layer, x, start_index):
    """A position layer gives the same output for `start_index` as a Python
    int, a NumPy int32 and an int64 tensor."""
    want = to_numpy(layer(x, start_index=start_index))
    for index in (
        np.int32(start_index),
        keras.ops.convert_to_tensor(start_index, "int64"),
    ):
        np.testing.assert_array_equal(
            to_numpy(layer(x, start_index=index)), want
        )


def sum_over_start_indices(layer, x, count):
    """`sum(layer(x, start_index=i) for i in range(count))`, computed in a
    `keras.ops.fori_loop`, so that the start index is traced."""

    def body(i, total):
        return total + layer(x, start_index=i)

    return to_numpy(
        keras.ops.fori_loop(0, count, body, keras.ops.zeros(x.shape))
    )


def randomize_weights(layer, rng):
    """Sets every weight of `layer` to normal draws (scale 0.5), and a
    weight-norm gain `attention_g` to 0.7: no projection, bias or gain keeps
    its trivial initial value."""
    weights = []
    for w in layer.weights:
        if w.name == "attention_g":
            weights.append(np.asarray(0.7))
        else:
            weights.append(rng.normal(scale=0.5, size=w.shape))
    layer.set_weights(weights)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run_serialization_test(layer):
    """`get_config` -> `from_config` through JSON, and
    `serialize_keras_object` -> `deserialize_keras_object`, both giving the
    same config; every `__init__` argument is in the config."""
    cls = type(layer)
    config = layer.get_config()
    params = inspect.signature(cls.__init__).parameters
    for name in params:
        if name not in ("self", "kwargs"):
            assert name in config, f"`{name}` missing from get_config()"
    as_json = json.dumps(config, sort_keys=True)
    revived = cls.from_config(json.loads(json.dumps(config)))
    assert json.dumps(revived.get_config(), sort_keys=True) == as_json
    serialized = json.loads(
        json.dumps(keras.saving.serialize_keras_object(layer))
    )
    assert serialized["registered_name"].startswith("keras_attention")
    revived = keras.saving.deserialize_keras_object(serialized)
    assert type(revived) is cls
    assert json.dumps(revived.get_config(), sort_keys=True) == as_json


def _map_shapes(fn, shape):
    """`fn(shape)`, or `[fn(s) for s in shape]` for a list input."""
    if isinstance(shape, list):
        return [fn(s) for s in shape]
    return fn(shape)


def _flat(values):
    flat = []
    for value in values:
        flat.extend(value if isinstance(value, list) else [value])
    return flat


def _check_counts(layer, trainable, non_trainable, non_trainable_variables):
    if trainable is not None:
        assert len(layer.trainable_weights) == trainable, [
            w.path for w in layer.trainable_weights
        ]
    if non_trainable is not None:
        assert len(layer.non_trainable_weights) == non_trainable, [
            w.path for w in layer.non_trainable_weights
        ]
    if non_trainable_variables is not None:
        assert len(layer.non_trainable_variables) == non_trainable_variables, [
            v.path for v in layer.non_trainable_variables
        ]


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shapes,
    call_kwargs=None,
    expected_output_shapes=None,
    expected_num_trainable_weights=None,
    expected_num_non_trainable_weights=0,
    expected_num_non_trainable_variables=None,
    run_training_check=True,
    run_precision_checks=True,
    rng=None,
):
    """Checks a layer end to end, in the manner of keras-hub's harness.

    1. Serialization (`run_serialization_test`); each `init_kwargs` value
       is in the config.
    2. Build from shapes with `None` batch and sequence dims: the layer is
       built, with the expected numbers of trainable and non-trainable
       weights and non-trainable variables (seed generators' states).
    3. Symbolic call on `keras.Input`, eager call: shapes agree with each
       other, with `expected_output_shapes` and `compute_output_shape`.
    4. `run_training_check`: one `fit` step changes the trainable weights.
    5. `run_precision_checks`: under mixed_float16 and mixed_bfloat16 the
       outputs and `compute_output_spec` are in the compute dtype and finite,
       the weights in float32, and every sublayer has the layer's policy.

    `input_shapes`: dict from call-argument name to full shape (batch first),
    or to a list of shapes for a list input; the first entry is the
    positional input. Returns the eager layer.
    """
    rng = rng or np.random.default_rng(0)
    call_kwargs = call_kwargs or {}
    names = list(input_shapes)
    counts = (
        expected_num_trainable_weights,
        expected_num_non_trainable_weights,
        expected_num_non_trainable_variables,
    )

    # 1. Serialization.
    layer = layer_cls(**init_kwargs)
    run_serialization_test(layer)
    config = layer.get_config()
    for name, value in init_kwargs.items():
        got = config[name]
        if isinstance(got, dict) and isinstance(value, str):
            # A Keras object passed by name, serialized by class.
            got, value = got["class_name"].lower(), value.replace("_", "")
        assert got in (value, (value,)), (
            f"get_config()[{name!r}] = {config[name]!r}, passed {value!r}"
        )

    # 2. Build from shapes with unknown batch and sequence dims.
    none_shapes = {
        n: _map_shapes(lambda s: (None,) * (len(s) - 1) + (s[-1],), s)
        for n, s in input_shapes.items()
    }
    layer = layer_cls(**init_kwargs)
    layer.build(*[none_shapes[n] for n in names])
    assert layer.built
    _check_counts(layer, *counts)

    # 3. Symbolic call, eager call.
    inputs = {
        n: _map_shapes(lambda s: keras.Input(batch_shape=s), s)
        for n, s in none_shapes.items()
    }
    first = inputs[names[0]]
    rest = {n: inputs[n] for n in names[1:]}
    symbolic_layer = layer_cls(**init_kwargs)
    symbolic = symbolic_layer(first, **rest, **call_kwargs)
    _check_counts(symbolic_layer, *counts)
    data = {
        n: _map_shapes(lambda s: rng.normal(size=s).astype("float32"), s)
        for n, s in input_shapes.items()
    }
    eager_layer = layer_cls(**init_kwargs)
    eager = eager_layer(
        data[names[0]], **{n: data[n] for n in names[1:]}, **call_kwargs
    )
    for sym, real in zip(_as_list(symbolic), _as_list(eager)):
        assert len(sym.shape) == len(real.shape)
        for s_dim, r_dim in zip(sym.shape, real.shape):
            assert s_dim is None or s_dim == r_dim, (sym.shape, real.shape)
    if expected_output_shapes is not None:
        got = [tuple(x.shape) for x in _as_list(eager)]
        assert got == [tuple(s) for s in _as_list(expected_output_shapes)]
    real_shapes = [_map_shapes(tuple, s) for s in input_shapes.values()]
    output_shape = eager_layer.compute_output_shape(*real_shapes)
    if not isinstance(output_shape[0], (tuple, list)):
        output_shape = [output_shape]  # one output
    eager_shapes = [tuple(x.shape) for x in _as_list(eager)]
    assert [tuple(s) for s in output_shape] == eager_shapes[: len(output_shape)]

    # 4. One fit step in a functional model changes the weights.
    if run_training_check:
        outputs = layer_cls(**init_kwargs)(first, **rest, **call_kwargs)
        output = _as_list(outputs)[0]
        model = keras.Model(_flat(inputs.values()), output)
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
        before = [to_numpy(w) for w in model.trainable_weights]
        shape = tuple(_as_list(eager)[0].shape)
        target = rng.normal(size=shape).astype("float32")
        model.fit(_flat(data.values()), target, epochs=1, verbose=0)
        after = [to_numpy(w) for w in model.trainable_weights]
        assert any(not np.allclose(b, a) for b, a in zip(before, after))

    # 5. Mixed precision.
    if run_precision_checks:
        for policy in ("mixed_float16", "mixed_bfloat16"):
            _check_precision(
                layer_cls(**init_kwargs, dtype=policy),
                policy,
                data,
                names,
                call_kwargs,
            )
    return eager_layer


def _check_precision(layer, policy, data, names, call_kwargs):
    args = (data[names[0]],)
    kwargs = dict({n: data[n] for n in names[1:]}, **call_kwargs)
    out = layer(*args, **kwargs)
    compute = policy.split("_")[1]
    for x in _as_list(out):
        assert keras.backend.standardize_dtype(x.dtype) == compute
        assert np.all(np.isfinite(to_numpy(x).astype("float32")))
    specs = layer.compute_output_spec(
        *[_map_shapes(lambda a: keras.KerasTensor(a.shape), a) for a in args],
        **{
            k: keras.KerasTensor(v.shape) if isinstance(v, np.ndarray) else v
            for k, v in kwargs.items()
        },
    )
    for spec in _as_list(specs):
        assert keras.backend.standardize_dtype(spec.dtype) == compute
    for w in layer.weights:
        assert w.dtype == "float32", (policy, w.path, w.dtype)
    for sublayer in layer._flatten_layers():
        assert sublayer.dtype_policy.name == policy, (
            sublayer.name,
            sublayer.dtype_policy.name,
        )


def run_saving_test(
    model, make_inputs, tmp_path, layer_types=(), new_process=False
):
    """Saves and reloads a model every way we support and compares outputs.

    - `.keras`: `model.save`, `keras.models.load_model`; the reloaded
      model's layers include `layer_types` (exactly those classes) and
      predict the same.
    - `new_process`: the `.keras` file reloaded in a fresh Python that
      imports only `keras` and `keras_attention`.
    - SavedModel (TensorFlow backend): `model.export`, `tf.saved_model.load`,
      served at batch sizes 1 and 4, equal to `predict`.

    `make_inputs(batch)`: the model's inputs for a batch size.
    """
    data = make_inputs(4)
    expected = model.predict(data, verbose=0)
    path = os.path.join(str(tmp_path), "model.keras")
    model.save(path)
    reloaded = keras.models.load_model(path)
    got_types = {type(layer) for layer in _all_layers(reloaded)}
    for cls in layer_types:
        assert cls in got_types, (cls, got_types)
    np.testing.assert_allclose(
        reloaded.predict(data, verbose=0), expected, rtol=0, atol=1e-6
    )
    if new_process:
        _reload_in_new_process(path, data, expected, tmp_path)
    if keras.backend.backend() != "tensorflow":
        return
    import tensorflow as tf

    export_dir = os.path.join(str(tmp_path), "export")
    model.export(export_dir, format="tf_saved_model", verbose=False)
    loaded = tf.saved_model.load(export_dir)
    for batch in (1, 4):
        inputs = make_inputs(batch)
        tensors = tf.nest.map_structure(tf.constant, inputs)
        served = loaded.serve(tensors)
        np.testing.assert_allclose(
            tf.nest.map_structure(lambda t: t.numpy(), served),
            model.predict(inputs, verbose=0),
            atol=1e-5,
        )


def _all_layers(model):
    return [layer for layer in model._flatten_layers(include_self=False)]


def _reload_in_new_process(path, data, expected, tmp_path):
    io_path = os.path.join(str(tmp_path), "io.npz")
    inputs = _as_list(data)
    np.savez(
        io_path,
        expected=expected,
        **{f"input_{i}": x for i, x in enumerate(inputs)},
    )
    script = textwrap.dedent(
        f"""
        import sys
        import numpy as np
        import keras_attention  # registers the layers; nothing else of ours
        import keras
        data = np.load({io_path!r})
        n = len([k for k in data.files if k.startswith("input_")])
        inputs = [data[f"input_{{i}}"] for i in range(n)]
        model = keras.models.load_model({path!r})
        got = model.predict(inputs[0] if n == 1 else inputs, verbose=0)
        assert "tests" not in sys.modules
        np.testing.assert_allclose(got, data["expected"], rtol=0, atol=1e-6)
        print("RELOADED-OK")
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        cwd=str(tmp_path),
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "RELOADED-OK" in result.stdout


def loss_and_grads(fn, *args, variables=()):
    """`sum(fn(*args) * R)` for a fixed random R, and its gradients with
    respect to every argument, then to every `keras.Variable` of
    `variables` that `fn` reads (a layer's weight, or one captured by a
    closure): TensorFlow's tape, `jax.value_and_grad` with the variables'
    values bound by a `keras.StatelessScope` (as a Keras train step does),
    or PyTorch's autograd. A gradient that the backend leaves undefined (no
    path to the loss) is zeros."""
    backend = keras.backend.backend()
    variables = list(variables)
    out_shape = tuple(fn(*args).shape)
    weights = np.random.default_rng(7).normal(size=out_shape).astype("float32")
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        sources = tensors + [v.value for v in variables]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(tf.cast(fn(*tensors), tf.float32) * weights)
        grads = tape.gradient(loss, sources)
        return loss.numpy(), [
            np.zeros(s.shape, s.dtype.as_numpy_dtype)
            if g is None
            else to_numpy(g)
            for g, s in zip(grads, sources)
        ]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss(xs, values):
            mapping = list(zip(variables, values))
            with keras.StatelessScope(state_mapping=mapping):
                return jnp.sum(fn(*xs).astype("float32") * weights)

        grad_fn = jax.value_and_grad(loss, argnums=(0, 1))
        if variables:
            grad_fn = jax.jit(grad_fn)  # as Keras' train step
        value, (arg_grads, variable_grads) = grad_fn(
            list(args), [v.value for v in variables]
        )
        return np.asarray(value), [
            np.asarray(g) for g in list(arg_grads) + list(variable_grads)
        ]
    if backend == "torch":
        import torch

        tensors = [
            keras.ops.convert_to_tensor(a).detach().requires_grad_(True)
            for a in args
        ]
        sources = tensors + [v.value for v in variables]
        out = keras.ops.cast(fn(*tensors), "float32")
        loss = torch.sum(out * keras.ops.convert_to_tensor(weights))
        grads = torch.autograd.grad(loss, sources, allow_unused=True)
        grads = [
            torch.zeros_like(t) if g is None else g
            for g, t in zip(grads, sources)
        ]
        return to_numpy(loss), [to_numpy(g) for g in grads]
    raise NotImplementedError(backend)


def compiled(fn):
    """`jax.jit(fn)` on JAX (a built layer's weights become constants): one
    compile per call shape instead of one per op; `fn` elsewhere (PyTorch:
    eager, as Keras runs it unless `jit_compile=True`, which the tests of
    `torch.compile` ask for themselves)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.jit(fn)
    return fn


def traced(fn):
    """`fn` traced as each backend compiles it, where values are unknown:
    `tf.function` (no autograph), `jax.jit`, or `torch.compile` (Dynamo's
    capture, run without code generation, which takes minutes)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.jit(fn)
    if backend == "torch":
        import torch

        return torch.compile(fn, backend="eager")
    import tensorflow as tf

    return tf.function(fn, autograph=False)


def ci_examples(tensorflow, jax):
    """Few hypothesis examples in the `ci` profile (fewer on JAX, a compile
    each); other profiles (`thorough`) keep theirs."""
    from hypothesis import settings

    in_ci = settings.default.max_examples == (
        settings.get_profile("ci").max_examples
    )
    if not in_ci:
        return lambda test: test
    n = jax if keras.backend.backend() == "jax" else tensorflow
    return settings(max_examples=min(n, settings.default.max_examples))


def free_ports(n):
    """`n` distinct free localhost ports (bound together, then released)."""
    import socket

    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def run_together(commands, envs, cwd, timeout):
    """Starts the processes at once (a cluster's workers) and waits for them
    all, killing any still running at the timeout or on an error. Returns
    `(returncodes, logs)`, stdout and stderr merged."""
    procs = [
        subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for command, env in zip(commands, envs)
    ]
    try:
        logs = [p.communicate(timeout=timeout)[0] for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [p.returncode for p in procs], logs


def numeric_grads(fn, args, eps=1e-4):
    """Central differences of `sum(fn(*args) * R)` in float64, R as in
    `loss_and_grads`: the gradients a NumPy reference implies."""
    weights = np.random.default_rng(7).normal(size=fn(*args).shape)
    args = [np.asarray(a, np.float64) for a in args]
    grads = []
    for index, arg in enumerate(args):
        grad = np.zeros_like(arg)
        for pos in np.ndindex(arg.shape):
            shifted = []
            for sign in (1, -1):
                moved = [a.copy() for a in args]
                moved[index][pos] += sign * eps
                shifted.append(np.sum(fn(*moved) * weights))
            grad[pos] = (shifted[0] - shifted[1]) / (2 * eps)
        grads.append(grad)
    return grads
