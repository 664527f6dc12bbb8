"""Backend-agnostic attention math, written with `keras.ops` only."""

from keras_attention._masking import causal_mask
from keras_attention.ops._program import causal
from keras_attention.ops.attention import additive_attention
from keras_attention.ops.attention import scaled_dot_product_attention

__all__ = [
    "additive_attention",
    "causal",
    "causal_mask",
    "scaled_dot_product_attention",
]
