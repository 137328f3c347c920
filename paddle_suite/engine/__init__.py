"""The shared training engine: one dygraph loop with callbacks, the run directory, checkpoints,
optimisers, monitoring."""
from paddle_suite.engine.callbacks import Callback, TrainingDiverged
from paddle_suite.engine.run import Run, RunError, load_run
from paddle_suite.engine.trainer import Loop, Trainer, restore_model
from paddle_suite.task import EvalResult

__all__ = ["Callback", "EvalResult", "Loop", "Run", "RunError", "Trainer", "TrainingDiverged", "load_run",
           "restore_model"]
