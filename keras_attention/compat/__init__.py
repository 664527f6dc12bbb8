"""Migration shims for models built with other attention libraries.

- `keras_attention.compat.tfa`: tensorflow-addons' `MultiHeadAttention` and
  `BahdanauAttention` (see MIGRATING.md).
- `keras_attention.compat.keras_hub`: `convert_causal_lm`, a keras-hub
  causal LM (GPT-2, OPT, Llama) with our attention layers, whose cache
  writes export without XLA (see docs/keras-hub.md). It needs keras-hub,
  and this package does not import it: import it explicitly.

`keras_attention` does not import this package; import it explicitly.
"""

from keras_attention.compat import tfa

__all__ = ["tfa"]
