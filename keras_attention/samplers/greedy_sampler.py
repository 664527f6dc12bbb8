import keras

from keras_attention.samplers import _draws
from keras_attention.samplers.sampler import Sampler


@keras.saving.register_keras_serializable(package="keras_attention")
class GreedySampler(Sampler):
    """Greedy decoding: always the most likely token (the first one on
    ties), as keras-hub's `GreedySampler`, with an exportable argmax.

    Args:
        temperature: see `Sampler` (no effect on the argmax).
        logits_processors: see `Sampler`.

    Call arguments and returns: see `Sampler`.

    Example:

    >>> sampler = GreedySampler()
    >>> logits = np.array([[0.0, 3.0, 1.0], [2.0, 0.0, 2.0]], "float32")
    >>> tokens = sampler.next_token(logits, np.zeros((2, 1), "int32"), 0)
    >>> keras.ops.convert_to_numpy(tokens).tolist()
    [1, 0]
    """

    def get_next_token(self, probabilities):
        return _draws.argmax(probabilities)
