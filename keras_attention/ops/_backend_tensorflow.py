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
