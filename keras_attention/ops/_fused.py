"""When the backend's fused attention kernel runs instead of ours.

`choose` is the whole rule (documented once, in
`keras_attention.ops.scaled_dot_product_attention`); `facts` gathers what it
needs to know about the environment, and `attend` makes the fused call
through `_backend.fused_attention`. The tests replace `environment` and
`_backend.fused_attention` to exercise every combination on a CPU.
"""

import keras
from keras import ops

from keras_attention import _masking
from keras_attention.ops import _backend

# Input dtypes the fused kernels take: cuDNN's flash attention needs half
# precision; the TPU kernel takes float32 too.
_GPU_DTYPES = ("float16", "bfloat16")
_TPU_DTYPES = ("float16", "bfloat16", "float32")

# What `flash_attention=True` cannot do, in the words of the error. Scores
# and dropout use Keras' own sentences.
_REASONS = {
    "scores": "Returning attention scores is not supported when flash "
    "attention is enabled. Please disable flash attention to access "
    "attention scores.",
    "dropout": "Dropout is not supported when flash attention is enabled.",
    "backend": "Flash attention needs a fused kernel, which this backend "
    "does not have here (PyTorch has one, and JAX on a GPU or TPU).",
    "dtype": "Flash attention on a GPU takes float16 or bfloat16 inputs.",
    "bias": "Flash attention does not take an attention bias.",
    "soft_cap": "Flash attention takes a logits soft-cap on JAX on a TPU only.",
    "mask": "Flash attention takes a mask of rank 2 or 4 with a static shape.",
    "programmable": "Flash attention takes no `score_mod`, `mask_mod`, "
    "segment ids or sinks.",
}


def environment():
    """`(backend, platform)`, the platform of the first device: `"cpu"`,
    `"gpu"` or `"tpu"`."""
    return keras.backend.backend(), _backend.platform()


def facts(
    dtype,
    return_scores,
    dropout,
    bias,
    soft_cap,
    mask,
    chunk_size,
    programmable=False,
):
    """The inputs of `choose` for one call, from the call's arguments."""
    mask_ok = mask is None or (
        len(mask.shape) in (2, 4) and None not in tuple(mask.shape)
    )
    backend, platform = environment()
    return dict(
        backend=backend,
        platform=platform,
        dtype=keras.backend.standardize_dtype(dtype),
        return_scores=bool(return_scores),
        dropout=bool(dropout),
        bias=bias is not None,
        soft_cap=soft_cap is not None,
        mask_ok=mask_ok,
        programmable=bool(programmable),
        auto_chunk=isinstance(chunk_size, str) and chunk_size == "auto",
    )


def blockers(
    backend,
    platform,
    dtype,
    return_scores,
    dropout,
    bias,
    soft_cap,
    mask_ok,
    programmable=False,
):
    """The reasons the fused kernel can't take a call (empty if it can).

    `chunk_size` is not one: it only decides what `flash_attention=None`
    means (see `choose`)."""
    found = []
    jax_kernel = backend == "jax" and platform in ("gpu", "tpu")
    # PyTorch's SDPA runs on CPU and CUDA, in every float dtype.
    if not jax_kernel and backend != "torch":
        found.append("backend")
    if jax_kernel:
        dtypes = _TPU_DTYPES if platform == "tpu" else _GPU_DTYPES
        if dtype not in dtypes:
            found.append("dtype")
    if return_scores:
        found.append("scores")
    if dropout:
        found.append("dropout")
    if bias:
        found.append("bias")
    if soft_cap and not (jax_kernel and platform == "tpu"):
        found.append("soft_cap")
    if not mask_ok:
        found.append("mask")
    if programmable:
        found.append("programmable")
    return found


def choose(flash_attention, global_setting, **call_facts):
    """True to use the fused kernel; raises if `True` asks the impossible.

    `flash_attention`: the layer's or call's `True`, `False` or `None`;
    `global_setting`: `keras.config.is_flash_attention_enabled()` (`None`
    when unset or enabled, `False` when disabled); `auto_chunk` (in
    `call_facts`): whether `chunk_size="auto"`. An explicit `chunk_size`
    (an int, or None for the dense kernel) means our kernels unless
    `flash_attention=True`: explicit beats auto.
    """
    if flash_attention is False:
        return False
    auto_chunk = call_facts.pop("auto_chunk")
    found = blockers(**call_facts)
    if flash_attention is None:
        return global_setting is not False and auto_chunk and not found
    if found:
        # In `_REASONS`' order: Keras' own wording first.
        first = next(r for r in _REASONS if r in found)
        received = {
            "scores": "return_attention_scores=True",
            "dropout": "dropout in training",
            "backend": f"backend={call_facts['backend']!r} on "
            f"{call_facts['platform']!r}",
            "dtype": f"dtype={call_facts['dtype']!r}",
            "bias": "an attention bias",
            "soft_cap": "logits_soft_cap",
            "mask": "a mask it cannot take",
            "programmable": "score_mod, mask_mod, segment ids or sinks",
        }
        raise ValueError(
            f"{_REASONS[first]} Received: flash_attention=True with "
            + ", ".join(received[r] for r in found)
        )
    return True


def attend(query, key, value, mask, is_causal, scale, soft_cap, offset=0):
    """The fused kernel, with fully masked query rows set to zero.

    Rows with no key to attend are given every key, so that the kernel never
    sees an empty row (its output there may be NaN, and so its gradients);
    the select afterwards zeroes them, with zero gradients.
    """
    if is_causal and not (isinstance(offset, int) and offset == 0):
        # The fused kernel's causal mask is top-left aligned: an offset
        # diagonal goes in as a mask.
        causal = _masking.causal_mask(
            ops.shape(query)[1], ops.shape(key)[1], offset
        )
        mask = _masking.and_masks(mask, causal[None, None])
        is_causal = False
    if is_causal and mask is not None:
        # A mask and `is_causal` together: PyTorch's math kernel refuses the
        # pair, so the diagonal joins the mask.
        causal = _masking.causal_mask(ops.shape(query)[1], ops.shape(key)[1])
        mask = _masking.and_masks(mask, causal[None, None])
        is_causal = False
    row_valid = None
    if mask is not None:
        full = mask
        if is_causal:
            full = _masking.and_masks(
                full,
                _masking.causal_mask(ops.shape(query)[1], ops.shape(key)[1]),
            )
        if len(full.shape) == 2:
            full = full[None, None]
        row_valid = ops.any(full, axis=-1, keepdims=True)
        mask = ops.logical_or(mask, ops.logical_not(row_valid))
    kwargs = {}
    if soft_cap is not None:
        kwargs["attn_logits_soft_cap"] = soft_cap
    out = _backend.fused_attention(
        query, key, value, mask=mask, scale=scale, is_causal=is_causal, **kwargs
    )
    if key.shape[1] == 0:
        return ops.zeros_like(out)
    if row_valid is not None:
        # (B|1, N|1, T, 1) -> (B|1, T, N|1, 1), broadcast over head dims.
        row_valid = ops.transpose(row_valid, (0, 2, 1, 3))
        out = ops.where(row_valid, out, ops.zeros_like(out))
    return out
