"""Serializable Keras 3 attention layers: multi-head (scaled dot-product),
additive (Bahdanau) and attention pooling, and the Transformer blocks built
on them: patch and position embeddings and a Transformer encoder.

Public API: `keras_attention.layers.*` (re-exported here),
`keras_attention.ops.*` and `keras_attention.distribution.*`.
"""

from keras_attention import distribution
from keras_attention import layers
from keras_attention import ops
from keras_attention.layers import AdditiveAttention
from keras_attention.layers import AttentionPooling
from keras_attention.layers import GroupedQueryAttention
from keras_attention.layers import GroupQueryAttention
from keras_attention.layers import MultiHeadAttention
from keras_attention.layers import PatchEmbedding
from keras_attention.layers import PositionEmbedding
from keras_attention.layers import RotaryEmbedding
from keras_attention.layers import SinusoidalPositionEncoding
from keras_attention.layers import TokenGenerator
from keras_attention.layers import TransformerDecoder
from keras_attention.layers import TransformerEncoder

__version__ = "0.2.0"

__all__ = [
    "AdditiveAttention",
    "AttentionPooling",
    "GroupQueryAttention",
    "GroupedQueryAttention",
    "MultiHeadAttention",
    "PatchEmbedding",
    "PositionEmbedding",
    "RotaryEmbedding",
    "SinusoidalPositionEncoding",
    "TokenGenerator",
    "TransformerDecoder",
    "TransformerEncoder",
    "distribution",
    "layers",
    "ops",
    "__version__",
]
