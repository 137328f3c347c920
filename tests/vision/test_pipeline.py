"""The image-classification pipeline of the vision backbones: configs, short real training, export.

CIFAR-10 tests train on a few hundred real images (``DataLoader.train_subset``) with a 500-image
valid split; they skip when the CIFAR-10 archive is absent. ImageNet configs need no data: they are
loaded and their model is built.
"""
import types
from pathlib import Path

import numpy as np
import pytest

import paddle_suite.classification  # noqa: F401  (registers the task)
import paddle_suite.vision  # noqa: F401  (registers the backbones)
import paddle

from paddle_suite.classification import datasets
from paddle_suite.config import ConfigError, build_arch, load_config
from paddle_suite.data import DatasetNotFound
from paddle_suite.registry import ARCHS, TASKS
from paddle_suite.vision.models import CIFAR_LITE_VARIANTS

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
CIFAR_CONFIGS = ("s2mlpv2_cifar10", "s2mlp_cifar10", "ccsmlp_cifar10", "mixer_cifar10")
IMAGENET_CONFIGS = ("s2mlp_wide", "s2mlp_deep", "s2mlpv2_small", "s2mlpv2_medium", "ccsmlp_small", "ccsmlp_medium")
STEPS = 3


def _param_count(model):
    return sum(int(np.prod(p.shape)) for p in model.parameters())


@pytest.fixture(scope="module")
def cifar10_available():
    try:
        datasets.find_cifar10_archive()
    except DatasetNotFound as err:
        pytest.skip(f"CIFAR-10 archive absent: {err}")


def _short_run_config(name, output_dir, *extra):
    overrides = [f"Global.output_dir={output_dir}", f"Global.max_steps={STEPS}", "Global.test_split=null",
                 "Global.progress=false", "DataLoader.train_subset=192", "DataLoader.batch_size=64",
                 "DataLoader.valid_size=0.01", "DataLoader.num_workers=0", *extra]
    return load_config(str(CONFIGS / f"{name}.yaml"), overrides)


@pytest.fixture(scope="module")
def trained_runs(cifar10_available, tmp_path_factory):
    """``{config: (task, train result)}`` after STEPS real steps of each CIFAR config."""
    output = tmp_path_factory.mktemp("vision_runs")
    runs = {}
    for name in CIFAR_CONFIGS:
        config = _short_run_config(name, output)
        task = TASKS.get("classification")(config)
        runs[name] = (task, task.train(None))
    yield runs
    for task, _ in runs.values():
        task.close()


def test_cifar_configs_share_one_recipe():
    """Same epochs, augmentation, loss, optimiser for all four: only the architecture differs."""
    configs = {name: load_config(str(CONFIGS / f"{name}.yaml")) for name in CIFAR_CONFIGS}
    reference = configs["s2mlpv2_cifar10"]
    for name, config in configs.items():
        for section in ("DataLoader", "Loss", "Optimizer", "Metric"):
            assert config[section] == reference[section], (name, section)
        assert {k: v for k, v in config["Global"].items() if k != "run_name"} == \
               {k: v for k, v in reference["Global"].items() if k != "run_name"}
        assert config["Arch"]["name"].endswith("_cifar_lite")


def test_long_s2mlpv2_config_only_trains_longer():
    base, long = (load_config(str(CONFIGS / f"{name}.yaml")) for name in ("s2mlpv2_cifar10", "s2mlpv2_cifar10_long"))
    assert long["Global"]["epochs"] > base["Global"]["epochs"]
    for section in ("Arch", "DataLoader", "Loss", "Optimizer", "Metric"):
        assert long[section] == base[section], section
    drop = {"epochs", "run_name"}
    assert {k: v for k, v in long["Global"].items() if k not in drop} == \
           {k: v for k, v in base["Global"].items() if k not in drop}


def test_results_script_states_the_equal_terms_comparison():
    bench = _bench_module()
    rows = [{"config": c, "test_top1": t, "epochs": 50.0} for c, t in zip(bench.COMPARED, (0.85, 0.86, 0.83, 0.8))]
    assert "s2mlpv2_cifar10 0.8500 does not clearly beat s2mlp_cifar10 0.8600 (-0.0100, -2.0 SE)" in \
        bench.comparison_lines(rows)[1]
    rows[1]["test_top1"] = 0.835  # ahead by 1.5 points: 3 standard errors
    assert " beats s2mlp_cifar10 0.8350 (+0.0150, +2.9 SE)" in bench.comparison_lines(rows)[1]
    rows[1]["test_top1"] = 0.8494  # ahead, but by far less than the test set's sampling noise
    assert "does not clearly beat s2mlp_cifar10 0.8494 (+0.0006, +0.1 SE)" in bench.comparison_lines(rows)[1]
    assert bench.comparison_lines(rows[:3]) == [] and bench.comparison_lines(rows[:3] + [dict(rows[3], epochs=30.0)]) == []


def test_gap_noise_is_the_binomial_standard_error_of_a_difference():
    bench = _bench_module()
    assert abs(bench.gap_noise(0.5, 0.5, images=100) - (0.5 / 100 ** 0.5) * 2 ** 0.5) < 1e-12
    assert bench.gap_noise(1.0, 1.0) == 0.0


def test_results_script_refuses_to_resume_a_run_of_another_epoch_count(tmp_path):
    import argparse
    import json

    bench = _bench_module()
    run_dir = tmp_path / "mixer_cifar10"
    run_dir.mkdir()
    (run_dir / bench.RESULT_FILE).write_text(json.dumps({"config": "mixer_cifar10", "epochs": 30.0, "quick": False}))
    args = argparse.Namespace(output_dir=str(tmp_path), quick=False, nproc=1)
    with pytest.raises(SystemExit, match="another epoch count"):
        bench.collect(args, train=("mixer_cifar10",))
    assert bench.collect(args, train=()) == []  # tabulating leaves it out


def test_lite_variants_are_parameter_matched_and_train():
    counts = {}
    paddle.seed(0)
    for name in CIFAR_LITE_VARIANTS:
        model = ARCHS.get(name)(drop_path_rate=0.0)  # a dropped branch would (rightly) get no gradient
        counts[name] = _param_count(model)
        logits = model(paddle.randn([4, 3, 32, 32]))
        assert logits.shape == [4, 10]
        logits.square().mean().backward()
        without_grad = [p.name for p in model.parameters() if p.grad is None or not p.grad.abs().sum() > 0]
        assert not without_grad, (name, without_grad)
    assert max(counts.values()) / min(counts.values()) < 1.04, counts


@pytest.mark.slow
def test_each_cifar_config_trains_on_real_cifar10(trained_runs):
    for name, (task, result) in trained_runs.items():
        assert result["step"] == STEPS, name
        assert task.num_classes == 10 and task.image_size == 32
        assert 0.0 <= result["best_metrics"]["top1"] <= 1.0 and "top5" in result["best_metrics"], name
        saved = load_config(str(Path(result["run_dir"]) / "config.yaml"))
        assert saved["Arch"]["name"] == f"{name.split('_')[0]}_cifar_lite"
        assert (Path(result["run_dir"]) / "vdl").is_dir() and (Path(result["run_dir"]) / "best").is_dir()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["s2mlpv2_cifar10", "ccsmlp_cifar10"])
def test_exported_model_matches_dygraph_logits(trained_runs, name):
    """tools/export.py's code path, then a paddle.inference predictor on real test images."""
    from paddle_suite.cli import export
    from paddle_suite.engine.trainer import restore_model

    task, result = trained_runs[name]
    run_dir = Path(result["run_dir"])
    export(["-c", str(run_dir / "config.yaml"), "-o", f"Global.output_dir={run_dir.parent}",
            "-o", f"Global.run_name={run_dir.name}", "--no-progress"])
    prefix = run_dir / "inference" / "model"
    assert (run_dir / "inference" / "preprocess.json").is_file()

    images, _ = next(iter(task.eval_loader("test").batches(0)))
    images = np.ascontiguousarray(images[:16], dtype="float32")
    model = restore_model(task, str(run_dir / "best"))
    model.eval()
    with paddle.no_grad():
        expected = model(paddle.to_tensor(images)).numpy()

    config = paddle.inference.Config(f"{prefix}.pdmodel", f"{prefix}.pdiparams")
    config.disable_gpu()
    predictor = paddle.inference.create_predictor(config)
    handle = predictor.get_input_handle(predictor.get_input_names()[0])
    handle.reshape(images.shape)
    handle.copy_from_cpu(images)
    predictor.run()
    got = predictor.get_output_handle(predictor.get_output_names()[0]).copy_to_cpu()
    assert got.shape == (16, 10)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)
    assert np.abs(expected).max() > 1e-3  # a model that outputs (near) zeros would match trivially


def test_arch_value_contradicting_the_data_is_an_error(cifar10_available, tmp_path):
    config = _short_run_config("s2mlpv2_cifar10", tmp_path, "Arch.num_classes=100")
    with pytest.raises(ConfigError, match="Arch.num_classes=100 contradicts the data"):
        TASKS.get("classification")(config).build_model()


def test_imagenet_configs_are_one_base_plus_the_architecture():
    configs = {name: load_config(str(CONFIGS / f"{name}_imagenet.yaml")) for name in IMAGENET_CONFIGS}
    for name, config in configs.items():
        assert config["Arch"]["name"] == name
        assert config["DataLoader"]["dataset"] == "image_folder" and config["DataLoader"]["image_size"] == 224
        assert config["Global"]["epochs"] == 300
        assert config["Optimizer"]["name"] == "AdamW" and config["Optimizer"]["weight_decay"] == 0.05
        assert config["Optimizer"]["no_weight_decay"] == ["1d"]
        assert (config["Loss"]["mixup_alpha"], config["Loss"]["cutmix_alpha"], config["Loss"]["label_smoothing"]) \
            == (0.8, 1.0, 0.1)
        augment = config["DataLoader"]["augment"]
        assert augment["random_resized_crop"] and augment["randaugment_magnitude"] == 9
        assert augment["random_erasing"] == 0.25
        assert config["Arch"]["drop_path_rate"] > 0


def test_imagenet_configs_build_their_models():
    expected_millions = {"s2mlp_wide": 72.24, "s2mlp_deep": 53.92, "s2mlpv2_small": 25.13, "s2mlpv2_medium": 55.30,
                         "ccsmlp_small": 29.14, "ccsmlp_medium": 51.44}  # bench/vision_speed.md
    for name in IMAGENET_CONFIGS:
        config = load_config(str(CONFIGS / f"{name}_imagenet.yaml"))
        with paddle.LazyGuard():  # shapes only: no initialisation of up to 72M parameters
            model = build_arch(config)
        assert abs(_param_count(model) / 1e6 - expected_millions[name]) < 0.01, name
        del model


def test_missing_imagenet_folder_names_the_path(tmp_path):
    missing = tmp_path / "imagenet"
    config = load_config(str(CONFIGS / "s2mlpv2_small_imagenet.yaml"), [f"DataLoader.data_path={missing}"])
    with pytest.raises(DatasetNotFound, match=f"{missing}/train/<class>"):
        TASKS.get("classification")(config)


def _bench_module():
    import importlib.util

    path = CONFIGS.parent / "bench" / "vision_results.py"
    spec = importlib.util.spec_from_file_location("vision_results_bench", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_results_script_skips_finished_runs_and_picks_the_best(tmp_path, monkeypatch):
    bench = _bench_module()
    rows = {"s2mlpv2_cifar10": 0.86, "s2mlp_cifar10": 0.83}
    for config, top1 in rows.items():
        (tmp_path / config).mkdir()
        (tmp_path / config / bench.RESULT_FILE).write_text(__import__("json").dumps({
            "config": config, "arch": config, "quick": False, "test_top1": top1, "test_top5": 0.99,
            "valid_top1": top1, "params": 1_600_000, "steps": 17550, "epochs": 50.0, "batch_size": 128,
            "hours": 2.5 if top1 > 0.85 else 2.0, "images_per_s": 150.0, "within_budget": True, "run_dir": "x"}))
    trained = []
    monkeypatch.setattr(bench, "run_training", lambda config, args: trained.append(config) or 1 / 0)
    args = __import__("argparse").Namespace(output_dir=str(tmp_path), quick=False)
    summary = bench.headline(bench.collect(args, train=("s2mlpv2_cifar10", "s2mlp_cifar10")), quick=False)
    assert trained == []  # both finished: nothing retrained
    assert summary["best_config"] == "s2mlpv2_cifar10" and summary["best_cifar10_top1"] == 0.86
    assert summary["best_train_hours"] == 2.5 and summary["finished"] == list(rows)
    text = bench.markdown(summary)
    assert "| s2mlpv2_cifar10 |" in text and "0.8600" in text
    assert "Not finished yet: s2mlpv2_cifar10_long, ccsmlp_cifar10, mixer_cifar10" in text


def test_results_script_carries_rows_finished_in_an_earlier_session(tmp_path):
    bench = _bench_module()
    committed = tmp_path / "vision_results.json"
    row = {"config": "s2mlp_cifar10", "arch": "s2mlp_cifar_lite", "quick": False, "test_top1": 0.8, "test_top5": 0.99,
           "valid_top1": 0.8, "params": 1_600_000, "steps": 17550, "epochs": 50.0, "batch_size": 128, "hours": 2.0,
           "images_per_s": 150.0, "within_budget": True, "run_dir": "gone", "finished_at": "2026-12-05T07:00:00Z"}
    quick_row = dict(row, config="mixer_cifar10", quick=True)
    old_recipe_row = dict(row, config="ccsmlp_cifar10", epochs=30.0)
    committed.write_text(__import__("json").dumps({"table": [row, quick_row, old_recipe_row]}))
    earlier = bench.committed_rows(committed)
    assert list(earlier) == ["s2mlp_cifar10"]  # quick rows and rows of another epoch count are never carried
    args = __import__("argparse").Namespace(output_dir=str(tmp_path / "runs"), quick=False)
    summary = bench.headline(bench.collect(args, train=(), earlier=earlier), quick=False)
    assert summary["finished"] == ["s2mlp_cifar10"] and summary["best_cifar10_top1"] == 0.8
    assert bench.committed_rows(tmp_path / "missing.json") == {}


def test_results_script_splits_the_global_batch_over_ranks(tmp_path, monkeypatch):
    import argparse
    import json
    import subprocess

    bench = _bench_module()
    args = argparse.Namespace(output_dir=str(tmp_path), quick=False, nproc=2)
    assert bench.run_dir_of("s2mlpv2_cifar10", args).name == "s2mlpv2_cifar10_2ranks"
    with pytest.raises(SystemExit, match="does not split evenly over 3 ranks"):
        bench.rank_batch_size("s2mlpv2_cifar10", 3)

    calls = []
    result = {"step": 702, "best": 0.5, "train_seconds": 3600.0, "train_cpu_seconds": 3000.0,
              "test": {"top1": 0.5, "top5": 0.9}}
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: calls.append(command) or types.SimpleNamespace(
        returncode=0, stdout="LAUNCH INFO Exit code 0\n" + json.dumps(result) + "\n"))
    assert bench.run_training("s2mlpv2_cifar10", args) == result
    command = calls[0]
    assert command[1:5] == ["-m", "paddle.distributed.launch", "--nproc_per_node", "2"]
    assert "DataLoader.batch_size=64" in command and "Global.run_name=s2mlpv2_cifar10_2ranks" in command

    # the launcher exits 0 when a rank crashed: no result line is a failure
    monkeypatch.setattr(subprocess, "run", lambda command, **kw: types.SimpleNamespace(returncode=0, stdout="x\n"))
    with pytest.raises(SystemExit, match="workerlog"):
        bench.run_training("s2mlpv2_cifar10", args)

    run_dir = tmp_path / "s2mlpv2_cifar10_2ranks"
    run_dir.mkdir()
    (run_dir / "config.yaml").write_text(
        "Arch: {name: s2mlpv2_cifar_lite}\nDataLoader: {batch_size: 64, valid_size: 0.1, train_subset: null}\n")
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "prefix": "train", "loss": 1.0, "samples_per_s": 200.0}) + "\n" for s in (10, 20)))
    row = bench.summarise("s2mlpv2_cifar10", result, run_dir, quick=False, ranks=2)
    assert row["batch_size"] == 128 and row["ranks"] == 2 and row["epochs"] == 2.0  # 45,000 // 128 = 351 a epoch
    assert row["images_per_s"] == 200.0 and row["hours"] == round(3000 / 3600, 4)
