"""Tests for the inference of feature maps (solver.models.coding.encode and the zeiler / fista / admm solvers):
descent, consistency of the reported objective, monotonicity, agreement at convergence (with each other, a dense
ISTA and SPORCO), warm starts, dtypes, input promotion and connectivity."""

from __future__ import annotations

import numpy as np
import pytest

from solver import IterStats
from solver.algorithms import Admm, Zeiler
from solver.algorithms.problem import CSCProblem, objective
from solver.config import AdmmConfig, FistaConfig, ZeilerConfig
from solver.models.coding import encode, reconstruct
from solver.operators.convolution import ConvOperator, map_shape
from solver.operators.prox import LpPenalty
from tests.reference import dense_conv_matrix, ista_dense, objective_reference
from tests.solver.contracts import dtype_tol

METHODS = ["admm", "fista", "zeiler"]
BOUNDARIES = ["circular", "valid"]
LAM = 0.1


def _small_problem(rng, dtype, n_channels, shape=(8, 9), n_filters=3, s=3):
    """Images (2, C, H, W) and unit-norm filters (K, C, s, s) in `dtype`."""
    filters = rng.standard_normal((n_filters, n_channels, s, s))
    filters /= np.linalg.norm(filters.reshape(n_filters, -1), axis=1)[:, None, None, None]
    images = rng.standard_normal((2, n_channels) + shape)
    return images.astype(dtype), filters.astype(dtype)


def _energy_of_zero(images) -> float:
    return 0.5 * float(np.sum(np.asarray(images, dtype=np.float64) ** 2))


# --- descent and consistency -----------------------------------------------------------------------------------


@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", METHODS)
def test_encode_lowers_the_objective(rng, dtype, method, boundary, n_channels):
    images, filters = _small_problem(rng, dtype, n_channels)
    result = encode(images, filters, LAM, method=method, boundary=boundary, max_iter=20)
    E0 = _energy_of_zero(images)
    assert result.history[-1] < E0
    assert result.objective < E0
    assert result.objective <= min(result.history)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("p", [0.5, 2.0 / 3.0, 0.8], ids=["p1_2", "p2_3", "p0.8"])
@pytest.mark.parametrize("method", METHODS)
def test_encode_lowers_the_objective_for_p_below_one(rng, method, p, boundary):
    images, filters = _small_problem(rng, np.float64, 1)
    result = encode(images, filters, LAM, method=method, boundary=boundary, p=p, max_iter=20)
    E0 = _energy_of_zero(images)
    assert result.history[-1] < E0
    assert result.objective < E0


@pytest.mark.parametrize("p", [1.0, 0.5], ids=["p1", "p1_2"])
@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", METHODS)
def test_encode_objective_is_the_objective_of_its_maps(rng, dtype, method, boundary, n_channels, p):
    images, filters = _small_problem(rng, dtype, n_channels)
    result = encode(images, filters, LAM, method=method, boundary=boundary, p=p, max_iter=15)
    direct = objective_reference(images, result.maps, filters, LAM, p=p, boundary=boundary)
    assert isinstance(result.objective, float)
    assert result.objective == pytest.approx(direct, rel=dtype_tol(dtype))


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_problem_objective_matches_the_loop_reference(rng, dtype, boundary):
    images, filters = _small_problem(rng, dtype, 3)
    maps = rng.standard_normal((2, 3) + map_shape(images.shape[-2:], 3, boundary)).astype(dtype)
    expected = objective_reference(images, maps, filters, LAM, p=0.5, boundary=boundary)
    value = objective(images, maps, filters, LAM, p=0.5, boundary=boundary)
    assert value == pytest.approx(expected, rel=dtype_tol(dtype))


@pytest.mark.parametrize("method", METHODS)
def test_encode_history_has_one_entry_per_iteration(rng, method):
    images, filters = _small_problem(rng, np.float64, 1)
    states = []
    result = encode(images, filters, LAM, method=method, max_iter=12, callback=states.append)
    assert len(result.history) == result.n_iter == len(states)
    assert all(isinstance(E, float) for E in result.history)


@pytest.mark.parametrize("method", METHODS)
def test_encode_callback_receives_the_iteration_stats(rng, method):
    images, filters = _small_problem(rng, np.float64, 1)
    seen: list[IterStats] = []
    result = encode(images, filters, LAM, method=method, max_iter=12, callback=seen.append)
    assert [s.iteration for s in seen] == list(range(1, result.n_iter + 1))
    np.testing.assert_allclose([s.objective for s in seen], result.history, rtol=1e-12)
    assert all(0 < s.data < s.objective and 0 <= s.sparsity <= 1 and s.inner_iter == 1 for s in seen)
    assert [s.elapsed for s in seen] == sorted(s.elapsed for s in seen)


def test_encode_stops_when_the_callback_returns_true(rng):
    images, filters = _small_problem(rng, np.float64, 1)
    result = encode(images, filters, LAM, method="fista", max_iter=50, tol=0.0, callback=lambda s: s.iteration == 3)
    assert result.n_iter == 3 and len(result.history) == 3
    assert result.objective == pytest.approx(objective(images, result.maps, filters, LAM), rel=1e-12)


@pytest.mark.parametrize("method", ["admm", "fista"])
def test_encode_respects_max_iter(rng, method):
    images, filters = _small_problem(rng, np.float64, 1)
    assert encode(images, filters, LAM, method=method, max_iter=7, tol=0.0).n_iter == 7


@pytest.mark.parametrize("max_iter", [1, 3, 4, 10, 13])
def test_encode_runs_exactly_max_iter_zeiler_iterations(rng, max_iter):
    images, filters = _small_problem(rng, np.float64, 1)
    result = encode(images, filters, LAM, method=ZeilerConfig(n_beta=4), max_iter=max_iter)
    assert result.n_iter == len(result.history) == max_iter


def _z_step_stages(config: ZeilerConfig, images, filters) -> list[int]:
    """The β stage of each z-step of a Zeiler run, read off its states."""
    solver = Zeiler(CSCProblem(images, ConvOperator(filters, images.shape[-2:]), LpPenalty(LAM, 1.0)), config)
    state, stages = solver.init(), []
    for _ in range(config.max_iter):
        stages.append(state.stage)
        state = solver.step(state)
    assert state.stage == config.n_beta - 1  # the last x-step shrinks at the last β
    return stages


@pytest.mark.parametrize(("n_beta", "total"), [(4, 10), (6, 13), (6, 6), (3, 30)])
def test_zeiler_total_iterations_spread_evenly_over_every_stage(rng, n_beta, total):
    images, filters = _small_problem(rng, np.float64, 1)
    stages = _z_step_stages(ZeilerConfig(n_beta=n_beta, total_iter=total), images, filters)
    counts = np.bincount(stages, minlength=n_beta)
    assert counts.sum() == total and len(counts) == n_beta
    assert counts.min() >= total // n_beta and counts.max() <= total // n_beta + 1
    assert stages == sorted(stages)


def test_zeiler_total_iterations_of_whole_stages_is_the_per_stage_schedule(rng):
    images, filters = _small_problem(rng, np.float64, 1)
    spread = ZeilerConfig(n_beta=3, total_iter=12)
    per_stage = ZeilerConfig(n_beta=3, inner_iter=4)
    assert _z_step_stages(spread, images, filters) == _z_step_stages(per_stage, images, filters)
    a, b = (encode(images, filters, LAM, method=c) for c in (spread, per_stage))
    np.testing.assert_array_equal(a.maps, b.maps)


def test_fewer_zeiler_iterations_than_stages_still_end_at_the_last_beta(rng):
    images, filters = _small_problem(rng, np.float64, 1)
    stages = _z_step_stages(ZeilerConfig(n_beta=6, total_iter=3), images, filters)
    assert stages == [0, 2, 4]


@pytest.mark.parametrize("tol", [np.float32(1e-3), np.float64(1e-3), np.int64(0), 1e-3])
def test_encode_takes_a_numpy_scalar_tolerance(rng, tol):
    images, filters = _small_problem(rng, np.float64, 1)
    expected = encode(images, filters, LAM, method="fista", max_iter=300, tol=float(tol))
    assert encode(images, filters, LAM, method="fista", max_iter=300, tol=tol).n_iter == expected.n_iter


def test_encode_with_zeiler_refuses_a_tolerance_it_would_not_use(rng):
    images, filters = _small_problem(rng, np.float64, 1)
    with pytest.raises(ValueError, match=r"tol must be 0 or left out for method 'zeiler'.*0\.001"):
        encode(images, filters, LAM, method="zeiler", tol=1e-3)
    assert encode(images, filters, LAM, method="zeiler", tol=0).n_iter == ZeilerConfig().max_iter


# --- monotonicity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", [1.0, 0.5], ids=["p1", "p1_2"])
@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_fista_history_is_non_increasing(rng, dtype, boundary, n_channels, p):
    images, filters = _small_problem(rng, dtype, n_channels)
    history = np.array(encode(images, filters, LAM, method="fista", boundary=boundary, p=p, max_iter=60).history)
    slack = dtype_tol(dtype, 100) * np.abs(history[1:])
    assert np.all(np.diff(history) <= slack)


def _split_objectives(images, filters, boundary, p, z_solver):
    """(stage, C_β) after init and after each step of Zeiler(inner_iter=5, n_beta=3)."""
    op = ConvOperator(filters, images.shape[-2:], boundary=boundary)
    solver = Zeiler(CSCProblem(images, op, LpPenalty(LAM, p)), ZeilerConfig(inner_iter=5, n_beta=3, z_solver=z_solver))
    state = solver.init()
    records = [(state.stage, solver.split_objective(state))]
    for _ in range(solver.max_iter):
        state = solver.step(state)
        records.append((state.stage, solver.split_objective(state)))
    return np.array(records)


@pytest.mark.parametrize("p", [1.0, 0.5], ids=["p1", "p1_2"])
@pytest.mark.parametrize(("boundary", "z_solver"), [("circular", "exact"), ("circular", "cg"), ("valid", "cg")])
def test_zeiler_split_objective_never_increases_at_fixed_beta(rng, dtype, boundary, z_solver, p):
    images, filters = _small_problem(rng, dtype, 3)
    records = _split_objectives(images, filters, boundary, p, z_solver)
    stage, value = records[:, 0], records[:, 1]
    same_stage = stage[1:] == stage[:-1]
    assert np.unique(stage).size == 3  # the schedule was walked through
    rise = np.diff(value)[same_stage]
    assert np.all(rise <= dtype_tol(dtype, 100) * np.abs(value[1:][same_stage]))


# --- agreement at convergence ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def planted():
    """Planted CSC problem: D random unit-norm (4 filters 5×5), Z 3 % sparse, y = D Z + 0.01 noise, N = 2."""
    rng = np.random.default_rng(1)
    N, K, s, H = 2, 4, 5, 32
    filters = rng.standard_normal((K, 1, s, s))
    filters /= np.linalg.norm(filters.reshape(K, -1), axis=1)[:, None, None, None]
    maps = rng.standard_normal((N, K, H, H)) * (rng.random((N, K, H, H)) < 0.03)
    images = reconstruct(maps, filters) + 0.01 * rng.standard_normal((N, 1, H, H))
    return images, filters, 0.2


CONVERGED = {
    "admm": {"method": "admm", "max_iter": 3000, "tol": 1e-9},
    "fista": {"method": "fista", "max_iter": 1000, "tol": 1e-13},
    "zeiler": {"method": ZeilerConfig(beta0=1, beta_factor=2, n_beta=14, inner_iter=200)},
}


@pytest.fixture(scope="module")
def admm_converged(planted):
    images, filters, lam = planted
    return encode(images, filters, lam, **CONVERGED["admm"])


@pytest.mark.parametrize("method", ["fista", "zeiler"])
def test_methods_agree_at_convergence(planted, admm_converged, method):
    images, filters, lam = planted
    result = encode(images, filters, lam, **CONVERGED[method])
    assert result.objective == pytest.approx(admm_converged.objective, rel=1e-4)


def test_admm_converged_maps_reconstruct_the_planted_images(planted, admm_converged):
    images, filters, _ = planted
    recon = reconstruct(admm_converged.maps, filters)
    assert np.linalg.norm(recon - images) <= 0.25 * np.linalg.norm(images)


@pytest.fixture(scope="module")
def planted_valid():
    rng = np.random.default_rng(2)
    N, K, s, H = 2, 4, 5, 16
    filters = rng.standard_normal((K, 1, s, s))
    filters /= np.linalg.norm(filters.reshape(K, -1), axis=1)[:, None, None, None]
    grid = (H + s - 1, H + s - 1)
    maps = rng.standard_normal((N, K) + grid) * (rng.random((N, K) + grid) < 0.03)
    images = reconstruct(maps, filters, boundary="valid") + 0.01 * rng.standard_normal((N, 1, H, H))
    return images, filters, 0.2


def test_valid_boundary_maps_are_larger_than_the_images(planted_valid):
    images, filters, lam = planted_valid
    result = encode(images, filters, lam, method="fista", boundary="valid", max_iter=5)
    assert result.maps.shape == (2, 4, 16 + 5 - 1, 16 + 5 - 1)


def test_admm_and_fista_agree_at_convergence_with_the_valid_boundary(planted_valid):
    images, filters, lam = planted_valid
    admm = encode(images, filters, lam, method="admm", boundary="valid", max_iter=3000, tol=1e-9)
    fista = encode(images, filters, lam, method="fista", boundary="valid", max_iter=1000, tol=1e-12)
    assert fista.objective == pytest.approx(admm.objective, rel=1e-5)


@pytest.fixture(scope="module")
def tiny():
    """One 6×6 image, two 3×3 unit-norm filters: small enough for a dense D."""
    rng = np.random.default_rng(3)
    filters = rng.standard_normal((2, 1, 3, 3))
    filters /= np.linalg.norm(filters.reshape(2, -1), axis=1)[:, None, None, None]
    return rng.standard_normal((1, 1, 6, 6)), filters


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize(
    ("method", "settings", "rtol"),
    [
        ("admm", {"max_iter": 3000, "tol": 1e-10}, 1e-9),
        # loose: fista currently runs without momentum (see test_fista_is_accelerated), ~4e-6 after 2500 steps
        ("fista", {"max_iter": 2500, "tol": 0.0}, 1e-5),
    ],
    ids=["admm", "fista"],
)
def test_encode_agrees_with_dense_ista(tiny, method, settings, rtol, boundary):
    images, filters = tiny
    D = dense_conv_matrix(filters, images.shape[-2:], boundary)
    x = ista_dense(D, images.ravel(), LAM, 10000)
    grid = map_shape(images.shape[-2:], 3, boundary)
    E_ista = objective_reference(images, x.reshape((1, 2) + grid), filters, LAM, boundary=boundary)
    result = encode(images, filters, LAM, method=method, boundary=boundary, **settings)
    assert result.objective == pytest.approx(E_ista, rel=rtol)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_fista_is_accelerated(tiny, boundary):
    images, filters = tiny
    optimum = encode(images, filters, LAM, method="admm", boundary=boundary, max_iter=3000, tol=1e-10).objective
    result = encode(images, filters, LAM, method="fista", boundary=boundary, max_iter=300, tol=0.0)
    # a correct FISTA is within 1e-8 after ~200 iterations here; ISTA is still ~1e-2 away after 300
    assert result.objective == pytest.approx(optimum, rel=1e-6)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_fista_stops_when_converged(tiny, boundary):
    images, filters = tiny
    result = encode(images, filters, LAM, method="fista", boundary=boundary, max_iter=2000, tol=1e-9)
    assert result.n_iter < 2000


def test_admm_stops_when_converged(tiny):
    images, filters = tiny
    assert encode(images, filters, LAM, method="admm", max_iter=2000, tol=1e-6).n_iter < 2000


def test_admm_reaches_the_sporco_objective(planted, admm_converged, monkeypatch):
    cbpdn = pytest.importorskip("sporco.admm.cbpdn")
    sporco_fft = pytest.importorskip("sporco.fft")
    # sporco plans every pyfftw transform with FFTW_MEASURE on all cores: 0.1 s to 8 s for the same solve on a
    # loaded machine. The estimate planner on one thread gives the same iterates, deterministically and fast.
    monkeypatch.setattr(sporco_fft, "pyfftw_planner_effort", "FFTW_ESTIMATE", raising=False)
    monkeypatch.setattr(sporco_fft, "pyfftw_threads", 1, raising=False)
    images, filters, lam = planted
    D = np.transpose(filters[:, 0], (1, 2, 0))  # (s, s, K)
    S = np.transpose(images[:, 0], (1, 2, 0))  # (H, W, N)
    # HighMemSolve: with sporco 0.2.2.post1 and numpy 2.x the default solve path oscillates under AutoRho
    # (E ≈ 45 after 500 iterations against the optimum 32.50); with the cached Sherman–Morrison factor, or
    # with AutoRho disabled, it converges to the same minimum as ours.
    opt = cbpdn.ConvBPDN.Options({"Verbose": False, "MaxMainIter": 500, "RelStopTol": 1e-6, "HighMemSolve": True})
    solver = cbpdn.ConvBPDN(D, S, lam, opt, dimK=1)
    solver.solve()
    maps = np.ascontiguousarray(np.transpose(solver.Y[:, :, 0], (2, 3, 0, 1)))  # (H, W, 1, N, K) -> (N, K, H, W)
    E_sporco = objective(images, maps, filters, lam)
    assert admm_converged.objective == pytest.approx(E_sporco, rel=1e-3)
    assert admm_converged.objective <= E_sporco * (1 + 1e-9)


# --- warm start ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "method",
    ["admm", "fista", "zeiler"],
)
def test_warm_start_never_returns_worse_maps_than_it_was_given(tiny, method):
    images, filters = tiny
    optimum = encode(images, filters, LAM, method="admm", max_iter=3000, tol=1e-10)
    E_init = objective(images, optimum.maps, filters, LAM)
    result = encode(images, filters, LAM, method=method, max_iter=6, init=optimum.maps)
    assert result.objective <= E_init * (1 + 1e-12)


@pytest.mark.parametrize("method", ["admm", "fista"])
def test_warm_start_starts_at_the_given_maps(rng, method):
    images, filters = _small_problem(rng, np.float64, 1)
    first = encode(images, filters, LAM, method=method, max_iter=20)
    E_init = objective(images, first.maps, filters, LAM)
    # one step from the warm start is already far below the energy of zero maps, and close to E(init)
    second = encode(images, filters, LAM, method=method, max_iter=1, init=first.maps)
    assert second.history[0] <= E_init * 1.05


@pytest.mark.parametrize(
    "boundary, fused", [("circular", True), ("circular", False), ("valid", False)], ids=["fused", "plain", "masked"]
)
def test_admm_balances_rho_every_other_iteration_early_then_every_period(rng, boundary, fused):
    images, filters = _small_problem(rng, np.float64, 1)
    op = ConvOperator(filters, images.shape[-2:], boundary=boundary)
    config = AdmmConfig(max_iter=40, rho_early=6, rho_period=7, fused=fused)
    solver = Admm(CSCProblem(images, op, LpPenalty(LAM, 1.0)), config)
    state, balanced = solver.init(), []
    for _ in range(30):
        state = solver.step(state)
        if state.residual_iteration == state.iteration:
            balanced.append(state.iteration)
    assert balanced == [2, 4, 6, 7, 14, 21, 28]
    # a warm start's ρ is balanced already: every rho_period only (each change costs a new factor)
    state, balanced = solver.init(state.maps, warm=state.warm_start()), []
    for _ in range(15):
        state = solver.step(state)
        if state.residual_iteration == state.iteration:
            balanced.append(state.iteration)
    assert balanced == [7, 14]


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_a_cold_start_is_a_start_from_zero_maps(rng, boundary):
    images, filters = _small_problem(rng, np.float32, 1)
    cold = encode(images, filters, LAM, method="admm", boundary=boundary, max_iter=15)
    zeros = np.zeros_like(cold.maps)
    from_zeros = encode(images, filters, LAM, method="admm", boundary=boundary, max_iter=15, init=zeros)
    np.testing.assert_array_equal(cold.maps, from_zeros.maps)
    assert cold.history == from_zeros.history


@pytest.mark.parametrize("method", ["admm", "fista"])
def test_an_image_s_maps_do_not_depend_on_the_other_images_of_the_batch(method):
    # image 1 (scaled down) converges long before image 0: its maps must be the ones it gets alone, though the
    # batch runs on until image 0 has converged
    images, filters = _small_problem(np.random.default_rng(0), np.float64, 1, shape=(12, 12))
    images[1] *= 0.3
    config = {"method": method, "max_iter": 400, "tol": 1e-4 if method == "admm" else 1e-6}
    batch = encode(images, filters, LAM, **config)
    alone = [encode(images[n : n + 1], filters, LAM, **config) for n in range(2)]
    assert alone[1].n_iter < alone[0].n_iter == batch.n_iter
    for n in range(2):
        np.testing.assert_allclose(batch.maps[n], alone[n].maps[0], rtol=1e-9, atol=1e-12)


def test_warm_start_accepts_init_of_another_dtype(rng):
    images, filters = _small_problem(rng, np.float32, 1)
    init = np.zeros((2, 3) + images.shape[-2:], dtype=np.float64)
    assert encode(images, filters, LAM, max_iter=2, init=init).maps.dtype == np.float32


# --- dtypes and input promotion --------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", METHODS)
def test_encode_keeps_the_image_dtype(rng, dtype, method, boundary):
    images, filters = _small_problem(rng, dtype, 1)
    result = encode(images, filters.astype(np.float64), LAM, method=method, boundary=boundary, max_iter=3)
    assert result.maps.dtype == dtype
    assert isinstance(result.maps, np.ndarray)


@pytest.mark.parametrize("shape", [(8, 9), (2, 8, 9)], ids=["HW", "NHW"])
def test_encode_promotes_grey_images(rng, dtype, shape):
    images = rng.standard_normal(shape).astype(dtype)
    _, filters = _small_problem(rng, dtype, 1)
    result = encode(images, filters, LAM, max_iter=3)
    n_images = 1 if len(shape) == 2 else shape[0]
    assert result.maps.shape == (n_images, 3, 8, 9)
    assert result.maps.dtype == dtype
    batched = encode(images.reshape((n_images, 1, 8, 9)), filters, LAM, max_iter=3)
    np.testing.assert_array_equal(result.maps, batched.maps)


@pytest.mark.parametrize("int_dtype", [np.uint8, np.int16, np.int64])
def test_encode_accepts_integer_images_as_float32(rng, int_dtype):
    images = rng.integers(0, 100, size=(2, 1, 8, 9)).astype(int_dtype)
    _, filters = _small_problem(rng, np.float64, 1)
    result = encode(images, filters, LAM, max_iter=3)
    assert result.maps.dtype == np.float32
    assert result.objective < _energy_of_zero(images)


def test_encode_accepts_grey_filters_of_rank_three(rng):
    images, filters = _small_problem(rng, np.float64, 1)
    a = encode(images, filters[:, 0], LAM, max_iter=3)
    b = encode(images, filters, LAM, max_iter=3)
    np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize("method", [AdmmConfig(max_iter=5), FistaConfig(max_iter=5), ZeilerConfig(n_beta=2)])
def test_encode_accepts_a_config_model_as_method(rng, method):
    images, filters = _small_problem(rng, np.float64, 1)
    result = encode(images, filters, LAM, method=method)
    assert result.n_iter == (5 if not isinstance(method, ZeilerConfig) else 2)


@pytest.mark.parametrize("method", METHODS)
def test_encode_leaves_its_inputs_unchanged(rng, method):
    images, filters = _small_problem(rng, np.float64, 3)
    init = 0.1 * rng.standard_normal((2, 3) + images.shape[-2:])
    g = np.array([[True, False, True], [False, True, False], [True, True, True]])
    copies = [a.copy() for a in (images, filters, init, g)]
    encode(images, filters, LAM, method=method, max_iter=5, init=init, connectivity=g)
    for a, b in zip((images, filters, init, g), copies, strict=True):
        np.testing.assert_array_equal(a, b)


# --- connectivity ----------------------------------------------------------------------------------------------

CONNECTIVITY = np.array([[True, False, False], [False, True, True], [True, True, False]])


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", METHODS)
def test_encode_with_connectivity_lowers_the_objective(rng, method, boundary):
    images, filters = _small_problem(rng, np.float64, 3)
    result = encode(images, filters, LAM, method=method, boundary=boundary, connectivity=CONNECTIVITY, max_iter=20)
    assert result.objective < _energy_of_zero(images)
    direct = objective_reference(images, result.maps, filters, LAM, boundary=boundary, connectivity=CONNECTIVITY)
    assert result.objective == pytest.approx(direct, rel=1e-10)


@pytest.mark.parametrize("method", METHODS)
def test_encode_ignores_disconnected_filter_planes(rng, method):
    images, filters = _small_problem(rng, np.float64, 3)
    changed = filters.copy()
    changed[~CONNECTIVITY] = rng.standard_normal(changed[~CONNECTIVITY].shape)
    a = encode(images, filters, LAM, method=method, connectivity=CONNECTIVITY, max_iter=10)
    b = encode(images, changed, LAM, method=method, connectivity=CONNECTIVITY, max_iter=10)
    np.testing.assert_array_equal(a.maps, b.maps)


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_reconstruct_uses_only_connected_planes(rng, boundary):
    _, filters = _small_problem(rng, np.float64, 3)
    maps = rng.standard_normal((2, 3) + map_shape((8, 9), 3, boundary))
    changed = filters.copy()
    changed[~CONNECTIVITY] = 10.0
    a = reconstruct(maps, filters, boundary=boundary, connectivity=CONNECTIVITY)
    b = reconstruct(maps, changed, boundary=boundary, connectivity=CONNECTIVITY)
    np.testing.assert_array_equal(a, b)
    full = reconstruct(maps, filters, boundary=boundary)
    assert not np.allclose(a, full)


# --- images are independent problems (what lets a batch be split over workers) ----------------------------------


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("method", METHODS)
def test_each_image_is_coded_as_if_it_were_alone(rng, method, boundary):
    images, filters = _small_problem(rng, np.float64, 2, shape=(12, 11), n_filters=4)
    kwargs = {"method": method, "boundary": boundary, "max_iter": 24, "tol": 0.0}
    whole = encode(images, filters, LAM, **kwargs)
    parts = np.concatenate(
        [encode(images[:1], filters, LAM, **kwargs).maps, encode(images[1:], filters, LAM, **kwargs).maps]
    )
    np.testing.assert_allclose(whole.maps, parts, rtol=1e-9, atol=1e-12)


# --- backends --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n_channels", [1, 2])
@pytest.mark.parametrize("method", ["admm", "fista"])
def test_encode_on_a_backend_follows_numpy(rng, backend, method, n_channels):
    # on cupy, the numpy formulation of the solvers against numpy's run (the fused kernels for ADMM, C = 1)
    images, filters = _small_problem(rng, np.float32, n_channels, shape=(12, 11), n_filters=4)
    kwargs = {"method": method, "max_iter": 25, "tol": 0.0}
    expected = encode(images, filters, LAM, backend="numpy", **kwargs)
    got = encode(backend.asarray(images), backend.asarray(filters), LAM, backend=backend.name, **kwargs)
    np.testing.assert_allclose(backend.to_host(got.maps), expected.maps, rtol=2e-3, atol=2e-3)
    assert got.objective == pytest.approx(expected.objective, rel=1e-4)
    assert got.maps.dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_recycled_admm_states_give_the_allocating_run_and_leave_the_start_alone(dtype, monkeypatch):
    """base.run has the fused ADMM (``reuses_states``) step from a state into that state's arrays, but for the
    maps, which alternate between two arrays, also under encode's progress callback, which keeps no state; with
    a callback that may keep the states it allocates every iteration. All must give the same maps and history,
    and the caller's starting maps must stay untouched."""
    from solver.algorithms.base import run  # noqa: PLC0415

    calls: list[tuple[bool, bool]] = []
    arrays: list[tuple[int, int, int]] = []
    step = Admm.step

    def counted(self, state, *, out=None, consume=False):
        calls.append((out is not None, consume))
        if out is not None:
            assert out.dual is state.dual and out.solve_hat is state.solve_hat and out.carry_hat is state.carry_hat
            arrays.append(tuple(a.ctypes.data for a in (out.maps, out.dual, out.carry_hat)))  # where they lie
        return step(self, state, out=out, consume=consume)

    monkeypatch.setattr(Admm, "step", counted)
    rng = np.random.default_rng(5)
    images = rng.standard_normal((3, 1, 24, 24)).astype(dtype)
    filters = rng.standard_normal((4, 1, 5, 5)).astype(dtype)
    init = (0.1 * rng.standard_normal((3, 4, 24, 24))).astype(dtype)
    kept = init.copy()
    kwargs = {"method": "admm", "max_iter": 30, "tol": 0.0, "init": init, "backend": "numpy"}
    recycled = encode(images, filters, 0.1, **kwargs)
    seen: list[IterStats] = []
    reported = encode(images, filters, 0.1, callback=seen.append, **kwargs)
    for _ in (recycled, reported):  # 30 steps each; never into the caller's start
        mine, calls[:30] = calls[:30], []
        assert mine == [(False, False)] + [(True, True)] * 29
        mine_arrays, arrays[:29] = arrays[:29], []
        maps, dual, carry = (len(set(ids)) for ids in zip(*mine_arrays, strict=True))
        assert maps <= 3 and dual == carry == 1  # the third: where the first step improved some images only
    assert not calls and not arrays

    problem = CSCProblem(images, ConvOperator(filters, images.shape[-2:]), LpPenalty(0.1))
    solver = Admm(problem, AdmmConfig(max_iter=30, tol=0.0))
    states: list = []
    allocated = run(solver, solver.init(init), callback=states.append)
    assert calls == [(False, False)] * 30 and len({id(s.maps) for s in states}) == 30
    np.testing.assert_array_equal(init, kept)
    for result in (reported, allocated):
        np.testing.assert_array_equal(recycled.maps, result.maps)
        assert recycled.history == result.history and recycled.objective == result.objective
    assert [s.objective for s in seen] == recycled.history


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_fused_admm_counts_what_the_progress_reports_on_its_way(dtype, monkeypatch):
    # E's sparsity term and the non-zero fraction of IterStats come from the spatial kernel's sums: no pass over
    # the maps per iteration for a progress report, and none for E of a zero start
    from solver.operators import kernels  # noqa: PLC0415

    passes: list[int] = []
    count = kernels.abs_and_count
    monkeypatch.setattr(kernels, "abs_and_count", lambda x: passes.append(1) or count(x))
    rng = np.random.default_rng(6)
    images = rng.standard_normal((2, 1, 20, 20)).astype(dtype)
    filters = rng.standard_normal((5, 1, 4, 4)).astype(dtype)
    for n_iter in (1, 7):  # the last iterate is the result where E fell at the last step
        seen: list[IterStats] = []
        passes.clear()
        result = encode(images, filters, 0.2, method="admm", max_iter=n_iter, tol=0.0, callback=seen.append)
        assert not passes and len(seen) == n_iter
        assert result.objective == seen[-1].objective
        assert seen[-1].sparsity == np.count_nonzero(result.maps) / result.maps.size
        l1 = 0.2 * float(np.abs(result.maps).sum(dtype=np.float64))
        assert seen[-1].data == pytest.approx(result.objective - l1, rel=dtype_tol(dtype))
        assert 0 < seen[-1].sparsity < 1
    encode(images, filters, 0.2, method="admm", max_iter=3, tol=0.0, init=result.maps)
    assert len(passes) == 1  # E of given start maps


@pytest.mark.parametrize("boundary", BOUNDARIES)
def test_admm_codes_images_alike_in_any_units_above_unit_range(boundary):
    # y → cy with λ → cλ scales the minimiser by c; the default ρ rules, tuned on images of unit range, must not
    # read the units (in pixel units, 0..255, they started ρ hundreds of times too large and ADMM stalled)
    images, filters = _small_problem(np.random.default_rng(0), np.float64, 1, shape=(16, 16))
    images /= np.abs(images).max(axis=(1, 2, 3), keepdims=True)  # every image's peak at 1
    ref = encode(images, filters, LAM, boundary=boundary, max_iter=40, tol=0.0)
    for c in (7.0, 255.0):
        scaled = encode(c * images, filters, c * LAM, boundary=boundary, max_iter=40, tol=0.0)
        np.testing.assert_allclose(scaled.maps / c, ref.maps, rtol=1e-7, atol=1e-9)
        np.testing.assert_allclose(np.array(scaled.history) / c**2, ref.history, rtol=1e-9)


@pytest.mark.parametrize("boundary", BOUNDARIES)
@pytest.mark.parametrize("p", [0.8, 0.5])
def test_admm_with_p_below_one_reaches_what_fista_reaches(p, boundary):
    # the problem is not convex: balancing ρ against the residuals drove it down until the iterates diverged
    rng = np.random.default_rng(1)
    images = rng.standard_normal((2, 1, 32, 32))
    filters = rng.standard_normal((4, 1, 5, 5))
    filters /= np.linalg.norm(filters.reshape(4, -1), axis=1)[:, None, None, None]
    fista = encode(images, filters, LAM, p=p, method="fista", boundary=boundary, max_iter=500)
    admm = encode(images, filters, LAM, p=p, method="admm", boundary=boundary)
    assert admm.objective <= 1.01 * fista.objective
    assert admm.history[-1] <= 1.01 * fista.objective  # the last iterate, not only the best one kept
