import warnings

import keras
from keras import ops

from keras_attention import _validation
from keras_attention import samplers as samplers_lib
from keras_attention.layers import _common
from keras_attention.layers import _decoding


@keras.saving.register_keras_serializable(package="keras_attention")
class TokenGenerator(_common.ValidatedLayer):
    """Autoregressive generation with a key/value cache, in one graph.

    Continues each prompt up to `max_length` tokens, prompt included, as
    keras-hub's `generate(inputs, max_length)`: the prompt fills a
    fixed-size cache, then an `ops.while_loop` feeds back one token at a
    time. Everything is `keras.ops`, so the layer runs eagerly, under
    `jit`/`tf.function`, and inside a SavedModel signature with no Python
    of ours (caches and tokens are written by scatters and selects, never
    by XLA-only ops); under TensorFlow a model built on it also exports
    with Keras' `model.export` to ONNX and LiteRT (builtin ops only), with
    the same tokens. Keras' exporters give every input a batch axis, so a
    scalar `seed` input needs an explicit `input_signature`.

    **The model** speaks one of two protocols (ours wins when it has
    both):

    - keras_attention's: `init_cache(batch_size, max_length)` returns its
      caches (any nested structure of batch-first tensors) and
      `call_with_cache(token_ids, cache, cache_update_index,
      padding_mask)` returns `(logits, cache)` or `(logits,
      hidden_states, cache)`; `padding_mask` `(batch, max_length)` is True
      for the cache slots that hold real tokens (pass it to the blocks as
      `decoder_padding_mask`). Prompts are **left-padded** with
      `padding_token_id`, so every row writes its next token to the same
      slot and each row's greedy continuation equals its prompt generated
      alone, up to rounding (with rotary embeddings; a model with
      absolute positions should take `cumsum(padding_mask) - 1`). The
      output is the continuation, `(batch, max_length - prompt_length)`.
    - keras-hub's causal LMs: `_build_cache(token_ids)` returns
      `(hidden_states, cache)` and `call_with_cache(token_ids, cache,
      cache_update_index)` returns `(logits, hidden_states, cache)`. It
      takes no padding mask, so prompts are **right-padded**, as
      keras-hub's `generate` pads them: all rows advance from the shortest
      prompt, a longer row keeps its own prompt tokens meanwhile, and the
      output is the whole sequence `(batch, max_length)`, keras-hub's
      `token_ids`. Convert keras-hub's attention layers to ours with
      `keras_attention.compat.keras_hub.convert_causal_lm` to export it.

    Every row needs at least one prompt token. Under our protocol
    `padding_token_id` is never generated; keras-hub's models may
    generate it, as in keras-hub.

    **Decoding** is a `keras_attention.samplers.Sampler`: greedy, random,
    top-k, top-p, min-p, beam or contrastive search, with logits processors
    (penalties, bans). Random draws come from a counter-based hash of
    `(seed, position, row, token)`, so a seed gives the same tokens
    eagerly, compiled, in a SavedModel and on every backend. A row stops
    after any of `stop_token_ids` (a token, or a sequence of tokens that
    ends at the new one, prompt included) and emits `padding_token_id`
    from then on; the loop ends when every row has stopped.

    Args:
        model: the language model, see above.
        max_length: int, the length of prompt plus continuation: the
            cache's length. It must exceed the prompts' length.
        sampler: a `keras_attention.samplers.Sampler`, its string name
            (`"greedy"`, `"top_k"`, `"top_p"`, ...) or its config.
            `ContrastiveSampler` needs a model that returns hidden states.
        stop_token_ids: optional list of token ids and of sequences of
            token ids.
        padding_token_id: int, the prompts' padding (default 0).
        strategy, temperature, top_k, end_token_id: deprecated (0.3):
            `strategy="sample"` is `sampler=TopKSampler(k=top_k,
            temperature=temperature)` (`RandomSampler` without `top_k`),
            `end_token_id` is `stop_token_ids=[end_token_id]`.
        **kwargs: base layer arguments, e.g. `name`.

    Call arguments:
        prompt_ids: integer `(batch_size, prompt_length)`, padded as the
            protocol says.
        seed: optional int or 0-d integer tensor, the draws' seed
            (default: the sampler's `seed`, or 0).
        temperature: optional float or 0-d tensor overriding the
            sampler's; 0 means greedy, so one exported graph can serve
            both. Not for beam or contrastive search.

    Returns:
        int32 tokens, as the protocol says. With a `BeamSampler`, the
        best beam; with its `return_all_beams=True`, `(tokens, log_probs)`
        with a beam axis after the batch's, best first.

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
    >>> generator = TokenGenerator(Bigram(), max_length=6, sampler="greedy")
    >>> tuple(generator(np.array([[0, 3], [2, 1]])).shape)
    (2, 4)
    """

    def __init__(
        self,
        model,
        max_length,
        sampler="greedy",
        stop_token_ids=None,
        padding_token_id=0,
        strategy=None,
        temperature=None,
        top_k=None,
        end_token_id=None,
        **kwargs,
    ):
        _validation.check_positive_int(
            "max_length", max_length, max_value=_validation.MAX_WEIGHT_ELEMENTS
        )
        _validation.check_index("padding_token_id", padding_token_id)
        protocol = _decoding.protocol_of(model)
        sampler, stop_token_ids = _deprecated_arguments(
            sampler, stop_token_ids, strategy, temperature, top_k, end_token_id
        )
        if isinstance(sampler, (str, dict)):
            sampler = samplers_lib.get(sampler)
        if not isinstance(sampler, samplers_lib.Sampler):
            raise ValueError(
                "Argument `sampler` must be a keras_attention sampler, its "
                "name or its config. Received: "
                f"sampler={_validation.short_repr(sampler)}"
            )
        self._stop_sequences = _decoding.stop_sequences(stop_token_ids)
        super().__init__(**kwargs)
        self._protocol = protocol
        self.model = model
        self.max_length = int(max_length)
        self.sampler = sampler
        self.stop_token_ids = stop_token_ids
        self.padding_token_id = int(padding_token_id)

    @property
    def _beams(self):
        return isinstance(self.sampler, samplers_lib.BeamSampler)

    @property
    def _searches(self):
        """Beam and contrastive search: no call-time temperature."""
        return self._beams or isinstance(
            self.sampler, samplers_lib.ContrastiveSampler
        )

    def _choose(self, seed, temperature):
        """`choose(logits, tokens, index)` for the loop: the sampler's
        token at the call's temperature (0: greedy)."""

        def choose(logits, tokens, index):
            return self.sampler.next_token(
                logits, tokens, index, seed, temperature=temperature
            )

        return choose

    def call(self, prompt_ids, seed=None, temperature=None):
        _validation.check_rank("prompt_ids", prompt_ids.shape, (2,))
        if seed is not None:
            _validation.check_index("seed", seed, 2**31 - 1, "an int32 seed")
        if temperature is not None:
            known = _validation.concrete_values(temperature)
            if self._searches or (
                known is not None and (known.ndim or not known >= 0)
            ):
                raise ValueError(
                    "Argument `temperature` must be a non-negative scalar (0: "
                    "greedy), and not given with beam search. Received: "
                    f"temperature={_validation.short_repr(temperature)}"
                )
        prompt_length = prompt_ids.shape[1]
        self._check_prompt_length(prompt_length)
        prompt_ids = ops.cast(prompt_ids, "int32")
        decoder = _decoding.Decoder(
            self.model, self._protocol, self.max_length, self.padding_token_id
        )
        if isinstance(self.sampler, samplers_lib.ContrastiveSampler):
            tokens = decoder.run_contrastive(
                prompt_ids, self.sampler, self._stop_sequences
            )
            return self._continuation(tokens, prompt_ids)
        if self._beams:
            tokens, log_probs = decoder.run_beams(
                prompt_ids, self.sampler, self._stop_sequences
            )
            tokens = self._continuation(tokens, prompt_ids)
            if self.sampler.return_all_beams:
                return tokens, log_probs
            return tokens[:, 0]
        tokens = decoder.run(
            prompt_ids, self._choose(seed, temperature), self._stop_sequences
        )
        return self._continuation(tokens, prompt_ids)

    def _continuation(self, tokens, prompt_ids):
        """Our protocol returns the columns after the prompt."""
        if self._protocol == _decoding.OURS:
            return tokens[..., ops.shape(prompt_ids)[1] :]
        return tokens

    def _check_prompt_length(self, prompt_length):
        if prompt_length is not None and prompt_length >= self.max_length:
            raise ValueError(
                "Argument `max_length` (prompt plus continuation) must exceed "
                "the prompts' length. Received: "
                f"max_length={self.max_length}, prompt_ids.shape[1]="
                f"{prompt_length}"
            )

    def compute_output_spec(self, prompt_ids, seed=None, temperature=None):
        _validation.check_rank("prompt_ids", prompt_ids.shape, (2,))
        self._check_prompt_length(prompt_ids.shape[1])
        length, batch = prompt_ids.shape[1], prompt_ids.shape[0]
        if self._protocol != _decoding.OURS:
            length = self.max_length
        elif length is not None:
            length = self.max_length - length
        if not self._beams:
            return keras.KerasTensor((batch, length), dtype="int32")
        beams = self.sampler.num_beams
        if not self.sampler.return_all_beams:
            return keras.KerasTensor((batch, length), dtype="int32")
        return (
            keras.KerasTensor((batch, beams, length), dtype="int32"),
            keras.KerasTensor((batch, beams), dtype="float32"),
        )

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "model": keras.saving.serialize_keras_object(self.model),
                "max_length": self.max_length,
                "sampler": samplers_lib.serialize(self.sampler),
                "stop_token_ids": self._stop_config(),
                "padding_token_id": self.padding_token_id,
            }
        )
        return config

    def _stop_config(self):
        if self.stop_token_ids is None:
            return None
        return [s[0] if len(s) == 1 else list(s) for s in self._stop_sequences]

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


def _deprecated_arguments(
    sampler, stop_token_ids, strategy, temperature, top_k, end_token_id
):
    """The 0.2 arguments as a sampler and stop ids, with a warning."""
    old = dict(
        strategy=strategy,
        temperature=temperature,
        top_k=top_k,
        end_token_id=end_token_id,
    )
    given = [name for name, value in old.items() if value is not None]
    if not given:
        return sampler, stop_token_ids
    warnings.warn(
        f"`TokenGenerator({', '.join(given)}=...)` is deprecated and will be "
        "removed in 0.4: pass `sampler=` (a `keras_attention.samplers` "
        "sampler) and `stop_token_ids=`.",
        DeprecationWarning,
        stacklevel=3,
    )
    if end_token_id is not None:
        if stop_token_ids is not None:
            raise ValueError(
                "Arguments `end_token_id` (deprecated) and `stop_token_ids` "
                "can't both be given. Received: "
                f"end_token_id={end_token_id!r}, "
                f"stop_token_ids={stop_token_ids!r}"
            )
        _validation.check_index("end_token_id", end_token_id)
        stop_token_ids = [end_token_id]
    strategy = "greedy" if strategy is None else strategy
    if strategy not in ("greedy", "sample"):
        raise ValueError(
            "Received an invalid value for argument `strategy`, expected "
            '"greedy" or "sample". Received: '
            f"strategy={_validation.short_repr(strategy)}"
        )
    temperature = 1.0 if temperature is None else temperature
    _validation.check_positive_number("temperature", temperature)
    _validation.check_positive_int("top_k", top_k, allow_none=True)
    if strategy == "greedy":
        return samplers_lib.GreedySampler(), stop_token_ids
    if top_k is None:
        return samplers_lib.RandomSampler(
            temperature=temperature
        ), stop_token_ids
    return (
        samplers_lib.TopKSampler(k=top_k, temperature=temperature),
        stop_token_ids,
    )
