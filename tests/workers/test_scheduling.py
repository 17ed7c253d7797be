"""Jobs share the cluster: the runner starts up to ``max_running`` jobs at once, oldest first, each once all its
shard actors' resources are reserved (a placement group), and never runs a job twice or loses one.

On the session's local cluster (2 CPUs) with 1 CPU per shard actor: two one-shard jobs fit side by side, a third
waits for one of them to end; a two-shard job fills the cluster. The two-machine version (a real second Ray node)
is tests/workers/test_two_nodes.py (slow).
"""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from workers.jobs.runner import JobRunner
from workers.jobs.store import JobRecord, JobStore

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

SPEC = {
    "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}],
    "n_iter": 4,
    "inference": {"method": "admm", "max_iter": 10},
    "filter_update": {"max_iter": 5},
    "seed": 2,
    "backend": "numpy",
}


@pytest.fixture
def store(tmp_path) -> JobStore:
    store = JobStore(tmp_path / "data")
    yield store
    store.close()


def _dataset(store: JobStore, n: int = 2) -> str:
    images = np.random.default_rng(5).standard_normal((n, 1, 24, 24)).astype(np.float32)
    return store.add_dataset([(f"image-{i}", image) for i, image in enumerate(images)]).id


def _submit(store: JobStore, dataset_id: str, **changes) -> str:
    spec = {**SPEC, "dataset_id": dataset_id, **changes}
    return store.submit(spec, n_layers=1, n_iter=spec["n_iter"])[0].id


class _RunningSampler:
    """Counts the store's running jobs every 20 ms in a thread of its own (its own SQLite connection)."""

    def __init__(self, store: JobStore):
        self.store = store
        self.counts: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.counts.append(self.store.count_jobs("running"))
            time.sleep(0.02)
        self.store.close()

    def __enter__(self) -> _RunningSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def _wait_all_ended(store: JobStore, ids: list[str], timeout: float = 180) -> list[JobRecord]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        jobs = [store.get_job(i) for i in ids]
        if all(j.terminal for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError(f"jobs still not ended after {timeout} s: {[(j.id, j.status) for j in jobs]}")


def test_two_jobs_run_at_once_and_the_third_starts_when_one_ends(store, ray_session):
    if ray_session.resources.get("CPU", 0) != 2:
        pytest.skip(f"sized for a 2-CPU cluster, this one has {ray_session.resources.get('CPU')}")
    dataset_id = _dataset(store)
    ids = [_submit(store, dataset_id, workers=1, seed=seed) for seed in (1, 2, 3)]
    runner = JobRunner(store, checkpoint_every=0, actor_cpus=1.0, max_running=2, poll_interval=0.05)
    with _RunningSampler(JobStore(store.data_dir)) as sampler:
        runner.start()
        try:
            first, second, third = _wait_all_ended(store, ids)
        finally:
            runner.stop()
    assert [j.status for j in (first, second, third)] == ["succeeded"] * 3, [j.error for j in (first, second, third)]
    assert [j.attempts for j in (first, second, third)] == [1, 1, 1]  # each ran once
    # the two oldest ran side by side: each started before the other ended
    assert max(first.started_at, second.started_at) < min(first.finished_at, second.finished_at)
    # the third waited for a free slot and room on the cluster: it started after one of them ended
    assert third.started_at >= min(first.finished_at, second.finished_at)
    assert max(sampler.counts) == 2
    assert runner.running == []


def test_a_job_waits_whole_in_the_queue_and_the_younger_ones_wait_behind_it(store, ray_session):
    if ray_session.resources.get("CPU", 0) != 2:
        pytest.skip(f"sized for a 2-CPU cluster, this one has {ray_session.resources.get('CPU')}")
    dataset_id = _dataset(store)
    small = _submit(store, dataset_id, workers=1, n_iter=8)
    wide = _submit(store, dataset_id, workers=2)  # needs both CPUs: waits until `small` ends
    behind = _submit(store, dataset_id, workers=1)  # would fit beside `small`, but `wide` is older
    runner = JobRunner(store, checkpoint_every=0, actor_cpus=1.0, max_running=2, poll_interval=0.05)
    runner.start()
    try:
        jobs = _wait_all_ended(store, [small, wide, behind])
    finally:
        runner.stop()
    first, second, third = jobs
    assert [j.status for j in jobs] == ["succeeded"] * 3, [j.error for j in jobs]
    assert second.started_at >= first.finished_at  # never half-started beside `small`
    assert third.started_at >= second.started_at  # oldest first
    assert [j.attempts for j in jobs] == [1, 1, 1]


def test_a_job_no_node_can_hold_fails_at_once_saying_what_it_asked(store, ray_session):
    dataset_id = _dataset(store)
    job_id = _submit(store, dataset_id, workers=2, resources={"custom": {"deconv-test-absent": 1}})
    runner = JobRunner(store, checkpoint_every=0, max_running=2, poll_interval=0.05)
    runner.start()
    try:
        (job,) = _wait_all_ended(store, [job_id], timeout=60)
    finally:
        runner.stop()
    assert job.status == "failed"
    assert "2 shard actor(s) × {CPU: 1, deconv-test-absent: 1}" in job.error
    assert "no node has room" in job.error


def test_a_cancelled_waiting_job_gives_its_turn_to_the_next(store, ray_session):
    if ray_session.resources.get("CPU", 0) != 2:
        pytest.skip(f"sized for a 2-CPU cluster, this one has {ray_session.resources.get('CPU')}")
    dataset_id = _dataset(store)
    wide = _submit(store, dataset_id, workers=2, n_iter=8)
    waiting = _submit(store, dataset_id, workers=2)
    behind = _submit(store, dataset_id, workers=1)
    runner = JobRunner(store, checkpoint_every=0, actor_cpus=1.0, max_running=2, poll_interval=0.05)
    runner.start()
    try:
        deadline = time.monotonic() + 60
        while store.get_job(wide).status != "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        assert store.get_job(waiting).status == "queued"
        store.request_cancel(waiting)
        jobs = _wait_all_ended(store, [wide, waiting, behind])
    finally:
        runner.stop()
    assert [j.status for j in jobs] == ["succeeded", "cancelled", "succeeded"], [j.error for j in jobs]
    assert jobs[1].attempts == 0  # never started
    assert jobs[2].started_at >= jobs[0].finished_at


def test_cancelling_one_of_two_running_jobs_leaves_the_other_running(store, ray_session):
    if ray_session.resources.get("CPU", 0) != 2:
        pytest.skip(f"sized for a 2-CPU cluster, this one has {ray_session.resources.get('CPU')}")
    dataset_id = _dataset(store)
    # long enough that the first job is still running when the second's actor has started and done an iteration
    n_iter = 200
    cancelled, kept = (_submit(store, dataset_id, workers=1, n_iter=n_iter, seed=seed) for seed in (1, 2))
    runner = JobRunner(store, checkpoint_every=0, actor_cpus=1.0, max_running=2, poll_interval=0.05)
    runner.start()
    try:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not all(
            store.get_job(i).progress.iteration >= 1 for i in (cancelled, kept)
        ):
            time.sleep(0.05)
        assert sorted(runner.running) == sorted([cancelled, kept])
        store.request_cancel(cancelled)
        first, second = _wait_all_ended(store, [cancelled, kept])
    finally:
        runner.stop()
    assert (first.status, second.status) == ("cancelled", "succeeded"), second.error
    assert first.progress.iteration < n_iter  # stopped mid-run
    assert second.progress.iteration == n_iter and second.attempts == 1
