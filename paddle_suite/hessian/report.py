"""One call from (model, loss, batches) to a written Hessian spectrum report: what a tool runs.

``spectrum_report`` builds the operator, computes the top-k eigenvalues (Lanczos), the trace
(Hutch++ with its interval), the SLQ density and the power-law fit, and writes into ``out_dir``
(as a whole, atomically: a failed run leaves no half-written report):

* ``spectrum.json``: settings, eigenvalues with residuals and convergence flags, trace, fit, verdict;
* ``eigenvalues.csv``: ``rank,eigenvalue,residual,converged``;
* ``rank_spectrum.png``, ``density.png``.
"""
import csv
import json
import os
import time

import numpy as np

from ..io import atomic_directory
from .hvp import HVPOperator
from .lanczos import hutchpp_trace, slq_density, top_eigenpairs
from .layers import make_double_differentiable
from .losses import SoftmaxCrossEntropy
from .plots import plot_density, plot_rank_spectrum
from .powerlaw import fit_power_law


def spectrum_report(model, batches, out_dir, loss_fn=None, method="exact", top_k=100, tol=1e-6,
                    trace_products=99, density_steps=90, density_runs=1, dtype=None, seed=0):
    """Measure and write the spectrum of ``model``'s loss on ``batches``; returns the JSON dict.

    ``loss_fn`` defaults to ``SoftmaxCrossEntropy()``. For ``exact`` and ``ggn`` the model is
    passed through ``make_double_differentiable`` (a copy; the given model is not changed).
    """
    loss_fn = SoftmaxCrossEntropy() if loss_fn is None else loss_fn
    if method in ("exact", "ggn"):
        model = make_double_differentiable(model)
    operator = HVPOperator(model, loss_fn, batches, method=method, dtype=dtype)
    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    eigen = top_eigenpairs(operator, operator.dim, top_k, tol=tol, rng=rng)
    trace = hutchpp_trace(operator, operator.dim, trace_products, rng=rng)
    density = slq_density(operator, operator.dim, density_steps, n_runs=density_runs, rng=rng)
    fit = fit_power_law(eigen.eigenvalues)
    report = {
        "settings": {"method": method, "top_k": int(top_k), "tol": tol, "trace_products": trace_products,
                     "density_steps": density_steps, "density_runs": density_runs, "seed": seed,
                     "dtype": str(operator.dtype), "parameters": operator.dim, "samples": operator.n_samples},
        "eigenvalues": eigen.eigenvalues.tolist(),
        "residuals": eigen.residuals.tolist(),
        "all_converged": bool(eigen.converged.all()),
        "trace": {"estimate": trace.trace, "ci95": [trace.ci_low, trace.ci_high], "estimator": "Hutch++"},
        "density": {"sigma": density.sigma, "slq_trace": density.trace(operator.dim)},
        "power_law": fit.to_dict(),
        "hessian_vector_products": operator.n_products,
        "seconds": time.perf_counter() - started,
    }
    with atomic_directory(out_dir) as tmp:
        with open(os.path.join(tmp, "spectrum.json"), "w") as handle:
            json.dump(report, handle, indent=1)
        with open(os.path.join(tmp, "eigenvalues.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rank", "eigenvalue", "residual", "converged"])
            for rank, (value, residual, ok) in enumerate(zip(eigen.eigenvalues, eigen.residuals, eigen.converged), 1):
                writer.writerow([rank, repr(float(value)), repr(float(residual)), bool(ok)])
        plot_rank_spectrum(eigen.eigenvalues, fit, os.path.join(tmp, "rank_spectrum.png"))
        plot_density(density, os.path.join(tmp, "density.png"))
    return report
