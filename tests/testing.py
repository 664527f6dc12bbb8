"""A small `run_layer_test`, modelled on Keras' `TestCase.run_layer_test`."""

import inspect
import json

import keras
import numpy as np


def to_numpy(x):
    return keras.ops.convert_to_numpy(x)


def _as_list(x):
    return list(x) if isinstance(x, (list, tuple)) else [x]


def run_layer_test(
    layer_cls,
    init_kwargs,
    input_shapes,
    call_kwargs=None,
    expected_output_shapes=None,
    expected_num_weights=None,
    rng=None,
):
    """Checks a layer end to end.

    1. Config round trip: `from_config(get_config())` gives the same config,
       through JSON, and every `__init__` argument is in the config.
    2. Build from shapes with `None` batch and sequence dims, then all weights
       exist, and `compute_output_shape` / `compute_output_spec` match.
    3. Symbolic call on `keras.Input`, eager call; shapes match.
    4. One `fit` step changes the trainable weights.
    5. Under mixed_float16 and mixed_bfloat16: outputs in the compute dtype,
       weights in float32.

    `input_shapes`: dict from call-argument name to full shape (batch first);
    the first entry is the positional input.
    """
    rng = rng or np.random.default_rng(0)
    call_kwargs = call_kwargs or {}
    names = list(input_shapes)

    # 1. Config round trip, through JSON.
    layer = layer_cls(**init_kwargs)
    config = layer.get_config()
    params = inspect.signature(layer_cls.__init__).parameters
    for name in params:
        if name not in ("self", "kwargs"):
            assert name in config, f"`{name}` missing from get_config()"
    for name, value in init_kwargs.items():
        assert config[name] in (value, (value,)), (
            f"get_config()[{name!r}] = {config[name]!r}, passed {value!r}"
        )
    revived = layer_cls.from_config(json.loads(json.dumps(config)))
    assert json.dumps(revived.get_config(), sort_keys=True) == json.dumps(
        config, sort_keys=True
    )

    # 2. Build from shapes with unknown batch and sequence dims.
    none_shapes = {
        n: (None,) + (None,) * (len(s) - 2) + (s[-1],)
        for n, s in input_shapes.items()
    }
    layer = layer_cls(**init_kwargs)
    build_args = [none_shapes[n] for n in names]
    layer.build(*build_args)
    assert layer.built
    if expected_num_weights is not None:
        assert len(layer.weights) == expected_num_weights, [
            w.path for w in layer.weights
        ]

    # 3. Symbolic call.
    inputs = {n: keras.Input(batch_shape=s) for n, s in none_shapes.items()}
    first = inputs[names[0]]
    rest = {n: inputs[n] for n in names[1:]}
    symbolic = layer_cls(**init_kwargs)(first, **rest, **call_kwargs)

    # Eager call.
    data = {
        n: rng.normal(size=s).astype("float32") for n, s in input_shapes.items()
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
    real_shapes = [tuple(s) for s in input_shapes.values()]
    output_shape = eager_layer.compute_output_shape(*real_shapes)
    assert tuple(output_shape) == tuple(_as_list(eager)[0].shape)

    # 4. One fit step in a functional model changes the weights.
    outputs = layer_cls(**init_kwargs)(first, **rest, **call_kwargs)
    output = _as_list(outputs)[0]
    model = keras.Model(list(inputs.values()), output)
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    before = [to_numpy(w) for w in model.trainable_weights]
    target = rng.normal(size=tuple(_as_list(eager)[0].shape)).astype("float32")
    model.fit([data[n] for n in names], target, epochs=1, verbose=0)
    after = [to_numpy(w) for w in model.trainable_weights]
    assert any(not np.allclose(b, a) for b, a in zip(before, after))

    # 5. Mixed precision.
    for policy in ("mixed_float16", "mixed_bfloat16"):
        mixed = layer_cls(**init_kwargs, dtype=policy)
        out = mixed(
            data[names[0]], **{n: data[n] for n in names[1:]}, **call_kwargs
        )
        compute = policy.split("_")[1]
        for x in _as_list(out):
            assert keras.backend.standardize_dtype(x.dtype) == compute
            assert np.all(np.isfinite(to_numpy(x).astype("float32")))
        for w in mixed.weights:
            assert w.dtype == "float32", (policy, w.path, w.dtype)
    return eager_layer


def loss_and_grads(fn, *args):
    """`sum(fn(*args) * R)` for a fixed random R, and its gradients with
    respect to every argument, on the TensorFlow or the JAX backend."""
    backend = keras.backend.backend()
    out_shape = tuple(fn(*args).shape)
    weights = np.random.default_rng(7).normal(size=out_shape).astype("float32")
    if backend == "tensorflow":
        import tensorflow as tf

        tensors = [tf.constant(a) for a in args]
        with tf.GradientTape() as tape:
            tape.watch(tensors)
            loss = tf.reduce_sum(tf.cast(fn(*tensors), tf.float32) * weights)
        return loss.numpy(), [g.numpy() for g in tape.gradient(loss, tensors)]
    if backend == "jax":
        import jax
        import jax.numpy as jnp

        def loss(*xs):
            return jnp.sum(fn(*xs).astype("float32") * weights)

        value, grads = jax.value_and_grad(loss, argnums=range(len(args)))(*args)
        return np.asarray(value), [np.asarray(g) for g in grads]
    raise NotImplementedError(backend)
