"""The masked softmax every attention kernel in this package uses."""

from keras import ops

# Stands in for -inf at masked positions: exp(MASKED - max) is exactly 0 for
# any real logit, and unlike -inf it keeps fully masked rows NaN-free.
MASKED = -1e30


def masked_softmax(logits, mask=None, axis=-1):
    """Float32 softmax that excludes masked positions exactly.

    Masked positions get a weight of exactly zero (not a tiny one), and a row
    whose positions are all masked gives all zeros instead of a uniform
    distribution or NaN. Gradients stay finite in both cases. `-inf` logits
    count as masked. Uses the backend's fused softmax.

    Args:
        logits: float tensor; cast to float32.
        mask: optional boolean tensor broadcastable to `logits`; True means
            keep.
        axis: the axis to normalise over.

    Returns:
        float32 weights with the shape of `logits`.
    """
    logits = ops.cast(logits, "float32")
    if mask is None:
        return ops.softmax(logits, axis=axis)
    weights = ops.softmax(ops.where(mask, logits, MASKED), axis=axis)
    return ops.where(mask, weights, 0.0)


def finite_logits_mask(logits, mask=None):
    """`mask` AND NOT `logits <= MASKED`: -inf logits (from a bias) count as
    masked. NaN logits are kept, so that NaN inputs propagate to the output
    instead of being masked out silently."""
    finite = ops.logical_not(logits <= MASKED)
    return finite if mask is None else ops.logical_and(mask, finite)
