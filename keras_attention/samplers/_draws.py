"""Counter-based random draws in `keras.ops`, shared by the samplers and
`TokenGenerator`: the same values on every backend, eager or traced, in a
SavedModel and in ONNX and LiteRT exports (no stateful RNG, no XLA-only
op)."""

from keras import ops

from keras_attention.ops._hash import GOLDEN
from keras_attention.ops._hash import hash32
from keras_attention.ops._hash import logical_right_shift


def uniform(seed, position, shape, columns=None):
    """Uniform floats in (0, 1), a pure function of `(seed, position)` and
    the element's index `(row, token)`.

    Args:
        seed: int or 0-d integer tensor (int32 range).
        position: int or 0-d integer tensor, e.g. the generated position.
        shape: `(batch, vocab)`, ints or 0-d tensors.
        columns: optional int32 `(batch, n)`: only these tokens' values,
            `(batch, n)` (the same values as those columns of the whole).

    Returns:
        float32 `(batch, vocab)`, or `(batch, n)` with `columns`.
    """
    batch, vocab = shape
    rows = ops.arange(batch, dtype="int32")[:, None]
    if columns is None:
        columns = ops.arange(vocab, dtype="int32")[None, :]
    x = hash32(
        ops.cast(seed, "int32") * GOLDEN + ops.cast(position, "int32"),
        exportable=True,
    )
    x = hash32(x + rows * vocab + ops.cast(columns, "int32"), exportable=True)
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
        u = uniform(seed, position, (batch, vocab_size), token_ids)
    return argmax(ops.log(probabilities) - ops.log(-ops.log(u)))


def inverse_cdf(probabilities, seed, position):
    """One categorical draw per row from a single uniform: the first token
    whose cumulative probability, in token-id order, reaches `u` times the
    row's total. `u` is the `uniform` of `(seed, position, row)` (column
    0), so a draw hashes one number per row, not one per token. Tokens of
    probability 0 are never drawn.

    Args:
        probabilities: float32 `(batch, vocab)`, not necessarily
            normalised, in token-id order.
        seed: see `uniform`.
        position: see `uniform`.

    Returns:
        int32 `(batch,)`, the token drawn.
    """
    batch, vocab = ops.shape(probabilities)[0], ops.shape(probabilities)[1]
    u = uniform(seed, position, (batch, 1))
    cumulative = ops.cumsum(probabilities, axis=-1)
    below = ops.cast(cumulative < u * cumulative[:, -1:], "int32")
    return ops.minimum(ops.sum(below, axis=-1), vocab - 1)
