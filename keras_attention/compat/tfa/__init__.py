"""Migration from tensorflow-addons: `tfa.layers.MultiHeadAttention` and
`tfa.seq2seq.BahdanauAttention` for Keras 3, with tfa's weights and numbers.

Importing this module also registers the compat layers under tfa's Keras
names (`Addons>MultiHeadAttention`, `Addons>BahdanauAttention`), so configs
and legacy model files that name them deserialize here. See MIGRATING.md.
"""

import keras

from keras_attention.compat.tfa.bahdanau_attention import BahdanauAttention
from keras_attention.compat.tfa.conversion import to_keras_attention
from keras_attention.compat.tfa.multi_head_attention import MultiHeadAttention

# tfa's registered names resolve to the compat layers; the layers themselves
# serialize under `keras_attention.compat.tfa>...`.
_TFA_NAMES = {
    "Addons>MultiHeadAttention": MultiHeadAttention,
    # tfa never registered its attention mechanisms; this name lets a
    # hand-edited config refer to the compat layer the same way.
    "Addons>BahdanauAttention": BahdanauAttention,
}
keras.saving.get_custom_objects().update(_TFA_NAMES)

__all__ = ["BahdanauAttention", "MultiHeadAttention", "to_keras_attention"]
