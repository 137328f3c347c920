"""Hessian spectra of ``paddle.nn.Layer`` losses and the power-law test (issue 23).

* ``hvp.HVPOperator``: ``v -> H v`` (exact double backprop, Gauss-Newton, float64 finite differences).
* ``layers.make_double_differentiable``: conv / pool / flatten layers swapped for forms whose
  second derivatives paddle 2.6.2 gets right; ``losses.SoftmaxCrossEntropy`` likewise.
* ``lanczos``: top eigenpairs (Lanczos, full reorthogonalisation, stopping on eigenvalue error
  bounds), PyHessian's power iteration, Hutchinson / Hutch++ trace, SLQ density.
* ``powerlaw.fit_power_law``: LS and MLE slopes, KS distance and its bootstrap p-value (the verdict),
  likelihood ratio against an exponential. ``plots``: PNG figures.
* ``report.spectrum_report``: all of the above for (model, batches), written to a directory.
* ``task``: ``Global.task: hessian`` (the classification task plus a ``Hessian:`` section);
  ``tool``: ``tools/hessian.py`` (train or load a run, measure, write, log to VisualDL).
"""
from .hvp import HVPOperator, hvp_relative_error
from .lanczos import (hutchinson_trace, hutchpp_trace, lanczos, power_iteration, slq_density,
                      top_eigenpairs)
from .layers import make_double_differentiable
from .losses import MeanSquaredError, SoftmaxCrossEntropy
from .powerlaw import fit_power_law
from .report import spectrum_report
from .task import HessianTask

__all__ = [
    "HVPOperator", "hvp_relative_error", "hutchinson_trace", "hutchpp_trace", "lanczos",
    "power_iteration", "slq_density", "top_eigenpairs", "make_double_differentiable",
    "MeanSquaredError", "SoftmaxCrossEntropy", "fit_power_law", "spectrum_report",
    "HessianTask",
]
