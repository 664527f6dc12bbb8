"""Serializable Keras 3 attention layers: multi-head (scaled dot-product),
additive (Bahdanau) and attention pooling.

Public API: `keras_attention.layers.*` (re-exported here) and
`keras_attention.ops.*`.
"""

from keras_attention import layers
from keras_attention import ops
from keras_attention.layers import AdditiveAttention
from keras_attention.layers import AttentionPooling
from keras_attention.layers import MultiHeadAttention

__version__ = "0.1.0"

__all__ = [
    "AdditiveAttention",
    "AttentionPooling",
    "MultiHeadAttention",
    "layers",
    "ops",
    "__version__",
]
