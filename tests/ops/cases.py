"""Inputs for the kernel tests: queries, keys, values and masks."""

import numpy as np


def qkv(rng, b, t, s, n, kv):
    """`q (b, t, n, 8)`, `k (b, s, kv, 8)` and `v (b, s, kv, 5)`, normal."""
    q = rng.normal(size=(b, t, n, 8)).astype("float32")
    k = rng.normal(size=(b, s, kv, 8)).astype("float32")
    v = rng.normal(size=(b, s, kv, 5)).astype("float32")
    return q, k, v


def mask(kind, rng, b, t, s):
    """A boolean mask `(b, 1, t, s)` (or `(b, 1, 1, s)`) by kind: None;
    "padding" (each batch row keeps a random prefix of the keys, at least
    one); "random" (about 70% kept); or "empty_rows" (random, and query 2
    of batch row 0 and the last query of batch row 1 keep no key: their
    outputs must be zero rows)."""
    if kind is None:
        return None
    if kind == "padding":
        lengths = rng.integers(1, s + 1, size=b)
        return (np.arange(s)[None] < lengths[:, None])[:, None, None, :]
    mask = rng.random((b, 1, t, s)) > 0.3
    if kind == "empty_rows":
        mask[0, :, 2] = False
        mask[1, :, -1] = False
    return mask
