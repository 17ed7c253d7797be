"""DeconvClient against a live service (uvicorn on a loopback port, jobs on the session's Ray cluster): one tiny
job learned once for the module, then every result route, encode and reconstruct, cancel, errors, the API key."""

from __future__ import annotations

import hashlib
import io
import json
import socket

import httpx2
import numpy as np
import pytest
from PIL import Image

from api.client import DeconvAPIError, DeconvClient, JobWaitTimeout, describe_detail
from configs import samples_dir
from tests.api.conftest import sample_png_parts, start_service, stop_service

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

TINY = {
    "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}],
    "inference": {"method": "admm", "max_iter": 5},
    "filter_update": {"method": "fista", "max_iter": 5},
    "n_iter": 3,
    "seed": 0,
}


@pytest.fixture(scope="module")
def client(live_service):
    with DeconvClient(live_service.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def dataset(client) -> dict:
    return client.upload_dataset(sample_png_parts(3, 32))


@pytest.fixture(scope="module")
def jobs(client, dataset) -> dict:
    """The tiny job, followed to its end, and a long one behind it that is cancelled (queued or running)."""
    seen: list[dict] = []
    job = client.submit({**TINY, "dataset_id": dataset["id"]}, idempotency_key="tiny-job")
    doomed = client.submit({**TINY, "dataset_id": dataset["id"], "n_iter": 500})
    cancel_answer = client.cancel(doomed["id"])
    finished = client.wait(job["id"], poll=0.2, timeout=150, on_progress=seen.append)
    cancelled = client.wait(doomed["id"], poll=0.2, timeout=150)
    return {
        "submitted": job,
        "finished": finished,
        "seen": seen,
        "cancel_answer": cancel_answer,
        "cancelled": cancelled,
    }


@pytest.fixture(scope="module")
def job_id(jobs) -> str:
    assert jobs["finished"]["status"] == "succeeded", jobs["finished"]["error"]
    return jobs["finished"]["id"]


def _crop(left: int, top: int, size: int = 32) -> np.ndarray:
    picture = Image.open(samples_dir() / "camera.png").crop((left, top, left + size, top + size))
    return np.asarray(picture)[None, None]  # (1, 1, H, W) uint8


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- service, datasets, jobs ---------------------------------------------------------------------------------------


def test_health_needs_nothing(client):
    health = client.health()
    assert (health["status"], health["runner"]) == ("ok", "running")


def test_upload_reports_the_images(client, dataset):
    assert dataset["n_images"] == 3
    assert dataset["shapes"] == [[1, 32, 32]] * 3
    assert client.dataset(dataset["id"])["id"] == dataset["id"]


def test_upload_takes_a_folder_and_files(client, tmp_path):
    for name, data in sample_png_parts(2, 16):
        (tmp_path / name).write_bytes(data)
    (tmp_path / "notes.txt").write_text("not an image")
    files = sorted(tmp_path.glob("*.png"))
    assert client.upload_dataset([tmp_path])["n_images"] == 2
    assert client.upload_dataset([files[0], str(files[1])])["shapes"] == [[1, 16, 16]] * 2


def test_submit_returns_a_queued_job_and_an_idempotency_key_returns_it_again(client, dataset, jobs):
    assert jobs["submitted"]["status"] in ("queued", "running")
    again = client.submit({**TINY, "dataset_id": dataset["id"]}, idempotency_key="tiny-job")
    assert again["id"] == jobs["submitted"]["id"]


def test_wait_reports_progress_until_the_job_succeeds(jobs, job_id):
    seen = jobs["seen"]
    iterations = [j["progress"]["iteration"] for j in seen]
    assert seen[-1]["status"] == "succeeded"
    assert iterations == sorted(iterations) and iterations[-1] == 3
    assert jobs["finished"]["progress"]["fraction"] == 1.0


def test_a_cancelled_job_ends_cancelled(jobs):
    assert jobs["cancel_answer"]["status"] in ("cancelled", "running")
    assert jobs["cancelled"]["status"] == "cancelled"


def test_jobs_iterates_over_every_page(client, jobs, job_id):
    listed = list(client.jobs(page_size=1))
    ids = [j["id"] for j in listed]
    assert ids[:2] == [jobs["cancelled"]["id"], job_id]  # newest first
    assert len(set(ids)) == len(ids)
    assert [j["id"] for j in client.jobs(limit=1, page_size=1)] == ids[:1]
    assert [j["id"] for j in client.jobs(status="cancelled")] == [jobs["cancelled"]["id"]]


# -- results -------------------------------------------------------------------------------------------------------


def test_filters_are_k_c_s_s_float32_of_at_most_unit_norm(client, job_id):
    filters = client.filters(job_id)
    assert (filters.shape, filters.dtype) == ((4, 1, 5, 5), np.float32)
    assert np.all(np.linalg.norm(filters.reshape(4, -1), axis=1) <= 1 + 1e-5)
    np.testing.assert_array_equal(client.filters(job_id, layer=1), filters)


def test_filters_png_is_a_picture(client, job_id):
    picture = Image.open(io.BytesIO(client.filters_png(job_id)))
    assert picture.format == "PNG"
    assert min(picture.size) >= 5


def test_reconstructions_have_the_images_shape(client, job_id):
    recon = client.reconstructions(job_id)
    assert (recon.shape, recon.dtype) == ((3, 1, 32, 32), np.float32)
    assert np.isfinite(recon).all()
    assert Image.open(io.BytesIO(client.reconstructions_png(job_id))).format == "PNG"


def test_history_has_one_record_per_outer_iteration(client, job_id):
    history = client.history(job_id)
    assert [(h["layer"], h["iteration"]) for h in history] == [(1, 1), (1, 2), (1, 3)]
    assert np.isfinite([h["objective"] for h in history]).all()
    assert Image.open(io.BytesIO(client.history_png(job_id))).format == "PNG"


def test_maps_hold_one_array_per_training_image(client, job_id):
    maps = client.maps(job_id)
    assert sorted(maps) == ["image-00000", "image-00001", "image-00002"]
    assert {m.shape for m in maps.values()} == {(4, 32, 32)}
    np.testing.assert_array_equal(client.image_maps(job_id, 2), maps["image-00002"])  # one image alone
    with pytest.raises(DeconvAPIError, match="below the job's 3 images"):
        client.image_maps(job_id, 3)


def test_download_checks_the_sha256_and_writes_the_file(client, job_id, tmp_path):
    listed = {a["name"]: a for a in client.artifacts(job_id)}
    path = client.download(job_id, "filters-L1.npy", tmp_path)
    assert path == tmp_path / "filters-L1.npy"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == listed["filters-L1.npy"]["sha256"]
    np.testing.assert_array_equal(np.load(path), client.filters(job_id))
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left


def test_download_of_an_unknown_artifact_names_it(client, job_id, tmp_path):
    with pytest.raises(DeconvAPIError, match="no artifact 'nope.npy'") as info:
        client.download(job_id, "nope.npy", tmp_path / "x.npy")
    assert info.value.status == 404
    assert not (tmp_path / "x.npy").exists()


def test_a_damaged_download_leaves_nothing(tmp_path):
    def handler(request: httpx2.Request) -> httpx2.Response:
        if request.url.path.endswith("/artifacts"):
            return httpx2.Response(
                200,
                json=[
                    {
                        "name": "a.npy",
                        "sha256": "0" * 64,
                        "size": 3,
                        "media_type": "x",
                        "url": "/jobs/j/artifacts/a.npy",
                    }
                ],
            )
        return httpx2.Response(200, content=b"abc")

    with (
        DeconvClient("http://test", transport=httpx2.MockTransport(handler)) as client,
        pytest.raises(DeconvAPIError, match="arrived damaged"),
    ):
        client.download("j", "a.npy", tmp_path / "a.npy")
    assert list(tmp_path.iterdir()) == []


# -- encode and reconstruct ----------------------------------------------------------------------------------------


def test_encode_a_new_image_and_reconstruct_it(client, job_id):
    image = _crop(60, 70)
    maps = client.encode(job_id, image, max_iter=20)
    assert (maps.shape, maps.dtype) == ((1, 4, 32, 32), np.float32)
    images = client.reconstruct(maps, job_id=job_id)
    assert images.shape == image.shape
    assert np.isfinite(images).all()


def test_encode_takes_image_files(client, job_id):
    parts = sample_png_parts(2, 32)
    assert client.encode(job_id, parts, max_iter=5, layer=1).shape == (2, 4, 32, 32)


def test_reconstruct_with_given_filters(client, job_id):
    filters = client.filters(job_id)
    maps = client.encode(job_id, _crop(10, 10), max_iter=5)
    images = client.reconstruct(maps[0], filters=filters)
    np.testing.assert_allclose(images, client.reconstruct(maps, job_id=job_id), rtol=1e-4, atol=1e-5)
    assert Image.open(io.BytesIO(client.reconstruct_png(maps, filters=filters))).format == "PNG"


# -- errors --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "field", "value"),
    [
        ({"layers": [{"n_filters": 4, "filter_size": 5, "lam": -1.0}]}, "layers.0.lam", "-1.0"),
        ({"layers": [{"n_filters": 4, "filter_size": 99, "lam": 1.0}]}, "layers.0.filter_size", "99"),
        ({"n_iter": 0}, "n_iter", "0"),
        ({"learning_rate": 0.1}, "learning_rate", "0.1"),
    ],
)
def test_a_bad_spec_names_the_field_and_value(client, dataset, change, field, value):
    with pytest.raises(DeconvAPIError) as info:
        client.submit({**TINY, "dataset_id": dataset["id"], **change})
    assert info.value.status == 422
    assert info.value.client_error
    assert f"{field}: " in info.value.message
    assert f"(got {value})" in info.value.message


def test_an_unknown_dataset_is_named(client):
    with pytest.raises(DeconvAPIError, match=r"dataset_id: no dataset 'f{32}'"):
        client.submit({**TINY, "dataset_id": "f" * 32})


def test_an_unknown_job_is_a_404_naming_it(client):
    with pytest.raises(DeconvAPIError, match="job '0{32}' not found") as info:
        client.job("0" * 32)
    assert info.value.status == 404


def test_results_of_a_cancelled_job_are_a_conflict(client, jobs):
    with pytest.raises(DeconvAPIError, match="is cancelled") as info:
        client.filters(jobs["cancelled"]["id"])
    assert info.value.status == 409


def test_a_layer_out_of_range_names_the_query_field(client, job_id):
    with pytest.raises(DeconvAPIError, match=r"query\.layer: layer must be between 1 and 1") as info:
        client.filters(job_id, layer=2)
    assert info.value.status == 422


def test_reconstruct_needs_a_job_or_filters(client):
    with pytest.raises(DeconvAPIError, match="job_id: send either job_id"):
        client.reconstruct(np.zeros((1, 4, 8, 8), np.float32))


def test_an_unreachable_service_names_the_url():
    url = f"http://127.0.0.1:{_free_port()}"
    with DeconvClient(url, timeout=5) as client, pytest.raises(DeconvAPIError, match="cannot reach") as info:
        client.health()
    assert url in info.value.message
    assert (info.value.status, info.value.client_error) == (None, False)


def test_a_single_path_must_be_wrapped_in_a_list(client):
    with pytest.raises(TypeError, match="wrap it in a list"):
        client.upload_dataset("samples")


@pytest.mark.parametrize(
    ("detail", "message"),
    [
        ("job 'x' not found", "job 'x' not found"),
        ([{"loc": ["body", "layers", 0, "lam"], "msg": "bad", "input": -1}], "layers.0.lam: bad (got -1)"),
        ([{"loc": ["query", "layer"], "msg": "too big", "input": "9"}], "query.layer: too big (got '9')"),
        (
            [
                {"loc": ["body", "dataset_id"], "msg": "Field required", "type": "missing", "input": {}},
                {"loc": ["body", "n_iter"], "msg": "bad", "input": 0},
            ],
            "dataset_id: Field required; n_iter: bad (got 0)",
        ),
    ],
)
def test_describe_detail_names_fields_and_values(detail, message):
    assert describe_detail(detail) == message


# -- API key and timeouts ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory):
    """A second service with an API key, running no jobs (so a submitted job stays queued)."""
    service = start_service(tmp_path_factory.mktemp("keyed"), api_key="k", run_jobs=False)
    yield service
    stop_service(service)


def test_a_keyed_service_refuses_a_missing_or_wrong_key(keyed_service):
    with DeconvClient(keyed_service.url) as client:
        assert client.health()["status"] == "ok"  # health needs no key
        with pytest.raises(DeconvAPIError, match="X-API-Key") as info:
            list(client.jobs())
    assert info.value.status == 401
    with DeconvClient(keyed_service.url, api_key="wrong") as client, pytest.raises(DeconvAPIError) as info:
        client.upload_dataset(sample_png_parts(1, 16))
    assert info.value.status == 401


def test_a_keyed_service_works_with_the_key_and_wait_times_out(keyed_service):
    with DeconvClient(keyed_service.url, api_key="k") as client:
        dataset = client.upload_dataset(sample_png_parts(2, 16))
        job = client.submit({**TINY, "dataset_id": dataset["id"]})
        with pytest.raises(JobWaitTimeout, match=f"job {job['id']} is still queued after 0.3 s") as info:
            client.wait(job["id"], poll=0.1, timeout=0.3)
        assert info.value.job["status"] == "queued"
        assert [j["id"] for j in client.jobs()] == [job["id"]]


def test_json_error_bodies_round_trip_through_the_error():
    response = httpx2.Response(
        422,
        content=json.dumps({"detail": [{"loc": ["body", "x"], "msg": "m"}]}).encode(),
        headers={"content-type": "application/json"},
    )
    error = DeconvAPIError.from_response(response)
    assert (error.status, error.message) == (422, "HTTP 422: x: m")
    assert str(error) == error.message


def test_a_non_json_error_keeps_its_text():
    error = DeconvAPIError.from_response(httpx2.Response(502, content=b"Bad Gateway from the proxy"))
    assert error.message == "HTTP 502: Bad Gateway from the proxy"
    assert not error.client_error


def test_the_client_is_a_context_manager(live_service):
    with DeconvClient(live_service.url + "/") as client:
        assert client.base_url == live_service.url
    with pytest.raises(RuntimeError):
        client.health()


@pytest.mark.parametrize("url", ["notaurl", "127.0.0.1:8000", "ftp://host", "http://"])
def test_a_url_that_is_no_http_url_is_refused_naming_it(url):
    with pytest.raises(ValueError, match=rf"url: .* got {url!r}"):
        DeconvClient(url)


def test_a_missing_or_null_input_is_not_shown_as_none():
    detail = [
        {"loc": ["body", "dataset_id"], "msg": "Field required", "type": "missing", "input": None},
        {"loc": ["body", "n_iter"], "msg": "Input should be a valid integer", "type": "int_type", "input": None},
    ]
    assert describe_detail(detail) == "dataset_id: Field required; n_iter: Input should be a valid integer"
