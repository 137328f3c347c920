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
    assert fit.ks_mle < fit.ks_threshold and fit.is_power_law
    noiseless = fit_power_law(planted(slope, noise=0.0))
    assert noiseless.ks_mle < 0.1 * noiseless.ks_threshold and abs(noiseless.slope_ls - slope) < 1e-12


def test_mle_recovers_the_slope_of_sampled_power_law_eigenvalues():
    slope = 1.2
    samples = (1 - np.random.default_rng(2).random(3000)) ** -slope  # Pareto with alpha - 1 = 1 / slope
    fit = fit_power_law(samples)
    assert abs(fit.slope_mle - slope) < 3 * fit.slope_mle_std_error
    assert fit.is_power_law


@pytest.mark.parametrize("rate", [0.02, 0.05, 0.2])
def test_exponential_spectrum_is_rejected(rate):
    fit = fit_power_law(5.0 * np.exp(-rate * np.arange(1, 201)))
    assert not fit.is_power_law
    assert fit.ks_mle > fit.ks_threshold


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
