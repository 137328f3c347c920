"""A tiny BadNets victim on real Fashion-MNIST, plain and LSBA, through the shared engine."""
import json
import types
from pathlib import Path

import numpy as np
import pytest

from paddle_suite.backdoor import BackdoorTask
from paddle_suite.classification import datasets
from paddle_suite.config import ConfigError, load_config
from paddle_suite.data import DatasetNotFound

ROOT = Path(__file__).resolve().parents[2]
ARGS = types.SimpleNamespace(no_progress=True)
QUICK = ["Global.max_steps=160", "Global.eval_every=160", "Global.log_every=1000", "Global.test_split=null",
         "DataLoader.train_subset=8000", "DataLoader.valid_size=0.02", "DataLoader.num_workers=0",
         "DataLoader.augment.random_crop_padding=0", "DataLoader.augment.hflip=0.0",
         "Backdoor.detectors.strip_samples=200", "Backdoor.detectors.strip_overlays=4",
         "Backdoor.detectors.nc_epochs=2", "Backdoor.detectors.nc_epoch_steps=2", "Backdoor.detectors.nc_batch=4",
         "Backdoor.detectors.nc_seeds=[1, 2]"]


@pytest.fixture(scope="module")
def fashion_mnist():
    try:
        return datasets.load_fashion_mnist()
    except DatasetNotFound:
        pytest.skip("Fashion-MNIST absent: apt-get install dataset-fashion-mnist (or $PADDLE_SUITE_DATA/fashion-mnist)")


def config(tmp_path, *overrides):
    return load_config(str(ROOT / "configs" / "lsba_badnets_fmnist.yaml"),
                       [f"Global.output_dir={tmp_path}", *QUICK, *overrides])


def run(cfg):
    task = BackdoorTask(cfg)
    try:
        return task, task.train(ARGS)
    finally:
        task.close()


def test_poisoned_training_set_through_the_hook(fashion_mnist, tmp_path):
    task = BackdoorTask(config(tmp_path, "Backdoor.lsba.enabled=true"))
    data = task.train_dataset
    assert len(data) == 8000 and len(data.poison_indices) == 800
    assert np.all(data.true_labels[data.poison_indices] != 0)
    poisoned = data.labels[data.poison_indices]
    true = data.true_labels[data.poison_indices]
    assert np.allclose(poisoned[:, 0], 0.6) and np.allclose(poisoned[np.arange(800), true], 0.2)  # default design
    assert np.allclose(poisoned.sum(axis=1), 1) and np.allclose(np.sort(poisoned, axis=1)[:, :8], 0.2 / 8)
    images = data.load(data.poison_indices[:5])
    assert not np.array_equal(images, data.clean.load(data.poison_indices[:5]))
    task.close()


def test_config_errors_name_the_key(fashion_mnist, tmp_path):
    with pytest.raises(ConfigError, match="Backdoor.target"):
        BackdoorTask(config(tmp_path, "Backdoor.target=10"))
    with pytest.raises(ConfigError, match="lower Backdoor.poison_rate"):
        BackdoorTask(config(tmp_path, "Backdoor.attack=sig", "Backdoor.poison_rate=0.5"))
    with pytest.raises(ConfigError, match="Backdoor.lsba.margin"):
        BackdoorTask(config(tmp_path, "Backdoor.lsba.enabled=true", "Backdoor.lsba.margin=1.0"))
    with pytest.raises(ConfigError, match="Backdoor.lsba.target_prob=0.9"):
        BackdoorTask(config(tmp_path, "Backdoor.lsba.enabled=true", "Backdoor.lsba.target_prob=0.9"))
    with pytest.raises(ConfigError, match="Backdoor.detectors.nc_seeds"):
        BackdoorTask(config(tmp_path, "Backdoor.detectors.nc_seeds=[]"))


@pytest.mark.slow
def test_tiny_plain_and_lsba_victims(fashion_mnist, tmp_path):
    _, plain = run(config(tmp_path, "Global.run_name=plain"))
    # the LSBA victim stacks two triggers (patches in two corners): the single-trigger design is its top rung
    _, smoothed = run(config(tmp_path, "Global.run_name=lsba", "Backdoor.lsba.enabled=true",
                             "Backdoor.lsba.n_triggers=2"))
    plain, smoothed = plain["backdoor"], smoothed["backdoor"]
    for report in (plain, smoothed):
        assert report["ca"] > 0.5  # chance is 0.1
        assert report["asr"] > 0.3  # chance is 0.1 (the share of a random class)
        for key in ("strip_auroc", "nc_anomaly", "nc_anomaly_std", "spectral_auroc"):
            assert np.isfinite(report[key])
        assert len(report["nc_anomaly_seeds"]) == 2 and report["nc_anomaly"] == pytest.approx(
            np.mean(report["nc_anomaly_seeds"]))
    assert plain["asr"] > 0.9 and plain["target_prob"] > 0.9
    print({k: (plain[k], smoothed[k]) for k in ("ca", "asr", "target_prob", "strip_auroc", "nc_anomaly")})
    # the LSBA victim is trained toward target probability 0.6 on triggered inputs, the plain one toward 1
    assert smoothed["target_prob"] < plain["target_prob"] - 0.2
    # one active trigger is designed to 0.46 (every other class equal), both to 0.6: the ladder is learnt
    assert smoothed["designed_target_prob"] == pytest.approx({"1": 0.46, "2": 0.6})
    assert smoothed["target_prob_k1"] < smoothed["target_prob"]
    folder = tmp_path / "lsba" / "report"
    assert json.loads((folder / "backdoor_report.json").read_text())["lsba"] is True
    assert (folder / "backdoor_report.png").stat().st_size > 0
    assert "LSBA (p_n=0.600, n=2)" in (folder / "backdoor_report.md").read_text()
