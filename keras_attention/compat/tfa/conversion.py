import numpy as np

from keras_attention.compat.tfa.bahdanau_attention import BahdanauAttention
from keras_attention.compat.tfa.multi_head_attention import MultiHeadAttention
from keras_attention.layers import _common
from keras_attention.layers.additive_attention import AdditiveAttention
from keras_attention.layers.multi_head_attention import (
    MultiHeadAttention as NativeMultiHeadAttention,
)


def to_keras_attention(layer):
    """Converts a built compat layer into the native `keras_attention` layer.

    The native layer gets the same weights, mapped into its layout, and gives
    the same outputs (within float32 rounding) for every input on which the
    two layers' masking agrees (see below). Its call convention is the
    native one:

    - `MultiHeadAttention` becomes `keras_attention.MultiHeadAttention(
      num_heads, key_dim=head_size, value_dim=head_size,
      output_shape=output_size)`. Each kernel `(num_heads, dim, head_size)`
      becomes an `EinsumDense` kernel `(dim, num_heads, head_size)`;
      `projection_kernel` keeps its layout. tfa has no query, key or value
      biases: with `use_projection_bias=True` the native layer has
      `use_bias=True`, its query, key and value biases are set to **zero**
      (they are trainable, so further training may move them), and its
      output bias is `projection_bias`; with `use_projection_bias=False` it
      has `use_bias=False` and no biases at all. Call it as
      `native(query, value, key=key, attention_mask=mask)` (note the order:
      value before key) with `return_attention_scores=True` in place of
      `return_attn_coef`.
    - `BahdanauAttention` becomes `keras_attention.AdditiveAttention(units,
      use_bias=normalize, normalize=normalize)`, whose weights
      (`attention_v`, [`attention_g`, `attention_b`], query kernel, key
      kernel) are tfa's in tfa's order. Call it as `native(query, memory,
      value_mask=mask, return_attention_scores=True)`, where `mask` is the
      boolean `(batch, memory_length)` mask (from the sequence lengths:
      `ops.arange(memory_length)[None] < lengths[:, None]`); it returns
      `(context, alignments)`. `probability_fn="hardmax"` has no native
      equivalent and raises.

    Where the masking differs: a query row whose keys (memory positions) are
    all masked attends all of them uniformly in tfa and in the compat layers;
    the native layers give that row zero weights, and a zero output. Inputs
    with at least one valid key per query give the same numbers.

    Args:
        layer: a built `keras_attention.compat.tfa.MultiHeadAttention` or
            `keras_attention.compat.tfa.BahdanauAttention`.

    Returns:
        A built `keras_attention.MultiHeadAttention` or
        `keras_attention.AdditiveAttention` with the converted weights, the
        same dtype policy and the same name.

    Example:

    >>> import numpy as np
    >>> from keras_attention.compat import tfa
    >>> compat = tfa.MultiHeadAttention(head_size=4, num_heads=2)
    >>> query = np.random.rand(2, 6, 8).astype("float32")
    >>> key = np.random.rand(2, 5, 3).astype("float32")
    >>> mask = np.random.rand(2, 6, 5) > 0.3
    >>> mask[..., 0] = True  # every query attends at least one key
    >>> expected = compat([query, key], mask=mask)
    >>> native = tfa.to_keras_attention(compat)
    >>> got = native(query, key, attention_mask=mask)
    >>> bool(np.allclose(got, expected, atol=1e-6))
    True
    """
    if isinstance(layer, MultiHeadAttention):
        _check_built(layer)
        return _convert_multi_head_attention(layer)
    if isinstance(layer, BahdanauAttention):
        _check_built(layer)
        return _convert_bahdanau_attention(layer)
    raise ValueError(
        "Argument `layer` must be a `keras_attention.compat.tfa."
        "MultiHeadAttention` or `keras_attention.compat.tfa."
        f"BahdanauAttention`. Received: layer={layer!r}"
    )


def _check_built(layer):
    if not layer.built:
        raise ValueError(
            f"Argument `layer` must be built (called once, or built with its "
            f"input shapes) before it is converted, so that its weights "
            f"exist. Received: an unbuilt layer {layer.name!r}"
        )


def _convert_multi_head_attention(layer):
    heads, query_dim, head_size = layer.query_kernel.shape
    key_dim = layer.key_kernel.shape[1]
    value_dim = layer.value_kernel.shape[1]
    output_size = layer.projection_kernel.shape[-1]
    rank = layer._input_rank
    native = NativeMultiHeadAttention(
        num_heads=heads,
        key_dim=head_size,
        value_dim=head_size,
        dropout=layer.dropout,
        use_bias=layer.use_projection_bias,
        output_shape=output_size,
        # tfa treats every leading axis as a batch axis.
        attention_axes=None if rank == 3 else (rank - 2,),
        kernel_initializer=_common.clone_initializer(layer.kernel_initializer),
        bias_initializer=_common.clone_initializer(layer.bias_initializer),
        kernel_regularizer=layer.kernel_regularizer,
        bias_regularizer=layer.bias_regularizer,
        kernel_constraint=layer.kernel_constraint,
        bias_constraint=layer.bias_constraint,
        seed=layer.seed,
        dtype=layer.dtype_policy,
        name=layer.name,
    )
    lead = (None,) * (rank - 1)
    native.build(lead + (query_dim,), lead + (value_dim,), lead + (key_dim,))
    # NumPy copies: under JAX, assigning one variable to another would share
    # a buffer that a compiled step may donate and delete.
    weights = dict(zip([w.name for w in layer.weights], layer.get_weights()))
    for dense, name in (
        (native.query_dense, "query_kernel"),
        (native.key_dense, "key_kernel"),
        (native.value_dense, "value_kernel"),
    ):
        dense.kernel.assign(np.transpose(weights[name], (1, 0, 2)))
        if layer.use_projection_bias:
            dense.bias.assign(np.zeros(dense.bias.shape, "float32"))
    native.output_dense.kernel.assign(weights["projection_kernel"])
    if layer.use_projection_bias:
        native.output_dense.bias.assign(weights["projection_bias"])
    return native


def _convert_bahdanau_attention(layer):
    if layer.probability_fn != "softmax":
        raise ValueError(
            "Only `probability_fn='softmax'` converts to "
            "`keras_attention.AdditiveAttention`, which has no hardmax. "
            f"Received: probability_fn={layer.probability_fn!r}"
        )
    native = AdditiveAttention(
        units=layer.units,
        use_bias=layer.normalize,
        normalize=layer.normalize,
        kernel_initializer=_common.clone_initializer(layer.kernel_initializer),
        dtype=layer.dtype_policy,
        name=layer.name,
    )
    query_dim = layer.query_layer.kernel.shape[0]
    memory_dim = layer.memory_layer.kernel.shape[0]
    native.build((None, query_dim), (None, None, memory_dim))
    # Same weights in the same order: attention_v, [attention_g,
    # attention_b], query kernel, memory (key) kernel.
    native.set_weights(layer.get_weights())
    return native
