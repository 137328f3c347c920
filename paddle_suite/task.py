"""The contract between a capability and the shared tools (train / eval / export).

A capability registers a ``Task`` subclass under a name (``@TASKS.register("kge")``); the
config's ``Global.task`` selects it. Two kinds exist:

* ``DenseTask``: a dygraph model trained by the one shared loop in ``paddle_suite.engine``
  (optimiser, LR schedule, clipping, AMP, checkpoints, resume, evaluation, VisualDL, Fleet
  collective). The task only supplies data, model, loss and metrics.
* ``Task`` with its own ``train``/``evaluate``: for workflows the dygraph loop cannot express,
  e.g. static-graph programs on Fleet's parameter server.

An evaluation gives an ``EvalResult``: ``metrics`` (``{name: float}``, logged and used for model
selection) and ``extras`` (whatever else the task computed, e.g. KGE per-triple ranks), handed to
the caller and to the training callbacks as they are.
"""
from dataclasses import dataclass, field


@dataclass
class EvalResult:
    metrics: dict
    extras: dict = field(default_factory=dict)
    split: str = "valid"
    checkpoint: str = None

    @classmethod
    def of(cls, value, split):
        """An ``EvalResult`` from what ``DenseTask.evaluate_model`` returned (it or a plain metrics dict)."""
        metrics, extras = (value.metrics, value.extras) if isinstance(value, EvalResult) else (value, {})
        return cls({k: float(v) for k, v in metrics.items()}, extras, split)

    def summary(self):
        """The JSON-ready part (no extras): what ``tools/eval.py`` prints."""
        return {"checkpoint": self.checkpoint, "split": self.split, "metrics": self.metrics}


class Task:
    """Base of every task. ``schema`` declares the task-specific config sections.

    ``schema`` maps section name -> {key: default or ``config.Field``}; it is merged over the
    core schema (``paddle_suite.config.CORE_SCHEMA``), so a task may add keys to ``Global``
    or change a core default. Values of ``Arch`` are checked against the signature of the
    registered architecture factory named by ``Arch.name``, so they are not listed here.
    """

    schema = {}

    def __init__(self, config):
        self.config = config

    def train(self, args):
        raise NotImplementedError

    def evaluate(self, args):
        raise NotImplementedError

    def export(self, args):
        raise NotImplementedError(f"task '{self.config['Global']['task']}' has no export")


class DenseTask(Task):
    """A task trained by ``paddle_suite.engine.Trainer``.

    Determinism contract (what makes resume exact): ``train_batches(epoch, start, rank, world)``
    must yield the same batches for the same arguments, deriving all randomness from
    ``config['Global']['seed']``, ``epoch`` and the batch position, never from global state.
    """

    #: metric used for best-model tracking and early stopping, and whether larger is better
    best_metric = "loss"
    best_mode = "min"

    def build_model(self):
        """Return a ``paddle.nn.Layer``."""
        raise NotImplementedError

    def steps_per_epoch(self, world_size=1):
        """Number of batches one rank sees in an epoch."""
        raise NotImplementedError

    def train_batches(self, epoch, start=0, rank=0, world_size=1):
        """Yield this rank's batches of ``epoch`` from batch index ``start`` on."""
        raise NotImplementedError

    def train_step(self, model, batch):
        """Return ``(loss, num_examples)`` for one batch; the engine does backward/step."""
        raise NotImplementedError

    def evaluate_model(self, model, split="valid"):
        """Return ``{metric_name: float}`` or an ``EvalResult`` (metrics + extras) on a split; run
        without gradients by the engine."""
        raise NotImplementedError

    def artifacts(self):
        """Files to store beside checkpoints and exports: ``{file name: bytes or str}``."""
        return {}

    def input_spec(self):
        """``[paddle.static.InputSpec, ...]`` for ``paddle.jit.save``, or None if not exportable."""
        return None

    def export_model(self, model):
        """The layer to export (defaults to the trained model itself)."""
        return model

    # Dense tasks get train/evaluate/export from the shared engine.
    def train(self, args):
        from paddle_suite.engine import Trainer

        return Trainer(self.config, self, args).train()

    def evaluate(self, args):
        from paddle_suite.engine import Trainer

        return Trainer(self.config, self, args).evaluate(getattr(args, "split", "test")).summary()

    def export(self, args):
        from paddle_suite.engine import Trainer

        return Trainer(self.config, self, args).export(getattr(args, "output", None))
