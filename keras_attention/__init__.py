"""Serializable Keras 3 attention layers: multi-head (scaled dot-product),
additive (Bahdanau) and attention pooling, and patch and position
embeddings.

Public API: `keras_attention.layers.*` (re-exported here) and
`keras_attention.ops.*`.
"""

from keras_attention import layers
from keras_attention import ops
from keras_attention.layers import AdditiveAttention
from keras_attention.layers import AttentionPooling
from keras_attention.layers import MultiHeadAttention
from keras_attention.layers import PatchEmbedding
from keras_attention.layers import PositionEmbedding
from keras_attention.layers import SinusoidalPositionEncoding

__version__ = "0.1.0"

__all__ = [
    "AdditiveAttention",
    "AttentionPooling",
    "MultiHeadAttention",
    "PatchEmbedding",
    "PositionEmbedding",
    "SinusoidalPositionEncoding",
    "layers",
    "ops",
    "__version__",
]
