"""Shared classification kit: image datasets, deterministic augmentation, a multi-process batch
loader, classification losses and metrics, two baseline models and ``Global.task: classification``.

Capabilities that train image classifiers (vision MLPs, backdoor attacks, Hessian spectra) build on
it; importing the package registers its task, architectures, losses and metrics.
"""
from paddle_suite.classification import datasets, loader, losses, metrics, models, task, transforms  # noqa: F401
from paddle_suite.classification.task import ClassificationTask  # noqa: F401
