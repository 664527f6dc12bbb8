import os

import keras
import numpy as np
import pytest
from hypothesis import HealthCheck
from hypothesis import settings

# CI: every property runs, with few examples. `thorough`: the long run
# (`pytest --hypothesis-profile=thorough`), 500 examples per property unless
# KA_HYPOTHESIS_THOROUGH_EXAMPLES says otherwise.
settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("KA_HYPOTHESIS_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=True,
)
settings.register_profile(
    "thorough",
    max_examples=int(os.environ.get("KA_HYPOTHESIS_THOROUGH_EXAMPLES", "500")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")


def pytest_collection_modifyitems(config, items):
    backend = keras.backend.backend()
    skip = pytest.mark.skip(reason="needs the TensorFlow backend")
    for item in items:
        if "tensorflow_only" in item.keywords and backend != "tensorflow":
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _reset_state():
    keras.config.set_dtype_policy("float32")
    keras.utils.set_random_seed(1234)
    yield
    keras.config.set_dtype_policy("float32")
    # No gc.collect() after each test: it took most of the suite's time.
    keras.backend.clear_session(free_memory=False)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def our_kernels():
    """`chunk_size="auto"` runs our kernels: the backend's fused kernel
    (PyTorch's, on every platform) is switched off globally."""
    keras.config.disable_flash_attention()
    yield
    keras.config.enable_flash_attention()
