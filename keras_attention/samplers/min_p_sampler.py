import keras
from keras import ops

from keras_attention.samplers import _draws
from keras_attention.samplers._truncating import TruncatingSampler


@keras.saving.register_keras_serializable(package="keras_attention")
class MinPSampler(TruncatingSampler):
    """Min-p sampling (Nguyen et al., 2024): keeps the tokens whose
    probability is at least `p` times the largest, then samples among them,
    with reproducible draws (see `Sampler`). Not in keras-hub.

    Args:
        p: float in `(0, 1]`; 1 keeps only the most likely token(s).
        k: optional positive int, a top-k cut before min-p.
        seed: optional int in `[0, 2**31 - 1]`; `None` means 0.
        temperature: see `Sampler` (applied before the cut).
        logits_processors: see `Sampler`.

    Call arguments and returns: see `Sampler`.

    Example:

    >>> min_p = MinPSampler(p=0.5, seed=3)  # keeps 0.5 and 0.3
    >>> logits = np.log(np.array([[0.1, 0.5, 0.3, 0.1]], "float32"))
    >>> history = np.zeros((1, 1), "int32")
    >>> tokens = min_p.next_token(logits, history, index=0)
    >>> keras.ops.convert_to_numpy(tokens).tolist()[0] in (1, 2)
    True

    Reference:
        [Nguyen et al., 2024](https://arxiv.org/abs/2407.01082)
    """

    def get_next_token(self, probabilities):
        threshold = self.p * ops.max(probabilities, axis=-1, keepdims=True)
        if self.k is not None:
            vocabulary_size = ops.shape(probabilities)[-1]
            k = self.k
            if isinstance(vocabulary_size, int):
                k = min(k, vocabulary_size)
            kth = ops.top_k(probabilities, k)[0][:, -1:]
            threshold = ops.maximum(threshold, kth)
        kept = ops.where(probabilities >= threshold, probabilities, 0.0)
        seed, position = self._draw_key()
        return _draws.inverse_cdf(kept, seed, position)
