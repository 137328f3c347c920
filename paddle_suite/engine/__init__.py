"""The shared training engine: one dygraph loop, checkpoints, optimisers, monitoring."""
from paddle_suite.engine.trainer import Trainer, TrainingDiverged, restore_model

__all__ = ["Trainer", "TrainingDiverged", "restore_model"]
