"""PNG figures of a Hessian spectrum (matplotlib, Agg backend, written atomically).

* ``plot_rank_spectrum``: eigenvalue against rank on log-log axes with the least-squares and
  maximum-likelihood power-law lines (a power law is a straight line here).
* ``plot_density``: the SLQ spectral density on a log density axis (Ghorbani et al.'s figure).
"""
import numpy as np

from ..io import atomic_write


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path):
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=120, bbox_inches="tight")


def plot_rank_spectrum(eigenvalues, fit, path, title="Hessian spectrum"):
    """``eigenvalues`` (positive ones used, descending) and a ``powerlaw.PowerLawFit``."""
    plt = _pyplot()
    values = np.sort(np.asarray(eigenvalues, dtype=np.float64)[np.asarray(eigenvalues) > 0])[::-1]
    ranks = np.arange(1, len(values) + 1)
    figure, axis = plt.subplots(figsize=(5, 4))
    try:
        axis.loglog(ranks, values, "o", markersize=3, label="eigenvalues")
        axis.loglog(ranks, np.exp(fit.intercept_ls) * ranks ** -fit.slope_ls,
                    label=f"LS fit s = {fit.slope_ls:.3f} (R$^2$ {fit.r2_ls:.3f})")
        # MLE line through the rank-size relation lambda_r = lambda_min (r / k)^(-s)
        axis.loglog(ranks, fit.lambda_min * (ranks / fit.k) ** -fit.slope_mle, "--",
                    label=f"MLE s = {fit.slope_mle:.3f}")
        verdict = "power law" if fit.is_power_law else "not a power law"
        axis.set_title(f"{title}\nKS {fit.ks_mle:.3f}, bootstrap p {fit.ks_pvalue:.2f}: {verdict}", fontsize=9)
        axis.set_xlabel("rank k")
        axis.set_ylabel("eigenvalue")
        axis.legend(fontsize=8)
        _save(figure, path)
    finally:
        plt.close(figure)


def plot_density(density, path, points=None, title="Hessian eigenvalue density (SLQ)"):
    """A ``lanczos.SpectralDensity`` on its own grid; the density axis is logarithmic."""
    plt = _pyplot()
    grid = density.grid(points)
    values = density.evaluate(grid)
    figure, axis = plt.subplots(figsize=(5, 4))
    try:
        axis.semilogy(grid, values + 1e-12)
        axis.set_ylim(bottom=max(1e-12, values.max() * 1e-12))
        axis.set_xlabel("eigenvalue")
        axis.set_ylabel("density (log)")
        axis.set_title(f"{title}, sigma {density.sigma:.2g}", fontsize=9)
        _save(figure, path)
    finally:
        plt.close(figure)
