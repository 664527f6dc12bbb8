"""`TokenGenerator`'s decoding loop: the two model protocols, stop
sequences and beam search, in `keras.ops` only.

Both protocols decode into one token buffer `(batch, max_length)`: the
position being generated is `index`, `prompt` is True where the prompt
holds a token (those are never overwritten), and `done` marks the rows
that have stopped (they write `padding_token_id` from then on).
"""

import keras
from keras import ops

from keras_attention import _sharding
from keras_attention import _validation

OURS = "keras_attention"
KERAS_HUB = "keras_hub"


def protocol_of(model):
    """Which protocol `model` speaks: ours (`init_cache`, and
    `call_with_cache` with a padding mask) wins over keras-hub's
    (`_build_cache`, and `call_with_cache` without one)."""
    has = {
        name: callable(getattr(model, name, None))
        for name in ("init_cache", "_build_cache", "call_with_cache")
    }
    if has["call_with_cache"] and has["init_cache"]:
        return OURS
    if has["call_with_cache"] and has["_build_cache"]:
        return KERAS_HUB
    missing = [name for name, present in has.items() if not present]
    raise ValueError(
        "Argument `model` must have `init_cache` and `call_with_cache` "
        "(keras_attention's protocol) or `_build_cache` and "
        "`call_with_cache` (keras-hub's causal LMs). Received: "
        f"model={_validation.short_repr(model)} without "
        + ", ".join(f"`{name}`" for name in missing)
    )


def stop_sequences(stop_token_ids):
    """`stop_token_ids` as a tuple of tuples of ints: an int is a
    one-token sequence."""
    if stop_token_ids is None:
        return ()
    if isinstance(stop_token_ids, int) or not is_sequence(stop_token_ids):
        raise ValueError(
            "Argument `stop_token_ids` must be a list of token ids or of "
            "sequences of token ids (a multi-token stop). Received: "
            f"stop_token_ids={_validation.short_repr(stop_token_ids)}"
        )
    sequences = []
    for entry in stop_token_ids:
        sequence = tuple(entry) if is_sequence(entry) else (entry,)
        if not sequence:
            raise ValueError(
                "Argument `stop_token_ids` must not hold an empty sequence. "
                f"Received: stop_token_ids={stop_token_ids!r}"
            )
        for token in sequence:
            _validation.check_index("stop_token_ids", token)
        sequences.append(tuple(int(t) for t in sequence))
    return tuple(sequences)


def is_sequence(value):
    """A list, tuple or array: not an int or a string."""
    return isinstance(value, (list, tuple)) or (
        hasattr(value, "__len__") and not isinstance(value, (str, bytes))
    )


def stopped(tokens, index, sequences):
    """Rows whose tokens up to `index` end with one of `sequences`."""
    hit = ops.zeros(ops.shape(tokens)[:1], "bool")
    for sequence in sequences:
        length = len(sequence)
        positions = index - length + 1 + ops.arange(length, dtype="int32")
        window = ops.take(tokens, ops.maximum(positions, 0), axis=1)
        match = ops.all(
            window == ops.convert_to_tensor(sequence, "int32")[None], axis=1
        )
        hit = ops.logical_or(hit, ops.logical_and(match, positions[0] >= 0))
    return hit


class Decoder:
    """One generation: the model's steps under either protocol, and the
    loop that writes tokens, stops rows and, for beams, reorders them."""

    def __init__(self, model, protocol, max_length, padding_token_id):
        self.model = model
        self.protocol = protocol
        self.max_length = max_length
        self.padding_token_id = padding_token_id

    def start(self, prompt_ids, copies=1):
        """The buffers, the cache and the logits of the first position
        to generate: `(tokens, prompt, index, logits, cache, padding,
        hidden_states)`, each row repeated `copies` times (beams).
        `hidden_states` `(batch, max_length, dim)` holds the prompt's
        (None if the model returns none)."""
        prompt_length = ops.shape(prompt_ids)[1]
        prompt_mask = ops.not_equal(prompt_ids, self.padding_token_id)
        if copies > 1:
            prompt_ids = ops.repeat(prompt_ids, copies, axis=0)
            prompt_mask = ops.repeat(prompt_mask, copies, axis=0)
        rows = ops.shape(prompt_ids)[0]
        slots = ops.arange(self.max_length, dtype="int32")
        last = ops.minimum(slots, prompt_length - 1)
        in_prompt = slots[None, :] < prompt_length
        tokens = ops.where(
            in_prompt, ops.take(prompt_ids, last, axis=1), self.padding_token_id
        )
        if self.protocol == OURS:
            # Left-padded: every row generates from `prompt_length` on; the
            # padded slots stay out of every key set.
            padding = ops.logical_or(
                ops.take(prompt_mask, last, axis=1), ~in_prompt
            )
            cache = _sharding.place(
                self.model.init_cache(rows, self.max_length)
            )
            logits, hidden, cache = self._unpack(
                self.model.call_with_cache(prompt_ids, cache, 0, padding)
            )
            if hidden is not None:  # the prompt's, in a buffer
                hidden = ops.where(
                    in_prompt[..., None], ops.take(hidden, last, axis=1), 0.0
                )
            prompt = ops.broadcast_to(in_prompt, (rows, self.max_length))
            index = ops.convert_to_tensor(prompt_length, "int32")
            return tokens, prompt, index, logits, cache, padding, hidden
        # keras-hub's convention: right-padded, the cache seeded over the
        # whole buffer; the rows advance together from the shortest prompt,
        # and the longer ones keep their prompt tokens meanwhile.
        prompt = ops.logical_and(ops.take(prompt_mask, last, axis=1), in_prompt)
        hidden, cache = self.model._build_cache(tokens)
        index = ops.maximum(
            ops.min(ops.sum(ops.cast(prompt, "int32"), axis=1)), 1
        )
        logits, _, cache = self.step(tokens, cache, index, None)
        return tokens, prompt, index, logits, cache, None, hidden

    def _unpack(self, outputs):
        """`(logits, cache)` or `(logits, hidden_states, cache)` -> the
        last position's float32 logits, the hidden states (or None) and
        the cache. Under our protocol the padding token is never
        generated."""
        logits, cache = ops.cast(outputs[0][:, -1], "float32"), outputs[-1]
        hidden = outputs[1] if len(outputs) == 3 else None
        if self.protocol == OURS:
            vocabulary = ops.arange(ops.shape(logits)[-1], dtype="int32")
            banned = vocabulary[None] == self.padding_token_id
            logits = ops.where(banned, float("-inf"), logits)
        return logits, hidden, cache

    def step(self, tokens, cache, index, padding):
        """The logits of position `index` from the token before it, that
        token's hidden state `(batch, dim)` (or None) and the cache."""
        previous = ops.take(tokens, index - 1, axis=1)[:, None]
        if self.protocol == OURS:
            outputs = self.model.call_with_cache(
                previous, cache, index - 1, padding
            )
        else:
            outputs = self.model.call_with_cache(previous, cache, index - 1)
        logits, hidden, cache = self._unpack(outputs)
        return logits, None if hidden is None else hidden[:, -1], cache

    def write(self, tokens, prompt, done, token, index, sequences):
        """Writes `token` at `index` (prompt tokens and stopped rows keep
        theirs or padding) and returns `(tokens, done)`."""
        columns = ops.arange(self.max_length, dtype="int32")[None, :]
        at_prompt = ops.take(prompt, index, axis=1)
        token = ops.where(done, self.padding_token_id, token)
        token = ops.where(at_prompt, ops.take(tokens, index, axis=1), token)
        tokens = ops.where(columns == index, token[:, None], tokens)
        ended = ops.logical_and(stopped(tokens, index, sequences), ~at_prompt)
        return tokens, ops.logical_or(done, ended)

    def run(self, prompt_ids, choose, sequences):
        """Greedy or sampled decoding: `choose(logits, tokens, index)`
        returns each row's token. Returns the token buffer."""
        tokens, prompt, index, logits, cache, padding, _ = self.start(
            prompt_ids
        )
        done = ops.zeros(ops.shape(tokens)[:1], "bool")
        tokens, done = self.write(
            tokens,
            prompt,
            done,
            choose(logits, tokens, index),
            index,
            sequences,
        )

        def cond(index, tokens, cache, done):
            return ops.logical_and(
                index < self.max_length - 1, ops.logical_not(ops.all(done))
            )

        def body(index, tokens, cache, done):
            index = index + 1
            logits, _, cache = self.step(tokens, cache, index, padding)
            token = choose(logits, tokens, index)
            tokens, done = self.write(
                tokens, prompt, done, token, index, sequences
            )
            return index, tokens, cache, done

        _, tokens, _, _ = ops.while_loop(
            cond,
            body,
            (index, tokens, cache, done),
            maximum_iterations=self.max_length,
        )
        return tokens

    def run_beams(self, prompt_ids, sampler, sequences):
        """Beam search with `sampler` (a `BeamSampler`): each row holds
        `num_beams` beams, reordered with their caches at every step.
        Returns `(tokens (batch, num_beams, max_length), log_probs (batch,
        num_beams))`, best beam first."""
        beams = sampler.num_beams
        tokens, prompt, index, logits, cache, padding, _ = self.start(
            prompt_ids, beams
        )
        log_probs = sampler.initial_log_probs(ops.shape(prompt_ids)[0])
        done = ops.zeros(ops.shape(tokens)[:1], "bool")

        def advance(index, tokens, cache, done, log_probs, logits):
            # A stopped beam keeps its score: it extends by padding only.
            vocabulary = ops.arange(ops.shape(logits)[-1], dtype="int32")
            only_padding = ops.where(
                vocabulary == self.padding_token_id, 0.0, float("-inf")
            )
            logits = ops.where(done[:, None], only_padding[None], logits)
            source, token, log_probs = sampler.select(
                log_probs, logits, tokens, index
            )
            tokens, cache, done = sampler.reorder_beams(
                (tokens, cache, done), source
            )
            tokens, done = self.write(
                tokens,
                prompt,
                done,
                ops.reshape(token, (-1,)),
                index,
                sequences,
            )
            return tokens, cache, done, log_probs

        tokens, cache, done, log_probs = advance(
            index, tokens, cache, done, log_probs, logits
        )

        def cond(index, tokens, cache, done, log_probs):
            return ops.logical_and(
                index < self.max_length - 1, ops.logical_not(ops.all(done))
            )

        def body(index, tokens, cache, done, log_probs):
            index = index + 1
            logits, _, cache = self.step(tokens, cache, index, padding)
            tokens, cache, done, log_probs = advance(
                index, tokens, cache, done, log_probs, logits
            )
            return index, tokens, cache, done, log_probs

        _, tokens, _, _, log_probs = ops.while_loop(
            cond,
            body,
            (index, tokens, cache, done, log_probs),
            maximum_iterations=self.max_length,
        )
        return ops.reshape(tokens, (-1, beams, self.max_length)), log_probs

    def run_contrastive(self, prompt_ids, sampler, sequences):
        """Contrastive search with `sampler` (a `ContrastiveSampler`): at
        each position the model runs on the `k` likeliest tokens, and each
        row keeps the candidate the sampler chooses from their hidden
        states. Returns the token buffer."""
        k = sampler.k
        tokens, prompt, index, logits, cache, padding, hidden = self.start(
            prompt_ids
        )
        if hidden is None:
            raise ValueError(
                "Argument `sampler`: `ContrastiveSampler` needs the model's "
                "hidden states: `call_with_cache` must return `(logits, "
                "hidden_states, cache)`. Received: a model returning "
                "`(logits, cache)`"
            )
        positions = ops.arange(self.max_length, dtype="int32")[None]
        real = ops.ones_like(prompt) if padding is None else padding
        done = ops.zeros(ops.shape(tokens)[:1], "bool")

        def repeat(x):
            return keras.tree.map_structure(
                lambda t: ops.repeat(t, k, axis=0), x
            )

        def cond(index, tokens, cache, done, logits, hidden):
            return ops.logical_and(
                index < self.max_length, ops.logical_not(ops.all(done))
            )

        def body(index, tokens, cache, done, logits, hidden):
            probabilities, ids = sampler.candidates(logits, tokens, index)
            candidates, candidates_done = self.write(
                repeat(tokens),
                repeat(prompt),
                repeat(done),
                ops.reshape(ids, (-1,)),
                index,
                sequences,
            )
            next_logits, next_hidden, next_cache = self.step(
                candidates,
                repeat(cache),
                index + 1,
                None if padding is None else repeat(padding),
            )
            earlier = ops.logical_and(positions < index, repeat(real))
            rows = sampler.choose(
                probabilities, repeat(hidden), next_hidden, earlier
            )
            tokens, done, logits, cache, kept = keras.tree.map_structure(
                lambda t: ops.take(t, rows, axis=0),
                (
                    candidates,
                    candidates_done,
                    next_logits,
                    next_cache,
                    next_hidden,
                ),
            )
            hidden = ops.where(
                (positions == index)[..., None], kept[:, None], hidden
            )
            return index + 1, tokens, cache, done, logits, hidden

        _, tokens, _, _, _, _ = ops.while_loop(
            cond,
            body,
            (index, tokens, cache, done, logits, hidden),
            maximum_iterations=self.max_length,
        )
        return tokens
