import keras
from keras import ops

from keras_attention import _validation
from keras_attention.samplers import _draws
from keras_attention.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class TopKSampler(Sampler):
    """Samples among the `k` most likely tokens, as keras-hub's
    `TopKSampler` (`ops.top_k`: exactly `k` tokens, the lower ids first on
    ties), with reproducible draws (see `Sampler`).

    Args:
        k: positive int (at most the vocabulary is used).
        seed: optional int in `[0, 2**31 - 1]`; `None` means 0.
        temperature, logits_processors: see `Sampler`.

    Call arguments and returns: see `Sampler`.

    Example:

    >>> sampler = TopKSampler(k=2, seed=1)
    >>> logits = np.array([[0.0, 3.0, 1.0, 2.0]], "float32")
    >>> token = sampler.next_token(logits, np.zeros((1, 1), "int32"), 0)
    >>> int(keras.ops.convert_to_numpy(token)[0]) in (1, 3)
    True
    """

    def __init__(self, k=5, seed=None, **kwargs):
        super().__init__(**kwargs)
        _validation.check_positive_int("k", k)
        _validation.check_int32_seed(seed)
        self.k = k
        self.seed = seed

    def get_next_token(self, probabilities):
        vocabulary_size = ops.shape(probabilities)[-1]
        k = self.k
        if isinstance(vocabulary_size, int):
            k = min(k, vocabulary_size)
        top_probabilities, top_ids = ops.top_k(probabilities, k)
        seed, position = self._draw_key()
        column = _draws.gumbel_max(
            top_probabilities, seed, position, top_ids, vocabulary_size
        )
        return ops.take_along_axis(top_ids, column[:, None], axis=-1)[:, 0]

    def get_config(self):
        config = super().get_config()
        config.update({"k": self.k, "seed": self.seed})
        return config
