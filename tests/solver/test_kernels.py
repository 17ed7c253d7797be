"""The fused CPU kernels against the numpy formulation they replace."""

from __future__ import annotations

import numpy as np
import pytest

from solver import kernels
from solver.algorithms.admm import Admm
from solver.config import AdmmConfig
from solver.linalg import factor_shifted_normal, solve_shifted_normal
from solver.operators import ConvOperator
from solver.problem import CSCProblem
from solver.prox import LpPenalty

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


def _problem(rng, dtype, shape=(13, 16), n_images=3, n_filters=5, size=4):
    filters = rng.standard_normal((n_filters, 1, size, size))
    filters /= np.sqrt((filters**2).sum(axis=(1, 2, 3), keepdims=True))
    images = rng.standard_normal((n_images, 1) + shape)
    op = ConvOperator(filters.astype(dtype), shape)
    return CSCProblem(images.astype(dtype), op, LpPenalty(0.1))


def _steps(solver, n):
    state = solver.init()
    for _ in range(n):
        state = solver.step(state)
    return state


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_admm_follows_the_numpy_admm(rng, dtype):
    problem = _problem(rng, dtype)
    fused, plain = Admm(problem, AdmmConfig(fused=True)), Admm(problem, AdmmConfig(fused=False))
    assert fused._fused and not plain._fused
    a, b = _steps(fused, 25), _steps(plain, 25)
    tol = 1e-10 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(a.maps, b.maps, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e3 * np.finfo(dtype).eps)
    np.testing.assert_allclose(a.rho, b.rho, rtol=tol)  # ρ follows the residuals, so round-off reaches it
    assert a.maps.dtype == dtype and a.maps_hat.dtype == b.maps_hat.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sm_solve_matches_the_woodbury_solve(rng, dtype):
    problem = _problem(rng, dtype)
    op = problem.op
    z_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    u_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    rho = np.array([0.5, 2.0, 7.0])
    factor = factor_shifted_normal(op.filters_hat, rho)
    expected = solve_shifted_normal(factor, problem.rhs_hat + factor.rho_array(z_hat) * (z_hat - u_hat))
    N, K, U, V = z_hat.shape
    got = kernels.sm_solve(op.filters_hat[:, 0].reshape(K, U * V), problem.images_hat[:, 0].reshape(N, U * V),
                           z_hat.reshape(N, K, -1), u_hat.reshape(N, K, -1), factor.inverse.reshape(N, U * V), rho)
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got.reshape(expected.shape), expected, atol=1e2 * np.finfo(dtype).eps * scale)
    assert got.dtype == expected.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_admm_spatial_is_relaxation_shrinkage_and_dual_update(rng, dtype):
    x, z, u = (rng.standard_normal((2, 3, 20)).astype(dtype) for _ in range(3))
    thr = np.array([0.3, 0.7])
    z_new, u_new, sums = kernels.admm_spatial(x, z, u, 1.8, thr)
    v = 1.8 * x - 0.8 * z + u
    expected = np.sign(v) * np.maximum(np.abs(v) - thr[:, None, None], 0)
    eps = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(z_new, expected, atol=eps * 10)
    np.testing.assert_allclose(u_new, v - expected, atol=eps * 10)
    np.testing.assert_allclose(sums[:, 5], np.abs(expected).sum(axis=(1, 2)), rtol=eps * 10)
    np.testing.assert_allclose(sums[:, 0], ((x - expected) ** 2).sum(axis=(1, 2)), rtol=eps * 10)
