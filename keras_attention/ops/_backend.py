"""The one dispatch point to the backend modules (`_backend_<name>.py`),
for what `keras.ops` cannot tell. Tests replace its functions."""

import keras


def compiling_with_xla():
    """Whether the code being traced will be compiled by XLA with shapes
    that are unknown now and static then (TensorFlow's `jit_compile=True`).

    A run-time `cond` between kernels cannot be compiled there. JAX always
    traces with static shapes, and PyTorch runs eagerly: False.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    from keras_attention.ops import _backend_tensorflow

    return _backend_tensorflow.compiling_with_xla()


def gradient_may_follow():
    """Whether a gradient of the code being run or traced may be asked for:
    on TensorFlow, while a `tf.GradientTape` records. Elsewhere False:
    under JAX the forward keeps what a gradient needs, and `jax.jit` drops
    it when no gradient reads it (`drops_unread_results`)."""
    if keras.backend.backend() != "tensorflow":
        return False
    from keras_attention.ops import _backend_tensorflow

    return _backend_tensorflow.tape_recording()


def drops_unread_results():
    """Whether compiled code skips the results nobody reads, so that a
    kernel may compute what only its gradient needs: XLA under `jax.jit`.
    TensorFlow runs every output of a loop."""
    return keras.backend.backend() == "jax"
