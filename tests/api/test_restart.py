"""A service stopped gracefully mid-job and started again on the same data directory: the job goes back to the
queue (the start does not count as an attempt) and the next service resumes it from its checkpoint.

Both services run in this process on the session's Ray cluster, so this costs a job, not two cluster starts; the
SIGKILL of a service with its own cluster is test_restart_after_kill.py (slow).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.api.conftest import sample_png_parts, start_service, stop_service, wait_for_job
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)
from workers.jobs.store import JobRecord, JobStore

httpx2 = pytest.importorskip("httpx2")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

SPEC = {
    "layers": [{"n_filters": 8, "filter_size": 5, "lam": 0.5}],
    "n_iter": 40,  # long enough that the job is still running when the first service stops
    "inference": {"method": "admm", "max_iter": 20},
    "filter_update": {"max_iter": 5},
    "seed": 4,
}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@dataclass
class Restarted:
    stopped: JobRecord  # the job as the first service left it
    job: dict  # the job at its end, on the second service
    history_before: list[dict]
    history_after: list[dict]
    log: list[str]


@pytest.fixture(scope="module")
def restarted(tmp_path_factory, ray_cluster) -> Iterator[Restarted]:  # noqa: F811
    data_dir = tmp_path_factory.mktemp("graceful")
    records = _Records()
    workers_logger = logging.getLogger("workers")
    level = workers_logger.level
    workers_logger.addHandler(records)
    workers_logger.setLevel(logging.INFO)
    try:
        first = start_service(data_dir)
        try:
            with httpx2.Client(base_url=first.url, timeout=60) as client:
                files = [("files", (name, data, "image/png")) for name, data in sample_png_parts(3, 64)]
                dataset = client.post("/datasets", files=files).json()
                job_id = client.post("/jobs", json={**SPEC, "dataset_id": dataset["id"]}).json()["id"]
                wait_for_job(client, job_id, lambda j: j["progress"]["iteration"] >= 3)
                history_before = client.get(f"/jobs/{job_id}/history").json()
        finally:
            stop_service(first)  # the runner stops after the current outer iteration
        between = JobStore(data_dir)  # the job as the stopped service left it
        stopped = between.get_job(job_id)
        between.close()
        second = start_service(data_dir)
        try:
            with httpx2.Client(base_url=second.url, timeout=60) as client:
                job = wait_for_job(client, job_id, lambda j: j["status"] == "succeeded")
                history_after = client.get(f"/jobs/{job_id}/history").json()
        finally:
            stop_service(second)
    finally:
        workers_logger.removeHandler(records)
        workers_logger.setLevel(level)
    yield Restarted(stopped, job, history_before, history_after, records.lines)


def test_the_stopped_service_put_the_job_back_in_the_queue(restarted):
    assert 3 <= len(restarted.history_before) < SPEC["n_iter"]
    assert (restarted.stopped.status, restarted.stopped.attempts) == ("queued", 0)  # the attempt is given back
    assert restarted.stopped.progress.iteration >= len(restarted.history_before)
    assert any(f"job {restarted.job['id']}: back in the queue" in line for line in restarted.log)


def test_the_next_service_resumes_the_job_from_its_checkpoint(restarted):
    job_id = restarted.job["id"]
    resumed = [
        int(m.group(1))
        for line in restarted.log
        if job_id in line and (m := re.search(r"resuming from \S+ \(outer iteration (\d+)\)", line))
    ]
    assert restarted.job["status"] == "succeeded"
    assert restarted.job["attempts"] == 1
    assert len(resumed) == 1
    assert resumed[0] >= len(restarted.history_before)


def test_the_iterations_before_the_stop_are_not_run_again(restarted):
    after = {h["iteration"]: h for h in restarted.history_after}
    assert sorted(after) == list(range(1, SPEC["n_iter"] + 1))
    assert [after[h["iteration"]] for h in restarted.history_before] == restarted.history_before
