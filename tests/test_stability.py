"""Numerical stability: huge logits, empty rows and fully masked key blocks.

Extends the existing checks (which are not repeated here):
`tests/ops/test_scaled_dot_product_attention.py` covers logits of +-1e4 in
half precision for the dense kernel's forward pass and finite float32
gradients of fully masked rows; `tests/layers/test_all_layers.py` covers
+-1e4 logits in every layer's forward pass under mixed precision;
`tests/ops/test_chunked.py` compares chunked and dense float32 gradients with
empty rows. Here:

- logits up to +-1e4 in float16 and bfloat16, dense and chunked, with and
  without masks: finite, within tolerance of the float32 reference, and
  with finite gradients;
- fully masked rows in half precision: exactly zero, zero gradients;
- the chunked kernel's online log-sum-exp when whole key blocks are masked
  (for some rows, for every row, the first and the last ragged block), with
  huge logits in the masked blocks: output and gradients equal the dense
  kernel's;
- every layer's gradients (inputs and weights) under mixed precision with
  +-1e4 logits and fully masked rows are finite.
"""

import keras
import numpy as np
import pytest
from keras import ops

from keras_attention import AdditiveAttention
from keras_attention import AttentionPooling
from keras_attention import MultiHeadAttention
from keras_attention.ops import additive_attention
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import to_numpy

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using a softmax over axis:UserWarning"
)


TOL = {"float32": 1e-5, "float16": 5e-3, "bfloat16": 4e-2}
HALF = ["float16", "bfloat16"]
KERNELS = {"dense": None, "chunked": 4}


def _round(x, dtype):
    return to_numpy(ops.cast(ops.cast(x, dtype), "float32"))


def _huge_logit_inputs(rng, b=2, t=9, s=11, n=2, kind="shifted"):
    """q, k, v (float32) whose logits at scale 1 reach +-1e4.

    "saturated": q, k = +-100 on one axis, so logits are exactly +-1e4.
    "shifted": logits 1e4 + q'.k' with q', k' of order 1, so the softmax of
    a row is not one-hot: its shape depends on the O(1) part only.
    "both": `b` saturated examples, then `b` shifted ones.
    """
    if kind == "both":
        parts = [
            _huge_logit_inputs(rng, b, t, s, n, kind)
            for kind in ("saturated", "shifted")
        ]
        return tuple(np.concatenate(xs) for xs in zip(*parts))
    if kind == "saturated":
        q = 100.0 * rng.choice([-1.0, 1.0], size=(b, t, n, 1))
        k = 100.0 * rng.choice([-1.0, 1.0], size=(b, s, n, 1))
        q = np.concatenate([q, np.zeros((b, t, n, 3))], -1)
        k = np.concatenate([k, np.zeros((b, s, n, 3))], -1)
    else:
        q = np.concatenate(
            [np.full((b, t, n, 1), 100.0), rng.normal(size=(b, t, n, 3))], -1
        )
        k = np.concatenate(
            [np.full((b, s, n, 1), 100.0), rng.normal(size=(b, s, n, 3))], -1
        )
    v = rng.normal(size=(b, s, n, 5))
    return tuple(x.astype("float32") for x in (q, k, v))


def _mask(rng, kind, b, t, s):
    if kind is None:
        return None
    mask = rng.random((b, 1, t, s)) > 0.3
    mask[0, :, 2] = False  # an empty row
    mask[1, :, -1] = False
    return mask


def _sdpa(dtype, chunk_size, **kwargs):
    def run(q, k, v):
        return scaled_dot_product_attention(
            ops.cast(q, dtype),
            ops.cast(k, dtype),
            ops.cast(v, dtype),
            scale=1.0,
            chunk_size=chunk_size,
            **kwargs,
        )

    return run


@pytest.mark.parametrize("mask_kind", [None, "empty_rows"])
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("dtype", HALF)
def test_huge_logits_in_half_precision(rng, dtype, kernel, mask_kind):
    """Examples 0-1 have saturated logits (+-1e4), examples 2-3 logits of
    1e4 + O(1). Without a mask, the attention is causal."""
    is_causal = mask_kind is None
    q, k, v = _huge_logit_inputs(rng, kind="both")
    mask = _mask(rng, mask_kind, 4, q.shape[1], k.shape[1])
    run = _sdpa(dtype, KERNELS[kernel], mask=mask, is_causal=is_causal)
    out = run(q, k, v)
    assert keras.backend.standardize_dtype(out.dtype) == dtype
    got = to_numpy(ops.cast(out, "float32"))
    assert np.all(np.isfinite(got))
    want, _ = reference.sdpa(
        *(_round(x, dtype) for x in (q, k, v)),
        mask=mask,
        is_causal=is_causal,
        scale=1.0,
    )
    np.testing.assert_allclose(got, want, atol=TOL[dtype], rtol=TOL[dtype])
    if mask is not None:
        assert np.all(got[0, 2] == 0.0) and np.all(got[1, -1] == 0.0)
    _, grads = loss_and_grads(run, q, k, v)
    for g in grads:
        assert np.all(np.isfinite(g))
    if mask is not None:  # an empty row gets no gradient
        assert np.all(grads[0][0, 2] == 0.0)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("dtype", ["float32"] + HALF)
def test_fully_masked_everything_is_zero_with_zero_gradients(
    rng, dtype, kernel
):
    q, k, v = _huge_logit_inputs(rng, kind="shifted")
    mask = np.zeros((1, 1, q.shape[1], k.shape[1]), bool)
    run = _sdpa(dtype, KERNELS[kernel], mask=mask)
    assert np.all(to_numpy(ops.cast(run(q, k, v), "float32")) == 0.0)
    _, grads = loss_and_grads(run, q, k, v)
    for g in grads:
        assert np.all(g == 0.0)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("dtype", HALF)
def test_additive_huge_logits_and_empty_rows(rng, dtype, kernel):
    # Saturated tanh and a scoring vector of 2500: logits of +-1e4.
    b, t, s, u = 2, 7, 10, 4
    pq = np.zeros((b, t, u), "float32")
    pk = rng.choice([-20.0, 20.0], size=(b, s, u)).astype("float32")
    value = rng.normal(size=(b, s, 3)).astype("float32")
    attention_v = np.array([2500.0, -2500.0, 2500.0, 2500.0], "float32")
    mask = _mask(rng, "empty_rows", b, t, s)[:, 0]

    def run(pq, pk, value):
        return additive_attention(
            ops.cast(pq, dtype),
            ops.cast(pk, dtype),
            ops.cast(value, dtype),
            attention_v,
            mask=mask,
            chunk_size=KERNELS[kernel],
        )

    got = to_numpy(ops.cast(run(pq, pk, value), "float32"))
    assert np.all(np.isfinite(got))
    want, _ = reference.additive(
        pq,
        pk,
        _round(value, dtype),
        np.eye(u),
        np.eye(u),
        attention_v,
        mask=mask,
    )
    np.testing.assert_allclose(got, want, atol=TOL[dtype], rtol=TOL[dtype])
    assert np.all(got[0, 2] == 0.0)
    _, grads = loss_and_grads(run, pq, pk, value)
    for g in grads:
        assert np.all(np.isfinite(g))


# -- The chunked kernel's log-sum-exp with fully masked key blocks ----------

CHUNK = 4
T_LEN, S_LEN = 10, 14  # 3 query blocks, 4 key blocks (the last one ragged)


def _block_mask(pattern, b=2):
    """Masks that empty whole `CHUNK`-wide key blocks."""
    mask = np.ones((b, 1, T_LEN, S_LEN), bool)

    def block(j):
        return slice(j * CHUNK, min((j + 1) * CHUNK, S_LEN))

    if pattern == "first_block_some_rows":
        mask[:, :, ::2, block(0)] = False
    elif pattern == "first_block_all_rows":
        mask[:, :, :, block(0)] = False
    elif pattern == "middle_block_all_rows":
        mask[:, :, :, block(1)] = False
    elif pattern == "last_ragged_block_all_rows":
        mask[:, :, :, block(3)] = False
    elif pattern == "all_but_last_block":
        mask[:, :, :, : 3 * CHUNK] = False
    elif pattern == "alternating_blocks_per_row":
        for i in range(T_LEN):
            mask[:, :, i, block(i % 4)] = False
    elif pattern == "whole_query_block_empty":
        mask[:, :, CHUNK : 2 * CHUNK, :] = False
    elif pattern == "one_key_per_row_in_late_block":
        mask[:] = False
        mask[:, :, np.arange(T_LEN), 12] = True
    else:
        raise ValueError(pattern)
    return mask


PATTERNS = [
    "first_block_some_rows",
    "first_block_all_rows",
    "middle_block_all_rows",
    "last_ragged_block_all_rows",
    "all_but_last_block",
    "alternating_blocks_per_row",
    "whole_query_block_empty",
    "one_key_per_row_in_late_block",
]


@pytest.mark.parametrize("huge", [False, True], ids=["normal", "huge_masked"])
@pytest.mark.parametrize("is_causal", [False, True], ids=["full", "causal"])
def test_chunked_log_sum_exp_with_masked_blocks(rng, is_causal, huge):
    """Every pattern of `PATTERNS` is one example of the batch."""
    b, n = len(PATTERNS), 2
    mask = np.concatenate([_block_mask(p, 1) for p in PATTERNS])

    def eighths(*shape):
        # Multiples of 1/8: the logits (scale 1) are exact in float32, even
        # with 1e4 added, so the kernels agree to rounding of the softmax.
        return (np.round(rng.normal(size=shape) * 8) / 8).astype("float32")

    q = np.concatenate([eighths(b, T_LEN, n, 4), np.ones((b, T_LEN, n, 1))], -1)
    k = np.concatenate(
        [eighths(b, S_LEN, n, 4), np.zeros((b, S_LEN, n, 1))], -1
    )
    q, k = q.astype("float32"), k.astype("float32")
    v = rng.normal(size=(b, S_LEN, n, 3)).astype("float32")
    if huge:
        # Keys masked for some rows get logits of 1e4 + O(1): were they to
        # leak into a masked row's running maximum, its valid keys' weights
        # would underflow to 0. (Rows that may see them attend them only.)
        masked_somewhere = ~mask[:, 0].all(axis=1)  # (b, S)
        k[..., -1] = np.where(masked_somewhere[:, :, None], 1e4, 0.0)

    def run(chunk_size):
        return lambda q, k, v: scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=is_causal,
            scale=1.0,
            chunk_size=chunk_size,
        )

    got = to_numpy(run(CHUNK)(q, k, v))
    want, _ = reference.sdpa(q, k, v, mask=mask, is_causal=is_causal, scale=1.0)
    _, grads = loss_and_grads(run(CHUNK), q, k, v)
    _, dense_grads = loss_and_grads(run(None), q, k, v)
    # The backward pass recomputes the weights from the saved log-sum-exp,
    # itself a float32 number near the logits: with logits of 1e4 its
    # rounding (1e4 * 2**-24 relative) bounds the agreement, as it bounds
    # any two float32 evaluations of such logits.
    tol = 10 * 1e4 * 2.0**-24 if huge else 1e-4
    for i, pattern in enumerate(PATTERNS):
        assert np.all(np.isfinite(got[i])), pattern
        np.testing.assert_allclose(
            got[i], want[i], atol=1e-5, rtol=1e-5, err_msg=pattern
        )
        for name, g, dg in zip("qkv", grads, dense_grads):
            assert np.all(np.isfinite(g[i])), (pattern, name)
            scale = max(1.0, float(np.abs(dg[i]).max()))
            np.testing.assert_allclose(
                g[i],
                dg[i],
                atol=tol * scale,
                rtol=tol,
                err_msg=f"{pattern}: d{name}",
            )


@pytest.mark.parametrize("dtype", HALF)
def test_chunked_masked_blocks_in_half_precision(rng, dtype):
    q, k, v = _huge_logit_inputs(rng, t=T_LEN, s=S_LEN, kind="shifted")
    mask = _block_mask("alternating_blocks_per_row")
    run = _sdpa(dtype, CHUNK, mask=mask)
    got = to_numpy(ops.cast(run(q, k, v), "float32"))
    want, _ = reference.sdpa(
        *(_round(x, dtype) for x in (q, k, v)), mask=mask, scale=1.0
    )
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, want, atol=TOL[dtype], rtol=TOL[dtype])
    _, grads = loss_and_grads(run, q, k, v)
    for g in grads:
        assert np.all(np.isfinite(g))


# -- Layers: gradients under mixed precision --------------------------------


def _layer_gradients(layer, inputs, call_kwargs):
    """Gradients of `sum(layer(*inputs) * R)` w.r.t. the inputs and the
    trainable weights (TensorFlow, JAX or PyTorch)."""
    out_shape = tuple(layer(*inputs, **call_kwargs).shape)
    weights = np.random.default_rng(7).normal(size=out_shape)
    weights = weights.astype("float32")
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        xs = [tf.constant(x) for x in inputs]
        with tf.GradientTape() as tape:
            tape.watch(xs)
            out = layer(*xs, **call_kwargs)
            loss = tf.reduce_sum(tf.cast(out, tf.float32) * weights)
        grads = tape.gradient(loss, xs + layer.trainable_weights)
        return [g.numpy() for g in grads]
    if backend == "torch":
        import torch

        xs = [
            keras.ops.convert_to_tensor(x).requires_grad_(True) for x in inputs
        ]
        out = layer(*xs, **call_kwargs)
        loss = torch.sum(keras.ops.cast(out, "float32") * torch.tensor(weights))
        params = [w.value for w in layer.trainable_weights]
        grads = torch.autograd.grad(loss, xs + params)
        return [to_numpy(g) for g in grads]
    import jax
    import jax.numpy as jnp

    trainable = [v.value for v in layer.trainable_variables]
    non_trainable = [v.value for v in layer.non_trainable_variables]

    def loss(trainable, *xs):
        out, _ = layer.stateless_call(
            trainable, non_trainable, *xs, **call_kwargs
        )
        return jnp.sum(out.astype("float32") * weights)

    grads = jax.grad(loss, argnums=tuple(range(len(inputs) + 1)))(
        trainable, *inputs
    )
    return [np.asarray(g) for g in list(grads[1:]) + list(grads[0])]


def _huge_layer(name, rng, policy):
    """A layer under `policy` whose logits reach +-1e4, its inputs, and call
    arguments that empty some rows."""
    if name == "mha":
        layer = MultiHeadAttention(
            num_heads=2, key_dim=4, kernel_initializer="ones", dtype=policy
        )
        x = np.full((2, 4, 8), 10.0, "float32")
        x[:, 1] = -10.0
        x += rng.normal(size=x.shape).astype("float32") * 0.1
        mask = np.ones((2, 4, 4), bool)
        mask[0, 2] = False
        return layer, (x, x), dict(attention_mask=mask)
    if name == "additive":
        layer = AdditiveAttention(units=4, use_bias=False, dtype=policy)
        q = rng.normal(size=(2, 3, 5)).astype("float32")
        v = rng.choice([-20.0, 20.0], size=(2, 6, 5)).astype("float32")
        layer(q, v)
        layer.set_weights(
            [
                np.array([2500.0, -2500.0, 2500.0, 2500.0], "float32"),
                np.full((5, 4), 0.01, "float32"),
                np.eye(5, 4, dtype="float32"),
            ]
        )
        mask = np.ones((2, 6), bool)
        mask[1] = False  # every key of example 1: its rows are empty
        return layer, (q, v), dict(value_mask=mask)
    layer = AttentionPooling(units=None, num_heads=1, dtype=policy)
    x = rng.choice([-100.0, 100.0], size=(2, 6, 1)).astype("float32")
    layer(x)
    layer.score_kernel.assign([[100.0]])
    mask = np.ones((2, 6), bool)
    mask[1] = False
    return layer, (x,), dict(mask=mask)


@pytest.mark.parametrize("policy", ["mixed_float16", "mixed_bfloat16"])
@pytest.mark.parametrize("name", ["additive", "mha", "pooling"])
def test_layer_gradients_finite_with_huge_logits_and_empty_rows(
    rng, name, policy
):
    layer, inputs, call_kwargs = _huge_layer(name, rng, policy)
    out = to_numpy(ops.cast(layer(*inputs, **call_kwargs), "float32"))
    assert np.all(np.isfinite(out))
    grads = _layer_gradients(layer, inputs, call_kwargs)
    assert len(grads) == len(inputs) + len(layer.trainable_weights)
    for g in grads:
        assert np.all(np.isfinite(np.asarray(g, np.float32)))
    if name == "mha":
        assert np.all(out[0, 2] == 0.0)
    else:
        assert np.all(out[1] == 0.0)
