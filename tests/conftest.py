"""Shared test fixtures: the ../shared folder and the real Fashion-MNIST data."""

import os

import pytest

from tfcompress import keras as _  # noqa: F401  (TF_USE_LEGACY_KERAS before TensorFlow)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: takes minutes; run with `make test-all`")


@pytest.fixture(scope="session")
def shared_dir():
    """../shared beside the checkout; tests that need it skip when it is absent."""
    if not os.path.isdir(SHARED):
        pytest.skip(f"{SHARED} is absent")
    return SHARED


@pytest.fixture(scope="session")
def fashion_mnist():
    """The real Fashion-MNIST (no download in tests); skips when it is not installed."""
    from tfcompress import data
    try:
        return data.scale_dataset(data.load_fashion_mnist(download=False))  # to [0, 1]
    except data.DataError as e:
        pytest.skip(f"Fashion-MNIST not installed: {e}")
