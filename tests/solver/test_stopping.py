"""A run told to stop ends within a fraction of a second, in every long inner loop (inference, filter update,
power and conjugate-gradient iterations); outside a stop block nothing changes."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from solver import encode
from solver.algorithms.consensus import update_filters_consensus
from solver.algorithms.filter_update import filter_lipschitz, update_filters_pooled
from solver.config import FilterUpdateConfig, LearnConfig
from solver.models.shard import LocalPool, Shard
from solver.operators.linalg import conjugate_gradient
from solver.stopping import Stopped, check_stop, stop_on

# far more iterations than any of these runs could do in the few seconds a test may take
ENDLESS = 10_000_000


def _after(seconds: float):
    """A should_stop that turns true `seconds` after its first call; records how often it was asked."""
    state = {"start": None, "asked": 0}

    def should_stop() -> bool:
        state["asked"] += 1
        if state["start"] is None:
            state["start"] = time.monotonic()
        return time.monotonic() - state["start"] >= seconds

    return should_stop, state


def _stops_within(run, seconds: float = 0.2, bound: float = 3.0) -> float:
    should_stop, _ = _after(seconds)
    started = time.monotonic()
    with pytest.raises(Stopped), stop_on(should_stop, every=0.01):
        run()
    took = time.monotonic() - started
    assert seconds <= took < bound, took
    return took


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((2, 1, 32, 32)).astype(np.float32)


@pytest.fixture(scope="module")
def filters():
    f = np.random.default_rng(1).standard_normal((4, 1, 5, 5)).astype(np.float32)
    return f / np.linalg.norm(f.reshape(4, -1), axis=1)[:, None, None, None]


@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_an_endless_inference_stops_within_a_fraction_of_a_second(images, filters, method):
    # zeiler's count is spread over its β stages: max_iter is the total
    _stops_within(lambda: encode(images, filters, 0.1, method=method, max_iter=ENDLESS, tol=0.0))


def _pool(images, filters, method="admm", filter_method="fista"):
    config = LearnConfig.model_validate(
        {
            "layers": [{"n_filters": filters.shape[0], "filter_size": filters.shape[-1], "lam": 0.1}],
            "inference": {"method": method, "max_iter": 5},
            "filter_update": {"method": filter_method, "max_iter": 5},
        }
    )
    pool = LocalPool([Shard(images, config, None, "numpy")])
    pool.code(filters)
    return pool


@pytest.mark.parametrize(
    "method",
    ["admm", "zeiler"],
)
def test_a_shard_s_coding_step_stops(images, filters, method):
    config = LearnConfig.model_validate(
        {
            "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.1}],
            # the config's cap on iterations is not what bounds the time here: the stop is
            "inference": {"method": method, "max_iter": 10_000} if method == "admm" else {"method": method},
        }
    )
    if method == "zeiler":
        config = config.model_copy(update={"inference": config.inference.model_copy(update={"inner_iter": ENDLESS})})
    shard = Shard(images, config, None, "numpy")
    _stops_within(lambda: shard.code(filters))


# (the CG filter update converges in a few hundred steps on filters this small: its loop is tested below)
@pytest.mark.parametrize("filter_method", ["fista", "consensus"])
def test_the_filter_update_loops_stop(images, filters, filter_method):
    pool = _pool(images, filters)
    config = FilterUpdateConfig(method=filter_method, max_iter=5).model_copy(update={"max_iter": ENDLESS})
    if filter_method == "consensus":
        _stops_within(lambda: update_filters_consensus(pool, filters, config))
    else:
        _stops_within(lambda: update_filters_pooled(pool, filters, config, 10.0))


def test_the_power_iteration_stops(images, filters):
    pool = _pool(images, filters)
    _stops_within(lambda: filter_lipschitz(pool, np.ones_like(filters), ENDLESS))


def test_conjugate_gradient_stops():
    a = np.diag(np.linspace(1.0, 1e6, 50))  # ill-conditioned: tol=0 never converges in a few steps
    b = np.ones((1, 50))
    _stops_within(lambda: conjugate_gradient(lambda v: v @ a, b, np.zeros_like(b), ENDLESS, tol=0.0))


def test_the_stop_is_asked_at_most_every_interval(images, filters):
    should_stop, state = _after(0.3)
    with pytest.raises(Stopped), stop_on(should_stop, every=0.1):
        encode(images, filters, 0.1, method="fista", max_iter=ENDLESS, tol=0.0)
    # 0.3 s at one look per 0.1 s: four looks (the first one at once), give or take one at the edge
    assert 3 <= state["asked"] <= 5, state


def test_nothing_changes_outside_a_stop_block_or_with_none(images, filters):
    check_stop()  # no block: a no-op
    plain = encode(images, filters, 0.1, method="admm", max_iter=30, tol=0.0)
    with stop_on(None):
        unwatched = encode(images, filters, 0.1, method="admm", max_iter=30, tol=0.0)
    with stop_on(lambda: False, every=0.0):
        watched = encode(images, filters, 0.1, method="admm", max_iter=30, tol=0.0)
    np.testing.assert_array_equal(unwatched.maps, plain.maps)
    np.testing.assert_array_equal(watched.maps, plain.maps)


def test_blocks_nest_and_the_outer_stop_still_counts():
    with stop_on(lambda: True):
        with pytest.raises(Stopped), stop_on(lambda: False, every=0.0):
            check_stop()
        with pytest.raises(Stopped):  # the outer block is back in force after the inner one
            check_stop()
    check_stop()


def test_the_stop_belongs_to_the_thread_that_set_it():
    seen = []
    with stop_on(lambda: True, every=0.0):
        thread = threading.Thread(target=lambda: seen.append(check_stop()))
        thread.start()
        thread.join()
    assert seen == [None]  # the other thread ran its loop unwatched


def test_a_negative_interval_is_refused():
    with pytest.raises(ValueError, match="every"), stop_on(lambda: False, every=-1):
        pass
