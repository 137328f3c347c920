"""Spectral estimates of a symmetric operator given only ``matvec``: eigenpairs, trace, density.

Everything is numpy float64 and takes ``matvec(v [P]) -> [P]`` and ``dim`` (an ``HVPOperator`` or
any symmetric matrix's product). No scipy: the tridiagonal eigenproblems are small dense
``numpy.linalg.eigh`` calls, which also keeps these functions safe to call after ``import paddle``
(PLATFORM.md: scipy imported after paddle can crash).

* ``lanczos``: Lanczos with full reorthogonalisation (classical Gram-Schmidt against the whole
  basis, twice: "twice is enough", Giraud et al. 2005), so Ritz values do not duplicate and k up to
  a few hundred is reliable. Memory: the basis is ``steps x dim`` float64 (``top_eigenpairs`` with
  k = 300 on a 1M-parameter model may take up to 960 steps: 7.7 GB); Hutch++ keeps ``m/3`` vectors.
* ``top_eigenpairs``: Ritz pairs of that basis, from the residual norms
  ``|beta_m s_{m,i}| = ||H y_i - theta_i y_i||`` (exact in exact arithmetic for Lanczos) and the
  eigenvalue error bounds they give (``error_bounds``), stopping when those fall below
  ``tol * |theta_i|``.
* ``power_iteration``: PyHessian's deflated power iteration (random start, project out found
  vectors, stop when the Rayleigh quotient changes by less than ``tol`` relative), for parity.
* ``hutchinson_trace``, ``hutchpp_trace`` (Meyer, Musco, Musco, Woodruff 2021), with confidence
  intervals from the sample variance of the probes.
* ``slq_density``: stochastic Lanczos quadrature (Ghorbani, Krishnan, Xiao 2019; PyHessian's
  ``density``): nodes = Ritz values, weights = squared first components of the Ritz vectors,
  averaged over Rademacher starts, broadened by Gaussians of width ``sigma``.
"""
import math
from dataclasses import dataclass, field
from statistics import NormalDist

import numpy as np


def _matvec_of(operator):
    return operator.matvec if hasattr(operator, "matvec") else operator


def _rademacher(rng, shape):
    return rng.integers(0, 2, size=shape).astype(np.float64) * 2.0 - 1.0


@dataclass
class LanczosState:
    """A Lanczos run: orthonormal basis ``Q`` (rows), tridiagonal ``alpha`` (diagonal), ``beta`` (off)."""

    basis: np.ndarray
    alpha: np.ndarray
    beta: np.ndarray  # beta[i] couples q_i and q_{i+1}; beta[-1] is the residual norm after the last step
    invariant: bool = False  # the Krylov space became invariant (then the Ritz values are exact)

    def tridiagonal(self):
        m = len(self.alpha)
        return np.diag(self.alpha) + np.diag(self.beta[:m - 1], 1) + np.diag(self.beta[:m - 1], -1)

    def ritz(self):
        """Ritz values (ascending), eigenvectors of T (columns), residual bounds ``|beta_m s_m,i|``."""
        theta, vectors = np.linalg.eigh(self.tridiagonal())
        last_beta = 0.0 if self.invariant else self.beta[len(self.alpha) - 1]
        return theta, vectors, np.abs(last_beta * vectors[-1, :])


def lanczos(operator, dim, steps, start=None, rng=None, callback=None):
    """Run up to ``steps`` Lanczos steps with full reorthogonalisation.

    ``callback(state) -> bool`` is called after each step; returning True stops early.
    Stops by itself when the Krylov space is invariant (``beta`` below 1e-12 of the largest |alpha|
    and beta seen so far; then every Ritz value is an eigenvalue).
    """
    matvec = _matvec_of(operator)
    rng = np.random.default_rng(rng)
    steps = int(min(steps, dim))
    q = rng.standard_normal(dim) if start is None else np.asarray(start, dtype=np.float64).copy()
    q /= np.linalg.norm(q)
    basis = np.zeros((steps, dim))
    alpha, beta = np.zeros(steps), np.zeros(steps)
    scale = 0.0
    for j in range(steps):
        basis[j] = q
        w = matvec(q)
        alpha[j] = q @ w
        w -= basis[:j + 1].T @ (basis[:j + 1] @ w)  # full reorthogonalisation, twice
        w -= basis[:j + 1].T @ (basis[:j + 1] @ w)
        beta[j] = np.linalg.norm(w)
        scale = max(scale, abs(alpha[j]), beta[j])
        state = LanczosState(basis[:j + 1], alpha[:j + 1], beta[:j + 1])
        if beta[j] <= 1e-12 * scale:
            state.invariant = True
            return state
        if callback is not None and callback(state):
            return state
        q = w / beta[j]
    return state


@dataclass
class EigenResult:
    eigenvalues: np.ndarray  # top-k, descending (by value, or by magnitude for which="LM")
    residuals: np.ndarray  # ||H y - theta y|| bounds for each
    error_bounds: np.ndarray  # bounds on |theta - lambda| (see error_bounds)
    converged: np.ndarray  # the stop rule's quantity <= tol * |eigenvalue|
    n_products: int
    eigenvectors: np.ndarray = field(default=None)  # [k, P] rows, when requested


def error_bounds(theta, residual):
    """Bounds on ``|theta_i - lambda_i|`` for Ritz values ``theta`` with residual norms ``residual``.

    ``min(r_i, r_i^2 / gap_i)`` (Parlett, *The Symmetric Eigenvalue Problem*, 11.7: the first term
    always holds, the second when ``gap_i`` separates ``theta_i`` from every other eigenvalue). The
    gap is estimated from the other Ritz values, each moved towards ``theta_i`` by its own residual
    (an eigenvalue lies within ``r_j`` of ``theta_j``): ``gap_i = min_j (|theta_i - theta_j| - r_j)``.
    An eigenvalue no Ritz value has found yet can sit closer than that, so this is an estimate, not a
    guarantee; where the shrunk gap is not positive the plain residual bound is used.
    """
    theta, residual = np.asarray(theta, dtype=np.float64), np.asarray(residual, dtype=np.float64)
    if len(theta) < 2:
        return residual.copy()
    distance = np.abs(theta[:, None] - theta[None, :]) - residual[None, :]
    np.fill_diagonal(distance, np.inf)
    gap = distance.min(axis=1)
    quadratic = np.where(gap > 0, residual ** 2 / np.where(gap > 0, gap, 1.0), np.inf)
    return np.minimum(residual, quadratic)


def top_eigenpairs(operator, dim, k, tol=1e-6, max_steps=None, which="LA", return_vectors=False,
                   rng=None, check_every=None):
    """Top-``k`` eigenvalues (and eigenvectors) by Lanczos with full reorthogonalisation.

    ``which="LA"``: largest algebraic (the sharp directions of a Hessian); ``"LM"``: largest
    magnitude (what power iteration finds). ``max_steps`` defaults to ``min(dim, 3 k + 60)``;
    unconverged pairs are returned with ``converged=False`` rather than raised. Convergence is
    checked every ``check_every`` steps (default ``max(1, k // 10)``: each check is a dense
    eigen-decomposition of the tridiagonal matrix, negligible next to an HVP for small k only).

    Stop rule: ``tol`` bounds the relative error of what is returned. Eigenvalues only: every
    top-k ``error_bounds`` value <= ``tol * |theta|`` (and at least ``k + 1`` steps, so each Ritz
    value has a neighbour to measure its gap from). A Ritz value's error is about the square of
    its residual over the gap, so this stops before the residuals reach ``tol``. On LeNet's top 10
    (bench/hessian_speed.py, tol 1e-3): 44-48 products in the full run (the residual rule took 49),
    33 in ``--quick`` (38); measured errors 5e-6 and 7e-5, below the bound. With ``return_vectors`` the residuals themselves must be
    <= ``tol * |theta|`` (an eigenvector's angle error is bounded by residual / gap, not its square).
    """
    if which not in ("LA", "LM"):
        raise ValueError(f"top_eigenpairs: which={which!r}; use 'LA' or 'LM'")
    k = int(min(k, dim))
    max_steps = int(min(dim, max_steps if max_steps is not None else 3 * k + 60))
    check_every = max(1, k // 10) if check_every is None else int(check_every)

    def select(theta):
        order = np.argsort(-theta if which == "LA" else -np.abs(theta), kind="stable")
        return order[:k]

    def assess(state):
        theta, vectors, residual = state.ritz()
        top = select(theta)
        bounds = error_bounds(theta, residual)[top]
        measure = residual[top] if return_vectors else bounds
        if len(theta) <= k < dim and not state.invariant:  # no neighbour for the k-th value yet
            measure = residual[top]
        return theta, vectors, residual, top, bounds, measure <= tol * np.maximum(np.abs(theta[top]), 1e-300)

    def done(state):
        m = len(state.alpha)
        if m < k or (m - k) % check_every:
            return False
        return bool(np.all(assess(state)[-1]))

    state = lanczos(operator, dim, max_steps, rng=rng, callback=done)
    theta, vectors, residual, top, bounds, converged = assess(state)
    result = EigenResult(eigenvalues=theta[top], residuals=residual[top], error_bounds=bounds,
                         converged=converged, n_products=len(state.alpha))
    if return_vectors:
        result.eigenvectors = vectors[:, top].T @ state.basis
    return result


def power_iteration(operator, dim, k=1, max_iter=100, tol=1e-3, rng=None):
    """PyHessian's ``eigenvalues``: deflated power iteration, one eigenpair after another.

    Returns (eigenvalues [k], eigenvectors [k, P], n_products). As in PyHessian, this converges to
    the largest-magnitude eigenvalues, and ``tol`` bounds the relative change of the Rayleigh
    quotient between iterations, not its error.
    """
    matvec = _matvec_of(operator)
    rng = np.random.default_rng(rng)
    values, products = [], 0
    found = np.zeros((0, dim))
    for _ in range(int(k)):
        v = rng.standard_normal(dim)
        v /= np.linalg.norm(v)
        value = None
        for _ in range(max_iter):
            v -= found.T @ (found @ v)
            v /= np.linalg.norm(v)
            hv = matvec(v)
            products += 1
            current = float(v @ hv)
            v = hv / np.linalg.norm(hv)
            if value is not None and abs(value - current) / (abs(value) + 1e-6) < tol:
                value = current
                break
            value = current
        values.append(value)
        found = np.vstack([found, v])
    return np.asarray(values), found, products


def _t_quantile(p, dof):
    """Student-t quantile by the Cornish-Fisher expansion (Abramowitz & Stegun 26.7.5); no scipy.

    Accurate to about 1e-3 for dof >= 5 (the estimators below need at least 2 probes).
    """
    z = NormalDist().inv_cdf(p)
    g1 = (z ** 3 + z) / 4
    g2 = (5 * z ** 5 + 16 * z ** 3 + 3 * z) / 96
    g3 = (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / 384
    g4 = (79 * z ** 9 + 776 * z ** 7 + 1482 * z ** 5 - 1920 * z ** 3 - 945 * z) / 92160
    return z + g1 / dof + g2 / dof ** 2 + g3 / dof ** 3 + g4 / dof ** 4


@dataclass
class TraceEstimate:
    trace: float
    ci_low: float
    ci_high: float
    std_error: float
    n_products: int
    samples: np.ndarray  # the per-probe estimates whose mean (plus any exact part) is the trace


def _with_interval(exact_part, samples, confidence, products):
    n = len(samples)
    if n < 2:
        raise ValueError("trace estimate: need at least 2 probes for a confidence interval")
    mean = exact_part + float(np.mean(samples))
    std_error = float(np.std(samples, ddof=1) / math.sqrt(n))
    half = _t_quantile(0.5 + confidence / 2, n - 1) * std_error
    return TraceEstimate(mean, mean - half, mean + half, std_error, products, np.asarray(samples))


def hutchinson_trace(operator, dim, n_probes=100, confidence=0.95, rng=None):
    """Hutchinson's ``tr H ~ mean(z^T H z)`` over Rademacher ``z``, with a Student-t interval."""
    matvec = _matvec_of(operator)
    rng = np.random.default_rng(rng)
    samples = []
    for _ in range(int(n_probes)):  # one probe at a time: memory stays O(dim)
        probe = _rademacher(rng, dim)
        samples.append(float(probe @ matvec(probe)))
    return _with_interval(0.0, samples, confidence, int(n_probes))


def hutchpp_trace(operator, dim, n_products=99, confidence=0.95, rng=None):
    """Hutch++: exact trace on a sketched top subspace plus Hutchinson on the rest.

    With ``m`` products: ``S`` has ``m/3`` Rademacher columns, ``Q = orth(H S)``, then
    ``tr(Q^T H Q)`` (m/3 products) + Hutchinson with ``m/3`` probes ``(I - QQ^T) g`` on the
    deflated operator. The interval comes from the deflated probes' variance (the first part
    is deterministic given ``Q``).
    """
    matvec = _matvec_of(operator)
    rng = np.random.default_rng(rng)
    third = int(n_products) // 3
    if third < 2:
        raise ValueError(f"hutchpp_trace: n_products={n_products} too small; need at least 6")
    sketch = np.stack([matvec(s) for s in _rademacher(rng, (third, dim))], axis=1)
    q, _ = np.linalg.qr(sketch)
    exact_part = float(sum(q[:, i] @ matvec(q[:, i]) for i in range(q.shape[1])))
    probes = _rademacher(rng, (third, dim))
    probes -= (probes @ q) @ q.T
    samples = [float(g @ matvec(g)) for g in probes]
    return _with_interval(exact_part, samples, confidence, 3 * third)


@dataclass
class SpectralDensity:
    nodes: np.ndarray  # [n_runs, steps] Ritz values
    weights: np.ndarray  # [n_runs, steps] squared first components (each row sums to 1)
    sigma: float
    n_products: int

    def evaluate(self, grid):
        """Density on ``grid``: mean over runs of sum_i w_i N(t; theta_i, sigma^2) (integrates to 1)."""
        grid = np.asarray(grid, dtype=np.float64)
        diff = grid[:, None, None] - self.nodes[None]
        kernel = np.exp(-0.5 * (diff / self.sigma) ** 2) / (self.sigma * math.sqrt(2 * math.pi))
        return (kernel * self.weights[None]).sum(axis=2).mean(axis=1)

    def grid(self, points=None, margin=None):
        """Evaluation points spanning the nodes; by default spaced at most sigma / 4 (so sums integrate)."""
        margin = 5 * self.sigma if margin is None else margin
        low, high = self.nodes.min() - margin, self.nodes.max() + margin
        if points is None:
            points = int(min(200_000, max(1000, math.ceil(4 * (high - low) / self.sigma) + 1)))
        return np.linspace(low, high, points)

    def trace(self, dim):
        """SLQ's own trace estimate: dim * mean over runs of sum_i w_i theta_i."""
        return float(dim * (self.weights * self.nodes).sum(axis=1).mean())


def slq_density(operator, dim, steps=90, n_runs=1, sigma=None, rng=None):
    """Stochastic Lanczos quadrature density from ``n_runs`` Rademacher starts of ``steps`` steps.

    ``sigma`` (the Gaussian broadening) defaults to 1e-3 of the spread of the Ritz values: narrow
    enough to separate the outliers from the bulk near zero, wide enough to draw on a grid of a few
    thousand points.
    """
    rng = np.random.default_rng(rng)
    steps = int(min(steps, dim))
    nodes, weights, products = [], [], 0
    for start in _rademacher(rng, (int(n_runs), dim)):
        state = lanczos(operator, dim, steps, start=start, rng=rng)
        theta, vectors, _ = state.ritz()
        node_row, weight_row = np.zeros(steps), np.zeros(steps)  # invariant runs pad with zero weight
        node_row[:len(theta)], weight_row[:len(theta)] = theta, vectors[0, :] ** 2
        node_row[len(theta):] = theta[-1]
        nodes.append(node_row)
        weights.append(weight_row)
        products += len(state.alpha)
    nodes, weights = np.asarray(nodes), np.asarray(weights)
    if sigma is None:
        sigma = 1e-3 * max(float(nodes.max() - nodes.min()), 1e-12)
    return SpectralDensity(nodes, weights, float(sigma), products)
