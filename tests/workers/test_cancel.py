"""A stuck cluster fails the attempt within its deadlines, and an interrupt stops the shard actors' calls at once.

* a call that hangs (an actor whose ``code`` never returns, whatever it is told) fails the run with an error that
  names the call and its deadline, within seconds of that deadline, through the usual failure count;
* an actor that never starts (its resources exist nowhere) fails the run naming the start-up and its deadline;
* an interrupt in the middle of a coding step of 10,000 ADMM iterations ends the run within a second or two:
  the actor's own loop sees the cancel (it answers while a call runs), and the actor is released;
* in one process, a worker's cancel stops its call running in another thread.
"""

from __future__ import annotations

import logging
import os
import threading
import time

import numpy as np
import pytest

from solver.config import LearnConfig
from solver.stopping import Stopped
from workers.distributed import fleet
from workers.distributed.actors import ShardWorker
from workers.distributed.coordinator import Coordinator, Interrupted, JobFailedError
from workers.distributed.deadlines import Deadlines
from workers.distributed.placement import Placement

ENDLESS = 10_000_000


class HangingWorker(ShardWorker):
    """A shard worker whose coding step never ends and ignores any cancel (a stuck call)."""

    def code(self, filters):
        while True:
            time.sleep(0.05)


def _hanging_actor(**options):
    import ray  # noqa: PLC0415

    return ray.remote(HangingWorker).options(max_restarts=0, max_task_retries=0, max_concurrency=2, **options).remote()


def _gone(pid: int) -> bool:
    """True once process `pid` has exited (a zombie waiting for its parent counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] == "Z"
    except FileNotFoundError:
        return True


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while any(not _gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return [p for p in pids if not _gone(p)]


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_call_that_hangs_fails_the_run_within_its_deadline_naming_it(ray_session, dataset, learn_config, monkeypatch):
    monkeypatch.setattr(fleet, "new_shard_actor", _hanging_actor)
    deadlines = Deadlines(floor=1.0, startup=60.0)
    coordinator = Coordinator(dataset, learn_config, workers=2, max_failures=1, deadlines=deadlines)
    code_deadline = coordinator._deadlines.of("code")
    assert 1.0 < code_deadline < 3.0  # the floor, and a few tiny iterations on top
    started = time.monotonic()
    with pytest.raises(JobFailedError) as failed:
        coordinator.run()
    took = time.monotonic() - started
    message = str(failed.value)
    assert "failed 2 times, more than max_failures=1" in message
    assert (
        f"shard actor call 'code' of shard(s) [0, 1] did not answer within its deadline of {code_deadline:.3g} s"
        in (message)
    )
    # two attempts: each starts two actors (seconds on a loaded machine) and waits out one coding deadline
    assert took < 2 * code_deadline + 40, took


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_an_actor_that_never_starts_fails_the_run_naming_the_start_up(ray_session, dataset, learn_config):
    nowhere = Placement(1, 0.0, 0.0, {"deconv-test-no-such-resource": 1.0})
    coordinator = Coordinator(
        dataset, learn_config, workers=1, max_failures=0, placement=nowhere, deadlines=Deadlines(startup=2.0)
    )
    started = time.monotonic()
    with pytest.raises(JobFailedError) as failed:
        coordinator.run()
    took = time.monotonic() - started
    assert (
        "the start-up of 1 shard actor(s) × {deconv-test-no-such-resource: 1} of shard(s) [0] did not answer "
        "within its deadline of 2 s"
    ) in str(failed.value)
    assert 2.0 <= took < 15.0, took


@pytest.fixture
def big_images(tmp_path):
    """Two 128² images: one coding step of 10,000 ADMM iterations takes minutes on them."""
    images = np.random.default_rng(5).standard_normal((2, 128, 128)).astype(np.float32)
    paths = [tmp_path / f"big-{i}.npy" for i in range(len(images))]
    list(map(np.save, paths, images))
    return paths


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_an_interrupt_stops_a_huge_coding_step_at_once_and_releases_the_actor(ray_session, big_images, caplog):
    config = LearnConfig.model_validate(
        {
            "layers": [{"n_filters": 8, "filter_size": 5, "lam": 0.1}],
            "inference": {"method": "admm", "max_iter": 10_000},
            "n_iter": 3,
        }
    )
    coordinator = Coordinator(big_images, config, workers=1)
    stop = threading.Event()
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            coordinator.run(interrupt=stop.is_set)
        except BaseException as exc:  # noqa: BLE001  (recorded for the assertions)
            outcome.append(exc)
        else:
            outcome.append(None)

    caplog.set_level(logging.INFO, logger="workers.distributed.coordinator")
    thread = threading.Thread(target=run)
    thread.start()
    deadline = time.monotonic() + 120
    while coordinator._pool is None and thread.is_alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(1.0)  # inside the first coding step now (it takes minutes)
    pids = coordinator.shard_pids()  # the actor answers while its call runs
    assert thread.is_alive() and not coordinator._history
    interrupted = time.monotonic()
    stop.set()
    thread.join(30)
    took = time.monotonic() - interrupted
    assert not thread.is_alive()
    assert isinstance(outcome[0], Interrupted), outcome
    assert "'code'" in str(outcome[0])
    assert took < 3.0, took
    # the actor's own loop saw the cancel: its call ended before the actor was killed
    assert any("1 of 1 shard call(s) stopped" in r.getMessage() for r in caplog.records), caplog.text
    assert _wait_gone(pids) == []


def test_a_shard_worker_s_cancel_stops_the_call_running_in_another_thread(tmp_path):
    images = np.random.default_rng(0).standard_normal((2, 32, 32)).astype(np.float32)
    paths = [tmp_path / f"image-{i}.npy" for i in range(len(images))]
    list(map(np.save, paths, images))
    filters = np.random.default_rng(1).standard_normal((4, 1, 5, 5)).astype(np.float32)
    config = LearnConfig.model_validate(
        {"layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.1}], "inference": {"method": "fista", "max_iter": 500}}
    )
    worker = ShardWorker()
    worker.load([str(p) for p in paths], config, None)
    worker.build(None, None, "numpy")
    outcome: list[BaseException | None] = []

    def code() -> None:
        try:
            for _ in range(ENDLESS):  # far more coding steps than the test waits for
                worker.code(filters)
        except BaseException as exc:  # noqa: BLE001  (recorded for the assertion)
            outcome.append(exc)
        else:
            outcome.append(None)

    thread = threading.Thread(target=code)
    thread.start()
    time.sleep(0.3)
    assert thread.is_alive()
    cancelled = time.monotonic()
    worker.cancel()
    thread.join(5)
    took = time.monotonic() - cancelled
    assert not thread.is_alive()
    assert isinstance(outcome[0], Stopped)
    assert took < 1.0, took
    with pytest.raises(Stopped):  # cancelled for good: its state is half-updated
        worker.code(filters)
    assert os.getpid() == worker.pid()
