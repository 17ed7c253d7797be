"""Online dictionary learning: the sufficient statistics against explicit loops, the surrogate against the data
term, the filter step, and learn_online end to end."""

from __future__ import annotations

import numpy as np
import pytest

from solver import LearnConfig, OnlineConfig, OnlineLearner, encode_with, learn_online
from solver.algorithms.base import run
from solver.algorithms.filter_update import (
    SurrogateFilterProblem,
    filter_lipschitz,
    update_filters_pooled,
    update_filters_surrogate,
)
from solver.algorithms.fista import Fista
from solver.config import FilterUpdateConfig, FistaConfig
from solver.models.online import rebatch
from solver.models.shard import LocalPool, Shard
from solver.operators import surrogate
from solver.operators.convolution import map_shape
from solver.operators.surrogate import (
    BatchCorrelations,
    FilterStatistics,
    SurrogateOperator,
    correlate_statistics,
    shared_channels,
)
from tests.reference import convolve_loops

TABLE = np.array([[True, False], [False, True], [True, True]])  # K = 3 maps over C = 2 channels
N, K, C, H, S = 2, 3, 2, 6, 3


def _ztz_loops(maps: np.ndarray, s: int, boundary: str) -> np.ndarray:
    """Σ_n Σ_x z[n, k, x] z[n, k', x + δ], x + δ wrapping (circular) or inside the grid only (valid)."""
    n_img, k_maps, Hm, Wm = maps.shape
    out = np.zeros((k_maps, k_maps, 2 * s - 1, 2 * s - 1))
    for k in range(k_maps):
        for j in range(k_maps):
            for d0 in range(-(s - 1), s):
                for d1 in range(-(s - 1), s):
                    total = 0.0
                    for n in range(n_img):
                        for x0 in range(Hm):
                            for x1 in range(Wm):
                                a, b = x0 + d0, x1 + d1
                                if boundary == "circular":
                                    a, b = a % Hm, b % Wm
                                elif not (0 <= a < Hm and 0 <= b < Wm):
                                    continue
                                total += maps[n, k, x0, x1] * maps[n, j, a, b]
                    out[k, j, d0 + s - 1, d1 + s - 1] = total
    return out


def _zty_loops(maps: np.ndarray, images: np.ndarray, s: int, boundary: str) -> np.ndarray:
    """Σ_n Σ_x z[n, k, x − u] y[n, c, x] with x on the map grid (the image at offset s − 1 for valid)."""
    n_img, k_maps, Hm, Wm = maps.shape
    _, n_ch, Hi, Wi = images.shape
    o = s - 1 if boundary == "valid" else 0
    out = np.zeros((k_maps, n_ch, s, s))
    for k in range(k_maps):
        for c in range(n_ch):
            for u0 in range(s):
                for u1 in range(s):
                    total = 0.0
                    for n in range(n_img):
                        for i in range(Hi):
                            for j in range(Wi):
                                total += maps[n, k, (i + o - u0) % Hm, (j + o - u1) % Wm] * images[n, c, i, j]
                    out[k, c, u0, u1] = total
    return out


def _batch(rng: np.random.Generator, boundary: str, *, zero_ring: bool = False):
    Hm, Wm = map_shape((H, H), S, boundary)
    maps = rng.standard_normal((N, K, Hm, Wm))
    if zero_ring:  # maps zero within s − 1 of the grid's border: the valid surrogate is then exact
        inner = np.zeros_like(maps)
        inner[..., S - 1 : Hm - S + 1, S - 1 : Wm - S + 1] = 1
        maps = maps * inner
    return maps, rng.standard_normal((N, C, H, H))


@pytest.mark.parametrize("boundary", ["circular", "valid"])
@pytest.mark.parametrize("table", [None, TABLE], ids=["full", "table"])
def test_statistics_match_loops(boundary, table):
    rng = np.random.default_rng(0)
    maps, images = _batch(rng, boundary)
    stats = correlate_statistics(maps, images, S, boundary=boundary, connectivity=table)
    ztz = _ztz_loops(maps, S, boundary) * shared_channels(table, K)[:, :, None, None]
    zty = _zty_loops(maps, images, S, boundary)
    if table is not None:
        zty = zty * table[:, :, None, None]
    tol = 1e3 * np.finfo(np.float64).eps * np.abs(ztz).max()
    np.testing.assert_allclose(stats.ztz, ztz, rtol=0, atol=tol)
    np.testing.assert_allclose(stats.zty, zty, rtol=0, atol=tol)
    assert stats.yty == pytest.approx(float(np.sum(images**2)), rel=1e-12)
    assert stats.n_images == N


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_statistics_match_loops_on_grids_of_odd_width(boundary):
    # the lags are read off the half spectrum: an odd width has no Nyquist column, an even one (above) has
    rng = np.random.default_rng(5)
    side = 7
    maps = rng.standard_normal((N, K, *map_shape((side, side), S, boundary)))
    images = rng.standard_normal((N, C, side, side))
    stats = correlate_statistics(maps, images, S, boundary=boundary)
    ztz, zty = _ztz_loops(maps, S, boundary), _zty_loops(maps, images, S, boundary)
    np.testing.assert_allclose(stats.ztz, ztz, rtol=0, atol=1e3 * np.finfo(np.float64).eps * np.abs(ztz).max())
    np.testing.assert_allclose(stats.zty, zty, rtol=0, atol=1e3 * np.finfo(np.float64).eps * np.abs(zty).max())


def test_statistics_computed_a_row_of_maps_at_a_time_match_loops(monkeypatch):
    monkeypatch.setattr(surrogate, "_CHUNK_ELEMENTS", 1)  # one map per product: the chunked path
    maps, images = _batch(np.random.default_rng(11), "valid")
    stats = correlate_statistics(maps, images, S, boundary="valid", connectivity=TABLE)
    ztz = _ztz_loops(maps, S, "valid") * shared_channels(TABLE, K)[:, :, None, None]
    np.testing.assert_allclose(stats.ztz, ztz, rtol=0, atol=1e3 * np.finfo(np.float64).eps * np.abs(ztz).max())


def test_statistics_zero_for_pairs_without_a_shared_channel():
    table = np.array([[True, False], [False, True], [False, True]])
    maps, images = _batch(np.random.default_rng(1), "circular")
    stats = correlate_statistics(maps, images, S, connectivity=table)
    assert np.all(stats.ztz[0, 1] == 0) and np.all(stats.ztz[2, 0] == 0)
    assert np.abs(stats.ztz[1, 2]).max() > 0
    assert np.all(stats.zty[0, 1] == 0) and np.abs(stats.zty[0, 0]).max() > 0


@pytest.mark.parametrize(("boundary", "zero_ring"), [("circular", False), ("valid", True)])
@pytest.mark.parametrize("table", [None, TABLE], ids=["full", "table"])
def test_surrogate_equals_the_data_term(boundary, zero_ring, table):
    rng = np.random.default_rng(2)
    maps, images = _batch(rng, boundary, zero_ring=zero_ring)
    filters = rng.standard_normal((K, C, S, S))
    if table is not None:
        filters = filters * table[:, :, None, None]
    resid = convolve_loops(maps, filters, (H, H), boundary, table) - images
    op = SurrogateOperator(correlate_statistics(maps, images, S, boundary=boundary, connectivity=table), table)
    data = 0.5 * float(np.sum(resid**2))
    assert op.value(filters) == pytest.approx(data, rel=1e-10)
    corr = BatchCorrelations(maps, images, S, boundary=boundary, connectivity=table)
    assert corr.data_term(filters) == pytest.approx(data, rel=1e-10)


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_batch_data_term_exact_for_any_maps(boundary):
    rng = np.random.default_rng(3)
    maps, images = _batch(rng, boundary)
    filters = rng.standard_normal((K, C, S, S))
    resid = convolve_loops(maps, filters, (H, H), boundary) - images
    corr = BatchCorrelations(maps, images, S, boundary=boundary)
    assert corr.data_term(filters) == pytest.approx(0.5 * float(np.sum(resid**2)), rel=1e-10)


def test_valid_surrogate_bounds_the_data_term_from_above():
    """With maps reaching the border, the valid surrogate also asks the reconstruction to vanish outside the
    image: it is the data term plus that ring's energy, so never below the data term."""
    rng = np.random.default_rng(4)
    maps, images = _batch(rng, "valid")
    filters = rng.standard_normal((K, C, S, S))
    op = SurrogateOperator(correlate_statistics(maps, images, S, boundary="valid"))
    data = BatchCorrelations(maps, images, S, boundary="valid").data_term(filters)
    assert op.value(filters) > data * (1 + 1e-6)


def test_surrogate_operator_is_symmetric_positive_semidefinite():
    rng = np.random.default_rng(5)
    maps, images = _batch(rng, "valid")
    op = SurrogateOperator(correlate_statistics(maps, images, S, boundary="valid", connectivity=TABLE), TABLE)
    f, h = rng.standard_normal((2, K, C, S, S)) * TABLE[:, :, None, None]
    lhs, rhs = float(np.sum(op.apply(f) * h)), float(np.sum(f * op.apply(h)))
    assert lhs == pytest.approx(rhs, rel=1e-10)
    assert float(np.sum(f * op.apply(f))) >= 0


def test_surrogate_gradient_matches_finite_differences():
    rng = np.random.default_rng(6)
    maps, images = _batch(rng, "circular")
    op = SurrogateOperator(correlate_statistics(maps, images, S))
    f, d = rng.standard_normal((2, K, C, S, S))
    eps = 1e-6
    numeric = (op.value(f + eps * d) - op.value(f - eps * d)) / (2 * eps)
    assert float(np.sum(op.value_and_gradient(f)[1] * d)) == pytest.approx(numeric, rel=1e-6)


def test_lipschitz_bounds_the_operator_norm():
    rng = np.random.default_rng(7)
    maps, images = _batch(rng, "circular")
    op = SurrogateOperator(correlate_statistics(maps, images, S))
    dense = np.stack([op.apply(e.reshape(K, C, S, S)) for e in np.eye(K * C * S * S)]).reshape(K * C * S * S, -1)
    L, _ = op.lipschitz(n_iter=200)
    exact = float(np.linalg.eigvalsh(dense).max())
    assert exact <= L <= 1.06 * exact


def test_forget_and_add_weights_the_running_sums():
    rng = np.random.default_rng(8)
    a = correlate_statistics(*_batch(rng, "circular"), S)
    b = correlate_statistics(*_batch(rng, "circular"), S)
    out = a.forget_and_add(b, 0.25)
    np.testing.assert_allclose(out.ztz, 0.25 * a.ztz + b.ztz)
    np.testing.assert_allclose(out.zty, 0.25 * a.zty + b.zty)
    assert out.yty == pytest.approx(0.25 * a.yty + b.yty)
    assert out.n_images == pytest.approx(0.25 * N + N)


@pytest.mark.parametrize("beta", [-0.1, 1.5])
def test_forget_and_add_refuses_a_factor_outside_the_unit_interval(beta):
    a = FilterStatistics.zeros(K, C, S)
    with pytest.raises(ValueError, match="forgetting factor"):
        a.forget_and_add(a, beta)


def test_forget_and_add_refuses_other_shapes():
    with pytest.raises(ValueError, match="do not match"):
        FilterStatistics.zeros(K, C, S).forget_and_add(FilterStatistics.zeros(K, C, S + 1), 0.5)


def test_forgetting_schedule():
    assert OnlineConfig(forget=2.0).beta(1) == 0.0
    assert OnlineConfig(forget=2.0).beta(4) == pytest.approx(0.75**2)
    assert OnlineConfig(forget=0.0).beta(7) == 1.0
    assert OnlineConfig(forget_factor=0.3).beta(9) == 0.3


def test_filter_step_decreases_the_surrogate_monotonically():
    rng = np.random.default_rng(9)
    maps, images = _batch(rng, "circular")
    op = SurrogateOperator(correlate_statistics(maps, 5 * images, S, connectivity=TABLE), TABLE)
    L, _ = op.lipschitz()
    problem = SurrogateFilterProblem(op, "filter", L)
    solver = Fista(problem, FistaConfig(max_iter=60, tol=0.0))
    start = problem.prox(rng.standard_normal((K, C, S, S)), 1.0)
    result = run(solver, solver.init(start), stop_early=False)
    history = np.array([op.value(start)] + result.history)
    assert np.all(np.diff(history) <= 1e-12 * np.abs(history[:-1]))
    assert history[-1] < history[0]
    norms = np.sqrt(np.sum(result.maps**2, axis=(1, 2, 3)))
    assert np.all(norms <= 1 + 1e-12)
    assert np.all(result.maps[~TABLE] == 0)


def _identity_case(boundary: str, table: np.ndarray | None, norm: str):
    """Maps, images whose least-squares filters lie outside the unit ball (so the projection matters)."""
    rng = np.random.default_rng(10)
    maps, _ = _batch(rng, boundary, zero_ring=boundary == "valid")
    truth = 3 * rng.standard_normal((K, C, S, S))
    images = convolve_loops(maps, truth, (H, H), boundary, table) + 0.1 * rng.standard_normal((N, C, H, H))
    config = LearnConfig.model_validate(
        {
            "layers": [
                {
                    "n_filters": K,
                    "filter_size": S,
                    "lam": 0.1,
                    "connectivity": "full" if table is None else table.tolist(),
                }
            ],
            "boundary": boundary,
            "filter_update": {"norm": norm},
        }
    )
    return maps, images, config


@pytest.mark.parametrize(
    ("boundary", "table", "norm"),
    [("circular", None, "filter"), ("circular", TABLE, "plane"), ("valid", TABLE, "filter")],
)
def test_one_batch_without_forgetting_gives_the_batch_filter_update(boundary, table, norm):
    """One batch holding every image, β = 0 and a converged filter step: the batch learner's filter update on
    the same maps."""
    maps, images, config = _identity_case(boundary, table, norm)
    shard = Shard(images, config, table, "numpy")
    shard.load_state({"maps": maps})
    pool = LocalPool([shard])
    f0 = np.zeros((K, C, S, S))
    L_batch, _ = filter_lipschitz(pool, np.ones_like(f0), 100)
    batch_update = FilterUpdateConfig(max_iter=3000, norm=norm)
    expected, expected_data = update_filters_pooled(pool, f0, batch_update, L_batch)

    stats = FilterStatistics.zeros(K, C, S).forget_and_add(
        correlate_statistics(maps, images, S, boundary=boundary, connectivity=table), OnlineConfig().beta(1)
    )
    op = SurrogateOperator(stats, table)
    L, _ = op.lipschitz(n_iter=100)
    got, value = update_filters_surrogate(op, f0, 3000, norm, L)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-6)
    assert value == pytest.approx(expected_data, rel=1e-9)


# learn_online ----------------------------------------------------------------------------------------------------


def _images(n: int = 6, size: int = 12, seed: int = 0, dtype=np.float32) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.standard_normal((n, 1, size, size)).astype(dtype)


def _learn(images, **kwargs):
    kwargs = {"batch_size": 2, "method": "fista", "backend": "numpy", **kwargs}
    return learn_online(images, 4, 3, 0.1, **kwargs)


def test_learn_online_is_deterministic():
    a, b = _learn(_images()), _learn(_images())
    np.testing.assert_array_equal(a.filters, b.filters)
    assert a.history == b.history


def test_learn_online_rebatches_any_iterable_of_batches():
    images = _images()
    chunks = [images[:1], images[1:4], images[4:5, 0], images[5, 0]]  # (n, C, H, W), (n, H, W) and (H, W)
    a, b = _learn(images), _learn(chunks)
    np.testing.assert_array_equal(a.filters, b.filters)
    assert len(a.history) == 3


def test_learn_online_history_and_held_out_per_batch():
    images = _images(7)
    result = _learn(images[:5], n_epochs=4, held_out=images[5:], held_out_every=2)
    assert len(result.history) == 12  # 3 batches per pass (2, 2, 1)
    assert len(result.held_out_history) == 6
    assert result.held_out_history[-1] < result.held_out_history[0]
    assert result.config.n_iter == 12 and result.online.n_epochs == 4
    assert result.maps.shape == (1, 4, 12, 12)  # the last batch's


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_learn_online_keeps_the_dtype_and_a_feasible_dictionary(dtype):
    result = _learn(_images(dtype=dtype))
    assert result.filters.dtype == dtype
    assert np.all(np.sqrt(np.sum(result.filters.astype(np.float64) ** 2, axis=(1, 2, 3))) <= 1 + 1e-6)


def test_learn_online_with_a_connectivity_table_and_the_valid_boundary():
    rng = np.random.default_rng(1)
    images = rng.standard_normal((4, 2, 10, 10)).astype(np.float32)
    result = learn_online(images, 3, 3, 0.1, batch_size=2, connectivity=TABLE, boundary="valid", backend="numpy")
    assert result.filters.shape == (3, 2, 3, 3)
    assert np.all(result.filters[~TABLE] == 0)
    assert result.maps.shape == (2, 3, 12, 12)


def test_learn_online_result_encodes_new_images():
    images = _images()
    result = _learn(images)
    assert encode_with(result, images[:1], max_iter=5).maps.shape == (1, 4, 12, 12)
    assert result.model.n_layers == 1


def test_one_batch_learn_online_equals_code_then_batch_filter_update():
    """The whole pipeline on one batch: learn_online's filters are the batch filter update of its own coding."""
    images = _images(4, dtype=np.float64)
    result = _learn(images, batch_size=4, filter_iter=3000)
    config = LearnConfig.model_validate(
        {"layers": [{"n_filters": 4, "filter_size": 3, "lam": 0.1}], "inference": {"method": "fista", "max_iter": 10}}
    )
    learner = OnlineLearner(config, OnlineConfig(), 1, backend="numpy", dtype=np.float64)
    shard, _ = learner.code_batch(images)
    pool = LocalPool([shard])
    L, _ = filter_lipschitz(pool, np.ones_like(learner.filters), 100)
    expected, _ = update_filters_pooled(pool, learner.filters, FilterUpdateConfig(max_iter=3000), L)
    np.testing.assert_allclose(result.filters, expected, rtol=0, atol=1e-6)


def test_forgetting_matters():
    images = _images(8)
    a, b = _learn(images, forget=0.0), _learn(images, forget_factor=0.1)
    assert np.abs(a.filters - b.filters).max() > 1e-3


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"batch_size": 0}, "batch_size"),
        ({"forget": -1.0}, "forget"),
        ({"forget_factor": 1.5}, "forget_factor"),
        ({"n_epochs": 0}, "n_epochs"),
        ({"filter_iter": 0}, "filter_iter"),
        ({"boundary": "same"}, "boundary"),
        ({"init_filters": np.zeros((2, 1, 3, 3))}, "init_filters"),
    ],
)
def test_learn_online_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        _learn(_images(), **kwargs)


def test_learn_online_refuses_a_negative_lambda():
    with pytest.raises(ValueError, match="lam"):
        learn_online(_images(), 4, 3, -0.1, backend="numpy")


def test_learn_online_refuses_an_empty_stream():
    with pytest.raises(ValueError, match="no images"):
        learn_online([], 4, 3, 0.1, backend="numpy")


@pytest.mark.parametrize("batch_size", [1, 2, 4])
def test_learn_online_refuses_batches_of_other_shapes_wherever_the_batches_are_cut(batch_size):
    # the rule holds for the stream, not for the images that happen to fall in one batch
    stream = [_images(2), _images(2, size=10)]
    with pytest.raises(ValueError, match="the images of a stream must share C, H and W"):
        _learn(stream, batch_size=batch_size)


def test_learn_online_refuses_a_filter_larger_than_the_images():
    with pytest.raises(ValueError, match="filter_size"):
        learn_online(_images(2, size=4), 2, 5, 0.1, backend="numpy")


def test_several_epochs_of_a_one_shot_iterator_are_refused():
    with pytest.raises(ValueError, match="re-iterable"):
        list(rebatch(iter([_images(2)]), 2, n_epochs=2))


def test_learner_refuses_a_batch_with_other_channels():
    config = LearnConfig.model_validate({"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1}]})
    learner = OnlineLearner(config, OnlineConfig(), 1, backend="numpy")
    with pytest.raises(ValueError, match="channels"):
        learner.update_from_batch(np.zeros((1, 2, 8, 8), np.float32))


def test_learner_refuses_a_stack_config():
    config = LearnConfig.model_validate(
        {"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1}, {"n_filters": 2, "filter_size": 3, "lam": 0.1}]}
    )
    with pytest.raises(ValueError, match="one layer"):
        OnlineLearner(config, OnlineConfig(), 1)
