"""`chunk_size="auto"` in inference: query blocks over whole rows.

Without a backward pass or dropout, and not causal, "auto" runs each query
block against all the keys at once with one softmax (`_chunked`'s
`k_chunk=None`): no running maximum. The tests shrink the thresholds so
that small inputs take that path, record which blocks the kernel got, and
compare with the NumPy reference (outputs) and the dense kernel
(gradients, which always run on the training blocks).
"""

import keras
import numpy as np
import pytest

import keras_attention.ops.attention as attention_module
from keras_attention.ops import _chunked
from keras_attention.ops import scaled_dot_product_attention
from tests import reference
from tests.ops import cases
from tests.testing import loss_and_grads
from tests.testing import to_numpy

CASES = {
    # name: (b, t, s, n, kv, mask kind, soft cap)
    "multiple": (2, 32, 24, 2, 2, None, None),
    "ragged_padding": (3, 29, 37, 2, 2, "padding", None),
    "empty_rows": (2, 19, 26, 2, 2, "empty_rows", None),
    "gqa_soft_cap": (2, 21, 30, 4, 2, "random", 5.0),
}

# Our kernels' `"auto"`, whatever fused kernel the backend has.
pytestmark = pytest.mark.usefixtures("our_kernels")


@pytest.fixture
def blocks(monkeypatch):
    """Small thresholds (more than 512 logits: chunked; at most 8 rows per
    block, at least 2), and the blocks each chunked call gets."""
    monkeypatch.setattr(attention_module, "AUTO_DENSE_MAX_LOGITS", 512)
    monkeypatch.setattr(attention_module, "AUTO_ROWS", 8)
    monkeypatch.setattr(attention_module, "AUTO_MIN_ROWS", 2)
    monkeypatch.setattr(attention_module, "AUTO_CHUNK", 8)
    monkeypatch.setattr(attention_module, "AUTO_KEY_CHUNK", 8)
    seen = []
    original = attention_module._chunked_sdpa

    def record(*args):
        seen.append(args[6])
        return original(*args)

    monkeypatch.setattr(attention_module, "_chunked_sdpa", record)
    return seen


@pytest.fixture
def engines(monkeypatch):
    """`(q_chunk, k_chunk, whole_rows)` of each engine the kernel builds."""
    built = []

    class Recording(_chunked._Engine):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append((self.q_chunk, self.k_chunk, self.whole_rows))

    monkeypatch.setattr(_chunked, "_Engine", Recording)
    return built


@pytest.mark.parametrize("case", sorted(CASES))
def test_whole_rows_match_the_reference_and_the_dense_gradients(
    rng, blocks, engines, case
):
    b, t, s, n, kv, kind, cap = CASES[case]
    q, k, v = cases.qkv(rng, b, t, s, n, kv)
    mask = cases.mask(kind, rng, b, t, s)

    def run(chunk_size):
        return lambda q, k, v: scaled_dot_product_attention(
            q, k, v, mask=mask, logits_soft_cap=cap, chunk_size=chunk_size
        )

    out = to_numpy(run("auto")(q, k, v))
    # Rows per block: 512 logits // (b * n * s), at most 8, spread evenly.
    assert blocks and all(rows <= 8 and keys is None for rows, keys in blocks)
    want, _ = reference.sdpa(q, k, v, mask=mask, soft_cap=cap)
    np.testing.assert_allclose(out, want, atol=1e-5)
    if kind == "empty_rows":
        np.testing.assert_array_equal(out[0, 2], 0.0)
    # A gradient of a call without `training` runs on the training blocks
    # (8 x 8 here), not on whole rows: O(length x chunk) memory. A call
    # that a TensorFlow tape or PyTorch's autograd records takes them in the
    # forward too; under JAX the whole-row forward keeps the log-sum-exp for
    # the backward.
    blocks.clear()
    engines.clear()
    loss, grads = loss_and_grads(run("auto"), q, k, v)
    tape = keras.backend.backend() in ("tensorflow", "torch")
    assert blocks[-1] == ((8, 8) if tape else (blocks[-1][0], None))
    assert engines[-1] == (min(8, t), min(8, s), False)
    dense_loss, dense_grads = loss_and_grads(run(None), q, k, v)
    np.testing.assert_allclose(loss, dense_loss, rtol=1e-5, atol=1e-5)
    for got, expected in zip(grads, dense_grads):
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_only_inference_takes_whole_rows(rng, blocks):
    """Training, causal attention and an explicit `chunk_size` keep the
    online softmax over square blocks; so do rows too long for a block of
    `AUTO_MIN_ROWS` rows."""
    q = rng.normal(size=(1, 20, 2, 4)).astype("float32")
    long_keys = rng.normal(size=(1, 300, 2, 4)).astype("float32")
    calls = {
        "inference": (q, dict()),
        "training": (q, dict(training=True)),
        "training with dropout": (
            q,
            dict(
                training=True,
                dropout_rate=0.2,
                seed=keras.random.SeedGenerator(1),
            ),
        ),
        "causal": (q, dict(is_causal=True)),
        "explicit chunk": (q, dict(chunk_size=4)),
        # 512 logits // (1 * 2 * 300 keys) = 0 rows.
        "long rows": (long_keys, dict()),
    }
    chosen = {}
    for name, (key, kwargs) in calls.items():
        blocks.clear()
        out = scaled_dot_product_attention(q, key, key, **kwargs)
        assert tuple(out.shape) == q.shape
        if name == "inference":
            want, _ = reference.sdpa(q, key, key)
            np.testing.assert_allclose(to_numpy(out), want, atol=1e-5)
        chosen[name] = blocks[0]
    assert chosen == {
        # 512 // (1 * 2 * 20) = 12 rows, at most 8: 3 blocks of 7 rows.
        "inference": (7, None),
        "training": (8, 8),
        "training with dropout": (8, 8),
        "causal": (8, 8),
        "explicit chunk": (4, 4),
        "long rows": (8, 8),
    }


@pytest.mark.parametrize(
    "shape, rows",
    [
        # (batch, q_len, heads, k_len): rows per block, or None (online).
        ((1, 4096, 8, 4096), 256),
        ((1, 8192, 8, 8192), 256),
        ((1, 32768, 8, 32768), 128),
        ((1, 65536, 8, 65536), 64),
        ((1, 131072, 8, 131072), None),
        ((4, 8192, 8, 8192), 128),
        ((1, 600, 8, 16384), 200),  # 3 blocks of 200 rows, not 256 + 88
        ((1, 100, 8, 16384), 100),
    ],
)
def test_whole_row_blocks_for_the_real_thresholds(shape, rows):
    batch, q_len, heads, k_len = shape
    query = keras.KerasTensor((batch, q_len, heads, 64))
    key = keras.KerasTensor((batch, k_len, heads, 64))
    chunks = attention_module._whole_row_chunks(query, key, heads)
    assert chunks == (None if rows is None else (rows, None))


@pytest.mark.tensorflow_only
def test_whole_rows_with_unknown_lengths(rng, blocks, monkeypatch):
    import tensorflow as tf

    # Every call below has more than 512 logits: the run-time choice must
    # be the chunked branch, so the dense one answers NaN.
    monkeypatch.setattr(
        attention_module,
        "_dense_sdpa",
        lambda query, *args, **kwargs: keras.ops.full_like(query, np.nan),
    )
    spec = tf.TensorSpec((None, None, 2, 4), tf.float32)

    @tf.function(input_signature=[spec, spec], autograph=False)
    def run(q, k):
        return scaled_dot_product_attention(q, k, k)

    # The batch unknown, the lengths known (a SavedModel's signature).
    ragged = tf.TensorSpec((None, 20, 2, 4), tf.float32)
    by_batch = tf.function(
        lambda q, k: scaled_dot_product_attention(q, k, k),
        input_signature=[ragged, tf.TensorSpec((None, 10, 2, 4))],
        autograph=False,
    )
    q = rng.normal(size=(3, 20, 2, 4)).astype("float32")
    k = rng.normal(size=(3, 10, 2, 4)).astype("float32")
    want, _ = reference.sdpa(q, k, k)
    np.testing.assert_allclose(by_batch(q, k).numpy(), want, atol=1e-5)

    for b, t, s in ((1, 40, 10), (2, 30, 12), (1, 9, 300)):
        q = rng.normal(size=(b, t, 2, 4)).astype("float32")
        k = rng.normal(size=(b, s, 2, 4)).astype("float32")
        want, _ = reference.sdpa(q, k, k)
        np.testing.assert_allclose(run(q, k).numpy(), want, atol=1e-5)
        # The rows decided at run time are the static rule's (at least 1:
        # 512 // (1 * 2 * 300) is 0, where static shapes go online).
        rows = attention_module._whole_row_chunks(
            tf.constant(q), tf.constant(k), 2
        )
        dynamic = tf.function(
            lambda q, k: attention_module._whole_row_chunks(q, k, 2)[0],
            input_signature=[spec, spec],
        )
        expected = rows[0] if rows else max(1, min(t, 512 // (b * 2 * s)))
        assert int(dynamic(q, k)) == expected
    assert all(keys is None for _, keys in blocks)


@pytest.mark.tensorflow_only
def test_a_call_a_tape_records_takes_the_training_blocks(rng, blocks):
    """A gradient may follow a call that a `tf.GradientTape` records, made
    without `training`: it takes the training blocks, one at a time."""
    import tensorflow as tf

    q = tf.constant(rng.normal(size=(1, 20, 2, 4)).astype("float32"))
    scaled_dot_product_attention(q, q, q)
    with tf.GradientTape():
        scaled_dot_product_attention(q, q, q)
    assert blocks == [(7, None), (8, 8)]


@pytest.mark.tensorflow_only
def test_gradient_of_whole_rows_traced_without_a_tape(rng, blocks, engines):
    """A function traced with no tape recording takes whole rows, without
    a log-sum-exp; differentiated later, it recomputes the log-sum-exp on
    the training blocks and equals the dense gradients."""
    import tensorflow as tf

    q, k, v = cases.qkv(rng, 2, 32, 24, 2, 2)
    run = tf.function(
        lambda q, k, v: scaled_dot_product_attention(q, k, v),
        autograph=False,
    )
    q, k, v = (tf.constant(x) for x in (q, k, v))
    run.get_concrete_function(q, k, v)  # traced here, no tape
    # 512 logits // (2 * 2 * 24) = 5 rows per block.
    assert blocks == [(5, None)] and engines == [(5, 24, True)]
    cotangent = rng.normal(size=run(q, k, v).shape).astype("float32")

    def grads(fn):
        with tf.GradientTape() as tape:
            tape.watch([q, k, v])
            loss = tf.reduce_sum(fn(q, k, v) * cotangent)
        return tape.gradient(loss, [q, k, v])

    got = grads(run)
    assert engines[-1] == (8, 8, False)
    want = grads(
        lambda q, k, v: scaled_dot_product_attention(q, k, v, chunk_size=None)
    )
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w.numpy(), atol=1e-4)
