"""A run directory and everything written into it, in one place for every task.

Layout of ``<Global.output_dir>/<Global.run_name>``::

    config.yaml         the resolved config of the latest start
    checkpoints/        step_<N>/ (dense tasks) or the task's own checkpoint folders
    best/               best model by the task's metric, with metrics.json
    metrics.jsonl       one JSON object per logged record ({"step": .., "prefix": .., <metric>: ..})
    vdl/                VisualDL logs of the same records
    inference/          exported models

``Run`` owns these paths, the config snapshot, checkpoint resolution (``best``, ``latest`` or a
path), artifact files and the metrics sink; tasks and tools never build these paths themselves.
"""
import json
import logging
import os

import yaml

from paddle_suite.config import save_config
from paddle_suite.io import atomic_write

log = logging.getLogger("paddle_suite")

CHECKPOINTS = "checkpoints"
BEST = "best"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"


class RunError(FileNotFoundError):
    """A run directory or checkpoint that is missing or unusable; the message says what to do."""


class Run:
    """The run directory of a config (``Global.output_dir`` / ``Global.run_name``)."""

    def __init__(self, config):
        self.config = config
        self.dir = os.path.join(config["Global"]["output_dir"], config["Global"]["run_name"])

    # ------------------------------------------------------------------ paths
    @property
    def checkpoints_dir(self):
        return os.path.join(self.dir, CHECKPOINTS)

    @property
    def best_dir(self):
        return os.path.join(self.dir, BEST)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    def create(self):
        """Make the directory and snapshot the config (what the run really used)."""
        os.makedirs(self.dir, exist_ok=True)
        save_config(self.config, self.path(CONFIG_FILE))
        return self

    def saved_config(self):
        """The config snapshot of an earlier start, or None."""
        path = self.path(CONFIG_FILE)
        if not os.path.isfile(path):
            return None
        with open(path) as handle:
            return yaml.safe_load(handle) or {}

    # ------------------------------------------------------------------ checkpoints
    def resolve_checkpoint(self, spec=None, latest=None, has_model=None):
        """A checkpoint path from ``spec``: a path, ``"best"``, ``"latest"``, or None.

        None means ``Global.checkpoint`` if set, else ``best`` if it holds a model, else the newest
        checkpoint. ``latest`` is a callable giving the newest checkpoint path (or None) and
        ``has_model(path)`` tells whether a directory holds weights; dense tasks get both from
        ``engine.checkpoint``. Raises ``RunError`` naming what was tried.
        """
        from paddle_suite.engine import checkpoint as ckpt

        latest = latest or (lambda: (ckpt.list_checkpoints(self.dir) or [None])[-1])
        has_model = has_model or (lambda path: os.path.isfile(os.path.join(path, ckpt.MODEL_FILE)))
        spec = spec or self.config["Global"].get("checkpoint")
        if spec == "latest":
            found = latest()
            if found is None:
                raise RunError(f"no checkpoint in {self.checkpoints_dir}: train first")
            return found
        if spec == BEST:
            if not has_model(self.best_dir):
                raise RunError(f"no best model in {self.best_dir}: train with evaluation first")
            return self.best_dir
        if spec:
            if not os.path.exists(spec):
                raise RunError(f"checkpoint {spec} does not exist")
            return str(spec)
        if has_model(self.best_dir):
            return self.best_dir
        found = latest()
        if found is not None:
            return found
        raise RunError(f"no checkpoint in {self.dir}: train first or pass -o Global.checkpoint=PATH")

    # ------------------------------------------------------------------ files
    @staticmethod
    def write_artifacts(directory, artifacts):
        """Write ``{file name: bytes or str}`` into ``directory`` (each file atomically)."""
        for name, content in (artifacts or {}).items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with atomic_write(os.path.join(directory, name), mode) as handle:
                handle.write(content)

    def write_json(self, relative_path, value):
        path = self.path(relative_path)
        write_json(path, value)
        return path

    def metrics(self, enabled=True):
        return MetricsSink(self.dir if enabled else None)


def write_json(path, value):
    with atomic_write(path) as handle:
        json.dump(value, handle, indent=2, default=_jsonable)


def read_json(path):
    """The JSON value at ``path``, or None when the file does not exist."""
    if not os.path.exists(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _jsonable(value):
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


class MetricsSink:
    """Scalars to VisualDL (``vdl/``) and ``metrics.jsonl``; a no-op without a directory (non-zero ranks)."""

    def __init__(self, run_directory):
        self.directory = run_directory
        self.writer = None
        if run_directory is not None:
            from visualdl import LogWriter

            os.makedirs(run_directory, exist_ok=True)
            self.writer = LogWriter(logdir=os.path.join(run_directory, "vdl"))

    def log(self, prefix, values, step):
        """Record ``{name: number}`` as ``<prefix>/<name>`` at ``step``; non-numbers go to the JSON only."""
        if self.writer is None:
            return
        numbers = {k: float(v) for k, v in values.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        for name, value in numbers.items():
            self.writer.add_scalar(tag=f"{prefix}/{name}", value=value, step=step)
        with open(os.path.join(self.directory, METRICS_FILE), "a") as handle:
            handle.write(json.dumps({"step": step, "prefix": prefix, **values}, default=_jsonable) + "\n")

    def flush(self):
        if self.writer is not None:
            self.writer.flush()

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None


def read_metrics(run_directory, prefix=None):
    """The records of a run's ``metrics.jsonl`` (optionally one prefix), oldest first."""
    path = os.path.join(run_directory, METRICS_FILE)
    if not os.path.exists(path):
        return []
    with open(path) as handle:
        records = [json.loads(line) for line in handle if line.strip()]
    return [r for r in records if prefix is None or r.get("prefix") == prefix]
