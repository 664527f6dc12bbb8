"""Registered `score_mod` and `mask_mod` functions for the layers' tests
and golden files: a layer saves them by their registered names."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="keras_attention_tests")
def prefix_lm(b, h, q_idx, kv_idx):
    """Prefix-LM: causal, and every query sees the first 3 keys."""
    return ops.logical_or(q_idx >= kv_idx, kv_idx < 3)


@keras.saving.register_keras_serializable(package="keras_attention_tests")
def distance_penalty(score, b, h, q_idx, kv_idx):
    """An ALiBi-like bias: `-0.25 * (h + 1) * |q_idx - kv_idx|`."""
    slope = ops.cast(h + 1, "float32") * 0.25
    distance = ops.cast(ops.abs(q_idx - kv_idx), "float32")
    return score - slope * distance
