"""The shard actors' deadlines: a floor for small work, growing with the iterations, the images and their size;
a fixed deadline when one is given; parameters that make no deadline refused."""

from __future__ import annotations

import math

import pytest

from solver.config import LearnConfig
from workers.distributed.deadlines import CallDeadlines, Deadlines, shard_work


def _config(method: str = "admm", max_iter: int = 20, n_filters: int = 8, **extra) -> LearnConfig:
    inference = {"method": method, "max_iter": max_iter} if method != "zeiler" else {"method": method, **extra}
    return LearnConfig.model_validate(
        {"layers": [{"n_filters": n_filters, "filter_size": 5, "lam": 0.1}], "inference": inference}
    )


def _code(config: LearnConfig, n_images: int = 2, size: int = 64, deadlines: Deadlines | None = None) -> float:
    return CallDeadlines(deadlines or Deadlines(), [shard_work(config, n_images, 1, (size, size))]).of("code")


def test_small_work_gets_the_floor_and_little_more():
    floor = Deadlines().floor
    small = _code(_config(max_iter=20))
    assert floor < small < floor + 5


def test_the_coding_deadline_is_the_floor_plus_the_work_at_the_throughput_times_the_safety_factor():
    d = Deadlines(floor=7.0, throughput=1e8, overhead=0.01, safety=4.0)
    n, k, c, size, iters = 3, 8, 1, 100, 500
    grid = size * size  # circular boundary: the maps are the images' size
    unit = n * k * c * grid + n * (k + c) * grid * math.log2(grid)  # products and FFTs of one iteration
    expected = 7.0 + 4.0 * (iters * unit / 1e8 + iters * 0.01)
    assert _code(_config(max_iter=iters), n, size, d) == pytest.approx(expected, rel=1e-12)


def test_the_deadline_grows_with_the_iterations_the_images_their_size_and_the_filters():
    d = Deadlines(overhead=0.0)  # the work alone

    def work(max_iter=1000, n_images=2, size=64, n_filters=8) -> float:
        return _code(_config(max_iter=max_iter, n_filters=n_filters), n_images, size, d) - d.floor

    base = work()
    assert work(max_iter=10_000) == pytest.approx(10 * base, rel=1e-9)
    assert work(n_images=8) == pytest.approx(4 * base, rel=1e-9)
    assert work(size=256) > 16 * base  # the FFTs' log factor on top
    assert work(n_filters=64) > 4 * base


def test_a_huge_inference_gets_hours_and_a_small_one_a_minute():
    # 10,000 ADMM iterations on 16 images of 512² with 64 filters: about an hour at 1e8 operations/s
    huge = _code(_config(max_iter=10_000, n_filters=64), 16, 512)
    assert huge > 3600
    assert _code(_config(max_iter=10), 1, 16) < 61


def test_zeiler_s_iterations_and_its_cg_steps_count():
    exact = _code(_config("zeiler", n_beta=6, inner_iter=100))
    cg = _code(_config("zeiler", n_beta=6, inner_iter=100, z_solver="cg", cg_iter=4))
    assert cg - 60 == pytest.approx(5 * (exact - 60), rel=1e-9)


def test_the_largest_shard_sets_the_deadlines():
    config = _config(max_iter=1000)
    one = CallDeadlines(Deadlines(), [shard_work(config, 5, 1, (64, 64))])
    several = CallDeadlines(Deadlines(), [shard_work(config, n, 1, (64, 64)) for n in (1, 5, 2)])
    assert several.of("code") == one.of("code")


def test_store_calls_count_their_bytes_and_other_calls_a_few_iterations():
    config = _config(max_iter=1000)
    slow_store = Deadlines(io_rate=1.0)  # a byte per second: the bytes dominate
    calls = CallDeadlines(slow_store, [shard_work(config, 2, 1, (64, 64), itemsize=4)])
    images, maps = 2 * 64 * 64, 2 * 8 * 64 * 64
    assert calls.of("save_state") > 4 * 4 * (images + 4 * maps)
    assert calls.of("value_and_gradient") < calls.of("code")
    assert Deadlines().floor < calls.of("value_and_gradient")


def test_a_fixed_deadline_is_every_call_s_and_the_start_up_s():
    calls = CallDeadlines(Deadlines(), [shard_work(_config(max_iter=10_000), 16, 1, (512, 512))], fixed=12.5)
    assert {calls.of(c) for c in ("code", "setup", "normal")} == {12.5}
    assert calls.startup == 12.5
    assert CallDeadlines(Deadlines(startup=3.0), [shard_work(_config(), 1, 1, (8, 8))]).startup == 3.0


@pytest.mark.parametrize(
    ("field", "value"), [("floor", 0), ("startup", -1), ("throughput", math.inf), ("safety", math.nan)]
)
def test_parameters_that_make_no_deadline_are_refused(field, value):
    with pytest.raises(ValueError, match=f"Deadlines.{field} must be a positive number"):
        Deadlines(**{field: value})
