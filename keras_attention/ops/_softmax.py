"""The masked softmax every attention kernel in this package uses."""

from keras import ops


def masked_softmax(logits, mask=None, axis=-1):
    """Float32 softmax that excludes masked positions exactly.

    Masked positions get a weight of exactly zero (not a tiny one), and a row
    whose positions are all masked gives all zeros instead of a uniform
    distribution or NaN. Gradients stay finite in both cases: the row maximum
    is a constant for differentiation, and masked logits never reach `exp`.

    Args:
        logits: float tensor; cast to float32.
        mask: optional boolean tensor broadcastable to `logits`; True means
            keep.
        axis: the axis to normalise over.

    Returns:
        float32 weights with the shape of `logits`.
    """
    logits = ops.cast(logits, "float32")
    if mask is not None:
        logits = ops.where(mask, logits, float("-inf"))
    row_max = ops.max(logits, axis=axis, keepdims=True)
    # A fully masked row has max -inf; use 0 so that exp(-inf - 0) = 0.
    row_max = ops.where(ops.isfinite(row_max), row_max, 0.0)
    unnormalized = ops.exp(logits - ops.stop_gradient(row_max))
    denom = ops.sum(unnormalized, axis=axis, keepdims=True)
    return unnormalized / ops.where(denom > 0.0, denom, 1.0)
