"""What `keras.ops` cannot express on PyTorch."""

import torch
import torch.nn.functional as F


def platform():
    """`"gpu"` where Keras' torch backend places tensors on CUDA, else
    `"cpu"`."""
    return "gpu" if torch.cuda.is_available() else "cpu"


def compiling():
    """Whether the code being run is traced by `torch.compile` (Keras'
    `jit_compile=True` on torch)."""
    return torch.compiler.is_compiling()


def gradient_may_follow(*tensors):
    """Whether autograd records one of `tensors`."""
    return torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in tensors
    )


def scaled_dot_product_attention(query, key, value, mask, scale, is_causal):
    """`F.scaled_dot_product_attention` on our `(batch, length, heads, dim)`
    layout: torch picks its fused kernel (flash attention on CPU and CUDA)
    where it can. Grouped key/value heads go in as they are
    (`enable_gqa`), not repeated. The head-major copies are contiguous, as
    Keras core's are: the CPU kernel reads them faster."""
    out = F.scaled_dot_product_attention(
        query.transpose(1, 2).contiguous(),
        key.transpose(1, 2).contiguous(),
        value.transpose(1, 2).contiguous(),
        attn_mask=mask,
        is_causal=is_causal,
        scale=scale,
        enable_gqa=query.shape[2] != key.shape[2],
    )
    return out.transpose(1, 2)


def captured_leaves(fn, args):
    """The tensors requiring a gradient that `fn(*args)` reaches through
    the tensors it closes over: the leaves of its autograd graph."""
    with torch.enable_grad():
        out = fn(*(a.detach() for a in args))
    leaves, seen, stack = [], set(), [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        if hasattr(node, "variable"):
            leaves.append(node.variable)
        stack.extend(next_node for next_node, _ in node.next_functions)
    return leaves


def vjp(fn, args, params, cotangent):
    """Gradients of `sum(fn(*args) * cotangent)` with respect to `args[0]`
    and the leaves `params` that `fn` reaches (see `captured_leaves`)."""
    with torch.enable_grad():
        first = args[0].detach().requires_grad_(True)
        out = fn(first, *args[1:])
        grads = torch.autograd.grad(
            out,
            [first, *params],
            cotangent,
            allow_unused=True,
            retain_graph=bool(params),
        )
    return [
        torch.zeros_like(t) if g is None else g
        for g, t in zip(grads, [first, *params])
    ]
