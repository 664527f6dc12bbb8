"""Logits processors: callables `processor(logits, token_ids, index) ->
logits` that every sampler of `keras_attention.samplers` applies, in list
order, before temperature, top-k and top-p / min-p.

`logits` is float32 `(batch_size, vocabulary_size)`, the scores of the
token at position `index`; `token_ids` is integer `(batch_size, length)`,
the sequence so far (a sampler passes its whole `prompt` buffer). The
penalties look at the history `token_ids[:, :index]`: every position
before `index` counts, whatever it holds, so a loop whose buffer holds
padding there (e.g. left padding) should hold an id outside `[0,
vocabulary_size)` in those slots (e.g. -1): such ids are never counted.

The counts are computed in exportable `keras.ops` (comparisons and sums,
`CHUNK` positions at a time in an `ops.while_loop`; no scatter, no
one-hot of the whole history): `(batch, CHUNK, vocab)` at a time, never
`(batch, length, vocab)`.
"""

import keras
from keras import ops

from keras_attention import _validation

# Positions counted per step of the counting loop.
CHUNK = 8


def token_counts(token_ids, index, vocabulary_size):
    """How often each token occurs in `token_ids[:, :index]`.

    Args:
        token_ids: integer `(batch_size, length)`.
        index: int or 0-d integer tensor; positions `< index` count.
        vocabulary_size: int or 0-d tensor.

    Returns:
        float32 `(batch_size, vocabulary_size)`.

    Example:

    >>> counts = token_counts(np.array([[1, 1, 3, 1]]), 3, 4)
    >>> keras.ops.convert_to_numpy(counts).tolist()
    [[0.0, 2.0, 0.0, 1.0]]
    """
    token_ids = ops.cast(token_ids, "int32")
    batch, length = ops.shape(token_ids)[0], ops.shape(token_ids)[1]
    index = ops.minimum(ops.cast(index, "int32"), length)
    vocabulary = ops.arange(vocabulary_size, dtype="int32")
    offsets = ops.arange(CHUNK, dtype="int32")

    def cond(start, counts):
        return start < index

    def body(start, counts):
        positions = start + offsets
        chunk = ops.take(token_ids, ops.minimum(positions, length - 1), axis=1)
        chunk = ops.where(positions[None, :] < index, chunk, -1)
        hits = ops.equal(chunk[:, :, None], vocabulary[None, None, :])
        counts = counts + ops.sum(ops.cast(hits, "float32"), axis=1)
        return start + CHUNK, counts

    counts = ops.zeros((batch, vocabulary_size), "float32")
    start = ops.convert_to_tensor(0, "int32")
    _, counts = ops.while_loop(cond, body, (start, counts))
    return counts


class _Processor:
    """Serialization shared by the processors: `get_config` holds the
    constructor's arguments."""

    def get_config(self):
        raise NotImplementedError

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        config = self.get_config()
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"


@keras.saving.register_keras_serializable(package="keras_attention")
class RepetitionPenalty(_Processor):
    """CTRL's repetition penalty (Keskar et al., 2019): the logit of every
    token already in the history is divided by `penalty` when positive and
    multiplied by it when negative, so `penalty > 1` makes repeats less
    likely.

    Args:
        penalty: positive float.

    Call arguments:
        logits: float32 `(batch_size, vocabulary_size)`.
        token_ids: integer `(batch_size, length)`, the history.
        index: int or 0-d tensor: positions `< index` are the history.

    Returns:
        float32 `(batch_size, vocabulary_size)`.

    Example:

    >>> penalty = RepetitionPenalty(2.0)
    >>> logits = np.array([[1.0, -1.0, 1.0]], "float32")
    >>> out = penalty(logits, np.array([[0, 1, 2]]), index=2)
    >>> keras.ops.convert_to_numpy(out).tolist()
    [[0.5, -2.0, 1.0]]

    Reference:
        [Keskar et al., 2019](https://arxiv.org/abs/1909.05858)
    """

    def __init__(self, penalty):
        _validation.check_positive_number("penalty", penalty)
        self.penalty = penalty

    def __call__(self, logits, token_ids, index):
        logits = ops.cast(logits, "float32")
        seen = token_counts(token_ids, index, ops.shape(logits)[-1]) > 0
        positive = logits > 0
        # The selects pick finite factors, not logits: tf2onnx exports a
        # float select as `c * x + (1 - c) * y`, NaN where x or y is
        # infinite (a banned token's -inf). Dividing and multiplying by
        # 1.0 are exact, so the values equal a select of the logits'.
        divisor = ops.where(ops.logical_and(seen, positive), self.penalty, 1.0)
        factor = ops.where(
            ops.logical_and(seen, ops.logical_not(positive)), self.penalty, 1.0
        )
        return logits / divisor * factor

    def get_config(self):
        return {"penalty": self.penalty}


class _Penalty(_Processor):
    """A processor with one finite `penalty`."""

    def __init__(self, penalty):
        _check_finite("penalty", penalty)
        self.penalty = penalty

    def get_config(self):
        return {"penalty": self.penalty}


@keras.saving.register_keras_serializable(package="keras_attention")
class PresencePenalty(_Penalty):
    """Subtracts `penalty` from the logit of every token already in the
    history (once, however often it occurs).

    Args:
        penalty: float; negative values favour repeats.

    Call arguments:
        logits, token_ids, index: as `RepetitionPenalty`.

    Returns:
        float32 `(batch_size, vocabulary_size)`.

    Example:

    >>> penalty = PresencePenalty(0.5)
    >>> logits = np.zeros((1, 3), "float32")
    >>> out = penalty(logits, np.array([[1, 1, 2]]), index=2)
    >>> keras.ops.convert_to_numpy(out).tolist()
    [[0.0, -0.5, 0.0]]
    """

    def __call__(self, logits, token_ids, index):
        logits = ops.cast(logits, "float32")
        seen = token_counts(token_ids, index, ops.shape(logits)[-1]) > 0
        return logits - self.penalty * ops.cast(seen, "float32")


@keras.saving.register_keras_serializable(package="keras_attention")
class FrequencyPenalty(_Penalty):
    """Subtracts `penalty` times the number of occurrences in the history
    from each token's logit.

    Args, call arguments and returns: as `PresencePenalty`.

    Example:

    >>> frequency = FrequencyPenalty(0.5)  # token 1 twice before index 2
    >>> out = frequency(np.zeros((1, 3), "float32"), [[1, 1, 2]], index=2)
    >>> keras.ops.convert_to_numpy(out).tolist()
    [[0.0, -1.0, 0.0]]
    """

    def __call__(self, logits, token_ids, index):
        logits = ops.cast(logits, "float32")
        counts = token_counts(token_ids, index, ops.shape(logits)[-1])
        return logits - self.penalty * counts


@keras.saving.register_keras_serializable(package="keras_attention")
class BanTokens(_Processor):
    """Sets the logits of the listed tokens to `-inf`: they are never
    sampled. Banning every token leaves no distribution (NaN).

    Args:
        token_ids: list of non-negative ints.

    Call arguments:
        logits: float32 `(batch_size, vocabulary_size)`.
        token_ids: unused (the history).
        index: unused.

    Returns:
        float32 `(batch_size, vocabulary_size)`.

    Example:

    >>> ban = BanTokens([0, 2])
    >>> out = ban(np.ones((1, 3), "float32"), None, 0)
    >>> keras.ops.convert_to_numpy(out).tolist()
    [[-inf, 1.0, -inf]]
    """

    def __init__(self, token_ids):
        if not isinstance(token_ids, (list, tuple)) or not all(
            isinstance(t, int) and not isinstance(t, bool) and t >= 0
            for t in token_ids
        ):
            raise ValueError(
                "Received an invalid value for argument `token_ids`, "
                "expected a list of non-negative integers. Received: "
                f"token_ids={_validation.short_repr(token_ids)}"
            )
        self.token_ids = [int(t) for t in token_ids]

    def __call__(self, logits, token_ids, index):
        logits = ops.cast(logits, "float32")
        vocabulary = ops.arange(ops.shape(logits)[-1], dtype="int32")
        banned = ops.zeros_like(vocabulary, dtype="bool")
        for token in self.token_ids:
            banned = ops.logical_or(banned, vocabulary == token)
        return ops.where(banned[None, :], float("-inf"), logits)

    def get_config(self):
        return {"token_ids": list(self.token_ids)}


def _check_finite(name, value):
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or value != value
        or value in (float("inf"), float("-inf"))
    ):
        raise ValueError(
            f"Received an invalid value for argument `{name}`, expected a "
            f"finite float. Received: {name}={_validation.short_repr(value)}"
        )
