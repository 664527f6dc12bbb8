"""Public attention layers."""

from keras_attention.layers.additive_attention import AdditiveAttention
from keras_attention.layers.attention_pooling import AttentionPooling
from keras_attention.layers.multi_head_attention import MultiHeadAttention

__all__ = ["AdditiveAttention", "AttentionPooling", "MultiHeadAttention"]
