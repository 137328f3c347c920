"""Checkpoint directories of dense tasks, written atomically into a ``Run`` (``engine/run.py``)::

    checkpoints/step_00001200/   model.pdparams, optimizer.pdopt, trainer.pkl, task artifacts
    best/                        model.pdparams, metrics.json, task artifacts

A checkpoint directory is built under a temporary name and renamed into place, so a crash
never leaves a half-written checkpoint that ``resume: auto`` would pick up.
"""
import os
import pickle
import random
import shutil

import numpy as np
import paddle

from paddle_suite.engine.run import BEST_METRICS_FILE, MODEL_FILE, Run, list_checkpoints, write_json
from paddle_suite.io import atomic_directory

def rng_state():
    return {"python": random.getstate(), "numpy": np.random.get_state(), "paddle": paddle.get_rng_state()}


def set_rng_state(state):
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    paddle.set_rng_state(state["paddle"])


def save_checkpoint(run, step, model, optimizer, scheduler, trainer_state, artifacts, keep):
    """Write ``checkpoints/step_<step>`` of ``run`` atomically and keep only the newest ``keep`` ones."""
    target = os.path.join(run.checkpoints_dir, f"step_{step:08d}")
    with atomic_directory(target) as tmp:
        paddle.save(model.state_dict(), os.path.join(tmp, MODEL_FILE))
        paddle.save(portable_optimizer_state(optimizer, model), os.path.join(tmp, "optimizer.pdopt"))
        state = dict(trainer_state, step=step, rng=rng_state())
        state["scheduler"] = scheduler.state_dict() if scheduler is not None else None
        with open(os.path.join(tmp, "trainer.pkl"), "wb") as handle:
            pickle.dump(state, handle)
        Run.write_artifacts(tmp, artifacts)
    for old in list_checkpoints(run.dir)[:-keep] if keep > 0 else []:
        shutil.rmtree(old, ignore_errors=True)
    return target


def save_best(run, model, metrics, step, artifacts):
    """Replace ``best/`` of ``run`` atomically: weights, ``metrics.json`` and the task's artifacts."""
    with atomic_directory(run.best_dir) as tmp:
        paddle.save(model.state_dict(), os.path.join(tmp, MODEL_FILE))
        write_json(os.path.join(tmp, BEST_METRICS_FILE), {"step": step, "metrics": metrics})
        Run.write_artifacts(tmp, artifacts)
    return run.best_dir


def _rename_keys(state, mapping):
    """Rename accumulator keys ``<param name>_<accumulator>`` by swapping the parameter prefix."""
    prefixes = sorted(mapping, key=len, reverse=True)
    renamed = {}
    for key, value in state.items():
        new_key = key
        for prefix in prefixes:
            if key == prefix or key.startswith(prefix + "_"):
                new_key = mapping[prefix] + key[len(prefix):]
                break
        renamed[new_key] = value
    return renamed


def portable_optimizer_state(optimizer, model):
    """Optimizer state keyed by structured parameter names (``layer.0.weight``).

    Paddle keys accumulators by generated parameter names (``linear_4.w_0``), which differ
    between two builds of the same model in one process; structured names do not.
    """
    return _rename_keys(optimizer.state_dict(), {p.name: "@" + n for n, p in model.named_parameters()})


def load_optimizer_state(optimizer, model, checkpoint_dir):
    state = paddle.load(os.path.join(checkpoint_dir, "optimizer.pdopt"))
    optimizer.set_state_dict(_rename_keys(state, {"@" + n: p.name for n, p in model.named_parameters()}))


def load_trainer_state(checkpoint_dir):
    with open(os.path.join(checkpoint_dir, "trainer.pkl"), "rb") as handle:
        return pickle.load(handle)


def model_file(checkpoint):
    """Accept a checkpoint directory or a ``.pdparams`` file; fail clearly otherwise."""
    path = checkpoint if checkpoint.endswith(".pdparams") else os.path.join(checkpoint, MODEL_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"no model weights at {path}: give a checkpoint directory (…/checkpoints/step_N or …/best) "
            "or a .pdparams file with -o Global.checkpoint=PATH"
        )
    return path


def load_model_weights(model, checkpoint):
    """Load weights, refusing silently-skipped keys or shapes (paddle only warns about those)."""
    state = paddle.load(model_file(checkpoint))
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [
        f"{k} {list(state[k].shape)} vs {list(own[k].shape)}"
        for k in own
        if k in state and list(state[k].shape) != list(own[k].shape)
    ]
    if missing or unexpected or mismatched:
        raise ValueError(
            f"checkpoint {checkpoint} does not match the model built from the config: "
            f"missing {missing}, unexpected {unexpected}, shape mismatch {mismatched}"
        )
    model.set_state_dict(state)
