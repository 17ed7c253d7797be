"""Tests for solver.operators.linalg: the shifted normal equations (Sherman–Morrison / Woodbury) against a dense solve,
the spectral norms against the dense operator norm, and conjugate gradients."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver.operators.convolution import ConvOperator, FilterOperator, map_shape
from solver.operators.linalg import conjugate_gradient, factor_shifted_normal, max_gram_eigenvalue, solve_shifted_normal
from tests.reference import dense_conv_matrix, dense_filter_matrix
from tests.solver.contracts import dtype_tol

IMAGE_SHAPE = (6, 5)


def _spatial_solve(op: ConvOperator, b: np.ndarray, rho: float) -> np.ndarray:
    """x = irfft(solve(rfft(b))): the per-frequency solve seen in the spatial domain."""
    factor = factor_shifted_normal(op.filters_hat, rho)
    return op.irfft(solve_shifted_normal(factor, op.rfft(b)))


def _dense_solve(D: np.ndarray, b: np.ndarray, rho: float) -> np.ndarray:
    """Solve (DᵀD + ρI) x = b image by image; b is (N, K, H, W)."""
    A = D.T @ D + rho * np.eye(D.shape[1])
    return np.linalg.solve(A, b.reshape(b.shape[0], -1).T.astype(np.float64)).T.reshape(b.shape)


@pytest.mark.parametrize("rho", [1e-2, 0.7, 30.0])
@pytest.mark.parametrize("connectivity", [False, True], ids=["full", "sparse"])
@pytest.mark.parametrize("n_channels", [1, 3], ids=["sherman-morrison", "woodbury"])
def test_solve_shifted_normal_matches_dense_solve(rng, dtype, n_channels, connectivity, rho):
    K, s = 3, 3
    filters = rng.standard_normal((K, n_channels, s, s)).astype(dtype)
    g = None
    if connectivity:  # plane (1, 0) off: for C = 1 map 1 reads nothing, a zero block of D
        g = np.ones((K, n_channels), dtype=bool)
        g[1, 0] = False
    op = ConvOperator(filters, IMAGE_SHAPE, boundary="circular", connectivity=g)
    b = rng.standard_normal((2, K) + IMAGE_SHAPE).astype(dtype)
    x = _spatial_solve(op, b, rho)
    expected = _dense_solve(dense_conv_matrix(filters, IMAGE_SHAPE, "circular", g), b, rho)
    # the system's condition number is at most (‖D‖² + ρ)/ρ; round-off grows with it
    cond = (op.lipschitz() + rho) / rho
    tol = dtype_tol(dtype) * cond
    assert x.dtype == dtype
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("n_channels", [1, 3])
def test_factor_shifted_normal_keeps_the_precision(rng, dtype, n_channels):
    filters = rng.standard_normal((2, n_channels, 3, 3)).astype(dtype)
    op = ConvOperator(filters, IMAGE_SHAPE)
    factor = factor_shifted_normal(op.filters_hat, 0.5)
    assert np.finfo(factor.inverse.dtype).eps == np.finfo(dtype).eps
    b_hat = op.rfft(rng.standard_normal((1, 2) + IMAGE_SHAPE).astype(dtype))
    assert solve_shifted_normal(factor, b_hat).dtype == op.filters_hat.dtype


@pytest.mark.parametrize("rho", [0.0, -1.0, float("nan")])
def test_factor_shifted_normal_rejects_non_positive_rho(rho):
    op = ConvOperator(np.ones((2, 1, 3, 3)), IMAGE_SHAPE)
    with pytest.raises(ValueError, match="rho"):
        factor_shifted_normal(op.filters_hat, rho)


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_filters=st.integers(1, 4),
    n_channels=st.integers(1, 3),
    height=st.integers(3, 6),
    width=st.integers(3, 6),
    filter_size=st.integers(1, 3),
    rho=st.floats(0.05, 20.0),
)
def test_shifted_normal_solve_matches_dense_solve_over_random_shapes(
    seed, n_filters, n_channels, height, width, filter_size, rho
):
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((n_filters, n_channels, filter_size, filter_size))
    op = ConvOperator(filters, (height, width))
    b = rng.standard_normal((2, n_filters, height, width))
    x = _spatial_solve(op, b, rho)
    expected = _dense_solve(dense_conv_matrix(filters, (height, width), "circular"), b, rho)
    tol = 1e-12 * (op.lipschitz() + rho) / rho
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol * np.abs(expected).max())


# --- spectral norms --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("n_filters", "n_channels"),
    [(1, 1), (4, 1), (1, 3), (3, 3), (2, 5), (17, 17), (20, 18)],
    ids=["1x1", "K4C1", "K1C3", "K3C3", "K2C5", "power-17x17", "power-20x18"],
)
def test_conv_operator_lipschitz_is_the_dense_norm_squared(rng, n_filters, n_channels):
    s, shape = 2, (4, 3)
    filters = rng.standard_normal((n_filters, n_channels, s, s))
    L = ConvOperator(filters, shape).lipschitz()
    exact = np.linalg.norm(dense_conv_matrix(filters, shape, "circular"), 2) ** 2
    if min(n_filters, n_channels) <= 16:  # exact per-frequency eigenvalues
        assert L == pytest.approx(exact, rel=1e-12)
    else:  # power iteration with a 5 % margin: an upper bound, and not a loose one
        assert exact * (1 - 1e-9) <= L <= 1.05 * exact * (1 + 1e-9)


@pytest.mark.parametrize("n_channels", [1, 3])
def test_conv_operator_lipschitz_bounds_the_valid_operator(rng, n_channels):
    filters = rng.standard_normal((3, n_channels, 3, 3))
    L = ConvOperator(filters, IMAGE_SHAPE, boundary="valid").lipschitz()
    exact = np.linalg.norm(dense_conv_matrix(filters, IMAGE_SHAPE, "valid"), 2) ** 2
    assert L >= exact * (1 - 1e-12)


@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("filter_size", [2, 4])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_filter_operator_lipschitz_is_an_upper_bound(rng, boundary, filter_size, n_channels):
    shape = (5, 5)
    maps = rng.standard_normal((3, 2) + map_shape(shape, filter_size, boundary))
    L = FilterOperator(maps, shape, filter_size, boundary=boundary, n_channels=n_channels).lipschitz()
    exact = np.linalg.norm(dense_filter_matrix(maps, shape, filter_size, boundary, n_channels=n_channels), 2) ** 2
    assert L >= exact * (1 - 1e-12)


@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize(("n_images", "n_filters"), [(1, 1), (2, 3), (3, 2)])
def test_filter_operator_lipschitz_is_exact_for_full_support_filters(rng, n_images, n_filters, n_channels):
    s = 4
    shape = (s, s)  # s = H = W: the support restriction S is the identity, so the bound is attained
    maps = rng.standard_normal((n_images, n_filters) + shape)
    L = FilterOperator(maps, shape, s, boundary="circular", n_channels=n_channels).lipschitz()
    exact = np.linalg.norm(dense_filter_matrix(maps, shape, s, "circular", n_channels=n_channels), 2) ** 2
    assert L == pytest.approx(exact, rel=1e-12)


def test_max_gram_eigenvalue_of_a_single_column_is_its_largest_power(rng):
    a_hat = rng.standard_normal((3, 1, 4, 4)) + 1j * rng.standard_normal((3, 1, 4, 4))
    expected = np.max(np.sum(np.abs(a_hat) ** 2, axis=(0, 1)))
    assert max_gram_eigenvalue(a_hat) == pytest.approx(expected, rel=1e-12)


def test_max_gram_eigenvalue_returns_a_python_float(rng):
    a_hat = (rng.standard_normal((3, 2, 4, 4)) + 1j * rng.standard_normal((3, 2, 4, 4))).astype(np.complex64)
    assert isinstance(max_gram_eigenvalue(a_hat), float)


def test_max_gram_eigenvalue_of_zero_is_zero():
    assert max_gram_eigenvalue(np.zeros((17, 18, 2, 2), dtype=np.complex128)) == 0.0


# --- conjugate gradients ---------------------------------------------------------------------------------------


def _spd(rng, n: int, dtype) -> np.ndarray:
    M = rng.standard_normal((n, n))
    return (M @ M.T + 0.5 * np.eye(n)).astype(dtype)


def test_conjugate_gradient_converges_on_a_small_spd_system(rng):
    A = _spd(rng, 8, np.float64)
    b = rng.standard_normal(8)
    x = conjugate_gradient(lambda v: A @ v, b, np.zeros(8), 50, tol=1e-13)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-9, atol=1e-9)


def test_conjugate_gradient_is_exact_in_n_steps_from_a_warm_start(rng):
    A = _spd(rng, 5, np.float64)
    b = rng.standard_normal(5)
    x = conjugate_gradient(lambda v: A @ v, b, rng.standard_normal(5), 5, tol=0.0)
    np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-8, atol=1e-8)


def _quadratic_after_each_step(A: np.ndarray, b: np.ndarray, x0: np.ndarray, n_steps: int) -> np.ndarray:
    """½⟨x, A x⟩ − ⟨b, x⟩ after 0, 1, …, n_steps CG steps (each run restarted from x0)."""
    values = []
    for n in range(n_steps + 1):
        x = x0 if n == 0 else conjugate_gradient(lambda v: A @ v, b, x0, n, tol=0.0)
        values.append(0.5 * float(x @ (A @ x)) - float(b @ x))
    return np.array(values)


def test_conjugate_gradient_lowers_the_quadratic_at_every_step(rng, dtype):
    A = _spd(rng, 12, dtype)
    b = rng.standard_normal(12).astype(dtype)
    q = _quadratic_after_each_step(A, b, rng.standard_normal(12).astype(dtype), 12)
    assert np.all(np.diff(q) <= dtype_tol(dtype) * np.abs(q[1:]))


def test_conjugate_gradient_keeps_the_dtype(rng, dtype):
    A = _spd(rng, 6, dtype)
    b = rng.standard_normal(6).astype(dtype)
    assert conjugate_gradient(lambda v: A @ v, b, np.zeros(6, dtype=dtype), 3).dtype == dtype


def test_conjugate_gradient_returns_the_start_when_it_solves_the_system(rng):
    A = _spd(rng, 4, np.float64)
    x0 = rng.standard_normal(4)
    np.testing.assert_array_equal(conjugate_gradient(lambda v: A @ v, A @ x0, x0, 10), x0)


def test_conjugate_gradient_solves_the_valid_boundary_normal_equations(rng):
    filters = rng.standard_normal((2, 1, 3, 3))
    op = ConvOperator(filters, (5, 5), boundary="valid")
    beta = 0.5
    b = rng.standard_normal((1, 2) + op.map_shape)
    x = conjugate_gradient(lambda v: op.adjoint(op.forward(v)) + beta * v, b, np.zeros_like(b), 200, tol=1e-13)
    expected = _dense_solve(dense_conv_matrix(filters, (5, 5), "valid"), b, beta)
    np.testing.assert_allclose(x, expected, rtol=1e-8, atol=1e-8 * np.abs(expected).max())


@pytest.mark.parametrize("per_image", [False, True], ids=["shared-rho", "per-image-rho"])
@pytest.mark.parametrize("connectivity", [False, True], ids=["full", "sparse"])
@pytest.mark.parametrize("n_channels", [1, 3], ids=["sherman-morrison", "woodbury"])
def test_the_operators_factor_for_a_new_rho_equals_a_factor_made_from_scratch(
    rng, dtype, n_channels, connectivity, per_image
):
    """The operator keeps the ρ-free part of its factors: a factor for another ρ, made from it, is the one made
    from the filters alone (the part is not stale, nor one ρ's inverse)."""
    K = 3
    g = None
    if connectivity:
        g = np.ones((K, n_channels), dtype=bool)
        g[1, 0] = False
    op = ConvOperator(rng.standard_normal((K, n_channels, 3, 3)).astype(dtype), IMAGE_SHAPE, connectivity=g)
    fresh = ConvOperator(op.filters, IMAGE_SHAPE, connectivity=g)
    for rho in ([0.5, 2.0], [30.0, 0.01]) if per_image else (0.5, 30.0):
        rho = np.array(rho) if per_image else rho
        kept, scratch = op.factor_shifted_normal(rho), fresh.connections.factor_shifted_normal(fresh.planes_hat, rho)
        np.testing.assert_array_equal(kept.inverse, scratch.inverse)
        np.testing.assert_array_equal(np.asarray(kept.rho), np.asarray(rho))
