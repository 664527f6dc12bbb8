"""The one dispatch point to the backend modules (`_backend_<name>.py`),
for what `keras.ops` cannot tell. Tests replace its functions."""

import keras
from keras import ops


def platform():
    """The platform of the backend's first device: `"cpu"`, `"gpu"` or
    `"tpu"` (TensorFlow: `"cpu"`, as no fused kernel of its is used)."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        return jax.devices()[0].platform
    if backend == "torch":
        from keras_attention.ops import _backend_torch

        return _backend_torch.platform()
    return "cpu"


def fused_attention(
    query,
    key,
    value,
    mask=None,
    scale=None,
    is_causal=False,
    attn_logits_soft_cap=None,
):
    """The backend's fused attention kernel, on `(batch, length, heads,
    dim)` inputs (replaced by a recording stub in tests).

    PyTorch: `F.scaled_dot_product_attention`, called directly (Keras'
    `dot_product_attention` repeats grouped key/value heads, and its
    `flash_attention=True` refuses a CPU). JAX: Keras' op with
    `flash_attention=True`.
    """
    if keras.backend.backend() == "torch":
        from keras_attention.ops import _backend_torch

        if attn_logits_soft_cap is not None:
            raise ValueError(
                "PyTorch's fused attention takes no logits soft-cap. "
                f"Received: attn_logits_soft_cap={attn_logits_soft_cap}"
            )
        return _backend_torch.scaled_dot_product_attention(
            query, key, value, mask, scale, is_causal
        )
    kwargs = {}
    if attn_logits_soft_cap is not None:
        kwargs["attn_logits_soft_cap"] = attn_logits_soft_cap
    return ops.dot_product_attention(
        query,
        key,
        value,
        mask=mask,
        scale=scale,
        is_causal=is_causal,
        flash_attention=True,
        **kwargs,
    )


def torch_compiling():
    """Whether `torch.compile` (Keras' `jit_compile=True` on PyTorch) is
    tracing the code being run: reading a tensor's values there would break
    its graph."""
    from keras_attention.ops import _backend_torch

    return _backend_torch.compiling()


def compiling_with_xla():
    """Whether the code being traced will be compiled by XLA with shapes
    that are unknown now and static then (TensorFlow's `jit_compile=True`).

    A run-time `cond` between kernels cannot be compiled there. JAX always
    traces with static shapes, and PyTorch runs eagerly or under
    `torch.compile`, which compiles both branches of a `cond`: False.
    """
    if keras.backend.backend() != "tensorflow":
        return False
    from keras_attention.ops import _backend_tensorflow

    return _backend_tensorflow.compiling_with_xla()


def gradient_may_follow(*tensors):
    """Whether a gradient of the code being run or traced may be asked for:
    on TensorFlow, while a `tf.GradientTape` records; on PyTorch, while
    autograd records one of `tensors` (gradients are enabled, as everywhere
    outside `torch.no_grad()` and Keras' `predict`, and one of them requires
    a gradient, as the outputs of a layer's weights do). JAX: False, as its
    forward keeps what a gradient needs, and `jax.jit` drops it when no
    gradient reads it (`drops_unread_results`)."""
    backend = keras.backend.backend()
    if backend == "torch":
        from keras_attention.ops import _backend_torch

        return _backend_torch.gradient_may_follow(*tensors)
    if backend != "tensorflow":
        return False
    from keras_attention.ops import _backend_tensorflow

    return _backend_tensorflow.tape_recording()


def drops_unread_results():
    """Whether compiled code skips the results nobody reads, so that a
    kernel may compute what only its gradient needs: XLA under `jax.jit`.
    TensorFlow runs every output of a loop."""
    return keras.backend.backend() == "jax"


def map_blocks(fn, n, templates, sequential):
    """TensorFlow's `[fn(i) for i in range(n)]`, stacked: a `while` loop that
    writes each result into its slot of a preallocated output shaped like
    `templates`, which every export format takes (see
    `_backend_tensorflow.map_blocks`). `sequential`: one iteration at a
    time, else up to 10 at once."""
    from keras_attention.ops import _backend_tensorflow

    return _backend_tensorflow.map_blocks(
        fn, n, templates, 1 if sequential else 10
    )


def hoist_mod(fn, dtypes, gradient):
    """A user's elementwise function (`score_mod`, `mask_mod`) prepared for
    the chunked kernel's custom gradient: `(fn, params)`, to be called by
    `call_mod` and differentiated by `mod_vjp`, where `params` are the
    tensors `fn` closes over that must cross the gradient's boundary as
    inputs. `dtypes`: those of `fn`'s arguments. `gradient`: whether
    gradients may be asked for (only JAX hoists without).

    JAX: every traced array `fn` reads (a closed-over tracer breaks the
    custom gradient). TensorFlow: the floating-point tensors it closes over
    (the variables it reads reach the gradient through TensorFlow's own
    custom gradient). PyTorch: the leaves that require a gradient.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        from keras_attention.ops import _backend_jax

        return _backend_jax.hoist(fn, dtypes)
    if not gradient:
        return fn, []
    if backend == "tensorflow":
        from keras_attention.ops import _backend_tensorflow

        return fn, _backend_tensorflow.captured_tensors(fn, dtypes)
    from keras_attention.ops import _backend_torch

    probe = [ops.zeros((), dtype) for dtype in dtypes]
    return fn, _backend_torch.captured_leaves(fn, probe)


def call_mod(fn, args, params):
    """`fn(*args)` for `(fn, params)` from `hoist_mod`; `params=None`: the
    user's function itself, called on the block."""
    if params is not None and keras.backend.backend() == "jax":
        from keras_attention.ops import _backend_jax

        return _backend_jax.call_elementwise(fn, args, params)
    return fn(*args)


def mod_vjp(fn, args, params, cotangent, variables=()):
    """The gradients of `sum(call_mod(fn, args, params) * cotangent)` with
    respect to `args[0]`, each of `params` and (TensorFlow) `variables`."""
    backend = keras.backend.backend()
    if backend == "jax":
        from keras_attention.ops import _backend_jax

        return _backend_jax.vjp(fn, args, params, cotangent)
    if backend == "tensorflow":
        from keras_attention.ops import _backend_tensorflow

        return _backend_tensorflow.vjp(fn, args, params, cotangent, variables)
    from keras_attention.ops import _backend_torch

    return _backend_torch.vjp(fn, args, params, cotangent)
