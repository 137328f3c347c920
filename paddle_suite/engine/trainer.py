"""The one dygraph training loop shared by every dense task.

It always goes through ``paddle.distributed.fleet`` in collective mode, so the same code runs
as one process or under ``fleetrun --nproc_per_node=N`` (gloo on CPU, NCCL on GPU).

Exact resume: the loop counts global steps; a task yields the batches of an epoch from any
position deterministically, and paddle's RNG is reseeded from (seed, step) before every step,
so training N steps, stopping and resuming for N more gives the same parameters as 2N steps
in one go (dropout masks included). Checkpoints also carry the python/numpy/paddle RNG states
for tasks that use global randomness elsewhere.

``Trainer.train`` is the bare loop; validation, best-model tracking, early stopping, checkpoints,
monitoring and the divergence guard are callbacks (``engine/callbacks.py``), and ``Loop`` is the
state they see. The run directory is a ``Run`` (``engine/run.py``).
"""
import logging
import os
import signal
import time

import numpy as np
import paddle
import psutil
from paddle.distributed import fleet
from tqdm import tqdm

from paddle_suite.config import ConfigError
from paddle_suite.engine import checkpoint as ckpt
from paddle_suite.engine.callbacks import Checkpointing, DivergenceGuard, TrainingDiverged, Validation
from paddle_suite.engine.monitor import Monitor, _headline
from paddle_suite.engine.optim import build_optimizer
from paddle_suite.engine.run import Run, write_json
from paddle_suite.task import EvalResult


def cpu_seconds():
    """User + system CPU seconds of this process and its children (data-loader workers, live or ended)."""
    me, ended = psutil.Process(), os.times()
    total = sum(me.cpu_times()[:2]) + ended.children_user + ended.children_system
    for child in me.children(recursive=True):
        try:
            total += sum(child.cpu_times()[:2])
        except psutil.NoSuchProcess:  # a worker that ended between listing and reading
            pass
    return total

log = logging.getLogger("paddle_suite")

__all__ = ["Loop", "Trainer", "TrainingDiverged", "restore_model"]


class _Stop(KeyboardInterrupt):
    """Raised after a SIGTERM so the loop checkpoints and exits as on Ctrl-C."""


def init_fleet():
    """Initialise Fleet collective mode; return (rank, world_size)."""
    fleet.init(is_collective=True)
    return fleet.worker_index(), fleet.worker_num()


def set_device(global_cfg):
    if global_cfg["device"] == "gpu":
        if not paddle.is_compiled_with_cuda():
            raise ConfigError(
                "Global.device=gpu but this paddle has no CUDA: install paddlepaddle-gpu==2.6.2 "
                "or set -o Global.device=cpu"
            )
        paddle.set_device(f"gpu:{os.environ.get('FLAGS_selected_gpus', '0').split(',')[0]}")
    else:
        if global_cfg["amp"]:
            raise ConfigError("Global.amp=True needs Global.device=gpu (mixed precision has no benefit on CPU)")
        paddle.set_device("cpu")


def restore_model(task, checkpoint):
    """Build the task's model and load weights from a checkpoint directory or .pdparams file."""
    model = task.build_model()
    ckpt.load_model_weights(model, checkpoint)
    model.eval()
    return model


def _step_seed(seed, step):
    return (seed * 1_000_003 + step) % (2**31 - 1)


def evaluate_model(task, model, split):
    """``task.evaluate_model`` without gradients, in eval mode, as an ``EvalResult``."""
    model.eval()
    with paddle.no_grad():
        value = task.evaluate_model(model, split)
    model.train()
    return EvalResult.of(value, split)


class Loop:
    """The state of a training run that callbacks read and change.

    ``step`` counts finished optimizer steps; ``state`` (best metric, best metrics, evaluations
    without improvement, train_seconds) is saved in every checkpoint and restored on resume.
    ``model`` is the task's layer, ``wrapped`` the Fleet-wrapped one that the steps run through.
    """

    def __init__(self, trainer, optimizer, scheduler, steps_per_epoch, total):
        self.trainer, self.task, self.run = trainer, trainer.task, trainer.run
        self.model, self.wrapped = trainer.model, trainer.model
        self.optimizer, self.scheduler = optimizer, scheduler
        self.steps_per_epoch, self.total = steps_per_epoch, total
        self.artifacts = trainer.task.artifacts()  # files stored beside every checkpoint
        self.is_main, self.world, self.progress = trainer.rank == 0, trainer.world, trainer.progress
        self.step = self.epoch = self.num_examples = 0
        self.loss = self.lr = 0.0
        self.should_stop = False
        self.callbacks = []
        # train_seconds: wall time of training (with its validations) summed over resumed sessions;
        # train_cpu_seconds: CPU time of this process and its loader workers over the same span, the
        # run's cost on an idle machine even when it shared the cores (or was paused) on the way
        self.state = {"best": None, "best_metrics": None, "evals_without_improvement": 0, "train_seconds": 0.0,
                      "train_cpu_seconds": 0.0}
        self._earlier_seconds = self._session_start = None
        self._earlier_cpu = self._session_cpu = None

    @property
    def end_of_epoch(self):
        return self.step % self.steps_per_epoch == 0

    def emit(self, hook, *args):
        for callback in self.callbacks:
            getattr(callback, hook)(self, *args)

    def start_clock(self):
        self._earlier_seconds, self._session_start = self.state["train_seconds"], time.perf_counter()
        self._earlier_cpu, self._session_cpu = self.state["train_cpu_seconds"], cpu_seconds()

    def record_time(self):
        if self._earlier_seconds is not None:  # None: resumed from a checkpoint without the record
            self.state["train_seconds"] = self._earlier_seconds + time.perf_counter() - self._session_start
        if self._earlier_cpu is not None:
            self.state["train_cpu_seconds"] = self._earlier_cpu + cpu_seconds() - self._session_cpu

    def evaluate(self, split="valid"):
        """Evaluate the current weights on ``split`` and hand the result to every callback."""
        result = evaluate_model(self.task, self.wrapped, split)
        self.emit("on_evaluate", result)
        return result

    def parameters_finite(self):
        return all(bool(paddle.isfinite(p).all()) for p in self.model.parameters())

    def save_checkpoint(self):
        return ckpt.save_checkpoint(self.run, self.step, self.model, self.optimizer, self.scheduler, self.state,
                                    self.artifacts, self.trainer.g["keep_checkpoints"])

    def save_best(self, metrics):
        return ckpt.save_best(self.run, self.model, metrics, self.step, self.artifacts)

    def message(self, text):
        if self.is_main:
            (tqdm.write if self.progress else log.info)(text)


class Trainer:
    def __init__(self, config, task, args=None, callbacks=()):
        self.config = config
        self.task = task
        self.g = config["Global"]
        self.progress = self.g["progress"] and not getattr(args, "no_progress", False)
        self.user_callbacks = list(callbacks)
        if not paddle.in_dynamic_mode():  # a static-graph task ran earlier in this process
            paddle.disable_static()
        set_device(self.g)
        paddle.seed(self.g["seed"])
        np.random.seed(self.g["seed"] % 2**32)
        self.rank, self.world = init_fleet()
        self.run = Run(config)
        self.run_dir = self.run.dir
        self.model = task.build_model()

    # ------------------------------------------------------------------ setup
    def _checkpoint_to_resume(self):
        resume = self.g["resume"]
        if resume == "none":
            return None
        if resume == "auto":
            found = self.run.latest_checkpoint()
            if found:
                self.run.check_same_run(found)
            return found
        if not os.path.isfile(os.path.join(resume, "trainer.pkl")):
            raise FileNotFoundError(
                f"Global.resume={resume}: not a checkpoint directory (no trainer.pkl). "
                f"Use 'auto', 'none' or a directory under {self.run.checkpoints_dir}"
            )
        return resume

    def _total_steps(self, steps_per_epoch):
        if self.g["max_steps"] > 0:
            return self.g["max_steps"]
        return self.g["epochs"] * steps_per_epoch

    def _resume(self, loop, checkpoint):
        ckpt.load_model_weights(self.model, checkpoint)
        ckpt.load_optimizer_state(loop.optimizer, self.model, checkpoint)
        saved = ckpt.load_trainer_state(checkpoint)
        if loop.scheduler is not None and saved.get("scheduler") is not None:
            loop.scheduler.set_state_dict(saved["scheduler"])
        ckpt.set_rng_state(saved["rng"])
        loop.step = saved["step"]
        loop.state.update({k: saved[k] for k in loop.state if k in saved})
        for key in ("train_seconds", "train_cpu_seconds"):
            if key not in saved:  # a checkpoint from before the record: total unknown
                loop.state[key] = None
        log.info("resumed from %s at step %d", checkpoint, loop.step)

    def _start(self):
        """The ``Loop`` of this run: optimizer, resumed state, Fleet wrappers, callbacks, config snapshot."""
        steps_per_epoch = self.task.steps_per_epoch(self.world)
        if steps_per_epoch <= 0:
            raise ValueError("the training data gives no batches: check the dataset and DataLoader.batch_size")
        total = self._total_steps(steps_per_epoch)
        optimizer, scheduler = build_optimizer(self.config["Optimizer"], self.model, total)
        loop = Loop(self, optimizer, scheduler, steps_per_epoch, total)
        resume_from = self._checkpoint_to_resume()
        if resume_from:
            self._resume(loop, resume_from)
        loop.start_clock()
        loop.wrapped = fleet.distributed_model(self.model)
        loop.optimizer = fleet.distributed_optimizer(optimizer)
        self.scaler = paddle.amp.GradScaler() if self.g["amp"] else None
        loop.wrapped.train()
        if loop.is_main:
            self.run.create()
        g = self.g
        loop.callbacks = [DivergenceGuard(), Monitor(self.progress, g["log_every"]),
                          Validation(g["eval_every"], g["early_stop_patience"], self.task.best_metric,
                                     self.task.best_mode),
                          Checkpointing(g["save_every"]), *self.user_callbacks]
        return loop

    # ------------------------------------------------------------------ train
    def train(self):
        loop = self._start()
        # SIGTERM is noted and acted on between steps: raised inside a paddle kernel or PyLayer it
        # would surface as an OSError and the run would end without its checkpoint. Every rank notes
        # it (fleetrun forwards it to all), and the ranks stop at the same step (_signalled), or a rank
        # that left early would break the main rank's next all-reduce before it could save.
        terminated = []
        previous_sigterm = signal.signal(signal.SIGTERM, lambda signum, frame: terminated.append(signum))
        try:
            loop.emit("on_train_start")
            while loop.step < loop.total and not loop.should_stop:
                loop.epoch, start = divmod(loop.step, loop.steps_per_epoch)
                for batch in self.task.train_batches(loop.epoch, start, self.rank, self.world):
                    self._step(loop, batch)
                    loop.emit("on_step_end")
                    if self._signalled(terminated):
                        raise _Stop(f"signal {terminated[0] if terminated else 'on another rank'}")
                    if loop.step >= loop.total or loop.should_stop:
                        break
            loop.emit("on_train_end")
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM via _Stop
            loop.emit("on_interrupt")
            raise
        finally:
            loop.emit("on_exit")
            signal.signal(signal.SIGTERM, previous_sigterm)
        loop.record_time()
        state = loop.state
        result = {"step": loop.step, "best": state["best"], "best_metrics": state["best_metrics"],
                  "run_dir": self.run.dir, "train_seconds": state["train_seconds"],
                  "train_cpu_seconds": state["train_cpu_seconds"]}
        if loop.is_main:
            log.info("done: %d steps; best %s=%s; outputs in %s", loop.step, self.task.best_metric, state["best"],
                     self.run.dir)
            if self.g["test_split"]:
                result["test"] = self._test_best(self.g["test_split"]).metrics
        return result

    def _signalled(self, terminated):
        """Whether any rank has received SIGTERM (one all-reduce of a flag per step when world > 1)."""
        if self.world == 1:
            return bool(terminated)
        flag = paddle.to_tensor([1 if terminated else 0], dtype="int32")
        paddle.distributed.all_reduce(flag, op=paddle.distributed.ReduceOp.MAX)
        return bool(flag.item())

    def _step(self, loop, batch):
        """One optimizer step on ``batch``, reseeding paddle's RNG from (seed, step) first (exact resume)."""
        paddle.seed(_step_seed(self.g["seed"], loop.step))
        with paddle.amp.auto_cast(enable=self.scaler is not None):
            loss, num_examples = self.task.train_step(loop.wrapped, batch)
        loop.loss = float(loss)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(loop.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            loop.optimizer.step()
        loop.optimizer.clear_grad()
        loop.lr = loop.optimizer.get_lr()
        if loop.scheduler is not None:
            loop.scheduler.step()
        loop.step += 1
        loop.num_examples = num_examples * self.world

    def _test_best(self, split):
        """Evaluate the best checkpoint (the final weights if none was selected) on ``split``."""
        best = self.run.best_dir
        model = restore_model(self.task, best) if os.path.isdir(best) else self.model
        result = evaluate_model(self.task, model, split)
        log.info("%s of %s: %s", split, best if model is not self.model else "final model", _headline(result.metrics))
        return result

    # ------------------------------------------------------------------ eval / export
    def evaluate(self, split="test"):
        """An ``EvalResult`` (metrics, the task's extras, ``checkpoint``) of the checkpoint that
        ``Global.checkpoint`` names, else the best one, else the newest."""
        checkpoint = self.run.resolve_checkpoint()
        ckpt.load_model_weights(self.model, checkpoint)
        result = evaluate_model(self.task, self.model, split)
        result.checkpoint = checkpoint
        log.info("evaluated %s on %s", checkpoint, split)
        return result

    def export(self, output=None):
        spec = self.task.input_spec()
        if spec is None:
            raise NotImplementedError(f"task '{self.g['task']}' does not define an inference input_spec")
        checkpoint = self.run.resolve_checkpoint()
        ckpt.load_model_weights(self.model, checkpoint)
        self.model.eval()
        layer = self.task.export_model(self.model)
        output = output or self.run.path("inference", "model")
        static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
        paddle.jit.save(static, output)
        directory = os.path.dirname(output)
        Run.write_artifacts(directory, self.task.artifacts())
        write_json(os.path.join(directory, "export.json"), {"checkpoint": checkpoint, "config": self.config.get("_source")})
        return output

