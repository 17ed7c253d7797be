"""End to end against the real uvicorn server: upload, learn, fetch every result, encode and reconstruct; cancel;
concurrent and idempotent submissions; every kind of bad request answered with a 4xx that names the field.

One learning job is shared by the module (``finished``); the submission and bad-input tests go to services that
hold their jobs (``run_jobs=False``), so nothing but the shared job and the cancel tests needs Ray.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from solver.images.pictures import filter_montage
from tests.api.conftest import LiveService, sample_png_parts, start_service, stop_service, wait_for_job
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")

pytestmark = pytest.mark.timeout(180)

K, SIZE, N_ITER, SIDE = 5, 5, 3, 32  # K = 5: a 3-column montage with one empty slot
SPEC = {
    "layers": [{"n_filters": K, "filter_size": SIZE, "lam": 0.5}],
    "n_iter": N_ITER,
    "inference": {"method": "admm", "max_iter": 10},
    "filter_update": {"max_iter": 5},
    "seed": 1,
}
NPY = "application/x-npy"


def _png_files(n: int = 3, size: int = SIDE) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (name, data, "image/png")) for name, data in sample_png_parts(n, size)]


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def _picture(response) -> np.ndarray:
    assert (response.status_code, response.headers["content-type"]) == (200, "image/png"), response.text
    return np.asarray(Image.open(io.BytesIO(response.content)))


@dataclass
class Finished:
    client: httpx2.Client
    job: dict
    dataset: dict
    submitted: httpx2.Response


@pytest.fixture(scope="module")
def client(live_service: LiveService) -> Iterator[httpx2.Client]:
    with httpx2.Client(base_url=live_service.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def finished(client) -> Finished:
    """The module's learning job: three 32x32 sample crops, K = 5 filters of 5x5, 3 outer iterations."""
    dataset = client.post("/datasets", files=_png_files()).json()
    submitted = client.post("/jobs", json={**SPEC, "dataset_id": dataset["id"]})
    job = wait_for_job(client, submitted.json()["id"])
    assert job["status"] == "succeeded", job
    return Finished(client, job, dataset, submitted)


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Iterator[httpx2.Client]:
    """A service that takes jobs and runs none (no Ray), with a small upload limit, and a dataset."""
    service = start_service(tmp_path_factory.mktemp("held"), run_jobs=False, max_upload_bytes=256 * 1024)
    with httpx2.Client(base_url=service.url, timeout=60) as c:
        c.dataset_id = c.post("/datasets", files=_png_files()).json()["id"]
        yield c
    stop_service(service)


# -- learning and its results -----------------------------------------------------------------------------------------


def test_an_upload_gives_a_dataset(finished):
    again = finished.client.get(f"/datasets/{finished.dataset['id']}").json()
    assert finished.dataset["n_images"] == 3
    assert finished.dataset["shapes"] == [[1, SIDE, SIDE]] * 3
    assert again == finished.dataset


def test_a_submission_is_accepted_with_its_location(finished):
    body = finished.submitted.json()
    assert finished.submitted.status_code == 202
    assert finished.submitted.headers["location"] == f"/jobs/{body['id']}"
    assert body["status"] in ("queued", "running")
    assert body["spec"]["layers"][0]["n_filters"] == K


def test_a_finished_job_reports_its_progress_and_links(finished):
    job = finished.job
    assert (job["attempts"], job["error"], job["cancel_requested"]) == (1, None, False)
    assert (job["progress"]["iteration"], job["progress"]["fraction"]) == (N_ITER, 1.0)
    assert {"filters", "maps", "reconstructions", "history", "encode"} <= set(job["links"])


def test_the_filters_are_unit_norm_float32(finished):
    filters = _array(finished.client.get(f"/jobs/{finished.job['id']}/filters"))
    assert (filters.shape, filters.dtype) == ((K, 1, SIZE, SIZE), np.float32)
    assert np.linalg.norm(filters.reshape(K, -1), axis=1) == pytest.approx(1.0, abs=1e-4)


def test_the_filter_montage_has_the_grid_of_the_filters(finished):
    picture = _picture(finished.client.get(f"/jobs/{finished.job['id']}/filters", params={"format": "png"}))
    assert picture.shape == filter_montage(np.zeros((K, 1, SIZE, SIZE))).shape


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of every run of True in a 1-D mask."""
    edges = np.diff(np.concatenate([[0], mask.astype(int), [0]]))
    return list(zip(np.flatnonzero(edges == 1), np.flatnonzero(edges == -1), strict=True))


def test_the_filter_montage_has_one_tile_per_filter(finished):
    picture = _picture(finished.client.get(f"/jobs/{finished.job['id']}/filters", params={"format": "png"}))
    ink = picture < 255  # the separators (and an empty slot) are white
    bands = _runs(ink.any(axis=1))
    tiles = [len(_runs(ink[top:bottom].any(axis=0))) for top, bottom in bands]
    n_cols = math.ceil(math.sqrt(K))
    assert tiles == [n_cols, K - n_cols]  # 3 tiles, then 2 and the empty slot
    assert [bottom - top for top, bottom in bands] == [8 * SIZE] * 2  # each tap is 8x8 pixels


def test_the_reconstructions_have_the_images_shape(finished):
    recon = _array(finished.client.get(f"/jobs/{finished.job['id']}/reconstructions"))
    sheet = _picture(finished.client.get(f"/jobs/{finished.job['id']}/reconstructions", params={"format": "png"}))
    assert (recon.shape, recon.dtype) == ((3, 1, SIDE, SIDE), np.float32)
    assert np.isfinite(recon).all() and recon.std() > 0
    assert sheet.ndim == 2 and sheet.shape[1] >= 2 * SIDE  # each input beside its reconstruction


def test_the_maps_are_one_array_per_image(finished):
    response = finished.client.get(f"/jobs/{finished.job['id']}/maps")
    with np.load(io.BytesIO(response.content), allow_pickle=False) as maps:
        shapes = {name: maps[name].shape for name in maps.files}
    assert shapes == {f"image-{n:05d}": (K, SIDE, SIDE) for n in range(3)}


def test_the_history_has_one_non_increasing_entry_per_outer_iteration(finished):
    history = finished.client.get(f"/jobs/{finished.job['id']}/history").json()
    stored = json.loads(finished.client.get(f"/jobs/{finished.job['id']}/artifacts/history.json").content)
    objectives = np.array([h["objective"] for h in history])
    assert [(h["layer"], h["iteration"]) for h in history] == [(1, i) for i in range(1, N_ITER + 1)]
    assert np.all(np.diff(objectives) <= 1e-6 * np.abs(objectives[:-1]))
    assert [h["objective"] for h in stored] == pytest.approx(objectives.tolist())


def test_the_history_plot_is_a_png(finished):
    assert _picture(finished.client.get(f"/jobs/{finished.job['id']}/history", params={"format": "png"})).size > 0


def test_every_listed_artifact_downloads_with_its_sha256(finished):
    artifacts = finished.client.get(f"/jobs/{finished.job['id']}/artifacts").json()
    digests = {a["name"]: hashlib.sha256(finished.client.get(a["url"]).content).hexdigest() for a in artifacts}
    assert digests == {a["name"]: a["sha256"] for a in artifacts}
    index = json.loads(finished.client.get(f"/jobs/{finished.job['id']}/artifacts/shards.json").content)
    parts = {*index["layers"][0]["maps"], *index["reconstructions"]}
    assert len(parts) == 2 * len(index["parts"]) >= 2  # one part of each per shard, every one listed
    assert {
        "filters-L1.npy",
        "filters-L1.png",
        "shards.json",
        "reconstructions.png",
        "history.json",
        "history.png",
        "config.json",
        "model.json",
        *parts,
    } <= set(digests)


@pytest.fixture(scope="module")
def new_image() -> bytes:
    """A crop the job has not seen (the fourth sample image)."""
    return sample_png_parts(4, SIDE)[3][1]


@pytest.fixture(scope="module")
def encoded(finished, new_image) -> np.ndarray:
    response = finished.client.post(
        f"/models/{finished.job['id']}/encode",
        params={"max_iter": 30},
        files=[("files", ("new.png", new_image, "image/png"))],
    )
    return _array(response)


def test_a_new_image_is_encoded_with_the_learned_filters(encoded):
    assert (encoded.shape, encoded.dtype) == ((1, K, SIDE, SIDE), np.float32)
    assert np.isfinite(encoded).all() and np.abs(encoded).sum() > 0


def test_encoding_to_npz_gives_every_layer(finished, new_image):
    response = finished.client.post(
        f"/models/{finished.job['id']}/encode",
        params={"format": "npz", "max_iter": 5},
        files=[("files", ("new.png", new_image, "image/png"))],
    )
    with np.load(io.BytesIO(response.content), allow_pickle=False) as maps:
        assert {name: maps[name].shape for name in maps.files} == {"L1": (1, K, SIDE, SIDE)}


def test_maps_are_reconstructed_with_the_jobs_or_explicit_filters(finished, encoded):
    filters = finished.client.get(f"/jobs/{finished.job['id']}/filters").content
    with_job = _array(
        finished.client.post(
            "/reconstruct", data={"job_id": finished.job["id"]}, files={"maps": ("maps.npy", _npy(encoded), NPY)}
        )
    )
    with_file = _array(
        finished.client.post(
            "/reconstruct", files={"maps": ("maps.npy", _npy(encoded[0]), NPY), "filters": ("f.npy", filters, NPY)}
        )
    )
    assert with_job.shape == with_file.shape == (1, 1, SIDE, SIDE)
    np.testing.assert_allclose(with_file, with_job, rtol=1e-4, atol=1e-5)


def test_a_reconstruction_can_come_as_a_png(finished, encoded):
    response = finished.client.post(
        "/reconstruct",
        params={"format": "png"},
        data={"job_id": finished.job["id"]},
        files={"maps": ("maps.npy", _npy(encoded), NPY)},
    )
    assert _picture(response).shape[0] == SIDE


def test_an_unchanged_artifact_is_a_304(finished):
    url = f"/jobs/{finished.job['id']}/filters"
    first = finished.client.get(url)
    listed = {a["name"]: a["sha256"] for a in finished.client.get(f"/jobs/{finished.job['id']}/artifacts").json()}
    again = finished.client.get(url, headers={"If-None-Match": first.headers["etag"]})
    other = finished.client.get(url, headers={"If-None-Match": '"0000"'})
    assert first.headers["etag"] == f'"{listed["filters-L1.npy"]}"'
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", first.headers["etag"])
    assert (other.status_code, other.content) == (200, first.content)


@pytest.mark.parametrize(
    "header", ['"0000", {etag}', '{etag},"1111"', "*", "W/{etag}"], ids=["list", "list-no-space", "star", "weak"]
)
def test_if_none_match_takes_lists_star_and_weak_tags(finished, header):
    url = f"/jobs/{finished.job['id']}/maps"
    etag = finished.client.get(url).headers["etag"]
    assert finished.client.get(url, headers={"If-None-Match": header.format(etag=etag)}).status_code == 304


def test_a_finished_job_cannot_be_cancelled(finished):
    response = finished.client.delete(f"/jobs/{finished.job['id']}")
    assert response.status_code == 409
    assert "succeeded" in response.json()["detail"]
    assert finished.client.get(f"/jobs/{finished.job['id']}").json()["status"] == "succeeded"


def test_health_needs_no_key(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert (response.json()["status"], response.json()["runner"]) == ("ok", "running")


def test_the_served_openapi_document_is_the_apps(client, live_service):
    # the route set itself is pinned in test_app.py, without a server
    document = client.get("/openapi.json").json()
    assert document == json.loads(json.dumps(live_service.app.openapi()))
    assert "APIKeyHeader" in document["components"]["securitySchemes"]


# -- listing ----------------------------------------------------------------------------------------------------------


def _pages(client, limit: int, **params) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        body = client.get("/jobs", params={"limit": limit, **params, **({"cursor": cursor} if cursor else {})}).json()
        pages.append([j["id"] for j in body["items"]])
        cursor = body["next_cursor"]
        if cursor is None:
            return pages


def test_the_job_list_pages_through_every_job_once(held):
    ids = [held.post("/jobs", json={**SPEC, "dataset_id": held.dataset_id, "seed": s}).json()["id"] for s in range(7)]
    pages = _pages(held, 3)
    everything = [j for page in pages for j in page]
    assert len(everything) == len(set(everything))
    assert [j for j in everything if j in ids] == ids[::-1]  # newest first
    assert [len(p) for p in pages[:-1]] == [3] * (len(pages) - 1)


def test_the_job_list_filters_by_status(held):
    job_id = held.post("/jobs", json={**SPEC, "dataset_id": held.dataset_id, "seed": 99}).json()["id"]
    held.delete(f"/jobs/{job_id}")
    cancelled = [j for page in _pages(held, 100, status="cancelled") for j in page]
    assert job_id in cancelled
    assert {held.get(f"/jobs/{j}").json()["status"] for j in cancelled} == {"cancelled"}


# -- cancel ---------------------------------------------------------------------------------------------------------


@pytest.mark.ray
def test_a_running_job_is_cancelled_and_a_queued_one_at_once(finished):
    client = finished.client
    long = client.post("/jobs", json={**SPEC, "dataset_id": finished.dataset["id"], "n_iter": 500}).json()
    running = wait_for_job(client, long["id"], lambda j: j["progress"]["iteration"] >= 1)
    queued = client.post("/jobs", json={**SPEC, "dataset_id": finished.dataset["id"], "seed": 2}).json()
    cancel_queued = client.delete(f"/jobs/{queued['id']}")
    cancel_running = client.delete(f"/jobs/{long['id']}")
    stopped = wait_for_job(client, long["id"], timeout=60)
    assert running["status"] == "running"
    assert (cancel_queued.status_code, cancel_queued.json()["status"]) == (200, "cancelled")
    assert (cancel_running.status_code, cancel_running.json()["status"]) == (202, "running")
    assert cancel_running.json()["cancel_requested"] is True
    assert stopped["status"] == "cancelled"
    assert stopped["progress"]["iteration"] < 500
    assert client.get(f"/jobs/{queued['id']}").json()["attempts"] == 0  # it never ran
    assert client.get(f"/jobs/{long['id']}/filters").status_code == 409


# -- concurrent and idempotent submissions --------------------------------------------------------------------------


def _submit_together(url: str, body: dict, n: int, headers: dict | None = None) -> list[httpx2.Response]:
    """`n` threads, each with its own connection, post the same job at the same moment."""
    barrier = threading.Barrier(n)
    responses: list = [None] * n

    def submit(i: int) -> None:
        with httpx2.Client(base_url=url, timeout=60) as c:
            barrier.wait()
            responses[i] = c.post("/jobs", json=body, headers=headers)

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    return responses


def _all_ids(client) -> list[str]:
    return [j for page in _pages(client, 100) for j in page]


def test_twenty_concurrent_submissions_make_twenty_jobs(held):
    before = set(_all_ids(held))
    responses = _submit_together(str(held.base_url), {**SPEC, "dataset_id": held.dataset_id}, 20)
    ids = [r.json()["id"] for r in responses]
    listed = [j for j in _all_ids(held) if j not in before]
    assert [r.status_code for r in responses] == [202] * 20
    assert len(set(ids)) == 20
    assert sorted(listed) == sorted(ids)  # none lost, none listed twice


def test_twenty_submissions_with_one_idempotency_key_make_one_job(held):
    before = set(_all_ids(held))
    responses = _submit_together(
        str(held.base_url),
        {**SPEC, "dataset_id": held.dataset_id, "seed": 7},
        20,
        headers={"Idempotency-Key": "one-key-for-all"},
    )
    ids = {r.json()["id"] for r in responses}
    assert [r.status_code for r in responses] == [202] * 20
    assert len(ids) == 1
    assert [j for j in _all_ids(held) if j not in before] == list(ids)


def test_an_idempotency_key_reused_for_another_spec_is_a_409(held):
    body = {**SPEC, "dataset_id": held.dataset_id, "seed": 11}
    first = held.post("/jobs", json=body, headers={"Idempotency-Key": "k-409"})
    again = held.post("/jobs", json={**body, "seed": 12}, headers={"Idempotency-Key": "k-409"})
    assert first.status_code == 202
    assert again.status_code == 409
    assert again.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
    assert first.json()["id"] in again.json()["detail"][0]["msg"]


# -- bad requests that need a finished job --------------------------------------------------------------------------


def test_a_layer_the_job_does_not_have_is_a_422(finished):
    response = finished.client.get(f"/jobs/{finished.job['id']}/filters", params={"layer": 2})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "layer"]
    assert "between 1 and 1" in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("files", "words"),
    [
        ([("files", ("notes.txt", b"not an image", "text/plain"))], "notes.txt"),
        ([("files", ("tiny.npy", _npy(np.zeros((1, 3, 3), np.float32)), NPY))], "3x3"),
        (
            [
                ("files", ("a.npy", _npy(np.zeros((1, 16, 16), np.float32)), NPY)),
                ("files", ("b.npy", _npy(np.zeros((1, 20, 20), np.float32)), NPY)),
            ],
            "one shape",
        ),
        ([("files", ("c.npy", _npy(np.zeros((2, 16, 16), np.float32)), NPY))], "channel"),
        ([("files", ("many.npy", _npy(np.zeros((65, 1, 8, 8), np.float32)), NPY))], "65 images"),
    ],
    ids=["not-an-image", "smaller-than-the-filters", "mixed-shapes", "wrong-channels", "too-many"],
)
def test_a_bad_image_to_encode_is_a_422_naming_it(finished, files, words):
    response = finished.client.post(f"/models/{finished.job['id']}/encode", params={"max_iter": 2}, files=files)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "files"]
    assert words in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(
    ("maps", "data", "loc", "words"),
    [
        (np.zeros((1, K + 1, SIDE, SIDE), np.float32), {}, ["body", "maps"], f"K = {K + 1}"),
        (np.zeros((1, K, SIDE, SIDE), np.float32), {"layer": 2}, ["body", "layer"], "layer"),
    ],
    ids=["wrong-k", "layer-beyond"],
)
def test_bad_maps_for_a_job_are_a_422(finished, maps, data, loc, words):
    response = finished.client.post(
        "/reconstruct", data={"job_id": finished.job["id"], **data}, files={"maps": ("maps.npy", _npy(maps), NPY)}
    )
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == loc
    assert words in response.json()["detail"][0]["msg"]
