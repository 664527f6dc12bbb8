"""Private helpers shared by the layers."""

import inspect
import math

import keras
from keras import ops

from keras_attention import _validation


def strip_keras_mask(x):
    """Returns `x` as a new tensor object that carries no Keras mask.

    Sublayers that don't support masking warn when they see a masked input;
    our layers handle masks themselves, so they hand sublayers a fresh tensor.
    """
    if keras.backend.backend() in ("tensorflow", "torch"):
        return ops.reshape(x, ops.shape(x))  # a new tensor (a view), no copy
    # JAX returns the same array from a no-op reshape; an add makes a new
    # one (free under jit, where XLA elides it).
    return ops.add(x, ops.zeros((), dtype=x.dtype))


def clone_initializer(initializer):
    """A new initializer instance with the same config.

    Initializers are stateless, so sharing one instance between weights of
    the same shape would give them identical initial values.
    """
    return initializer.__class__.from_config(initializer.get_config())


# The initializer, regularizer and constraint arguments of our layers, in
# the order their configs list them.
KERAS_OBJECTS = (
    "kernel_initializer",
    "bias_initializer",
    "kernel_regularizer",
    "bias_regularizer",
    "kernel_constraint",
    "bias_constraint",
)


# Those of a layer whose weights have no biases (AdditiveAttention).
KERNEL_OBJECTS = tuple(n for n in KERAS_OBJECTS if n.startswith("kernel_"))


def constructor_arguments(arguments, drop=()):
    """A constructor's arguments, to pass on to its base class's.

    `arguments`: the constructor's `locals()`, taken before it defines any
    other local name. Returns them by name, without `self`, the names in
    `drop`, and with `**kwargs` merged in.
    """
    skipped = {"self", "__class__", "kwargs", *drop}
    forwarded = {k: v for k, v in arguments.items() if k not in skipped}
    forwarded.update(arguments.get("kwargs", {}))
    return forwarded


def call_arguments(call, args, kwargs):
    """A `call` method's arguments by name, defaults included, as it binds
    `args` and `kwargs`, for `compute_output_spec`, which Keras calls with
    the call's arguments. `call`: the layer class's own function (e.g.
    `MultiHeadAttention.call`), so that a subclass may override `call`
    with a signature of its own."""
    bound = inspect.signature(call).bind(None, *args, **kwargs)
    bound.apply_defaults()
    return bound.arguments


def index_or_zero(index):
    """A cache update index, 0 for None (a tensor is not tested for
    truth)."""
    return 0 if index is None else index


def check_sliding_window(sliding_window):
    """`sliding_window`: None or a positive int (compared with int32
    positions, so bounded as a weight's size is)."""
    _validation.check_positive_int(
        "sliding_window",
        sliding_window,
        allow_none=True,
        max_value=_validation.MAX_WEIGHT_ELEMENTS,
    )


def set_keras_objects(layer, arguments, bias=True):
    """Sets the layer's initializers, regularizers and constraints.

    `arguments`: the constructor's arguments by name (its `locals()`).
    Each object goes through `keras.*.get`, and a bad one raises a
    `ValueError` naming its argument. `bias=False`: a layer whose weights
    have no biases, which takes only the kernel's three.
    """
    layer.kernel_initializer = _validation.get_initializer(
        "kernel_initializer", arguments["kernel_initializer"]
    )
    layer.kernel_regularizer = _validation.get_regularizer(
        "kernel_regularizer", arguments["kernel_regularizer"]
    )
    layer.kernel_constraint = _validation.get_constraint(
        "kernel_constraint", arguments["kernel_constraint"]
    )
    if bias:
        layer.bias_initializer = _validation.get_initializer(
            "bias_initializer", arguments["bias_initializer"]
        )
        layer.bias_regularizer = _validation.get_regularizer(
            "bias_regularizer", arguments["bias_regularizer"]
        )
        layer.bias_constraint = _validation.get_constraint(
            "bias_constraint", arguments["bias_constraint"]
        )


def weight_kwargs(layer, weight="kernel"):
    """`add_weight`'s `initializer` (cloned), `regularizer` and
    `constraint` for the layer's kernels (`weight="kernel"`) or biases
    (`weight="bias"`)."""
    if weight == "kernel":
        return dict(
            initializer=clone_initializer(layer.kernel_initializer),
            regularizer=layer.kernel_regularizer,
            constraint=layer.kernel_constraint,
        )
    return dict(
        initializer=clone_initializer(layer.bias_initializer),
        regularizer=layer.bias_regularizer,
        constraint=layer.bias_constraint,
    )


def sublayer_kwargs(layer, bias=True, **extra):
    """The keyword arguments that give a `Dense` or `EinsumDense` sublayer
    the layer's Keras objects (initializers cloned) and dtype policy, plus
    `extra` (Keras' MultiHeadAttention passes its `activity_regularizer`).
    `bias=False`: only the kernel's, as `set_keras_objects`."""
    kwargs = {
        f"kernel_{key}": value
        for key, value in weight_kwargs(layer, "kernel").items()
    }
    if bias:
        kwargs.update(
            (f"bias_{key}", value)
            for key, value in weight_kwargs(layer, "bias").items()
        )
    return dict(kwargs, dtype=layer.dtype_policy, **extra)


def serialize_keras_objects(layer, names=KERAS_OBJECTS):
    """The config entries of `layer`'s initializers, regularizers and
    constraints, by attribute name."""
    config = {}
    for name in names:
        value = getattr(layer, name)
        if name.endswith("initializer"):
            config[name] = keras.initializers.serialize(value)
        elif name.endswith("regularizer"):
            config[name] = keras.regularizers.serialize(value)
        else:
            config[name] = keras.constraints.serialize(value)
    return config


class ValidatedLayer(keras.layers.Layer):
    """A Keras layer whose `from_config` validates the config first.

    Every field is checked by the subclass's constructor, which raises a
    `ValueError` naming the field and its value (Keras' default
    `from_config` would turn it into a `TypeError`); `_validation.layer_config`
    checks what the constructor does not: the config's type, unknown and
    missing keys, and the base layer's fields.
    """

    @classmethod
    def from_config(cls, config):
        """Validates the config, then builds the layer from it."""
        return cls(**_validation.layer_config(cls, config))


class PositionLayer(ValidatedLayer):
    """What our position layers share: inputs `(..., length, dim)`, an
    output of the inputs' shape, and the inputs' Keras mask passed on."""

    def _check_shape(self, shape):
        if len(shape) < 2:
            raise ValueError(
                "Argument `inputs` must have rank >= 2 (..., length, dim). "
                f"Received: inputs.shape={tuple(shape)}"
            )

    def compute_mask(self, inputs, mask=None):
        return mask

    def compute_output_shape(self, input_shape):
        self._check_shape(input_shape)
        return tuple(input_shape)

    def compute_output_spec(self, inputs, start_index=0):
        return keras.KerasTensor(
            self.compute_output_shape(inputs.shape), dtype=self.compute_dtype
        )


def check_additive_kernels(layer, names, query_shape, key_shape, units):
    """The Bahdanau projections' sizes, before any weight exists.

    `names`: the query and key projections' and inputs' names, e.g.
    `("query", "key")`.
    """
    query_name, key_name = names
    _validation.check_weight_shapes(
        layer,
        {
            f"{query_name}/kernel": (query_shape[-1] or 1, units),
            f"{key_name}/kernel": (key_shape[-1] or 1, units),
        },
        {
            "units": units,
            "query.shape": tuple(query_shape),
            f"{key_name.split('_')[0]}.shape": tuple(key_shape),
        },
    )


def add_scoring_weights(layer, normalize, use_bias, **v_kwargs):
    """Bahdanau's scoring vector `attention_v`, the weight-normalisation
    scale `attention_g` (tensorflow-addons' `normalize=True`) and the bias
    `attention_b` inside the tanh, created in tensorflow-addons' order."""
    layer.attention_v = layer.add_weight(
        name="attention_v",
        shape=(layer.units,),
        initializer=clone_initializer(layer.kernel_initializer),
        **v_kwargs,
    )
    layer.attention_g = None
    if normalize:
        layer.attention_g = layer.add_weight(
            name="attention_g",
            shape=(),
            initializer=keras.initializers.Constant(
                math.sqrt(1.0 / layer.units)
            ),
        )
    layer.attention_b = None
    if use_bias:
        layer.attention_b = layer.add_weight(
            name="attention_b", shape=(layer.units,), initializer="zeros"
        )


def scoring_vector(layer):
    """`v`, or `g * v / ||v||` with weight normalisation, in float32."""
    v = ops.cast(layer.attention_v, "float32")
    if layer.attention_g is not None:
        g = ops.cast(layer.attention_g, "float32")
        v = g * v * ops.rsqrt(ops.sum(ops.square(v)))
    return v
