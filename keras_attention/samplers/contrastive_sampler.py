import keras
from keras import ops

from keras_attention import _validation
from keras_attention.samplers import _draws
from keras_attention.samplers import _loop
from keras_attention.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class ContrastiveSampler(Sampler):
    """Contrastive search (Su et al., 2022), as keras-hub's
    `ContrastiveSampler`, exportable.

    Each step runs `next` on the `k` most likely tokens and keeps the one
    of highest `(1 - alpha) * probability - alpha * max_similarity`, where
    `max_similarity` is the largest cosine similarity between the
    candidate's hidden state and those of the tokens before it. Ties go to
    the more likely candidate (the lower id among equal probabilities).
    Needs `hidden_states`, and `next` called at `index + 1` (one past the
    end at the last step), as in keras-hub.

    Args:
        k: positive int, the number of candidates.
        alpha: float in `[0, 1]`, the weight of the similarity.
        temperature, logits_processors: see `Sampler`.

    Call arguments:
        See `Sampler`; `hidden_states`: float `(batch_size, max_length,
        hidden_dim)`, the hidden state of each token so far, required.

    Returns:
        See `Sampler`.

    Example:

    >>> table = np.log(np.array(
    ...     [[0.1, 0.5, 0.4], [0.1, 0.1, 0.8], [0.9, 0.05, 0.05]], "float32"))
    >>> embeddings = np.eye(3, dtype="float32")
    >>> def next(prompt, cache, index):
    ...     token = prompt[:, index - 1]
    ...     logits = keras.ops.take(table, token, 0)
    ...     return logits, keras.ops.take(embeddings, token, 0), cache
    >>> hidden = np.zeros((1, 4, 3), "float32")
    >>> hidden[0, 0] = embeddings[0]
    >>> sampler = ContrastiveSampler(k=2, alpha=0.6)
    >>> tokens = sampler(next, np.zeros((1, 4), "int32"), index=1,
    ...                  hidden_states=hidden)
    >>> keras.ops.convert_to_numpy(tokens).tolist()
    [[0, 1, 2, 0]]
    """

    def __init__(self, k=5, alpha=0.6, **kwargs):
        super().__init__(**kwargs)
        _validation.check_positive_int("k", k)
        _validation.check_fraction("alpha", alpha, include_zero=True)
        self.k = k
        self.alpha = alpha

    def _generate(self, next, prompt, cache, index, mask, stops, hidden):
        stop_token_ids, hidden_states = stops, hidden
        if hidden_states is None:
            raise ValueError(
                "Argument `hidden_states` is required by "
                "`ContrastiveSampler`: the hidden state of each token so "
                "far, `(batch_size, max_length, hidden_dim)`. Received: "
                "hidden_states=None"
            )
        hidden_states = ops.convert_to_tensor(hidden_states)
        max_length = ops.shape(prompt)[1]
        positions = ops.arange(max_length, dtype="int32")[None, :]
        logits, _, cache = next(prompt, cache, index)
        has_cache = cache is not None
        cache = cache if has_cache else ()

        def repeat(x):
            return ops.repeat(x, self.k, axis=0)

        def cond(prompt, cache, index, logits, hidden_states):
            return _loop.keep_going(
                prompt, mask, index, max_length, stop_token_ids
            )

        def body(prompt, cache, index, logits, hidden_states):
            top_probabilities, top_ids = self.candidates(logits, prompt, index)
            candidates = _loop.write_column(
                repeat(prompt),
                ops.reshape(top_ids, (-1,)),
                index,
                repeat(mask),
            )
            candidate_cache = None
            if has_cache:
                candidate_cache = keras.tree.map_structure(repeat, cache)
            next_logits, next_hidden, candidate_cache = next(
                candidates, candidate_cache, index + 1
            )
            rows = self.choose(
                top_probabilities,
                repeat(hidden_states),
                next_hidden,
                positions < index,
            )
            prompt = ops.take(candidates, rows, axis=0)
            logits = ops.take(next_logits, rows, axis=0)
            hidden_states = _loop.write_column(
                hidden_states, ops.take(next_hidden, rows, axis=0), index
            )
            if has_cache:
                cache = keras.tree.map_structure(
                    lambda x: ops.take(x, rows, axis=0), candidate_cache
                )
            return prompt, cache, index + 1, logits, hidden_states

        prompt, _, _, _, _ = ops.while_loop(
            cond, body, (prompt, cache, index, logits, hidden_states)
        )
        return prompt

    def candidates(self, logits, token_ids, index):
        """The `k` most likely next tokens: `(probabilities, token_ids)`,
        float32 and int32 `(batch_size, k)`."""
        logits = self.process_logits(logits, token_ids, index)
        probabilities, ids = ops.top_k(
            self.compute_probabilities(logits), self.k
        )
        return probabilities, ops.cast(ids, "int32")

    def choose(self, probabilities, hidden_states, candidate_hidden, earlier):
        """Which candidate each row keeps.

        Args:
            probabilities: float32 `(batch_size, k)`, from `candidates`.
            hidden_states: `(batch_size * k, length, hidden_dim)`, the
                hidden states so far, each row repeated `k` times.
            candidate_hidden: `(batch_size * k, hidden_dim)`, each
                candidate's hidden state.
            earlier: bool, broadcastable to `(batch_size * k, length)`:
                the positions whose similarity counts.

        Returns:
            int32 `(batch_size,)`, the rows of the kept candidates among
            the `batch_size * k`.
        """
        similarity = self.similarity(hidden_states, candidate_hidden)
        similarity = ops.where(earlier, similarity, -1.0)
        max_similarity = ops.cast(ops.max(similarity, axis=1), "float32")
        scores = (1 - self.alpha) * ops.reshape(
            probabilities, (-1,)
        ) - self.alpha * max_similarity
        best = _draws.argmax(ops.reshape(scores, (-1, self.k)))
        batch_size = ops.shape(best)[0]
        return ops.arange(batch_size, dtype="int32") * self.k + best

    def similarity(self, h1, h2):
        """Cosine similarity of each of `h1` `(batch, length, dim)` with
        `h2` `(batch, dim)`: `(batch, length)`."""
        dot = ops.sum(h1 * h2[:, None, :], axis=-1)
        h1_norm = ops.sqrt(ops.sum(h1 * h1, axis=-1))
        h2_norm = ops.sqrt(ops.sum(h2 * h2, axis=-1))
        return dot / (h1_norm * h2_norm[:, None])

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "alpha": self.alpha})
        return config
