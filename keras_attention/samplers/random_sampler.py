import keras

from keras_attention import _validation
from keras_attention.samplers import _draws
from keras_attention.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class RandomSampler(Sampler):
    """Samples from the whole distribution, as keras-hub's `RandomSampler`,
    with reproducible draws (see `Sampler`: the Gumbel-max trick on a hash
    of `(seed, position, row, token)`).

    Args:
        seed: optional int in `[0, 2**31 - 1]`; `None` means 0.
        temperature, logits_processors: see `Sampler`.

    Call arguments and returns: see `Sampler`.

    Example:

    >>> sampler = RandomSampler(seed=7)
    >>> logits = np.array([[-np.inf, 0.0, 0.0]], "float32")
    >>> token = sampler.next_token(logits, np.zeros((1, 1), "int32"), 3)
    >>> int(keras.ops.convert_to_numpy(token)[0]) in (1, 2)
    True
    """

    def __init__(self, seed=None, **kwargs):
        super().__init__(**kwargs)
        _validation.check_int32_seed(seed)
        self.seed = seed

    def get_next_token(self, probabilities):
        seed, position = self._draw_key()
        return _draws.gumbel_max(probabilities, seed, position)

    def get_config(self):
        config = super().get_config()
        config["seed"] = self.seed
        return config
