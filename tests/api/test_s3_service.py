"""The service and ``deconv learn`` on an S3 store (a local moto server): a two-layer job of the 2011 model (one
pooling layer, so switches travel between layers) runs with its images, work and artifacts in the bucket and
nothing in the service's data folder, and gives the filters of the single-process learner; ``deconv learn`` reads
its images from ``s3://`` and writes its outputs there."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import yaml

from api.cli import main
from api.datalock import LOCK_NAME
from solver import learn_stack, reconstruct_from
from tests.api.conftest import start_service, stop_service, wait_for_job
from tests.s3server import s3_server  # noqa: F401  (the session's S3 server)
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)
from workers.jobs.objects import ObjectStore
from workers.jobs.spec import JobSpec

httpx2 = pytest.importorskip("httpx2")
pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

SIDE = 24
SPEC = {
    "layers": [
        {"n_filters": 4, "filter_size": 5, "lam": 0.1, "pool": [1, 2, 2]},
        {"n_filters": 3, "filter_size": 3, "lam": 0.05},
    ],
    "n_iter": 2,
    "inference": {"method": "fista", "max_iter": 8},
    "filter_update": {"max_iter": 4},
    "reconstruct_to": "pixels",
    "preprocess": None,
    "seed": 3,
    "workers": 2,
}


def _images() -> np.ndarray:
    return np.random.default_rng(11).standard_normal((3, 1, SIDE, SIDE)).astype(np.float32)


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


@pytest.fixture(scope="module")
def reference():
    """The same job in one process (solver.learn_stack on the same float32 pixels)."""
    config = JobSpec.model_validate({"dataset_id": "0" * 32, **SPEC}).learn_config()
    return learn_stack(_images(), config, backend="numpy")


@pytest.fixture(scope="module")
def s3_job(s3_server, ray_cluster, tmp_path_factory):  # noqa: F811
    artifacts = s3_server.url("artifacts")
    data_dir = tmp_path_factory.mktemp("s3-service")
    service = start_service(data_dir, artifacts=artifacts)
    try:
        with httpx2.Client(base_url=service.url, timeout=60) as client:
            files = [("files", (f"im{n}.npy", _npy(im), "application/x-npy")) for n, im in enumerate(_images())]
            dataset = client.post("/datasets", files=files)
            assert dataset.status_code == 201, dataset.text
            response = client.post("/jobs", json={"dataset_id": dataset.json()["id"], **SPEC})
            assert response.status_code == 202, response.text
            job = wait_for_job(client, response.json()["id"], timeout=240)
            assert job["status"] == "succeeded", job
            yield client, job, artifacts, data_dir
    finally:
        stop_service(service)


def test_the_job_on_s3_gives_the_single_process_filters(s3_job, reference):
    client, job, _, _ = s3_job
    for number, layer in enumerate(reference.layers, start=1):
        filters = _array(client.get(f"/jobs/{job['id']}/filters", params={"layer": number}))
        np.testing.assert_allclose(filters, layer.filters, rtol=1e-4, atol=1e-4 * np.abs(layer.filters).max())


def test_maps_and_reconstructions_stream_from_the_shards_parts_on_s3(s3_job, reference):
    client, job, _, _ = s3_job
    with np.load(io.BytesIO(client.get(f"/jobs/{job['id']}/maps", params={"layer": 1}).content)) as archive:
        assert archive.files == [f"image-{n:05d}" for n in range(3)]
        maps = np.stack([archive[name] for name in archive.files])
    scale = np.abs(reference.layers[0].maps).max()
    np.testing.assert_allclose(maps, reference.layers[0].maps, rtol=1e-3, atol=1e-3 * scale)
    one = _array(client.get(f"/jobs/{job['id']}/maps", params={"layer": 1, "image": 2}))
    np.testing.assert_array_equal(one, maps[2])
    out_of_range = client.get(f"/jobs/{job['id']}/maps", params={"image": 3})
    detail = out_of_range.json()["detail"][0]
    assert out_of_range.status_code == 422 and detail["loc"] == ["query", "image"] and "3 images" in detail["msg"]
    recon = _array(client.get(f"/jobs/{job['id']}/reconstructions"))
    expected = reconstruct_from(reference.model, reference.code, 2)
    assert recon.shape == (3, 1, SIDE, SIDE) and recon.dtype == np.float32
    np.testing.assert_allclose(recon, expected, rtol=1e-3, atol=1e-3 * np.abs(expected).max())


def test_nothing_of_the_job_is_kept_in_the_services_folder_or_left_in_the_work_store(s3_job):
    client, job, artifacts, data_dir = s3_job
    assert (
        sorted(p.name for p in data_dir.iterdir() if not p.name.startswith("deconv.sqlite3") and p.name != LOCK_NAME)
        == []
    )
    assert ObjectStore(artifacts).list("jobs") == []  # the work folder went once the artifacts were stored
    index = client.get(f"/jobs/{job['id']}/artifacts/shards.json").json()
    assert [p["count"] for p in index["parts"]] == [2, 1] and index["layers"][0]["switches"] is not None


def test_an_encode_job_reads_and_writes_the_bucket_only(s3_job):
    """The job's model encodes its own dataset again, as an encode job: blocks of 2 on 2 actors, every layer's
    maps those of POST /models/{id}/encode on the same blocks, nothing left in the work store or the folder."""
    client, job, artifacts, data_dir = s3_job
    inference = {"method": "fista", "max_iter": 8}
    response = client.post(
        f"/datasets/{job['dataset_id']}/encode",
        json={"model_id": job["id"], "inference": inference, "block_size": 2, "workers": 2},
    )
    assert response.status_code == 202, response.text
    files = [("files", (f"im{n}.npy", _npy(im), "application/x-npy")) for n, im in enumerate(_images())]
    expected = {1: [], 2: []}
    for block in (files[:2], files[2:]):
        answer = client.post(f"/models/{job['id']}/encode", params={**inference, "format": "npz"}, files=block)
        code = np.load(io.BytesIO(answer.content))
        for layer in expected:
            expected[layer].append(code[f"L{layer}"])
    encoded = wait_for_job(client, response.json()["id"], timeout=120)
    assert encoded["status"] == "succeeded", encoded
    for layer, blocks in expected.items():
        want = np.concatenate(blocks)
        with np.load(io.BytesIO(client.get(f"/jobs/{encoded['id']}/maps", params={"layer": layer}).content)) as got:
            maps = np.stack([got[name] for name in got.files])
        np.testing.assert_allclose(maps, want, rtol=0, atol=50 * np.finfo(np.float32).eps * np.abs(want).max())
    assert ObjectStore(artifacts).list("jobs") == []
    assert (
        sorted(p.name for p in data_dir.iterdir() if not p.name.startswith("deconv.sqlite3") and p.name != LOCK_NAME)
        == []
    )


@pytest.mark.timeout(180)
def test_deconv_learn_reads_images_from_s3_and_writes_its_outputs_there(s3_server, ray_session, tmp_path):  # noqa: F811
    images = ObjectStore(s3_server.url("images"))
    local = tmp_path / "images"
    local.mkdir()
    for n, image in enumerate(_images()):
        images.write(f"im{n}.npy", _npy(image[0]))
        (local / f"im{n}.npy").write_bytes(_npy(image[0]))
    config = {"layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.1}], "n_iter": 2, "preprocess": None}
    job_file = tmp_path / "job.yaml"
    job_file.write_text(yaml.safe_dump({**config, "images": images.url + "/"}))
    out = ObjectStore(s3_server.url("out"))
    on_s3_run = ["learn", str(job_file), "--workers", "2", "--out", out.url, "--checkpoint-every", "1"]
    assert main([*on_s3_run, "--no-progress"]) == 0
    local_run = ["learn", str(job_file), "--images", str(local), "--workers", "2", "--out", str(tmp_path / "o")]
    assert main([*local_run, "--no-progress"]) == 0
    on_s3 = np.load(io.BytesIO(out.read("filters.npy")))
    np.testing.assert_allclose(on_s3, np.load(tmp_path / "o" / "filters.npy"), rtol=1e-5, atol=1e-6)
    assert [h["iteration"] for h in json.loads(out.read("history.json"))] == [1, 2]
    assert "filters.png" in out.list()
    assert out.list("checkpoints") == ["ckpt-000001", "ckpt-000002"]  # each shard wrote its part there
