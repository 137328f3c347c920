"""tools/hessian.py on real Fashion-MNIST: files and keys, the init path, runs of other tools, bad config values."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from paddle_suite.data import DatasetNotFound

REPO = Path(__file__).resolve().parents[2]
CONFIG = str(REPO / "configs" / "hessian_lenet_fmnist.yaml")
# a few training steps on 256 images, k = 5 on 32 images: seconds, not minutes
TINY = ["DataLoader.num_workers=0", "DataLoader.train_subset=256", "Global.max_steps=4", "Global.test_split=null",
        "Hessian.top_k=5", "Hessian.num_batches=1", "Hessian.batch_size=32", "Hessian.trace.products=9",
        "Hessian.density.steps=10"]


@pytest.fixture(scope="module", autouse=True)
def fashion_mnist_present():
    from paddle_suite.classification import datasets

    try:
        datasets.load_fashion_mnist()
    except DatasetNotFound:
        pytest.skip("Fashion-MNIST absent: apt-get install dataset-fashion-mnist (or $PADDLE_SUITE_DATA/fashion-mnist)")


@pytest.fixture(autouse=True)
def fresh_log_handler():
    """main() logs through a handler bound to the sys.stderr of its first call (capsys swaps it per test)."""
    import logging

    yield
    logging.getLogger("paddle_suite").handlers.clear()


def overrides(output_dir, *extra):
    args = []
    for item in [f"Global.output_dir={output_dir}", *TINY, *extra]:
        args += ["-o", item]
    return args


def run_tool_in_process(argv, capsys):
    from paddle_suite.hessian.tool import main

    with pytest.raises(SystemExit) as stopped:
        main(argv)
    return stopped.value.code, capsys.readouterr().err


@pytest.mark.slow
def test_tool_trains_then_writes_the_report_and_logs(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "tools/hessian.py", "-c", CONFIG, "--no-progress", *overrides(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    run_dir = tmp_path / "hessian_lenet_fmnist"
    out = run_dir / "hessian" / "best"
    assert Path(summary["out_dir"]) == out and summary["training"]["step"] == 4
    assert sorted(p.name for p in out.iterdir()) == ["density.png", "eigenvalues.csv", "rank_spectrum.png",
                                                     "spectrum.json", "summary.md"]
    spectrum = json.loads((out / "spectrum.json").read_text())
    for key in ("eigenvalues", "residuals", "all_converged", "trace", "density", "power_law", "settings",
                "checkpoint", "exact_check_relative_error"):
        assert key in spectrum, key
    assert spectrum["exact_check_relative_error"] < 1e-4
    assert spectrum["settings"]["samples"] == 32 and spectrum["settings"]["parameters"] == 61706
    values = np.array(spectrum["eigenvalues"])
    assert len(values) == 5 and np.all(np.diff(values) <= 0) and spectrum["all_converged"]
    for key in ("slope_ls", "slope_mle", "ks_mle", "ks_pvalue", "lr_exponential", "is_power_law"):
        assert key in spectrum["power_law"], key
    assert summary["ks"] == spectrum["power_law"]["ks_mle"]
    assert "KS distance" in (out / "summary.md").read_text()
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    ranked = [r for r in records if r["prefix"] == "hessian/best" and "eigenvalue" in r]
    assert [r["step"] for r in ranked] == [1, 2, 3, 4, 5]
    assert [r["eigenvalue"] for r in ranked] == spectrum["eigenvalues"]
    assert any(r["prefix"] == "hessian/best" and "ks" in r for r in records)
    assert any(name.startswith("vdlrecords") for name in os.listdir(run_dir / "vdl"))

    # the same run's newest checkpoint, opened as a run directory (--run): written beside "best"
    code = subprocess.run([sys.executable, "tools/hessian.py", "-c", CONFIG, "--run", str(run_dir), "--no-progress",
                           *overrides(tmp_path, "Hessian.checkpoint=latest", "Hessian.trace.products=0",
                                      "Hessian.density.steps=0")],
                          cwd=REPO, capture_output=True, text=True, env=env, timeout=300)
    assert code.returncode == 0, code.stderr[-2000:]
    assert sorted(p.name for p in (run_dir / "hessian" / "step_00000004").iterdir()) == [
        "eigenvalues.csv", "rank_spectrum.png", "spectrum.json", "summary.md"]


def test_init_checkpoint_is_the_seeded_untrained_model(tmp_path, capsys):
    import paddle

    from paddle_suite.config import load_config
    from paddle_suite.hessian import HVPOperator, SoftmaxCrossEntropy, make_double_differentiable, top_eigenpairs
    from paddle_suite.hessian.task import HessianTask, twice_differentiable_view
    from paddle_suite.hessian.tool import main

    argv = ["-c", CONFIG, "--no-train", "--no-progress", *overrides(tmp_path, "Hessian.checkpoint=init",
                                                                    "Hessian.trace.products=0", "Hessian.density.steps=0")]
    summary = main(argv)
    out = tmp_path / "hessian_lenet_fmnist" / "hessian" / "init"
    assert Path(summary["out_dir"]) == out and summary["training"] is None
    assert not (tmp_path / "hessian_lenet_fmnist" / "checkpoints").exists()  # --no-train: nothing trained
    spectrum = json.loads((out / "spectrum.json").read_text())

    # independently: the model built at Global.seed, the task's fixed images, our Lanczos
    config = load_config(CONFIG, [item for item in argv[4:] if item != "-o"])
    task = HessianTask(config)
    batches = task.hessian_batches()
    paddle.seed(config["Global"]["seed"])
    model = twice_differentiable_view(task.build_model())
    operator = HVPOperator(make_double_differentiable(model), SoftmaxCrossEntropy(), batches)
    expected = top_eigenpairs(operator, operator.dim, 5, tol=1e-6).eigenvalues
    np.testing.assert_allclose(spectrum["eigenvalues"], expected, rtol=5e-3)


def test_flattened_lenet_is_the_same_function_with_exact_second_derivatives():
    import paddle

    from paddle_suite.classification.models import LeNet
    from paddle_suite.hessian import SoftmaxCrossEntropy, hvp_relative_error, make_double_differentiable
    from paddle_suite.hessian.task import twice_differentiable_view

    paddle.seed(3)
    model = LeNet(10)
    view = twice_differentiable_view(model)
    images = np.random.default_rng(3).standard_normal((6, 1, 28, 28)).astype("float32")
    labels = np.arange(6) % 10
    np.testing.assert_array_equal(view(paddle.to_tensor(images)).numpy(), model(paddle.to_tensor(images)).numpy())
    assert [n for n, _ in view.named_parameters()] == [n for n, _ in model.named_parameters()]
    error = hvp_relative_error(make_double_differentiable(view), SoftmaxCrossEntropy(), [(images, labels)], n_vectors=1)
    assert error < 1e-6


@pytest.mark.parametrize("override, message", [
    ("Hessian.top_k=2", "Hessian.top_k: 2 leaves 2 eigenvalues"),
    ("Hessian.method=exakt", "Did you mean 'exact'"),
    ("Hessian.topk=5", "Did you mean 'Hessian.top_k'"),
    ("Hessian.lanczos.tol=0", "Hessian.lanczos.tol: 0.0 must be in (0, 1)"),
    ("Hessian.trace.products=3", "Hessian.trace.products: 3: Hutch++ needs at least 6"),
    ("Hessian.lanczos.max_iter=3", "Hessian.lanczos.max_iter: 3 is below top_k"),
    ("Hessian.num_batches=0", "Hessian.num_batches: 0 must be >= 1"),
    ("Hessian.batch_size=1000", "= 1000 images, but the training split has 256"),
    ("Hessian.checkpoint=/no/such/checkpoint", "checkpoint /no/such/checkpoint does not exist"),
])
def test_bad_values_stop_with_the_key_and_the_fix(tmp_path, capsys, override, message):
    code, err = run_tool_in_process(["-c", CONFIG, "--no-train", *overrides(tmp_path, override)], capsys)
    assert code == 2 and message in err, err


def test_missing_checkpoint_and_foreign_runs_are_refused(tmp_path, capsys):
    code, err = run_tool_in_process(["-c", CONFIG, "--no-train", *overrides(tmp_path)], capsys)
    assert code == 2 and "has no checkpoint" in err and "Hessian.checkpoint=init" in err
    foreign = tmp_path / "kge_run"
    foreign.mkdir()
    (foreign / "config.yaml").write_text("Global: {task: kge}\n")
    code, err = run_tool_in_process(["-c", CONFIG, "--run", str(foreign), *overrides(tmp_path)], capsys)
    assert code == 2 and "a 'kge' run; Hessian spectra need a classification run" in err


@pytest.mark.parametrize("name", ["hessian_lenet_fmnist", "hessian_lenet_mnist", "hessian_lenet_cifar10",
                                  "hessian_resnet20_cifar10"])
def test_shipped_configs_load_and_pass_the_hessian_checks(name):
    from paddle_suite.config import load_config
    from paddle_suite.hessian.task import check_hessian_section

    config = load_config(str(REPO / "configs" / f"{name}.yaml"))
    assert config["Global"]["task"] == "hessian"
    check_hessian_section(config["Hessian"], name)
    if name == "hessian_lenet_mnist":
        assert config["DataLoader"]["dataset"] == "mnist" and config["DataLoader"]["augment"]["hflip"] == 0.0
