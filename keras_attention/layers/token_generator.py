import keras
from keras import ops

from keras_attention import _sharding
from keras_attention import _validation
from keras_attention.layers import _common
from keras_attention.samplers import _draws


@keras.saving.register_keras_serializable(package="keras_attention")
class TokenGenerator(_common.ValidatedLayer):
    """Autoregressive generation with a key/value cache, in one graph.

    Wraps a decoder-only language model built from this package's cached
    layers and continues each prompt up to `max_length` tokens, prompt
    included, as keras-hub's `generate(inputs, max_length)`: one
    prefill call writes the prompt into a fixed-size cache, then an
    `ops.while_loop` feeds back one token at a time. Everything is
    `keras.ops`, so the layer runs eagerly, under `jit`/`tf.function`, and
    inside a SavedModel signature with no Python of ours (the cache is
    written by scatters, never by XLA-only ops). Under TensorFlow, a model
    built on it also exports with Keras' `model.export` to ONNX and to
    LiteRT with builtin ops only (no Flex delegate), with the same tokens;
    Keras' exporters give every input a batch axis, so a scalar `seed`
    input needs an explicit `input_signature`.

    The model: any layer or model with two methods,
    `init_cache(batch_size, max_length)`, returning its caches (any nested
    structure of tensors, e.g. one `TransformerDecoder` cache per block),
    and `call_with_cache(token_ids, cache, cache_update_index,
    padding_mask)`, returning `(logits, cache)`: `token_ids` `(batch,
    length)` written at cache positions `cache_update_index, ...`,
    `padding_mask` `(batch, max_length)` True for the cache slots that
    hold real tokens (pass it to the blocks as `decoder_padding_mask`),
    `logits` `(batch, length, vocabulary_size)`.

    Ragged prompts are **left-padded** with `padding_token_id`: each row's
    prompt ends at the last column, so every row writes its next token to
    the same cache slot. The padded slots are masked out of every key set,
    so each row's greedy continuation equals that prompt generated alone,
    up to float rounding: with rotary position embeddings (relative),
    positions need no shift (sampled draws are keyed by the padded
    position, so they differ from the prompt's draws alone). A model with
    absolute position embeddings should take positions
    `cumsum(padding_mask) - 1` inside `call_with_cache`. Every
    row needs at least one prompt token; `padding_token_id` is never
    generated as a real token.

    Decoding: `"greedy"` takes the most likely token; `"sample"` draws from
    `softmax(logits / temperature)`, restricted to the `top_k` most likely
    tokens when `top_k` is set, by the Gumbel-max trick on a counter-based
    hash of `(seed, position, row, token)`: the same `seed` gives the same
    tokens eagerly, compiled, in a SavedModel and on any backend. After
    `end_token_id`, a row emits `padding_token_id`; the loop stops early
    when every row has ended.

    Args:
        model: the language model, see above.
        max_length: int, the length of prompt plus continuation: the
            cache's length. It must exceed the prompts' length.
        strategy: `"greedy"` or `"sample"`.
        temperature: positive float, for `"sample"`.
        top_k: optional positive int, for `"sample"`.
        end_token_id: optional int, the token that ends a row.
        padding_token_id: int, the prompts' left padding (default 0).
        **kwargs: base layer arguments, e.g. `name`.

    Call arguments:
        prompt_ids: integer `(batch_size, prompt_length)`, left-padded.
        seed: optional int or 0-d integer tensor, the sampling seed
            (default 0).
        temperature: optional float or 0-d tensor overriding the
            constructor's for `"sample"`; 0 means greedy, so one exported
            graph can serve both.

    Returns:
        int32 `(batch_size, max_length - prompt_length)`, the generated
        tokens.

    Example (the interface in its simplest form, a bigram model; the full
    story is `examples/text_generation.py`):

    >>> class Bigram(keras.layers.Layer):
    ...     def __init__(self):
    ...         super().__init__()
    ...         self.table = keras.layers.Embedding(5, 5)
    ...     def init_cache(self, batch_size, max_length):
    ...         return ()
    ...     def call_with_cache(self, token_ids, cache, index, padding_mask):
    ...         return self.table(token_ids), cache
    >>> generator = TokenGenerator(Bigram(), max_length=6)
    >>> tuple(generator(np.array([[0, 3], [2, 1]])).shape)
    (2, 4)
    """

    def __init__(
        self,
        model,
        max_length,
        strategy="greedy",
        temperature=1.0,
        top_k=None,
        end_token_id=None,
        padding_token_id=0,
        **kwargs,
    ):
        _validation.check_positive_int(
            "max_length", max_length, max_value=_validation.MAX_WEIGHT_ELEMENTS
        )
        if strategy not in ("greedy", "sample"):
            raise ValueError(
                "Received an invalid value for argument `strategy`, expected "
                '"greedy" or "sample". Received: '
                f"strategy={_validation.short_repr(strategy)}"
            )
        _validation.check_positive_number("temperature", temperature)
        _validation.check_positive_int("top_k", top_k, allow_none=True)
        for name, value in (
            ("end_token_id", end_token_id),
            ("padding_token_id", padding_token_id),
        ):
            if value is not None:
                _validation.check_index(name, value)
        for method in ("init_cache", "call_with_cache"):
            if not callable(getattr(model, method, None)):
                raise ValueError(
                    "Argument `model` must have the methods `init_cache` and "
                    "`call_with_cache` (see the docstring). Received: "
                    f"model={_validation.short_repr(model)} without "
                    f"`{method}`"
                )
        super().__init__(**kwargs)
        self.model = model
        self.max_length = int(max_length)
        self.strategy = strategy
        self.temperature = float(temperature)
        self.top_k = top_k
        self.end_token_id = end_token_id
        self.padding_token_id = int(padding_token_id)

    def _next_token(self, logits, seed, step, temperature=None):
        """`logits (batch, vocab)` float32 -> int32 `(batch,)`."""
        # The padding token is never generated.
        vocabulary = ops.arange(ops.shape(logits)[-1], dtype="int32")
        logits = ops.where(
            vocabulary[None, :] == self.padding_token_id, float("-inf"), logits
        )
        greedy = _draws.argmax(logits)
        if self.strategy == "greedy":
            return greedy
        if temperature is None:
            temperature = self.temperature
        if isinstance(temperature, (int, float)):
            if temperature == 0:
                return greedy
            return self._sample(logits, seed, step, temperature)
        # A tensor: 0 means greedy.
        temperature = ops.cast(temperature, "float32")
        sampled = self._sample(
            logits, seed, step, ops.maximum(temperature, 1e-6)
        )
        return ops.where(temperature > 0.0, sampled, greedy)

    def _sample(self, logits, seed, step, temperature):
        logits = logits / temperature
        if self.top_k is not None:
            k = min(self.top_k, logits.shape[-1])
            threshold = ops.top_k(logits, k)[0][:, -1:]
            logits = ops.where(logits >= threshold, logits, float("-inf"))
        uniform = _draws.uniform(seed, step, ops.shape(logits))
        gumbel = -ops.log(-ops.log(uniform))
        return _draws.argmax(logits + gumbel)

    def call(self, prompt_ids, seed=0, temperature=None):
        _validation.check_rank("prompt_ids", prompt_ids.shape, (2,))
        _validation.check_index("seed", seed, 2**31 - 1, "an int32 seed")
        known = None
        if temperature is not None:
            known = _validation.concrete_values(temperature)
        if known is not None and (known.ndim or not known >= 0):
            raise ValueError(
                "Argument `temperature` must be a non-negative scalar (0: "
                "greedy). Received: temperature="
                f"{_validation.short_repr(temperature)}"
            )
        self._check_prompt_length(prompt_ids.shape[1])
        prompt_ids = ops.cast(prompt_ids, "int32")
        batch, prompt_length = ops.shape(prompt_ids)
        new_tokens = self.max_length - prompt_length
        prompt_mask = ops.not_equal(prompt_ids, self.padding_token_id)
        # `(batch, max_length)` with a static length (not a concatenation
        # with ones, of run-time length): the blocks see a mask of the
        # cache's length and need no run-time branch on it. With such a
        # branch in the loop, tf2onnx loses the loop's shapes and
        # onnxruntime refuses the ONNX `Loop`.
        slots = ops.arange(self.max_length, dtype="int32")
        padding_mask = ops.logical_or(
            ops.take(
                prompt_mask, ops.minimum(slots, prompt_length - 1), axis=1
            ),
            slots[None, :] >= prompt_length,
        )
        # Under a `keras.distribution` (JAX), the caches take the heads'
        # sharding; otherwise this returns them as they are.
        cache = _sharding.place(self.model.init_cache(batch, self.max_length))
        logits, cache = self.model.call_with_cache(
            prompt_ids, cache, 0, padding_mask
        )
        token = self._next_token(
            ops.cast(logits[:, -1], "float32"),
            seed,
            prompt_length,
            temperature,
        )
        columns = ops.arange(new_tokens, dtype="int32")[None, :]
        generated = ops.full((batch, new_tokens), -1, "int32")
        done = ops.zeros((batch,), "bool")

        def emit(generated, done, token, step):
            token = ops.where(done, self.padding_token_id, token)
            generated = ops.where(columns == step, token[:, None], generated)
            if self.end_token_id is not None:
                done = ops.logical_or(done, token == self.end_token_id)
            return generated, done, token

        generated, done, token = emit(generated, done, token, 0)

        def cond(step, token, cache, generated, done):
            return ops.logical_and(
                step < new_tokens, ops.logical_not(ops.all(done))
            )

        def body(step, token, cache, generated, done):
            position = prompt_length + step - 1
            logits, cache = self.model.call_with_cache(
                token[:, None], cache, position, padding_mask
            )
            token = self._next_token(
                ops.cast(logits[:, -1], "float32"),
                seed,
                position + 1,
                temperature,
            )
            generated, done, token = emit(generated, done, token, step)
            return step + 1, token, cache, generated, done

        _, _, _, generated, _ = ops.while_loop(
            cond,
            body,
            (ops.convert_to_tensor(1, "int32"), token, cache, generated, done),
            maximum_iterations=self.max_length,
        )
        # Rows that ended early: the untouched columns are padding.
        return ops.where(generated < 0, self.padding_token_id, generated)

    def _check_prompt_length(self, prompt_length):
        if prompt_length is not None and prompt_length >= self.max_length:
            raise ValueError(
                "Argument `max_length` (prompt plus continuation) must exceed "
                "the prompts' length. Received: "
                f"max_length={self.max_length}, prompt_ids.shape[1]="
                f"{prompt_length}"
            )

    def compute_output_spec(self, prompt_ids, seed=0, temperature=None):
        _validation.check_rank("prompt_ids", prompt_ids.shape, (2,))
        self._check_prompt_length(prompt_ids.shape[1])
        length = prompt_ids.shape[1]
        new = None if length is None else self.max_length - length
        return keras.KerasTensor((prompt_ids.shape[0], new), dtype="int32")

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "max_length": self.max_length,
                "strategy": self.strategy,
                "temperature": self.temperature,
                "top_k": self.top_k,
                "end_token_id": self.end_token_id,
                "padding_token_id": self.padding_token_id,
            }
        )
        return config

    @classmethod
    def from_config(cls, config):
        """Validates the config, deserializes its `model`, then builds the
        layer from it."""
        if isinstance(config, dict):  # anything else: refused by the base
            config = dict(config)
            if isinstance(config.get("model"), dict):
                config["model"] = keras.saving.deserialize_keras_object(
                    config["model"]
                )
        return super().from_config(config)
