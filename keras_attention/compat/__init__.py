"""Migration shims for models built with other attention libraries.

- `keras_attention.compat.tfa`: tensorflow-addons' `MultiHeadAttention` and
  `BahdanauAttention` (see MIGRATING.md).

`keras_attention` does not import this package; import it explicitly.
"""

from keras_attention.compat import tfa

__all__ = ["tfa"]
