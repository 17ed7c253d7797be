"""The interleaved learning schedule: one ADMM step and one consensus filter step per round, every variable
warm-started. It never increases E, shards do not change it, a checkpoint resumes it, its Fourier warm start and
its fused consensus pass equal their plain references, and learn() picks it where it applies."""

from __future__ import annotations

import dataclasses

import numpy as np
import pydantic
import pytest

from solver import LayerSpec, LearnConfig, learn, learn_layer, objective, reconstruct
from solver.algorithms import consensus as consensus_module
from solver.algorithms.admm import Admm
from solver.algorithms.consensus import consensus_local_step
from solver.algorithms.filter_update import FilterProblem
from solver.algorithms.problem import CSCProblem
from solver.backend import PARALLEL_MIN_ENTRIES, threads_for
from solver.config import AdmmConfig, FilterUpdateConfig
from solver.models.learn import alternate, initial_filters
from solver.models.shard import LocalPool, Shard
from solver.models.shard_base import keep_better
from solver.operators import kernels
from solver.operators.convolution import ConvOperator, PlaneTransforms
from solver.operators.prox import LpPenalty


def _config(n_iter=3, rounds=4, n_filters=4, filter_size=3, connectivity="full", schedule="interleaved"):
    layer = LayerSpec(n_filters=n_filters, filter_size=filter_size, lam=0.1, connectivity=connectivity)
    return LearnConfig(
        layers=[layer],
        inference=AdmmConfig(max_iter=rounds),
        filter_update=FilterUpdateConfig(method="consensus", max_iter=1),
        n_iter=n_iter,
        schedule=schedule,
    )


@pytest.fixture(scope="module")
def images():
    """Sparse sums of random 3×3 filters plus noise (float64)."""
    rng = np.random.default_rng(11)
    maps = rng.standard_normal((5, 4, 14, 13)) * (rng.random((5, 4, 14, 13)) < 0.05)
    filters = initial_filters(4, 1, 3, seed=5, norm="filter", dtype=np.float64)
    return reconstruct(maps, filters) + 0.05 * rng.standard_normal((5, 1, 14, 13))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_interleaved_learning_never_increases_the_objective(images, dtype):
    result = learn_layer(images.astype(dtype), _config(n_iter=10), backend="numpy")
    h = np.array(result.history)
    rel = 1e-10 if dtype == np.float64 else 1e-6  # float32: the data terms of two computations meet at 1e-7
    assert np.all(np.diff(h) <= rel * np.abs(h[:-1]))
    assert h[-1] < 0.9 * h[0]
    E = objective(images.astype(np.float64), result.maps, result.filters, 0.1)
    assert E == pytest.approx(h[-1], rel=1e-10 if dtype == np.float64 else 1e-5)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_round_reads_its_statistics_off_the_fused_passes(images, dtype, monkeypatch):
    # the round's sparsity term and count, and E of its start (the last round's maps), come from the kernels'
    # sums: no pass of their own over the maps
    passes: list[int] = []
    count = kernels.abs_and_count
    monkeypatch.setattr(kernels, "abs_and_count", lambda x: passes.append(1) or count(x))
    shard = Shard(images.astype(dtype), _config(), None, "numpy")
    filters = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=dtype)
    for _ in range(3):
        stats = shard.code(filters)
        maps = shard.maps()
        assert stats.n_nonzero == np.count_nonzero(maps) > 0
        l1 = 0.1 * np.abs(maps.astype(np.float64)).sum()
        assert stats.penalty == pytest.approx(l1, rel=1e-12 if dtype == np.float64 else 1e-6)
    assert not passes


def test_a_round_after_a_change_of_lam_codes_at_the_new_lam(images):
    # the warm start's sparsity was computed at the old λ: the next start must not take it for the new one
    shard = Shard(images, _config(), None, "numpy")
    filters = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    for _ in range(2):
        shard.code(filters)
    before = shard.maps().copy()
    shard.set_lam(1.0)
    stats = shard.code(filters)
    maps = shard.maps()
    assert stats.penalty == pytest.approx(1.0 * np.abs(maps).sum(), rel=1e-12)
    assert not np.array_equal(maps, before)  # a start read at the old λ looked better than every step


def test_interleaved_learning_with_a_sparse_table_never_increases_the_objective():
    # two channels and a sparse connectivity: the numpy paths of ADMM and of the consensus step
    rng = np.random.default_rng(3)
    y = rng.standard_normal((3, 2, 12, 12))
    config = _config(n_iter=6, n_filters=3, connectivity="singles-and-doubles")
    history = np.array(learn_layer(y, config, backend="numpy").history)
    assert np.all(np.diff(history) <= 1e-10 * np.abs(history[:-1]))
    assert history[-1] < history[0]


def test_one_shard_or_three_give_the_same_interleaved_run(images):
    config = _config(n_iter=4)
    f0 = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    runs = [
        alternate(LocalPool([Shard(part, config, None, "numpy") for part in np.split(images, cut)]), config, f0)
        for cut in ([], [1, 3])
    ]
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-10)


def test_an_interleaved_run_resumes_from_its_checkpoint(images):
    config = _config(n_iter=5)
    f0 = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    full, history, _ = alternate(LocalPool([Shard(images, config, None, "numpy")]), config, f0)
    saved = {}
    first = Shard(images, config, None, "numpy")
    alternate(
        LocalPool([first]),
        config.model_copy(update={"n_iter": 2}),
        f0,
        on_iteration=lambda it, f, v: saved.update(it=it, filters=f, state=first.state()),
    )
    assert saved["state"]["warm"].maps_hat is None  # a checkpoint keeps the spatial duals only
    second = Shard(images, config, None, "numpy")
    second.load_state(saved["state"])
    resumed, rest, _ = alternate(
        LocalPool([second]), config, saved["filters"], start_iteration=saved["it"], start_objective=history[1]
    )
    # the resumed run transforms the duals again where the first kept û: the same up to round-off
    np.testing.assert_allclose(rest, history[2:], rtol=1e-9)
    np.testing.assert_allclose(resumed, full, rtol=1e-7, atol=1e-10)


def test_interleaved_rounds_reach_a_lower_objective_than_alternating_steps(images):
    # the same steps (4 ADMM and 4 consensus steps per outer iteration): the interleaved filter steps see fresh maps
    f0 = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    E = {}
    for schedule in ("interleaved", "alternate"):
        config = _config(n_iter=5, schedule=schedule)
        config = config.model_copy(update={"filter_update": FilterUpdateConfig(method="consensus", max_iter=4)})
        E[schedule] = alternate(LocalPool([Shard(images, config, None, "numpy")]), config, f0)[1][-1]
    assert E["interleaved"] < E["alternate"]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_a_fourier_warm_start_gives_the_state_of_a_spatial_one(rng, dtype):
    images = rng.standard_normal((3, 1, 12, 10)).astype(dtype)
    f1, f2 = (initial_filters(4, 1, 3, seed=s, norm="filter", dtype=dtype) for s in (1, 2))
    penalty = LpPenalty(0.1, 1.0)

    def solver(filters):
        op = ConvOperator(filters, images.shape[-2:])
        s = Admm(CSCProblem(images, op, penalty), AdmmConfig(max_iter=3))
        s.keep_maps_hat = True
        return s

    first = solver(f1)
    state = first.init()
    for _ in range(3):
        state = first.step(state)
    maps, spatial = state.maps.copy(), state.warm_start()
    spatial = type(spatial)(spatial.rho.copy(), spatial.dual.copy())
    fourier = first.fourier_warm_start(state)
    a, b = solver(f2).init(maps, warm=spatial), solver(f2).init(maps, warm=fourier)
    tol = 1e-10 if dtype == np.float64 else 2e-4
    scale = np.abs(a.solve_hat).max()
    np.testing.assert_allclose(b.solve_hat, a.solve_hat, atol=tol * scale)
    np.testing.assert_allclose(b.carry_hat, a.carry_hat, atol=tol * scale)
    np.testing.assert_allclose(b.objective, a.objective, rtol=10 * tol)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_fused_consensus_step_equals_the_numpy_one(rng, dtype, monkeypatch):
    y = rng.standard_normal((3, 1, 12, 10)).astype(dtype)
    z = (rng.standard_normal((3, 4, 12, 10)) * (rng.random((3, 4, 12, 10)) < 0.3)).astype(dtype)
    problem = FilterProblem(y, z, 3)
    runs = []
    for fused in (True, False):
        if not fused:
            monkeypatch.setattr(consensus_module, "_fused", lambda problem, g_hat: False)
        state, parts = None, []
        for it in range(3):  # a fresh state, then two warm ones
            g = initial_filters(4, 1, 3, seed=it, norm="filter", dtype=dtype)
            part, state = consensus_local_step(problem, g, state, 2.5, 1.8)
            parts.append(np.array(part))
        runs.append((parts, np.array(state.dual_hat), np.array(state.local_hat)))
    tol = 1e-12 if dtype == np.float64 else 1e-5
    for fused_part, numpy_part in zip(runs[0][0], runs[1][0], strict=True):
        np.testing.assert_allclose(fused_part, numpy_part, atol=tol * np.abs(numpy_part).max())
    for k in (1, 2):
        np.testing.assert_allclose(runs[0][k], runs[1][k], atol=tol * np.abs(runs[1][k]).max())


def test_plane_transforms_reuse_the_planes_of_equal_filters_only(rng):
    cache, calls = PlaneTransforms(size=2), []

    def compute(f):
        calls.append(1)
        return np.fft.rfft2(f, s=(8, 8))

    f1, f2, f3 = (rng.standard_normal((2, 1, 3, 3)) for _ in range(3))
    first = cache.get(f1, compute)
    assert cache.get(f1.copy(), compute) is first and len(calls) == 1
    cache.get(f2, compute)
    assert cache.get(f1, compute) is first and len(calls) == 2  # two entries kept
    cache.get(f3, compute)  # evicts f2, the least recently used
    cache.get(f2, compute)
    assert len(calls) == 4
    f1[0, 0, 0, 0] += 1.0  # the cache holds its own copy: changing the caller's array is a new key
    np.testing.assert_allclose(cache.get(f1, compute), np.fft.rfft2(f1, s=(8, 8)))


def test_small_arrays_run_on_one_thread():
    assert threads_for(PARALLEL_MIN_ENTRIES - 1, 2) == 1
    assert threads_for(PARALLEL_MIN_ENTRIES, 2) == 2


@pytest.mark.parametrize(
    ("kwargs", "schedule", "update"),
    [
        ({}, "interleaved", "consensus"),
        ({"filter_update": "fista"}, "alternate", "fista"),
        ({"filter_iter": 3}, "alternate", "fista"),
        ({"boundary": "valid"}, "alternate", "fista"),
        ({"method": "fista"}, "alternate", "fista"),
        ({"filter_update": FilterUpdateConfig(recentre=True)}, "alternate", "fista"),
        ({"schedule": "alternate"}, "alternate", "fista"),
        ({"schedule": "alternate", "filter_update": "consensus"}, "alternate", "consensus"),
    ],
)
def test_learn_picks_the_interleaved_schedule_where_it_applies(kwargs, schedule, update):
    y = np.random.default_rng(0).standard_normal((2, 1, 12, 12))
    result = learn(y, 2, 3, 0.1, n_iter=1, inner_iter=2, **kwargs)
    assert result.config.schedule == schedule
    assert result.config.filter_update.method == update


@pytest.mark.parametrize(
    ("update", "name"),
    [
        ({"inference": {"method": "fista"}}, "inference.method"),
        ({"filter_update": {"method": "fista"}}, "filter_update.method"),
        ({"boundary": "valid", "filter_update": {"method": "fista"}}, "filter_update.method"),
        ({"filter_update": {"method": "consensus", "recentre": True}}, "filter_update.recentre"),
    ],
)
def test_an_interleaved_config_names_what_it_lacks(update, name):
    data = {"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1}], "schedule": "interleaved"}
    data["filter_update"] = {"method": "consensus"}
    with pytest.raises(pydantic.ValidationError, match=f"schedule 'interleaved' needs {name}"):
        LearnConfig.model_validate({**data, **update})


def test_learn_refuses_an_unknown_schedule():
    with pytest.raises(ValueError, match="schedule must be one of"):
        learn(np.ones((1, 8, 8)), 2, 3, 0.1, schedule="sometimes")


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_the_fused_data_term_equals_the_residual_of_the_filter_problem(rng, dtype):
    y = rng.standard_normal((3, 1, 12, 10)).astype(dtype)
    z = (rng.standard_normal((3, 4, 12, 10)) * (rng.random((3, 4, 12, 10)) < 0.3)).astype(dtype)
    f = initial_filters(4, 1, 3, seed=1, norm="filter", dtype=dtype)
    problem = FilterProblem(y, z, 3)
    direct = 0.5 * float(np.sum((reconstruct(z.astype(np.float64), f.astype(np.float64)) - y) ** 2))
    rel = 1e-12 if dtype == np.float64 else 1e-5
    assert problem.value(f) == pytest.approx(direct, rel=rel)
    assert problem.value(f) == pytest.approx(float(problem.residual_of(f)[1].sum()), rel=rel)


def test_abs_and_count_per_item(rng):
    x = rng.standard_normal((3, 4, 5, 6)) * (rng.random((3, 4, 5, 6)) < 0.4)
    total, count = kernels.abs_and_count(x.astype(np.float32))
    np.testing.assert_allclose(total, np.abs(x.astype(np.float32)).reshape(3, -1).sum(axis=1), rtol=1e-6)
    np.testing.assert_array_equal(count, np.count_nonzero(x.reshape(3, -1), axis=1))


@pytest.mark.skipif(not kernels.available(), reason="the final step's pass is a numba kernel")
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("given_up", [False, True])
def test_a_final_step_gives_the_warm_start_and_the_objective_of_a_full_one(rng, dtype, given_up):
    # a final step skips the next solve: its warm start (ẑ, û) and E must be those of a step that made it
    images = rng.standard_normal((3, 1, 12, 10)).astype(dtype)
    op = ConvOperator(initial_filters(4, 1, 3, seed=1, norm="filter", dtype=dtype), images.shape[-2:])
    s = Admm(CSCProblem(images, op, LpPenalty(0.1, 1.0)), AdmmConfig(max_iter=5, rho_period=2))
    s.keep_maps_hat = True
    state = s.init()
    for _ in range(2):
        state = s.step(state)
    arrays = ("maps", "dual", "solve_hat", "carry_hat", "maps_hat")
    full = s.step(dataclasses.replace(state, **{f: getattr(state, f).copy() for f in arrays}))
    final = s.step(state, out=state if given_up else None, final=True)
    assert final.solve_hat is None and final.dual_hat is not None
    np.testing.assert_array_equal(final.maps, full.maps)
    tol = 1e-12 if dtype == np.float64 else 2e-5
    np.testing.assert_allclose(final.objective, full.objective, rtol=tol)
    a, b = s.fourier_warm_start(full), s.fourier_warm_start(final)
    np.testing.assert_array_equal(b.maps_hat, a.maps_hat)
    scale = np.abs(a.dual_hat).max()
    np.testing.assert_allclose(b.dual_hat, a.dual_hat, atol=tol * scale)
    np.testing.assert_array_equal(b.rho, a.rho)


def test_keep_better_in_place_writes_the_worse_images_start_into_the_new_maps(rng):
    maps, maps0 = rng.standard_normal((4, 3, 5, 5)), rng.standard_normal((4, 3, 5, 5))
    E, E0 = np.array([1.0, 3.0, 2.0, 5.0]), np.array([2.0, 2.0, 2.0, 4.0])  # images 1 and 3 got worse
    expected = np.where(np.array([0, 1, 0, 1], bool)[:, None, None, None], maps0, maps)
    np.testing.assert_array_equal(keep_better(maps.copy(), E, maps0, E0), expected)
    out = keep_better(maps, E, maps0, E0, in_place=True)
    assert out is maps
    np.testing.assert_array_equal(out, expected)
