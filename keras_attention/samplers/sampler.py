import contextlib

import keras
from keras import ops

from keras_attention import _validation
from keras_attention.samplers import _draws
from keras_attention.samplers import _loop


@keras.saving.register_keras_serializable(package="keras_attention")
class Sampler:
    """The base sampler: keras-hub's `Sampler` interface, exportable.

    A sampler turns a model's next-token logits into tokens. Called with a
    `next` function, it runs the whole generation loop, as keras-hub's
    samplers do, and plugs into keras-hub's `CausalLM.compile(sampler=...)`.
    Each step: `logits` -> `process_logits` (the `logits_processors`, in
    order) -> `compute_probabilities` (float32 softmax of `logits /
    temperature`) -> `get_next_token` (top-k, then top-p / min-p, then the
    draw). `next_token` runs one such step for a loop of one's own (e.g.
    `TokenGenerator`'s). The loop is a plain `ops.while_loop` that writes
    tokens with `ops.where`, never `slice_update`, so it exports to a
    TensorFlow SavedModel without XLA ops.

    To write a sampler, subclass and override `get_next_token(self,
    probabilities)`, as with keras-hub; a keras-hub subclass works
    unchanged.

    Random draws: the built-in random samplers hold no random state. They
    draw from a counter-based hash, so one seed gives the same tokens
    eagerly, under `tf.function` / `jax.jit`, in a SavedModel and on every
    backend: `RandomSampler` and `TopKSampler` by the Gumbel-max trick on
    the hash of `(seed, position, row, token)` of each candidate (0.2's
    `"sample"` draws); `TopPSampler` and `MinPSampler`, whose candidates
    may be the whole vocabulary, from one uniform per row, the hash of
    `(seed, position, row)`, by inverse transform over the kept tokens
    (top-p: in the order of probability, which PyTorch's `top_k` may
    change between tokens of exactly equal probability; min-p: in token-id
    order).
    `next_token` (and so `__call__`) sets a draw context holding `(seed,
    position)` around each step, with `position` the index of the token
    drawn and `seed` the `seed` argument (default: the sampler's `seed`,
    `None` meaning 0, so a sampler without seed gives the same tokens on
    every call, unlike keras-hub's). The built-in `get_next_token`s read it;
    called outside any step, they use the sampler's seed and position 0.
    User subclasses can ignore it.

    Args:
        temperature: positive float, the softmax temperature (default 1).
        logits_processors: optional list of processors
            (`keras_attention.samplers.RepetitionPenalty`, ...), callables
            `processor(logits, token_ids, index) -> logits`, or their
            serialized configs.

    Call arguments:
        next: a function `next(prompt, cache, index) -> (logits,
            hidden_states, cache)`: `logits` `(batch_size, vocabulary_size)`
            of the token at `index`.
        prompt: integer `(batch_size, max_length)`, the tokens so far.
        cache: optional structure of tensors passed to `next` and back.
        index: int or 0-d tensor, the first position to generate.
        mask: optional bool `(batch_size, max_length)`, True where `prompt`
            holds a prompt token: those are kept, never overwritten.
        stop_token_ids: optional list of ints: the loop stops once every
            row holds one of them at a position where `mask` is False.
        hidden_states: unused here (`ContrastiveSampler` uses it).
        model: unused (keras-hub's interface).

    Returns:
        `prompt` with the positions from `index` on filled.

    Example:

    >>> class Argmax(Sampler):  # a keras-hub style subclass
    ...     def get_next_token(self, probabilities):
    ...         return keras.ops.argmax(probabilities, axis=-1)
    >>> table = np.roll(np.eye(4, dtype="float32"), 1, axis=1)  # t -> t + 1
    >>> def next(prompt, cache, index):
    ...     return keras.ops.take(table, prompt[:, index - 1], 0), None, cache
    >>> tokens = Argmax()(next, np.array([[2, 0, 0, 0]]), index=1)
    >>> keras.ops.convert_to_numpy(tokens).tolist()
    [[2, 3, 0, 1]]
    """

    # `(seed, position)` of the step being drawn, or None: see above.
    _draw_state = None

    def __init__(self, temperature=1.0, logits_processors=None):
        _validation.check_positive_number("temperature", temperature)
        self.temperature = temperature
        self.logits_processors = _get_processors(logits_processors)

    def __repr__(self):
        config = self.get_config()
        arguments = ", ".join(f"{k}={v!r}" for k, v in config.items())
        return f"{type(self).__name__}({arguments})"

    @property
    def variables(self):
        """No variables: the draws need no random state (keras-hub's
        `generate` reads this)."""
        return []

    @contextlib.contextmanager
    def _drawing(self, seed, position):
        """The draw context of one step: `(seed, position)`, read by the
        built-in `get_next_token`s through `_draw_key`."""
        previous = self._draw_state
        self._draw_state = (seed, position)
        try:
            yield
        finally:
            self._draw_state = previous

    def _default_seed(self):
        seed = getattr(self, "seed", None)
        return 0 if seed is None else seed

    def _draw_key(self):
        """`(seed, position)` for a draw now: the context's, else the
        sampler's seed at position 0."""
        if self._draw_state is not None:
            return self._draw_state
        return self._default_seed(), 0

    def __call__(
        self,
        next,
        prompt,
        cache=None,
        index=0,
        mask=None,
        stop_token_ids=None,
        hidden_states=None,
        model=None,
        **kwargs,
    ):
        prompt = ops.convert_to_tensor(prompt)
        index = ops.cast(index, "int32")
        if mask is None:
            mask = ops.zeros_like(prompt, dtype="bool")
        mask = ops.cast(mask, "bool")
        return self._generate(
            next, prompt, cache, index, mask, stop_token_ids, hidden_states
        )

    def _generate(self, next, prompt, cache, index, mask, stops, hidden):
        """`__call__`'s loop, on a tensor `prompt`, an int32 `index` and a
        bool `mask`; `stops` is `stop_token_ids`, `hidden` the hidden
        states. The searches override it."""
        stop_token_ids = stops
        max_length = ops.shape(prompt)[1]
        # `ops.while_loop` takes no `None` among its loop variables.
        cache = () if cache is None else cache

        def cond(prompt, cache, index):
            return _loop.keep_going(
                prompt, mask, index, max_length, stop_token_ids
            )

        def body(prompt, cache, index):
            logits, _, cache = next(prompt, cache, index)
            token = self.next_token(logits, prompt, index)
            prompt = _loop.write_column(prompt, token, index, mask)
            return prompt, cache, index + 1

        prompt, _, _ = ops.while_loop(
            cond, body, (ops.convert_to_tensor(prompt), cache, index)
        )
        return prompt

    def next_token(self, logits, token_ids, index, seed=None, temperature=None):
        """One step: the next token of each row.

        Args:
            logits: float `(batch_size, vocabulary_size)`.
            token_ids: integer `(batch_size, length)`, the sequence so far,
                for the logits processors.
            index: int or 0-d integer tensor, the position of the token
                drawn (the draws' position).
            seed: optional int or 0-d integer tensor (int32 range); default
                the sampler's `seed` (`None`: 0).
            temperature: optional float or 0-d tensor replacing the
                sampler's `temperature` for this step; 0 takes the most
                likely token (after the processors).

        Returns:
            int32 `(batch_size,)`.
        """
        if seed is None:
            seed = self._default_seed()
        with self._drawing(seed, index):
            logits = self.process_logits(logits, token_ids, index)
            if temperature is None:
                return self._draw(logits)
            if isinstance(temperature, (int, float)):
                if temperature == 0:
                    return _draws.argmax(logits)
                return self._draw(logits * (self.temperature / temperature))
            temperature = ops.cast(temperature, "float32")
            scale = self.temperature / ops.maximum(temperature, 1e-6)
            return ops.where(
                temperature > 0.0,
                self._draw(logits * scale),
                _draws.argmax(logits),
            )

    def _draw(self, logits):
        probabilities = self.compute_probabilities(logits)
        return ops.cast(self.get_next_token(probabilities), "int32")

    def process_logits(self, logits, token_ids, index):
        """Applies the `logits_processors`, in order, to float32 `logits`
        `(batch_size, vocabulary_size)`; returns float32 logits."""
        logits = ops.cast(logits, "float32")
        for processor in self.logits_processors or ():
            logits = ops.cast(processor(logits, token_ids, index), "float32")
        return logits

    def compute_probabilities(self, logits):
        """The float32 softmax of `logits / temperature`."""
        logits = ops.cast(logits, "float32")
        return keras.activations.softmax(logits / self.temperature)

    def get_next_token(self, probabilities):
        """The next token of each row, from `probabilities` `(batch_size,
        vocabulary_size)`: integer `(batch_size,)`. Subclasses implement
        it."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement `get_next_token`."
        )

    def get_config(self):
        config = {"temperature": self.temperature}
        if self.logits_processors:
            config["logits_processors"] = [
                keras.saving.serialize_keras_object(processor)
                for processor in self.logits_processors
            ]
        return config

    @classmethod
    def from_config(cls, config):
        return cls(**config)


def _get_processors(processors):
    """A list of callables (deserializing configs), or None."""
    if processors is None:
        return None
    if not isinstance(processors, (list, tuple)):
        raise ValueError(
            "Received an invalid value for argument `logits_processors`, "
            "expected a list of processors or `None`. Received: "
            f"logits_processors={_validation.short_repr(processors)}"
        )
    result = []
    for processor in processors:
        if isinstance(processor, dict):
            processor = keras.saving.deserialize_keras_object(processor)
        if not callable(processor):
            raise ValueError(
                "Received an invalid value for argument `logits_processors`, "
                "expected callables `processor(logits, token_ids, index)`. "
                "Received: logits_processors="
                f"{_validation.short_repr(processors)}"
            )
        result.append(processor)
    return result
