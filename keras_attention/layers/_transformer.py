"""What `TransformerEncoder` and `TransformerDecoder` share: arguments,
checks, sublayer factories, the residual sub-block and the config."""

import math

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.layers import _programmable
from keras_attention.layers.multi_head_attention import MultiHeadAttention

# The blocks' own config keys, beyond the Keras objects.
_CONFIG_KEYS = (
    "intermediate_dim",
    "num_heads",
    "dropout",
    "layer_norm_epsilon",
    "normalize_first",
    "key_dim",
    "num_key_value_heads",
    "rope_max_wavelength",
    "rope_scaling_factor",
    "sliding_window",
    "chunk_size",
    "logits_soft_cap",
    "use_attention_sinks",
    "seed",
)


def exact_gelu(x):
    """Keras' default GELU, `x * Phi(x)`, as `0.5 * x * (1 + erf(x /
    sqrt(2)))` (Keras' JAX form). Keras' TensorFlow backend writes it with
    `erfc`, which ONNX has no operator for, so a block with it would not
    export to ONNX; `erf` exports everywhere. Equal to
    `keras.activations.gelu` up to float rounding.

    Args:
        x: float tensor.

    Returns:
        A tensor of the same shape and dtype.
    """
    x = ops.convert_to_tensor(x)
    return 0.5 * x * (1.0 + ops.erf(x / math.sqrt(2.0)))


class TransformerBlock(_common.ValidatedLayer):
    """Base of the Transformer blocks (private): see their docstrings."""

    def __init__(
        self,
        intermediate_dim,
        num_heads,
        dropout,
        activation,
        layer_norm_epsilon,
        normalize_first,
        key_dim,
        num_key_value_heads,
        rope_max_wavelength,
        rope_scaling_factor,
        sliding_window,
        chunk_size,
        logits_soft_cap,
        kernel_initializer,
        bias_initializer,
        kernel_regularizer,
        bias_regularizer,
        activity_regularizer,
        kernel_constraint,
        bias_constraint,
        seed,
        score_mod=None,
        mask_mod=None,
        use_attention_sinks=False,
        **kwargs,
    ):
        _validation.check_positive_int("intermediate_dim", intermediate_dim)
        _validation.check_positive_int("num_heads", num_heads)
        _validation.check_rate("dropout", dropout)
        _validation.check_positive_number(
            "layer_norm_epsilon", layer_norm_epsilon
        )
        _validation.check_bool("normalize_first", normalize_first)
        _validation.check_positive_int("key_dim", key_dim, allow_none=True)
        _validation.check_key_value_heads(num_heads, num_key_value_heads)
        _validation.check_rope(
            rope_max_wavelength, rope_scaling_factor, key_dim
        )
        _common.check_sliding_window(sliding_window)
        _validation.check_chunk_size(chunk_size)
        _validation.check_positive_number(
            "logits_soft_cap", logits_soft_cap, allow_none=True
        )
        _validation.check_seed(seed)
        _validation.check_bool("use_attention_sinks", use_attention_sinks)
        score_mod = _programmable.get_mod("score_mod", score_mod)
        mask_mod = _programmable.get_mod("mask_mod", mask_mod)
        _validation.check_size_product({"intermediate_dim": intermediate_dim})
        if key_dim is not None:
            _validation.check_size_product(
                {"num_heads": num_heads, "key_dim": key_dim}
            )
        # The base layer applies the activity regularizer once, to the
        # block's output (not to every sublayer's).
        super().__init__(activity_regularizer=activity_regularizer, **kwargs)
        self.supports_masking = True
        self.intermediate_dim = int(intermediate_dim)
        self.num_heads = int(num_heads)
        self.dropout = float(dropout)
        self.activation = _validation.get_keras_object(
            "activations", "activation", activation
        )
        self.layer_norm_epsilon = float(layer_norm_epsilon)
        self.normalize_first = normalize_first
        self.key_dim = None if key_dim is None else int(key_dim)
        self.num_key_value_heads = num_key_value_heads
        self.rope_max_wavelength = (
            None if rope_max_wavelength is None else float(rope_max_wavelength)
        )
        self.rope_scaling_factor = float(rope_scaling_factor)
        self.sliding_window = sliding_window
        self.chunk_size = chunk_size
        self.logits_soft_cap = (
            None if logits_soft_cap is None else float(logits_soft_cap)
        )
        self.score_mod, self.mask_mod = score_mod, mask_mod
        self.use_attention_sinks = use_attention_sinks
        _common.set_keras_objects(self, locals())
        self.seed = seed

    def _seed(self, offset):
        return None if self.seed is None else self.seed + offset

    def _check_input_shape(self, layer, input_shape, name="inputs"):
        """The inputs' last dimension and the heads' size, checked."""
        _validation.check_rank(name, input_shape, (3,))
        dim = input_shape[-1]
        if dim is None:
            raise ValueError(
                f"The last dimension of `{name}` must be known. Received: "
                f"{name}.shape={tuple(input_shape)}"
            )
        key_dim = self.key_dim or dim // self.num_heads
        if key_dim == 0:
            raise ValueError(
                "The inputs' last dimension must be at least `num_heads` "
                "when `key_dim` is not given (each head gets `dim // "
                f"num_heads` features). Received: inputs.shape="
                f"{tuple(input_shape)}, num_heads={self.num_heads}"
            )
        if self.rope_max_wavelength is not None and key_dim % 2:
            raise ValueError(
                "Rotary position embeddings need an even head size: the "
                "inputs' last dimension divided by `num_heads` is odd. "
                f"Pass an even `key_dim`. Received: inputs.shape="
                f"{tuple(input_shape)}, num_heads={self.num_heads}, "
                f"rope_max_wavelength={self.rope_max_wavelength}"
            )
        _validation.check_weight_shapes(
            layer,
            {
                "feedforward_intermediate_dense/kernel": (
                    dim,
                    self.intermediate_dim,
                ),
            },
            {
                "inputs.shape[-1]": dim,
                "intermediate_dim": self.intermediate_dim,
            },
        )
        # The attention's kernels are checked by its own `build`.
        return dim, key_dim

    def _attention(self, name, key_dim, seed_offset, self_attention=True):
        """The block's attention: RoPE, the window, the functions and the
        sinks in self-attention."""
        programmable = {}
        if self_attention:
            programmable = dict(
                score_mod=self.score_mod,
                mask_mod=self.mask_mod,
                use_attention_sinks=self.use_attention_sinks,
            )
        return MultiHeadAttention(
            num_heads=self.num_heads,
            key_dim=key_dim,
            dropout=self.dropout,
            sliding_window=self.sliding_window if self_attention else None,
            seed=self._seed(seed_offset),
            num_key_value_heads=self.num_key_value_heads,
            chunk_size=self.chunk_size,
            logits_soft_cap=self.logits_soft_cap,
            rope_max_wavelength=(
                self.rope_max_wavelength if self_attention else None
            ),
            rope_scaling_factor=self.rope_scaling_factor,
            name=name,
            **programmable,
            **_common.sublayer_kwargs(self),
        )

    def _build_self_attention(self, name, key_dim, shape):
        """Creates the self-attention sub-block's layers, in keras-hub's
        order; `name` is the attention layer's."""
        self._self_attention_layer = self._attention(name, key_dim, 0)
        self._self_attention_layer.build(shape, shape)
        self._self_attention_layer_norm = self._layer_norm(
            "self_attention_layer_norm", shape
        )
        self._self_attention_dropout = self._dropout(
            "self_attention_dropout", 1
        )

    def _layer_norm(self, name, shape):
        norm = keras.layers.LayerNormalization(
            epsilon=self.layer_norm_epsilon,
            dtype=self.dtype_policy,
            name=name,
        )
        norm.build(shape)
        return norm

    def _dropout(self, name, seed_offset):
        return keras.layers.Dropout(
            rate=self.dropout,
            seed=self._seed(seed_offset),
            dtype=self.dtype_policy,
            name=name,
        )

    def _feedforward_denses(self, input_shape):
        # The feed-forward layer computes exact GELU with `erf` (see
        # `exact_gelu`); `get_config` still serializes `self.activation`.
        activation = self.activation
        if activation is keras.activations.gelu:
            activation = exact_gelu
        intermediate = keras.layers.Dense(
            self.intermediate_dim,
            activation=activation,
            name="feedforward_intermediate_dense",
            **_common.sublayer_kwargs(self),
        )
        intermediate.build(input_shape)
        output = keras.layers.Dense(
            input_shape[-1],
            name="feedforward_output_dense",
            **_common.sublayer_kwargs(self),
        )
        output.build(tuple(input_shape[:-1]) + (self.intermediate_dim,))
        return intermediate, output

    def _residual(self, x, norm, dropout, sublayer, training):
        """One residual sub-block, pre- or post-norm. `sublayer(x)` returns
        `(y, extras)`; returns `(x + dropout(y), extras)`, normalised."""
        residual = x
        if self.normalize_first:
            x = norm(x)
        y, extras = sublayer(x)
        x = dropout(y, training=training) + residual
        if not self.normalize_first:
            x = norm(x)
        return x, extras

    def _feedforward(self, x):
        x = self._feedforward_intermediate_dense(x)
        return self._feedforward_output_dense(x), None

    def _feedforward_block(self, x, training):
        """The feedforward residual sub-block, every block's last."""
        x, _ = self._residual(
            x,
            self._feedforward_layer_norm,
            self._feedforward_dropout,
            self._feedforward,
            training,
        )
        return x

    def get_config(self):
        config = super().get_config()
        config.update({key: getattr(self, key) for key in _CONFIG_KEYS})
        config.update(_programmable.serialize_mods(self))
        config.update(
            {
                "activation": keras.activations.serialize(self.activation),
                "activity_regularizer": keras.regularizers.serialize(
                    self.activity_regularizer
                ),
            }
        )
        config.update(_common.serialize_keras_objects(self))
        return config
