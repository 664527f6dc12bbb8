"""A tiny deterministic language model for the sampler tests, and NumPy
emulations written here independently of the library.

`next(prompt, cache, index)`: the logits of the token at `index` are a
fixed random table indexed by the previous token, plus a term of the cache,
which holds the tokens so far (written by `next` itself), so a sampler that
reorders beams without reordering the cache gets other logits. The hidden
state is a fixed embedding of the previous token plus a cache term.
"""

import numpy as np
from keras import ops

VOCAB = 11
MAX_LENGTH = 8
HIDDEN = 4
_rng = np.random.default_rng(42)
TABLE = (2.0 * _rng.normal(size=(VOCAB, VOCAB))).astype("float32")
CACHE_WEIGHTS = _rng.normal(size=(VOCAB,)).astype("float32")
EMBEDDINGS = _rng.normal(size=(VOCAB, HIDDEN)).astype("float32")
# Three right-padded prompts of lengths 2, 3 and 4 (keras-hub's layout).
PROMPT_LENGTHS = np.array([2, 3, 4])
PROMPT = np.where(
    np.arange(MAX_LENGTH)[None, :] < PROMPT_LENGTHS[:, None],
    _rng.integers(0, VOCAB, size=(3, MAX_LENGTH)),
    0,
).astype("int32")
MASK = np.arange(MAX_LENGTH)[None, :] < PROMPT_LENGTHS[:, None]
INDEX = 2


def next(prompt, cache, index):
    """keras-hub's `next` protocol: `(logits, hidden_states, cache)`."""
    token = ops.take_along_axis(
        ops.cast(prompt, "int32"),
        ops.broadcast_to(
            ops.reshape(index - 1, (1, 1)), (ops.shape(prompt)[0], 1)
        ),
        axis=1,
    )[:, 0]
    columns = ops.arange(MAX_LENGTH, dtype="int32")[None, :]
    cache = ops.where(
        columns == index - 1, ops.cast(token, "float32")[:, None], cache
    )
    history = ops.sin(ops.sum(cache, axis=1))[:, None]
    logits = ops.take(TABLE, token, axis=0) + 0.5 * history * CACHE_WEIGHTS
    hidden = ops.take(EMBEDDINGS, token, axis=0) + 0.1 * history
    return logits, hidden, cache


def initial_state(prompt=PROMPT, index=INDEX):
    """`(cache, hidden_states)` holding the prompt before `index`."""
    cache = np.where(
        np.arange(MAX_LENGTH)[None, :] < index - 1, prompt, 0
    ).astype("float32")
    hidden = EMBEDDINGS[prompt].copy()
    hidden[:, index:] = 0.0
    return cache, hidden


def run(sampler, stop_token_ids=None, hidden=False):
    """`sampler.__call__` on the toy model from its initial state, with
    the hidden states when `hidden`."""
    cache, hidden_states = initial_state()
    return sampler(
        next,
        ops.convert_to_tensor(PROMPT),
        cache=ops.convert_to_tensor(cache),
        index=INDEX,
        mask=ops.convert_to_tensor(MASK),
        stop_token_ids=stop_token_ids,
        hidden_states=ops.convert_to_tensor(hidden_states) if hidden else None,
    )


def lowbias32(x):
    """The 32-bit hash, in NumPy uint64 arithmetic."""
    x = np.asarray(x, np.uint64) & 0xFFFFFFFF
    for m in (0x7FEB352D, 0x846CA68B):
        x ^= x >> np.uint64(16)
        x = (x * np.uint64(m)) & 0xFFFFFFFF
    return x ^ (x >> np.uint64(16))


def uniform(seed, position, batch, vocab):
    """The draws' uniforms of `(seed, position, row, token)`."""
    base = lowbias32((seed * 0x9E3779B9 + position) & 0xFFFFFFFF)
    keys = (
        base.astype(np.uint64)
        + np.arange(batch, dtype=np.uint64)[:, None] * vocab
        + np.arange(vocab, dtype=np.uint64)[None, :]
    ) & 0xFFFFFFFF
    return ((lowbias32(keys) >> np.uint64(9)).astype(np.float64) + 0.5) / 2**23


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, np.float64) / temperature
    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def kept(probabilities, kind, p=None, k=None):
    """The tokens each rule keeps, bool like `probabilities` (1-D), from
    the rules as documented (keras-hub's for top-k and top-p)."""
    q = np.asarray(probabilities, np.float64)
    order = np.argsort(-q, kind="stable")
    keep = np.ones_like(q, bool)
    if k is not None:
        keep[:] = False
        keep[order[:k]] = True
    if kind == "top_p":
        candidates = order[: (k or len(q))]
        before = np.concatenate([[0.0], np.cumsum(q[candidates])[:-1]])
        keep[:] = False
        keep[candidates[before <= p]] = True
    elif kind == "min_p":
        keep &= q >= p * q[keep].max()
    return keep


def truncated(probabilities, keep):
    q = np.where(keep, probabilities, 0.0)
    return q / q.sum()
