"""A job whose images its dtype cannot square: float64 data is taken up to 1e150, a job may still ask to compute in
float32, and without preprocessing nothing brings the values down. Such a job fails at once with an error naming the
values and the dtype, never succeeds with an infinite objective nor leaves a history that is not JSON."""

from __future__ import annotations

import io
import time

import numpy as np
import pytest

from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.timeout(240)

SPEC = {
    "layers": [{"n_filters": 3, "filter_size": 3, "lam": 0.5}],
    "n_iter": 2,
    "inference": {"method": "admm", "max_iter": 5},
    "filter_update": {"max_iter": 3},
    "preprocess": None,
    "seed": 5,
}


def _npy(a: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, a, allow_pickle=False)
    return buffer.getvalue()


def _finished(client, job_id: str) -> dict:
    deadline = time.monotonic() + 200
    while (job := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, job
        time.sleep(0.2)
    return job


@pytest.mark.parametrize("scale", [1e30, 1e100])
def test_float64_images_past_what_float32_squares_fail_a_float32_job_naming_them(live_service, scale):
    images = np.random.default_rng(8).random((3, 16, 16)) * scale
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        files = [("files", (f"{n}.npy", _npy(a), "application/octet-stream")) for n, a in enumerate(images)]
        dataset = client.post("/datasets", files=files)
        assert dataset.status_code == 201, dataset.text
        jobs = {
            dtype: client.post("/jobs", json={"dataset_id": dataset.json()["id"], **SPEC, "dtype": dtype})
            for dtype in ("float32", "float64")
        }
        assert all(response.status_code == 202 for response in jobs.values()), [r.text for r in jobs.values()]
        narrow, wide = (_finished(client, jobs[d].json()["id"]) for d in ("float32", "float64"))
        assert narrow["status"] == "failed", narrow
        assert f"images holds values up to {images.max():.3g}" in narrow["error"]
        assert "float32 takes for 16x16" in narrow["error"] and "compute in float64" in narrow["error"]
        history = client.get(f"/jobs/{narrow['id']}/history")
        assert history.status_code == 200 and history.json() == []
        assert wide["status"] == "succeeded", wide  # float64 squares them: the same data learns
        objectives = [row["objective"] for row in client.get(f"/jobs/{wide['id']}/history").json()]
        assert len(objectives) == 2 and all(np.isfinite(objectives))


def test_an_infinite_objective_an_older_service_recorded_reads_as_null(tmp_path):
    """History rows are JSON: an overflowed run's inf (which JSON cannot carry) is served as null, not a 500."""
    import sqlite3  # noqa: PLC0415

    from tests.api.conftest import start_service, stop_service  # noqa: PLC0415
    from workers.jobs.store import JobStore  # noqa: PLC0415

    store = JobStore(tmp_path)
    job, _ = store.submit({**SPEC, "dataset_id": "0" * 32}, n_layers=1, n_iter=2)
    store.close()
    with sqlite3.connect(tmp_path / "deconv.sqlite3") as db:  # as update_progress wrote it before it refused inf
        db.execute(
            "INSERT INTO progress (job_id, layer, iteration, objective, sparsity, elapsed) "
            "VALUES (?, 1, 1, ?, 1.0, 0.5)",
            (job.id, float("inf")),
        )
    service = start_service(tmp_path, run_jobs=False)
    try:
        with httpx2.Client(base_url=service.url, timeout=60) as client:
            response = client.get(f"/jobs/{job.id}/history")
    finally:
        stop_service(service)
    assert response.status_code == 200, response.text
    assert response.json() == [{"layer": 1, "iteration": 1, "objective": None, "sparsity": 1.0, "elapsed": 0.5}]
