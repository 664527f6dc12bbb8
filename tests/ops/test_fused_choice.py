"""The choice between the backend's fused kernel and ours, on a CPU.

`_fused.choose` is checked against the rule, restated here independently,
for every combination of its inputs. Then the op and the layers run with the
environment replaced by a pretended GPU or TPU and the fused kernel by a
recording stub (Keras' own non-fused `dot_product_attention`), to see which
calls reach it and that fully masked rows still come back as zeros.
"""

import itertools

import keras
import numpy as np
import pytest

from keras_attention import GroupedQueryAttention
from keras_attention import MultiHeadAttention
from keras_attention.ops import _fused
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import to_numpy

FACTS = dict(
    backend=("tensorflow", "jax"),
    platform=("cpu", "gpu", "tpu"),
    dtype=("float32", "float16", "bfloat16"),
    return_scores=(False, True),
    dropout=(False, True),
    bias=(False, True),
    soft_cap=(False, True),
    mask_ok=(True, False),
    auto_chunk=(True, False),
)


def _possible(f):
    """Whether the fused kernel can take the call, restated here: only JAX
    on a GPU or TPU has one; on a GPU it takes float16 or bfloat16 inputs;
    it returns no scores and takes no dropout and no attention bias; it
    takes a logits soft-cap on a TPU only; and a mask only of rank 2 or 4
    with a static shape (`mask_ok`)."""
    if f["backend"] != "jax" or f["platform"] not in ("gpu", "tpu"):
        return False
    if f["platform"] == "gpu" and f["dtype"] not in ("float16", "bfloat16"):
        return False
    if f["return_scores"] or f["dropout"] or f["bias"]:
        return False
    if f["soft_cap"] and f["platform"] != "tpu":
        return False
    return f["mask_ok"]


def _combinations():
    names = list(FACTS)
    for values in itertools.product(*FACTS.values()):
        yield dict(zip(names, values))


@pytest.mark.parametrize("global_setting", [None, False])
@pytest.mark.parametrize("flash_attention", [None, True, False])
def test_choose_follows_the_rule_for_every_combination(
    flash_attention, global_setting
):
    count = 0
    for facts in _combinations():
        count += 1
        possible = _possible(facts)
        if flash_attention is True and not possible:
            with pytest.raises(ValueError, match="flash_attention=True"):
                _fused.choose(flash_attention, global_setting, **facts)
            continue
        got = _fused.choose(flash_attention, global_setting, **facts)
        if flash_attention is False:
            assert got is False, facts
        elif flash_attention is True:
            assert got is True, facts
        else:  # None: the global switch, `chunk_size="auto"`, "possible"
            want = global_setting is not False and facts["auto_chunk"]
            assert got is (want and possible), facts
    assert count == 2 * 3 * 3 * 2**6


def test_flash_true_errors_name_the_cause_in_keras_words():
    base = dict(
        backend="jax",
        platform="gpu",
        dtype="float16",
        return_scores=False,
        dropout=False,
        bias=False,
        soft_cap=False,
        mask_ok=True,
        auto_chunk=False,
    )
    expected = {
        "return_scores": "Returning attention scores is not supported when "
        "flash attention is enabled",
        "dropout": "Dropout is not supported when flash attention",
        "bias": "attention bias",
        "soft_cap": "soft-cap",
        "mask_ok": "mask",
    }
    for name, words in expected.items():
        facts = dict(base, **{name: name != "mask_ok"})
        with pytest.raises(ValueError, match=words):
            _fused.choose(True, None, **facts)
    with pytest.raises(ValueError, match="float16 or bfloat16"):
        _fused.choose(True, None, **dict(base, dtype="float32"))
    with pytest.raises(ValueError, match="fused kernel"):
        _fused.choose(True, None, **dict(base, platform="cpu"))


@pytest.fixture
def fused_stub(monkeypatch):
    """Pretends JAX on a GPU; the fused kernel records its calls, refuses
    empty rows, and computes with Keras' own (non-fused) kernel."""
    calls = []

    def stub(query, key, value, mask=None, scale=None, is_causal=False, **kw):
        calls.append(dict(mask=mask, is_causal=is_causal, **kw))
        if mask is not None:
            full = np.broadcast_to(
                to_numpy(mask),
                (query.shape[0], query.shape[2], query.shape[1], key.shape[1]),
            )
            if is_causal:
                full = full & np.tril(np.ones(full.shape[-2:], bool))
            assert full.any(-1).all(), "the fused kernel got an empty row"
        return keras.ops.dot_product_attention(
            query, key, value, mask=mask, scale=scale, is_causal=is_causal
        )

    monkeypatch.setattr(_fused, "environment", lambda: ("jax", "gpu"))
    monkeypatch.setattr(_fused, "fused_kernel", stub)
    return calls


def _qkv(rng, dtype="float16"):
    q = rng.normal(size=(2, 5, 4, 8)).astype(dtype)
    k = rng.normal(size=(2, 6, 2, 8)).astype(dtype)
    v = rng.normal(size=(2, 6, 2, 8)).astype(dtype)
    return q, k, v


def test_op_sends_what_the_fused_kernel_takes(rng, fused_stub):
    q, k, v = _qkv(rng)
    scaled_dot_product_attention(q, k, v, is_causal=True)
    assert len(fused_stub) == 1 and fused_stub[0]["is_causal"]
    # Not possible: our kernels, no call.
    scaled_dot_product_attention(q, k, v, return_scores=True)
    scaled_dot_product_attention(q, k, v, bias=np.zeros((5, 6), "float16"))
    scaled_dot_product_attention(q, k, v, logits_soft_cap=5.0)
    scaled_dot_product_attention(*_qkv(rng, "float32"))
    scaled_dot_product_attention(q, k, v, flash_attention=False)
    # An explicit chunk_size means our kernels; an explicit True still wins.
    scaled_dot_product_attention(q, k, v, chunk_size=2)
    scaled_dot_product_attention(q, k, v, chunk_size=None)
    assert len(fused_stub) == 1
    scaled_dot_product_attention(q, k, v, chunk_size=2, flash_attention=True)
    assert len(fused_stub) == 2
    fused_stub.pop()
    keras.config.disable_flash_attention()
    try:
        scaled_dot_product_attention(q, k, v)
        assert len(fused_stub) == 1
        # An explicit True overrides the disabled switch.
        scaled_dot_product_attention(q, k, v, flash_attention=True)
        assert len(fused_stub) == 2
    finally:
        keras.config.enable_flash_attention()
    with pytest.raises(ValueError, match="logits_soft_cap"):
        scaled_dot_product_attention(
            q, k, v, logits_soft_cap=5.0, flash_attention=True
        )


def test_fused_path_gives_zero_rows_and_zero_gradients(
    rng, fused_stub, monkeypatch
):
    # A "TPU", whose kernel takes float32: the gradients are exact enough.
    monkeypatch.setattr(_fused, "environment", lambda: ("jax", "tpu"))
    q, k, v = (x.astype("float32") for x in _qkv(rng))
    mask = rng.random((2, 1, 5, 6)) > 0.4
    mask[0, :, 1] = False  # fully masked query rows
    mask[1, :, 4] = False

    def fused(q, k, v):
        return scaled_dot_product_attention(
            q, k, v, mask=mask, flash_attention=True
        )

    out = to_numpy(fused(q, k, v))
    assert len(fused_stub) == 1
    want, _ = reference.sdpa(q, k, v, mask=mask)
    np.testing.assert_allclose(out, want, atol=1e-5)
    assert np.all(out[0, 1] == 0) and np.all(out[1, 4] == 0)
    _, grads = loss_and_grads(fused, q, k, v)
    assert all(np.all(np.isfinite(g)) for g in grads)
    assert np.all(grads[0][0, 1] == 0) and np.all(grads[0][1, 4] == 0)


@pytest.mark.parametrize("layer_name", ["mha", "gqa"])
def test_layers_use_the_fused_kernel_when_possible(rng, fused_stub, layer_name):
    def make(**kwargs):
        if layer_name == "mha":
            return MultiHeadAttention(num_heads=4, key_dim=8, **kwargs)
        return GroupedQueryAttention(
            head_dim=8, num_query_heads=4, num_key_value_heads=2, **kwargs
        )

    x = rng.normal(size=(2, 5, 16)).astype("float16")
    padding = np.array([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]], bool)
    layer = make(dtype="float16")
    out = to_numpy(layer(x, x, query_mask=padding, value_mask=padding))
    assert len(fused_stub) == 1
    assert np.all(out[1, 2:] == 0) and np.all(np.isfinite(out))
    exact = make(dtype="float16", flash_attention=False)
    exact(x, x)
    exact.set_weights(layer.get_weights())
    np.testing.assert_allclose(
        to_numpy(exact(x, x, query_mask=padding, value_mask=padding)),
        out,
        atol=2e-2,
    )
    assert len(fused_stub) == 1
    layer(x, x, return_attention_scores=True)  # scores: our kernel
    make(dtype="float16", logits_soft_cap=3.0)(x, x)  # soft-cap on a GPU
    make(dtype="float16", chunk_size=4)(x, x)  # explicit: our kernel
    assert len(fused_stub) == 1
    with pytest.raises(ValueError, match="Returning attention scores"):
        make(dtype="float16", flash_attention=True)(
            x, x, return_attention_scores=True
        )
    with pytest.raises(ValueError, match="logits_soft_cap"):
        make(dtype="float16", flash_attention=True, logits_soft_cap=3.0)(x, x)
