"""Power-law fit: planted slopes recovered, KS small for power laws, exponential spectra rejected."""
import numpy as np
import pytest

from paddle_suite.hessian.lanczos import slq_density
from paddle_suite.hessian.plots import plot_density, plot_rank_spectrum
from paddle_suite.hessian.powerlaw import fit_power_law, ks_distance


def planted(slope, k=200, noise=0.02, seed=0):
    rng = np.random.default_rng(seed)
    return 3.0 * np.arange(1, k + 1) ** -slope * np.exp(noise * rng.standard_normal(k))


@pytest.mark.parametrize("slope", [0.7, 1.0, 1.6])
def test_planted_rank_power_law_is_recovered(slope):
    fit = fit_power_law(np.random.default_rng(1).permutation(planted(slope)))  # order must not matter
    assert abs(fit.slope_ls - slope) < 0.03
    assert abs(fit.slope_mle - slope) < 3 * fit.slope_mle_std_error
    assert fit.r2_ls > 0.98
    assert fit.ks_pvalue >= fit.p_threshold and fit.is_power_law
    assert fit.lr_exponential > 0 and fit.lr_exponential_pvalue < 0.01  # heavier-tailed than an exponential
    noiseless = fit_power_law(planted(slope, noise=0.0))
    assert noiseless.ks_pvalue > 0.9 and abs(noiseless.slope_ls - slope) < 1e-12


def test_mle_recovers_the_slope_of_sampled_power_law_eigenvalues():
    slope = 1.2
    samples = (1 - np.random.default_rng(2).random(3000)) ** -slope  # Pareto with alpha - 1 = 1 / slope
    fit = fit_power_law(samples)
    assert abs(fit.slope_mle - slope) < 3 * fit.slope_mle_std_error


def test_bootstrap_pvalue_is_calibrated_where_the_asymptotic_ks_table_is_not():
    """On true power-law samples (alpha fitted on each), p < 0.1 should happen about 10% of the time."""
    rng = np.random.default_rng(4)
    k, trials = 100, 300
    fits = [fit_power_law((1 - rng.random(k)) ** -0.9, n_bootstrap=400, seed=i) for i in range(trials)]
    rejected = np.mean([not fit.is_power_law for fit in fits])
    assert 0.05 < rejected < 0.16  # binomial(300, 0.1): 0.1 +- 3 standard deviations
    table = np.mean([fit.ks_mle > 1.358 / np.sqrt(k) for fit in fits])  # the 5% asymptotic value
    assert table < 0.03  # nominally 5%; far fewer: alpha is fitted on the same sample (Lilliefors)


@pytest.mark.parametrize("rate", [0.02, 0.05, 0.2])
def test_exponential_spectrum_is_rejected(rate):
    fit = fit_power_law(5.0 * np.exp(-rate * np.arange(1, 201)))
    assert not fit.is_power_law
    assert fit.ks_pvalue < 0.01


def test_likelihood_ratio_prefers_the_law_the_values_came_from():
    rng = np.random.default_rng(6)
    pareto = fit_power_law(2.0 * (1 - rng.random(300)) ** -1.0)
    assert pareto.lr_exponential > 0 and pareto.lr_exponential_pvalue < 0.01
    exponential = fit_power_law(2.0 + rng.exponential(1.0, 300))
    assert exponential.lr_exponential < 0 and exponential.lr_exponential_pvalue < 0.01
    assert not exponential.is_power_law


def test_ks_distance_is_the_supremum_over_both_sides_of_each_jump():
    values = np.array([1.0, 1.5, 2.0, 4.0, 9.0])
    alpha = 2.2
    dense = np.linspace(1.0, 9.0, 200001)
    empirical = np.searchsorted(np.sort(values), dense, side="right") / len(values)
    fitted = 1 - dense ** -(alpha - 1)
    assert abs(ks_distance(values, alpha, 1.0) - np.max(np.abs(empirical - fitted))) < 1e-4


def test_too_few_positive_eigenvalues_is_an_error():
    with pytest.raises(ValueError, match="at least 3 positive"):
        fit_power_law([2.0, 1.0, -0.5, 0.0])


def test_plots_write_png_files(tmp_path):
    values = planted(1.0, k=50)
    plot_rank_spectrum(values, fit_power_law(values), tmp_path / "rank.png")
    diagonal = np.linspace(-0.1, 2.0, 80)
    plot_density(slq_density(lambda v: diagonal * v, 80, steps=30, rng=0), tmp_path / "density.png")
    for name in ("rank.png", "density.png"):
        data = (tmp_path / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
