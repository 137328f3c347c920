"""Does a Hessian's top spectrum follow a power law ``lambda_k ~ lambda_1 k^(-s)``? (Xie et al. 2022, arXiv:2201.13011)

Input: the top-k eigenvalues (any order; the positive ones are used, sorted descending, so that
rank 1 is the largest). Reported:

* **Least squares in log-log** (the paper's fit): regress ``log lambda_r`` on ``log r``,
  ``r = 1..k``; the slope is ``-s``. Reported with the intercept and R^2 of the log-log fit.
* **Maximum likelihood** (Clauset, Shalizi, Newman 2009): treat the k eigenvalues as samples of a
  continuous power-law density ``p(lambda) ~ lambda^(-alpha)`` above ``lambda_min`` = the smallest of
  them; ``alpha_hat = 1 + k / sum log(lambda_i / lambda_min)``. A sample of that law has, in
  expectation, the rank-size relation ``lambda_r ~ lambda_min (r/k)^(-1/(alpha-1))``, so the slope is
  ``s = 1 / (alpha - 1)``, i.e. ``s_mle = mean log(lambda_i / lambda_min)``, with standard error
  ``s / sqrt(k)`` (delta method on Clauset's ``(alpha-1)/sqrt(k)``). We chose this MLE rather than
  one on the rank model because the rank model with Gaussian log-errors has the LS fit as its MLE
  and would add nothing; the distributional view is what the KS test needs. (The fixed lower
  cutoff at the k-th eigenvalue biases ``s_mle`` low by about ``s log(2 pi k) / (2k)`` on an exact rank
  power law: 3% at k = 100.)
* **Kolmogorov-Smirnov distance**: ``D = sup_lambda |F_emp(lambda) - F_fit(lambda)|``, ``F_emp`` the
  empirical CDF of the k eigenvalues and ``F_fit(lambda) = 1 - (lambda / lambda_min)^(-(alpha-1))`` the
  fitted power-law CDF (MLE alpha), evaluated on both sides of every jump. Also reported for the LS
  slope (``alpha = 1 + 1/s_ls``).
* **Goodness of fit, the verdict** (Clauset, Shalizi, Newman 2009, section 4.1): the p-value of ``D``
  by a parametric bootstrap. ``n_bootstrap`` samples of k values are drawn from the fitted power law
  above ``lambda_min``, each is fitted the same way (its own minimum as ``lambda_min``, its own MLE
  alpha) and its KS distance computed; ``p`` is the fraction at least as large as the observed ``D``.
  Verdict: **power law when p >= 0.1**, CSN's rule ("the power law is ruled out if p <= 0.1"),
  taken from that paper, not from our data. ``lambda_min`` is held at the k-th eigenvalue (no
  search for the tail's start, CSN's ``x_min`` step): the claim under test is that the whole top-k
  follows one power law. ``n_bootstrap = 2500`` gives p to about +-0.01 (CSN's figure).
* **Likelihood ratio against an exponential** (CSN section 5, Vuong's test): ``R`` = sum of the
  pointwise log-likelihood differences between the fitted power law and the fitted exponential
  ``p(lambda) = mu exp(-mu (lambda - lambda_min))`` (``mu`` its MLE) above the same ``lambda_min``, the
  normalised ``R / (sigma sqrt(k))`` and its two-sided p-value. ``R > 0`` with a small p: the power law is
  the better description. Reported, not part of the verdict: it compares two models rather than
  testing one.

Why not the asymptotic KS critical value ``1.358 / sqrt(k)`` (the first version's verdict): with
alpha fitted on the same sample the statistic is smaller than the table assumes (Lilliefors), so
that test almost never rejects at k = 100 (trained and initial LeNets both passed it). The
bootstrap calibrates ``D`` for the fit. How much power either has depends on k: the paper fits the
top few thousand eigenvalues; at k = 100 a deviation of 0.1 in the CDF is about the smallest the
test can see. Read the verdict with the rank plot, ``r2_ls`` and the LR test.
"""
import math
from dataclasses import asdict, dataclass

import numpy as np

P_VALUE_THRESHOLD = 0.1  # Clauset, Shalizi, Newman (2009), section 4.1
N_BOOTSTRAP = 2500  # p to about +-0.01 (ibid.)


@dataclass
class PowerLawFit:
    k: int
    slope_ls: float
    intercept_ls: float  # log(lambda_1) predicted by the LS fit
    r2_ls: float
    slope_mle: float
    slope_mle_std_error: float
    alpha_mle: float
    lambda_min: float
    ks_mle: float
    ks_ls: float
    ks_pvalue: float  # parametric-bootstrap p of ks_mle
    n_bootstrap: int
    p_threshold: float
    lr_exponential: float  # log-likelihood ratio R, power law vs exponential (> 0: power law better)
    lr_exponential_z: float  # R / (sigma sqrt(k))
    lr_exponential_pvalue: float  # two-sided (Vuong)
    is_power_law: bool  # ks_pvalue >= p_threshold

    def to_dict(self):
        return asdict(self)


def _positive_descending(eigenvalues):
    values = np.asarray(eigenvalues, dtype=np.float64).ravel()
    values = np.sort(values[values > 0])[::-1]
    return values


def _ks_rows(sorted_rows, alpha, lambda_min):
    """KS distance of each row (ascending values) to a power law; ``alpha`` / ``lambda_min`` per row."""
    k = sorted_rows.shape[-1]
    fitted = 1.0 - (sorted_rows / lambda_min) ** (-(alpha - 1.0))
    above = np.arange(1, k + 1) / k  # F_emp right after each jump
    below = np.arange(0, k) / k  # and right before it
    return np.maximum(np.abs(above - fitted).max(axis=-1), np.abs(fitted - below).max(axis=-1))


def ks_distance(values, alpha, lambda_min):
    """sup |F_emp - F_fit| for a continuous power law with exponent ``alpha`` above ``lambda_min``."""
    return float(_ks_rows(np.sort(np.asarray(values, dtype=np.float64)), alpha, lambda_min))


def _alpha_mle(sorted_rows):
    lambda_min = sorted_rows[..., :1]
    return 1.0 + sorted_rows.shape[-1] / np.log(sorted_rows / lambda_min).sum(axis=-1, keepdims=True), lambda_min


def ks_bootstrap_pvalue(k, alpha, lambda_min, observed, n_bootstrap=N_BOOTSTRAP, seed=0):
    """Fraction of power-law samples (size k, fitted like the data) whose KS distance is >= ``observed``."""
    rng = np.random.default_rng(seed)
    uniform = rng.random((int(n_bootstrap), int(k)))
    samples = np.sort(lambda_min * (1.0 - uniform) ** (-1.0 / (alpha - 1.0)), axis=1)  # inverse CDF
    alphas, minima = _alpha_mle(samples)
    distances = _ks_rows(samples, alphas, minima)
    return float(np.mean(distances >= observed))


def exponential_likelihood_ratio(values, alpha, lambda_min):
    """(R, normalised R, two-sided p) of the power law vs an exponential above ``lambda_min`` (Vuong)."""
    values = np.asarray(values, dtype=np.float64)
    excess = values - lambda_min
    rate = 1.0 / excess.mean()
    power = math.log(alpha - 1.0) - math.log(lambda_min) - alpha * np.log(values / lambda_min)
    exponential = math.log(rate) - rate * excess
    difference = power - exponential
    ratio, spread = float(difference.sum()), float(difference.std())
    if spread == 0.0:
        return ratio, math.inf if ratio else 0.0, 0.0 if ratio else 1.0
    z = ratio / (spread * math.sqrt(len(values)))
    return ratio, z, math.erfc(abs(z) / math.sqrt(2.0))


def fit_power_law(eigenvalues, p_threshold=P_VALUE_THRESHOLD, n_bootstrap=N_BOOTSTRAP, seed=0):
    """Fit ``lambda_r ~ lambda_1 r^(-s)`` to the positive eigenvalues; see the module docstring."""
    values = _positive_descending(eigenvalues)
    k = len(values)
    if k < 3:
        raise ValueError(f"fit_power_law: need at least 3 positive eigenvalues, got {k} "
                         f"(of {np.size(eigenvalues)} given)")
    if n_bootstrap < 1:
        raise ValueError(f"fit_power_law: n_bootstrap={n_bootstrap}; need at least 1 (CSN: 2500 for p to 0.01)")
    log_rank, log_value = np.log(np.arange(1, k + 1)), np.log(values)
    design = np.stack([np.ones(k), log_rank], axis=1)
    (intercept, slope), *_ = np.linalg.lstsq(design, log_value, rcond=None)
    residual = log_value - design @ np.array([intercept, slope])
    total = np.sum((log_value - log_value.mean()) ** 2)
    r2 = 1.0 - float(residual @ residual) / total if total > 0 else 1.0

    lambda_min = float(values[-1])
    mean_log = float(np.mean(np.log(values / lambda_min)))
    if mean_log <= 0:
        raise ValueError("fit_power_law: all eigenvalues are equal; no slope to fit")
    slope_mle = mean_log
    alpha = 1.0 + 1.0 / slope_mle
    slope_ls = -float(slope)
    ks_mle = ks_distance(values, alpha, lambda_min)
    ks_ls = ks_distance(values, 1.0 + 1.0 / slope_ls, lambda_min) if slope_ls > 0 else 1.0
    p_value = ks_bootstrap_pvalue(k, alpha, lambda_min, ks_mle, n_bootstrap, seed)
    ratio, z, lr_p = exponential_likelihood_ratio(values, alpha, lambda_min)
    return PowerLawFit(k=k, slope_ls=slope_ls, intercept_ls=float(intercept), r2_ls=r2,
                       slope_mle=slope_mle, slope_mle_std_error=slope_mle / math.sqrt(k), alpha_mle=alpha,
                       lambda_min=lambda_min, ks_mle=ks_mle, ks_ls=ks_ls, ks_pvalue=p_value,
                       n_bootstrap=int(n_bootstrap), p_threshold=float(p_threshold), lr_exponential=ratio,
                       lr_exponential_z=z, lr_exponential_pvalue=lr_p, is_power_law=bool(p_value >= p_threshold))
