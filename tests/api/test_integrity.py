"""A dataset image damaged in the store fails its job with an error that names the dataset and the image, and no
job error shown by the API carries a server path. Without Ray: the check runs before the job connects to it."""

from __future__ import annotations

import numpy as np
import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from workers.distributed.cluster import ClusterConfig
from workers.jobs import learning as learning_module
from workers.jobs.runner import JobRunner
from workers.jobs.store import JobStore

SPEC = {"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1}], "n_iter": 1}


def _no_cluster(config):
    raise RuntimeError("this test has no cluster: the job should have failed before connecting")


@pytest.fixture
def store(tmp_path):
    store = JobStore(tmp_path)
    yield store
    store.close()


def _images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    return [(f"{name}.png", rng.integers(0, 255, (1, 16, 16), dtype=np.uint8)) for name in "abc"]


def test_a_damaged_image_fails_the_job_naming_the_dataset_and_the_image(store, tmp_path, monkeypatch):
    monkeypatch.setattr(learning_module, "connect", _no_cluster)
    dataset = store.add_dataset(_images())
    path = store.artifacts.local_path(dataset.images[1].key)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF  # still a valid NPY file, with one pixel changed
    path.write_bytes(bytes(data))
    job, _ = store.submit({**SPEC, "dataset_id": dataset.id}, n_layers=1, n_iter=1)
    JobRunner(store, cluster=ClusterConfig()).run_job(store.claim_next())
    failed = store.get_job(job.id)
    assert failed.status == "failed"
    assert f"dataset {dataset.id}: image 1 ('b.png')" in failed.error and "sha256" in failed.error
    assert str(tmp_path) not in failed.error


def test_a_missing_image_fails_the_job_naming_it(store, tmp_path, monkeypatch):
    monkeypatch.setattr(learning_module, "connect", _no_cluster)
    dataset = store.add_dataset(_images())
    store.artifacts.local_path(dataset.images[2].key).unlink()
    job, _ = store.submit({**SPEC, "dataset_id": dataset.id}, n_layers=1, n_iter=1)
    JobRunner(store, cluster=ClusterConfig()).run_job(store.claim_next())
    failed = store.get_job(job.id)
    assert "image 2 ('c.png')" in failed.error and str(tmp_path) not in failed.error


def test_a_job_error_shows_no_server_path(tmp_path):
    store = JobStore(tmp_path)
    dataset = store.add_dataset(_images())
    job, _ = store.submit({**SPEC, "dataset_id": dataset.id}, n_layers=1, n_iter=1)
    store.claim_next()
    where = tmp_path / "jobs" / job.id / "layers" / "L1" / "maps" / "00001.npy"
    store.finish(job.id, "failed", f"FileNotFoundError: [Errno 2] No such file or directory: '{where}'")
    store.close()
    client = TestClient(create_app(Settings(data_dir=tmp_path, run_jobs=False)))
    error = client.get(f"/jobs/{job.id}").json()["error"]
    assert error == "FileNotFoundError: [Errno 2] No such file or directory: '…/00001.npy'"
    assert str(tmp_path) not in client.get("/jobs").json()["items"][0]["error"]
