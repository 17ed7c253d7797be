"""Tests for solver.operators.prox: the shrinkage of τ|x|^p against brute force and a bracketing reference, the prox
contracts, the filter projections and the penalty value."""

from __future__ import annotations

import numpy as np
import pytest

from solver.operators.prox import LpPenalty, normalise_unit, project_unit_ball, shrink, soft_threshold
from tests.reference import shrink_reference
from tests.solver.contracts import ConvexProxContract, ProjectionContract, ProxContract, dtype_tol

P_VALUES = [1.0, 0.5, 2.0 / 3.0, 0.8, 0.3]
P_IDS = ["p1", "p1_2", "p2_3", "p0.8", "p0.3"]


def _p_params():
    return [pytest.param(p, id=i) for p, i in zip(P_VALUES, P_IDS, strict=True)]


# --- scalar problem against brute force ------------------------------------------------------------------------

GRID = np.append(np.linspace(-8.0, 8.0, 400001), 0.0)  # spacing 4e-5, and zero exactly
V_VALUES = np.concatenate([np.linspace(-6.0, 6.0, 25), [0.0, 0.013, -0.37, 1.01, 2.2222, -5.55]])


def _grid_minimum_gap(v_values: np.ndarray, x_values: np.ndarray, threshold: float, p: float) -> np.ndarray:
    """F(x) − min over GRID of F, with F(t) = τ|t|^p + ½(t − v)², for each (v, x) pair."""
    penalty = threshold * np.abs(GRID) ** p
    gaps = []
    for v, x in zip(v_values, x_values, strict=True):
        grid_min = np.min(penalty + 0.5 * (GRID - v) ** 2)
        gaps.append(threshold * abs(x) ** p + 0.5 * (x - v) ** 2 - grid_min)
    return np.array(gaps)


@pytest.mark.parametrize("threshold", [0.05, 0.5, 1.0, 2.5])
@pytest.mark.parametrize("p", _p_params())
def test_shrink_minimises_the_scalar_problem_on_a_fine_grid(p, threshold):
    x = shrink(V_VALUES, threshold, p)
    gaps = _grid_minimum_gap(V_VALUES, x, threshold, p)
    assert np.all(np.abs(gaps) <= 1e-6)


# --- against the bracketing reference --------------------------------------------------------------------------

THRESHOLDS = (1e-6, 1e-4, 1e-2, 0.3, 1.0, 3.0)


def _worst_relative_error(p: float, dtype) -> float:
    """max |shrink − reference| / |reference| over many v and THRESHOLDS, ties between 0 and the root excluded."""
    v = np.concatenate([np.linspace(-6.0, 6.0, 241), np.geomspace(1e-3, 50.0, 60)]).astype(dtype)
    v64 = v.astype(np.float64)
    worst = 0.0
    for tau in THRESHOLDS:
        x = shrink(v, tau, p).astype(np.float64)
        ref = shrink_reference(v64, tau, p)
        a = np.abs(v64)
        value_root = tau * np.abs(ref) ** p + 0.5 * (np.abs(ref) - a) ** 2
        clear = np.abs(value_root - 0.5 * a * a) > dtype_tol(dtype) * (1.0 + 0.5 * a * a)  # not a near-tie
        err = np.abs(x - ref) / np.maximum(np.abs(ref), np.finfo(np.float64).tiny)
        err[ref == 0] = np.abs(x[ref == 0])
        worst = max(worst, float(np.max(err[clear])))
    return worst


@pytest.mark.parametrize("p", _p_params())
def test_shrink_matches_the_bracketing_reference(p, dtype):
    assert _worst_relative_error(p, dtype) <= dtype_tol(dtype)


def _relative_magnitude_excess(p: float, dtype) -> float:
    """max over v ≠ 0 and THRESHOLDS of (|shrink(v)| − |v|) / |v|: ≤ 0 in exact arithmetic for the prox of a
    symmetric increasing penalty, so at most a few ulps in floating point."""
    v = np.concatenate([np.linspace(-6.0, 6.0, 240), np.geomspace(1e-3, 1e3, 60)]).astype(dtype)
    return max(float(np.max((np.abs(shrink(v, tau, p)) - np.abs(v)) / np.abs(v))) for tau in THRESHOLDS)


@pytest.mark.parametrize("p", _p_params())
def test_shrink_never_increases_the_magnitude(p, dtype):
    assert _relative_magnitude_excess(p, dtype) <= dtype_tol(dtype, 4)


@pytest.mark.parametrize("p", _p_params())
def test_shrink_keeps_the_sign(p, dtype, rng):
    v = (3.0 * rng.standard_normal(200)).astype(dtype)
    x = shrink(v, 0.4, p)
    assert np.all(x * v >= 0)


@pytest.mark.filterwarnings("ignore:overflow:RuntimeWarning", "ignore:invalid value:RuntimeWarning")
@pytest.mark.parametrize("p", _p_params())
def test_shrink_of_huge_values_is_finite_and_close_to_the_input(p, dtype):
    v = np.array([-1.0, 1.0], dtype=dtype) * dtype(float(np.finfo(dtype).max) ** 0.3)  # v⁴ overflows, v² does not
    x = shrink(v, 0.1, p)
    assert np.all(np.isfinite(x))
    np.testing.assert_allclose(x, v, rtol=dtype_tol(dtype))


# --- small properties ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", _p_params())
def test_shrink_keeps_dtype_and_shape(p, dtype, rng):
    v = rng.standard_normal((3, 4, 5)).astype(dtype)
    x = shrink(v, 0.5, p)
    assert x.dtype == dtype
    assert x.shape == v.shape


@pytest.mark.parametrize("p", _p_params())
def test_shrink_leaves_its_input_unchanged(p, rng):
    v = rng.standard_normal(50)
    before = v.copy()
    shrink(v, 0.5, p)
    np.testing.assert_array_equal(v, before)


@pytest.mark.parametrize("p", _p_params())
def test_shrink_with_zero_threshold_is_the_identity(p, rng):
    v = rng.standard_normal(20)
    np.testing.assert_array_equal(shrink(v, 0.0, p), v)


@pytest.mark.parametrize("p", _p_params())
def test_shrink_zeroes_small_inputs(p):
    # below the jump |v| ≤ τ (p = 1) or the smaller threshold of p < 1, the prox is 0
    np.testing.assert_array_equal(shrink(np.array([-0.1, 0.0, 0.1]), 1.0, p), np.zeros(3))


@pytest.mark.parametrize("p", [0.0, -0.5, 1.5, 2.0, float("nan")])
def test_shrink_rejects_p_outside_the_unit_interval(p):
    with pytest.raises(ValueError, match="p must be"):
        shrink(np.ones(3), 0.5, p)


@pytest.mark.parametrize("p", [1.0, 0.5])
def test_shrink_rejects_a_negative_threshold(p):
    with pytest.raises(ValueError, match="threshold"):
        shrink(np.ones(3), -0.1, p)


def test_soft_threshold_values():
    np.testing.assert_array_equal(soft_threshold(np.array([-2.0, 0.5, 3.0]), 1.0), [-1.0, 0.0, 2.0])
    np.testing.assert_array_equal(soft_threshold(np.array([-1.0, 1.0, 0.0]), 1.0), [0.0, 0.0, 0.0])
    np.testing.assert_array_equal(soft_threshold(np.array([-2.5, 4.0]), 0.0), [-2.5, 4.0])


def test_soft_threshold_keeps_float32():
    assert soft_threshold(np.array([-2.0, 0.5], dtype=np.float32), 0.1).dtype == np.float32


def test_shrink_p1_equals_soft_threshold(rng):
    v = rng.standard_normal(30)
    np.testing.assert_array_equal(shrink(v, 0.3, 1.0), soft_threshold(v, 0.3))


# --- prox contracts --------------------------------------------------------------------------------------------


class _ShrinkFixtures:
    @pytest.fixture
    def in_shape(self):
        return (4, 5, 6)

    @pytest.fixture(params=[0.05, 0.7, 2.0])
    def step(self, request):
        return request.param

    @pytest.fixture
    def penalty(self, p):
        return LpPenalty(1.0, p)

    @pytest.fixture
    def prox_map(self, penalty):
        return penalty.prox

    @pytest.fixture
    def prox_value(self, penalty):
        return penalty


class TestSoftThresholdContract(_ShrinkFixtures, ConvexProxContract):
    @pytest.fixture
    def p(self):
        return 1.0

    @pytest.fixture
    def moreau_complement(self):
        # g = ‖·‖₁: g* is the indicator of the unit ∞-ball, so step·prox_{g*/step}(v/step) = clip(v, ±step)
        return lambda v, step: np.clip(v, -step, step)


class TestNonConvexShrinkContract(_ShrinkFixtures, ProxContract):
    # p < 1 has a discontinuous, expansive prox: only optimality, shape, dtype and purity are contracts
    @pytest.fixture(params=_p_params()[1:])
    def p(self, request):
        return request.param


class TestUnitBallProjectionContract(ProjectionContract):
    @pytest.fixture(params=["plane", "filter"])
    def norm(self, request):
        return request.param

    @pytest.fixture
    def in_shape(self):
        return (3, 2, 4, 4)

    @pytest.fixture(params=[0.5, 3.0])
    def step(self, request):
        return request.param

    @pytest.fixture
    def v(self, rng, dtype, in_shape):
        scale = np.array([0.05, 0.3, 2.0])[:, None, None, None]  # some filters inside the ball, some outside
        return (scale * rng.standard_normal(in_shape)).astype(dtype)

    @pytest.fixture
    def prox_map(self, norm):
        return lambda v, step: project_unit_ball(v, norm)

    @pytest.fixture
    def prox_value(self, norm, tol):
        axes = (-2, -1) if norm == "plane" else (-3, -2, -1)

        def indicator(f) -> float:
            norms = np.sqrt(np.sum(np.asarray(f, dtype=np.float64) ** 2, axis=axes))
            return 0.0 if np.all(norms <= 1.0 + tol) else np.inf

        return indicator

    @pytest.fixture
    def moreau_complement(self, norm):
        # g* is Σ ‖·‖₂ over planes (or filters); step·prox_{g*/step}(v/step) is the group soft threshold at 1
        axes = (-2, -1) if norm == "plane" else (-3, -2, -1)

        def group_soft_threshold(v, step):
            n = np.sqrt(np.sum(np.asarray(v, dtype=np.float64) ** 2, axis=axes, keepdims=True))
            return v * np.maximum(1.0 - 1.0 / np.maximum(n, 1e-300), 0.0)

        return group_soft_threshold


# --- filter projections ----------------------------------------------------------------------------------------


def _norms(filters: np.ndarray, norm: str) -> np.ndarray:
    axes = (-2, -1) if norm == "plane" else (-3, -2, -1)
    return np.sqrt(np.sum(filters.astype(np.float64) ** 2, axis=axes))


@pytest.mark.parametrize("norm", ["plane", "filter"])
def test_project_unit_ball_gives_norms_at_most_one(rng, dtype, norm):
    filters = (3.0 * rng.standard_normal((4, 3, 5, 5))).astype(dtype)
    out = project_unit_ball(filters, norm)
    assert out.dtype == dtype
    assert np.all(_norms(out, norm) <= 1.0 + dtype_tol(dtype))


@pytest.mark.parametrize("norm", ["plane", "filter"])
def test_project_unit_ball_is_idempotent(rng, dtype, norm):
    once = project_unit_ball((3.0 * rng.standard_normal((4, 3, 5, 5))).astype(dtype), norm)
    np.testing.assert_allclose(project_unit_ball(once, norm), once, rtol=dtype_tol(dtype), atol=dtype_tol(dtype))


@pytest.mark.parametrize("norm", ["plane", "filter"])
def test_project_unit_ball_leaves_feasible_filters_unchanged(rng, dtype, norm):
    filters = rng.standard_normal((4, 3, 5, 5))
    filters = (0.9 * filters / _norms(filters, "filter")[:, None, None, None]).astype(dtype)
    np.testing.assert_array_equal(project_unit_ball(filters, norm), filters)


def test_project_unit_ball_defaults_to_the_whole_filter(rng):
    filters = 3.0 * rng.standard_normal((4, 3, 5, 5))
    np.testing.assert_array_equal(project_unit_ball(filters), project_unit_ball(filters, "filter"))
    np.testing.assert_allclose(_norms(project_unit_ball(filters), "filter"), 1.0, rtol=1e-12)


def test_project_unit_ball_leaves_its_input_unchanged(rng):
    filters = 3.0 * rng.standard_normal((2, 2, 3, 3))
    before = filters.copy()
    project_unit_ball(filters, "plane")
    np.testing.assert_array_equal(filters, before)


@pytest.mark.parametrize("norm", ["plane", "filter"])
def test_normalise_unit_gives_norms_exactly_one(rng, dtype, norm):
    scale = np.array([1e-3, 0.5, 7.0])[:, None, None, None]
    filters = (scale * rng.standard_normal((3, 2, 4, 4))).astype(dtype)
    out = normalise_unit(filters, norm)
    assert out.dtype == dtype
    np.testing.assert_allclose(_norms(out, norm), 1.0, rtol=dtype_tol(dtype, 10))


@pytest.mark.parametrize("norm", ["plane", "filter"])
def test_normalise_unit_keeps_zero_planes_zero(rng, norm):
    filters = rng.standard_normal((3, 2, 4, 4))
    filters[1] = 0.0
    with np.errstate(all="raise"):
        out = normalise_unit(filters, norm)
    np.testing.assert_array_equal(out[1], 0.0)
    np.testing.assert_allclose(_norms(out[[0, 2]], norm), 1.0, rtol=1e-14)


def test_normalise_unit_keeps_direction(rng):
    filters = rng.standard_normal((3, 2, 4, 4))
    out = normalise_unit(filters, "plane")
    np.testing.assert_allclose(out * _norms(filters, "plane")[..., None, None], filters, rtol=1e-12)


@pytest.mark.parametrize("function", [project_unit_ball, normalise_unit])
def test_filter_projections_reject_an_unknown_norm(function):
    with pytest.raises(ValueError, match="norm"):
        function(np.ones((1, 1, 2, 2)), "column")


# --- the penalty -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("p", _p_params())
def test_lp_penalty_value(p, rng, dtype):
    x = rng.standard_normal((2, 3, 4, 4)).astype(dtype)
    expected = 0.3 * np.sum(np.abs(x.astype(np.float64)) ** p)
    value = LpPenalty(0.3, p)(x)
    assert isinstance(value, float)
    assert value == pytest.approx(expected, rel=dtype_tol(dtype))


def test_lp_penalty_of_zero_is_zero():
    assert LpPenalty(0.3, 0.5)(np.zeros((2, 2))) == 0.0


@pytest.mark.parametrize("p", _p_params())
def test_lp_penalty_prox_is_shrink_with_scaled_threshold(p, rng):
    v = rng.standard_normal(40)
    np.testing.assert_array_equal(LpPenalty(0.3, p).prox(v, 2.0), shrink(v, 0.6, p))


@pytest.mark.parametrize(("lam", "p"), [(0.0, 1.0), (-1.0, 1.0), (float("nan"), 1.0), (0.1, 0.0), (0.1, 1.5)])
def test_lp_penalty_rejects_bad_parameters(lam, p):
    with pytest.raises(ValueError, match="lam|p"):
        LpPenalty(lam, p)
