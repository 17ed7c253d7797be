"""Consensus ADMM filter update: it reaches the constrained minimiser that projected FISTA reaches, shards do not
change it, its state resumes, and learning with it never increases the objective."""

from __future__ import annotations

import numpy as np
import pydantic
import pytest

from solver import LayerSpec, LearnConfig, learn_layer
from solver.algorithms.consensus import update_filters_consensus
from solver.algorithms.filter_update import filter_lipschitz, update_filters_pooled
from solver.config import AdmmConfig, FilterUpdateConfig
from solver.models.learn import alternate, initial_filters
from solver.models.shard import LocalPool, Shard


def _config(n_iter=4, connectivity="full", update=None, n_channels=1):
    layer = LayerSpec(n_filters=4 if connectivity == "full" else 3, filter_size=3, lam=0.1, connectivity=connectivity)
    update = update or FilterUpdateConfig(method="consensus", max_iter=5)
    return LearnConfig(layers=[layer], inference=AdmmConfig(max_iter=5), filter_update=update, n_iter=n_iter)


def _coded_pool(images, config, splits, table=None):
    pool = LocalPool([Shard(part, config, table, "numpy") for part in np.split(images, splits)])
    f0 = initial_filters(
        config.layers[0].n_filters, images.shape[1], 3, seed=0, norm="filter", connectivity=table, dtype=images.dtype
    )
    pool.code(f0)
    return pool, f0


@pytest.mark.parametrize("connectivity", ["full", "singles-and-doubles"])
def test_consensus_reaches_the_minimiser_that_projected_fista_reaches(rng, connectivity):
    n_channels = 1 if connectivity == "full" else 2
    images = rng.standard_normal((4, n_channels, 10, 10))
    table = None if connectivity == "full" else np.array([[1, 0], [0, 1], [1, 1]], dtype=bool)
    config = _config(connectivity=connectivity)
    pool, f0 = _coded_pool(images, config, [1, 3], table)
    exact = FilterUpdateConfig(method="consensus", max_iter=1000, rho=4.0)
    consensus, data_c = update_filters_consensus(pool, f0, exact)
    lipschitz, _ = filter_lipschitz(pool, np.ones_like(f0), 50)
    fista, data_f = update_filters_pooled(pool, f0, FilterUpdateConfig(max_iter=1000), lipschitz)
    assert data_c == pytest.approx(data_f, rel=1e-9)
    np.testing.assert_allclose(consensus, fista, atol=1e-6)


def test_copies_of_the_training_set_do_not_change_the_default_filter_step(rng):
    # ρ weighs one image's maps against the pull to the consensus: were it to grow with the image count, each
    # filter step would move less the more images there are
    images = rng.standard_normal((2, 1, 10, 9))
    config = _config(update=FilterUpdateConfig(method="consensus", max_iter=3))
    steps = []
    for copies in (1, 4):
        pool, f0 = _coded_pool(np.concatenate([images] * copies), config, [])
        steps.append(update_filters_consensus(pool, f0, config.filter_update))
    assert not np.allclose(steps[0][0], f0)  # the step moved the filters (f0 is the same for both)
    np.testing.assert_allclose(steps[1][0], steps[0][0], rtol=1e-9, atol=1e-12)
    assert steps[1][1] == pytest.approx(4 * steps[0][1], rel=1e-9)


def test_one_shard_or_three_give_the_same_consensus_run(rng):
    images = rng.standard_normal((5, 1, 10, 9))
    config = _config()
    f0 = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    runs = [
        alternate(LocalPool([Shard(p, config, None, "numpy") for p in np.split(images, s)]), config, f0)
        for s in ([], [2, 3])
    ]
    np.testing.assert_allclose(runs[1][0], runs[0][0], rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-10)


def test_consensus_learning_never_increases_the_objective(rng):
    images = rng.standard_normal((4, 1, 12, 12))
    history = learn_layer(images, _config(n_iter=8), backend="numpy").history
    assert np.all(np.diff(history) <= 1e-10 * np.abs(history[:-1]))


def test_consensus_state_resumes_the_same_trajectory(rng):
    images = rng.standard_normal((4, 1, 10, 10))
    config = _config(n_iter=5)
    f0 = initial_filters(4, 1, 3, seed=0, norm="filter", dtype=images.dtype)
    full, history, _ = alternate(LocalPool([Shard(images, config, None, "numpy")]), config, f0)
    saved = {}
    first = Shard(images, config, None, "numpy")
    alternate(
        LocalPool([first]),
        config.model_copy(update={"n_iter": 2}),
        f0,
        on_iteration=lambda it, f, v: saved.update(it=it, filters=f, vector=v, state=first.state()),
    )
    second = Shard(images, config, None, "numpy")
    second.load_state(saved["state"])
    resumed, rest, _ = alternate(
        LocalPool([second]), config, saved["filters"], start_iteration=saved["it"], power_vector=saved["vector"]
    )
    assert saved["state"]["consensus"] is not None
    np.testing.assert_allclose(resumed, full, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(rest, history[2:], rtol=1e-12)


def test_consensus_keeps_float32(rng):
    images = rng.standard_normal((3, 1, 10, 10)).astype(np.float32)
    result = learn_layer(images, _config(n_iter=2), backend="numpy")
    assert result.filters.dtype == np.float32


def test_consensus_with_the_valid_boundary_is_refused():
    with pytest.raises(pydantic.ValidationError, match="consensus.*circular"):
        LearnConfig(
            layers=[LayerSpec(n_filters=2, filter_size=3, lam=0.1)],
            boundary="valid",
            filter_update=FilterUpdateConfig(method="consensus"),
        )


@pytest.mark.parametrize(("field", "value"), [("rho", 0.0), ("relax", 2.0), ("relax", 0.0)])
def test_bad_consensus_parameters_are_refused(field, value):
    with pytest.raises(pydantic.ValidationError, match=field):
        FilterUpdateConfig(method="consensus", **{field: value})


def test_a_bound_lets_a_filter_step_raise_the_data_term_up_to_it(rng):
    # from the filters that minimise the data term for the coded maps any other step raises it: without a bound
    # the step is refused, with a bound at or above its data term it is taken, with one below it is refused
    images = rng.standard_normal((4, 1, 10, 10))
    config = _config()
    step = FilterUpdateConfig(method="consensus", max_iter=1, rho=4.0)
    pool, f0 = _coded_pool(images, config, [1, 3])
    lipschitz, _ = filter_lipschitz(pool, np.ones_like(f0), 50)
    best, best_data = update_filters_pooled(pool, f0, FilterUpdateConfig(max_iter=1000), lipschitz)

    def update(bound):
        fresh, _ = _coded_pool(images, config, [1, 3])  # the same maps, a consensus state of its own
        return update_filters_consensus(fresh, best, step, bound)

    refused, data = update(None)
    assert refused is best and data == pytest.approx(best_data, rel=1e-12)
    taken, new = update(1e9)
    assert new > data and not np.array_equal(taken, best)
    at, at_data = update(new)  # a bound equal to the step's data term lets it through
    assert at is not best and at_data == new
    below, below_data = update((data + new) / 2)
    assert below is best and below_data == data


def test_a_step_within_its_bound_does_not_evaluate_the_old_filters(rng):
    # the data term at the old filters only decides when the bound does not: a pass over every shard's maps
    images = rng.standard_normal((4, 1, 10, 10))
    config = _config()
    pool, f0 = _coded_pool(images, config, [1, 3])
    evaluated = []
    value = pool.value

    def counting(filters):
        evaluated.append(filters)
        return value(filters)

    pool.value = counting
    step = FilterUpdateConfig(method="consensus", max_iter=2)
    taken, new = update_filters_consensus(pool, f0, step, data_bound=1e9)
    assert len(evaluated) == 1 and evaluated[0] is taken and taken is not f0
    evaluated.clear()
    update_filters_consensus(pool, f0, step, data_bound=None)
    assert len(evaluated) == 2 and any(f is f0 for f in evaluated)
