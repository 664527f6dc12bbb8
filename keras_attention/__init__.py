"""Serializable Keras 3 attention layers, on TensorFlow, JAX and PyTorch.

Attention:
    `MultiHeadAttention` (multi-head scaled dot-product attention, a
    drop-in for Keras core's, with a key/value cache),
    `GroupedQueryAttention` (alias `GroupQueryAttention`, Keras' name),
    `AdditiveAttention` (Bahdanau) and `AttentionPooling`.
Transformer blocks: `TransformerEncoder` and `TransformerDecoder`.
Positions and patches: `PositionEmbedding` (learned),
    `SinusoidalPositionEncoding`, `RotaryEmbedding` and `PatchEmbedding`.
Decoding: `TokenGenerator` (greedy or sampled generation in one graph).

The layers are re-exported here from `keras_attention.layers`. The other
public modules: `keras_attention.ops` (the attention kernels),
`keras_attention.distribution` (head-sharded layouts),
`keras_attention.samplers` (keras-hub's samplers, exportable),
`keras_attention.serving` (SavedModel export and TF Serving; TensorFlow)
and `keras_attention.compat.tfa` (tensorflow-addons' attention layers).
"""

from keras_attention import distribution
from keras_attention import layers
from keras_attention import ops
from keras_attention import samplers
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

__version__ = "0.3.0"

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
    "samplers",
    "__version__",
]
