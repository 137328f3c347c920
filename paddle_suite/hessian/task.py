"""``Global.task: hessian``: an image classifier (the shared classification kit) plus a ``Hessian:`` section.

Training is the classification task's, unchanged (``tools/train.py`` works on these configs too);
``tools/hessian.py`` (``paddle_suite.hessian.tool``) reads the ``Hessian`` section to measure the
spectrum of a checkpoint. Readings of the paper (Xie et al. 2022) left open, and our choices:

* **Which loss.** The mean cross-entropy (no label smoothing, no mixup: the paper's plain loss) of
  the model in eval mode (dropout off, batch norm on running statistics: one fixed function) on
  ``num_batches x batch_size`` training images (the training split after the held-out valid part)
  drawn once by ``subset_seed``, *without augmentation* (only the normalisation of evaluation). The
  same images for every checkpoint of a run, so trained and initial spectra are comparable.
* **Random initialisation** (``checkpoint: init``): the model built after ``paddle.seed(Global.seed)``,
  as the trainer builds it before its first step.
* **Exactness.** ``method: exact`` is checked before the run (``check_exact``): one Hessian-vector
  product on the first 16 images against float64 finite differences of gradients; a relative error
  above 1e-4 stops with a message to use ``fd64``. The kit's ``LeNet`` calls ``paddle.flatten`` in its
  forward (no double grad in paddle 2.6.2), so for exact products it is viewed as
  ``classifier(reshape(features(x)))``, the same function with the same parameters.
* **Batch norm** (``ResNet20``): in eval mode (running statistics) it is an affine map of one fixed
  function, but exact products fail earlier: ResNet-20's forward calls ``paddle.flatten`` ("flatten_grad
  doesn't have any gradop", measured) and its shortcuts take strided slices (no double grad,
  ``layers.py``); we did not check batch norm's own double grad. So ResNet-20 uses ``method: fd64``
  (first-order gradients only, right for every op): 5.4 s per product at batch 128 (measured).
"""
import numpy as np
import paddle.nn as nn

from paddle_suite.classification.models import LeNet
from paddle_suite.classification.task import ClassificationTask
from paddle_suite.config import ConfigError, Field
from paddle_suite.registry import TASKS

from .hvp import METHODS
from .powerlaw import N_BOOTSTRAP, P_VALUE_THRESHOLD

EXACT_CHECK_SAMPLES = 16
EXACT_CHECK_TOLERANCE = 1e-4  # float64 finite differences agree to ~1e-10 on exact models; wrong double grads give 0.1-1

HESSIAN_SCHEMA = {
    "checkpoint": Field("best", str, help="best | latest | init (untrained, at Global.seed) | a checkpoint path"),
    "method": Field("exact", str, choices=METHODS, help="exact double backprop, ggn (Gauss-Newton), fd64 "
                    "(float64 finite differences of gradients: any model)"),
    "dtype": Field("float32", str, choices=("float32", "float64"), help="exact/ggn precision (fd64: float64)"),
    "num_batches": Field(1, int, help="batches of training images the Hessian is averaged over"),
    "keep_graphs": Field("auto", str, choices=("auto", "always", "never"),
                         help="keep each batch's forward + first-backward graph for all products (about half the "
                              "cost of a product, memory per batch); auto: only for one batch"),
    "batch_size": Field(128, int),
    "subset_seed": Field(0, int, help="draws the fixed training subset"),
    "top_k": Field(100, int, help="top eigenvalues computed and fitted"),
    "lanczos": {
        "tol": Field(1e-3, float, help="stop when every top-k eigenvalue error bound (r^2 / gap) <= tol * |eigenvalue|"),
        "max_iter": Field(0, int, help="Lanczos steps at most; 0 = min(parameters, 3 top_k + 60)"),
    },
    "trace": {"products": Field(99, int, help="Hutch++ Hessian-vector products (>= 6); 0 = skip")},
    "density": {
        "steps": Field(90, int, help="SLQ Lanczos steps per probe; 0 = skip"),
        "probes": Field(1, int, help="SLQ random starts"),
    },
    "power_law": {
        "skip_top": Field(0, int, help="leave the largest eigenvalues out of the fit (e.g. the C-1 class outliers)"),
        "p_threshold": Field(P_VALUE_THRESHOLD, float, help="power law when the KS bootstrap p-value >= this "
                             "(Clauset, Shalizi, Newman 2009: 0.1)"),
        "bootstrap": Field(N_BOOTSTRAP, int, help="bootstrap samples for the p-value (2500: p to about 0.01)"),
    },
    "check_exact": Field(True, bool, help="method exact: compare one product with fd64 first"),
    "seed": Field(0, int, help="Lanczos start and probe vectors"),
}


def check_hessian_section(hessian, source="config"):
    """Raise ``ConfigError`` for values the schema's types cannot catch, naming the key and the fix."""
    def fail(key, message):
        raise ConfigError(f"{source}: Hessian.{key}: {message}")

    for key in ("num_batches", "batch_size"):
        if hessian[key] < 1:
            fail(key, f"{hessian[key]} must be >= 1")
    fitted = hessian["top_k"] - hessian["power_law"]["skip_top"]
    if hessian["power_law"]["skip_top"] < 0:
        fail("power_law.skip_top", f"{hessian['power_law']['skip_top']} must be >= 0")
    if fitted < 3:
        fail("top_k", f"{hessian['top_k']} leaves {fitted} eigenvalues for the power-law fit after "
                      f"power_law.skip_top={hessian['power_law']['skip_top']}; need at least 3")
    if not 0 < hessian["lanczos"]["tol"] < 1:
        fail("lanczos.tol", f"{hessian['lanczos']['tol']} must be in (0, 1), e.g. 1e-3")
    max_iter = hessian["lanczos"]["max_iter"]
    if max_iter and max_iter < hessian["top_k"]:
        fail("lanczos.max_iter", f"{max_iter} is below top_k={hessian['top_k']}; 0 (automatic) or >= top_k")
    products = hessian["trace"]["products"]
    if products and products < 6:
        fail("trace.products", f"{products}: Hutch++ needs at least 6 products (or 0 to skip)")
    if hessian["density"]["steps"] < 0 or hessian["density"]["steps"] == 1:
        fail("density.steps", f"{hessian['density']['steps']}: 0 (skip) or >= 2")
    if hessian["density"]["probes"] < 1:
        fail("density.probes", f"{hessian['density']['probes']} must be >= 1")
    if not 0 < hessian["power_law"]["p_threshold"] < 1:
        fail("power_law.p_threshold", f"{hessian['power_law']['p_threshold']} must be in (0, 1), e.g. 0.1")
    if hessian["power_law"]["bootstrap"] < 1:
        fail("power_law.bootstrap", f"{hessian['power_law']['bootstrap']} must be >= 1, e.g. 2500")
    if not hessian["checkpoint"]:
        fail("checkpoint", "empty; use best, latest, init or a checkpoint path")


@TASKS.register("hessian")
class HessianTask(ClassificationTask):
    """The classification task with a ``Hessian`` section (see the module docstring)."""

    schema = {**ClassificationTask.schema, "Hessian": HESSIAN_SCHEMA}

    def __init__(self, config):
        check_hessian_section(config["Hessian"], config.get("_source", "config"))
        super().__init__(config)

    def hessian_batches(self):
        """The fixed ``[(images float32 NCHW, labels int64)]`` the Hessian is measured on."""
        settings, train = self.config["Hessian"], self.train_dataset
        wanted = settings["num_batches"] * settings["batch_size"]
        if wanted > len(train):
            raise ConfigError(f"Hessian.num_batches x Hessian.batch_size = {wanted} images, but the training "
                              f"split has {len(train)}: lower one of them")
        chosen = np.sort(np.random.default_rng(settings["subset_seed"]).choice(len(train), wanted, replace=False))
        transform = self.transform_for("eval")
        batches = []
        for part in np.split(chosen, settings["num_batches"]):
            batches.append((transform(train.load(part), self.seed, 0, part), train.labels[part]))
        return batches


class FlattenedLeNet(nn.Layer):
    """The kit's ``LeNet`` as ``classifier(reshape(features(x)))``: same parameters (shared, same names),
    same function, but with a double grad (``paddle.flatten`` has none in paddle 2.6.2)."""

    def __init__(self, lenet):
        super().__init__()
        self.features, self.classifier = lenet.features, lenet.classifier

    def forward(self, x):
        features = self.features(x)
        return self.classifier(features.reshape([features.shape[0], -1]))


def twice_differentiable_view(model):
    """``model`` itself, or a view of it whose forward paddle can differentiate twice (see ``FlattenedLeNet``)."""
    return FlattenedLeNet(model) if isinstance(model, LeNet) else model
