"""One call from (model, loss, batches) to a written Hessian spectrum report: what a tool runs.

``spectrum_report`` builds the operator, computes the top-k eigenvalues (Lanczos), the trace
(Hutch++ with its interval), the SLQ density and the power-law fit, and writes into ``out_dir``
(as a whole, atomically: a failed run leaves no half-written report):

* ``spectrum.json``: settings, eigenvalues with residuals, error bounds and convergence flags, trace, fit, verdict
  (plus the caller's ``context``: model, checkpoint, data);
* ``eigenvalues.csv``: ``rank,eigenvalue,residual,error_bound,converged``;
* ``rank_spectrum.png``, ``density.png`` (when the density is computed);
* ``summary.md`` (with ``summary=True``): the headline numbers in a few lines of markdown.

``trace_products=0`` or ``density_steps=0`` skips that estimate. ``progress`` (a tqdm bar or
anything with ``update(n)`` and ``set_postfix_str(text)``) advances by one per Hessian-vector
product. ``skip_top`` leaves the first ranks out of the power-law fit (the fit then starts at rank
``skip_top + 1``; ranks in the JSON and CSV stay those of the whole top-k).
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
from .powerlaw import N_BOOTSTRAP, P_VALUE_THRESHOLD, fit_power_law


class _Counted:
    """An operator that advances a progress bar by one per product and names the current phase."""

    def __init__(self, operator, progress):
        self.operator, self.progress, self.dim = operator, progress, operator.dim

    def phase(self, name):
        self.progress.set_postfix_str(name)

    def matvec(self, v):
        result = self.operator.matvec(v)
        self.progress.update(1)
        return result


def spectrum_report(model, batches, out_dir, loss_fn=None, method="exact", top_k=100, tol=1e-6,
                    trace_products=99, density_steps=90, density_runs=1, dtype=None, seed=0,
                    max_steps=None, skip_top=0, p_threshold=P_VALUE_THRESHOLD, n_bootstrap=N_BOOTSTRAP, progress=None,
                    context=None, title="Hessian spectrum", summary=False, cache_graphs=None):
    """Measure and write the spectrum of ``model``'s loss on ``batches``; returns the JSON dict.

    ``loss_fn`` defaults to ``SoftmaxCrossEntropy()``. For ``exact`` and ``ggn`` the model is
    passed through ``make_double_differentiable`` (a copy; the given model is not changed).
    ``max_steps`` bounds the Lanczos steps (default ``min(P, 3 top_k + 60)``). ``cache_graphs``: see
    ``HVPOperator``.
    """
    loss_fn = SoftmaxCrossEntropy() if loss_fn is None else loss_fn
    if method in ("exact", "ggn"):
        model = make_double_differentiable(model)
    operator = HVPOperator(model, loss_fn, batches, method=method, dtype=dtype, cache_graphs=cache_graphs)
    counted = _Counted(operator, progress) if progress is not None else None
    product = counted or operator

    def phase(name):
        if counted is not None:
            counted.phase(name)

    rng = np.random.default_rng(seed)
    started = time.perf_counter()
    phase("top-k eigenvalues (Lanczos)")
    eigen = top_eigenpairs(product, operator.dim, top_k, tol=tol, max_steps=max_steps, rng=rng)
    trace = density = None
    if trace_products:
        phase("trace (Hutch++)")
        trace = hutchpp_trace(product, operator.dim, trace_products, rng=rng)
    if density_steps:
        phase("density (SLQ)")
        density = slq_density(product, operator.dim, density_steps, n_runs=density_runs, rng=rng)
    fitted = eigen.eigenvalues[int(skip_top):]
    fit = fit_power_law(fitted, p_threshold=p_threshold, n_bootstrap=n_bootstrap, seed=seed)
    report = {
        **(context or {}),
        "settings": {"method": method, "top_k": int(top_k), "tol": tol, "max_steps": max_steps,
                     "trace_products": trace_products, "density_steps": density_steps,
                     "density_runs": density_runs, "seed": seed, "skip_top": int(skip_top),
                     "p_threshold": p_threshold, "n_bootstrap": n_bootstrap, "dtype": str(operator.dtype),
                     "parameters": operator.dim, "samples": operator.n_samples},
        "eigenvalues": eigen.eigenvalues.tolist(),
        "residuals": eigen.residuals.tolist(),
        "error_bounds": eigen.error_bounds.tolist(),
        "all_converged": bool(eigen.converged.all()),
        "lanczos_steps": int(eigen.n_products),
        "trace": None if trace is None else {"estimate": trace.trace, "ci95": [trace.ci_low, trace.ci_high],
                                             "estimator": "Hutch++"},
        "density": None if density is None else {"sigma": density.sigma,
                                                 "slq_trace": density.trace(operator.dim)},
        "power_law": fit.to_dict(),
        "hessian_vector_products": operator.n_products,
        "seconds": time.perf_counter() - started,
    }
    with atomic_directory(out_dir) as tmp:
        with open(os.path.join(tmp, "spectrum.json"), "w") as handle:
            json.dump(report, handle, indent=1)
        with open(os.path.join(tmp, "eigenvalues.csv"), "w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["rank", "eigenvalue", "residual", "error_bound", "converged"])
            for rank, (value, residual, bound, ok) in enumerate(
                    zip(eigen.eigenvalues, eigen.residuals, eigen.error_bounds, eigen.converged), 1):
                writer.writerow([rank, repr(float(value)), repr(float(residual)), repr(float(bound)), bool(ok)])
        plot_rank_spectrum(fitted, fit, os.path.join(tmp, "rank_spectrum.png"), title=title)
        if density is not None:
            plot_density(density, os.path.join(tmp, "density.png"))
        if summary:
            with open(os.path.join(tmp, "summary.md"), "w") as handle:
                handle.write(summary_markdown(report, title))
    return report


def summary_markdown(report, title="Hessian spectrum"):
    """A few lines of markdown with the headline numbers of a ``spectrum_report`` dict."""
    fit, settings = report["power_law"], report["settings"]
    values = report["eigenvalues"]
    verdict = "power law" if fit["is_power_law"] else "not a power law"
    lines = [f"# {title}", ""]
    for key in ("run_dir", "checkpoint", "model", "data"):
        if key in report:
            lines.append(f"- {key}: `{report[key]}`")
    lines += [
        f"- method `{settings['method']}` ({settings['dtype']}), {settings['parameters']:,} parameters, "
        f"{settings['samples']} samples, {report['hessian_vector_products']} Hessian-vector products, "
        f"{report['seconds']:.1f} s",
        f"- top-{len(values)} eigenvalues: {values[0]:.6g} ... {values[-1]:.6g}; all converged "
        f"(eigenvalue error bound <= {settings['tol']:g} |lambda|): {report['all_converged']}",
        f"- power-law fit over ranks {settings['skip_top'] + 1}..{settings['skip_top'] + fit['k']}: "
        f"slope LS {fit['slope_ls']:.4f} (R^2 {fit['r2_ls']:.4f}), slope MLE {fit['slope_mle']:.4f} "
        f"+- {fit['slope_mle_std_error']:.4f}",
        f"- KS distance {fit['ks_mle']:.4f}, bootstrap p = {fit['ks_pvalue']:.3f} ({fit['n_bootstrap']} samples; "
        f"power law when p >= {fit['p_threshold']:g}): **{verdict}**",
        f"- likelihood ratio vs an exponential: R = {fit['lr_exponential']:.2f} (z {fit['lr_exponential_z']:.2f}, "
        f"p = {fit['lr_exponential_pvalue']:.3g}; R > 0 favours the power law)",
    ]
    if report.get("trace"):
        low, high = report["trace"]["ci95"]
        lines.append(f"- trace (Hutch++): {report['trace']['estimate']:.6g} [95%: {low:.6g}, {high:.6g}]")
    lines += ["", "![rank spectrum](rank_spectrum.png)"]
    if report.get("density"):
        lines.append("![density](density.png)")
    return "\n".join(lines) + "\n"
