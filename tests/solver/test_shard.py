"""Shards and pools: the same images on one shard or several give the same learning run; shard state resumes."""

from __future__ import annotations

import numpy as np
import pytest

from solver import LayerSpec, LearnConfig
from solver.config import AdmmConfig, FilterUpdateConfig, FistaConfig, ZeilerConfig
from solver.models.learn import alternate, initial_filters
from solver.models.shard import LocalPool, PackedMaps, Shard

INFERENCE = {"admm": AdmmConfig(max_iter=5), "fista": FistaConfig(max_iter=5), "zeiler": ZeilerConfig()}


def _config(method: str, boundary: str, n_iter: int = 4, update: str = "fista") -> LearnConfig:
    layer = LayerSpec(n_filters=3, filter_size=3, lam=0.1)
    return LearnConfig(
        layers=[layer],
        inference=INFERENCE[method],
        n_iter=n_iter,
        boundary=boundary,
        filter_update=FilterUpdateConfig(method=update, max_iter=4),
    )


def _images(rng) -> np.ndarray:
    return rng.standard_normal((5, 2, 10, 9))


def _run(images, config, splits):
    pool = LocalPool([Shard(part, config, None, "numpy") for part in np.split(images, splits)])
    f0 = initial_filters(3, images.shape[1], 3, seed=0, norm="filter", dtype=images.dtype)
    filters, history, _ = alternate(pool, config, f0)
    return filters, history, np.concatenate(pool.maps())


@pytest.mark.parametrize("update", ["fista", "cg"])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_one_shard_or_three_give_the_same_run(rng, method, boundary, update):
    images = _images(rng)
    config = _config(method, boundary, update=update)
    f1, h1, m1 = _run(images, config, [])
    f3, h3, m3 = _run(images, config, [2, 3])
    np.testing.assert_allclose(f3, f1, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(h3, h1, rtol=1e-10)
    np.testing.assert_allclose(m3, m1, rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_shard_state_resumes_the_same_trajectory(rng, method):
    images = _images(rng)
    config = _config(method, "circular", n_iter=5)
    f0 = initial_filters(3, 2, 3, seed=0, norm="filter", dtype=images.dtype)
    full, history, _ = alternate(LocalPool([Shard(images, config, None, "numpy")]), config, f0)

    saved = {}
    first = Shard(images, config, None, "numpy")
    short = config.model_copy(update={"n_iter": 2})
    alternate(
        LocalPool([first]),
        short,
        f0,
        on_iteration=lambda it, f, v: saved.update(it=it, filters=f, vector=v, state=first.state()),
    )
    second = Shard(images, config, None, "numpy")
    second.load_state(saved["state"])
    resumed, rest, _ = alternate(
        LocalPool([second]), config, saved["filters"], start_iteration=saved["it"], power_vector=saved["vector"]
    )
    np.testing.assert_allclose(resumed, full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rest, history[2:], rtol=1e-12)


def test_alternate_stops_when_asked(rng):
    images = _images(rng)
    config = _config("admm", "circular", n_iter=10)
    f0 = initial_filters(3, 2, 3, seed=0, norm="filter", dtype=images.dtype)
    calls = iter(range(100))
    _, history, _ = alternate(
        LocalPool([Shard(images, config, None, "numpy")]), config, f0, should_stop=lambda: next(calls) >= 3
    )
    assert len(history) == 3


def test_a_shard_without_maps_refuses_filter_queries(rng):
    shard = Shard(_images(rng), _config("admm", "circular"), None, "numpy")
    with pytest.raises(ValueError, match="code"):
        shard.value_and_gradient(np.zeros((3, 2, 3, 3)))


def test_an_empty_pool_is_refused():
    with pytest.raises(ValueError, match="shard"):
        LocalPool([])


def test_zeiler_coding_keeps_each_image_s_best_stage_not_the_last():
    """The β continuation of zeiler can end above an earlier stage and above E(0): on rescaled sparse maps (a
    layer-2 input) with p = 0.8 and 2 CG steps, E falls at the first stage and rises after. The shard keeps, per
    image, the best of the start and the stages: comparing only the last stage with the zero start would freeze
    the maps at zero and the filters with them (the zeiler2010 preset's layer 2 would never learn)."""
    from solver.algorithms import make_solver  # noqa: PLC0415
    from solver.algorithms.problem import CSCProblem  # noqa: PLC0415
    from solver.images.preprocess import FittedPreprocess  # noqa: PLC0415
    from solver.models.stack.learning import INTER_LAYER_PREPROCESS  # noqa: PLC0415
    from solver.operators.connectivity import connectivity_table  # noqa: PLC0415
    from solver.operators.convolution import ConvOperator  # noqa: PLC0415
    from solver.operators.prox import LpPenalty  # noqa: PLC0415

    rng = np.random.default_rng(0)
    sparse = rng.standard_normal((2, 9, 30, 30)) * (rng.random((2, 9, 30, 30)) < 0.03)
    images, _ = FittedPreprocess.fit(sparse, INTER_LAYER_PREPROCESS)
    table = connectivity_table("singles-and-doubles", 45, 9, seed=0)
    inference = ZeilerConfig(z_solver="cg", cg_iter=2)
    config = LearnConfig(
        layers=[LayerSpec(n_filters=45, filter_size=7, lam=0.1, p=0.8, connectivity="singles-and-doubles")],
        inference=inference,
        boundary="valid",
        dtype="float64",
    )
    filters = initial_filters(45, 9, 7, seed=0, norm="plane", connectivity=table, dtype=np.float64)
    solver = make_solver(
        CSCProblem(images, ConvOperator(filters, (30, 30), boundary="valid", connectivity=table), LpPenalty(0.1, 0.8)),
        inference,
    )
    state = solver.init(None)
    stages = [solver.per_item_objective(state).copy()]
    for _ in range(solver.max_iter):
        state = solver.step(state)
        stages.append(solver.per_item_objective(state).copy())
    stages = np.array(stages)  # (1 + stages, images)
    assert np.all(stages[-1] > stages[0]) and np.all(stages.min(axis=0) < stages[0])  # the case that matters
    shard = Shard(images, config, table, backend="numpy")
    shard.code(filters)
    kept = solver.per_item_objective(solver.init(shard.maps()))
    np.testing.assert_allclose(kept, stages.min(axis=0), rtol=1e-10)
    assert np.count_nonzero(shard.maps()) > 0


@pytest.mark.parametrize("boundary", ["circular", "valid"])
@pytest.mark.parametrize("n_channels", [1, 2])
@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_coding_in_groups_is_the_coding_of_the_whole_batch(
    rng, monkeypatch, group_threads, method, boundary, n_channels
):
    """Images are independent problems: coding them a few at a time (what bounds a shard's memory), one group
    after another or several at once on threads of their own, gives the maps, duals and penalties of one batch,
    bit for bit, over warm-started runs."""
    import solver.models.shard_base as shard_base  # noqa: PLC0415

    images = rng.standard_normal((5, n_channels, 10, 9))
    config = _config(method, boundary)
    f0 = initial_filters(3, n_channels, 3, seed=0, norm="filter", dtype=images.dtype)
    probe = Shard(images, config, None, "numpy")
    probe.code(f0)
    image_bytes = probe.maps()[0].nbytes
    runs, groups, threads = [], [], []
    for images_per_group, budget in ((5, 1), (1, 1), (2, 1), (1, 3), (2, 2)):
        monkeypatch.setattr(shard_base, "MIN_GROUP_BYTES", images_per_group * image_bytes)
        group_threads.set(budget)
        shard = Shard(images, config, None, "numpy")
        stats = [shard.code(f0), shard.code(0.9 * f0)]
        groups.append(len(shard_base.coding_groups(5, 5 * image_bytes)))
        threads.append(set(group_threads.names) - {"MainThread"})  # the caller codes too
        warm = shard.state()["warm"]
        duals = None if warm is None else (warm.dual, warm.aux_dual, warm.rho)
        runs.append((shard.maps(), duals, stats))
    assert groups == [1, 5, 3, 5, 3]
    assert threads == [set()] * 3 + [{"deconv-group"}] * 2
    for maps, duals, stats in runs[1:]:
        np.testing.assert_array_equal(maps, runs[0][0])
        assert stats == runs[0][2]
        if method != "admm":
            assert duals is None
            continue
        assert (duals[1] is None) == (boundary == "circular")  # u₀ of mask decoupling, with the valid boundary
        for got, want in zip(duals, runs[0][1], strict=True):
            if want is None:
                assert got is None
            else:
                np.testing.assert_array_equal(got, want)


def test_a_shard_codes_small_groups_as_many_at_once_as_its_threads(rng, monkeypatch, group_threads):
    """More threads than coding groups: the groups are split further (one image each at most), so that every
    thread has one; the maps are those of one group."""
    import solver.models.shard_base as shard_base  # noqa: PLC0415

    images = rng.standard_normal((12, 1, 10, 9))
    config = _config("admm", "circular")
    f0 = initial_filters(3, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    monkeypatch.setattr(shard_base, "MIN_GROUP_BYTES", 1)
    runs, pieces = [], []
    for budget in (1, 4, 12, 20):
        group_threads.set(budget)
        shard = Shard(images, config, None, "numpy")
        shard.code(f0)
        shard.code(0.9 * f0)
        runs.append(shard.maps())
        pieces.append(set(group_threads.pieces))
    assert pieces == [{6}, {6}, {12}, {12}]  # 12 images in CODING_GROUPS = 8 groups: 6 of 2 images
    for maps in runs[1:]:
        np.testing.assert_array_equal(maps, runs[0])


@pytest.mark.parametrize("update", ["fista", "cg", "consensus"])
@pytest.mark.parametrize("method", ["admm", "fista"])
def test_packing_the_maps_for_the_filter_step_changes_no_bit(rng, monkeypatch, method, update):
    """Sparse maps are held as their non-zeros while the filters are updated (memory): the run is the same."""
    import solver.models.shard as shard_module  # noqa: PLC0415

    images = rng.standard_normal((5, 1, 12, 11)).astype(np.float32)
    config = _config(method, "circular", update=update)
    runs = []
    for density in (0.0, 1.0):  # never packed (the maps are not all zero), always packed
        monkeypatch.setattr(shard_module, "PACK_DENSITY", density)
        shard = Shard(images, config, None, "numpy")
        f0 = initial_filters(3, 1, 3, seed=0, norm="filter", dtype=images.dtype)
        filters, history, _ = alternate(LocalPool([shard]), config, f0)
        runs.append((filters, history, shard.maps(), shard._packed))
    (f_dense, h_dense, m_dense, _), (f_packed, h_packed, m_packed, packed) = runs
    np.testing.assert_array_equal(f_packed, f_dense)
    assert h_packed == h_dense
    np.testing.assert_array_equal(m_packed, m_dense)
    assert packed is None  # maps() gave the array back


def test_packed_maps_give_back_every_image_exactly(rng):
    maps = rng.standard_normal((4, 3, 5, 6)).astype(np.float32)
    maps[np.abs(maps) < 1.5] = 0.0  # about 13 % non-zero
    packed = PackedMaps.pack(maps)
    assert packed.index.dtype == np.int32 and packed.values.size == np.count_nonzero(maps)
    np.testing.assert_array_equal(packed.dense(), maps)
    np.testing.assert_array_equal(packed.rows(1, 3), maps[1:3])
    assert PackedMaps.pack(np.ones((2, 3, 5, 6), np.float32)) is None  # dense maps stay as they are
