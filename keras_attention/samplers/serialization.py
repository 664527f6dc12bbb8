import keras

from keras_attention import _validation
from keras_attention.samplers.beam_sampler import BeamSampler
from keras_attention.samplers.contrastive_sampler import ContrastiveSampler
from keras_attention.samplers.greedy_sampler import GreedySampler
from keras_attention.samplers.min_p_sampler import MinPSampler
from keras_attention.samplers.random_sampler import RandomSampler
from keras_attention.samplers.sampler import Sampler
from keras_attention.samplers.top_k_sampler import TopKSampler
from keras_attention.samplers.top_p_sampler import TopPSampler

# keras-hub's names, plus "min_p".
NAMES = {
    "beam": BeamSampler,
    "contrastive": ContrastiveSampler,
    "greedy": GreedySampler,
    "min_p": MinPSampler,
    "random": RandomSampler,
    "top_k": TopKSampler,
    "top_p": TopPSampler,
}


def serialize(sampler):
    """A sampler's config, as `keras.saving.serialize_keras_object`.

    Args:
        sampler: a `Sampler`.

    Returns:
        dict with `class_name`, `config`, `module` and `registered_name`.

    Example:

    >>> serialize(GreedySampler())["class_name"]
    'GreedySampler'
    """
    return keras.saving.serialize_keras_object(sampler)


def deserialize(config, custom_objects=None):
    """A sampler from its config (see `serialize`) or its name.

    Args:
        config: a dict from `serialize`, or one of the names of `get`.
        custom_objects: optional dict of user classes, as in Keras.

    Returns:
        a `Sampler`.

    Example:

    >>> type(deserialize("top_p")).__name__
    'TopPSampler'
    >>> deserialize(serialize(TopKSampler(k=3))).k
    3
    """
    if isinstance(config, str):
        return _from_name(config)
    return keras.saving.deserialize_keras_object(
        config,
        module_objects=NAMES,
        custom_objects=custom_objects,
        printable_module_name="samplers",
    )


def get(identifier):
    """A sampler from a name, a config or a sampler.

    Args:
        identifier: `None`, one of keras-hub's names (`"greedy"`,
            `"random"`, `"top_k"`, `"top_p"`, `"beam"`, `"contrastive"`)
            or `"min_p"`, a config from `serialize`, or a sampler or other
            callable (returned as it is).

    Returns:
        a `Sampler` (or `identifier` itself), or None.

    Example:

    >>> type(get("greedy")).__name__
    'GreedySampler'
    """
    if identifier is None or isinstance(identifier, Sampler):
        return identifier
    if isinstance(identifier, (str, dict)):
        return deserialize(identifier)
    if callable(identifier):
        return identifier
    raise ValueError(
        "Received an invalid value for argument `identifier`, expected a "
        "sampler name, config or instance. Received: "
        f"identifier={_validation.short_repr(identifier)}"
    )


def _from_name(name):
    if name == "speculative":
        raise ValueError(
            "Received an unsupported value for argument `identifier`: "
            "keras-hub's `SpeculativeSampler` needs a draft model and is "
            "out of scope for now. Received: identifier='speculative'"
        )
    if name not in NAMES:
        raise ValueError(
            "Received an invalid value for argument `identifier`, expected "
            f"one of {sorted(NAMES)}. Received: "
            f"identifier={_validation.short_repr(name)}"
        )
    return NAMES[name]()
