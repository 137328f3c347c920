"""Massive sparse CTR models on Fleet's parameter server with the HBM / MEM / SSD store.

Submodules: ``data`` (Criteo / slot readers, feature hashing, Fleet data generator),
``generator`` (synthetic power-law CTR data with a planted model), ``store`` (the hierarchical
parameter store). They load on first access (``paddle_suite.ads.store``), so
``python -m paddle_suite.ads.data`` (Fleet's pipe command) does not import itself twice.
Importing the package registers the ``ctr`` task.
"""
import importlib

_SUBMODULES = ("data", "generator", "store")

try:
    from paddle_suite.ads import task  # noqa: F401  (registers the task)
except ModuleNotFoundError as err:
    if err.name != "paddle_suite.ads.task":
        raise


def __getattr__(name):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
