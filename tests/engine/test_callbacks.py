"""User callbacks see every step and evaluation; they do not change training (exact resume holds);
evaluation extras reach them and the caller; the run can be reopened with load_run."""
import os
import signal
import types

import numpy as np
import paddle
import pytest
import toy_task
from test_trainer import make_config as trainer_config
from test_trainer import params

from paddle_suite.engine import Callback, EvalResult, Trainer, load_run
from paddle_suite.engine import checkpoint as ckpt

ARGS = types.SimpleNamespace(no_progress=True)


class ToyWithExtras(toy_task.ToyRegression):
    """Returns an EvalResult whose extras hold the per-example errors (as KGE returns ranks)."""

    def evaluate_model(self, model, split="valid"):
        errors = (model(paddle.to_tensor(self.x)).numpy() - self.y)[:, 0] ** 2
        return EvalResult({"mse": float(errors.mean())}, {"errors": errors})


class StepRecorder(Callback):
    def __init__(self):
        self.steps, self.losses, self.started, self.ended = [], [], None, False

    def on_train_start(self, loop):
        self.started = loop.step

    def on_step_end(self, loop):
        self.steps.append(loop.step)
        self.losses.append(loop.loss)

    def on_train_end(self, loop):
        self.ended = True


class EvalRecorder(Callback):
    def __init__(self):
        self.seen = []

    def on_evaluate(self, loop, result):
        self.seen.append((loop.step, result.split, result.metrics["mse"], result.extras["errors"].copy()))


class StopAfter(Callback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, loop):
        loop.should_stop = loop.step >= self.step


def make_config(tmp_path, *overrides):
    return trainer_config(tmp_path, "Global.eval_every=4", *overrides)


def test_user_callbacks_observe_steps_and_evaluations_with_extras(tmp_path):
    config = make_config(tmp_path, "Global.run_name=observed", "Global.test_split=valid")
    task = ToyWithExtras(config)
    steps, evals = StepRecorder(), EvalRecorder()
    trainer = Trainer(config, task, ARGS, callbacks=[steps, evals])
    result = trainer.train()
    assert steps.started == 0 and steps.ended
    assert steps.steps == list(range(1, 25))  # 8 steps per epoch, 3 epochs
    assert all(np.isfinite(steps.losses))
    assert [s for s, *_ in evals.seen] == [4, 8, 12, 16, 20, 24]
    assert all(split == "valid" and errors.shape == (64,) for _, split, _, errors in evals.seen)
    # the extras are what the metric was computed from
    assert all(mse == pytest.approx(errors.mean()) for _, _, mse, errors in evals.seen)
    assert result["best"] == pytest.approx(min(mse for _, _, mse, _ in evals.seen))

    tested = trainer.evaluate("valid")  # the caller gets the extras too
    assert tested.checkpoint.endswith("best") and tested.extras["errors"].shape == (64,)
    assert tested.metrics["mse"] == pytest.approx(result["best"])

    finished = load_run(str(tmp_path / "out" / "observed" / "best"))
    assert finished.config["Arch"]["dropout"] == 0.2
    assert finished.best_metrics()["metrics"]["mse"] == pytest.approx(result["best"])
    assert finished.resolve_checkpoint("latest").endswith("step_00000024")


def test_a_callback_can_stop_training(tmp_path):
    config = make_config(tmp_path, "Global.run_name=stopped")
    result = Trainer(config, toy_task.ToyRegression(config), ARGS, callbacks=[StopAfter(5)]).train()
    assert result["step"] == 5
    assert ckpt.list_checkpoints(str(tmp_path / "out" / "stopped"))[-1].endswith("step_00000005")


class Interrupt(Callback):
    def __init__(self, at):
        self.at = at

    def on_step_end(self, loop):
        if loop.step == self.at:
            raise KeyboardInterrupt


def test_resume_stays_exact_with_callbacks(tmp_path):
    straight_cfg = make_config(tmp_path, "Global.run_name=straight")
    straight = Trainer(straight_cfg, toy_task.ToyRegression(straight_cfg), ARGS, callbacks=[StepRecorder()])
    straight.train()

    config = make_config(tmp_path, "Global.run_name=resumed")
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, toy_task.ToyRegression(config), ARGS, callbacks=[StepRecorder(), Interrupt(11)]).train()
    recorder = StepRecorder()
    resumed = Trainer(config, toy_task.ToyRegression(config), ARGS, callbacks=[recorder])
    assert resumed.train()["step"] == 24
    assert recorder.started == 11 and recorder.steps == list(range(12, 25))
    a, b = params(straight.model), params(resumed.model)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


class SignalInBackward(paddle.autograd.PyLayer):
    """Identity whose backward sends SIGTERM to this process: the signal arrives inside a PyLayer,
    as it does in most of a vision-MLP step."""

    @staticmethod
    def forward(ctx, x):
        return x

    @staticmethod
    def backward(ctx, grad):
        os.kill(os.getpid(), signal.SIGTERM)
        return grad


class ToySignalledAt(toy_task.ToyRegression):
    def __init__(self, config, at):
        super().__init__(config)
        self.at, self.calls = at, 0

    def train_step(self, model, batch):
        self.calls += 1
        loss, count = super().train_step(model, batch)
        return (SignalInBackward.apply(loss) if self.calls == self.at else loss), count


def test_sigterm_inside_a_pylayer_still_checkpoints(tmp_path):
    config = make_config(tmp_path, "Global.run_name=terminated")
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, ToySignalledAt(config, at=7), ARGS).train()
    assert ckpt.list_checkpoints(str(tmp_path / "out" / "terminated"))[-1].endswith("step_00000007")
