"""The fused kernels of the ADMM inner loop against the numpy formulation they replace, written once and run on
every implementation: the numba kernels (solver.operators.kernels), the CUDA kernels' host build (see
tests/solver/cuda_host.py; one per compiler found) and, on a GPU, the CUDA kernels through cupy. Then the numba
ADMM loop against the numpy one."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import pytest
import scipy.fft

from solver.algorithms.admm import Admm
from solver.backend import get_backend, visible_cpus
from solver.config import AdmmConfig
from solver.operators import gpu_kernels, kernels
from solver.operators.linalg import solve_shifted_normal
from tests.solver.admm_cases import fourier_inputs, problem_for
from tests.solver.contracts import dtype_tol
from tests.solver.cuda_host import COMPILERS, use_host_build

pytestmark = pytest.mark.skipif(not kernels.available(), reason="numba is not installed")


class Kernels(NamedTuple):
    """One implementation of the kernels, with the moves of host arrays to its device and back."""

    name: str
    module: Any
    device: Any
    host: Any


def _same(a):
    return a


def _kernels(name: str, request: pytest.FixtureRequest) -> Kernels:
    if name == "numba":
        return Kernels(name, kernels, _same, _same)
    if name == "cupy":
        cp = get_backend("cupy")
        return Kernels(name, gpu_kernels, cp.asarray, cp.to_host)
    library = request.getfixturevalue("host_libraries")[name.removeprefix("host-")]
    module = use_host_build(library, request.getfixturevalue("monkeypatch"))
    request.addfinalizer(gpu_kernels._module.cache_clear)
    return Kernels(name, module, _same, _same)


TWINS = [*(f"host-{c}" for c in COMPILERS), pytest.param("cupy", marks=pytest.mark.gpu)]


@pytest.fixture(params=["numba", *TWINS])
def impl(request: pytest.FixtureRequest) -> Kernels:
    return _kernels(request.param, request)


@pytest.fixture(params=TWINS)
def twin(request: pytest.FixtureRequest) -> Kernels:
    """The CUDA kernels (host build or GPU), which must follow the numba kernels to the last special value."""
    return _kernels(request.param, request)


def _on_device(impl: Kernels, args) -> list:
    return [impl.device(a) if isinstance(a, np.ndarray) else a for a in args]


# ---- the kernels, on every implementation ----------------------------------------------------------------------


@pytest.mark.parametrize("residuals", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 50), (1, 2, 2500)], ids=["one-block", "blocks-per-row"])
def test_admm_spatial_is_relaxation_shrinkage_and_dual_update(impl, rng, dtype, shape, residuals):
    x, z, u = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    thr = np.linspace(0.3, 0.7, shape[0])
    z_new, u_new, sums = impl.module.admm_spatial(*_on_device(impl, (x, z, u)), 1.8, thr, residuals=residuals)
    z_new, u_new = impl.host(z_new), impl.host(u_new)
    v = 1.8 * x - 0.8 * z + u
    expected = np.sign(v) * np.maximum(np.abs(v) - thr[:, None, None], 0)
    tol = dtype_tol(dtype, 1e2)

    def total(a):
        return a.astype(np.float64).sum(axis=(1, 2))

    np.testing.assert_allclose(z_new, expected, atol=tol)
    np.testing.assert_allclose(u_new, v - expected, atol=tol)
    np.testing.assert_allclose(sums[:, 5], total(np.abs(expected)), rtol=tol)
    np.testing.assert_array_equal(sums[:, 6], np.count_nonzero(z_new, axis=(1, 2)))
    if residuals:
        np.testing.assert_allclose(sums[:, 0], total((x - expected) ** 2), rtol=tol)
        np.testing.assert_allclose(sums[:, 3], total((expected - z) ** 2), rtol=tol)
        np.testing.assert_allclose(sums[:, 4], total((v - expected) ** 2), rtol=tol)
    assert z_new.dtype == u_new.dtype == dtype and sums.shape == (shape[0], kernels.N_SUMS)


@pytest.mark.parametrize("residuals", [True, False])
def test_admm_spatial_reads_x_times_its_scale(impl, rng, dtype, residuals):
    # an unnormalised inverse transform: x·H·W with x_scale = 1/(H·W); powers of two keep every product exact
    x, z, u = (rng.standard_normal((2, 3, 50)).astype(dtype) for _ in range(3))
    thr = np.array([0.3, 0.7])
    got = impl.module.admm_spatial(*_on_device(impl, (x * 4096, z, u)), 1.8, thr, residuals=residuals, x_scale=2**-12)
    expected = impl.module.admm_spatial(*_on_device(impl, (x, z, u)), 1.8, thr, residuals=residuals)
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(impl.host(a), impl.host(b))


def test_admm_spatial_may_write_over_its_inputs(impl, rng):
    x, z, u = _on_device(impl, [rng.standard_normal((2, 3, 20)) for _ in range(3)])
    thr = np.array([0.3, 0.7])
    z_new, u_new, sums = impl.module.admm_spatial(x, z, u, 1.8, thr)
    z_in, u_in, sums_in = impl.module.admm_spatial(x, z, u, 1.8, thr, z_out=z, u_out=u)
    assert z_in is z and u_in is u
    np.testing.assert_array_equal(impl.host(z_in), impl.host(z_new))
    np.testing.assert_array_equal(impl.host(u_in), impl.host(u_new))
    np.testing.assert_array_equal(sums_in, sums)


def test_admm_spatial_refuses_an_output_of_the_wrong_dtype(impl, rng):
    x = impl.device(rng.standard_normal((2, 3, 20)))
    with pytest.raises(ValueError, match="z_out"):
        impl.module.admm_spatial(x, x, x, 1.8, np.ones(2), z_out=impl.device(np.empty(x.shape, dtype=np.float32)))


def test_admm_spatial_propagates_nan_and_inf_like_the_numba_kernel(twin):
    x = np.array([[[np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5]]])
    z, u = np.zeros_like(x), np.zeros_like(x)
    got = twin.module.admm_spatial(*_on_device(twin, (x, z, u)), 1.0, np.array([0.25]))
    expected = kernels.admm_spatial(x, z, u, 1.0, np.array([0.25]))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(twin.host(a), b)


@pytest.mark.parametrize("shape", [(13, 16), (40, 30)], ids=["one-block", "blocks-per-image"])
def test_admm_fourier_is_the_dual_update_the_data_term_and_the_next_solve(impl, rng, dtype, shape):
    problem, factor, args = fourier_inputs(rng, dtype, shape=shape)
    x_hat, t_new, twice_data = impl.module.admm_fourier(*_on_device(impl, args))
    z_hat = args[0].reshape(problem.maps_shape[:2] + problem.images_hat.shape[-2:])
    u_hat = args[2][:, None, None, None] * (args[1].reshape(z_hat.shape) - z_hat)
    # x̂ = (âᴴâ + ρ)⁻¹(âᴴŷ + ρ(ẑ − û)), then t̂ = û + αx̂ + (1 − α)ẑ
    x_expected = solve_shifted_normal(factor, problem.rhs_hat + factor.rho_array(z_hat) * (z_hat - u_hat))
    t_expected = u_hat + 1.8 * x_expected - 0.8 * z_hat
    tol = dtype_tol(dtype, 1e2)
    x_hat, t_new = impl.host(x_hat).reshape(z_hat.shape), impl.host(t_new).reshape(z_hat.shape)
    np.testing.assert_allclose(x_hat, x_expected, atol=tol * np.abs(x_expected).max())
    np.testing.assert_allclose(t_new, t_expected, atol=tol * np.abs(t_expected).max())
    np.testing.assert_allclose(0.5 * twice_data, problem.residual(z_hat)[1], rtol=tol)
    assert x_hat.dtype == t_new.dtype == z_hat.dtype


@pytest.mark.parametrize("over", [0, 1], ids=["z_hat", "t_hat"])
def test_admm_fourier_may_write_its_carry_over_an_input(impl, rng, over):
    _, _, args = fourier_inputs(rng, np.float64)
    args = _on_device(impl, args)
    x_new, t_new, sums = impl.module.admm_fourier(*args)
    inputs = [args[0].copy(), args[1].copy()]
    x_in, t_in, sums_in = impl.module.admm_fourier(*inputs, *args[2:], t_out=inputs[over])
    assert t_in is inputs[over]
    np.testing.assert_array_equal(impl.host(t_in), impl.host(t_new))
    np.testing.assert_array_equal(impl.host(x_in), impl.host(x_new))
    np.testing.assert_array_equal(sums_in, sums)


# ---- numba: the ADMM loop and the inverse FFT ------------------------------------------------------------------


def _steps(solver, n):
    state = solver.init()
    for _ in range(n):
        state = solver.step(state)
    return state


def test_fused_admm_follows_the_numpy_admm(rng, dtype):
    problem = problem_for(rng, dtype)
    fused, plain = Admm(problem, AdmmConfig(fused=True)), Admm(problem, AdmmConfig(fused=False))
    assert fused._fused and not plain._fused
    a, b = _steps(fused, 25), _steps(plain, 25)
    tol = 1e-10 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(a.maps, b.maps, rtol=tol, atol=tol)
    np.testing.assert_allclose(a.objective, b.objective, rtol=dtype_tol(dtype))
    np.testing.assert_allclose(a.rho, b.rho, rtol=tol)  # ρ follows the residuals, so round-off reaches it
    np.testing.assert_allclose(a.dual, b.dual, rtol=tol, atol=tol)
    assert a.maps.dtype == dtype and a.solve_hat.dtype == b.solve_hat.dtype == a.carry_hat.dtype


def test_fused_admm_in_place_follows_the_fused_admm(rng, dtype):
    solver = Admm(problem_for(rng, dtype))
    fresh, reused = solver.init(), solver.init()
    for _ in range(25):
        fresh = solver.step(fresh)
        reused = solver.step(reused, out=reused)
    for field in ("maps", "dual", "solve_hat", "carry_hat", "objective", "rho"):
        np.testing.assert_array_equal(getattr(reused, field), getattr(fresh, field))


def test_admm_step_leaves_its_state_unchanged(rng):
    solver = Admm(problem_for(rng, np.float64))
    state = _steps(solver, 9)  # the next step computes the residuals and changes ρ
    copies = {k: v.copy() for k, v in vars(state).items() if isinstance(v, np.ndarray)}
    assert not np.array_equal(solver.step(state).rho, state.rho)
    for k, v in copies.items():
        np.testing.assert_array_equal(getattr(state, k), v)


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("shape", [(6, 8), (7, 9)], ids=["even", "odd"])
def test_irfft2_is_scipy_irfft2(rng, shape, overwrite):
    a_hat = np.fft.rfft2(rng.standard_normal((2, 3) + shape).astype(np.float32))
    a_hat = a_hat.astype(np.complex64)
    expected = scipy.fft.irfft2(a_hat, s=shape)
    got = kernels.irfft2(a_hat.copy() if overwrite else a_hat, shape, 2, overwrite=overwrite)
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32


_CPUS = visible_cpus()


@pytest.mark.skipif(_CPUS < 2 or not kernels.available(), reason="needs 2 CPUs and numba to see a cap")
def test_thread_pools_keep_to_omp_num_threads(monkeypatch):
    # a Ray actor of one CPU sees every core of its node and OMP_NUM_THREADS=1: its FFT workers and numba passes
    # must keep to one thread, or n such actors oversubscribe the node
    import numba  # noqa: PLC0415

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert get_backend("numpy").workers == 1
    with kernels._threads_for(1 << 24):
        assert numba.get_num_threads() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", "2,1")
    assert get_backend("numpy").workers == min(2, _CPUS)
    monkeypatch.delenv("OMP_NUM_THREADS")
    assert get_backend("numpy").workers == _CPUS
    with kernels._threads_for(1 << 24):
        assert numba.get_num_threads() == min(_CPUS, numba.config.NUMBA_NUM_THREADS)


@pytest.mark.skipif(_CPUS < 2 or not kernels.available(), reason="needs 2 CPUs and numba to see a cap")
def test_a_callers_numba_thread_count_is_kept(monkeypatch):
    import numba  # noqa: PLC0415

    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    previous = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        with kernels._threads_for(1 << 24):
            assert numba.get_num_threads() == 1
        assert numba.get_num_threads() == 1
    finally:
        numba.set_num_threads(previous)
