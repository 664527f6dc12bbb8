import keras
from keras import ops

from keras_attention.samplers import _draws
from keras_attention.samplers._truncating import TruncatingSampler


@keras.saving.register_keras_serializable(package="keras_attention")
class TopPSampler(TruncatingSampler):
    """Nucleus (top-p) sampling with keras-hub's `TopPSampler` rule, and
    reproducible draws (see `Sampler`).

    The tokens are sorted by probability (the lower id first on ties) and
    token `i` of that order is kept when the tokens before it have a total
    probability of at most `p` (the first token is always kept): the
    smallest prefix whose probability exceeds `p`, or every token. With
    `k`, only the `k` most likely tokens are candidates (their
    probabilities are not renormalised before the cumulative sum). The
    draw is an inverse transform over the kept tokens in that order.

    Args:
        p: float in `(0, 1]`.
        k: optional positive int, a top-k cut before top-p.
        seed: optional int in `[0, 2**31 - 1]`; `None` means 0.
        temperature, logits_processors: see `Sampler`.

    Call arguments and returns: see `Sampler`.

    Example:

    >>> sampler = TopPSampler(p=0.5, seed=3)
    >>> probabilities = np.array([[0.1, 0.45, 0.4, 0.05]], "float32")
    >>> logits = np.log(probabilities)
    >>> token = sampler.next_token(logits, np.zeros((1, 1), "int32"), 0)
    >>> int(keras.ops.convert_to_numpy(token)[0]) in (1, 2)
    True
    """

    def get_next_token(self, probabilities):
        vocabulary_size = ops.shape(probabilities)[-1]
        cutoff = vocabulary_size
        if self.k is not None:
            cutoff = self.k
            if isinstance(vocabulary_size, int):
                cutoff = min(cutoff, vocabulary_size)
        sorted_probabilities, sorted_ids = ops.top_k(probabilities, cutoff)
        cumulative = ops.cumsum(sorted_probabilities, axis=-1)
        before = ops.concatenate(
            [ops.zeros_like(cumulative[:, :1]), cumulative[:, :-1]], axis=-1
        )
        kept = before <= self.p
        # Inverse transform over the kept prefix, in the sorted order: one
        # uniform per row, and the one cumulative sum.
        total = ops.max(
            ops.where(kept, cumulative, 0.0), axis=-1, keepdims=True
        )
        seed, position = self._draw_key()
        u = _draws.uniform(seed, position, (ops.shape(probabilities)[0], 1))
        below = ops.logical_and(kept, cumulative < u * total)
        column = ops.sum(ops.cast(below, "int32"), axis=-1, keepdims=True)
        return ops.take_along_axis(sorted_ids, column, axis=-1)[:, 0]
