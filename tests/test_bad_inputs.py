"""A catalogue of bad inputs: every one fails early with a clear error.

Each entry of `CASES` is one test: calling it must raise a `ValueError`
whose message names the argument (in backticks) and shows what was received
("Received: ..."). The attention kernels are replaced by functions that fail
the test when reached, so every error is raised before any attention is
computed; cases marked `allocates=False` also forbid creating any weight,
so absurd sizes fail before anything is allocated.

To add a case, append a `Case` to `CASES`; keep the list grouped by target.

The inputs whose behaviour is defined rather than refused (masks of 0/1
numbers, empty sequences, NaN and Inf) are tested in
`tests/ops/test_edge_inputs.py`.

Decisions (also in the docstrings):

- Masks: boolean, or numbers that are all 0 or 1 (e.g. `1.0 - padding`).
  Any other value (0.5, 2, -1, NaN) raises a `ValueError` when the values
  are known (NumPy arrays, eager tensors); in traced code (`tf.function`,
  `jax.jit`, a SavedModel) they cannot be inspected and non-zero counts as
  True.
- Lengths (`memory_sequence_length` of the tfa-compat
  `BahdanauAttention`): non-negative whole numbers, checked when known.
- Weights of more than 2**31 - 1 elements (e.g. `num_heads=10**9`) are
  refused before any weight is created (`_validation.MAX_WEIGHT_ELEMENTS`).
- `from_config` validates every field: wrong types, out-of-range values and
  unknown keys raise a `ValueError` naming the field.
"""

import dataclasses
import re
from typing import Callable
from unittest import mock

import keras
import numpy as np
import pytest

import keras_attention.layers.attention_pooling as pooling_module
import keras_attention.ops.attention as attention_module
from keras_attention import AdditiveAttention
from keras_attention import AttentionPooling
from keras_attention import GroupedQueryAttention
from keras_attention import MultiHeadAttention
from keras_attention import PatchEmbedding
from keras_attention import PositionEmbedding
from keras_attention import RotaryEmbedding
from keras_attention import SinusoidalPositionEncoding
from keras_attention import TokenGenerator
from keras_attention import TransformerDecoder
from keras_attention import TransformerEncoder
from keras_attention import samplers
from keras_attention.compat import tfa
from keras_attention.distribution import layout_map
from keras_attention.distribution import place_cache
from keras_attention.ops import additive_attention
from keras_attention.ops import scaled_dot_product_attention
from tests.testing import import_keras_hub
from tests.testing import tiny_causal_lm

pytestmark = pytest.mark.filterwarnings(
    "ignore:You are using a softmax over axis:UserWarning"
)


@dataclasses.dataclass(frozen=True)
class Case:
    id: str
    call: Callable[[], object]
    # The argument the message must name, e.g. "num_heads" for `num_heads`.
    argument: str
    # An extra regex the message must match (what was received).
    match: str = ""
    # False: no weight may be created before the error.
    allocates: bool = True


def _f(*shape):
    return np.ones(shape, "float32")


# A standard call of each target, with one keyword replaced.
def sdpa(**kwargs):
    args = dict(query=_f(2, 3, 4, 8), key=_f(2, 5, 2, 8), value=_f(2, 5, 2, 6))
    args.update(kwargs)
    return lambda: scaled_dot_product_attention(**args)


def additive(**kwargs):
    args = dict(
        query=_f(2, 3, 4),
        key=_f(2, 5, 4),
        value=_f(2, 5, 6),
        attention_v=_f(4),
    )
    args.update(kwargs)
    return lambda: additive_attention(**args)


def mha(init=None, query=(2, 3, 6), value=(2, 5, 6), **call):
    init = dict(dict(num_heads=2, key_dim=4), **(init or {}))
    return lambda: MultiHeadAttention(**init)(_f(*query), _f(*value), **call)


def gqa(init=None, query=(2, 3, 8), value=(2, 5, 8), **call):
    init = dict(
        dict(head_dim=4, num_query_heads=4, num_key_value_heads=2),
        **(init or {}),
    )
    return lambda: GroupedQueryAttention(**init)(_f(*query), _f(*value), **call)


def add_layer(init=None, query=(2, 3, 6), value=(2, 5, 7), **call):
    init = dict(dict(units=4), **(init or {}))
    return lambda: AdditiveAttention(**init)(_f(*query), _f(*value), **call)


def pool(init=None, inputs=(2, 5, 6), **call):
    init = dict(dict(units=4, num_heads=2), **(init or {}))
    return lambda: AttentionPooling(**init)(_f(*inputs), **call)


def build(layer_fn, *shapes):
    """Constructs and builds a layer (no call)."""

    def run():
        layer = layer_fn()
        layer.build(*shapes)
        return layer

    return run


def tfa_mha(init=None, mask=None):
    init = dict(dict(head_size=4, num_heads=2), **(init or {}))
    return lambda: tfa.MultiHeadAttention(**init)(
        [_f(2, 3, 6), _f(2, 5, 6)], mask=mask
    )


def bahdanau(init=None, **call):
    init = dict(dict(units=4), **(init or {}))
    return lambda: tfa.BahdanauAttention(**init)(_f(2, 6), _f(2, 5, 4), **call)


ENCODER = dict(intermediate_dim=8, num_heads=2)


class _Protocol:
    """The least `TokenGenerator` accepts as a model (never reached)."""

    def init_cache(self, batch_size, max_length):
        raise AssertionError("the generator ran before its checks")

    call_with_cache = init_cache


class _Bigram:
    """A bigram model under our protocol, without hidden states."""

    def init_cache(self, batch_size, max_length):
        return ()

    def call_with_cache(self, token_ids, cache, index, padding_mask):
        return keras.ops.one_hot(token_ids, 4), cache


class _NotAModel:
    """A plain object, with a repr that keeps its case id stable."""

    def __repr__(self):
        return "object()"


GENERATOR = dict(model=_Protocol(), max_length=8)


class _OnlyCachedCall:
    """Half a protocol: `call_with_cache` without a cache builder."""

    def call_with_cache(self, token_ids, cache, cache_update_index):
        raise AssertionError("the generator ran before its checks")

    def __repr__(self):
        return "_OnlyCachedCall()"


def _generator(sampler="greedy", **kwargs):
    return TokenGenerator(_Protocol(), 8, sampler=sampler, **kwargs)


def construct(cls, base, arg, value):
    """Constructs `cls(**base, arg=value)`."""
    return lambda: cls(**dict(base, **{arg: value}))


def _built(layer, *shapes):
    """`layer`, built for the standard shapes (nothing computed)."""
    layer.build(*shapes)
    return layer


def from_config(cls, **config):
    return lambda: cls.from_config(config)


def _mesh(shape, axes=("batch", "model")):
    """A mesh of `prod(shape)` named devices: `layout_map` reads its shape
    and names only, so no such devices need to exist."""
    devices = [f"cpu:{i}" for i in range(int(np.prod(shape)))]
    return keras.distribution.DeviceMesh(shape, axes, devices)


def _encoder_model(num_heads=8, intermediate=16, dim=16):
    inputs = keras.Input((5, dim))
    block = TransformerEncoder(intermediate, num_heads)
    return keras.Model(inputs, block(inputs))


def _unregistered(score, b, h, q_idx, kv_idx):
    return score


def _one_layer_lm(family, **backbone_kwargs):
    return tiny_causal_lm(family, num_layers=1, **backbone_kwargs)


def _convert_causal_lm(make_model):
    """`compat.keras_hub.convert_causal_lm(make_model())`; keras-hub (a test
    dependency, which that module imports) is imported when the case
    runs."""

    def run():
        import_keras_hub()
        from keras_attention.compat.keras_hub import convert_causal_lm

        return convert_causal_lm(make_model())

    return run


def _lm_with_subclassed_attention():
    """A GPT-2 whose decoder blocks build a subclass of keras-hub's
    `CachedMultiHeadAttention`."""
    keras_hub = import_keras_hub()
    from keras_hub.src.layers.modeling import transformer_decoder

    class CustomAttention(keras_hub.layers.CachedMultiHeadAttention):
        pass

    with mock.patch.object(
        transformer_decoder, "CachedMultiHeadAttention", CustomAttention
    ):
        return _one_layer_lm("gpt2")


HALF = np.full((3, 5), 0.5, "float32")
BIG = 10**9


def _export_model(**kwargs):
    """`serving.export_model` of a small model into a fresh directory."""
    import tempfile

    from keras_attention import serving

    inputs = keras.Input((None, 4), name="features")
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    return serving.export_model(model, tempfile.mkdtemp(), **kwargs)


CASES = [
    # -- scaled_dot_product_attention: ranks, dims, masks, arguments --------
    Case("sdpa/query_rank_3", sdpa(query=_f(2, 3, 8)), "query", r"\(2, 3, 8\)"),
    Case("sdpa/key_rank_5", sdpa(key=_f(2, 5, 2, 8, 1)), "key", "rank 4"),
    Case("sdpa/value_rank_2", sdpa(value=_f(2, 5)), "value", "rank 4"),
    Case("sdpa/head_dim", sdpa(key=_f(2, 5, 2, 7)), "query", "head dim=8"),
    Case("sdpa/kv_length", sdpa(value=_f(2, 6, 2, 6)), "value", "length=6"),
    Case(
        "sdpa/batch",
        sdpa(key=_f(3, 5, 2, 8), value=_f(3, 5, 2, 6)),
        "key",
        "batch size=3",
    ),
    Case(
        "sdpa/heads_not_multiple",
        sdpa(key=_f(2, 5, 3, 8), value=_f(2, 5, 3, 6)),
        "query",
        "key heads=3",
    ),
    Case("sdpa/mask_rank_3", sdpa(mask=np.ones((2, 3, 5), bool)), "mask"),
    Case("sdpa/mask_rank_1", sdpa(mask=np.ones((5,), bool)), "mask"),
    Case(
        "sdpa/mask_not_broadcastable",
        sdpa(mask=np.ones((2, 1, 3, 6), bool)),
        "mask",
        r"\(2, 1, 3, 6\)",
    ),
    Case(
        "sdpa/mask_batch_3",
        sdpa(mask=np.ones((3, 1, 1, 5), bool)),
        "mask",
        r"\(3, 1, 1, 5\)",
    ),
    Case("sdpa/mask_float_half", sdpa(mask=HALF), "mask", r"0\.5"),
    Case("sdpa/mask_int_2", sdpa(mask=np.full((3, 5), 2)), "mask", r"\[2\]"),
    Case("sdpa/mask_negative", sdpa(mask=-np.ones((3, 5))), "mask", "-1"),
    Case("sdpa/mask_nan", sdpa(mask=np.full((3, 5), np.nan)), "mask", "nan"),
    Case(
        "sdpa/mask_strings",
        sdpa(mask=np.full((3, 5), "yes")),
        "mask",
        "dtype",
    ),
    Case("sdpa/bias_shape", sdpa(bias=_f(2, 3, 3, 5)), "bias", r"\(2, 3"),
    Case("sdpa/bias_rank_3", sdpa(bias=_f(2, 3, 5)), "bias", "rank"),
    Case("sdpa/dropout_1", sdpa(dropout_rate=1.0), "dropout_rate", "1.0"),
    Case("sdpa/dropout_nan", sdpa(dropout_rate=np.nan), "dropout_rate"),
    Case("sdpa/chunk_zero", sdpa(chunk_size=0), "chunk_size", "chunk_size=0"),
    Case("sdpa/chunk_float", sdpa(chunk_size=2.5), "chunk_size", "2.5"),
    Case("sdpa/chunk_str", sdpa(chunk_size="big"), "chunk_size", "big"),
    Case(
        "sdpa/chunk_beyond_int32",
        sdpa(chunk_size=2**31),
        "chunk_size",
        str(2**31),
    ),
    # -- additive_attention --------------------------------------------------
    Case("additive/query_rank_2", additive(query=_f(2, 4)), "query", "rank 3"),
    Case("additive/key_rank_4", additive(key=_f(2, 5, 4, 1)), "key"),
    Case("additive/units", additive(key=_f(2, 5, 3)), "query", "=3"),
    Case("additive/v_rank", additive(attention_v=_f(4, 1)), "attention_v"),
    Case("additive/v_size", additive(attention_v=_f(5)), "attention_v", "5"),
    Case("additive/kv_length", additive(value=_f(2, 4, 6)), "value", "=4"),
    Case("additive/batch", additive(value=_f(3, 5, 6)), "value", "=3"),
    Case(
        "additive/mask_shape",
        additive(mask=np.ones((2, 3, 4), bool)),
        "mask",
        r"\(2, 3, 4\)",
    ),
    Case(
        "additive/mask_float",
        additive(mask=np.full((2, 3, 5), 0.3)),
        "mask",
        r"0\.3",
    ),
    Case("additive/chunk", additive(chunk_size=-1), "chunk_size", "=-1"),
    # -- MultiHeadAttention: constructor ---------------------------------
    Case("sdpa/soft_cap_0", sdpa(logits_soft_cap=0), "logits_soft_cap", "=0"),
    Case("sdpa/soft_cap_neg", sdpa(logits_soft_cap=-2.0), "logits_soft_cap"),
    Case("sdpa/soft_cap_inf", sdpa(logits_soft_cap=np.inf), "logits_soft_cap"),
    Case("sdpa/soft_cap_nan", sdpa(logits_soft_cap=np.nan), "logits_soft_cap"),
    Case(
        "sdpa/flash_with_soft_cap",
        sdpa(flash_attention=True, logits_soft_cap=5.0),
        "flash_attention",
        "logits_soft_cap",
    ),
    Case(
        "sdpa/flash_with_bias",
        sdpa(flash_attention=True, bias=_f(3, 5)),
        "flash_attention",
        "attention bias",
    ),
    Case(
        "sdpa/flash_with_scores",
        sdpa(flash_attention=True, return_scores=True),
        "flash_attention",
        "Returning attention scores",
    ),
    Case("sdpa/flash_str", sdpa(flash_attention="yes"), "flash_attention"),
    Case("mha/use_gate_str", mha(dict(use_gate="yes")), "use_gate", "'yes'"),
    Case("mha/use_gate_int", mha(dict(use_gate=1)), "use_gate", "=1"),
    Case("mha/soft_cap_0", mha(dict(logits_soft_cap=0.0)), "logits_soft_cap"),
    Case("mha/soft_cap_neg", mha(dict(logits_soft_cap=-1)), "logits_soft_cap"),
    Case(
        "mha/soft_cap_inf",
        mha(dict(logits_soft_cap=float("inf"))),
        "logits_soft_cap",
    ),
    Case(
        "mha/soft_cap_nan",
        mha(dict(logits_soft_cap=float("nan"))),
        "logits_soft_cap",
    ),
    Case(
        "mha/flash_with_soft_cap",
        mha(dict(flash_attention=True, logits_soft_cap=5.0)),
        "flash_attention",
        "logits_soft_cap",
    ),
    Case(
        "mha/flash_with_bias",
        mha(dict(flash_attention=True), attention_bias=_f(2, 3, 5)),
        "flash_attention",
        "attention bias",
    ),
    Case(
        "mha/flash_with_scores",
        mha(dict(flash_attention=True), return_attention_scores=True),
        "flash_attention",
        "Returning attention scores",
    ),
    Case(
        "gqa/heads_not_divisible",
        gqa(dict(num_query_heads=4, num_key_value_heads=3)),
        "num_key_value_heads",
        "num_query_heads=4",
        allocates=False,
    ),
    Case("gqa/use_gate_str", gqa(dict(use_gate="no")), "use_gate", "'no'"),
    Case("gqa/head_dim_0", gqa(dict(head_dim=0)), "head_dim", "=0"),
    Case(
        "gqa/soft_cap_neg", gqa(dict(logits_soft_cap=-3.0)), "logits_soft_cap"
    ),
    Case(
        "gqa/soft_cap_nan",
        gqa(dict(logits_soft_cap=float("nan"))),
        "logits_soft_cap",
    ),
    Case(
        "gqa/flash_with_soft_cap",
        gqa(dict(flash_attention=True, logits_soft_cap=5.0)),
        "flash_attention",
        "logits_soft_cap",
    ),
    Case(
        "gqa/flash_with_scores",
        gqa(dict(flash_attention=True), return_attention_scores=True),
        "flash_attention",
        "Returning attention scores",
    ),
    Case("gqa/query_rank_4", gqa(query=(2, 3, 4, 8)), "query", "rank 3"),
    Case("mha/num_heads_0", mha(dict(num_heads=0)), "num_heads", "=0"),
    Case("mha/key_dim_str", mha(dict(key_dim="4")), "key_dim", "'4'"),
    Case(
        "mha/kv_heads_0",
        mha(dict(num_heads=4, num_key_value_heads=0)),
        "num_key_value_heads",
        "=0",
    ),
    Case("mha/dropout_neg", mha(dict(dropout=-0.5)), "dropout", "-0.5"),
    Case(
        "mha/flash_with_dropout",
        mha(dict(flash_attention=True, dropout=0.1)),
        "flash_attention",
        "Dropout is not supported",
        allocates=False,
    ),
    Case("mha/num_heads_str", mha(dict(num_heads="8")), "num_heads", "'8'"),
    Case("mha/num_heads_float", mha(dict(num_heads=2.0)), "num_heads", "2.0"),
    Case("mha/num_heads_bool", mha(dict(num_heads=True)), "num_heads"),
    Case("mha/key_dim_neg", mha(dict(key_dim=-4)), "key_dim", "=-4"),
    Case("mha/value_dim_0", mha(dict(value_dim=0)), "value_dim", "=0"),
    Case(
        "mha/heads_x_key_dim_absurd",
        mha(dict(num_heads=BIG, key_dim=BIG)),
        "num_heads",
        "key_dim=1000000000",
        allocates=False,
    ),
    Case(
        "mha/num_heads_absurd_at_build",
        build(lambda: MultiHeadAttention(10**8, 8), (2, 3, 16), (2, 5, 16)),
        "num_heads",
        "num_heads=100000000",
        allocates=False,
    ),
    Case(
        "mha/key_dim_absurd_at_build",
        build(lambda: MultiHeadAttention(8, 10**8), (2, 3, 16), (2, 5, 16)),
        "key_dim",
        "key_dim=100000000",
        allocates=False,
    ),
    Case(
        "mha/output_shape_absurd",
        mha(dict(output_shape=(10**5, 10**5))),
        "output_shape",
        "100000",
        allocates=False,
    ),
    Case(
        "mha/output_shape_zero", mha(dict(output_shape=(4, 0))), "output_shape"
    ),
    Case("mha/dropout_1", mha(dict(dropout=1.0)), "dropout", "1.0"),
    Case("mha/dropout_str", mha(dict(dropout="0.1")), "dropout", "'0.1'"),
    Case(
        "mha/kv_heads_not_divisor",
        mha(dict(num_heads=4, num_key_value_heads=3)),
        "num_key_value_heads",
        "=3",
    ),
    Case("mha/chunk_size", mha(dict(chunk_size=0)), "chunk_size", "=0"),
    Case("mha/window", mha(dict(sliding_window=-2)), "sliding_window", "-2"),
    Case("mha/seed_huge", mha(dict(seed=2**70)), "seed", str(2**70)),
    Case("mha/seed_str", mha(dict(seed="x")), "seed", "'x'"),
    Case("mha/use_bias", mha(dict(use_bias="yes")), "use_bias", "'yes'"),
    Case(
        "mha/initializer",
        mha(dict(kernel_initializer="nope")),
        "kernel_initializer",
        "'nope'",
    ),
    Case(
        "mha/regularizer",
        mha(dict(bias_regularizer=3)),
        "bias_regularizer",
        "=3",
    ),
    Case("mha/axes", mha(dict(attention_axes="x")), "attention_axes", "'x'"),
    Case(
        "mha/flash", mha(dict(flash_attention="on")), "flash_attention", "'on'"
    ),
    # -- MultiHeadAttention: call ------------------------------------------
    Case(
        "mha/axes_past_rank",
        mha(dict(attention_axes=3)),
        "attention_axes",
        "out of range",
    ),
    Case(
        "mha/axes_batch",
        mha(dict(attention_axes=(0,))),
        "attention_axes",
        "out of range",
    ),
    Case(
        "mha/query_dim_after_build",
        lambda: _built(
            MultiHeadAttention(num_heads=2, key_dim=4), (2, 3, 6), (2, 5, 6)
        )(_f(2, 3, 7), _f(2, 5, 6)),
        "query",
        "must be 6",
    ),
    Case("mha/query_rank_2", mha(query=(2, 6)), "query", r"\(2, 6\)"),
    Case("mha/value_rank", mha(value=(2, 5, 6, 1)), "value", "rank"),
    Case(
        "mha/batch",
        mha(value=(3, 5, 6)),
        "value",
        "3",
    ),
    Case(
        "mha/key_length",
        mha(key=_f(2, 4, 6)),
        "key",
        r"\(2, 4, 6\)",
    ),
    Case(
        "mha/query_mask_shape",
        mha(query_mask=np.ones((2, 4), bool)),
        "query_mask",
        r"\(2, 4\)",
    ),
    Case(
        "mha/value_mask_shape",
        mha(value_mask=np.ones((2, 3), bool)),
        "value_mask",
        r"\(2, 3\)",
    ),
    Case(
        "mha/attention_mask_shape",
        mha(attention_mask=np.ones((2, 5, 3), bool)),
        "attention_mask",
        r"\(2, 5, 3\)",
    ),
    Case(
        "mha/attention_mask_rank_1",
        mha(attention_mask=np.ones((5,), bool)),
        "attention_mask",
        r"\(5,\)",
    ),
    Case(
        "mha/attention_mask_float",
        mha(attention_mask=np.full((2, 3, 5), 0.5)),
        "attention_mask",
        r"0\.5",
    ),
    Case(
        "mha/query_mask_token_ids",
        mha(query_mask=np.array([[5, 7, 0], [3, 0, 0]])),
        "query_mask",
        r"\[3, 5, 7\]",
    ),
    Case(
        "mha/value_mask_negative",
        mha(value_mask=-np.ones((2, 5), "int32")),
        "value_mask",
        "-1",
    ),
    Case(
        "mha/attention_bias_shape",
        mha(attention_bias=_f(2, 3, 4)),
        "attention_bias",
        r"\(2, 3, 4\)",
    ),
    # -- AdditiveAttention ----------------------------------------------------
    Case("add/units_0", add_layer(dict(units=0)), "units", "=0"),
    Case("add/units_none", add_layer(dict(units=None)), "units", "None"),
    Case("add/units_float", add_layer(dict(units=3.0)), "units", "3.0"),
    Case("add/seed_str", add_layer(dict(seed="x")), "seed", "'x'"),
    Case(
        "add/value_mask_shape",
        add_layer(value_mask=np.ones((2, 4), bool)),
        "value_mask",
        r"\(2, 4\)",
    ),
    Case("add/units_list", add_layer(dict(units=[4])), "units", r"\[4\]"),
    Case(
        "add/units_absurd_init",
        add_layer(dict(units=2**31)),
        "units",
        str(2**31),
        allocates=False,
    ),
    Case(
        "add/units_absurd_at_build",
        build(lambda: AdditiveAttention(BIG), (2, 3, 6), (2, 5, 7)),
        "units",
        "units=1000000000",
        allocates=False,
    ),
    Case("add/normalize", add_layer(dict(normalize="yes")), "normalize"),
    Case("add/dropout", add_layer(dict(dropout=-0.1)), "dropout", "-0.1"),
    Case("add/query_rank_4", add_layer(query=(2, 3, 6, 1)), "query", "rank"),
    Case("add/value_rank_2", add_layer(value=(2, 5)), "value", "rank 3"),
    Case(
        "add/key_length",
        add_layer(key=_f(2, 4, 7)),
        "key",
        "length=4",
    ),
    Case("add/batch", add_layer(value=(3, 5, 7)), "query", "=3"),
    Case(
        "add/query_mask_shape",
        add_layer(query_mask=np.ones((2, 4), bool)),
        "query_mask",
        r"\(2, 4\)",
    ),
    Case(
        "add/value_mask_float",
        add_layer(value_mask=np.full((2, 5), 0.5)),
        "value_mask",
        r"0\.5",
    ),
    Case(
        "add/projected_key_units",
        add_layer(projected_key=_f(2, 5, 3)),
        "projected_key",
        r"\(2, 5, 3\)",
    ),
    Case(
        "add/single_step_causal",
        add_layer(query=(2, 6), use_causal_mask=True),
        "use_causal_mask",
        r"\(2, 6\)",
    ),
    # -- AttentionPooling ---------------------------------------------------
    Case("pool/units_0", pool(dict(units=0)), "units", "=0"),
    Case("pool/heads_0", pool(dict(num_heads=0)), "num_heads", "=0"),
    Case("pool/dropout_1", pool(dict(dropout=1.0)), "dropout", "1.0"),
    Case(
        "pool/inputs_dim_after_build",
        lambda: _built(AttentionPooling(), (2, 5, 6))(_f(2, 5, 4)),
        "inputs",
        "must be 6",
    ),
    Case("pool/heads_none", pool(dict(num_heads=None)), "num_heads", "None"),
    Case(
        "pool/heads_absurd_init",
        pool(dict(units=2**16, num_heads=2**16)),
        "num_heads",
        "65536",
        allocates=False,
    ),
    Case(
        "pool/units_absurd_at_build",
        build(lambda: AttentionPooling(units=BIG), (2, 5, 16)),
        "units",
        "units=1000000000",
        allocates=False,
    ),
    Case(
        "pool/initializer",
        pool(dict(bias_initializer={"class_name": "Nope", "config": {}})),
        "bias_initializer",
        "Nope",
    ),
    Case("pool/inputs_rank_2", pool(inputs=(2, 6)), "inputs", r"\(2, 6\)"),
    Case(
        "pool/mask_length",
        pool(mask=np.ones((2, 4), bool)),
        "mask",
        r"\(2, 4\)",
    ),
    Case(
        "pool/mask_float",
        pool(mask=np.full((2, 5), 0.7, "float32")),
        "mask",
        r"0\.7",
    ),
    # -- building blocks: patches, positions, encoder -------------------------
    Case(
        "patch/hidden_dim_absurd_init",
        lambda: PatchEmbedding(patch_size=4, hidden_dim=BIG),
        "hidden_dim",
        "hidden_dim=1000000000",
        allocates=False,
    ),
    Case(
        "patch/channels_absurd_at_build",
        build(lambda: PatchEmbedding(4, 10**5), (2, 8, 8, 10**5)),
        "hidden_dim",
        "channels=100000",
        allocates=False,
    ),
    Case(
        "patch/patch_size_0",
        lambda: PatchEmbedding(patch_size=0, hidden_dim=8),
        "patch_size",
        "=0",
    ),
    Case(
        "patch/image_not_a_multiple",
        lambda: PatchEmbedding(4, 8)(_f(2, 6, 8, 3)),
        "inputs",
        r"\(2, 6, 8, 3\)",
    ),
    Case(
        "patch/inputs_rank_3",
        lambda: PatchEmbedding(4, 8)(_f(2, 8, 8)),
        "inputs",
        r"\(2, 8, 8\)",
    ),
    Case(
        "patch/initializer",
        lambda: PatchEmbedding(
            4, 8, kernel_initializer={"class_name": "Nope", "config": {}}
        ),
        "kernel_initializer",
        "Nope",
    ),
    Case(
        "posemb/sequence_length_0",
        lambda: PositionEmbedding(sequence_length=0),
        "sequence_length",
        "=0",
    ),
    Case(
        "posemb/absurd_at_build",
        build(lambda: PositionEmbedding(10**6), (2, 5, 10**4)),
        "sequence_length",
        "sequence_length=1000000",
        allocates=False,
    ),
    Case(
        "posemb/inputs_longer",
        lambda: PositionEmbedding(4)(_f(2, 5, 6)),
        "sequence_length",
        r"\(2, 5, 6\)",
    ),
    Case(
        "posemb/initializer",
        lambda: PositionEmbedding(4, initializer="nope"),
        "initializer",
        "nope",
    ),
    Case(
        "sinusoidal/max_wavelength",
        lambda: SinusoidalPositionEncoding(max_wavelength=-1),
        "max_wavelength",
        "-1",
    ),
    Case(
        "encoder/intermediate_dim_absurd",
        lambda: TransformerEncoder(intermediate_dim=10**10, num_heads=2),
        "intermediate_dim",
        "intermediate_dim=10000000000",
        allocates=False,
    ),
    Case(
        "encoder/absurd_at_build",
        build(lambda: TransformerEncoder(10**6, 2), (2, 5, 10**4)),
        "intermediate_dim",
        "intermediate_dim=1000000",
        allocates=False,
    ),
    Case(
        "encoder/activation",
        lambda: TransformerEncoder(8, 2, activation="nope"),
        "activation",
        "nope",
    ),
    Case(
        "encoder/padding_mask_shape",
        lambda: TransformerEncoder(8, 2)(
            _f(2, 5, 6), padding_mask=np.ones((2, 4), bool)
        ),
        "padding_mask",
        r"\(2, 4\)",
    ),
    Case(
        "encoder/inputs_rank_2",
        lambda: TransformerEncoder(8, 2)(_f(2, 6)),
        "inputs",
        r"\(2, 6\)",
    ),
    # Constructor arguments of the building blocks, one case each.
    *[
        Case(f"{prefix}/{arg}={value!r}", construct(cls, base, arg, value), arg)
        for prefix, cls, base, arg, value in [
            ("patch", PatchEmbedding, dict(hidden_dim=4), "patch_size", (2,)),
            ("patch", PatchEmbedding, dict(hidden_dim=4), "patch_size", (2, 0)),
            ("patch", PatchEmbedding, dict(hidden_dim=4), "patch_size", True),
            ("patch", PatchEmbedding, dict(hidden_dim=4), "patch_size", "4"),
            ("patch", PatchEmbedding, dict(patch_size=2), "hidden_dim", 0),
            ("patch", PatchEmbedding, dict(patch_size=2), "hidden_dim", None),
            (
                "patch",
                PatchEmbedding,
                dict(patch_size=2, hidden_dim=4),
                "use_bias",
                1,
            ),
            ("posemb", PositionEmbedding, {}, "sequence_length", None),
            ("posemb", PositionEmbedding, {}, "sequence_length", 2.5),
            ("posemb", PositionEmbedding, {}, "sequence_length", True),
            ("sinusoidal", SinusoidalPositionEncoding, {}, "max_wavelength", 0),
            (
                "sinusoidal",
                SinusoidalPositionEncoding,
                {},
                "max_wavelength",
                float("inf"),
            ),
            (
                "sinusoidal",
                SinusoidalPositionEncoding,
                {},
                "max_wavelength",
                "10000",
            ),
            (
                "sinusoidal",
                SinusoidalPositionEncoding,
                {},
                "max_wavelength",
                True,
            ),
        ]
        + [
            ("encoder", TransformerEncoder, ENCODER, arg, value)
            for arg, value in [
                ("intermediate_dim", 0),
                ("num_heads", 0),
                ("num_heads", None),
                ("dropout", 1.0),
                ("layer_norm_epsilon", 0),
                ("normalize_first", "yes"),
                ("key_dim", 0),
                ("chunk_size", 0),
                ("chunk_size", "big"),
                ("seed", 1.5),
            ]
        ]
    ],
    Case(
        "patch/height_not_a_multiple",
        lambda: PatchEmbedding((2, 4), 3)(_f(1, 5, 8, 3)),
        "inputs",
        "height",
    ),
    Case(
        "patch/width_not_a_multiple",
        lambda: PatchEmbedding((2, 4), 3)(_f(1, 4, 6, 3)),
        "inputs",
        "width of `inputs` must be a multiple.*4",
    ),
    Case(
        "patch/width_not_a_multiple_shape",
        lambda: PatchEmbedding((2, 4), 3).compute_output_shape((None, 4, 6, 3)),
        "inputs",
        "width",
    ),
    Case(
        "patch/symbolic_height",
        lambda: PatchEmbedding(2, 3)(keras.Input((7, None, 3))),
        "inputs",
        "height",
    ),
    Case(
        "patch/channels_unknown",
        build(lambda: PatchEmbedding(2, 3), (None, 4, 4, None)),
        "inputs",
        "channels",
    ),
    Case(
        "patch/channels_after_build",
        lambda: _built(PatchEmbedding((2, 4), 3), (1, 4, 8, 3))(_f(1, 4, 8, 1)),
        "inputs",
        "last dimension",
    ),
    Case(
        "posemb/start_past_end",
        lambda: PositionEmbedding(4)(_f(2, 3, 5), start_index=2),
        "start_index",
        "sequence_length=4",
    ),
    Case(
        "posemb/start_negative",
        lambda: PositionEmbedding(4)(_f(2, 3, 5), start_index=-1),
        "start_index",
        "=-1",
    ),
    Case(
        "posemb/start_bool",
        lambda: PositionEmbedding(4)(_f(2, 3, 5), start_index=True),
        "start_index",
    ),
    Case(
        "posemb/start_not_scalar",
        lambda: PositionEmbedding(4)(_f(2, 3, 5), start_index=np.array([0, 1])),
        "start_index",
        "scalar",
    ),
    Case("posemb/inputs_rank_1", lambda: PositionEmbedding(4)(_f(3)), "inputs"),
    Case(
        "posemb/dim_after_build",
        lambda: _built(PositionEmbedding(4), (2, 3, 5))(_f(2, 3, 6)),
        "inputs",
        "last dimension",
    ),
    Case(
        "posemb/dim_unknown",
        build(lambda: PositionEmbedding(4), (None, None, None)),
        "inputs",
        "last dimension",
    ),
    Case(
        "sinusoidal/inputs_rank_1",
        lambda: SinusoidalPositionEncoding()(_f(4)),
        "inputs",
        "rank >= 2",
    ),
    Case(
        "sinusoidal/start_negative",
        lambda: SinusoidalPositionEncoding()(_f(1, 4, 2), start_index=-2),
        "start_index",
        "=-2",
    ),
    Case(
        "sinusoidal/start_not_scalar",
        lambda: SinusoidalPositionEncoding()(
            _f(1, 4, 2), start_index=np.zeros((2,))
        ),
        "start_index",
        "scalar",
    ),
    Case(
        "encoder/heads_more_than_dim",
        build(lambda: TransformerEncoder(16, 9), (None, None, 8)),
        "num_heads",
        "num_heads=9",
    ),
    Case(
        "encoder/dim_unknown",
        build(lambda: TransformerEncoder(16, 2), (None, None, None)),
        "inputs",
        "last dimension",
    ),
    Case(
        "encoder/attention_mask_shape",
        lambda: TransformerEncoder(16, 2)(
            _f(3, 6, 8), attention_mask=np.ones((3, 6, 5), bool)
        ),
        "attention_mask",
    ),
    Case(
        "encoder/dim_after_build",
        lambda: _built(TransformerEncoder(16, 2), (3, 6, 8))(_f(3, 6, 10)),
        "inputs",
        "last dimension",
    ),
    # -- tfa compat layers ---------------------------------------------------
    Case("tfa_mha/head_size", tfa_mha(dict(head_size=0)), "head_size", "=0"),
    Case(
        "tfa_mha/absurd",
        tfa_mha(dict(num_heads=BIG, head_size=BIG)),
        "num_heads",
        "head_size=1000000000",
        allocates=False,
    ),
    Case(
        "tfa_mha/mask_float",
        tfa_mha(mask=np.full((2, 3, 5), 0.5, "float32")),
        "mask",
        r"0\.5",
    ),
    Case("bahdanau/units", bahdanau(dict(units=-1)), "units", "=-1"),
    Case(
        "bahdanau/negative_length",
        bahdanau(memory_sequence_length=np.array([3, -1])),
        "memory_sequence_length",
        "-1",
    ),
    Case(
        "bahdanau/fractional_length",
        bahdanau(memory_sequence_length=np.array([2.5, 1.0])),
        "memory_sequence_length",
        "2.5",
    ),
    Case(
        "bahdanau/mask_float",
        bahdanau(memory_mask=np.full((2, 5), 0.5)),
        "memory_mask",
        r"0\.5",
    ),
    # The compat layers' remaining constructor and call checks.
    *[
        Case(
            f"bahdanau/init_{i}",
            construct(tfa.BahdanauAttention, dict(units=4), a, v),
            a,
            m,
        )
        for i, (a, v, m) in enumerate(
            [
                ("normalize", "yes", "normalize"),
                ("probability_fn", "sigmoid", r"probability_fn='sigmoid'"),
            ]
        )
    ],
    *[
        Case(
            f"bahdanau/{name}",
            lambda q=q, m=m, kw=kw: tfa.BahdanauAttention(4)(
                _f(*q), _f(*m), **kw
            ),
            argument,
            match,
        )
        for name, q, m, kw, argument, match in [
            ("query_rank", (3, 1, 6), (3, 5, 4), {}, "query", r"\(3, 1, 6\)"),
            ("memory_rank", (3, 6), (5, 4), {}, "memory", "rank 3"),
            ("batch", (2, 6), (3, 5, 4), {}, "memory", "must match"),
            (
                "lengths_and_mask",
                (3, 6),
                (3, 5, 4),
                dict(
                    memory_sequence_length=np.array([5, 2, 1]),
                    memory_mask=np.ones((3, 5), bool),
                ),
                "memory_mask",
                "not both",
            ),
            (
                "lengths_rank",
                (3, 6),
                (3, 5, 4),
                dict(memory_sequence_length=np.ones((3, 1), "int32")),
                "memory_sequence_length",
                "rank 1",
            ),
            (
                "lengths_batch",
                (3, 6),
                (3, 5, 4),
                dict(memory_sequence_length=np.ones((2,), "int32")),
                "memory_sequence_length",
                "batch size",
            ),
            (
                "mask_shape",
                (3, 6),
                (3, 5, 4),
                dict(memory_mask=np.ones((3, 3), bool)),
                "memory_mask",
                r"\(3, 3\)",
            ),
        ]
    ],
    Case(
        "bahdanau/memory_dim_after_build",
        lambda: _built(tfa.BahdanauAttention(4), (3, 6), (3, 5, 4))(
            _f(3, 6), _f(3, 5, 2)
        ),
        "memory",
        r"must be 4.*\(3, 5, 2\)",
    ),
    *[
        Case(
            f"tfa_mha/init_{a}={v!r}",
            construct(
                tfa.MultiHeadAttention, dict(head_size=2, num_heads=2), a, v
            ),
            a,
        )
        for a, v in [
            ("num_heads", -1),
            ("num_heads", 1.5),
            ("output_size", 0),
            ("dropout", 1.0),
            ("use_projection_bias", "yes"),
            ("return_attn_coef", None),
            ("seed", "x"),
        ]
    ],
    *[
        Case(
            f"tfa_mha/{name}",
            lambda x=x, mask=mask: tfa.MultiHeadAttention(2, 2)(x, mask=mask),
            argument,
            match,
        )
        for name, x, mask, argument, match in [
            ("not_a_list", _f(2, 5, 6), None, "inputs", r"\(2, 5, 6\)"),
            ("one_input", [_f(2, 5, 6)], None, "inputs", "length 1"),
            (
                "four_inputs",
                [_f(2, 5, 6)] + [_f(2, 4, 7)] * 3,
                None,
                "inputs",
                "length 4",
            ),
            ("rank2_query", [_f(5, 6), _f(4, 7)], None, "query", r"\(5, 6\)"),
            (
                "rank_mismatch",
                [_f(2, 5, 6), _f(4, 7)],
                None,
                "key",
                "same rank",
            ),
            (
                "key_value_lengths",
                [_f(2, 5, 6), _f(2, 4, 7), _f(2, 3, 7)],
                None,
                "value",
                "must match",
            ),
            (
                "mask_rank1",
                [_f(2, 5, 6), _f(2, 4, 7)],
                np.ones((4,)),
                "mask",
                "rank",
            ),
            (
                "mask_target_length",
                [_f(2, 5, 6), _f(2, 4, 7)],
                np.ones((2, 4, 4)),
                "mask",
                r"\(2, 4, 4\)",
            ),
            (
                "mask_source_length",
                [_f(2, 5, 6), _f(2, 4, 7)],
                np.ones((2, 5, 3)),
                "mask",
                "source_length",
            ),
        ]
    ],
    Case(
        "tfa_mha/key_dim_after_build",
        lambda: _built(tfa.MultiHeadAttention(2, 2), [(2, 5, 6), (2, 4, 7)])(
            [_f(2, 5, 6), _f(2, 4, 8)]
        ),
        "key",
        r"must be 7.*\(2, 4, 8\)",
    ),
    Case(
        "to_keras_attention/unbuilt",
        lambda: tfa.to_keras_attention(tfa.MultiHeadAttention(2, 2)),
        "layer",
        "must be built",
    ),
    Case(
        "to_keras_attention/not_compat",
        lambda: tfa.to_keras_attention(keras.layers.Dense(2)),
        "layer",
    ),
    Case(
        "to_keras_attention/hardmax",
        lambda: tfa.to_keras_attention(
            _built(
                tfa.BahdanauAttention(4, probability_fn="hardmax"),
                (1, 3),
                (1, 2, 5),
            )
        ),
        "probability_fn",
        r"probability_fn='hardmax'",
    ),
    # -- compat.keras_hub.convert_causal_lm ---------------------------------
    Case(
        "convert_causal_lm/backbone",
        _convert_causal_lm(lambda: _one_layer_lm("gpt2").backbone),
        "model",
        r"keras-hub causal LM.*Received: model=<GPT2Backbone",
    ),
    Case(
        "convert_causal_lm/preset_name",
        _convert_causal_lm(lambda: "gpt2_base_en"),
        "model",
        r"Received: model='gpt2_base_en'",
    ),
    Case(
        "convert_causal_lm/gemma",
        _convert_causal_lm(lambda: _one_layer_lm("gemma")),
        "model",
        r"`decoder_block_0/attention` \(CachedGemmaAttention\): a class",
    ),
    Case(
        "convert_causal_lm/subclassed_attention",
        _convert_causal_lm(_lm_with_subclassed_attention),
        "model",
        r"`transformer_layer_0/self_attention` \(CustomAttention\): a "
        r"subclass of `CachedMultiHeadAttention`",
    ),
    Case(
        "convert_causal_lm/llama3_rope",
        _convert_causal_lm(
            lambda: _one_layer_lm(
                "llama",
                rope_frequency_adjustment_factor=8.0,
                rope_low_freq_factor=1.0,
                rope_high_freq_factor=4.0,
                rope_pretraining_sequence_length=8192,
            )
        ),
        "model",
        r"\(LlamaAttention\): Llama 3.1 RoPE.*"
        r"rope_frequency_adjustment_factor=8.0",
    ),
    Case(
        "convert_causal_lm/llama_position_scaling",
        _convert_causal_lm(
            lambda: _one_layer_lm("llama", rope_position_scaling_factor=2.0)
        ),
        "model",
        r"\(LlamaAttention\): rope_position_scaling_factor=2.0",
    ),
    # -- from_config: wrong types, ranges, unknown keys ------------------
    Case(
        "config/mha_num_heads_str",
        from_config(MultiHeadAttention, num_heads="8", key_dim=4),
        "num_heads",
        "'8'",
    ),
    Case(
        "config/mha_key_dim_float",
        from_config(MultiHeadAttention, num_heads=2, key_dim=4.5),
        "key_dim",
        "4.5",
    ),
    Case(
        "config/mha_dropout_str",
        from_config(MultiHeadAttention, num_heads=2, key_dim=4, dropout="x"),
        "dropout",
        "'x'",
    ),
    Case(
        "config/mha_unknown_key",
        from_config(MultiHeadAttention, num_heads=2, key_dim=4, evil=1),
        "evil",
        "evil=1",
    ),
    Case(
        "config/mha_dtype",
        from_config(
            MultiHeadAttention,
            num_heads=2,
            key_dim=4,
            dtype={"class_name": "DTypePolicy", "config": {"name": 5}},
        ),
        "dtype",
        "DTypePolicy",
    ),
    Case(
        "config/mha_name_int",
        from_config(MultiHeadAttention, num_heads=2, key_dim=4, name=5),
        "name",
        "name=5",
    ),
    Case(
        "config/mha_trainable_str",
        from_config(MultiHeadAttention, num_heads=2, key_dim=4, trainable="y"),
        "trainable",
        "trainable=y",
    ),
    Case(
        "config/mha_lambda_initializer",
        from_config(
            MultiHeadAttention,
            num_heads=2,
            key_dim=4,
            kernel_initializer={
                "class_name": "__lambda__",
                "config": {"code": "x", "defaults": None, "closure": None},
            },
        ),
        "kernel_initializer",
        "__lambda__",
    ),
    Case(
        "config/mha_huge",
        from_config(MultiHeadAttention, num_heads=2**20, key_dim=2**20),
        "num_heads",
        str(2**20),
        allocates=False,
    ),
    Case(
        "config/not_a_dict",
        lambda: MultiHeadAttention.from_config([("num_heads", 2)]),
        "config",
        "num_heads",
    ),
    Case(
        "config/additive_use_bias_str",
        from_config(AdditiveAttention, units=4, use_bias="true"),
        "use_bias",
        "'true'",
    ),
    Case(
        "config/additive_activity_regularizer",
        from_config(AdditiveAttention, units=4, activity_regularizer="nope"),
        "activity_regularizer",
        "'nope'",
    ),
    Case(
        "config/additive_autocast",
        from_config(AdditiveAttention, units=4, autocast="no"),
        "autocast",
        "'no'",
    ),
    Case(
        "config/pooling_seed_float",
        from_config(AttentionPooling, units=4, seed=1.5),
        "seed",
        "1.5",
    ),
    Case(
        "config/pooling_unknown_key",
        from_config(AttentionPooling, units=4, function="os.system"),
        "function",
        "os.system",
    ),
    Case(
        "config/tfa_mha_head_size_str",
        from_config(tfa.MultiHeadAttention, head_size="4", num_heads=2),
        "head_size",
        "'4'",
    ),
    Case(
        "config/patch_hidden_dim_str",
        from_config(PatchEmbedding, patch_size=2, hidden_dim="8"),
        "hidden_dim",
        "'8'",
    ),
    Case(
        "config/position_embedding_unknown_key",
        from_config(PositionEmbedding, sequence_length=4, code="print(1)"),
        "code",
        "print",
    ),
    Case(
        "config/sinusoidal_max_wavelength_str",
        from_config(SinusoidalPositionEncoding, max_wavelength="x"),
        "max_wavelength",
        "'x'",
    ),
    Case(
        "config/encoder_missing_num_heads",
        from_config(TransformerEncoder, intermediate_dim=8),
        "num_heads",
        "intermediate_dim",
    ),
    Case(
        "config/bahdanau_units",
        from_config(tfa.BahdanauAttention, units=-3),
        "units",
        "=-3",
    ),
    Case(
        "config/bahdanau_unknown_key",
        from_config(tfa.BahdanauAttention, units=3, code="print(1)"),
        "code",
        "print",
    ),
    # -- RotaryEmbedding ----------------------------------------------------
    *[
        Case(f"rotary/{arg}={value!r}", construct(cls, {}, arg, value), arg)
        for cls, arg, value in [
            (RotaryEmbedding, "max_wavelength", 0),
            (RotaryEmbedding, "max_wavelength", -1),
            (RotaryEmbedding, "max_wavelength", float("nan")),
            (RotaryEmbedding, "max_wavelength", float("inf")),
            (RotaryEmbedding, "max_wavelength", True),
            (RotaryEmbedding, "max_wavelength", "10000"),
            (RotaryEmbedding, "scaling_factor", 0),
            (RotaryEmbedding, "scaling_factor", -2.0),
            (RotaryEmbedding, "scaling_factor", float("nan")),
            (RotaryEmbedding, "scaling_factor", float("inf")),
            (RotaryEmbedding, "scaling_factor", True),
            (RotaryEmbedding, "sequence_axis", 1.5),
            (RotaryEmbedding, "sequence_axis", True),
            (RotaryEmbedding, "feature_axis", None),
            (RotaryEmbedding, "feature_axis", "-1"),
        ]
    ],
    Case(
        "rotary/axes_equal",
        lambda: RotaryEmbedding(sequence_axis=2, feature_axis=2),
        "feature_axis",
        "sequence_axis=2",
    ),
    Case(
        "rotary/axes_equal_for_rank",
        lambda: RotaryEmbedding(sequence_axis=2)(_f(2, 5, 4)),
        "feature_axis",
        r"feature_axis=-1.*\(2, 5, 4\)",
    ),
    Case(
        "rotary/sequence_axis_out_of_range",
        lambda: RotaryEmbedding(sequence_axis=3)(_f(2, 5, 4)),
        "sequence_axis",
        "rank 3",
    ),
    Case(
        "rotary/feature_axis_out_of_range",
        lambda: RotaryEmbedding(feature_axis=-5)(_f(2, 5, 2, 4)),
        "feature_axis",
        "=-5",
    ),
    Case(
        "rotary/inputs_rank_2",
        lambda: RotaryEmbedding()(_f(5, 4)),
        "inputs",
        "rank >= 3",
    ),
    Case(
        "rotary/odd_head_dim",
        lambda: RotaryEmbedding()(_f(2, 5, 2, 5)),
        "inputs",
        "even head dimension",
    ),
    Case(
        "rotary/odd_head_dim_symbolic",
        lambda: RotaryEmbedding()(keras.Input((None, 2, 5))),
        "inputs",
        "even head dimension",
    ),
    Case(
        "rotary/odd_head_dim_shape",
        lambda: RotaryEmbedding().compute_output_shape((None, 5, 3)),
        "inputs",
        "even head dimension",
    ),
    Case(
        "rotary/positions_length",
        lambda: RotaryEmbedding()(_f(2, 5, 4), positions=np.arange(4)),
        "positions",
        r"\(4,\)",
    ),
    Case(
        "rotary/positions_length_heads_first",
        lambda: RotaryEmbedding(sequence_axis=2)(
            _f(2, 3, 5, 4), positions=np.arange(3)
        ),
        "positions",
        r"\(3,\)",
    ),
    Case(
        "rotary/positions_batch",
        lambda: RotaryEmbedding()(_f(2, 5, 4), positions=np.zeros((3, 5))),
        "positions",
        r"\(3, 5\)",
    ),
    Case(
        "rotary/positions_rank_3",
        lambda: RotaryEmbedding()(_f(2, 5, 4), positions=np.zeros((2, 5, 1))),
        "positions",
        r"\(2, 5, 1\)",
    ),
    Case(
        "rotary/positions_bool",
        lambda: RotaryEmbedding()(_f(2, 5, 4), positions=np.ones(5, bool)),
        "positions",
        "bool",
    ),
    Case(
        "rotary/start_negative",
        lambda: RotaryEmbedding()(_f(2, 5, 4), start_index=-1),
        "start_index",
        "=-1",
    ),
    Case(
        "rotary/start_bool",
        lambda: RotaryEmbedding()(_f(2, 5, 4), start_index=True),
        "start_index",
    ),
    Case(
        "rotary/start_not_scalar",
        lambda: RotaryEmbedding()(_f(2, 5, 4), start_index=np.array([0, 1])),
        "start_index",
        "scalar",
    ),
    Case(
        "config/rotary_max_wavelength_str",
        from_config(RotaryEmbedding, max_wavelength="x"),
        "max_wavelength",
        "'x'",
    ),
    Case(
        "config/rotary_keras_hub_rope_type",
        from_config(RotaryEmbedding, rope_type="yarn"),
        "rope_type",
        "yarn",
    ),
    # -- scaled_dot_product_attention: causal_offset -------------------------
    Case(
        "sdpa/causal_offset_negative",
        sdpa(is_causal=True, causal_offset=-1),
        "causal_offset",
        "=-1",
    ),
    Case(
        "sdpa/causal_offset_bool",
        sdpa(is_causal=True, causal_offset=True),
        "causal_offset",
        "True",
    ),
    Case(
        "sdpa/causal_offset_float",
        sdpa(is_causal=True, causal_offset=1.5),
        "causal_offset",
        "1.5",
    ),
    Case(
        "sdpa/causal_offset_not_scalar",
        sdpa(is_causal=True, causal_offset=np.array([1, 2])),
        "causal_offset",
        "scalar",
    ),
    Case(
        "sdpa/causal_offset_not_causal",
        sdpa(causal_offset=2),
        "causal_offset",
        "causal_offset=2",
    ),
    # -- MultiHeadAttention and GroupedQueryAttention: key/value cache -------
    # A valid cache of `mha()`: (batch=2, 2, max_length=5, heads=2, dim=4).
    Case(
        "mha_cache/rank_4",
        mha(cache=_f(2, 2, 5, 2), cache_update_index=0),
        "cache",
        r"\(2, 2, 5, 2\)",
    ),
    Case(
        "mha_cache/axis_1",
        mha(cache=_f(2, 3, 5, 2, 4), cache_update_index=0),
        "cache",
        r"\(2, 3, 5, 2, 4\)",
    ),
    Case(
        "mha_cache/kv_heads",
        mha(
            dict(num_heads=4, num_key_value_heads=2),
            cache=_f(2, 2, 5, 4, 4),
            cache_update_index=0,
        ),
        "cache",
        r"\(2, 2, 5, 4, 4\)",
    ),
    Case(
        "gqa_cache/kv_heads",
        gqa(cache=_f(2, 2, 5, 4, 4), cache_update_index=0),
        "cache",
        r"\(2, 2, 5, 4, 4\)",
    ),
    Case(
        "mha_cache/head_dim",
        mha(cache=_f(2, 2, 5, 2, 3), cache_update_index=0),
        "cache",
        r"\(2, 2, 5, 2, 3\)",
    ),
    Case(
        "mha_cache/batch",
        mha(cache=_f(3, 2, 5, 2, 4), cache_update_index=0),
        "cache",
        r"\(3, 2, 5, 2, 4\)",
    ),
    Case(
        "mha_cache/index_past_end",
        mha(
            query=(2, 2, 6),
            value=(2, 2, 6),
            cache=_f(2, 2, 5, 2, 4),
            cache_update_index=4,
        ),
        "cache_update_index",
        "=4",
    ),
    Case(
        "mha_cache/index_negative",
        mha(cache=_f(2, 2, 5, 2, 4), cache_update_index=-1),
        "cache_update_index",
        "=-1",
    ),
    Case(
        "mha_cache/index_without_cache",
        mha(cache_update_index=0),
        "cache_update_index",
        "cache=None",
    ),
    Case(
        "mha_cache/attention_axes",
        mha(
            dict(attention_axes=(1, 2)),
            query=(2, 3, 3, 6),
            value=(2, 3, 3, 6),
            cache=_f(2, 2, 5, 2, 4),
            cache_update_index=0,
        ),
        "cache",
        "attention_axes",
    ),
    Case(
        # Neither the keys being written (3) nor the cache's slots (5).
        "mha_cache/value_mask_length",
        mha(
            value=(2, 3, 6),
            cache=_f(2, 2, 5, 2, 4),
            cache_update_index=0,
            value_mask=np.ones((2, 4), bool),
        ),
        "value_mask",
        r"\(2, 4\)",
    ),
    Case(
        "mha_cache/attention_mask_last_dim",
        mha(
            value=(2, 3, 6),
            cache=_f(2, 2, 5, 2, 4),
            cache_update_index=0,
            attention_mask=np.ones((2, 3, 3), bool),
        ),
        "attention_mask",
        r"\(2, 3, 3\)",
    ),
    # -- RoPE options of the attention layers and the Transformer blocks -----
    *[
        Case(f"{prefix}/{arg}={value!r}", construct(cls, base, arg, value), arg)
        for prefix, cls, base in [
            ("mha", MultiHeadAttention, dict(num_heads=2, key_dim=4)),
            (
                "gqa",
                GroupedQueryAttention,
                dict(head_dim=4, num_query_heads=4, num_key_value_heads=2),
            ),
            ("encoder", TransformerEncoder, ENCODER),
            ("decoder", TransformerDecoder, ENCODER),
        ]
        for arg, value in [
            ("rope_max_wavelength", 0),
            ("rope_max_wavelength", -1),
            ("rope_max_wavelength", float("nan")),
            ("rope_max_wavelength", float("inf")),
            ("rope_max_wavelength", "x"),
            ("rope_scaling_factor", 0),
        ]
    ],
    Case(
        "mha/rope_odd_key_dim",
        mha(dict(key_dim=3, rope_max_wavelength=100)),
        "rope_max_wavelength",
        "key_dim=3",
    ),
    Case(
        "gqa/rope_odd_head_dim",
        gqa(dict(head_dim=5, rope_max_wavelength=100)),
        "rope_max_wavelength",
        "=5",
    ),
    Case(
        "encoder/rope_odd_key_dim",
        lambda: TransformerEncoder(8, 2, key_dim=3, rope_max_wavelength=100),
        "key_dim",
        "key_dim=3",
    ),
    Case(
        "encoder/rope_odd_head_size_at_build",
        build(
            lambda: TransformerEncoder(8, 2, rope_max_wavelength=100), (2, 5, 6)
        ),
        "rope_max_wavelength",
        r"\(2, 5, 6\)",
    ),
    Case(
        "decoder/rope_odd_key_dim",
        lambda: TransformerDecoder(8, 2, key_dim=3, rope_max_wavelength=100),
        "key_dim",
        "key_dim=3",
    ),
    Case(
        "decoder/rope_odd_head_size_at_build",
        build(
            lambda: TransformerDecoder(8, 2, rope_max_wavelength=100), (2, 5, 6)
        ),
        "rope_max_wavelength",
        r"\(2, 5, 6\)",
    ),
    # -- TransformerDecoder ---------------------------------------------------
    *[
        Case(
            f"decoder/{arg}={value!r}",
            construct(TransformerDecoder, ENCODER, arg, value),
            arg,
        )
        for arg, value in [
            ("intermediate_dim", 0),
            ("num_heads", 0),
            ("dropout", 1.5),
            ("num_key_value_heads", 3),
            ("sliding_window", 0),
            ("chunk_size", 0),
            ("logits_soft_cap", 0),
            ("activation", "nope"),
        ]
    ],
    Case(
        "decoder/intermediate_dim_absurd",
        lambda: TransformerDecoder(intermediate_dim=10**10, num_heads=2),
        "intermediate_dim",
        "intermediate_dim=10000000000",
        allocates=False,
    ),
    Case(
        "decoder/absurd_at_build",
        build(lambda: TransformerDecoder(10**6, 2), (2, 5, 10**4)),
        "intermediate_dim",
        "intermediate_dim=1000000",
        allocates=False,
    ),
    Case(
        "decoder/dim_after_build",
        lambda: _built(TransformerDecoder(16, 2), (3, 6, 8))(_f(3, 6, 10)),
        "decoder_sequence",
        "last dimension",
    ),
    Case(
        "decoder/encoder_sequence_without_cross",
        lambda: _built(TransformerDecoder(16, 2), (2, 5, 8))(
            _f(2, 5, 8), _f(2, 4, 8)
        ),
        "encoder_sequence",
        "a tensor",
    ),
    Case(
        "decoder/encoder_sequence_missing",
        lambda: _built(TransformerDecoder(16, 2), (2, 5, 8), (2, 4, 8))(
            _f(2, 5, 8)
        ),
        "encoder_sequence",
        "None",
    ),
    Case(
        "decoder/self_cache_without_cross_cache",
        lambda: _built(TransformerDecoder(16, 2), (2, 5, 8), (2, 4, 8))(
            _f(2, 1, 8),
            _f(2, 4, 8),
            self_attention_cache=_f(2, 2, 5, 2, 4),
            self_attention_cache_update_index=0,
        ),
        "cross_attention_cache",
        "cross_attention_cache=None",
    ),
    Case(
        "config/decoder_missing_num_heads",
        from_config(TransformerDecoder, intermediate_dim=8),
        "num_heads",
        "intermediate_dim",
    ),
    Case(
        "config/decoder_sliding_window_str",
        from_config(
            TransformerDecoder,
            intermediate_dim=8,
            num_heads=2,
            sliding_window="4",
        ),
        "sliding_window",
        "'4'",
    ),
    # -- TokenGenerator -------------------------------------------------------
    Case(
        "config/generator_not_a_dict",
        lambda: TokenGenerator.from_config([("max_length", 8)]),
        "config",
        r"config=\[\('max_length', 8\)\]",
    ),
    Case(
        "config/generator_none",
        lambda: TokenGenerator.from_config(None),
        "config",
        "config=None",
    ),
    *[
        Case(
            f"generator/{arg}={value!r}",
            construct(TokenGenerator, GENERATOR, arg, value),
            arg,
        )
        for arg, value in [
            ("max_length", 0),
            ("max_length", 2.5),
            ("max_length", 2**40),
            ("strategy", "beam"),
            ("temperature", 0.0),
            ("temperature", float("nan")),
            ("top_k", 0),
            ("end_token_id", -1),
            ("padding_token_id", True),
            ("model", _NotAModel()),
        ]
    ],
    Case(
        "generator/model_without_a_cache_builder",
        lambda: TokenGenerator(_OnlyCachedCall(), 8),
        "model",
        "without `init_cache`, `_build_cache`",
    ),
    Case(
        "generator/empty_stop_sequence",
        lambda: _generator(stop_token_ids=[3, []]),
        "stop_token_ids",
        "empty sequence",
    ),
    Case(
        "generator/stop_token_ids_an_int",
        lambda: _generator(stop_token_ids=3),
        "stop_token_ids",
        "stop_token_ids=3",
    ),
    Case(
        "generator/stop_token_negative",
        lambda: _generator(stop_token_ids=[[2, -1]]),
        "stop_token_ids",
        "-1",
    ),
    Case(
        "generator/sampler_not_a_sampler",
        lambda: _generator(sampler=42),
        "sampler",
        "42",
    ),
    Case(
        "generator/contrastive_without_hidden_states",
        lambda: TokenGenerator(_Bigram(), 5, sampler="contrastive")(
            np.ones((2, 3), "int32")
        ),
        "sampler",
        "returning `\\(logits, cache\\)`",
    ),
    Case(
        "generator/end_token_and_stop_token_ids",
        lambda: _generator(end_token_id=2, stop_token_ids=[3]),
        "end_token_id",
        "stop_token_ids=\\[3\\]",
    ),
    Case(
        "generator/temperature_with_beams",
        lambda: _generator(samplers.BeamSampler(num_beams=2))(
            np.ones((2, 3), "int32"), temperature=0.5
        ),
        "temperature",
        "0.5",
    ),
    Case(
        "generator/max_length_not_above_prompt",
        lambda: _generator()(np.ones((2, 8), "int32")),
        "max_length",
        r"max_length=8, prompt_ids.shape\[1\]=8",
    ),
    Case(
        "generator/max_length_not_above_prompt_symbolic",
        lambda: _generator()(keras.Input((9,), dtype="int32")),
        "max_length",
        "max_length=8",
    ),
    Case(
        "generator/prompt_rank_1",
        lambda: _generator()(np.ones((3,), "int32")),
        "prompt_ids",
        r"\(3,\)",
    ),
    Case(
        "generator/seed_negative",
        lambda: _generator()(np.ones((2, 3), "int32"), seed=-2),
        "seed",
        "=-2",
    ),
    Case(
        "generator/seed_past_int32",
        lambda: _generator("random")(np.ones((2, 3), "int32"), seed=2**31),
        "seed",
        "2147483648",
    ),
    Case(
        "mha_cache/integer_cache",
        mha(
            value=(2, 3, 6),
            cache=np.zeros((2, 2, 5, 2, 4), "int32"),
            cache_update_index=0,
        ),
        "cache",
        "int32",
    ),
    Case(
        "mha/rope_with_two_attention_axes",
        build(
            lambda: MultiHeadAttention(
                2, 4, attention_axes=(1, 2), rope_max_wavelength=100
            ),
            (2, 3, 5, 8),
            (2, 3, 5, 8),
        ),
        "rope_max_wavelength",
        "attention_axes=\\(1, 2\\)",
    ),
    Case(
        "generator/temperature_negative_at_call",
        lambda: _generator("random")(
            np.ones((2, 3), "int32"), temperature=np.float32(-1.0)
        ),
        "temperature",
        "-1",
    ),
    # -- keras_attention.samplers ---------------------------------------------
    Case("samplers/top_p_zero", lambda: samplers.TopPSampler(p=0), "p", "p=0"),
    Case(
        "samplers/top_p_above_one",
        lambda: samplers.TopPSampler(p=1.5),
        "p",
        "p=1.5",
    ),
    Case("samplers/min_p_zero", lambda: samplers.MinPSampler(p=0), "p", "p=0"),
    Case(
        "samplers/beam_no_beams",
        lambda: samplers.BeamSampler(num_beams=0),
        "num_beams",
        "num_beams=0",
    ),
    Case(
        "samplers/top_k_zero",
        lambda: samplers.TopKSampler(k=0),
        "k",
        "k=0",
    ),
    Case(
        "samplers/seed_past_int32",
        lambda: samplers.RandomSampler(seed=2**31),
        "seed",
        "2147483648",
    ),
    Case(
        "samplers/temperature_zero",
        lambda: samplers.GreedySampler(temperature=0),
        "temperature",
        "temperature=0",
    ),
    Case(
        "samplers/repetition_penalty_zero",
        lambda: samplers.RepetitionPenalty(0),
        "penalty",
        "penalty=0",
    ),
    Case(
        "samplers/ban_negative_token",
        lambda: samplers.BanTokens([1, -2]),
        "token_ids",
        r"\[1, -2\]",
    ),
    Case(
        "samplers/get_speculative",
        lambda: samplers.get("speculative"),
        "identifier",
        "SpeculativeSampler.*identifier='speculative'",
    ),
    Case(
        "samplers/get_unknown_name",
        lambda: samplers.get("nope"),
        "identifier",
        "identifier='nope'",
    ),
    Case(
        "samplers/get_not_a_sampler",
        lambda: samplers.get(3),
        "identifier",
        "identifier=3",
    ),
    # -- keras_attention.distribution: meshes and head counts ---------------
    Case(
        "distribution/mesh_not_a_device_mesh",
        lambda: layout_map((2, 4), _encoder_model()),
        "device_mesh",
        r"\(2, 4\)",
    ),
    Case(
        "distribution/mesh_without_model_axis",
        lambda: layout_map(_mesh((2, 4), ("batch", "heads")), _encoder_model()),
        "model_axis",
        "'batch', 'heads'",
    ),
    Case(
        "distribution/fsdp_without_batch_axis",
        lambda: layout_map(
            _mesh((8,), ("model",)), _encoder_model(), fsdp=True
        ),
        "batch_axis",
        "\\('model',\\)",
    ),
    Case(
        "distribution/fsdp_on_the_model_axis",
        lambda: layout_map(
            _mesh((2, 4)), _encoder_model(), fsdp=True, batch_axis="model"
        ),
        "batch_axis",
        "'model'",
    ),
    Case(
        "distribution/query_heads_not_divisible",
        lambda: layout_map(_mesh((2, 4)), _encoder_model(num_heads=6)),
        "num_heads",
        "num_heads=6",
    ),
    Case(
        "distribution/intermediate_dim_not_divisible",
        lambda: layout_map(_mesh((1, 8)), _encoder_model(intermediate=12)),
        "intermediate_dim",
        "intermediate_dim=12",
    ),
    Case(
        "distribution/fsdp_dim_not_divisible",
        lambda: layout_map(
            _mesh((4, 2)), _encoder_model(num_heads=2, dim=6), fsdp=True
        ),
        "fsdp",
        r"shape \(6, ",
    ),
    Case(
        "distribution/model_not_built",
        lambda: layout_map(_mesh((2, 4)), TransformerEncoder(8, 4)),
        "model",
        "built=False",
    ),
    Case(
        "distribution/cache_wrong_rank",
        lambda: place_cache((np.zeros((2, 2, 5, 4), "float32"),)),
        "cache",
        r"\(2, 2, 5, 4\)",
    ),
    Case(
        "distribution/cache_without_key_value_axis",
        lambda: place_cache(np.zeros((2, 3, 5, 4, 2), "float32")),
        "cache",
        r"\(2, 3, 5, 4, 2\)",
    ),
    # -- programmable attention: functions, sinks, segment ids ------------
    Case(
        "mha/mask_mod_lambda_at_get_config",
        lambda: MultiHeadAttention(
            2, 4, mask_mod=lambda b, h, q, k: q >= k
        ).get_config(),
        "mask_mod",
        "register_keras_serializable.*lambda",
    ),
    Case(
        "mha/score_mod_unregistered_at_get_config",
        lambda: MultiHeadAttention(2, 4, score_mod=_unregistered).get_config(),
        "score_mod",
        "register_keras_serializable.*_unregistered",
    ),
    Case(
        "mha/mask_mod_unknown_name",
        lambda: MultiHeadAttention(2, 4, mask_mod="nowhere>nothing"),
        "mask_mod",
        "nowhere>nothing",
    ),
    Case("sdpa/sinks_length", sdpa(sinks=np.zeros(3)), "sinks", r"\(3,\)"),
    Case(
        "sdpa/segment_ids_shape",
        sdpa(
            query_segment_ids=np.zeros((2, 4), "int32"),
            key_segment_ids=np.zeros((2, 5), "int32"),
        ),
        "query_segment_ids",
        r"\(2, 3\).*\(2, 4\)",
    ),
    Case(
        "sdpa/segment_ids_float",
        sdpa(
            query_segment_ids=np.zeros((2, 3), "float32"),
            key_segment_ids=np.zeros((2, 5), "int32"),
        ),
        "query_segment_ids",
        "integer.*float32",
    ),
    Case(
        "mha/segment_ids_shape",
        mha(
            query_segment_ids=np.zeros((2, 3), "int32"),
            key_segment_ids=np.zeros((2, 4), "int32"),
        ),
        "key_segment_ids",
        r"\(2, 5\).*\(2, 4\)",
    ),
    Case(
        "mha/segment_ids_float",
        mha(
            query_segment_ids=np.zeros((2, 3), "float32"),
            key_segment_ids=np.zeros((2, 5), "int32"),
        ),
        "query_segment_ids",
        "integer.*float32",
    ),
    Case(
        "sdpa/mask_mod_not_boolean",
        sdpa(mask_mod=lambda b, h, q, k: q - k),
        "mask_mod",
        "boolean.*int32",
    ),
    Case(
        "sdpa/mask_mod_shape",
        sdpa(mask_mod=lambda b, h, q, k: np.ones((7, 7, 7), bool)),
        "mask_mod",
        r"broadcastable.*\(7, 7, 7\)",
    ),
    Case(
        "sdpa/score_mod_shape",
        sdpa(score_mod=lambda s, b, h, q, k: s[..., :1]),
        "score_mod",
        r"shape.*\(2, 4, 2, 1\)",
    ),
    Case(
        "serving/export_model_unknown_format",
        lambda: _export_model(format="pb"),
        "format",
        "tf_saved_model, onnx, litert, openvino.*format='pb'",
    ),
]


def test_case_ids_are_unique():
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.fixture
def no_attention(monkeypatch):
    """Reaching an attention kernel fails the test."""

    def reached(*args, **kwargs):
        raise AssertionError("attention computed before the input check")

    for name in (
        "_dense_sdpa",
        "_chunked_sdpa",
        "_dense_additive",
        "_chunked_additive",
    ):
        monkeypatch.setattr(attention_module, name, reached)
    monkeypatch.setattr(pooling_module, "masked_softmax", reached)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_raises_a_clear_value_error(case, no_attention, monkeypatch):
    if not case.allocates:

        def add_weight(*args, **kwargs):
            raise AssertionError("a weight was created before the check")

        monkeypatch.setattr(keras.layers.Layer, "add_weight", add_weight)
    with pytest.raises(ValueError) as info:
        case.call()
    message = str(info.value)
    assert f"`{case.argument}`" in message or f"{case.argument}=" in message, (
        message
    )
    assert "Received" in message, message
    if case.match:
        assert re.search(case.match, message), message
