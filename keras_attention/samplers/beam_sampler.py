import keras
from keras import ops

from keras_attention import _validation
from keras_attention.samplers import _loop
from keras_attention.samplers.sampler import Sampler

# The starting score of every beam but the first: at the first step only
# the first beam (all beams are the same prompt) is extended.
_UNUSED_BEAM = -1e9


@keras.saving.register_keras_serializable(package="keras_attention")
class BeamSampler(Sampler):
    """Beam search, as keras-hub's `BeamSampler`, exportable.

    Each step extends every beam by every token and keeps the `num_beams`
    candidates of highest total log-probability. Ties between equal scores
    are broken by the lower flat index `beam * vocabulary_size + token`
    (the earlier beam, then the lower token id), the same on every backend:
    the beams are kept sorted by score, best first. Caches are batch-first:
    each row is repeated `num_beams` times (`repeat_beams`, as keras-hub's)
    and the beams are reordered by a gather on axis 0 (`reorder_beams`).
    A loop of one's own (e.g. `TokenGenerator`'s) can use those two and
    `select`.

    Args:
        num_beams: positive int.
        return_all_beams: bool. If True, the call returns every beam and
            its log-probability, best first.
        temperature: see `Sampler`.
        logits_processors: see `Sampler` (applied per beam, with the
            beam's own tokens).

    Call arguments:
        See `Sampler`.

    Returns:
        `prompt` filled with the best beam, or with `return_all_beams`,
        `(prompts, log_probs)`: `(batch_size, num_beams, max_length)` and
        float32 `(batch_size, num_beams)`, sorted by decreasing
        `log_probs`.

    Example:

    >>> table = np.log(np.array(
    ...     [[0.1, 0.5, 0.4], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]], "float32"))
    >>> def next(prompt, cache, index):
    ...     return keras.ops.take(table, prompt[:, index - 1], 0), None, cache
    >>> sampler = BeamSampler(num_beams=2, return_all_beams=True)
    >>> prompts, log_probs = sampler(next, np.array([[0, 0, 0]]), index=1)
    >>> keras.ops.convert_to_numpy(prompts).tolist()
    [[[0, 1, 2], [0, 2, 0]]]
    """

    def __init__(self, num_beams=5, return_all_beams=False, **kwargs):
        super().__init__(**kwargs)
        _validation.check_positive_int("num_beams", num_beams)
        _validation.check_bool("return_all_beams", return_all_beams)
        self.num_beams = num_beams
        self.return_all_beams = return_all_beams

    def repeat_beams(self, structure):
        """Every tensor of `structure` with each row (axis 0) repeated
        `num_beams` times: `(batch_size, ...)` -> `(batch_size * num_beams,
        ...)`, row `b * num_beams + j` for beam `j` of row `b`."""
        return keras.tree.map_structure(
            lambda x: ops.repeat(x, self.num_beams, axis=0), structure
        )

    def initial_log_probs(self, batch_size):
        """float32 `(batch_size, num_beams)`: 0 for the first beam and
        -1e9 for the others, so the first step extends one beam only."""
        row = [0.0] + [_UNUSED_BEAM] * (self.num_beams - 1)
        row = ops.convert_to_tensor([row], "float32")
        return ops.broadcast_to(row, (batch_size, self.num_beams))

    def select(self, log_probs, logits, token_ids=None, index=0):
        """One step of the search: the best `num_beams` extensions.

        Args:
            log_probs: float32 `(batch_size, num_beams)`, the beams' scores.
            logits: `(batch_size * num_beams, vocabulary_size)`, the next
                token's logits of each beam (rows as in `repeat_beams`).
            token_ids: optional integer `(batch_size * num_beams, length)`,
                the beams' tokens, for the logits processors.
            index: int or 0-d tensor, the position of the token.

        Returns:
            `(beam_indices, tokens, log_probs)`: int32 `(batch_size,
            num_beams)` (which beam each new beam extends), int32
            `(batch_size, num_beams)` (its new token) and float32
            `(batch_size, num_beams)`, best first.
        """
        logits = self.process_logits(logits, token_ids, index)
        vocabulary_size = ops.shape(logits)[-1]
        scores = ops.log(self.compute_probabilities(logits))
        scores = ops.reshape(scores, (-1, self.num_beams, vocabulary_size))
        scores = scores + ops.cast(log_probs, "float32")[:, :, None]
        scores = ops.reshape(scores, (-1, self.num_beams * vocabulary_size))
        flat, log_probs = _best(scores, self.num_beams)
        return flat // vocabulary_size, flat % vocabulary_size, log_probs

    def reorder_beams(self, structure, beam_indices):
        """Every tensor of `structure` (rows as in `repeat_beams`) with new
        beam `j` of row `b` taken from beam `beam_indices[b, j]`: one gather
        on axis 0."""
        batch_size = ops.shape(beam_indices)[0]
        first = ops.arange(batch_size, dtype="int32")[:, None] * self.num_beams
        rows = ops.reshape(first + ops.cast(beam_indices, "int32"), (-1,))
        return keras.tree.map_structure(
            lambda x: ops.take(x, rows, axis=0), structure
        )

    def _generate(self, next, prompt, cache, index, mask, stops, hidden):
        stop_token_ids = stops
        batch_size, max_length = ops.shape(prompt)[0], ops.shape(prompt)[1]
        has_cache = cache is not None
        cache = self.repeat_beams(cache) if has_cache else ()
        prompt, mask = self.repeat_beams((prompt, mask))
        log_probs = self.initial_log_probs(batch_size)

        def cond(prompt, cache, index, log_probs):
            return _loop.keep_going(
                prompt, mask, index, max_length, stop_token_ids
            )

        def body(prompt, cache, index, log_probs):
            logits, _, cache = next(prompt, cache, index)
            beams, tokens, log_probs = self.select(
                log_probs, logits, prompt, index
            )
            prompt = self.reorder_beams(prompt, beams)
            if has_cache:
                cache = self.reorder_beams(cache, beams)
            tokens = ops.reshape(tokens, (-1,))
            prompt = _loop.write_column(prompt, tokens, index, mask)
            return prompt, cache, index + 1, log_probs

        prompt, _, _, log_probs = ops.while_loop(
            cond, body, (prompt, cache, index, log_probs)
        )
        prompts = ops.reshape(prompt, (-1, self.num_beams, max_length))
        if self.return_all_beams:
            return prompts, log_probs
        return prompts[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "num_beams": self.num_beams,
                "return_all_beams": self.return_all_beams,
            }
        )
        return config


def _best(scores, n):
    """The `n` largest of each row of `scores` `(batch, size)`, largest
    first and the lower index first on ties: `(indices, values)`, int32
    and float32 `(batch, n)`. `n` passes of a max and a min (no `top_k`,
    whose order on ties differs between backends)."""
    size = ops.shape(scores)[-1]
    ids = ops.arange(size, dtype="int32")[None, :]
    taken = ops.zeros_like(scores, dtype="bool")
    indices, values = [], []
    for _ in range(n):
        best = ops.max(
            ops.where(taken, float("-inf"), scores), axis=-1, keepdims=True
        )
        candidate = ops.logical_and(scores == best, ops.logical_not(taken))
        pick = ops.min(ops.where(candidate, ids, size), axis=-1)
        pick = ops.minimum(pick, size - 1)
        taken = ops.logical_or(taken, ids == pick[:, None])
        indices.append(pick)
        values.append(best[:, 0])
    return ops.stack(indices, axis=1), ops.stack(values, axis=1)
