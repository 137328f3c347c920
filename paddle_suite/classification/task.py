"""``Global.task: classification``: image classifiers on the shared dense engine.

Data: ``DataLoader.dataset`` (``cifar10``, ``fashion_mnist``, ``mnist``, ``image_folder``; see
``classification/datasets.py``). When a source has no ``valid`` split, ``DataLoader.valid_size``
(a fraction) of ``train`` is held out as ``valid`` by a fixed permutation that does not depend on
``Global.seed`` (runs of different seeds are selected on the same images); ``valid_size: 0``
makes ``valid`` the test split (then the reported test accuracy is also the selection metric).

Batches come from ``loader.BatchLoader``: deterministic in (seed, epoch, position), built by
``DataLoader.num_workers`` processes. Augmentations (``DataLoader.augment``) apply to training
batches only; evaluation sees the normalised images (centre crops for image folders).
Normalisation uses ``augment.mean/std`` when given, else the per-channel statistics of the
training split (ImageNet's for lazy image folders). With ``Loss.mixup_alpha`` or
``Loss.cutmix_alpha`` the targets are mixed, label-smoothed soft targets and the loss is their
cross-entropy.

Subclasses change the data through hooks: ``build_train_dataset()`` (e.g. a backdoor task
poisons it), ``build_eval_dataset(split)``, ``transform_for(split)``, ``build_loss()``.
The exported model takes normalised float32 NCHW images; ``preprocess.json`` (written beside
checkpoints and exports) holds the class names, mean, std and image size.
"""
import inspect
import json
import logging

import numpy as np

import paddle_suite  # noqa: F401  (sets MKL_DEBUG_CPU_TYPE before paddle loads)
import paddle

from paddle_suite.classification import datasets, transforms as T
from paddle_suite.classification.loader import BatchLoader
from paddle_suite.classification.metrics import evaluate_classifier
from paddle_suite.config import REQUIRED, ConfigError, Field, build_arch
from paddle_suite.registry import ARCHS, LOSSES, TASKS
from paddle_suite.task import DenseTask

log = logging.getLogger("paddle_suite")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_HOLDOUT_SEED = 20260  # fixed: the valid split must not change with Global.seed


@TASKS.register("classification")
class ClassificationTask(DenseTask):
    best_metric = "top1"
    best_mode = "max"

    schema = {
        "DataLoader": {
            "dataset": Field(REQUIRED, str, choices=datasets.DATASETS),
            "data_path": Field(None, str, help="file or folder of the dataset (overrides the search)"),
            "cache_dir": Field(None, str, help="decoded-array cache; default $PADDLE_SUITE_CACHE, "
                               "else ~/.cache/paddle_suite"),
            "image_size": Field(0, int, help="side of the model's input; 0 = the dataset's own (image_folder: 224)"),
            "valid_size": Field(0.1, float, help="fraction of train held out as valid when the dataset has no valid "
                                "split; 0 = use the test split as valid"),
            "train_subset": Field(0, int, help="train on this many training images (a fixed random choice); 0 = all"),
            "batch_size": 128,
            "eval_batch_size": 512,
            "num_workers": Field(2, int, help="processes building batches; 0 = in the training process"),
            "augment": {
                "random_crop_padding": Field(0, int, help="pad by this many pixels, crop back at a random place"),
                "random_resized_crop": Field(False, bool, help="random area/aspect crop resized to image_size"),
                "crop_scale": Field([0.08, 1.0], list, help="random_resized_crop area fraction range"),
                "crop_ratio": Field([0.75, 1.3333333], list, help="random_resized_crop aspect ratio range"),
                "hflip": Field(0.0, float, help="probability of a horizontal flip"),
                "randaugment_ops": Field(0, int, help="RandAugment operations per image; 0 = off"),
                "randaugment_magnitude": Field(9, int, help="RandAugment magnitude, 0..10"),
                "random_erasing": Field(0.0, float, help="probability of erasing a random box"),
                "mean": Field(None, list, help="per-channel mean in [0, 1]; default: the training split's"),
                "std": Field(None, list, help="per-channel std in [0, 1]; default: the training split's"),
            },
        },
        "Loss": {
            "name": Field("cross_entropy", str, help="a registered loss: cross_entropy, soft_target_cross_entropy"),
            "label_smoothing": Field(0.0, float),
            "mixup_alpha": Field(0.0, float, help="Beta(alpha, alpha) mixup; 0 = off"),
            "cutmix_alpha": Field(0.0, float, help="Beta(alpha, alpha) CutMix; 0 = off"),
        },
        "Metric": {"topk": Field([1, 5], list, help="report top-k accuracy for these k")},
    }

    def __init__(self, config):
        super().__init__(config)
        self.data_cfg, self.loss_cfg = config["DataLoader"], config["Loss"]
        self.seed = int(config["Global"]["seed"])
        self._check_config()
        self.splits = self.load_splits()
        self._hold_out_valid()
        self.train_dataset = self.build_train_dataset()
        reference = self.train_dataset
        self.num_classes, self.in_channels = reference.num_classes, reference.in_channels
        self.image_size = self.data_cfg["image_size"] or (reference.image_shape[0] if not reference.lazy else 224)
        self.mean, self.std = self._normalisation(reference)
        self.topk = [k for k in self.config["Metric"]["topk"] if k <= self.num_classes]
        if len(self.topk) < len(self.config["Metric"]["topk"]):
            log.info("Metric.topk: only %d classes, so reporting top-%s only", self.num_classes, self.topk)
        self.mixer = T.BatchMixer(self.num_classes, self.loss_cfg["mixup_alpha"], self.loss_cfg["cutmix_alpha"],
                                  self.loss_cfg["label_smoothing"])
        self.loss_fn = self.build_loss()
        self.train_loader = BatchLoader(self.train_dataset, self.transform_for("train"), self.data_cfg["batch_size"],
                                        self.seed, shuffle=True, drop_last=True,
                                        num_workers=self.data_cfg["num_workers"], mixer=self.mixer)
        self._eval_loaders = {}
        log.info("%s: train %d images, %d classes, input %dx%dx%d; valid %d, test %d", self.data_cfg["dataset"],
                 len(self.train_dataset), self.num_classes, self.in_channels, self.image_size, self.image_size,
                 len(self.splits["valid"]), len(self.splits.get("test", ())))

    # ------------------------------------------------------------------ configuration
    def _check_config(self):
        dl, loss = self.data_cfg, self.loss_cfg
        for key in ("batch_size", "eval_batch_size"):
            if dl[key] < 1:
                raise ConfigError(f"DataLoader.{key}={dl[key]}: must be >= 1")
        if not 0.0 <= dl["valid_size"] < 1.0:
            raise ConfigError(f"DataLoader.valid_size={dl['valid_size']}: a fraction in [0, 1)")
        if dl["num_workers"] < 0:
            raise ConfigError(f"DataLoader.num_workers={dl['num_workers']}: must be >= 0")
        try:
            LOSSES.get(loss["name"])
        except KeyError as err:
            raise ConfigError(f"Loss.name: {err.args[0]}") from None
        if not 0.0 <= loss["label_smoothing"] < 1.0:
            raise ConfigError(f"Loss.label_smoothing={loss['label_smoothing']}: must be in [0, 1)")
        if loss["mixup_alpha"] < 0 or loss["cutmix_alpha"] < 0:
            raise ConfigError("Loss.mixup_alpha and Loss.cutmix_alpha must be >= 0 (0 = off)")
        topk = self.config["Metric"]["topk"]
        if not topk or not all(isinstance(k, int) and k >= 1 for k in topk) or 1 not in topk:
            raise ConfigError(f"Metric.topk={topk}: positive integers including 1 (top1 selects the best model)")
        if not 0 <= dl["augment"]["randaugment_magnitude"] <= 10:
            raise ConfigError(f"DataLoader.augment.randaugment_magnitude={dl['augment']['randaugment_magnitude']}: "
                              "must be in 0..10")

    # ------------------------------------------------------------------ data hooks
    def load_splits(self):
        """``{split: ImageDataset}`` of the configured source."""
        return datasets.load_dataset(self.data_cfg["dataset"], self.data_cfg["data_path"], self.data_cfg["cache_dir"],
                                     self.config["Global"].get("data_root"))

    def _hold_out_valid(self):
        if "valid" in self.splits:
            return
        fraction = self.data_cfg["valid_size"]
        if fraction == 0:
            if "test" not in self.splits:
                raise ConfigError(f"{self.data_cfg['dataset']} has no valid or test split: set "
                                  "DataLoader.valid_size > 0 to hold out part of train")
            log.warning("DataLoader.valid_size=0: the best checkpoint is selected on the test split")
            self.splits["valid"] = self.splits["test"]
            return
        train = self.splits["train"]
        order = np.random.default_rng(_HOLDOUT_SEED).permutation(len(train))
        held = int(round(fraction * len(train)))
        self.splits["valid"] = train.subset(np.sort(order[:held]), f"{train.name} (held-out valid)")
        self.splits["train"] = train.subset(np.sort(order[held:]))

    def build_train_dataset(self):
        """The dataset training batches are drawn from (override to change it, e.g. to poison it)."""
        train = self.splits["train"]
        n = self.data_cfg["train_subset"]
        if 0 < n < len(train):
            order = np.random.default_rng(_HOLDOUT_SEED + 1).permutation(len(train))
            train = train.subset(np.sort(order[:n]))
        return train

    def build_eval_dataset(self, split):
        if split not in self.splits:
            raise ValueError(f"split '{split}' not available; this dataset has {', '.join(sorted(self.splits))}")
        return self.splits[split]

    def transform_for(self, split):
        """The per-sample pipeline for ``split`` ("train" augments; others only resize and normalise)."""
        aug, size, lazy = self.data_cfg["augment"], self.image_size, self.train_dataset.lazy
        native = None if lazy else self.train_dataset.image_shape[0]
        ops = []
        if split == "train" and aug["random_resized_crop"]:
            ops.append(T.RandomResizedCrop(size, aug["crop_scale"], aug["crop_ratio"]))
        elif lazy:
            ops.append(T.ResizeCenterCrop(size, 0.875))
        elif size != native:
            ops.append(T.ResizeCenterCrop(size, 1.0))
        if split == "train":
            if aug["random_crop_padding"]:
                ops.append(T.RandomCropPad(aug["random_crop_padding"]))
            if aug["hflip"]:
                ops.append(T.HorizontalFlip(aug["hflip"]))
            if aug["randaugment_ops"]:
                ops.append(T.RandAugment(aug["randaugment_ops"], aug["randaugment_magnitude"]))
        ops.append(T.Normalize(self.mean, self.std))
        if split == "train" and aug["random_erasing"]:
            ops.append(T.RandomErasing(aug["random_erasing"]))
        return T.Compose(ops)

    def build_loss(self):
        # mixed targets are smoothed before mixing (transforms.BatchMixer), so the loss must not smooth again
        smoothing = 0.0 if self.mixer.active else self.loss_cfg["label_smoothing"]
        return LOSSES.get(self.loss_cfg["name"])(label_smoothing=smoothing)

    def _normalisation(self, dataset):
        aug = self.data_cfg["augment"]
        if aug["mean"] is not None and aug["std"] is not None:
            mean, std = aug["mean"], aug["std"]
        elif aug["mean"] is not None or aug["std"] is not None:
            raise ConfigError("DataLoader.augment.mean and .std go together: set both or neither")
        elif dataset.lazy:
            mean, std = IMAGENET_MEAN, IMAGENET_STD
        else:
            mean, std = channel_statistics(dataset.images)
        if len(mean) != dataset.in_channels or len(std) != dataset.in_channels:
            raise ConfigError(f"DataLoader.augment.mean/std need {dataset.in_channels} values, got {mean} / {std}")
        return [float(m) for m in mean], [float(s) for s in std]

    # ------------------------------------------------------------------ DenseTask contract
    def build_model(self):
        return build_arch(self._arch_config(), **self._data_arch_args())

    def _data_arch_args(self):
        return {"num_classes": self.num_classes, "in_channels": self.in_channels, "image_size": self.image_size}

    def _arch_config(self):
        """The config with the data-derived ``Arch`` keys removed: the data decides them.

        Factories such as the vision backbones give ``num_classes``/``in_channels``/``image_size``
        defaults (1000/3/224) so they are usable alone; the config then holds those defaults and
        the data's values replace them. A value set to something else than both the factory's
        default and the data's is a contradiction, reported instead of silently replaced.
        """
        arch = self.config["Arch"]
        defaults = {name: param.default for name, param in
                    inspect.signature(ARCHS.get(arch["name"])).parameters.items()}
        for key, data_value in self._data_arch_args().items():
            if key in arch and arch[key] not in (data_value, defaults.get(key)):
                hint = "set DataLoader.image_size" if key == "image_size" else "the dataset decides it"
                raise ConfigError(f"Arch.{key}={arch[key]} contradicts the data ({data_value}): remove it ({hint})")
        trimmed = {k: v for k, v in arch.items() if k not in self._data_arch_args()}
        return dict(self.config, Arch=trimmed)

    def steps_per_epoch(self, world_size=1):
        return self.train_loader.steps_per_epoch(world_size)

    def train_batches(self, epoch, start=0, rank=0, world_size=1):
        for images, targets in self.train_loader.batches(epoch, start, rank, world_size):
            yield paddle.to_tensor(images), paddle.to_tensor(targets)

    def train_step(self, model, batch):
        images, targets = batch
        return self.loss_fn(model(images), targets), images.shape[0]

    def eval_loader(self, split):
        if split not in self._eval_loaders:
            self._eval_loaders[split] = BatchLoader(
                self.build_eval_dataset(split), self.transform_for(split), self.data_cfg["eval_batch_size"], self.seed,
                shuffle=False, drop_last=False, num_workers=self.data_cfg["num_workers"])
        return self._eval_loaders[split]

    def evaluate_model(self, model, split="valid"):
        return evaluate_classifier(model, self.eval_loader(split).batches(0), self.topk)

    def input_spec(self):
        return [paddle.static.InputSpec([None, self.in_channels, self.image_size, self.image_size], "float32", "image")]

    def artifacts(self):
        return {"preprocess.json": json.dumps({
            "class_names": list(self.train_dataset.class_names), "image_size": self.image_size,
            "channels": self.in_channels, "mean": self.mean, "std": self.std, "layout": "NCHW, RGB, (x/255-mean)/std",
        }, indent=1)}

    def close(self):
        """Stop loader worker processes."""
        for loader in (self.train_loader, *self._eval_loaders.values()):
            loader.close()


def channel_statistics(images, chunk=4096):
    """Per-channel mean and std in [0, 1] units of uint8 NHWC images, exactly, from pixel histograms."""
    channels = images.shape[3]
    hist = np.zeros((channels, 256), dtype=np.int64)
    for start in range(0, len(images), chunk):
        block = np.asarray(images[start:start + chunk]).reshape(-1, channels)
        offsets = block.astype(np.int64) + np.arange(channels) * 256
        hist += np.bincount(offsets.ravel(), minlength=channels * 256).reshape(channels, 256)
    values = np.arange(256) / 255.0
    total = hist.sum(axis=1)
    mean = hist @ values / total
    var = hist @ values**2 / total - mean**2
    return mean, np.sqrt(np.maximum(var, 1e-12))
