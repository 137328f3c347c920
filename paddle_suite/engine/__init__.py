"""The shared training engine: one dygraph loop with callbacks, the run directory, checkpoints,
optimisers, monitoring.

Names are imported on first use, so ``paddle_suite.engine.run`` (plain files: no paddle) can be
used by entry points that must import scipy/sklearn before paddle (see ``PLATFORM.md``).
"""
import importlib

_EXPORTS = {
    "Callback": "paddle_suite.engine.callbacks",
    "TrainingDiverged": "paddle_suite.engine.callbacks",
    "Run": "paddle_suite.engine.run",
    "RunError": "paddle_suite.engine.run",
    "load_run": "paddle_suite.engine.run",
    "Loop": "paddle_suite.engine.trainer",
    "Trainer": "paddle_suite.engine.trainer",
    "restore_model": "paddle_suite.engine.trainer",
    "EvalResult": "paddle_suite.task",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'paddle_suite.engine' has no attribute '{name}'")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
