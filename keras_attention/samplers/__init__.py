"""Samplers: keras-hub's sampler interface, exportable and reproducible.

`Sampler` subclasses turn next-token logits into tokens, with keras-hub's
`keras_hub.samplers` interface (they plug into keras-hub's
`CausalLM.compile(sampler=...)`): `GreedySampler`, `RandomSampler`,
`TopKSampler`, `TopPSampler`, `MinPSampler`, `BeamSampler` and
`ContrastiveSampler`. Their loops use no XLA-only op (they export to a
TensorFlow SavedModel) and their random draws are a pure function of
`(seed, position, row, token)`: the same eagerly, compiled and on every
backend. Logits processors (`RepetitionPenalty`, `PresencePenalty`,
`FrequencyPenalty`, `BanTokens`) adjust the logits first. `get`,
`serialize` and `deserialize` take keras-hub's names, plus `"min_p"`.
"""

from keras_attention.samplers.beam_sampler import BeamSampler
from keras_attention.samplers.contrastive_sampler import ContrastiveSampler
from keras_attention.samplers.greedy_sampler import GreedySampler
from keras_attention.samplers.logits_processors import BanTokens
from keras_attention.samplers.logits_processors import FrequencyPenalty
from keras_attention.samplers.logits_processors import PresencePenalty
from keras_attention.samplers.logits_processors import RepetitionPenalty
from keras_attention.samplers.logits_processors import token_counts
from keras_attention.samplers.min_p_sampler import MinPSampler
from keras_attention.samplers.random_sampler import RandomSampler
from keras_attention.samplers.sampler import Sampler
from keras_attention.samplers.serialization import deserialize
from keras_attention.samplers.serialization import get
from keras_attention.samplers.serialization import serialize
from keras_attention.samplers.top_k_sampler import TopKSampler
from keras_attention.samplers.top_p_sampler import TopPSampler

__all__ = [
    "BanTokens",
    "BeamSampler",
    "ContrastiveSampler",
    "FrequencyPenalty",
    "GreedySampler",
    "MinPSampler",
    "PresencePenalty",
    "RandomSampler",
    "RepetitionPenalty",
    "Sampler",
    "TopKSampler",
    "TopPSampler",
    "deserialize",
    "get",
    "serialize",
    "token_counts",
]
