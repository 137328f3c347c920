"""Lanczos, power iteration, trace and density estimates against numpy.linalg.eigh of exact Hessians."""
import numpy as np
import pytest

from paddle_suite.hessian.hvp import HVPOperator
from paddle_suite.hessian.lanczos import (error_bounds, hutchinson_trace, hutchpp_trace, power_iteration, slq_density,
                                          top_eigenpairs)
from paddle_suite.hessian.layers import make_double_differentiable
from paddle_suite.hessian.losses import SoftmaxCrossEntropy

from .nets import classification_batch, tiny_cnn, tiny_mlp


@pytest.fixture(scope="module")
def mlp_operator():
    model = tiny_mlp(seed=7, inputs=10, hidden=12, classes=4)  # 184 parameters
    x, y = classification_batch([10], 32, classes=4, seed=7)
    op = HVPOperator(model, SoftmaxCrossEntropy(), [(x, y)], dtype="float64")
    return op, op.dense()


def power_law_matrix(dim=300, seed=0):
    """A PSD matrix with eigenvalues r^-1 in a random basis (a decaying spectrum like a Hessian's)."""
    rng = np.random.default_rng(seed)
    basis, _ = np.linalg.qr(rng.standard_normal((dim, dim)))
    return (basis * np.arange(1, dim + 1) ** -1.0) @ basis.T


def test_lanczos_top_eigenvalues_match_eigh_of_exact_mlp_hessian(mlp_operator):
    op, dense = mlp_operator
    truth = np.linalg.eigvalsh(dense)[::-1][:20]
    result = top_eigenpairs(op, op.dim, 20, tol=1e-8, return_vectors=True, rng=0)
    assert result.converged.all()
    assert np.max(np.abs(result.eigenvalues - truth) / np.abs(truth)) < 1e-4
    residual = dense @ result.eigenvectors.T - result.eigenvectors.T * result.eigenvalues
    assert np.linalg.norm(residual, axis=0).max() < 1e-6 * truth[0]
    assert result.n_products < op.dim  # far fewer products than building the matrix


def test_lanczos_on_cnn_hessian_through_unfold_layers():
    model = make_double_differentiable(tiny_cnn(seed=8))
    x, y = classification_batch([1, 8, 8], 16, seed=8)
    op = HVPOperator(model, SoftmaxCrossEntropy(), [(x, y)], dtype="float64")
    truth = np.linalg.eigvalsh(op.dense())[::-1][:5]
    result = top_eigenpairs(op, op.dim, 5, tol=1e-8, rng=0)
    assert np.max(np.abs(result.eigenvalues - truth) / np.abs(truth)) < 1e-4


def test_lanczos_a_hundred_eigenvalues_and_largest_magnitude():
    matrix = power_law_matrix()
    truth = np.sort(np.linalg.eigvalsh(matrix))[::-1][:100]
    result = top_eigenpairs(lambda v: matrix @ v, 300, 100, tol=1e-6, rng=1)
    assert np.max(np.abs(result.eigenvalues - truth) / truth) < 1e-4
    basis, _ = np.linalg.qr(np.random.default_rng(5).standard_normal((300, 300)))
    indefinite = (basis * np.concatenate([[-2.0], np.linspace(1.0, 0.0, 299)])) @ basis.T
    largest = top_eigenpairs(lambda v: indefinite @ v, 300, 1, which="LA", tol=1e-10, rng=1)
    magnitude = top_eigenpairs(lambda v: indefinite @ v, 300, 1, which="LM", tol=1e-10, rng=1)
    assert abs(largest.eigenvalues[0] - 1.0) < 1e-6 and abs(magnitude.eigenvalues[0] + 2.0) < 1e-6


@pytest.mark.parametrize("tol", [1e-3, 1e-6])
def test_eigenvalue_stop_rule_meets_its_tolerance_with_fewer_products_than_residuals(tol):
    """The default stop rule bounds eigenvalue errors (r^2 / gap), not residuals: fewer steps, same promise."""
    matrix = power_law_matrix(dim=400, seed=3)
    truth = np.sort(np.linalg.eigvalsh(matrix))[::-1][:10]
    for seed in range(3):
        values = top_eigenpairs(lambda v: matrix @ v, 400, 10, tol=tol, rng=seed)
        assert values.converged.all()
        assert np.all(np.abs(values.eigenvalues - truth) <= values.error_bounds + 1e-12)  # the bounds hold (to rounding)
        assert np.max(np.abs(values.eigenvalues - truth) / truth) <= tol
        pairs = top_eigenpairs(lambda v: matrix @ v, 400, 10, tol=tol, return_vectors=True, rng=seed)
        assert np.all(pairs.residuals <= tol * pairs.eigenvalues)  # vectors: the residual rule
        assert values.n_products < pairs.n_products


def test_error_bounds_use_the_gap_and_fall_back_to_the_residual():
    theta, residual = np.array([10.0, 9.0, 5.0]), np.array([1e-2, 1e-2, 3.0])
    bounds = error_bounds(theta, residual)
    np.testing.assert_allclose(bounds[:2], 1e-4 / (1.0 - 1e-2))  # gap to the neighbour, shrunk by its residual
    np.testing.assert_allclose(bounds[2], 9.0 / (4.0 - 1e-2))  # r^2 / gap when that is below r
    close = error_bounds(np.array([10.0, 9.995]), np.array([1e-2, 1e-2]))
    np.testing.assert_array_equal(close, [1e-2, 1e-2])  # the shrunk gap is not positive: the residual itself
    assert error_bounds(theta[:1], residual[:1])[0] == 1e-2  # no neighbour, no gap


def test_power_iteration_finds_the_top_eigenvalues(mlp_operator):
    op, dense = mlp_operator
    truth = np.linalg.eigvalsh(dense)
    top_magnitude = truth[np.argsort(-np.abs(truth))][:3]
    values, vectors, products = power_iteration(lambda v: dense @ v, op.dim, k=3, max_iter=2000, tol=1e-9, rng=0)
    assert np.max(np.abs(values - top_magnitude) / np.abs(top_magnitude)) < 1e-3
    assert products > 3


def test_hutchinson_interval_holds_the_exact_trace(mlp_operator):
    op, dense = mlp_operator
    estimate = hutchinson_trace(op, op.dim, n_probes=40, rng=3)
    assert estimate.ci_low <= np.trace(dense) <= estimate.ci_high
    assert estimate.n_products == 40
    covered = [hutchinson_trace(lambda v: dense @ v, op.dim, 30, rng=seed) for seed in range(60)]
    coverage = np.mean([e.ci_low <= np.trace(dense) <= e.ci_high for e in covered])
    assert coverage >= 0.85  # nominal 95%


def test_hutchpp_has_lower_variance_than_hutchinson_at_equal_cost():
    matrix = power_law_matrix(seed=2)
    exact = np.trace(matrix)
    plain = [hutchinson_trace(lambda v: matrix @ v, 300, 60, rng=s).trace for s in range(30)]
    plus = [hutchpp_trace(lambda v: matrix @ v, 300, 60, rng=s).trace for s in range(30)]
    assert np.var(plus) < 0.25 * np.var(plain)
    assert abs(np.mean(plus) - exact) < 3 * np.std(plus) / np.sqrt(30) + 1e-9
    interval = hutchpp_trace(lambda v: matrix @ v, 300, 60, rng=99)
    assert interval.ci_low <= exact <= interval.ci_high


def test_slq_density_integrates_to_one_and_reaches_the_extreme_eigenvalues(mlp_operator):
    op, dense = mlp_operator
    truth = np.linalg.eigvalsh(dense)
    density = slq_density(lambda v: dense @ v, op.dim, steps=60, n_runs=4, rng=4)
    grid = density.grid()
    mass = np.sum(density.evaluate(grid)) * (grid[1] - grid[0])
    assert abs(mass - 1.0) < 1e-3
    assert abs(density.nodes.max() - truth[-1]) < 1e-8 * truth[-1]
    assert abs(density.nodes.min() - truth[0]) < 1e-6 * truth[-1]
    assert abs(density.trace(op.dim) - np.trace(dense)) < 0.3 * np.abs(truth).sum()
