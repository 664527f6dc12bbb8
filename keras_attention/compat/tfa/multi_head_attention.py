import math

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common

# tensorflow-addons adds this to the logits of masked positions
# (`logits += -10e9 * (1 - mask)`); kept as is so that the numbers match.
_TFA_MASK_PENALTY = -10e9


@keras.saving.register_keras_serializable(package="keras_attention.compat.tfa")
class MultiHeadAttention(_common.ValidatedLayer):
    """`tfa.layers.MultiHeadAttention` for Keras 3: same weights, same numbers.

    A stand-in for tensorflow-addons' multi-head attention, whose last
    release cannot be imported with Keras 3. It keeps tfa's call convention
    (`layer([query, key])` or `layer([query, key, value], mask=mask)`), its
    constructor arguments and its weights (names, shapes and order), so
    `layer.set_weights(tfa_layer.get_weights())` carries a trained tfa layer
    over with the same outputs, and a Keras config naming
    `Addons>MultiHeadAttention` deserializes to this class. To move on to
    `keras_attention.MultiHeadAttention`, see
    `keras_attention.compat.tfa.to_keras_attention`.

    Each head projects the inputs with its own kernels (tfa has no query, key
    or value biases), the scores are `(W_q q) . (W_k k) / sqrt(head_size)`,
    and the heads' outputs are projected back together by
    `projection_kernel` (plus `projection_bias`).

    Masking, as in tfa: `mask` is `1` (or True) where a query may attend a
    key. Masked logits get `-1e10` added before the softmax, so masked keys
    get a weight of exactly zero; a query row whose keys are all masked
    attends all keys uniformly, as in tfa (the native layers give a zero row
    instead). Keras masks carried by the inputs (e.g. from
    `Embedding(mask_zero=True)`), which tfa could not take, are used when
    `mask` is not given: padded keys are excluded, and the output carries the
    query's mask. The logits and softmax run in float32 under mixed
    precision.

    What it adds over tfa: it runs on Keras 3 (TensorFlow, JAX or PyTorch), and
    `seed` makes the attention dropout reproducible.

    Args:
        head_size: int, size of each head's projected query, key and value.
        num_heads: int, number of attention heads.
        output_size: optional int, size of the output features. Defaults to
            the value's last dimension (the key's when no value is given), as
            in tfa.
        dropout: float in `[0, 1)`, dropout rate on the attention weights.
        use_projection_bias: bool, whether the output projection has a bias.
        return_attn_coef: bool, whether the layer also returns the attention
            weights.
        kernel_initializer: initializer for the four kernels.
        kernel_regularizer: regularizer for the four kernels.
        kernel_constraint: constraint for the four kernels.
        bias_initializer: initializer for `projection_bias`.
        bias_regularizer: regularizer for `projection_bias`.
        bias_constraint: constraint for `projection_bias`.
        seed: optional int, seed for the attention dropout.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        inputs: a list `[query, key]` or `[query, key, value]`: `query` of
            shape `(batch_size, target_length, query_dim)`, `key` of shape
            `(batch_size, source_length, key_dim)` and `value` of shape
            `(batch_size, source_length, value_dim)` (defaults to `key`).
            Extra leading axes are batch axes, as in tfa.
        mask: optional `(batch_size, target_length, source_length)` tensor,
            `1` where a query may attend a key; also `(target_length,
            source_length)` or `(batch_size, num_heads, target_length,
            source_length)`.
        training: bool, whether dropout is active.

    Returns:
        output: `(batch_size, target_length, output_size)`.
        attention_coefficients: only if `return_attn_coef`; the weights
            after the softmax (before dropout), of shape `(batch_size,
            num_heads, target_length, source_length)`.

    Example:

    >>> import numpy as np
    >>> layer = MultiHeadAttention(head_size=4, num_heads=2,
    ...                            return_attn_coef=True)
    >>> query = np.random.rand(3, 6, 16).astype("float32")
    >>> key = np.random.rand(3, 5, 12).astype("float32")
    >>> mask = np.ones((3, 6, 5), "float32")
    >>> output, coef = layer([query, key], mask=mask)
    >>> tuple(output.shape), tuple(coef.shape)
    ((3, 6, 12), (3, 2, 6, 5))
    >>> [w.path.split("/")[-1] for w in layer.weights]
    ['query_kernel', 'key_kernel', 'value_kernel', 'projection_kernel', \
'projection_bias']

    Reference:
        [Vaswani et al., 2017](https://arxiv.org/abs/1706.03762);
        `tfa.layers.MultiHeadAttention` (tensorflow-addons 0.23).
    """

    def __init__(
        self,
        head_size,
        num_heads,
        output_size=None,
        dropout=0.0,
        use_projection_bias=True,
        return_attn_coef=False,
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        kernel_constraint=None,
        bias_initializer="zeros",
        bias_regularizer=None,
        bias_constraint=None,
        seed=None,
        **kwargs,
    ):
        _validation.check_positive_int("head_size", head_size)
        _validation.check_positive_int("num_heads", num_heads)
        _validation.check_positive_int(
            "output_size", output_size, allow_none=True
        )
        _validation.check_rate("dropout", dropout)
        _validation.check_bool("use_projection_bias", use_projection_bias)
        _validation.check_bool("return_attn_coef", return_attn_coef)
        _validation.check_seed(seed)
        # Each kernel has at least num_heads * head_size elements.
        _validation.check_size_product(
            {"num_heads": num_heads, "head_size": head_size}
        )
        _validation.check_size_product(
            {
                "num_heads": num_heads,
                "head_size": head_size,
                "output_size": output_size or 1,
            }
        )
        super().__init__(**kwargs)
        self.supports_masking = True
        self.head_size = int(head_size)
        self.num_heads = int(num_heads)
        self.output_size = None if output_size is None else int(output_size)
        self.dropout = float(dropout)
        self.use_projection_bias = use_projection_bias
        self.return_attn_coef = return_attn_coef
        _common.set_keras_objects(self, locals())
        self.seed = seed
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if self.dropout > 0 else None
        )

    # ------------------------------------------------------------------
    # Shapes
    # ------------------------------------------------------------------
    @staticmethod
    def _split_inputs(inputs):
        """`[query, key(, value)]` (tensors or shapes) -> `(query, key,
        value)`."""
        is_list = isinstance(inputs, (list, tuple))
        shape = None
        if not is_list:
            shape = _validation.static_shape(inputs)
        elif inputs and not isinstance(inputs[0], (list, tuple)):
            if not hasattr(inputs[0], "shape"):
                # A single shape, as `build` receives for a single tensor.
                is_list, shape = False, tuple(inputs)
        if not is_list or len(inputs) not in (2, 3):
            got = (
                f"a list of length {len(inputs)}"
                if is_list
                else f"a single tensor of shape {shape}"
            )
            raise ValueError(
                "Argument `inputs` must be a list `[query, key]` or "
                f"`[query, key, value]`, as in tfa. Received: {got}"
            )
        query, key = inputs[0], inputs[1]
        value = inputs[2] if len(inputs) == 3 else key
        return query, key, value

    def _check_shapes(self, query_shape, key_shape, value_shape):
        query_shape = tuple(query_shape)
        key_shape = tuple(key_shape)
        value_shape = tuple(value_shape)
        if len(query_shape) < 3:
            raise ValueError(
                "Argument `query` must have rank >= 3 (batch, target_length, "
                f"query_dim). Received: query.shape={query_shape}"
            )
        for name, shape in (("key", key_shape), ("value", value_shape)):
            if len(shape) != len(query_shape):
                raise ValueError(
                    f"Arguments `query` and `{name}` must have the same rank. "
                    f"Received: query.shape={query_shape}, "
                    f"{name}.shape={shape}"
                )
        _validation.check_dims_equal(
            "key", key_shape[-2], "value", value_shape[-2], "number of elements"
        )
        for i in range(len(query_shape) - 2):
            for name, shape in (("key", key_shape), ("value", value_shape)):
                _validation.check_dims_equal(
                    "query", query_shape[i], name, shape[i], f"dimension {i}"
                )
        return query_shape, key_shape, value_shape

    def _output_size(self, value_shape):
        return self.output_size or value_shape[-1]

    def build(self, input_shape):
        query_shape, key_shape, value_shape = self._check_shapes(
            *self._split_inputs(input_shape)
        )
        for name, shape in (
            ("query", query_shape),
            ("key", key_shape),
            ("value", value_shape),
        ):
            if shape[-1] is None:
                raise ValueError(
                    f"The last dimension of `{name}` must be known to build "
                    f"the layer. Received: {name}.shape={shape}"
                )
        output_size = self._output_size(value_shape)
        heads, size = self.num_heads, self.head_size
        _validation.check_weight_shapes(
            "MultiHeadAttention",
            {
                "query_kernel": (heads, query_shape[-1], size),
                "key_kernel": (heads, key_shape[-1], size),
                "value_kernel": (heads, value_shape[-1], size),
                "projection_kernel": (heads, size, output_size),
            },
            {
                "num_heads": heads,
                "head_size": size,
                "output_size": self.output_size,
                "query.shape": tuple(query_shape),
                "key.shape": tuple(key_shape),
                "value.shape": tuple(value_shape),
            },
        )

        def kernel(name, shape):
            return self.add_weight(
                name=name,
                shape=shape,
                **_common.weight_kwargs(self, "kernel"),
            )

        heads, size = self.num_heads, self.head_size
        self.query_kernel = kernel(
            "query_kernel", (heads, query_shape[-1], size)
        )
        self.key_kernel = kernel("key_kernel", (heads, key_shape[-1], size))
        self.value_kernel = kernel(
            "value_kernel", (heads, value_shape[-1], size)
        )
        self.projection_kernel = kernel(
            "projection_kernel", (heads, size, output_size)
        )
        self.projection_bias = None
        if self.use_projection_bias:
            self.projection_bias = self.add_weight(
                name="projection_bias",
                shape=(output_size,),
                **_common.weight_kwargs(self, "bias"),
            )
        self._input_rank = len(query_shape)

    def compute_output_shape(self, input_shape):
        query_shape, key_shape, value_shape = self._check_shapes(
            *self._split_inputs(input_shape)
        )
        output_shape = query_shape[:-1] + (self._output_size(value_shape),)
        if not self.return_attn_coef:
            return output_shape
        coef_shape = (
            query_shape[:-2]
            + (self.num_heads,)
            + (query_shape[-2], key_shape[-2])
        )
        return output_shape, coef_shape

    def compute_output_spec(self, inputs, mask=None, training=None):
        shapes = [tuple(x.shape) for x in self._split_inputs(inputs)]
        shapes = self.compute_output_shape(shapes)
        if not self.return_attn_coef:
            return keras.KerasTensor(shapes, dtype=self.compute_dtype)
        return tuple(
            keras.KerasTensor(s, dtype=self.compute_dtype) for s in shapes
        )

    def compute_mask(self, inputs, mask=None):
        query_mask = None
        if isinstance(mask, (list, tuple)) and mask:
            query_mask = mask[0]
        if self.return_attn_coef:
            return query_mask, None
        return query_mask

    # ------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------
    def _check_call(self, query, key, value, mask):
        self._check_shapes(query.shape, key.shape, value.shape)
        for name, tensor, weight in (
            ("query", query, self.query_kernel),
            ("key", key, self.key_kernel),
            ("value", value, self.value_kernel),
        ):
            got, expected = tensor.shape[-1], weight.shape[1]
            if got is not None and got != expected:
                raise ValueError(
                    f"The last dimension of `{name}` must be {expected}, the "
                    f"size the layer was built with. Received: "
                    f"{name}.shape={tuple(tensor.shape)}"
                )
        if mask is None:
            return
        _validation.check_mask_values("mask", mask)
        mask_shape = _validation.static_shape(mask)
        logits_rank = len(query.shape) + 1
        if not 2 <= len(mask_shape) <= logits_rank:
            raise ValueError(
                "Argument `mask` must have rank between 2 and "
                f"{logits_rank}: (target_length, source_length), (batch_size, "
                "target_length, source_length) or (batch_size, num_heads, "
                "target_length, source_length). Received: "
                f"mask.shape={mask_shape}"
            )
        expected = (query.shape[-2], key.shape[-2])
        for got, want, what in zip(
            mask_shape[-2:], expected, ("target_length", "source_length")
        ):
            if got not in (None, 1) and want is not None and got != want:
                raise ValueError(
                    f"Argument `mask` must have shape (..., target_length, "
                    f"source_length) = (..., {expected[0]}, {expected[1]}); "
                    f"its {what} axis does not match. Received: "
                    f"mask.shape={mask_shape}, query.shape="
                    f"{tuple(query.shape)}, key.shape={tuple(key.shape)}"
                )

    @staticmethod
    def _mask_from_keras_masks(masks):
        """Key padding mask `(batch, 1, source_length)` from the inputs'
        Keras masks `[query_mask, key_mask(, value_mask)]`, or None."""
        if any(m is not None and not hasattr(m, "shape") for m in masks):
            # tf.keras saved a tensor passed as `mask=` as a reference
            # `[layer_name, node_index, tensor_index]`, which Keras 3's legacy
            # HDF5 loader hands over unresolved.
            raise ValueError(
                "Argument `mask` must be a tensor. Received an unresolved "
                "reference to a layer output, as Keras 3's legacy HDF5 loader "
                "passes a tensor that tf.keras saved as a keyword argument. "
                "Rebuild the model in code with the `keras_attention.compat."
                "tfa` layers and load the file with `model.load_weights(path)`"
                f" (see MIGRATING.md). Received: mask={list(masks)!r}"
            )
        masks = list(masks) + [None] * (3 - len(masks))
        result = None
        for mask in masks[1:]:
            if mask is None:
                continue
            mask = ops.cast(mask, "bool")
            result = mask if result is None else ops.logical_and(result, mask)
        if result is None:
            return None
        return ops.expand_dims(result, -2)

    def call(self, inputs, mask=None, training=None):
        query, key, value = self._split_inputs(inputs)
        if isinstance(mask, (list, tuple)):
            self._check_call(query, key, value, None)
            mask = self._mask_from_keras_masks(mask)
        else:
            self._check_call(query, key, value, mask)
        query = _common.strip_keras_mask(query)
        key = _common.strip_keras_mask(key)
        value = _common.strip_keras_mask(value)

        dtype = self.compute_dtype
        q = ops.einsum(
            "...ni,hio->...nho", query, ops.cast(self.query_kernel, dtype)
        )
        k = ops.einsum(
            "...mi,hio->...mho", key, ops.cast(self.key_kernel, dtype)
        )
        v = ops.einsum(
            "...mi,hio->...mho", value, ops.cast(self.value_kernel, dtype)
        )
        # As in tfa: the projected query is divided by sqrt(head_size).
        q = q / ops.cast(math.sqrt(float(self.head_size)), dtype)
        logits = ops.cast(ops.einsum("...nho,...mho->...hnm", q, k), "float32")
        if mask is not None:
            mask = ops.cast(mask, "float32")
            if len(mask.shape) != len(logits.shape):
                mask = ops.expand_dims(mask, -3)
            logits = logits + _TFA_MASK_PENALTY * (1.0 - mask)
        coef = ops.softmax(logits, axis=-1)
        coef = ops.cast(coef, dtype)

        weights = coef
        if training and self.dropout > 0.0:
            weights = keras.random.dropout(
                coef, self.dropout, seed=self.seed_generator
            )
        attended = ops.einsum("...hnm,...mhi->...nhi", weights, v)
        output = ops.einsum(
            "...nhi,hio->...no",
            attended,
            ops.cast(self.projection_kernel, dtype),
        )
        if self.projection_bias is not None:
            output = output + ops.cast(self.projection_bias, dtype)
        if self.return_attn_coef:
            return output, coef
        return output

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "head_size": self.head_size,
                "num_heads": self.num_heads,
                "output_size": self.output_size,
                "dropout": self.dropout,
                "use_projection_bias": self.use_projection_bias,
                "return_attn_coef": self.return_attn_coef,
                "seed": self.seed,
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
