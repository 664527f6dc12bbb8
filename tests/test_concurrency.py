"""Concurrency: many threads calling one model get single-threaded results.

8 threads x 200 requests each, with mixed batch sizes and sequence lengths
(zero-padded token ids, so the masks differ per request), against:

- the exported `serving_default` signature (`export_saved_model`, loaded
  with `tf.saved_model.load`), as a Python model server would call it;
- a Keras model calling our layers, with `model.predict_on_batch` (8 x
  200), eager `model(x)` (8 x 25; 8 x 10 on JAX) and `model.predict` (8 x
  8, as it builds a dataset iterator per call); on JAX, where Keras'
  `predict` is not thread-safe (see `JAX_DONATES`), a jitted
  `stateless_call` (8 x 200).

Every result is compared with the single-threaded result for the same
request (computed first, which also traces every shape): bitwise equality
is expected; the test tolerates 1e-6 and reports how many were bitwise
equal.
"""

import concurrent.futures
import threading

import keras
import numpy as np
import pytest

from tests.serving.helpers import masked_model
from tests.serving.helpers import ragged_tokens

THREADS = 8
REQUESTS = 200  # per thread
BATCHES = (1, 2, 3, 5)
WIDTHS = (3, 7, 12)


def _distinct_requests(seed=0):
    """One request per (batch size, width): padded token ids."""
    rng = np.random.default_rng(seed)
    requests = []
    for batch in BATCHES:
        for width in WIDTHS:
            lengths = rng.integers(1, width + 1, size=batch)
            lengths[0] = width
            requests.append(ragged_tokens(rng, list(lengths), width))
    return requests


def _hammer(call, requests, expected, per_thread=REQUESTS):
    """Calls `call` from THREADS threads, `per_thread` requests each, in a
    random order; returns (compared, bitwise_equal, max_abs_diff)."""
    barrier = threading.Barrier(THREADS)

    def worker(index):
        rng = np.random.default_rng(100 + index)
        barrier.wait()  # all threads start together
        results = []
        for i in rng.integers(0, len(requests), size=per_thread):
            results.append((int(i), call(requests[i])))
        return results

    with concurrent.futures.ThreadPoolExecutor(THREADS) as pool:
        futures = [pool.submit(worker, t) for t in range(THREADS)]
        outcomes = [f.result(timeout=600) for f in futures]
    compared = bitwise = 0
    max_diff = 0.0
    for results in outcomes:
        for i, got in results:
            for name, want in expected[i].items():
                compared += 1
                value = np.asarray(got[name])
                assert value.shape == want.shape, (name, value.shape)
                if np.array_equal(value, want):
                    bitwise += 1
                else:
                    diff = float(np.abs(value - want).max())
                    max_diff = max(max_diff, diff)
    return compared, bitwise, max_diff


def _report(what, compared, bitwise, max_diff):
    print(
        f"{what}: {THREADS} threads, {compared} outputs compared, "
        f"{bitwise} bitwise equal, max abs difference {max_diff:.3g}"
    )
    assert max_diff <= 1e-6, (what, max_diff)


@pytest.mark.tensorflow_only
def test_serving_signature_from_many_threads(tmp_path):
    import tensorflow as tf

    from keras_attention import serving

    path = serving.export_saved_model(masked_model(), tmp_path / "model")
    signature = tf.saved_model.load(path).signatures["serving_default"]

    def call(tokens):
        outputs = signature(tokens=tf.constant(tokens))
        return {name: t.numpy() for name, t in outputs.items()}

    requests = _distinct_requests()
    expected = [call(tokens) for tokens in requests]
    assert set(expected[0]) >= {"probabilities", "per_token"}
    compared, bitwise, max_diff = _hammer(call, requests, expected)
    assert compared >= THREADS * REQUESTS * 2
    _report("serving_default", compared, bitwise, max_diff)


@pytest.fixture(scope="module")
def keras_model():
    return masked_model()


# How a server may call a Keras model, and requests per thread: the
# compiled `predict_on_batch` at full load; eager calls and `predict`
# (which builds a dataset iterator per call, ~50 ms) with fewer.
KERAS_CALLS = {
    "predict_on_batch": REQUESTS,
    # Eager JAX dispatches op by op (~40 ms a call here): fewer on JAX.
    "call": 10 if keras.backend.backend() == "jax" else 25,
    "predict": 8,
    "jax_jit_stateless_call": REQUESTS,
}
# Keras' JAX trainer donates the model's state to each compiled predict
# step (`donate_argnums=0` in keras/src/backend/jax/trainer.py), so
# `predict` from several threads fails with "Buffer has been deleted or
# donated" in Keras itself, whatever the layers (a Dense-only model fails
# the same way). On JAX, serve from threads with a jitted `stateless_call`
# (tested below), or one model per thread.
JAX_DONATES = pytest.mark.skipif(
    keras.backend.backend() == "jax",
    reason="Keras' JAX predict donates the model state: not thread-safe",
)


def _keras_cases():
    for method in sorted(KERAS_CALLS):
        marks = []
        if method.startswith("predict"):
            marks.append(JAX_DONATES)
        if method.startswith("jax_") and keras.backend.backend() != "jax":
            marks.append(pytest.mark.skip(reason="JAX only"))
        yield pytest.param(method, marks=marks, id=method)


def _jitted_stateless_call(model):
    import jax

    state = (
        [v.value for v in model.trainable_variables],
        [v.value for v in model.non_trainable_variables],
    )

    @jax.jit
    def run(trainable, non_trainable, tokens):
        return model.stateless_call(trainable, non_trainable, tokens)[0]

    return lambda tokens: run(*state, tokens)


@pytest.mark.parametrize("method", _keras_cases())
def test_keras_model_from_many_threads(keras_model, method):
    if method == "jax_jit_stateless_call":
        jitted = _jitted_stateless_call(keras_model)

    def call(tokens):
        if method == "predict_on_batch":
            outputs = keras_model.predict_on_batch(tokens)
        elif method == "predict":
            outputs = keras_model.predict(tokens, verbose=0)
        elif method == "jax_jit_stateless_call":
            outputs = jitted(tokens)
        else:
            outputs = keras_model(tokens, training=False)
        probabilities, per_token = (
            keras.ops.convert_to_numpy(x) for x in outputs
        )
        return {"probabilities": probabilities, "per_token": per_token}

    requests = _distinct_requests(1)
    if method == "call" and keras.backend.backend() == "jax":
        # Each new shape compiles every eager op anew: 4 shapes, not 12.
        requests = [r for r in requests if r.shape[0] <= 2 and r.shape[1] < 12]
    expected = [call(tokens) for tokens in requests]
    per_thread = KERAS_CALLS[method]
    compared, bitwise, max_diff = _hammer(
        call, requests, expected, per_thread=per_thread
    )
    assert compared == THREADS * per_thread * 2
    _report(f"model.{method}", compared, bitwise, max_diff)
