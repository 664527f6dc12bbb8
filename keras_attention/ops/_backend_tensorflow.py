"""What `keras.ops` cannot tell on TensorFlow."""

import tensorflow as tf

# TensorFlow's private API, its only uses in the library: whether the graph
# being traced will be compiled by XLA (`tf.function(jit_compile=True)`,
# Keras' `compile(jit_compile=True)`), and whether a gradient tape records.
# TensorFlow itself asks them this way.
from tensorflow.python.eager import record
from tensorflow.python.ops import control_flow_util


def compiling_with_xla():
    """Whether the code being traced now will be compiled by XLA."""
    if tf.executing_eagerly():
        return False
    graph = tf.compat.v1.get_default_graph()
    return control_flow_util.GraphOrParentsInXlaContext(graph)


def tape_recording():
    """Whether a `tf.GradientTape` is recording the code being run or
    traced (TensorFlow's private API, the way its own ops ask it)."""
    return record.could_possibly_record()


def map_blocks(fn, n, templates, parallel_iterations):
    """`[fn(i) for i in range(n)]`, stacked, by a `while` loop that writes
    each result into its slot of a preallocated output shaped like
    `templates` (a structure of tensors, one per result).

    `tf.map_fn` and Keras' `scan` collect results in TensorLists of unknown
    element shape, which LiteRT's builtin ops cannot hold and OpenVINO
    cannot convert; a preallocated tensor updated by `TensorScatterUpdate`
    is a builtin of every format. TensorFlow copies the output at each
    update: a causal forward at length 8192 takes about 1.1x the time of
    `map_fn` (benchmarks/README.md, "ONNX, LiteRT and OpenVINO"). Up to
    `parallel_iterations` iterations run at once, each with its own blocks.
    """
    n = tf.convert_to_tensor(n, tf.int32)
    templates = tf.nest.map_structure(tf.convert_to_tensor, templates)
    outputs = tf.nest.map_structure(
        lambda t: tf.zeros(tf.concat([[n], tf.shape(t)], 0), t.dtype),
        templates,
    )
    # One row per update, none into an empty output (TensorFlow refuses an
    # index there even with an empty update).
    rows = tf.nest.map_structure(
        lambda t: tf.minimum(tf.size(t, tf.int32), 1), templates
    )

    def update(out, x, rows, i):
        x = tf.reshape(x, tf.concat([[rows], tf.shape(x)], 0))
        return tf.tensor_scatter_nd_update(out, tf.fill([rows, 1], i), x)

    def body(i, outputs):
        return i + 1, tf.nest.map_structure(
            lambda out, x, rows: update(out, x, rows, i),
            outputs,
            fn(i),
            rows,
        )

    return tf.while_loop(
        lambda i, _: i < n,
        body,
        (tf.constant(0), outputs),
        parallel_iterations=parallel_iterations,
    )[1]


def captured_tensors(fn, dtypes):
    """The floating-point tensors that `fn` closes over, found by tracing it
    on rank-4 arguments of `dtypes` (variables are not among them: a custom
    gradient hands those to its gradient function itself)."""
    specs = [tf.TensorSpec([None] * 4, dtype) for dtype in dtypes]
    concrete = tf.function(fn, autograph=False).get_concrete_function(*specs)
    return [t for t in concrete.captured_inputs if t.dtype.is_floating]


def vjp(fn, args, params, cotangent, variables=()):
    """Gradients of `sum(fn(*args) * cotangent)` with respect to `args[0]`,
    the tensors `params` that `fn` closes over, and `variables`."""
    first = args[0]
    with tf.GradientTape() as tape:
        tape.watch([first, *params])
        out = fn(first, *args[1:])
    return tape.gradient(
        out,
        [first, *params, *variables],
        output_gradients=cotangent,
        unconnected_gradients=tf.UnconnectedGradients.ZERO,
    )
