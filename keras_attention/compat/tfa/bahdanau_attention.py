import keras
import numpy as np
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common

PROBABILITY_FNS = ("softmax", "hardmax")

# tfa masks scores with the score dtype's lowest value (not -inf), so a row
# whose memory is all masked attends all positions uniformly.
_FLOAT32_MIN = float(np.finfo(np.float32).min)


@keras.saving.register_keras_serializable(package="keras_attention.compat.tfa")
class BahdanauAttention(keras.layers.Layer):
    """`tfa.seq2seq.BahdanauAttention` as a stateless Keras 3 layer.

    tensorflow-addons' attention mechanism, with the same weights (names,
    shapes and order) and the same numbers, so
    `layer.set_weights(tfa_mechanism.get_weights())` carries a trained
    mechanism over. The score of the decoder query `q` against memory
    position `s` is `sum(v * tanh(W_m m_s + W_q q))`; with `normalize=True`
    it is `sum(g * v / ||v|| * tanh(W_m m_s + W_q q + b))`. The alignments
    are `probability_fn(score)` over the memory positions, and the context
    is the alignments' weighted sum of the memory, as tfa's
    `AttentionWrapper` computes it.

    Unlike tfa's mechanism, which stores the memory with `setup_memory` and
    therefore cannot be exported (tensorflow/addons#2675), this layer takes
    the memory on every call and keeps no state: it exports to SavedModel
    and runs under JAX and PyTorch. `keras_attention.AdditiveAttention` is
    the native equivalent (see `keras_attention.compat.tfa.
    to_keras_attention`), with a way to project the memory once per
    sequence.

    Masking, as in tfa: `memory_sequence_length` or `memory_mask` (filled in
    from the memory's Keras mask) marks the valid memory positions. Padded
    positions are zeroed in the memory, and their scores are replaced by
    the lowest float32 value before `probability_fn`, so they get a weight
    of exactly zero; a row with no valid position attends all positions
    uniformly, and its context is zero, as in tfa. The scores and the
    softmax run in float32 under mixed precision.

    Args:
        units: int, size of the projected space (the depth of the scoring
            MLP).
        normalize: bool, whether to use the weight-normalised form, with the
            scalar `attention_g` (initialised to `sqrt(1 / units)`) and the
            bias `attention_b`.
        probability_fn: `"softmax"` (default) or `"hardmax"` (a one-hot
            vector at the highest score), as in tfa.
        kernel_initializer: initializer for `attention_v`, as in tfa (the
            query and memory kernels use Glorot uniform).
        **kwargs: base layer arguments, e.g. `name` and `dtype`.

    Call arguments:
        query: `(batch_size, query_dim)`, the decoder state of one step.
        memory: `(batch_size, memory_length, memory_dim)`, e.g. the encoder
            outputs.
        memory_sequence_length: optional integer `(batch_size,)`, the number
            of valid memory positions of each example.
        memory_mask: optional boolean `(batch_size, memory_length)`, True at
            valid memory positions. Not together with
            `memory_sequence_length`.

    Returns:
        A tuple `(context, alignments)`: `context` of shape `(batch_size,
        memory_dim)` and `alignments` of shape `(batch_size,
        memory_length)`.

    Example:

    >>> import numpy as np
    >>> attention = BahdanauAttention(units=8, normalize=True)
    >>> query = np.random.rand(2, 6).astype("float32")
    >>> memory = np.random.rand(2, 5, 4).astype("float32")
    >>> context, alignments = attention(
    ...     query, memory, memory_sequence_length=np.array([5, 3]))
    >>> tuple(context.shape), tuple(alignments.shape)
    ((2, 4), (2, 5))
    >>> np.round(keras.ops.convert_to_numpy(alignments)[1, 3:], 6)
    array([0., 0.], dtype=float32)
    >>> [w.path.split("/", 1)[-1] for w in attention.weights]
    ['attention_v', 'attention_g', 'attention_b', 'query_layer/kernel', \
'memory_layer/kernel']

    Reference:
        [Bahdanau et al., 2015](https://arxiv.org/abs/1409.0473);
        weight normalisation: [Salimans & Kingma, 2016](
        https://arxiv.org/abs/1602.07868); `tfa.seq2seq.BahdanauAttention`
        (tensorflow-addons 0.23).
    """

    def __init__(
        self,
        units,
        normalize=False,
        probability_fn="softmax",
        kernel_initializer="glorot_uniform",
        **kwargs,
    ):
        _validation.check_positive_int("units", units)
        _validation.check_bool("normalize", normalize)
        if probability_fn not in PROBABILITY_FNS:
            raise ValueError(
                "Received an invalid value for argument `probability_fn`, "
                'expected "softmax" or "hardmax". Received: '
                f"probability_fn={probability_fn!r}"
            )
        # attention_v has `units` elements: fail before `build`.
        _validation.check_size_product({"units": units})
        super().__init__(**kwargs)
        self.supports_masking = True
        self.units = int(units)
        self.normalize = normalize
        self.probability_fn = probability_fn
        self.kernel_initializer = _validation.get_initializer(
            "kernel_initializer", kernel_initializer
        )
        self.query_layer = self._dense("query_layer")
        self.memory_layer = self._dense("memory_layer")

    def _dense(self, name):
        return keras.layers.Dense(
            self.units, use_bias=False, dtype=self.dtype_policy, name=name
        )

    @classmethod
    def from_config(cls, config):
        """Also accepts tfa's config, with its `memory` placeholder and its
        default query and memory layers. Every field is validated: a bad
        one raises a `ValueError` naming it."""
        config = _validation.layer_config(
            cls,
            config,
            extra_keys=(
                "memory",
                "memory_sequence_length",
                "query_layer",
                "memory_layer",
            ),
        )
        if config.pop("memory", None) is not None:
            raise ValueError(
                "Argument `memory` is not a constructor argument of this "
                "stateless layer; pass the memory when calling it. Received: "
                f"memory={config.get('memory')!r}"
            )
        config.pop("memory_sequence_length", None)
        for name in ("query_layer", "memory_layer"):
            sub = config.pop(name, None)
            if sub is None:
                continue
            sub_config = sub.get("config", {})
            if (
                sub.get("class_name") != "Dense"
                or sub_config.get("units") != config.get("units")
                or sub_config.get("use_bias", True)
                or sub_config.get("activation") not in (None, "linear")
            ):
                raise ValueError(
                    f"Argument `{name}` is only supported as tfa's default, a "
                    "`Dense(units, use_bias=False)` layer. Received: "
                    f"{name}={sub!r}"
                )
        return cls(**config)

    # ------------------------------------------------------------------
    # Shapes
    # ------------------------------------------------------------------
    def _check_shapes(self, query_shape, memory_shape):
        query_shape = tuple(query_shape)
        memory_shape = tuple(memory_shape)
        _validation.check_rank("query", query_shape, (2,))
        _validation.check_rank("memory", memory_shape, (3,))
        _validation.check_dims_equal(
            "query", query_shape[0], "memory", memory_shape[0], "batch size"
        )
        return query_shape, memory_shape

    def build(self, query_shape, memory_shape):
        query_shape, memory_shape = self._check_shapes(
            query_shape, memory_shape
        )
        _common.check_additive_kernels(
            "BahdanauAttention",
            ("query_layer", "memory_layer"),
            query_shape,
            memory_shape,
            self.units,
        )
        # tfa: the bias comes with the weight normalisation.
        _common.add_scoring_weights(self, self.normalize, self.normalize)
        self.query_layer.build(query_shape)
        self.memory_layer.build(memory_shape)

    def compute_output_shape(self, query_shape, memory_shape):
        query_shape, memory_shape = self._check_shapes(
            query_shape, memory_shape
        )
        return (
            (query_shape[0], memory_shape[2]),
            (query_shape[0], memory_shape[1]),
        )

    def compute_output_spec(
        self, query, memory, memory_sequence_length=None, memory_mask=None
    ):
        shapes = self.compute_output_shape(query.shape, memory.shape)
        return tuple(
            keras.KerasTensor(s, dtype=self.compute_dtype) for s in shapes
        )

    def compute_mask(self, query, mask=None):
        # As in tfa: the outputs carry no mask.
        return None, None

    # ------------------------------------------------------------------
    # Call
    # ------------------------------------------------------------------
    def _check_call(self, query, memory, memory_sequence_length, memory_mask):
        self._check_shapes(query.shape, memory.shape)
        for name, tensor, expected in (
            ("query", query, self.query_layer.kernel.shape[0]),
            ("memory", memory, self.memory_layer.kernel.shape[0]),
        ):
            got = tensor.shape[-1]
            if got is not None and got != expected:
                raise ValueError(
                    f"The last dimension of `{name}` must be {expected}, the "
                    f"size the layer was built with. Received: "
                    f"{name}.shape={tuple(tensor.shape)}"
                )
        if memory_sequence_length is not None and memory_mask is not None:
            raise ValueError(
                "Pass either `memory_sequence_length` or `memory_mask`, not "
                "both (as in tfa). Note that `memory_mask` is filled in from "
                "the memory's Keras mask when it has one. Received: "
                "memory_sequence_length.shape="
                f"{_validation.static_shape(memory_sequence_length)}, "
                f"memory_mask.shape={_validation.static_shape(memory_mask)}"
            )
        _validation.check_lengths(
            "memory_sequence_length", memory_sequence_length
        )
        _validation.check_mask_values("memory_mask", memory_mask)
        if memory_sequence_length is not None:
            shape = _validation.static_shape(memory_sequence_length)
            _validation.check_rank("memory_sequence_length", shape, (1,))
            _validation.check_dims_equal(
                "memory_sequence_length",
                shape[0],
                "memory",
                memory.shape[0],
                "batch size",
            )
        if memory_mask is not None:
            shape = _validation.static_shape(memory_mask)
            expected = tuple(memory.shape[:2])
            ok = len(shape) == 2 and all(
                a is None or b is None or a == b
                for a, b in zip(shape, expected)
            )
            if not ok:
                raise ValueError(
                    "Argument `memory_mask` must have shape (batch_size, "
                    f"memory_length) = {expected}. Received: "
                    f"memory_mask.shape={shape}"
                )

    def _memory_mask(self, memory, memory_sequence_length, memory_mask):
        if memory_sequence_length is not None:
            lengths = ops.convert_to_tensor(memory_sequence_length)
            positions = ops.arange(ops.shape(memory)[1], dtype="int32")
            return ops.less(
                positions[None, :], ops.cast(lengths, "int32")[:, None]
            )
        if memory_mask is not None:
            return ops.cast(memory_mask, "bool")
        return None

    def call(
        self, query, memory, memory_sequence_length=None, memory_mask=None
    ):
        self._check_call(query, memory, memory_sequence_length, memory_mask)
        query = _common.strip_keras_mask(query)
        memory = ops.cast(_common.strip_keras_mask(memory), self.compute_dtype)
        mask = self._memory_mask(memory, memory_sequence_length, memory_mask)
        if mask is not None:
            # As in tfa: the padded memory rows are zeroed.
            memory = memory * ops.cast(mask, memory.dtype)[:, :, None]
        keys = ops.cast(self.memory_layer(memory), "float32")
        processed_query = ops.cast(self.query_layer(query), "float32")
        hidden = keys + processed_query[:, None, :]
        if self.normalize:
            hidden = hidden + ops.cast(self.attention_b, "float32")
        score = ops.sum(
            _common.scoring_vector(self) * ops.tanh(hidden), axis=-1
        )
        if mask is not None:
            score = ops.where(mask, score, _FLOAT32_MIN)
        if self.probability_fn == "softmax":
            alignments = ops.softmax(score, axis=-1)
        else:
            alignments = ops.one_hot(
                ops.argmax(score, axis=-1),
                ops.shape(score)[-1],
                dtype="float32",
            )
        alignments = ops.cast(alignments, self.compute_dtype)
        context = ops.einsum("bt,btd->bd", alignments, memory)
        return context, alignments

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "units": self.units,
                "normalize": self.normalize,
                "probability_fn": self.probability_fn,
                "kernel_initializer": keras.initializers.serialize(
                    self.kernel_initializer
                ),
            }
        )
        return config
