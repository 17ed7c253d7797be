"""An online learning job on two Ray nodes that share no filesystem (tests/workers/cluster_harness.py): the service
with its S3 store on one side, a head that offers no CPU, and the hidden node where every coding actor must run,
reading the dataset's images from S3 batch by batch.

Slow (a cluster of its own; minutes on the 2-core test machine), runnable alone:
``pytest -m slow tests/workers/test_two_nodes_online.py``. Skipped where the harness cannot run (not root, no
``unshare``, no moto).
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest

from tests.api.conftest import wait_for_job
from tests.workers import cluster_harness
from tests.workers.cluster_harness import TwoNodeCluster

httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(900)]

N_IMAGES, SIDE = 10, 24
SPEC = {
    "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.2}],
    "inference": {"method": "admm", "max_iter": 8},
    "filter_update": {"max_iter": 20},
    "seed": 2,
    "workers": 2,
    "backend": "numpy",
    "learning": {"mode": "online", "batch_size": 4, "n_epochs": 2, "held_out": 2, "checkpoint_every": 1},
}


@pytest.fixture(scope="module")
def cluster() -> Iterator[TwoNodeCluster]:
    reason = cluster_harness.unavailable()
    if reason is not None:
        pytest.skip(f"cannot simulate a second node here: {reason}")
    harness = cluster_harness.start_two_node_cluster()
    try:
        yield harness
    finally:
        harness.stop()


def _files() -> list:
    rng = np.random.default_rng(5)
    files = []
    for index in range(N_IMAGES):
        buffer = io.BytesIO()
        np.save(buffer, rng.standard_normal((1, SIDE, SIDE)).astype(np.float32))
        files.append(("files", (f"image-{index}.npy", buffer.getvalue(), "application/x-npy")))
    return files


def test_an_online_job_runs_its_coding_actors_on_the_hidden_node_and_succeeds(cluster):
    cluster.wait_for_nodes()
    service = cluster.start_service("online-service")
    with httpx2.Client(base_url=service.url, timeout=60) as client:
        dataset = client.post("/datasets", files=_files())
        assert dataset.status_code == 201, dataset.text
        submitted = client.post("/jobs", json={**SPEC, "dataset_id": dataset.json()["id"]})
        assert submitted.status_code == 202, submitted.text
        job = wait_for_job(client, submitted.json()["id"], timeout=600)
        assert job["status"] == "succeeded", (job["error"], service.text()[-3000:])
        assert job["progress"]["iteration"] == job["progress"]["n_iter"] == 16  # 2 passes over 8 training images
        filters = np.load(io.BytesIO(client.get(f"/jobs/{job['id']}/filters").content))
        assert filters.shape == (4, 1, 5, 5) and np.all(np.isfinite(filters))
        np.testing.assert_allclose(np.sqrt((filters**2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-5)
        curve = json.loads(client.get(f"/jobs/{job['id']}/artifacts/held_out.json").content)
        assert len(curve) == 4 and all(np.isfinite(c["objective"]) for c in curve)
        maps = client.get(f"/jobs/{job['id']}/maps")
        assert maps.status_code == 200, maps.text
        with np.load(io.BytesIO(maps.content)) as archive:
            assert len(archive.files) == 8  # the bounded sample
    actors = cluster.actor_nodes("OnlineCoder")
    assert len(actors) >= 2, actors
    assert {a["node_id"] for a in actors} == {cluster.hidden_node_id}, actors
    assert not any(cluster.data_dir.glob("jobs/*"))  # the job's checkpoints live in the S3 store
    service.stop()
