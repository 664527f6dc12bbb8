"""The base of the samplers that keep the tokens above a probability
cut (top-p, min-p): their arguments, checks and config."""

from keras_attention import _validation
from keras_attention.samplers.sampler import Sampler


class TruncatingSampler(Sampler):
    """`p` in `(0, 1]`, an optional top-k cut `k` and a `seed`."""

    def __init__(self, p=0.1, k=None, seed=None, **kwargs):
        super().__init__(**kwargs)
        _validation.check_fraction("p", p)
        _validation.check_positive_int("k", k, allow_none=True)
        _validation.check_int32_seed(seed)
        self.p, self.k, self.seed = p, k, seed

    def get_config(self):
        config = super().get_config()
        config.update({"p": self.p, "k": self.k, "seed": self.seed})
        return config
