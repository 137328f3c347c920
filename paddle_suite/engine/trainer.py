"""The one dygraph training loop shared by every dense task.

It always goes through ``paddle.distributed.fleet`` in collective mode, so the same code runs
as one process or under ``fleetrun --nproc_per_node=N`` (gloo on CPU, NCCL on GPU).

Exact resume: the loop counts global steps; a task yields the batches of an epoch from any
position deterministically, and paddle's RNG is reseeded from (seed, step) before every step,
so training N steps, stopping and resuming for N more gives the same parameters as 2N steps
in one go (dropout masks included). Checkpoints also carry the python/numpy/paddle RNG states
for tasks that use global randomness elsewhere.
"""
import json
import logging
import math
import os
import signal
import time

import numpy as np
import yaml
import paddle
from paddle.distributed import fleet

from paddle_suite.config import ConfigError, run_dir, save_config
from paddle_suite.engine import checkpoint as ckpt
from paddle_suite.engine.monitor import Monitor
from paddle_suite.engine.optim import build_optimizer

log = logging.getLogger("paddle_suite")


class TrainingDiverged(RuntimeError):
    pass


class _Stop(KeyboardInterrupt):
    """Raised from a SIGTERM handler so the loop checkpoints and exits as on Ctrl-C."""


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


def _all_finite(model):
    return all(bool(paddle.isfinite(p).all()) for p in model.parameters())


class Trainer:
    def __init__(self, config, task, args=None):
        self.config = config
        self.task = task
        self.g = config["Global"]
        self.progress = self.g["progress"] and not getattr(args, "no_progress", False)
        if not paddle.in_dynamic_mode():  # a static-graph task ran earlier in this process
            paddle.disable_static()
        set_device(self.g)
        paddle.seed(self.g["seed"])
        np.random.seed(self.g["seed"] % 2**32)
        self.rank, self.world = init_fleet()
        self.run_dir = run_dir(config)
        self.model = task.build_model()

    # ------------------------------------------------------------------ helpers
    def _checkpoint_to_resume(self):
        resume = self.g["resume"]
        if resume == "none":
            return None
        if resume == "auto":
            found = ckpt.list_checkpoints(self.run_dir)
            if found:
                self._check_same_run(found[-1])
            return found[-1] if found else None
        if not os.path.isfile(os.path.join(resume, "trainer.pkl")):
            raise FileNotFoundError(
                f"Global.resume={resume}: not a checkpoint directory (no trainer.pkl). "
                f"Use 'auto', 'none' or a directory under {ckpt.checkpoint_root(self.run_dir)}"
            )
        return resume

    def _check_same_run(self, checkpoint):
        """Refuse to auto-resume a run directory whose saved ``Arch`` or ``Global.seed`` differs from
        this config's: the weights would load (same shapes) into a different model, or a run of
        another seed would be reported as this one. Keys absent from the saved config (added to the
        schema since) are not compared."""
        saved_path = os.path.join(self.run_dir, "config.yaml")
        if not os.path.isfile(saved_path):
            return
        with open(saved_path) as handle:
            saved = yaml.safe_load(handle) or {}
        saved_arch, saved_global = saved.get("Arch", {}), saved.get("Global", {})
        changed = [f"Arch.{k}: {saved_arch[k]!r} -> {v!r}" for k, v in self.config["Arch"].items()
                   if k in saved_arch and saved_arch[k] != v]
        if "seed" in saved_global and saved_global["seed"] != self.g["seed"]:
            changed.append(f"Global.seed: {saved_global['seed']!r} -> {self.g['seed']!r}")
        if changed:
            raise ValueError(
                f"{self.run_dir} holds a different run ({'; '.join(changed)}); its checkpoint "
                f"{checkpoint} would load into this one. Set another Global.run_name / Global.output_dir, "
                "or Global.resume=none to start over in this directory."
            )

    def _total_steps(self, steps_per_epoch):
        if self.g["max_steps"] > 0:
            return self.g["max_steps"]
        return self.g["epochs"] * steps_per_epoch

    def _evaluate(self, model, split="valid"):
        model.eval()
        with paddle.no_grad():
            metrics = self.task.evaluate_model(model, split)
        model.train()
        return {k: float(v) for k, v in metrics.items()}

    def _improved(self, value, best):
        if best is None:
            return True
        return value > best if self.task.best_mode == "max" else value < best

    # ------------------------------------------------------------------ train
    def train(self):
        task, g = self.task, self.g
        steps_per_epoch = task.steps_per_epoch(self.world)
        if steps_per_epoch <= 0:
            raise ValueError("the training data gives no batches: check the dataset and DataLoader.batch_size")
        total = self._total_steps(steps_per_epoch)
        optimizer, scheduler = build_optimizer(self.config["Optimizer"], self.model.parameters(), total)

        # train_seconds: wall time of training (with its validations) summed over resumed sessions
        state = {"best": None, "best_metrics": None, "evals_without_improvement": 0, "train_seconds": 0.0}
        step = 0
        resume_from = self._checkpoint_to_resume()
        if resume_from:
            ckpt.load_model_weights(self.model, resume_from)
            ckpt.load_optimizer_state(optimizer, self.model, resume_from)
            saved = ckpt.load_trainer_state(resume_from)
            if scheduler is not None and saved.get("scheduler") is not None:
                scheduler.set_state_dict(saved["scheduler"])
            ckpt.set_rng_state(saved["rng"])
            step = saved["step"]
            state.update({k: saved[k] for k in state if k in saved})
            if "train_seconds" not in saved:  # a checkpoint from before the record: total unknown
                state["train_seconds"] = None
            log.info("resumed from %s at step %d", resume_from, step)
        earlier_seconds, session_start = state["train_seconds"], time.perf_counter()

        def record_time():
            if earlier_seconds is not None:
                state["train_seconds"] = earlier_seconds + time.perf_counter() - session_start

        model = fleet.distributed_model(self.model)
        optimizer = fleet.distributed_optimizer(optimizer)
        scaler = paddle.amp.GradScaler() if g["amp"] else None
        model.train()

        is_main = self.rank == 0
        if is_main:
            os.makedirs(self.run_dir, exist_ok=True)
            save_config(self.config, os.path.join(self.run_dir, "config.yaml"))
        monitor = Monitor(self.run_dir if is_main else None, total, step, self.progress and is_main, g["log_every"])
        artifacts = task.artifacts()

        def save(at_step):
            record_time()
            if not is_main:
                return None
            if not _all_finite(self.model):
                raise TrainingDiverged(
                    f"parameters are not finite at step {at_step}; no checkpoint written. "
                    f"Last good checkpoint: {(ckpt.list_checkpoints(self.run_dir) or ['none'])[-1]}"
                )
            return ckpt.save_checkpoint(
                self.run_dir, at_step, self.model, optimizer, scheduler, state, artifacts, g["keep_checkpoints"]
            )

        def evaluate_and_track(at_step):
            metrics = self._evaluate(model)
            monitor.scalars("valid", metrics, at_step)
            name = task.best_metric
            if name not in metrics:
                raise KeyError(f"task metric '{name}' not among evaluated metrics {sorted(metrics)}")
            if self._improved(metrics[name], state["best"]):
                state.update(best=metrics[name], best_metrics=metrics, evals_without_improvement=0)
                if is_main:
                    ckpt.save_best(self.run_dir, self.model, metrics, at_step, artifacts)
            else:
                state["evals_without_improvement"] += 1
            monitor.message(f"step {at_step}: {_headline(metrics)}")
            patience = g["early_stop_patience"]
            return patience > 0 and state["evals_without_improvement"] >= patience

        previous_sigterm = signal.signal(signal.SIGTERM, _raise_stop) if is_main else None
        stop_early = False
        last_saved = step
        try:
            while step < total and not stop_early:
                epoch, start = divmod(step, steps_per_epoch)
                for batch in task.train_batches(epoch, start, self.rank, self.world):
                    paddle.seed(_step_seed(g["seed"], step))
                    with paddle.amp.auto_cast(enable=scaler is not None):
                        loss, num_examples = task.train_step(model, batch)
                    loss_value = float(loss)
                    if not math.isfinite(loss_value):
                        last = (ckpt.list_checkpoints(self.run_dir) or ["none (no checkpoint was written yet)"])[-1]
                        raise TrainingDiverged(
                            f"loss is {loss_value} at step {step} (epoch {epoch}); training stopped. "
                            f"Last good checkpoint: {last}. Lower Optimizer.lr or enable Optimizer.grad_clip."
                        )
                    if scaler is not None:
                        scaler.scale(loss).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        loss.backward()
                        optimizer.step()
                    optimizer.clear_grad()
                    lr = optimizer.get_lr()
                    if scheduler is not None:
                        scheduler.step()
                    step += 1
                    monitor.step(step, loss_value, lr, num_examples * self.world)

                    end_of_epoch = step % steps_per_epoch == 0
                    if (g["eval_every"] and step % g["eval_every"] == 0) or (not g["eval_every"] and end_of_epoch):
                        stop_early = evaluate_and_track(step)
                    if (g["save_every"] and step % g["save_every"] == 0) or (not g["save_every"] and end_of_epoch):
                        save(step)
                        last_saved = step
                    if step >= total or stop_early:
                        break
            if stop_early:
                monitor.message(f"early stop at step {step}: no improvement in {g['early_stop_patience']} evaluations")
            if step != last_saved:
                save(step)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM via _Stop
            if is_main and step > 0:
                path = save(step)
                monitor.message(f"interrupted at step {step}; checkpoint {path}; rerun the same command to resume")
            raise
        finally:
            monitor.close()
            if previous_sigterm is not None:
                signal.signal(signal.SIGTERM, previous_sigterm)

        record_time()
        result = {"step": step, "best": state["best"], "best_metrics": state["best_metrics"], "run_dir": self.run_dir,
                  "train_seconds": state["train_seconds"]}
        if is_main:
            log.info("done: %d steps; best %s=%s; outputs in %s", step, task.best_metric, state["best"], self.run_dir)
            if g["test_split"]:
                result["test"] = self._test_best(g["test_split"])
        return result

    def _test_best(self, split):
        """Evaluate the best checkpoint (the final weights if none was selected) on ``split``."""
        best = os.path.join(self.run_dir, "best")
        model = restore_model(self.task, best) if os.path.isdir(best) else self.model
        metrics = self._evaluate(model, split)
        log.info("%s of %s: %s", split, best if model is not self.model else "final model", _headline(metrics))
        return metrics

    # ------------------------------------------------------------------ eval / export
    def _checkpoint_for_eval(self):
        chosen = self.g["checkpoint"]
        if chosen:
            return chosen
        best = os.path.join(self.run_dir, "best")
        if os.path.isfile(os.path.join(best, ckpt.MODEL_FILE)):
            return best
        found = ckpt.list_checkpoints(self.run_dir)
        if found:
            return found[-1]
        raise FileNotFoundError(
            f"no checkpoint to evaluate in {self.run_dir}: train first or pass -o Global.checkpoint=PATH"
        )

    def evaluate(self, split="test"):
        checkpoint = self._checkpoint_for_eval()
        ckpt.load_model_weights(self.model, checkpoint)
        metrics = self._evaluate(self.model, split)
        log.info("evaluated %s on %s", checkpoint, split)
        return {"checkpoint": checkpoint, "split": split, "metrics": metrics}

    def export(self, output=None):
        spec = self.task.input_spec()
        if spec is None:
            raise NotImplementedError(f"task '{self.g['task']}' does not define an inference input_spec")
        checkpoint = self._checkpoint_for_eval()
        ckpt.load_model_weights(self.model, checkpoint)
        self.model.eval()
        layer = self.task.export_model(self.model)
        output = output or os.path.join(self.run_dir, "inference", "model")
        static = paddle.jit.to_static(layer, input_spec=spec, full_graph=True)
        paddle.jit.save(static, output)
        for name, content in self.task.artifacts().items():
            mode = "wb" if isinstance(content, bytes) else "w"
            with open(os.path.join(os.path.dirname(output), name), mode) as handle:
                handle.write(content)
        with open(os.path.join(os.path.dirname(output), "export.json"), "w") as handle:
            json.dump({"checkpoint": checkpoint, "config": self.config.get("_source")}, handle, indent=2)
        return output


def _headline(metrics, limit=8):
    """Top-level metrics first (``mrr`` before ``N-1/head/mrr``), for one readable log line."""
    ordered = sorted(metrics.items(), key=lambda kv: (kv[0].count("/"), kv[0]))
    return ", ".join(f"{k}={v:.4f}" for k, v in ordered[:limit])


def _raise_stop(signum, frame):
    raise _Stop(f"signal {signum}")
