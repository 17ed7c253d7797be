"""Online learning jobs through the service: the spec's checks (422 naming the field), a job on the sample images
with its artifacts and its progress in images, and a cancel between batches."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator

import numpy as np
import pytest

from tests.api.conftest import LiveService, sample_png_parts, start_service, stop_service, wait_for_job
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")

pytestmark = pytest.mark.timeout(300)

K, S, SIDE, N_IMAGES = 4, 5, 32, 8
SPEC = {
    "layers": [{"n_filters": K, "filter_size": S, "lam": 0.5}],
    "inference": {"method": "admm", "max_iter": 10},
    "filter_update": {"max_iter": 20},
    "seed": 1,
    "workers": 2,
}
ONLINE = {"mode": "online", "batch_size": 2, "n_epochs": 2, "held_out": 2}


def _files(n: int = N_IMAGES) -> list:
    return [("files", (name, data, "image/png")) for name, data in sample_png_parts(n, SIDE)]


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Iterator[httpx2.Client]:
    """A service that takes jobs and runs none (no Ray), with a dataset of the eight sample crops."""
    service = start_service(tmp_path_factory.mktemp("held-online"), run_jobs=False)
    with httpx2.Client(base_url=service.url, timeout=60) as c:
        c.dataset_id = c.post("/datasets", files=_files()).json()["id"]
        yield c
    stop_service(service)


def _refused(client, learning: dict, **changes) -> dict:
    response = client.post("/jobs", json={**SPEC, **changes, "learning": learning, "dataset_id": client.dataset_id})
    assert response.status_code == 422, response.text
    (error,) = response.json()["detail"]
    return error


@pytest.mark.parametrize(
    ("learning", "changes", "loc", "words"),
    [
        ({"mode": "batch", "batch_size": 4}, {}, ["body", "learning", "batch_size"], "mode 'online'"),
        ({"mode": "online", "n_epochs": 1, "n_images": 5}, {}, ["body", "learning", "n_images"], "not both"),
        ({"mode": "online", "batch_size": 0}, {}, ["body", "learning", "batch_size"], "greater than or equal"),
        ({"mode": "online", "batch_size": 5000}, {}, ["body", "learning", "batch_size"], "less than or equal"),
        ({"mode": "online", "n_epochs": 10**6}, {}, ["body", "learning", "n_epochs"], "less than or equal"),
        ({"mode": "sideways"}, {}, ["body", "learning", "mode"], "'batch' or 'online'"),
        ({"mode": "onlin", "batch_size": 4}, {}, ["body", "learning", "mode"], "'batch' or 'online'"),  # only that
        ({"mode": "online", "forget": 5, "forget_factor": 0.5}, {}, ["body", "learning", "forget_factor"], "not both"),
        ({"mode": "online", "forget": "nan"}, {}, ["body", "learning", "forget"], "finite"),
        ({"mode": "online", "forget_factor": "inf"}, {}, ["body", "learning", "forget_factor"], "finite"),
        ({"mode": "online"}, {"n_iter": 3}, ["body", "n_iter"], "not outer iterations"),
        ({"mode": "online", "bacth_size": 2}, {}, ["body", "learning", "bacth_size"], "not permitted"),
        ({"mode": "online", "batch_size": 7}, {}, ["body", "learning", "batch_size"], "6 training images"),
        ({"mode": "online", "held_out": 8}, {}, ["body", "learning", "held_out"], "none of the dataset's 8"),
        (
            {"mode": "online"},
            {"layers": [{"n_filters": 4, "filter_size": 3, "lam": 0.5}, {"n_filters": 4, "filter_size": 3, "lam": 1}]},
            ["body", "layers"],
            "one layer, got 2 layers",
        ),
        (
            {"mode": "online"},
            {"layers": [{"n_filters": 4, "filter_size": 3, "lam": 0.5, "lam_scale": "relative"}]},
            ["body", "layers", 0, "lam_scale"],
            "absolute",
        ),
        ({"mode": "online"}, {"filter_update": {"method": "cg"}}, ["body", "filter_update", "method"], "FISTA"),
    ],
)
def test_a_bad_online_spec_is_refused_naming_the_field(held, learning, changes, loc, words):
    error = _refused(held, learning, **changes)
    assert error["loc"] == loc and words in error["msg"], error


def test_a_good_online_spec_is_queued_with_its_progress_in_images(held):
    response = held.post("/jobs", json={**SPEC, "learning": ONLINE, "dataset_id": held.dataset_id})
    assert response.status_code == 202, response.text
    progress = response.json()["progress"]
    assert (progress["n_iter"], progress["total_steps"], progress["iteration"]) == (12, 12, 0)  # 2 passes over 6
    batch = held.post("/jobs", json={**SPEC, "dataset_id": held.dataset_id, "n_iter": 3}).json()
    assert batch["progress"]["n_iter"] == 3 and batch["spec"]["learning"] == {
        "mode": "batch",
        **dict.fromkeys(("batch_size", "n_epochs", "n_images", "forget", "forget_factor", "held_out")),
        "checkpoint_every": None,
    }


# -- a job on Ray ------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def client(live_service: LiveService) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=live_service.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def finished(client) -> dict:
    dataset = client.post("/datasets", files=_files()).json()
    submitted = client.post("/jobs", json={**SPEC, "learning": ONLINE, "dataset_id": dataset["id"]})
    assert submitted.status_code == 202, submitted.text
    job = wait_for_job(client, submitted.json()["id"], timeout=240)
    assert job["status"] == "succeeded", job
    return job


def _artifact(client, job_id: str, name: str) -> bytes:
    response = client.get(f"/jobs/{job_id}/artifacts/{name}")
    assert response.status_code == 200, (name, response.text)
    return response.content


def test_an_online_job_succeeds_with_its_progress_in_images(finished):
    progress = finished["progress"]
    assert (progress["iteration"], progress["n_iter"], progress["fraction"]) == (12, 12, 1.0)


def test_an_online_job_has_unit_norm_filters_and_their_montage(client, finished):
    filters = np.load(io.BytesIO(_artifact(client, finished["id"], "filters-L1.npy")))
    assert filters.shape == (K, 1, S, S) and filters.dtype == np.float32
    np.testing.assert_allclose(np.sqrt((filters**2).sum(axis=(1, 2, 3))), 1.0, rtol=1e-5)
    assert _artifact(client, finished["id"], "filters-L1.png")[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_online_job_has_one_history_entry_per_batch_and_a_held_out_curve(client, finished):
    history = json.loads(_artifact(client, finished["id"], "history.json"))
    assert [h["iteration"] for h in history] == [1, 2, 3, 4, 5, 6]
    curve = json.loads(_artifact(client, finished["id"], "held_out.json"))
    assert [c["iteration"] for c in curve] == [1, 2, 3, 4, 5, 6]
    assert all(np.isfinite(c["objective"]) and c["objective"] > 0 for c in curve)
    assert _artifact(client, finished["id"], "held_out.png")[:4] == b"\x89PNG"
    rows = client.get(f"/jobs/{finished['id']}/history").json()
    assert [r["iteration"] for r in rows] == [2, 4, 6, 8, 10, 12]  # the live history counts images read


def test_an_online_job_has_maps_and_reconstructions_of_a_sample(client, finished):
    maps = client.get(f"/jobs/{finished['id']}/maps")
    assert maps.status_code == 200, maps.text
    with np.load(io.BytesIO(maps.content)) as archive:
        assert len(archive.files) == N_IMAGES and archive["image-00000"].shape == (K, SIDE, SIDE)
    recon = client.get(f"/jobs/{finished['id']}/reconstructions")
    assert recon.status_code == 200, recon.text
    assert np.load(io.BytesIO(recon.content)).shape == (N_IMAGES, 1, SIDE, SIDE)
    assert _artifact(client, finished["id"], "reconstructions.png")[:4] == b"\x89PNG"


def test_a_running_online_job_shows_its_latest_filters_and_is_cancelled_between_batches(client):
    dataset = client.post("/datasets", files=_files()).json()
    long = {**ONLINE, "n_epochs": None, "n_images": 100_000, "checkpoint_every": 1}
    job_id = client.post("/jobs", json={**SPEC, "learning": long, "dataset_id": dataset["id"]}).json()["id"]
    # 3 batches read: the checkpoint of batch 2 is written (a batch's checkpoint comes before the next batch)
    wait_for_job(client, job_id, lambda job: job["progress"]["iteration"] >= 6, timeout=240)
    latest = client.get(f"/jobs/{job_id}/filters/latest")
    assert latest.status_code == 200, latest.text
    assert np.load(io.BytesIO(latest.content)).shape == (K, 1, S, S)
    assert int(latest.headers["X-Deconv-Iteration"]) >= 2 and latest.headers["X-Deconv-Final"] == "false"
    assert client.delete(f"/jobs/{job_id}").status_code == 202
    job = wait_for_job(client, job_id, timeout=120)
    assert job["status"] == "cancelled" and 6 <= job["progress"]["iteration"] < 100_000
