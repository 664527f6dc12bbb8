import keras
from keras import ops

from keras_attention import _masking
from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.ops.attention import additive_attention


@keras.saving.register_keras_serializable(package="keras_attention")
class AdditiveAttention(_common.ValidatedLayer):
    """Bahdanau (additive) attention with learned projections.

    The score of query `q_t` against key `k_s` is
    `v . tanh(W_q q_t + W_k k_s [+ b])`; the weights are the masked softmax
    of the scores over the keys, and the output is the weighted sum of the
    values. Keys default to the values.

    What it adds over `keras.layers.AdditiveAttention`: Keras core's layer
    of the same name has no `W_q`, `W_k` or `v` (it scores `sum(tanh(q +
    k))`, so query and key must already share a size). This layer is the
    attention of Bahdanau et al. (2015) and tensorflow-addons'
    `BahdanauAttention`: learned projections of any query and key sizes to
    `units`, the optional weight normalisation of `v`
    (`normalize=True`: `v` becomes `g * v / ||v||` with a learned scalar
    `g`), a single-step decoder query `(batch, dim)`, and `project_keys` so
    that a decoder loop projects the keys once and reuses them.

    Masking: `value_mask` (or the value's Keras mask) removes padded keys;
    `query_mask` (or the query's Keras mask) marks padded queries, whose
    output is zero; the output carries the query's mask. The rules for
    masks, fully masked rows, non-finite inputs, dtypes and `chunk_size`
    are those of `keras_attention.ops.scaled_dot_product_attention`.

    Args:
        units: int, size of the projected space (the hidden size of the
            scoring MLP).
        use_bias: bool, whether to add a learned bias `b` inside the `tanh`.
        normalize: bool, whether to weight-normalise `v` with a learned scalar
            `g` (initialised to `sqrt(1 / units)`, as in tensorflow-addons).
        dropout: float in `[0, 1)`, dropout rate on the attention weights.
        chunk_size: `"auto"`, `None` or a positive int; see
            `keras_attention.ops.additive_attention`.
        kernel_initializer: initializer for `W_q`, `W_k` and `v`.
        kernel_regularizer: regularizer for `W_q`, `W_k` and `v`.
        kernel_constraint: constraint for `W_q`, `W_k` and `v`.
        seed: optional int, seed for the attention dropout.
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        query: `(batch_size, target_length, query_dim)`, or `(batch_size,
            query_dim)` for a single decoder step.
        value: `(batch_size, source_length, value_dim)`.
        key: optional `(batch_size, source_length, key_dim)`; defaults to
            `value`. Ignored when `projected_key` is given.
        query_mask: optional boolean `(batch_size, target_length)` mask
            (`(batch_size,)` for a single step).
        value_mask: optional boolean `(batch_size, source_length)` mask.
        projected_key: optional `(batch_size, source_length, units)`, the
            result of `project_keys(key)`, to skip projecting the keys.
        return_attention_scores: bool, whether to also return the weights.
        training: bool, whether dropout is active.
        use_causal_mask: bool, whether query `i` may attend only keys
            `j <= i` (not for a single-step query).

    Returns:
        The context `(batch_size, target_length, value_dim)`, or
        `(batch_size, value_dim)` for a single step; with
        `return_attention_scores`, also the weights `(batch_size,
        target_length, source_length)` or `(batch_size, source_length)`.

    Example:

    A decoder loop that projects the encoder outputs once:

    >>> import numpy as np
    >>> attention = AdditiveAttention(units=16)
    >>> encoder_outputs = np.random.rand(2, 7, 32).astype("float32")
    >>> keys = attention.project_keys(encoder_outputs)  # (2, 7, 16), once
    >>> state = np.zeros((2, 24), "float32")
    >>> for step in range(3):
    ...     context, weights = attention(
    ...         state, encoder_outputs, projected_key=keys,
    ...         return_attention_scores=True)
    >>> tuple(context.shape), tuple(weights.shape)
    ((2, 32), (2, 7))

    Reference:
        [Bahdanau et al., 2015](https://arxiv.org/abs/1409.0473);
        weight normalisation: [Salimans & Kingma, 2016](
        https://arxiv.org/abs/1602.07868).
    """

    def __init__(
        self,
        units,
        use_bias=True,
        normalize=False,
        dropout=0.0,
        chunk_size="auto",
        kernel_initializer="glorot_uniform",
        kernel_regularizer=None,
        kernel_constraint=None,
        seed=None,
        **kwargs,
    ):
        _validation.check_positive_int("units", units)
        _validation.check_chunk_size(chunk_size)
        _validation.check_bool("use_bias", use_bias)
        _validation.check_bool("normalize", normalize)
        _validation.check_rate("dropout", dropout)
        _validation.check_seed(seed)
        # attention_v has `units` elements: fail before `build`.
        _validation.check_size_product({"units": units})
        super().__init__(**kwargs)
        self.supports_masking = True
        self.units = int(units)
        self.use_bias = use_bias
        self.normalize = normalize
        self.dropout = float(dropout)
        self.chunk_size = chunk_size
        _common.set_keras_objects(self, locals(), bias=False)
        self.seed = seed
        self.seed_generator = (
            keras.random.SeedGenerator(seed) if self.dropout > 0 else None
        )
        self._query_dense = self._dense("query")
        self._key_dense = self._dense("key")

    def _dense(self, name):
        return keras.layers.Dense(
            self.units,
            use_bias=False,
            **_common.sublayer_kwargs(self, bias=False),
            name=name,
        )

    def _check_shapes(self, query_shape, value_shape, key_shape):
        query_shape = tuple(query_shape)
        value_shape = tuple(value_shape)
        _validation.check_rank("query", query_shape, (2, 3))
        _validation.check_rank("value", value_shape, (3,))
        _validation.check_dims_equal(
            "query", query_shape[0], "value", value_shape[0], "batch size"
        )
        if key_shape is not None:
            key_shape = tuple(key_shape)
            _validation.check_rank("key", key_shape, (3,))
            for i, what in ((0, "batch size"), (1, "sequence length")):
                _validation.check_dims_equal(
                    "key", key_shape[i], "value", value_shape[i], what
                )
        return query_shape, value_shape, key_shape or value_shape

    def build(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape, key_shape = self._check_shapes(
            query_shape, value_shape, key_shape
        )
        _common.check_additive_kernels(
            "AdditiveAttention",
            ("query", "key"),
            query_shape,
            key_shape,
            self.units,
        )
        self._query_dense.build(query_shape)
        if not self._key_dense.built:
            self._key_dense.build(key_shape)
        _common.add_scoring_weights(
            self,
            self.normalize,
            self.use_bias,
            regularizer=self.kernel_regularizer,
            constraint=self.kernel_constraint,
        )
        self._value_dim = value_shape[-1]

    def project_keys(self, key):
        """Projects keys once: `W_k key`, `(batch, source_length, units)`.

        Pass the result as `projected_key=` to every decoder step.
        """
        key = ops.convert_to_tensor(key)
        _validation.check_rank("key", key.shape, (3,))
        if not self._key_dense.built:
            self._key_dense.build(tuple(key.shape))
        else:
            _validation.check_last_dim(
                "key", key.shape, self._key_dense.kernel.shape[0], "key"
            )
        return self._key_dense(_common.strip_keras_mask(key))

    def call(
        self,
        query,
        value,
        key=None,
        query_mask=None,
        value_mask=None,
        projected_key=None,
        return_attention_scores=False,
        training=None,
        use_causal_mask=False,
    ):
        self._check_shapes(
            query.shape, value.shape, None if key is None else key.shape
        )
        single_step = len(query.shape) == 2
        if single_step and use_causal_mask:
            raise ValueError(
                "`use_causal_mask=True` needs a query sequence `(batch, "
                "target_length, dim)`; a single-step query has no positions. "
                f"Received: query.shape={tuple(query.shape)}"
            )
        _validation.check_last_dim(
            "query", query.shape, self._query_dense.kernel.shape[0], "query"
        )
        _validation.check_last_dim(
            "value", value.shape, self._value_dim, "value"
        )
        q_target = tuple(query.shape[:-1])
        _validation.check_mask(
            "query_mask", query_mask, q_target, "(batch_size, target_length)"
        )
        _validation.check_mask(
            "value_mask",
            value_mask,
            tuple(value.shape[:-1]),
            "(batch_size, source_length)",
        )
        # Masks: checked (0/1 values) before any projection.
        query_mask = _masking.as_bool(query_mask, "query_mask")
        value_mask = _masking.as_bool(value_mask, "value_mask")
        if query_mask is not None:
            # (batch, target_length) -> (batch, target_length, 1); a single
            # step's (batch,) -> (batch, 1, 1). No reshape with -1: it
            # cannot infer an axis when target_length is 0.
            query_mask = ops.expand_dims(query_mask, -1)
            if single_step:
                query_mask = ops.expand_dims(query_mask, -1)
        if value_mask is not None:
            value_mask = ops.expand_dims(value_mask, 1)
        if projected_key is None:
            key = value if key is None else key
            _validation.check_last_dim(
                "key", key.shape, self._key_dense.kernel.shape[0], "key"
            )
            projected_key = self._key_dense(_common.strip_keras_mask(key))
        else:
            projected_key = ops.convert_to_tensor(projected_key)
            _validation.check_rank("projected_key", projected_key.shape, (3,))
            _validation.check_last_dim(
                "projected_key", projected_key.shape, self.units, "units"
            )
            _validation.check_dims_equal(
                "projected_key",
                projected_key.shape[1],
                "value",
                value.shape[1],
                "sequence length",
            )
        if single_step:
            query = ops.expand_dims(query, 1)
        projected_query = self._query_dense(_common.strip_keras_mask(query))

        mask = _masking.and_masks(query_mask, value_mask)

        result = additive_attention(
            projected_query,
            projected_key,
            value,
            _common.scoring_vector(self),
            hidden_bias=self.attention_b,
            mask=mask,
            is_causal=use_causal_mask,
            dropout_rate=self.dropout,
            training=bool(training),
            seed=self.seed_generator,
            return_scores=return_attention_scores,
            chunk_size=self.chunk_size,
        )
        output, scores = result if return_attention_scores else (result, None)
        if single_step:
            output = ops.squeeze(output, 1)
            scores = None if scores is None else ops.squeeze(scores, 1)
        if return_attention_scores:
            return output, scores
        return output

    def compute_output_shape(self, query_shape, value_shape, key_shape=None):
        query_shape, value_shape, _ = self._check_shapes(
            query_shape, value_shape, key_shape
        )
        return query_shape[:-1] + (value_shape[-1],)

    def compute_output_spec(self, *args, **kwargs):
        arguments = _common.call_arguments(AdditiveAttention.call, args, kwargs)
        query, value, key = (arguments[n] for n in ("query", "value", "key"))
        key_shape = None if key is None else key.shape
        output_shape = self.compute_output_shape(
            query.shape, value.shape, key_shape
        )
        output = keras.KerasTensor(output_shape, dtype=self.compute_dtype)
        if not arguments["return_attention_scores"]:
            return output
        scores_shape = tuple(query.shape[:-1]) + (value.shape[1],)
        return output, keras.KerasTensor(scores_shape, dtype=self.compute_dtype)

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "use_bias": self.use_bias,
                "normalize": self.normalize,
                "dropout": self.dropout,
                "chunk_size": self.chunk_size,
                "seed": self.seed,
            }
        )
        config.update(
            _common.serialize_keras_objects(self, _common.KERNEL_OBJECTS)
        )
        return config
