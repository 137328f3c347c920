import glob
import time
import types

import numpy as np
import paddle
import pytest
import toy_task  # noqa: F401  (registers toy_regression / ToyMLP)

from paddle_suite.config import load_config
from paddle_suite.engine import Trainer, TrainingDiverged, restore_model
from paddle_suite.engine import checkpoint as ckpt
from paddle_suite.registry import TASKS

ARGS = types.SimpleNamespace(no_progress=True)


def make_config(tmp_path, *overrides, name="toy"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "Global: {task: toy_regression, epochs: 3, log_every: 2}\n"
        "Arch: {name: ToyMLP, dropout: 0.2}\n"
        "Optimizer: {lr: 0.01, grad_clip: 1.0, schedule: {name: cosine, warmup_steps: 3}}\n"
    )
    return load_config(str(path), [f"Global.output_dir={tmp_path / 'out'}", *overrides])


def params(model):
    return {k: v.numpy().copy() for k, v in model.state_dict().items()}


class InterruptAt(toy_task.ToyRegression):
    """Raises KeyboardInterrupt (as Ctrl-C would) before the given global step."""

    stop_at = None
    calls = 0

    def train_step(self, model, batch):
        if InterruptAt.calls == InterruptAt.stop_at:
            raise KeyboardInterrupt
        InterruptAt.calls += 1
        return super().train_step(model, batch)


def test_resume_after_interrupt_matches_uninterrupted_run(tmp_path):
    straight = Trainer(make_config(tmp_path, "Global.run_name=straight"), toy_task.ToyRegression(
        make_config(tmp_path, "Global.run_name=straight")), ARGS)
    straight.train()

    config = make_config(tmp_path, "Global.run_name=stopped")
    InterruptAt.stop_at, InterruptAt.calls = 11, 0  # mid-epoch (8 steps per epoch)
    with pytest.raises(KeyboardInterrupt):
        Trainer(config, InterruptAt(config), ARGS).train()
    assert ckpt.list_checkpoints(str(tmp_path / "out" / "stopped"))[-1].endswith("step_00000011")

    interrupted_seconds = ckpt.load_trainer_state(ckpt.list_checkpoints(str(tmp_path / "out" / "stopped"))[-1])[
        "train_seconds"]
    assert interrupted_seconds > 0

    InterruptAt.stop_at = None
    resumed = Trainer(config, InterruptAt(config), ARGS)
    started = time.perf_counter()
    result = resumed.train()
    assert result["step"] == 24
    # the training time covers both sessions: the interrupted one's plus this one's
    assert interrupted_seconds < result["train_seconds"] <= interrupted_seconds + time.perf_counter() - started
    a, b = params(straight.model), params(resumed.model)
    for key in a:
        np.testing.assert_allclose(a[key], b[key], rtol=0, atol=1e-6, err_msg=key)


def test_fresh_run_differs_from_resumed_when_seed_changes(tmp_path):
    # guards the test above: a different seed really changes the parameters
    a = Trainer(make_config(tmp_path, "Global.run_name=a"), toy_task.ToyRegression(make_config(tmp_path)), ARGS)
    a.train()
    cfg_b = make_config(tmp_path, "Global.run_name=b", "Global.seed=7")
    b = Trainer(cfg_b, toy_task.ToyRegression(cfg_b), ARGS)
    b.train()
    assert any(not np.allclose(x, y) for x, y in zip(params(a.model).values(), params(b.model).values()))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    config = make_config(tmp_path, "Global.run_name=nan", "Global.save_every=2", "Optimizer.grad_clip=0.0")
    task = toy_task.ToyRegression(config)
    calls = {"n": 0}
    original = task.train_step

    def poisoned(model, batch):
        loss, n = original(model, batch)
        calls["n"] += 1
        return (loss * float("nan"), n) if calls["n"] == 5 else (loss, n)

    task.train_step = poisoned
    with pytest.raises(TrainingDiverged, match="step 4"):
        Trainer(config, task, ARGS).train()
    kept = ckpt.list_checkpoints(str(tmp_path / "out" / "nan"))
    assert kept[-1].endswith("step_00000004")
    model = restore_model(task, kept[-1])
    assert all(np.isfinite(p.numpy()).all() for p in model.parameters())


def test_best_model_early_stopping_and_visualdl_logs(tmp_path):
    from visualdl import LogReader

    config = make_config(
        tmp_path, "Global.run_name=es", "Global.epochs=50", "Global.eval_every=2",
        "Global.early_stop_patience=2", "Optimizer.lr=0.0",  # no learning: no improvement after the first eval
        "Global.test_split=valid",
    )
    result = Trainer(config, toy_task.ToyRegression(config), ARGS).train()
    assert result["step"] == 6  # evals at 2 (best), 4, 6 (patience 2 exhausted)
    assert result["test"]["mse"] == pytest.approx(result["best"])  # the best checkpoint, re-evaluated
    run = tmp_path / "out" / "es"
    assert (run / "best" / "model.pdparams").is_file()
    reader = LogReader(file_path=glob.glob(str(run / "vdl" / "vdlrecords.*"))[0])
    tags = reader.get_tags()["scalar"]
    assert {"train/loss", "train/lr", "train/samples_per_s", "valid/mse"} <= set(tags)
    assert [r.id for r in reader.get_data("scalar", "valid/mse")] == [2, 4, 6]


def test_lr_schedule_warmup_then_cosine(tmp_path):
    from paddle_suite.engine.optim import build_optimizer

    config = make_config(tmp_path)
    model = paddle.nn.Linear(2, 1)
    opt, sched = build_optimizer(config["Optimizer"], model.parameters(), total_steps=13)
    lrs = []
    for _ in range(13):
        lrs.append(opt.get_lr())
        sched.step()
    assert lrs[0] == 0.0 and abs(lrs[3] - 0.01) < 1e-9  # linear warmup over 3 steps
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))  # cosine decays monotonically
    assert lrs[-1] < 0.001


def test_export_matches_dygraph(tmp_path):
    from paddle.inference import Config, create_predictor

    config = make_config(tmp_path, "Global.run_name=exp", "Global.epochs=1")
    task = toy_task.ToyRegression(config)
    trainer = Trainer(config, task, ARGS)
    trainer.train()
    prefix = trainer.export(str(tmp_path / "inference" / "model"))
    predictor = create_predictor(Config(prefix + ".pdmodel", prefix + ".pdiparams"))
    x = task.x[:5]
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.copy_from_cpu(x)
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    model = restore_model(task, str(tmp_path / "out" / "exp" / "best"))
    np.testing.assert_allclose(got, model(paddle.to_tensor(x)).numpy(), atol=1e-5)


def test_resume_from_explicit_path_must_exist(tmp_path):
    config = make_config(tmp_path, "Global.resume=/nonexistent/ckpt")
    with pytest.raises(FileNotFoundError, match="not a checkpoint directory"):
        Trainer(config, toy_task.ToyRegression(config), ARGS).train()


def test_auto_resume_refuses_a_run_of_another_architecture_or_seed(tmp_path):
    config = make_config(tmp_path, "Global.run_name=arch", "Global.epochs=1")
    Trainer(config, toy_task.ToyRegression(config), ARGS).train()
    other = make_config(tmp_path, "Global.run_name=arch", "Global.epochs=2", "Arch.dropout=0.5")  # same shapes
    with pytest.raises(ValueError, match=r"Arch.dropout: 0.2 -> 0.5.*Global.resume=none"):
        Trainer(other, toy_task.ToyRegression(other), ARGS).train()
    reseeded = make_config(tmp_path, "Global.run_name=arch", "Global.epochs=2", "Global.seed=7")
    with pytest.raises(ValueError, match=r"Global.seed: 42 -> 7"):
        Trainer(reseeded, toy_task.ToyRegression(reseeded), ARGS).train()
    longer = make_config(tmp_path, "Global.run_name=arch", "Global.epochs=2")  # same model: resumes
    assert Trainer(longer, toy_task.ToyRegression(longer), ARGS).train()["step"] == 16


def test_checkpoint_mismatch_is_an_error(tmp_path):
    config = make_config(tmp_path, "Global.run_name=mm", "Global.epochs=1")
    Trainer(config, toy_task.ToyRegression(config), ARGS).train()
    other = make_config(tmp_path, "Arch.hidden=8")
    with pytest.raises(ValueError, match="shape mismatch"):
        restore_model(TASKS.get("toy_regression")(other), str(tmp_path / "out" / "mm" / "best"))


def test_dense_training_after_a_static_graph_task_in_the_same_process(tmp_path):
    paddle.enable_static()  # as the parameter-server task leaves it
    config = make_config(tmp_path, "Global.run_name=after_static", "Global.epochs=1")
    assert Trainer(config, toy_task.ToyRegression(config), ARGS).train()["step"] == 8
    assert paddle.in_dynamic_mode()


def test_the_cli_reports_another_run_in_the_directory_as_a_usage_error(tmp_path, capsys):
    from paddle_suite import cli

    path = tmp_path / "toy.yaml"
    path.write_text("Global: {task: toy_regression, epochs: 1}\nArch: {name: ToyMLP}\n")
    argv = ["-c", str(path), "-o", f"Global.output_dir={tmp_path / 'out'}", "--no-progress"]
    cli.train(argv)
    with pytest.raises(SystemExit) as exited:
        cli.train([*argv, "-o", "Global.seed=7"])
    assert exited.value.code == 2
    assert "Global.seed: 42 -> 7" in capsys.readouterr().err
