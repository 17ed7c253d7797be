"""``DELETE /jobs/{id}`` of a job in the middle of a huge inference (10,000 ADMM iterations on 128² images: one
coding step takes minutes) ends it within 5 s: it shows ``cancelled``, no outer iteration was finished, and its
shard actor's process is gone. The service runs in this process on the session's Ray cluster."""

from __future__ import annotations

import time

import pytest

from tests.api.conftest import sample_png_parts, wait_for_job
from tests.workers.test_cancel import _wait_gone
from workers.jobs.status import TERMINAL

httpx2 = pytest.importorskip("httpx2")

pytestmark = [pytest.mark.ray, pytest.mark.timeout(240)]

HUGE = {
    "layers": [{"n_filters": 8, "filter_size": 5, "lam": 0.1}],
    "inference": {"method": "admm", "max_iter": 10_000},
    "n_iter": 5,
}


def _shard_actors() -> dict[str, int]:
    """Actor id -> process id of the live shard actors of the cluster."""
    from ray._private import state  # noqa: PLC0415  (Ray's own table; the state API needs a dashboard)

    return {
        actor_id: info["Pid"]
        for actor_id, info in state.actors().items()
        if info["ActorClassName"] == "ShardWorker" and info["State"] == "ALIVE"
    }


def test_delete_ends_a_job_stuck_in_a_huge_inference_within_5_s(live_service):
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        files = [("files", (name, data, "image/png")) for name, data in sample_png_parts(2, 128)]
        dataset = client.post("/datasets", files=files).json()
        before = set(_shard_actors())
        response = client.post("/jobs", json={**HUGE, "dataset_id": dataset["id"]})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        wait_for_job(client, job_id, lambda j: j["status"] == "running")
        deadline = time.monotonic() + 120
        while not (set(_shard_actors()) - before) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # the actor has its images and is deep in the first coding step
        ours = {a: pid for a, pid in _shard_actors().items() if a not in before}
        assert len(ours) == 1
        assert client.get(f"/jobs/{job_id}").json()["status"] == "running"
        asked = time.monotonic()
        assert client.delete(f"/jobs/{job_id}").status_code == 202
        job = wait_for_job(client, job_id, lambda j: j["status"] in TERMINAL, timeout=60, interval=0.05)
        took = time.monotonic() - asked
    assert job["status"] == "cancelled"
    assert took < 5.0, took
    assert not job["progress"] or not job["progress"].get("iteration")  # stopped inside the first iteration
    assert _wait_gone(list(ours.values()), timeout=5.0) == []
    assert not set(ours) & set(_shard_actors())
