"""The fused CPU kernels against the numpy formulation they replace."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.fft

from solver.operators import kernels
from solver.algorithms.admm import Admm
from solver.algorithms.problem import CSCProblem
from solver.config import AdmmConfig
from solver.operators.convolution import ConvOperator
from solver.operators.linalg import factor_shifted_normal, solve_shifted_normal
from solver.operators.prox import LpPenalty

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
    np.testing.assert_allclose(a.dual, b.dual, rtol=tol, atol=tol)
    assert a.maps.dtype == dtype and a.solve_hat.dtype == b.solve_hat.dtype == a.carry_hat.dtype


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_fused_admm_in_place_follows_the_fused_admm(rng, dtype):
    solver = Admm(_problem(rng, dtype))
    fresh, reused = solver.init(), solver.init()
    for _ in range(25):
        fresh = solver.step(fresh)
        reused = solver.step(reused, out=reused)
    for field in ("maps", "dual", "solve_hat", "carry_hat", "objective", "rho"):
        np.testing.assert_array_equal(getattr(reused, field), getattr(fresh, field))


def test_admm_step_leaves_its_state_unchanged(rng):
    solver = Admm(_problem(rng, np.float64))
    state = _steps(solver, 9)  # the next step computes the residuals and changes ρ
    copies = {k: v.copy() for k, v in vars(state).items() if isinstance(v, np.ndarray)}
    assert not np.array_equal(solver.step(state).rho, state.rho)
    for k, v in copies.items():
        np.testing.assert_array_equal(getattr(state, k), v)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_admm_fourier_is_the_dual_update_the_data_term_and_the_next_solve(rng, dtype):
    problem = _problem(rng, dtype)
    op = problem.op
    z_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    t_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    rho, scale = np.array([0.5, 2.0, 7.0]), np.array([1.0, 0.25, 3.0])
    factor = factor_shifted_normal(op.filters_hat, rho)
    u_hat = scale[:, None, None, None] * (t_hat - z_hat)
    x_expected = solve_shifted_normal(factor, problem.rhs_hat + factor.rho_array(z_hat) * (z_hat - u_hat))
    t_expected = u_hat + 1.8 * x_expected - 0.8 * z_hat
    _, data = problem.residual(z_hat)
    N, K, U, V = z_hat.shape
    flat = (N, K, U * V)
    weights = np.broadcast_to(problem._weights, (U, V)).reshape(-1)
    x_hat, t_new, twice_data = kernels.admm_fourier(
        z_hat.reshape(flat), t_hat.reshape(flat), scale, op.filters_hat[:, 0].reshape(K, U * V),
        problem.images_hat[:, 0].reshape(N, U * V), weights, factor.inverse.reshape(N, U * V), 1.8)
    eps = np.finfo(dtype).eps
    np.testing.assert_allclose(x_hat.reshape(z_hat.shape), x_expected, atol=1e2 * eps * np.abs(x_expected).max())
    np.testing.assert_allclose(t_new.reshape(z_hat.shape), t_expected, atol=1e2 * eps * np.abs(t_expected).max())
    np.testing.assert_allclose(0.5 * twice_data, data, rtol=1e2 * eps)
    assert x_hat.dtype == t_new.dtype == z_hat.dtype


@pytest.mark.parametrize("over", ["z_hat", "t_hat"])
def test_admm_fourier_may_write_its_carry_over_an_input(rng, over):
    z_hat, t_hat = (rng.standard_normal((2, 3, 40)) + 1j * rng.standard_normal((2, 3, 40)) for _ in range(2))
    args = (np.array([1.0, 0.5]), rng.standard_normal((3, 40)) + 0j, rng.standard_normal((2, 40)) + 0j,
            np.ones(40), np.full((2, 40), 0.3), 1.8)
    x_new, t_new, sums = kernels.admm_fourier(z_hat, t_hat, *args)
    inputs = {"z_hat": z_hat.copy(), "t_hat": t_hat.copy()}
    x_in, t_in, sums_in = kernels.admm_fourier(inputs["z_hat"], inputs["t_hat"], *args, t_out=inputs[over])
    assert t_in is inputs[over]
    np.testing.assert_array_equal(t_in, t_new)
    np.testing.assert_array_equal(x_in, x_new)
    np.testing.assert_array_equal(sums_in, sums)


@pytest.mark.parametrize("residuals", [True, False])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_admm_spatial_is_relaxation_shrinkage_and_dual_update(rng, dtype, residuals):
    x, z, u = (rng.standard_normal((2, 3, 20)).astype(dtype) for _ in range(3))
    thr = np.array([0.3, 0.7])
    z_new, u_new, sums = kernels.admm_spatial(x, z, u, 1.8, thr, residuals=residuals)
    v = 1.8 * x - 0.8 * z + u
    expected = np.sign(v) * np.maximum(np.abs(v) - thr[:, None, None], 0)
    eps = 10 * np.finfo(dtype).eps
    np.testing.assert_allclose(z_new, expected, atol=eps * 10)
    np.testing.assert_allclose(u_new, v - expected, atol=eps * 10)
    np.testing.assert_allclose(sums[:, 5], np.abs(expected).sum(axis=(1, 2)), rtol=eps * 10)
    if residuals:
        np.testing.assert_allclose(sums[:, 0], ((x - expected) ** 2).sum(axis=(1, 2)), rtol=eps * 10)
        np.testing.assert_allclose(sums[:, 3], ((expected - z) ** 2).sum(axis=(1, 2)), rtol=eps * 10)
        np.testing.assert_allclose(sums[:, 4], ((v - expected) ** 2).sum(axis=(1, 2)), rtol=eps * 10)


def test_admm_spatial_may_write_over_its_inputs(rng):
    x, z, u = (rng.standard_normal((2, 3, 20)) for _ in range(3))
    thr = np.array([0.3, 0.7])
    z_new, u_new, sums = kernels.admm_spatial(x, z, u, 1.8, thr)
    z_in, u_in, sums_in = kernels.admm_spatial(x, z, u, 1.8, thr, z_out=z, u_out=u)
    assert z_in is z and u_in is u
    np.testing.assert_array_equal(z_in, z_new)
    np.testing.assert_array_equal(u_in, u_new)
    np.testing.assert_array_equal(sums_in, sums)


def test_admm_spatial_refuses_an_output_of_the_wrong_dtype(rng):
    x = rng.standard_normal((2, 3, 20))
    with pytest.raises(ValueError, match="z_out"):
        kernels.admm_spatial(x, x, x, 1.8, np.ones(2), z_out=np.empty(x.shape, dtype=np.float32))


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("shape", [(6, 8), (7, 9)], ids=["even", "odd"])
def test_irfft2_is_scipy_irfft2(rng, shape, overwrite):
    a_hat = np.fft.rfft2(rng.standard_normal((2, 3) + shape).astype(np.float32))
    a_hat = a_hat.astype(np.complex64)
    expected = scipy.fft.irfft2(a_hat, s=shape)
    got = kernels.irfft2(a_hat.copy() if overwrite else a_hat, shape, 2, overwrite=overwrite)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32
