"""Counter-based random draws in `keras.ops`, shared by the samplers and
`TokenGenerator`: the same values on every backend, eager or traced, in a
SavedModel and in ONNX and LiteRT exports (no stateful RNG, no XLA-only
op)."""

from keras import ops

from keras_attention.ops._hash import GOLDEN
from keras_attention.ops._hash import hash32
from keras_attention.ops._hash import logical_right_shift


def uniform(seed, position, shape):
    """Uniform floats in (0, 1), a pure function of `(seed, position)` and
    the element's index `(row, token)`.

    Args:
        seed: int or 0-d integer tensor (int32 range).
        position: int or 0-d integer tensor, e.g. the generated position.
        shape: `(batch, vocab)`, ints or 0-d tensors.

    Returns:
        float32 `(batch, vocab)`.
    """
    batch, vocab = shape
    rows = ops.arange(batch, dtype="int32")[:, None]
    cols = ops.arange(vocab, dtype="int32")[None, :]
    x = hash32(
        ops.cast(seed, "int32") * GOLDEN + ops.cast(position, "int32"),
        exportable=True,
    )
    x = hash32(x + rows * vocab + cols, exportable=True)
    # 23 bits: `bits + 0.5` is exact in float32, so u < 1 (24 bits would
    # round 2**24 - 0.5 up to 2**24, u = 1 and an infinite Gumbel draw).
    bits = ops.cast(logical_right_shift(x, 9), "float32")
    return (bits + 0.5) / float(2**23)


def argmax(x):
    """`argmax(x, axis=-1)` of float `x` `(batch, n)` as int32, the first
    index on ties, from a max and a min. Keras' TensorFlow `argmax` of
    floats tests the sign bit (`Bitcast`, `BitwiseAnd`), which neither ONNX
    nor LiteRT's builtin ops take. A row with NaN (no element equals its
    max) picks the last index, never one out of range."""
    n = ops.shape(x)[-1]
    indices = ops.arange(n, dtype="int32")
    is_max = x == ops.max(x, axis=-1, keepdims=True)
    first = ops.min(ops.where(is_max, indices[None, :], n), axis=-1)
    return ops.minimum(first, n - 1)


def gumbel_max(probabilities, seed, position, token_ids=None, vocab_size=None):
    """One categorical draw per row by the Gumbel-max trick:
    `argmax(log(p) + g)` with `g = -log(-log(u))` and `u` the `uniform` of
    each candidate's `(seed, position, row, token)`. Tokens of probability
    0 are never drawn (`log(0) = -inf`).

    Args:
        probabilities: float32 `(batch, n)`, not necessarily normalised.
        seed: see `uniform`.
        position: see `uniform`.
        token_ids: optional int32 `(batch, n)`, the token id of each column
            (e.g. from `ops.top_k`), so that a token's uniform does not
            depend on which other tokens are candidates. Default: the
            column is the token id.
        vocab_size: with `token_ids`, the number of tokens.

    Returns:
        int32 `(batch,)`, the column drawn (not the token id).
    """
    batch = ops.shape(probabilities)[0]
    if token_ids is None:
        u = uniform(seed, position, (batch, ops.shape(probabilities)[1]))
    else:
        u = uniform(seed, position, (batch, vocab_size))
        u = ops.take_along_axis(u, ops.cast(token_ids, "int32"), axis=-1)
    return argmax(ops.log(probabilities) - ops.log(-ops.log(u)))
