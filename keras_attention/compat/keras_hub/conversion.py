import keras
import keras_hub
from keras_hub.src.models.llama.llama_attention import LlamaAttention
from keras_hub.src.models.llama.llama_decoder import LlamaTransformerDecoder

from keras_attention import _validation
from keras_attention.compat.keras_hub._self_attention import SelfAttention
from keras_attention.layers import GroupedQueryAttention
from keras_attention.layers import MultiHeadAttention
from keras_attention.layers import _common

PACKAGE = "keras_attention.compat.keras_hub"

# Where a decoder block holds an attention layer that converts: (block
# class, attribute, keras-hub attention class). Exact classes only: a
# subclass may call or compute its attention differently.
_SLOTS = (
    (
        keras_hub.layers.TransformerDecoder,
        "_self_attention_layer",
        keras_hub.layers.CachedMultiHeadAttention,
    ),
    (LlamaTransformerDecoder, "_self_attention_layer", LlamaAttention),
)
_EXPECTED = (
    "keras-hub's `CachedMultiHeadAttention` as the self-attention of a "
    "`TransformerDecoder` (GPT-2, OPT), and `LlamaAttention` without Llama "
    "3.1 RoPE scaling as the self-attention of a `LlamaTransformerDecoder` "
    "(Llama, Llama 3)"
)
# The arguments of Llama 3.1's frequency-dependent RoPE scaling, all set or
# all None (keras-hub checks).
_LLAMA3_ROPE = (
    "rope_frequency_adjustment_factor",
    "rope_low_freq_factor",
    "rope_high_freq_factor",
    "rope_pretraining_sequence_length",
)


def convert_causal_lm(model):
    """A copy of a keras-hub causal LM whose attention layers are ours.

    The copy is a new model of a registered subclass of `model`'s class
    (`keras_hub.models.GPT2CausalLM` gives a `GPT2CausalLM` subclass), with
    the same config and weights, so it is still a keras-hub `CausalLM`:
    `generate`, `call_with_cache` and `_build_cache` work as before, with
    the same numbers (within float32 rounding), and it saves and loads as
    `.keras` (import `keras_attention.compat.keras_hub` before loading).
    Its attention layers write their key/value caches with scatters instead
    of keras-hub's `ops.slice_update`, which TensorFlow lowers to
    `XlaDynamicUpdateSlice`, an op that TF Serving without XLA cannot run.
    `model` is left as it was; the copy shares its preprocessor (whose
    vocabulary is not in its config) and is compiled with keras-hub's
    defaults, so compile it again as you compiled `model`.

    What converts, and to what:

    - keras-hub's `CachedMultiHeadAttention` (the self-attention of
      `TransformerDecoder`: GPT-2, OPT) becomes
      `keras_attention.MultiHeadAttention` with its config (Keras core's
      arguments) and its weights, which have the same names, shapes and
      order.
    - `LlamaAttention` (the self-attention of `LlamaTransformerDecoder`:
      Llama, Llama 3) becomes `keras_attention.GroupedQueryAttention(
      head_dim, num_query_heads, num_key_value_heads, use_bias=False,
      rope_max_wavelength=...)` with the query, key, value and output
      kernels, behind a private layer that keeps keras-hub's call,
      `attention(hidden_states, attention_mask, cache,
      cache_update_index)`. Llama applies its dropout to the attention's
      output, ours to the attention weights: the same rate, a different
      place, in training only. Llama 3.1's RoPE scaling
      (`rope_frequency_adjustment_factor` and the three arguments that go
      with it) has no equivalent in our RoPE, and keras-hub's Llama RoPE
      ignores `rope_position_scaling_factor` while ours would apply it:
      models with either raise.

    Any other attention layer raises a `ValueError` that names it: other
    families' classes (Gemma, Mistral, ...), a subclass of the two above,
    and the two above anywhere but a decoder's self-attention (e.g. a
    seq2seq decoder's cross-attention).

    Args:
        model: a `keras_hub.models.CausalLM` whose attention layers all
            convert (see above). One converted before converts again (a
            copy).

    Returns:
        The converted model, a new instance of a subclass of `model`'s
        class.

    Example:

    >>> import numpy as np
    >>> import keras_hub
    >>> from keras_attention.compat.keras_hub import convert_causal_lm
    >>> backbone = keras_hub.models.GPT2Backbone(
    ...     vocabulary_size=64, num_layers=2, num_heads=2, hidden_dim=16,
    ...     intermediate_dim=32, max_sequence_length=32)
    >>> model = keras_hub.models.GPT2CausalLM(backbone, preprocessor=None)
    >>> converted = convert_causal_lm(model)
    >>> layer = converted.backbone.transformer_layers[0]
    >>> type(layer._self_attention_layer).__name__
    'MultiHeadAttention'
    >>> inputs = {"token_ids": np.array([[5, 9, 2, 7]]),
    ...           "padding_mask": np.array([[True, True, True, False]])}
    >>> bool(np.allclose(converted(inputs), model(inputs), atol=1e-5))
    True
    """
    if not isinstance(model, keras_hub.models.CausalLM):
        raise ValueError(
            "Argument `model` must be a keras-hub causal LM (a "
            "`keras_hub.models.CausalLM`, e.g. `GPT2CausalLM` or "
            f"`LlamaCausalLM`). Received: model={_describe(model)}"
        )
    config = model.get_config()
    # Shared: a tokenizer's vocabulary is not in its config.
    config["preprocessor"] = model.preprocessor
    if isinstance(model, ConvertedCausalLM):
        converted = type(model).from_config(config)
        converted.set_weights(model.get_weights())
        return converted
    convertible_slots(model)  # raises before anything is built
    return converted_class(type(model)).from_config(
        config, weights=model.get_weights()
    )


class ConvertedCausalLM:
    """The base of the classes of converted models (see `converted_class`).

    `from_config` builds keras-hub's model, then puts our attention layers
    in place of keras-hub's, so a `.keras` file of a converted model loads
    as one.
    """

    @classmethod
    def from_config(cls, config, weights=None):
        """keras-hub's `from_config`, then the conversion. `weights`: the
        weights of keras-hub's model (as its `get_weights()`), set before
        the conversion carries them over."""
        model = super().from_config(config)
        if weights is not None:
            model.set_weights(weights)
        for block, attribute in convertible_slots(model):
            _replace(block, attribute, _convert(getattr(block, attribute)))
        return model


_CONVERTED_CLASSES = {}


def converted_class(cls):
    """The class of `cls`'s converted models: a subclass of `cls` and of
    `ConvertedCausalLM`, of the same name, registered (created once) under
    `keras_attention.compat.keras_hub>` + that name."""
    if issubclass(cls, ConvertedCausalLM):
        return cls
    if cls not in _CONVERTED_CLASSES:
        converted = type(
            cls.__name__,
            (ConvertedCausalLM, cls),
            {
                "__module__": __name__,
                "__qualname__": cls.__name__,
                "__doc__": f"keras-hub's `{cls.__name__}` with keras_attention"
                "'s attention layers: see `convert_causal_lm`.",
            },
        )
        register = keras.saving.register_keras_serializable(package=PACKAGE)
        _CONVERTED_CLASSES[cls] = register(converted)
    return _CONVERTED_CLASSES[cls]


def register_keras_hub_classes():
    """Creates and registers the converted class of every causal LM that
    `keras_hub.models` exports, so that their `.keras` files load."""
    for name in dir(keras_hub.models):
        obj = getattr(keras_hub.models, name)
        if isinstance(obj, type) and issubclass(obj, keras_hub.models.CausalLM):
            converted_class(obj)


def convertible_slots(model):
    """The `(block, attribute)` of every attention layer of `model` to
    convert. Raises a `ValueError` naming every attention layer that does
    not convert (and is not ours already)."""
    slots = {}
    for layer in model._flatten_layers():
        for block_class, attribute, attention_class in _SLOTS:
            attention = getattr(layer, attribute, None)
            if type(layer) is block_class and attention is not None:
                slots[id(attention)] = (layer, attribute, attention_class)
    found, refused = [], []
    for layer in model._flatten_layers():
        if not _is_attention(layer) or _is_ours(layer):
            continue
        slot = slots.get(id(layer))
        reason = _refusal(layer, slot)
        if reason:
            refused.append(f"`{layer.path}` ({type(layer).__name__}): {reason}")
        else:
            found.append(slot[:2])
    if refused:
        raise ValueError(
            "Argument `model` must hold only attention layers that "
            f"`convert_causal_lm` converts: {_EXPECTED}. Received: "
            f"model={_describe(model)} with " + "; ".join(refused)
        )
    return found


def _describe(model):
    if isinstance(model, keras.layers.Layer):
        return f"<{type(model).__name__} name={model.name!r}>"
    return _validation.short_repr(model)


def _is_attention(layer):
    return "Attention" in type(layer).__name__ or isinstance(
        layer,
        (
            keras.layers.MultiHeadAttention,
            keras.layers.GroupQueryAttention,
            LlamaAttention,
        ),
    )


def _is_ours(layer):
    return type(layer).__module__.split(".")[0] == "keras_attention"


def _refusal(layer, slot):
    """Why `layer` does not convert, or None. `slot`: where it sits, as
    `(block, attribute, attention class)`, or None when it is not the
    self-attention of a block in `_SLOTS`."""
    known = tuple(attention_class for _, _, attention_class in _SLOTS)
    if type(layer) not in known:
        for attention_class in known:
            if isinstance(layer, attention_class):
                return (
                    f"a subclass of `{attention_class.__name__}`, which may "
                    "compute differently"
                )
        return "a class that does not convert"
    if slot is None or type(layer) is not slot[2]:
        return (
            "not the self-attention of a `TransformerDecoder` or "
            "`LlamaTransformerDecoder` (e.g. a cross-attention, or a "
            "subclassed decoder)"
        )
    if type(layer) is LlamaAttention:
        return _llama_refusal(layer)
    return None


def _llama_refusal(layer):
    if getattr(layer, _LLAMA3_ROPE[0]) is not None:
        values = ", ".join(f"{n}={getattr(layer, n)!r}" for n in _LLAMA3_ROPE)
        return (
            f"Llama 3.1 RoPE scaling ({values}), which keras_attention's "
            "RoPE does not have"
        )
    if layer.rope_position_scaling_factor != 1.0:
        return (
            "rope_position_scaling_factor="
            f"{layer.rope_position_scaling_factor!r}, which keras-hub's "
            "Llama RoPE ignores and keras_attention's would apply (only "
            "1.0 converts)"
        )
    return None


def _convert(layer):
    if type(layer) is LlamaAttention:
        return _from_llama_attention(layer)
    return _from_cached_multi_head_attention(layer)


def _from_cached_multi_head_attention(layer):
    # Keras core's config and weights, which ours takes as they are.
    native = MultiHeadAttention.from_config(layer.get_config())
    native.build(
        (None, None, layer.query_dense.kernel.shape[0]),
        (None, None, layer.value_dense.kernel.shape[0]),
        (None, None, layer.key_dense.kernel.shape[0]),
    )
    _copy_projections(layer, native)
    return native


def _from_llama_attention(layer):
    hidden_dim, _, head_dim = layer._query_dense.kernel.shape
    attention = GroupedQueryAttention(
        head_dim=head_dim,
        num_query_heads=layer.num_query_heads,
        num_key_value_heads=layer.num_key_value_heads,
        dropout=layer.dropout,
        use_bias=False,
        kernel_initializer=_common.clone_initializer(layer.kernel_initializer),
        rope_max_wavelength=layer.rope_max_wavelength,
        dtype=layer.dtype_policy,
        name="attention",
    )
    shape = (None, None, hidden_dim)
    attention.build(shape, shape)
    _copy_projections(layer, attention)
    adapter = SelfAttention(
        attention, dtype=layer.dtype_policy, name=layer.name
    )
    adapter.build(shape)
    return adapter


def _copy_projections(layer, native):
    """keras-hub's query, key, value and output projections into ours.
    NumPy copies: under JAX, assigning one variable to another would share
    a buffer that a compiled step may donate and delete."""
    for source, target in (
        (layer._query_dense, native.query_dense),
        (layer._key_dense, native.key_dense),
        (layer._value_dense, native.value_dense),
        (layer._output_dense, native.output_dense),
    ):
        target.set_weights(source.get_weights())


def _replace(block, attribute, layer):
    """Puts `layer` in place of `block`'s attention, also in the list of
    sublayers `block` tracks (so in its weights, at the same place)."""
    block._tracker.replace_tracked_value(
        "layers", getattr(block, attribute), layer
    )
    setattr(block, attribute, layer)
