import json
import types
from pathlib import Path

import numpy as np
import paddle
import pytest

from paddle_suite.classification import ClassificationTask
from paddle_suite.config import ConfigError, load_config
from paddle_suite.engine import Trainer

ROOT = Path(__file__).resolve().parents[2]
ARGS = types.SimpleNamespace(no_progress=True)

TINY = """
Global: {task: classification, log_every: 100, progress: false, eval_every: 0}
Arch: {name: LeNet}
DataLoader:
  dataset: fashion_mnist
  train_subset: 256
  valid_size: 0.02
  batch_size: 32
  eval_batch_size: 600
  num_workers: 2
  augment: {random_crop_padding: 2, hflip: 0.5, randaugment_ops: 1, random_erasing: 0.25}
Loss: {label_smoothing: 0.1, mixup_alpha: 0.2, cutmix_alpha: 1.0}
Optimizer: {lr: 0.003}
"""


def tiny_config(tmp_path, *overrides):
    path = tmp_path / "tiny.yaml"
    path.write_text(TINY)
    return load_config(str(path), [f"Global.output_dir={tmp_path / 'out'}", *overrides])


def train(config, task_class=ClassificationTask):
    task = task_class(config)
    try:
        trainer = Trainer(config, task, ARGS)
        trainer.train()
        return {k: v.numpy().copy() for k, v in trainer.model.state_dict().items()}
    finally:
        task.close()


@pytest.mark.parametrize("name", ["lenet_fmnist", "resnet20_cifar10"])
def test_shipped_configs_validate(name):
    config = load_config(str(ROOT / "configs" / f"{name}.yaml"))
    assert config["Global"]["task"] == "classification" and config["DataLoader"]["num_workers"] == 2


@pytest.mark.parametrize("override, message", [
    ("DataLoader.dataset=cifar100", "DataLoader.dataset: 'cifar100' is not one of"),
    ("DataLoader.augment.flip=0.5", "DataLoader.augment.flip: unknown key"),
    ("Arch.num_classes=10", "Arch.num_classes: is set by the task from the data"),
])
def test_config_errors_name_the_key(tmp_path, override, message):
    with pytest.raises(ConfigError, match=message):
        tiny_config(tmp_path, override)


def test_unknown_loss_name_is_a_config_error(fashion_mnist, tmp_path):
    with pytest.raises(ConfigError, match="Loss.name: unknown loss 'cross_entropi'. Did you mean 'cross_entropy'"):
        ClassificationTask(tiny_config(tmp_path, "Loss.name=cross_entropi"))


@pytest.mark.slow
def test_resume_with_workers_is_exact(fashion_mnist, tmp_path):
    # 8 steps per epoch: stop at step 6 (mid-epoch 0), resume to 12 (into epoch 1) == 12 steps in one go
    straight = train(tiny_config(tmp_path, "Global.run_name=straight", "Global.max_steps=12"))
    train(tiny_config(tmp_path, "Global.run_name=resumed", "Global.max_steps=6"))
    assert (tmp_path / "out" / "resumed" / "checkpoints" / "step_00000006").is_dir()
    resumed = train(tiny_config(tmp_path, "Global.run_name=resumed", "Global.max_steps=12"))
    for key in straight:
        np.testing.assert_allclose(resumed[key], straight[key], rtol=0, atol=1e-6, err_msg=key)
    # guard: the data order really matters (another seed ends elsewhere)
    other = train(tiny_config(tmp_path, "Global.run_name=other", "Global.max_steps=12", "Global.seed=7"))
    assert any(not np.allclose(other[k], straight[k], atol=1e-4) for k in straight)


class FlippedLabels(ClassificationTask):
    """A subclass changing the training data through the hook (as a backdoor task would)."""

    def build_train_dataset(self):
        train = super().build_train_dataset()
        flipped = train.subset(np.arange(len(train)))
        flipped.labels = (9 - flipped.labels).astype(np.int64)
        return flipped


def test_hooks_and_task_outputs(fashion_mnist, tmp_path):
    config = tiny_config(tmp_path, "DataLoader.num_workers=0", "Loss.mixup_alpha=0.0", "Loss.cutmix_alpha=0.0")
    plain, flipped = ClassificationTask(config), FlippedLabels(config)
    images, labels = next(plain.train_loader.batches(0))
    _, flipped_labels = next(flipped.train_loader.batches(0))
    np.testing.assert_array_equal(flipped_labels, 9 - labels)
    assert images.shape == (32, 1, 28, 28) and labels.dtype == np.int64
    assert len(plain.splits["valid"]) == 1200 and len(plain.train_dataset) == 256
    # normalisation from the training images: the batch is roughly standardised
    assert abs(float(images.mean())) < 0.5 and 0.6 < float(images.std()) < 1.5
    assert plain.input_spec()[0].shape == (-1, 1, 28, 28)
    meta = json.loads(plain.artifacts()["preprocess.json"])
    assert meta["class_names"][0] == "T-shirt/top" and len(meta["mean"]) == 1
    model = plain.build_model()
    loss, count = plain.train_step(model, (paddle.to_tensor(images), paddle.to_tensor(labels)))
    assert count == 32 and 1.5 < float(loss) < 3.5  # near log(10) for an untrained model
    metrics = plain.evaluate_model(model, "test")
    assert set(metrics) == {"top1", "top5", "loss"} and 0.0 <= metrics["top1"] <= 1.0


def test_cifar10_task_uses_the_cache_and_resnet20(cifar10, tmp_path):
    config = load_config(str(ROOT / "configs" / "resnet20_cifar10.yaml"),
                         [f"Global.output_dir={tmp_path}", "DataLoader.num_workers=0", "DataLoader.batch_size=8"])
    task = ClassificationTask(config)
    assert len(task.train_dataset) == 45_000 and len(task.splits["valid"]) == 5_000
    np.testing.assert_allclose(task.mean, [0.491, 0.482, 0.447], atol=0.01)  # CIFAR-10's known channel means
    images, labels = next(task.train_batches(0))
    model = task.build_model()
    assert model(images).shape == [8, 10]


def test_lazy_image_folder_task(tmp_path):
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for cls in ("ants", "bees", "wasps"):
            (tmp_path / "tree" / split / cls).mkdir(parents=True)
            for i in range(count):
                size = tuple(int(v) for v in rng.integers(20, 50, 2))
                Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(
                    tmp_path / "tree" / split / cls / f"{i}.jpg")
    path = tmp_path / "folder.yaml"
    path.write_text("Global: {task: classification, data_root: %s}\nArch: {name: LeNet}\n"
                    "DataLoader: {dataset: image_folder, data_path: %s, image_size: 16, batch_size: 4, num_workers: 2,"
                    " augment: {random_resized_crop: true, hflip: 0.5}}\n" % (tmp_path / "none", tmp_path / "tree"))
    task = ClassificationTask(load_config(str(path)))
    try:
        assert task.train_dataset.lazy and task.num_classes == 3 and len(task.splits["valid"]) == 6
        parallel = list(task.train_loader.batches(0))
        task.train_loader.num_workers = 0
        serial = list(task.train_loader.batches(0))
        assert len(parallel) == 4 and parallel[0][0].shape == (4, 3, 16, 16)
        for (xa, ya), (xb, yb) in zip(parallel, serial):
            np.testing.assert_array_equal(xa, xb)
            np.testing.assert_array_equal(ya, yb)
        metrics = task.evaluate_model(task.build_model(), "valid")
        assert metrics["top1"] in {k / 6 for k in range(7)} and "top5" not in metrics  # 3 classes: no top-5
    finally:
        task.close()


@pytest.mark.slow
def test_train_eval_export_from_the_command_line(fashion_mnist, tmp_path, capsys):
    from paddle_suite.cli import evaluate, export, train as cli_train

    common = ["-c", str(ROOT / "configs" / "lenet_fmnist.yaml"), "--no-progress",
              "-o", f"Global.output_dir={tmp_path}", "-o", "Global.max_steps=120", "-o", "Global.eval_every=120",
              "-o", "Global.test_split=null", "-o", "DataLoader.valid_size=0.02",
              "-o", "Optimizer.schedule.warmup_steps=20"]
    cli_train(common)
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["step"] == 120 and result["best_metrics"]["top1"] > 0.70  # chance is 0.10
    evaluate(common + ["--split", "valid"])  # the saved best checkpoint gives the same numbers again
    assert json.loads(capsys.readouterr().out)["metrics"] == pytest.approx(result["best_metrics"])
    export(common)
    exported = tmp_path / "lenet_fmnist" / "inference"
    assert (exported / "model.pdmodel").is_file() and (exported / "preprocess.json").is_file()
