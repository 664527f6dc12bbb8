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
from keras_attention.ops import _backend
from keras_attention.ops import _fused
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.testing import loss_and_grads
from tests.testing import to_numpy

FACTS = dict(
    backend=("tensorflow", "jax", "torch"),
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
    """Whether the fused kernel can take the call, restated here: PyTorch
    has one on every platform, for every dtype, without a soft-cap; JAX has
    one on a GPU or TPU, on a GPU for float16 or bfloat16 inputs, with a
    soft-cap on a TPU only; none returns scores or takes dropout or an
    attention bias; and each takes a mask only of rank 2 or 4 with a static
    shape (`mask_ok`)."""
    if f["return_scores"] or f["dropout"] or f["bias"] or not f["mask_ok"]:
        return False
    if f["backend"] == "torch":
        return not f["soft_cap"]
    if f["backend"] != "jax" or f["platform"] not in ("gpu", "tpu"):
        return False
    if f["platform"] == "gpu" and f["dtype"] not in ("float16", "bfloat16"):
        return False
    return not (f["soft_cap"] and f["platform"] != "tpu")


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
    assert count == 3 * 3 * 3 * 2**6


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
    torch_cpu = dict(base, backend="torch", platform="cpu", dtype="float32")
    assert _fused.choose(True, None, **torch_cpu)
    with pytest.raises(ValueError, match="soft-cap on JAX on a TPU"):
        _fused.choose(True, None, **dict(torch_cpu, soft_cap=True))


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
    monkeypatch.setattr(_backend, "fused_attention", stub)
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


torch_only = pytest.mark.skipif(
    keras.backend.backend() != "torch", reason="needs the PyTorch backend"
)


@pytest.fixture
def torch_sdpa(monkeypatch):
    """Records the calls that reach PyTorch's own fused kernel."""
    from keras_attention.ops import _backend_torch

    calls = []
    real = _backend_torch.scaled_dot_product_attention

    def recording(*args):
        calls.append(args)
        return real(*args)

    monkeypatch.setattr(
        _backend_torch, "scaled_dot_product_attention", recording
    )
    return calls


@torch_only
@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_torch_auto_sends_what_sdpa_takes_to_it(rng, torch_sdpa, dtype):
    import torch
    import torch.nn.functional as F

    q, k, v = (x.astype("float32") for x in _qkv(rng))
    mask = rng.random((2, 1, 5, 6)) > 0.4
    mask[0, :, 1] = False  # fully masked query rows
    out = scaled_dot_product_attention(
        *(keras.ops.cast(x, dtype) for x in (q, k, v)), mask=mask
    )
    assert len(torch_sdpa) == 1
    assert torch_sdpa[0][1].shape[2] == 2  # grouped heads, not repeated
    got = to_numpy(keras.ops.cast(out, "float32"))
    want, _ = reference.sdpa(q, k, v, mask=mask)
    tol = 1e-5 if dtype == "float32" else 3e-2
    np.testing.assert_allclose(got, want, atol=tol, rtol=tol)
    assert np.all(got[0, 1] == 0)
    # The same numbers as a direct call of PyTorch's op, where rows are
    # not empty.
    t = [torch.tensor(x).transpose(1, 2) for x in (q, k, v)]
    direct = F.scaled_dot_product_attention(
        t[0],
        t[1].repeat_interleave(2, 1),
        t[2].repeat_interleave(2, 1),
        attn_mask=torch.tensor(mask),
    ).transpose(1, 2)
    keep = mask.any(-1)[:, 0]  # (batch, q_len)
    if dtype == "float32":
        np.testing.assert_allclose(
            got[keep], direct.numpy()[keep], atol=5e-7, rtol=1e-6
        )
    # Our kernels: soft-cap, scores, dropout in training, explicit sizes.
    scaled_dot_product_attention(q, k, v, logits_soft_cap=5.0)
    scaled_dot_product_attention(q, k, v, return_scores=True)
    scaled_dot_product_attention(q, k, v, dropout_rate=0.5, training=True)
    scaled_dot_product_attention(q, k, v, chunk_size=2)
    scaled_dot_product_attention(q, k, v, chunk_size=None)
    assert len(torch_sdpa) == 1
    # Dropout outside training is no dropout: fused.
    scaled_dot_product_attention(q, k, v, dropout_rate=0.5, training=False)
    assert len(torch_sdpa) == 2


@torch_only
@pytest.mark.parametrize("offset", [0, 1])
def test_torch_fused_gradients_and_causal_offset(rng, torch_sdpa, offset):
    q, k, v = (x.astype("float32") for x in _qkv(rng))
    mask = rng.random((2, 1, 5, 6)) > 0.3
    mask[1, :, 4] = False

    def fused(q, k, v):
        return scaled_dot_product_attention(
            q, k, v, mask=mask, is_causal=True, causal_offset=offset
        )

    def exact(q, k, v):
        return scaled_dot_product_attention(
            q,
            k,
            v,
            mask=mask,
            is_causal=True,
            causal_offset=offset,
            chunk_size=None,
        )

    np.testing.assert_allclose(
        to_numpy(fused(q, k, v)), to_numpy(exact(q, k, v)), atol=1e-6
    )
    value, grads = loss_and_grads(fused, q, k, v)
    want_value, want_grads = loss_and_grads(exact, q, k, v)
    assert len(torch_sdpa) == 3  # one call, then `loss_and_grads`' two
    np.testing.assert_allclose(value, want_value, rtol=1e-5)
    for got, want in zip(grads, want_grads):
        np.testing.assert_allclose(got, want, atol=2e-6)
    assert np.all(grads[0][1, 4] == 0)


@torch_only
@pytest.mark.parametrize("layer_name", ["mha", "gqa"])
def test_torch_layers_match_keras_core_through_sdpa(
    rng, torch_sdpa, layer_name
):
    x = rng.normal(size=(2, 7, 16)).astype("float32")
    padding = np.ones((2, 7), bool)
    padding[1, 4:] = False
    if layer_name == "mha":
        ours = MultiHeadAttention(num_heads=4, key_dim=8)
        theirs = keras.layers.MultiHeadAttention(num_heads=4, key_dim=8)
    else:
        ours = GroupedQueryAttention(
            head_dim=8, num_query_heads=4, num_key_value_heads=2
        )
        theirs = keras.layers.GroupQueryAttention(
            head_dim=8, num_query_heads=4, num_key_value_heads=2
        )
    ours(x, x)
    theirs(x, x)
    theirs.set_weights(ours.get_weights())
    torch_sdpa.clear()
    kwargs = dict(query_mask=padding, value_mask=padding, use_causal_mask=True)
    got = to_numpy(ours(x, x, **kwargs))
    assert len(torch_sdpa) == 1
    want = to_numpy(theirs(x, x, **kwargs))
    # Keras core leaves the padded query rows to whatever its softmax gives;
    # ours are zero.
    np.testing.assert_allclose(got[padding], want[padding], atol=2e-6)
    assert np.all(got[~padding] == 0)
