"""A job whose λ is given relative to λ_max: the service validates the fraction, resolves it on the shards, and
records the absolute λ used with λ_max, the same as single-process learning does."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from solver import LayerSpec, LearnConfig, learn_layer
from solver.config import AdmmConfig, FilterUpdateConfig
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.timeout(240)

LAYER = {"n_filters": 3, "filter_size": 3, "lam": 0.3, "lam_scale": "relative"}
SPEC = {
    "layers": [LAYER],
    "n_iter": 2,
    "inference": {"method": "admm", "max_iter": 5},
    "filter_update": {"max_iter": 3},
    "preprocess": None,
    "seed": 5,
    "workers": 2,
}


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return buffer.getvalue()


def test_a_relative_lam_is_recorded_as_the_absolute_lam_used(live_service):
    images = np.random.default_rng(8).standard_normal((4, 1, 12, 12)).astype(np.float32)
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        files = [("files", (f"{n}.npy", _npy(a), "application/octet-stream")) for n, a in enumerate(images)]
        dataset = client.post("/datasets", files=files)
        assert dataset.status_code == 201, dataset.text
        response = client.post("/jobs", json={"dataset_id": dataset.json()["id"], **SPEC})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        deadline = time.monotonic() + 200
        while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, job
            time.sleep(0.2)
        assert job["status"] == "succeeded", job
        layer = client.get(f"/jobs/{job_id}/artifacts/model.json").json()["layers"][0]
    config = LearnConfig(
        layers=[LayerSpec(**LAYER)],
        inference=AdmmConfig(max_iter=5),
        n_iter=2,
        seed=5,
        filter_update=FilterUpdateConfig(max_iter=3),
    )
    local = learn_layer(images, config)  # one process, all the images: the same λ_max as the max over the shards
    assert layer["lam_scale"] == "relative"
    assert layer["lam_max"] == pytest.approx(local.lam_max, rel=1e-6)
    assert layer["lam"] == pytest.approx(0.3 * layer["lam_max"], rel=1e-12)


def test_a_relative_lam_of_one_is_refused_naming_the_field(live_service):
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        response = client.post("/jobs", json={"dataset_id": "0" * 32, **SPEC, "layers": [{**LAYER, "lam": 1.0}]})
    assert response.status_code == 422, response.text
    assert "layers" in response.text and "below 1" in response.text
