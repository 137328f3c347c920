import os
import sys

import pytest

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "engine"))


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: end-to-end runs (still part of CI)")


@pytest.fixture
def shared_data():
    from paddle_suite.data import shared_data_dir

    path = shared_data_dir()
    if path is None:
        pytest.skip("../shared/data is absent: real-data tests need the shared data folder beside the checkout")
    return path


@pytest.fixture(autouse=True)
def dygraph_mode_after_each_test():
    """Static-graph (parameter-server) tests switch paddle's global mode; restore it for the next test."""
    yield
    import paddle

    if not paddle.in_dynamic_mode():
        paddle.disable_static()


@pytest.fixture(autouse=True)
def paddle_suite_logger_after_each_test():
    """A test that runs a CLI entry point in-process installs the CLI's handler on the stderr pytest
    captured for it (closed afterwards) and stops propagation; undo both, so later tests log normally."""
    import logging

    logger = logging.getLogger("paddle_suite")
    saved = logger.handlers[:], logger.level, logger.propagate
    yield
    logger.handlers[:], logger.level, logger.propagate = saved
