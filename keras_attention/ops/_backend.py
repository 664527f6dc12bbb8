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
