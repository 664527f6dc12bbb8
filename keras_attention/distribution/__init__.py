"""Layouts for sharding this package's layers with `keras.distribution`.

Public API: `layout_map` (head-sharded model parallelism for
`keras.distribution.ModelParallel`) and `place_cache` (the matching
placement of key/value caches). The recipes: docs/distribution.md.
"""

from keras_attention.distribution._layout import layout_map
from keras_attention.distribution._layout import place_cache

__all__ = ["layout_map", "place_cache"]
