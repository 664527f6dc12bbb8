"""Public attention layers, and the Transformer building blocks around
them."""

from keras_attention.layers.additive_attention import AdditiveAttention
from keras_attention.layers.attention_pooling import AttentionPooling
from keras_attention.layers.grouped_query_attention import GroupedQueryAttention
from keras_attention.layers.multi_head_attention import MultiHeadAttention
from keras_attention.layers.patch_embedding import PatchEmbedding
from keras_attention.layers.position_embedding import PositionEmbedding
from keras_attention.layers.rotary_embedding import RotaryEmbedding
from keras_attention.layers.sinusoidal_position_encoding import (
    SinusoidalPositionEncoding,
)
from keras_attention.layers.token_generator import TokenGenerator
from keras_attention.layers.transformer_decoder import TransformerDecoder
from keras_attention.layers.transformer_encoder import TransformerEncoder

# Keras exports its class as `keras.layers.GroupQueryAttention`.
GroupQueryAttention = GroupedQueryAttention

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
]
