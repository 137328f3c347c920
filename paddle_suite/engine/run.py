"""A run directory and everything written into it, in one place for every task.

Layout of ``<Global.output_dir>/<Global.run_name>``::

    config.yaml         the resolved config of the latest start
    checkpoints/        step_<N>/ (dense tasks) or the task's own checkpoint folders
    best/               best model by the task's metric, with metrics.json
    metrics.jsonl       one JSON object per logged record ({"step": .., "prefix": .., <metric>: ..})
    vdl/                VisualDL logs of the same records
    inference/          exported models

``Run`` owns these paths, the config snapshot, checkpoint resolution (``best``, ``latest`` or a
path), the same-run check of auto-resume, artifact files and the metrics sink; ``load_run`` opens a
finished run from its directory or any checkpoint inside it. Tasks and tools never build these
paths themselves.
"""
import json
import logging
import os
import re

import yaml

from paddle_suite.config import save_config
from paddle_suite.io import atomic_write

log = logging.getLogger("paddle_suite")

CHECKPOINTS = "checkpoints"
BEST = "best"
CONFIG_FILE = "config.yaml"
METRICS_FILE = "metrics.jsonl"
BEST_METRICS_FILE = "metrics.json"


MODEL_FILE = "model.pdparams"
_STEP_DIR = re.compile(r"^step_(\d+)$")


def list_checkpoints(run_directory):
    """The ``checkpoints/step_N`` directories of a run (complete ones: with ``trainer.pkl``), oldest first."""
    root = os.path.join(run_directory, CHECKPOINTS)
    if not os.path.isdir(root):
        return []
    found = []
    for name in os.listdir(root):
        match = _STEP_DIR.match(name)
        if match and os.path.isfile(os.path.join(root, name, "trainer.pkl")):
            found.append((int(match.group(1)), os.path.join(root, name)))
    return [path for _, path in sorted(found)]


class RunError(FileNotFoundError):
    """A run directory or checkpoint that is missing or unusable; the message says what to do."""


class OtherRun(ValueError):
    """The run directory holds a run of another model or seed (the message says how to proceed)."""


class Run:
    """The run directory of a config (``Global.output_dir`` / ``Global.run_name``), or ``directory``."""

    def __init__(self, config, directory=None):
        self.config = config
        self.dir = str(directory) if directory is not None else os.path.join(
            config["Global"]["output_dir"], config["Global"]["run_name"])

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

    def best_metrics(self):
        """``{"step": N, "metrics": {...}}`` of the best model, or None when there is none."""
        return read_json(self.path(BEST, BEST_METRICS_FILE))

    def check_same_run(self, checkpoint):
        """Refuse to resume ``checkpoint`` when the saved config's ``Arch`` or ``Global.seed`` differs
        from this one's: the weights would load (same shapes) into a different model, or a run of
        another seed would be reported as this one."""
        saved = self.saved_config()
        changed = [] if saved is None else changed_settings(saved, self.config)
        if changed:
            raise OtherRun(
                f"{self.dir} holds a different run ({'; '.join(changed)}); its checkpoint "
                f"{checkpoint} would load into this one. Set another Global.run_name / Global.output_dir, "
                "or Global.resume=none to start over in this directory."
            )

    # ------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self):
        """The newest ``checkpoints/step_N`` directory, or None."""
        return (list_checkpoints(self.dir) or [None])[-1]

    def has_best_model(self):
        return os.path.isfile(os.path.join(self.best_dir, MODEL_FILE))

    def resolve_checkpoint(self, spec=None):
        """A checkpoint path from ``spec``: a path, ``"best"``, ``"latest"``, or None.

        None means ``Global.checkpoint`` if set, else ``best`` if it holds a model, else the newest
        checkpoint. Raises ``RunError`` naming what was tried.
        """
        spec = spec or self.config["Global"].get("checkpoint")
        if spec == "latest":
            found = self.latest_checkpoint()
            if found is None:
                raise RunError(f"no checkpoint in {self.checkpoints_dir}: train first")
            return found
        if spec == BEST:
            if not self.has_best_model():
                raise RunError(f"no best model in {self.best_dir}: train with evaluation first")
            return self.best_dir
        if spec:
            if not os.path.exists(spec):
                raise RunError(f"checkpoint {spec} does not exist")
            return str(spec)
        if self.has_best_model():
            return self.best_dir
        found = self.latest_checkpoint()
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


def changed_settings(saved, config):
    """``["Arch.k: 10 -> 20", "Global.seed: 42 -> 7"]``: what makes ``config`` another run than the
    saved config of a run directory. Keys absent from ``saved`` (added to the schema since) are not
    compared."""
    saved_arch, saved_global = saved.get("Arch") or {}, saved.get("Global") or {}
    changed = [f"Arch.{k}: {saved_arch[k]!r} -> {v!r}" for k, v in (config.get("Arch") or {}).items()
               if k in saved_arch and saved_arch[k] != v]
    seed = config["Global"]["seed"]
    if "seed" in saved_global and saved_global["seed"] != seed:
        changed.append(f"Global.seed: {saved_global['seed']!r} -> {seed!r}")
    return changed


def find_run_dir(path):
    """The run directory holding ``path``: the run directory itself, its ``best/``, a
    ``checkpoints/step_N/`` or a ``.pdparams`` file in one of them (the nearest ``config.yaml`` up)."""
    start = os.path.abspath(os.fspath(path))
    if not os.path.exists(start):
        raise RunError(f"checkpoint {path} does not exist")
    if start.endswith(".pdparams"):
        start = os.path.dirname(start)
    folder = start
    for _ in range(3):  # run/, run/best, run/checkpoints/step_N
        if os.path.isfile(os.path.join(folder, CONFIG_FILE)):
            return folder
        folder = os.path.dirname(folder)
    raise RunError(f"no {CONFIG_FILE} found beside or above {path}: pass the training config with -c")


def load_run(path):
    """A finished run, from its directory or any checkpoint inside it: a ``Run`` whose ``config`` is the
    saved snapshot (``best_metrics()`` gives the best model's metrics)."""
    directory = find_run_dir(path)
    run = Run({}, directory)
    run.config = run.saved_config()
    return run


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
            _drop_cut_off_record(os.path.join(run_directory, METRICS_FILE))
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


def _drop_cut_off_record(path):
    """Truncate a last line without its newline: a record the previous process was killed while
    writing. Appending after it would glue the next record onto the fragment."""
    if not os.path.exists(path):
        return
    with open(path, "rb+") as handle:
        end = handle.seek(0, os.SEEK_END)
        tail_start = end
        while tail_start > 0:  # back to the last newline, a block at a time
            block_start = max(0, tail_start - 65536)
            handle.seek(block_start)
            newline = handle.read(tail_start - block_start).rfind(b"\n")
            if newline >= 0:
                tail_start = block_start + newline + 1
                break
            tail_start = block_start
        if tail_start < end:
            log.warning("%s: dropping its last %d bytes, a record cut off when the run that wrote it was killed",
                        path, end - tail_start)
            handle.truncate(tail_start)


def read_metrics(run_directory, prefix=None):
    """The records of a run's ``metrics.jsonl`` (optionally one prefix), oldest first.

    A last line without its newline is a record still being written (or cut off by a kill): not
    read. Any other line that is not a JSON object is an error naming the file and line."""
    path = os.path.join(run_directory, METRICS_FILE)
    if not os.path.exists(path):
        return []
    records = []
    with open(path) as handle:
        for number, line in enumerate(handle, 1):
            if not line.endswith("\n") or not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}, line {number}: not a JSON record ({error}); the file is written "
                                 "only by the run, so it was edited or damaged: repair or delete that line") from None
    return [r for r in records if prefix is None or r.get("prefix") == prefix]
