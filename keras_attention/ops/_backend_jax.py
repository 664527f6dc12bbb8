"""What `keras.ops` cannot express on JAX."""

import jax
import jax.numpy as jnp


def hoist(fn, dtypes):
    """`fn` with the traced arrays it closes over made explicit:
    `(pure_fn, params)`, `pure_fn(*args, *params)`, specialised to 0-d
    arguments of `dtypes` (see `call_elementwise`). A closed-over tracer
    cannot cross a custom gradient's boundary; an explicit input can, and
    gets its gradient there."""
    examples = [jnp.zeros((), dtype) for dtype in dtypes]
    pure_fn, params = jax.closure_convert(fn, *examples)
    return pure_fn, list(params)


def call_elementwise(pure_fn, args, params):
    """`pure_fn` (from `hoist`) on broadcastable `args`, element by element:
    `vmap` over the flattened broadcast shape."""
    shape = jnp.broadcast_shapes(*(jnp.shape(a) for a in args))
    flat = [jnp.broadcast_to(a, shape).reshape(-1) for a in args]
    out = jax.vmap(lambda *xs: pure_fn(*xs, *params))(*flat)
    return out.reshape(shape)


def vjp(pure_fn, args, params, cotangent):
    """Gradients of `sum(call_elementwise(...) * cotangent)` with respect to
    `args[0]` and `params`."""
    rest = args[1:]

    def fn(first, *params):
        return call_elementwise(pure_fn, (first, *rest), params)

    return jax.vjp(fn, args[0], *params)[1](cotangent)
