"""deconv on two Ray nodes that share no filesystem, on this one machine (tests/workers/cluster_harness.py): a head
that offers no CPU, a node that cannot see the service's data folder, and an S3 server as the only shared store.

- a two-layer job (layer 1 pools, ``reconstruct_to: pixels``, so switches travel too) with 2 workers runs with every
  shard actor on the hidden node, succeeds, and learns the filters of the same job on one node;
- ``deconv learn`` with ``images: s3://...`` (and its outputs in S3) does the same;
- three jobs submitted together with ``DECONV_MAX_RUNNING_JOBS=2``, on a node with room for two: two run at the same
  time, the third starts when one ends, none is lost, each runs once;
- a SIGKILL of the service mid-job, then a restart: the job resumes from its checkpoint in the store and succeeds.

Slow (a cluster of its own, two services and a reference one; 3-6 minutes on the 2-core test machine), and
runnable alone: ``pytest -m slow tests/workers/test_two_nodes.py``. Skipped where the harness cannot run (not
root, no ``unshare``, no moto).
"""

from __future__ import annotations

import io
import logging
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.api.conftest import wait_for_job
from tests.workers import cluster_harness
from tests.workers.cluster_harness import HIDDEN_CPUS, MARKER, Service, TwoNodeCluster
from workers.jobs.runner import part_name

httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("ray")

logger = logging.getLogger(__name__)

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

N_IMAGES, SIDE = 4, 24
POOLED_SPEC = {
    "layers": [
        {"n_filters": 4, "filter_size": 5, "lam": 0.1, "pool": [2, 2, 2]},
        {"n_filters": 4, "filter_size": 3, "lam": 0.05},
    ],
    "n_iter": 3,
    "inference": {"method": "fista", "max_iter": 8},
    "filter_update": {"max_iter": 5},
    "seed": 4,
    "workers": 2,
    "backend": "numpy",
    "reconstruct_to": "pixels",
}
LONG_SPEC = {  # one layer, long enough to be killed mid-run
    "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}],
    "n_iter": 10,
    "inference": {"method": "admm", "max_iter": 20},
    "filter_update": {"max_iter": 5},
    "seed": 6,
    "workers": 2,
    "backend": "numpy",
}
SHORT_SPEC = {**LONG_SPEC, "n_iter": 4, "workers": 1}
JOB_FILE = {
    "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.2}],
    "n_iter": 3,
    "inference": {"method": "admm", "max_iter": 10},
    "filter_update": {"max_iter": 5},
    "seed": 5,
    "workers": 2,
}


def _images() -> list[tuple[str, bytes]]:
    rng = np.random.default_rng(11)
    files = []
    for index in range(N_IMAGES):
        buffer = io.BytesIO()
        np.save(buffer, rng.standard_normal((1, SIDE, SIDE)).astype(np.float32))
        files.append((f"image-{index}.npy", buffer.getvalue()))
    return files


def _array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def _assert_float32_equal(found: np.ndarray, expected: np.ndarray) -> None:
    assert found.shape == expected.shape and found.dtype == expected.dtype == np.float32
    np.testing.assert_allclose(found, expected, rtol=1e-4, atol=1e-4 * float(np.abs(expected).max()))


@dataclass
class OnService:
    service: Service
    client: httpx2.Client
    dataset_id: str

    def submit(self, spec: dict) -> str:
        response = self.client.post("/jobs", json={**spec, "dataset_id": self.dataset_id})
        assert response.status_code == 202, response.text
        return response.json()["id"]

    def filters(self, job_id: str, layer: int) -> np.ndarray:
        return _array(self.client.get(f"/jobs/{job_id}/filters", params={"layer": layer}))

    def close(self) -> None:
        self.client.close()


def _on(service: Service) -> OnService:
    client = httpx2.Client(base_url=service.url, timeout=60)
    files = [("files", (name, data, "application/x-npy")) for name, data in _images()]
    response = client.post("/datasets", files=files)
    assert response.status_code == 201, response.text
    return OnService(service, client, response.json()["id"])


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodeCluster]:
    reason = cluster_harness.unavailable()
    if reason is not None:
        pytest.skip(f"cannot simulate a second node here: {reason}")
    started = time.monotonic()
    harness = cluster_harness.start_two_node_cluster()
    harness.startup_s = time.monotonic() - started
    try:
        yield harness
    finally:
        harness.stop()


@pytest.fixture(scope="module")
def single_node(cluster) -> dict:
    """The pooled job and the deconv learn run on one node (a private local Ray, local files): the references."""
    local = cluster.start_service("reference", on_cluster=False)
    try:
        on = _on(local)
        job_id = on.submit(POOLED_SPEC)
        job = wait_for_job(on.client, job_id, timeout=400)
        assert job["status"] == "succeeded", job["error"]
        filters = [on.filters(job_id, layer) for layer in (1, 2)]
        on.close()
    finally:
        local.stop()
    folder = cluster.root / "images-local"
    folder.mkdir()
    for name, data in _images():
        (folder / name).write_bytes(data)
    job_file = cluster.root / "learn-local.yaml"
    job_file.write_text(yaml.safe_dump({**JOB_FILE, "images": str(folder)}))
    out = cluster.root / "learn-local-out"
    result = cluster.run_cli("learn", str(job_file), "--out", str(out), "--no-progress", "--checkpoint-every", "0")
    assert result.returncode == 0, result.stderr[-3000:]
    return {"pooled": filters, "learn": np.load(out / "filters.npy")}


@pytest.fixture(scope="module")
def on_cluster(cluster) -> Iterator[OnService]:
    """The service on the cluster: S3 store, every checkpoint kept (to be killed mid-job), two jobs at a time."""
    service = cluster.start_service("service", DECONV_CHECKPOINT_EVERY="1", DECONV_MAX_RUNNING_JOBS="2")
    on = _on(service)
    yield on
    on.close()


def _actors_all_on_the_hidden_node(cluster: TwoNodeCluster, at_least: int) -> None:
    actors = cluster.actor_nodes()
    assert len(actors) >= at_least, actors
    assert {a["node_id"] for a in actors} == {cluster.hidden_node_id}, actors


def test_the_hidden_node_cannot_see_the_service_data_folder(cluster):
    assert (cluster.data_dir / MARKER).is_file()
    seen = cluster.wait_for_nodes()
    assert seen["nodes"] == 2
    assert seen["listing"] == []  # a task on the hidden node lists an empty folder there


def test_a_pooled_two_layer_job_runs_on_the_hidden_node_and_learns_what_one_node_learns(
    cluster, on_cluster, single_node
):
    job_id = on_cluster.submit(POOLED_SPEC)
    job = wait_for_job(on_cluster.client, job_id, timeout=400)
    assert job["status"] == "succeeded", job["error"]
    for layer, expected in zip((1, 2), single_node["pooled"], strict=True):
        _assert_float32_equal(on_cluster.filters(job_id, layer), expected)
    _actors_all_on_the_hidden_node(cluster, at_least=4)  # 2 shards x 2 layers
    # each shard wrote its own part of layer 1's switches to the store, which layer 2's shards read from there
    parts = [_array(on_cluster.client.get(f"/jobs/{job_id}/artifacts/{part_name('switches', 1, i)}")) for i in (0, 1)]
    assert sum(len(p) for p in parts) == N_IMAGES and all(p.dtype == np.int32 for p in parts)
    assert not any(cluster.data_dir.glob("jobs/*"))  # nothing of the job's work lives in the service's folder


def test_deconv_learn_reads_s3_images_on_the_hidden_node_and_learns_what_one_node_learns(cluster, single_node):
    for name, data in _images():
        cluster.put_file(f"learn-images/{name}", data)
    job_file = cluster.root / "learn-s3.yaml"
    job_file.write_text(yaml.safe_dump({**JOB_FILE, "images": f"{cluster.s3_url}/learn-images/"}))
    before = len(cluster.actor_nodes())
    out = f"{cluster.s3_url}/learn-out"
    options = ["--out", out, "--address", cluster.head_address, "--no-progress", "--checkpoint-every", "1"]
    result = cluster.run_cli("learn", str(job_file), *options)
    assert result.returncode == 0, result.stderr[-3000:]
    import fsspec  # noqa: PLC0415

    fs = fsspec.filesystem("s3", endpoint_url=cluster.s3_endpoint, key="testing", secret="testing")
    with fs.open(f"{out.removeprefix('s3://')}/filters.npy", "rb") as fh:
        filters = np.load(io.BytesIO(fh.read()))
    _assert_float32_equal(filters, single_node["learn"])
    _actors_all_on_the_hidden_node(cluster, at_least=before + 2)


def _time(value: str) -> float:
    return datetime.fromisoformat(value).timestamp()


def test_three_jobs_two_at_a_time_none_lost_each_once(cluster, on_cluster):
    assert HIDDEN_CPUS == 2  # room for two one-CPU shard actors: two one-shard jobs
    ids = [on_cluster.submit({**SHORT_SPEC, "seed": seed}) for seed in (1, 2, 3)]
    jobs = [wait_for_job(on_cluster.client, job_id, timeout=400) for job_id in ids]
    assert [j["status"] for j in jobs] == ["succeeded"] * 3, [j["error"] for j in jobs]
    assert [j["attempts"] for j in jobs] == [1, 1, 1]
    start = [_time(j["started_at"]) for j in jobs]
    end = [_time(j["finished_at"]) for j in jobs]
    t0 = min(_time(j["created_at"]) for j in jobs)
    spans = [(round(s - t0, 1), round(e - t0, 1)) for s, e in zip(start, end, strict=True)]
    logger.info("three jobs, (start, end) in s after submission: %s", spans)
    assert max(start[0], start[1]) < min(end[0], end[1])  # the two oldest ran side by side
    assert start[2] >= min(end[0], end[1])  # the third waited for one of them
    listed = {j["id"] for j in on_cluster.client.get("/jobs", params={"limit": 100}).json()["items"]}
    assert set(ids) <= listed


def test_a_killed_service_resumes_its_job_from_the_checkpoint_in_the_store(cluster, on_cluster):
    job_id = on_cluster.submit(LONG_SPEC)
    wait_for_job(on_cluster.client, job_id, lambda j: j["progress"]["iteration"] >= 3, timeout=400)
    before = on_cluster.client.get(f"/jobs/{job_id}/history").json()
    on_cluster.service.kill()
    restarted = cluster.start_service("restarted", DECONV_CHECKPOINT_EVERY="1", DECONV_MAX_RUNNING_JOBS="2")
    with httpx2.Client(base_url=restarted.url, timeout=60) as client:
        job = wait_for_job(client, job_id, timeout=400)
        after = client.get(f"/jobs/{job_id}/history").json()
    assert job["status"] == "succeeded", job["error"]
    assert job["attempts"] == 2
    log = restarted.text()
    match = re.search(rf"resuming from \S*{job_id}\S* \(outer iteration (\d+)\)", log)
    assert match is not None, log[-3000:]
    assert int(match.group(1)) >= len(before) >= 3
    assert sorted(h["iteration"] for h in after) == list(range(1, LONG_SPEC["n_iter"] + 1))
    assert not Path(cluster.data_dir, "jobs").exists() or not any(Path(cluster.data_dir, "jobs").iterdir())
