import re

import keras

from keras_attention import _sharding
from keras_attention.layers._transformer import TransformerBlock
from keras_attention.layers.multi_head_attention import MultiHeadAttention


def layout_map(
    device_mesh,
    model,
    model_axis="model",
    batch_axis="batch",
    fsdp=False,
    embeddings=True,
):
    """A `keras.distribution.LayoutMap` that shards this package's layers
    by attention head (Megatron-style tensor parallelism).

    Model-aware: it walks a built `model` and writes one exact, anchored
    entry per variable path it shards, so it can see head counts and never
    captures a user's own layer that happens to be called `query` or
    `feedforward_output_dense` (a regex key such as `.*query.*` would, and a
    path matched by two regex keys raises). The trade-off: the model must be
    built once to be read, and the model built under the distribution scope
    must have the same variable paths. Build both with the same code after
    `keras.backend.clear_session()` (Keras' automatic names restart), or give
    the layers explicit names. Build the template under
    `keras.device("cpu:0")` when one accelerator can't hold it.

    What it shards, on `model_axis` only (weights stay whole on the other
    axes unless `fsdp=True`):
    - `MultiHeadAttention` and `GroupedQueryAttention` (inside the
      Transformer blocks too): the `query`, `key`, `value` and `gate`
      kernels `(dim, heads, head_dim)` and biases `(heads, head_dim)` on
      the heads axis; `attention_output` `(heads, head_dim, dim)` on its
      input heads axis, its bias whole. Key/value heads that the model axis
      does not divide are replicated (each device holds all of them); query
      heads must divide.
    - `TransformerEncoder` and `TransformerDecoder` feed-forward: the
      intermediate dense by columns (kernel and bias), the output dense by
      rows (its bias whole).
    - with `embeddings=True`, every `keras.layers.Embedding` in the model
      (subclasses such as keras-hub's `ReversibleEmbedding` too) on the
      vocabulary axis, as keras-hub's `get_layout_map`; replicated when the
      model axis does not divide the vocabulary.
    Everything else is replicated: layer norms, `PositionEmbedding`,
    `PatchEmbedding`, `AdditiveAttention`, `AttentionPooling` and the
    user's own layers. Under this layout each block needs one all-reduce
    after the attention output and one after the feed-forward, and no
    communication inside attention.

    `fsdp=True` also shards each of those weights' `dim` axis on
    `batch_axis`, as keras-hub's Gemma and Llama layouts do (ZeRO-3 style:
    weights are gathered when used).

    Model parallelism is for the JAX backend: Keras' TensorFlow distribution
    backend is experimental.

    Args:
        device_mesh: a `keras.distribution.DeviceMesh` with an axis named
            `model_axis`.
        model: a built Keras model or layer that contains this package's
            layers.
        model_axis: str, the mesh axis to shard heads and the feed-forward
            on (default `"model"`).
        batch_axis: str, the mesh axis for data parallelism (default
            `"batch"`); used for weights only with `fsdp=True`.
        fsdp: bool, also shard the weights' model dimension on
            `batch_axis`.
        embeddings: bool, shard `Embedding` layers' vocabulary axis.

    Returns:
        A `keras.distribution.LayoutMap` for
        `keras.distribution.ModelParallel(layout_map=..., batch_dim_name=
        batch_axis)`.

    Example:

    >>> import keras, keras_attention
    >>> devices = keras.distribution.list_devices()[:1]
    >>> mesh = keras.distribution.DeviceMesh((1, 1), ("batch", "model"),
    ...                                      devices)
    >>> inputs = keras.Input((16, 32))
    >>> block = keras_attention.TransformerEncoder(64, 4, name="block")
    >>> model = keras.Model(inputs, block(inputs))
    >>> layouts = keras_attention.distribution.layout_map(mesh, model)
    >>> layouts["block/self_attention_layer/query/kernel"].axes
    (None, 'model', None)
    """
    mesh = _check_mesh(device_mesh, model_axis, batch_axis, fsdp)
    if not isinstance(model, keras.layers.Layer) or not model.built:
        raise ValueError(
            "Argument `model` must be a built Keras model or layer (call "
            "it once, or build it from `keras.Input`s) so that its variable "
            f"paths exist. Received: {model!r} (built="
            f"{getattr(model, 'built', None)})"
        )
    plan = _Plan(mesh, model_axis, batch_axis if fsdp else None)
    for layer in model._flatten_layers(include_self=True, recursive=True):
        if isinstance(layer, MultiHeadAttention):
            plan.attention(layer)
        elif isinstance(layer, TransformerBlock):
            plan.feedforward(layer)
        elif embeddings and isinstance(layer, keras.layers.Embedding):
            plan.embedding(layer)
    return plan.layouts


def place_cache(cache, distribution=None, model_axis="model"):
    """Places key/value caches with the head sharding of `layout_map`.

    A cache is not a variable, so a `LayoutMap` does not reach it. This puts
    each cache `(batch_size, 2, max_length, num_key_value_heads, head_dim)`
    (keras-hub's layout) on the distribution's mesh: the batch on its
    `batch_dim_name` axis and the heads on `model_axis`, each only where
    that axis divides the size (otherwise replicated, as `layout_map`
    replicates key/value heads). Inside a `jit` it is a sharding constraint.
    `TokenGenerator` calls it on the caches its model returns.

    Without a distribution, or on a backend other than JAX, the cache is
    returned as it is.

    Args:
        cache: a cache tensor, or a nested structure (tuple, list, dict) of
            them, e.g. one per `TransformerDecoder` block.
        distribution: a `keras.distribution.Distribution`; default: the
            one in scope (`keras.distribution.distribution()`).
        model_axis: str, the mesh axis that holds the heads.

    Returns:
        The cache, in the same structure, placed.

    Example:

    >>> import numpy as np
    >>> from keras_attention.distribution import place_cache
    >>> cache = np.zeros((2, 2, 8, 4, 16), "float32")
    >>> placed = place_cache(cache)  # no distribution in scope: unchanged
    >>> tuple(placed.shape)
    (2, 2, 8, 4, 16)
    """
    for leaf in keras.tree.flatten(cache):
        shape = getattr(leaf, "shape", None)
        if shape is None or len(shape) != 5 or shape[1] != 2:
            raise ValueError(
                "Argument `cache` must hold key/value caches of shape "
                "(batch_size, 2, max_length, num_key_value_heads, head_dim). "
                f"Received: a leaf of shape {shape}"
            )
    return _sharding.place(cache, distribution, model_axis)


def _check_mesh(device_mesh, model_axis, batch_axis, fsdp):
    if not isinstance(device_mesh, keras.distribution.DeviceMesh):
        raise ValueError(
            "Argument `device_mesh` must be a keras.distribution.DeviceMesh. "
            f"Received: {device_mesh!r}"
        )
    names = tuple(device_mesh.axis_names)
    if model_axis not in names:
        raise ValueError(
            f"Argument `device_mesh` must have the axis `model_axis`="
            f"{model_axis!r} to shard heads on. Received: a mesh with axes "
            f"{names}"
        )
    if fsdp and batch_axis not in names:
        raise ValueError(
            f"Argument `fsdp=True` shards weights on `batch_axis`="
            f"{batch_axis!r}, which `device_mesh` must have. Received: a "
            f"mesh with axes {names}"
        )
    if fsdp and batch_axis == model_axis:
        raise ValueError(
            "Arguments `batch_axis` and `model_axis` must differ with "
            f"`fsdp=True`. Received: both {model_axis!r}"
        )
    return device_mesh


class _Plan:
    """Collects one exact entry per sharded variable."""

    def __init__(self, mesh, model_axis, fsdp_axis):
        self.layouts = keras.distribution.LayoutMap(mesh)
        sizes = dict(zip(mesh.axis_names, mesh.shape))
        self.model_axis, self.model_size = model_axis, sizes[model_axis]
        self.fsdp_axis = fsdp_axis
        self.fsdp_size = sizes[fsdp_axis] if fsdp_axis else 1

    def _set(self, variable, axes):
        if variable is None:
            return
        axes = tuple(axes)
        for size, name in zip(variable.shape, axes):
            if name == self.fsdp_axis and size % self.fsdp_size:
                raise ValueError(
                    f"Argument `fsdp=True` shards `{variable.path}` on "
                    f"`batch_axis`={self.fsdp_axis!r}, whose "
                    f"{self.fsdp_size} devices must divide its model "
                    f"dimension. Received: shape {tuple(variable.shape)}"
                )
        # Exact and anchored: `LayoutMap` tries the key as it is first, and
        # as a full-match regex, which `re.escape` makes literal.
        self.layouts[re.escape(variable.path)] = axes

    def _divides(self, size):
        return size % self.model_size == 0

    def attention(self, layer):
        heads = layer.num_heads
        if not self._divides(heads):
            raise ValueError(
                f"Argument `device_mesh`: the model axis {self.model_axis!r} "
                f"has {self.model_size} devices, which must divide "
                f"`num_heads` of layer '{layer.path}'. Received: "
                f"num_heads={heads}"
            )
        kv_heads = layer.num_key_value_heads or heads
        m, f = self.model_axis, self.fsdp_axis
        kv = m if self._divides(kv_heads) else None
        gate = layer._gate_dense if layer.use_gate else None
        for dense, heads_axis in (
            (layer._query_dense, m),
            (gate, m),
            (layer._key_dense, kv),
            (layer._value_dense, kv),
        ):
            if dense is None:
                continue
            self._set(dense.kernel, (f, heads_axis, None))
            self._set(dense.bias, (heads_axis, None))
        output = layer._output_dense
        rest = len(output.kernel.shape) - 2
        self._set(output.kernel, (m, None) + (f,) + (None,) * (rest - 1))

    def feedforward(self, block):
        intermediate = block._feedforward_intermediate_dense
        output = block._feedforward_output_dense
        if not self._divides(block.intermediate_dim):
            raise ValueError(
                f"Argument `device_mesh`: the model axis {self.model_axis!r} "
                f"has {self.model_size} devices, which must divide "
                f"`intermediate_dim` of layer '{block.path}'. Received: "
                f"intermediate_dim={block.intermediate_dim}"
            )
        m, f = self.model_axis, self.fsdp_axis
        self._set(intermediate.kernel, (f, m))
        self._set(intermediate.bias, (m,))
        self._set(output.kernel, (m, f))

    def embedding(self, layer):
        table = layer.embeddings
        vocab = table.shape[0]
        m = self.model_axis if self._divides(vocab) else None
        self._set(table, (m, self.fsdp_axis))
