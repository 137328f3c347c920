"""What the training loop does besides forward, backward and the optimizer step, one callback each.

A ``Callback`` overrides any of these hooks (``loop`` is the running ``Loop``):

* ``on_train_start(loop)``: after resuming, before the first step;
* ``on_step_end(loop)``: after each optimizer step (``loop.step`` counts finished steps;
  ``loop.loss``, ``loop.lr``, ``loop.num_examples`` describe the step);
* ``on_evaluate(loop, result)``: after each validation, ``result`` an ``EvalResult`` (metrics and
  the task's extras, e.g. KGE ranks);
* ``on_train_end(loop)``: every step done or training stopped early, before the final test;
* ``on_interrupt(loop)``: Ctrl-C or SIGTERM; the ``KeyboardInterrupt`` propagates afterwards;
* ``on_exit(loop)``: always last, after success, interrupt or error: release resources.

The trainer runs its own callbacks first, in this order, then the user's
(``Trainer(..., callbacks=[...])``), so a user callback sees a step after its checkpoint is written:
``DivergenceGuard`` (a NaN or infinite loss stops training), ``Monitor`` (``engine/monitor.py``:
progress bar, log lines, VisualDL + ``metrics.jsonl``), ``Validation`` (evaluates on ``valid``
every ``Global.eval_every`` steps, keeps ``best/``, stops early), ``Checkpointing``
(``checkpoints/step_N`` every ``Global.save_every`` steps, at the end and on interrupt).
A callback may stop training by setting ``loop.should_stop``.
"""
import logging
import math

log = logging.getLogger("paddle_suite")


class TrainingDiverged(RuntimeError):
    """A non-finite loss or parameters; the message names the step and the last good checkpoint."""


class Callback:
    def on_train_start(self, loop):
        pass

    def on_step_end(self, loop):
        pass

    def on_evaluate(self, loop, result):
        pass

    def on_train_end(self, loop):
        pass

    def on_interrupt(self, loop):
        pass

    def on_exit(self, loop):
        pass


def _due(every, step, end_of_epoch):
    """A periodic action: every ``every`` steps, or at the end of each epoch when ``every`` is 0."""
    return step % every == 0 if every else end_of_epoch


def _last_checkpoint(loop):
    return loop.run.latest_checkpoint() or "none (no checkpoint was written yet)"


class DivergenceGuard(Callback):
    """Stops at the first non-finite loss, naming the step and the last good checkpoint."""

    def on_step_end(self, loop):
        if not math.isfinite(loop.loss):
            raise TrainingDiverged(
                f"loss is {loop.loss} at step {loop.step - 1} (epoch {loop.epoch}); training stopped. "
                f"Last good checkpoint: {_last_checkpoint(loop)}. Lower Optimizer.lr or enable Optimizer.grad_clip."
            )


class Validation(Callback):
    """Evaluates on ``valid`` on schedule, saves the best model, stops after ``Global.early_stop_patience``
    evaluations without improvement (0 = never)."""

    def __init__(self, every, patience, metric, mode):
        self.every, self.patience, self.metric, self.mode = every, patience, metric, mode

    def on_step_end(self, loop):
        if _due(self.every, loop.step, loop.end_of_epoch):
            loop.evaluate("valid")

    def improved(self, value, best):
        if best is None:
            return True
        return value > best if self.mode == "max" else value < best

    def on_evaluate(self, loop, result):
        if result.split != "valid":
            return
        state = loop.state
        if self.metric not in result.metrics:
            raise KeyError(f"task metric '{self.metric}' not among evaluated metrics {sorted(result.metrics)}")
        value = result.metrics[self.metric]
        if self.improved(value, state["best"]):
            state.update(best=value, best_metrics=result.metrics, evals_without_improvement=0)
            if loop.is_main:
                loop.save_best(result.metrics)
        else:
            state["evals_without_improvement"] += 1
        if self.patience > 0 and state["evals_without_improvement"] >= self.patience:
            loop.should_stop = True
            loop.message(f"early stop at step {loop.step}: no improvement in {self.patience} evaluations")


class Checkpointing(Callback):
    """``checkpoints/step_N`` every ``Global.save_every`` steps (0 = each epoch), after the last step,
    and on Ctrl-C / SIGTERM; never a checkpoint with non-finite parameters."""

    def __init__(self, every):
        self.every = every
        self.last_saved = None

    def on_train_start(self, loop):
        self.last_saved = loop.step

    def save(self, loop):
        loop.record_time()
        self.last_saved = loop.step
        if not loop.is_main:
            return None
        if not loop.parameters_finite():
            raise TrainingDiverged(
                f"parameters are not finite at step {loop.step}; no checkpoint written. "
                f"Last good checkpoint: {_last_checkpoint(loop)}"
            )
        return loop.save_checkpoint()

    def on_step_end(self, loop):
        if _due(self.every, loop.step, loop.end_of_epoch):
            self.save(loop)

    def on_train_end(self, loop):
        if loop.step != self.last_saved:
            self.save(loop)

    def on_interrupt(self, loop):
        if loop.is_main and loop.step > 0:
            path = self.save(loop)
            loop.message(f"interrupted at step {loop.step}; checkpoint {path}; rerun the same command to resume")
