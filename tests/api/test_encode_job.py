"""Encode jobs through the service: a finished model and an uploaded dataset in, every image's maps out, computed
by blocks on Ray Data actors and served by ``GET /jobs/{id}/maps`` as a learning job's maps are.

The maps must be those ``POST /models/{id}/encode`` gives for the same images with the same inference, whatever
the number of workers; bad specs are refused before anything is queued, naming the field; a running job stops
between blocks when cancelled; a block that cannot be encoded fails the job with an error that names it."""

from __future__ import annotations

import io
import time
import zipfile
from collections.abc import Iterator

import numpy as np
import pytest

from api import costs
from api.cli import main
from solver.config import AdmmConfig
from tests.api.conftest import LiveService, finished_job, start_service, stop_service, wait_for_job
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.ray

NPY = "application/x-npy"
N_IMAGES = 5
SHAPE = (1, 12, 12)
INFERENCE = {"method": "admm", "max_iter": 15}
REQUEST_BYTES = 40 * 2**20  # small: the default block is set by the cost model, not by the dataset's size


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _parts(images: np.ndarray) -> list[tuple[str, tuple[str, bytes, str]]]:
    return [("files", (f"image-{i}.npy", _npy(image), NPY)) for i, image in enumerate(images)]


def _upload(client, images: np.ndarray) -> str:
    response = client.post("/datasets", files=_parts(images))
    assert response.status_code == 201, response.text
    return response.json()["id"]


def _filters(seed: int) -> np.ndarray:
    f = np.random.default_rng(seed).standard_normal((3, 1, 3, 3)).astype(np.float32)
    return f / np.linalg.norm(f.reshape(3, -1), axis=1)[:, None, None, None]


def _stack_job(store, dataset_id: str) -> str:
    """A succeeded two-layer job whose layer 1 pools (1, 2, 2), written directly (its model's artifacts only)."""
    from solver import StackModel  # noqa: PLC0415
    from workers.distributed.checkpoint import npy_bytes  # noqa: PLC0415
    from workers.jobs.models import JobModel  # noqa: PLC0415

    second = np.random.default_rng(1).standard_normal((2, 3, 3, 3)).astype(np.float32)
    stack = StackModel.from_layers(
        [_filters(0), second], [None, None], [None, None], [0.1, 0.05], [1.0, 1.0], pool=[(1, 2, 2), None]
    )
    job, _ = store.submit({"dataset_id": dataset_id, "layers": []}, n_layers=2, n_iter=1)
    arrays, metadata = JobModel(stack, AdmmConfig(max_iter=10)).artifacts()
    for name, array in arrays.items():
        store.put_artifact(job.id, f"{name}.npy", npy_bytes(array), NPY)
    store.put_artifact(job.id, "model.json", metadata, "application/json")
    store.claim(job.id)
    store.finish(job.id, "succeeded")
    return job.id


@pytest.fixture(scope="module")
def served(tmp_path_factory, ray_cluster) -> Iterator[tuple[LiveService, str, str, str]]:  # noqa: F811
    """A service whose store holds a finished one-layer job (the model), a failed one (not a model), a finished
    two-layer job that pools and a dataset whose values overflow float32 once encoded."""
    from workers.jobs.store import JobStore  # noqa: PLC0415

    data_dir = tmp_path_factory.mktemp("encode-job")
    model_id = finished_job(data_dir, _filters(0))
    store = JobStore(data_dir)
    dataset_id = store.get_job(model_id).spec["dataset_id"]
    failed, _ = store.submit({"dataset_id": dataset_id, "layers": []}, n_layers=1, n_iter=1)
    store.claim(failed.id)
    store.finish(failed.id, "failed", "RuntimeError: for the test")
    stack_id = _stack_job(store, dataset_id)
    # values past the upload bound, so written directly: a dataset from the Python API or an older service
    huge = np.full((3, 1, 12, 12), 1e100, np.float64)  # its float64 maps do not fit in float32
    huge_id = store.add_dataset([(f"huge-{i}", image) for i, image in enumerate(huge)]).id
    store.close()
    service = start_service(data_dir, max_request_bytes=REQUEST_BYTES)
    yield service, model_id, failed.id, stack_id, huge_id
    stop_service(service)


@pytest.fixture(scope="module")
def client(served) -> Iterator:
    with httpx2.Client(base_url=served[0].url, timeout=120) as c:
        yield c


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(5).standard_normal((N_IMAGES, *SHAPE)).astype(np.float32)


@pytest.fixture(scope="module")
def dataset_id(client, images) -> str:
    return _upload(client, images)


def _shared_files(service: LiveService) -> set[str]:
    """The files of the service's artifact store (content-addressed, shared by every job)."""
    return {p.name for p in (service.data_dir / "artifacts").rglob("*") if p.is_file()}


def _post(client, dataset: str, **fields):
    return client.post(f"/datasets/{dataset}/encode", json=fields)


def _encode_job(client, model_id: str, dataset_id: str, **fields) -> dict:
    response = _post(client, dataset_id, model_id=model_id, **fields)
    assert response.status_code == 202, response.text
    assert response.headers["location"] == f"/jobs/{response.json()['id']}"
    return response.json()


def test_the_command_line_runs_zeilers_iterations_as_many_as_asked(served, client, images, dataset_id, capsys):
    """--max-iter is the iterations in all for zeiler too (spread over its β stages), as the encode route's."""
    argv = ["encode-job", served[1], "--dataset", dataset_id, "--url", served[0].url, "--no-progress"]
    status = main([*argv, "--method", "zeiler", "--max-iter", "7", "--block-size", str(N_IMAGES)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    job = client.get(f"/jobs/{captured.out.strip()}").json()
    assert job["spec"]["inference"]["method"] == "zeiler" and job["spec"]["inference"]["total_iter"] == 7
    assert wait_for_job(client, job["id"])["status"] == "succeeded"
    response = client.post(
        f"/models/{served[1]}/encode", params={"method": "zeiler", "max_iter": 7}, files=_parts(images)
    )
    assert response.status_code == 200, response.text
    expected = np.load(io.BytesIO(response.content))
    maps = _zip_maps(client, job["id"])
    tol = 50 * np.finfo(np.float32).eps * float(np.abs(expected).max())
    for i in range(N_IMAGES):
        np.testing.assert_allclose(maps[f"image-{i:05d}"], expected[i], rtol=0, atol=tol, err_msg=f"image {i}")


def _zip_maps(client, job_id: str) -> dict[str, np.ndarray]:
    response = client.get(f"/jobs/{job_id}/maps")
    assert response.status_code == 200, response.text
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        return {name.removesuffix(".npy"): np.load(archive.open(name)) for name in archive.namelist()}


def _posted_maps(client, model_id: str, images: np.ndarray) -> np.ndarray:
    response = client.post(
        f"/models/{model_id}/encode",
        params={"method": INFERENCE["method"], "max_iter": INFERENCE["max_iter"]},
        files=_parts(images),
    )
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content))


def test_maps_equal_the_encode_route_on_one_or_two_workers(served, client, images, dataset_id):
    model_id = served[1]
    block = 2
    jobs = [
        _encode_job(client, model_id, dataset_id, inference=INFERENCE, block_size=block, workers=workers)
        for workers in (1, 2)
    ]
    # the route encodes a request's images together as the job encodes a block's: the same batches, the same maps
    expected = np.concatenate(
        [_posted_maps(client, model_id, images[first : first + block]) for first in range(0, N_IMAGES, block)]
    )
    tol = 50 * np.finfo(np.float32).eps * float(np.abs(expected).max())
    assert np.abs(expected).max() > 0
    got = []
    for job in jobs:
        done = wait_for_job(client, job["id"])
        assert done["status"] == "succeeded", done
        assert done["progress"]["iteration"] == done["progress"]["n_iter"] == N_IMAGES
        assert done["links"]["maps"] == f"/jobs/{job['id']}/maps"
        assert done["spec"]["layer"] == 1 and done["spec"]["block_size"] == block
        maps = _zip_maps(client, job["id"])
        assert sorted(maps) == [f"image-{i:05d}" for i in range(N_IMAGES)]
        for i in range(N_IMAGES):
            np.testing.assert_allclose(maps[f"image-{i:05d}"], expected[i], rtol=0, atol=tol, err_msg=f"image {i}")
        one = client.get(f"/jobs/{job['id']}/maps", params={"image": 3})
        assert one.status_code == 200
        np.testing.assert_array_equal(np.load(io.BytesIO(one.content)), maps["image-00003"])
        got.append(np.stack([maps[f"image-{i:05d}"] for i in range(N_IMAGES)]))
    np.testing.assert_allclose(got[0], got[1], rtol=0, atol=tol)


def test_every_layer_of_a_pooling_stack_is_stored(served, client, images, dataset_id):
    stack_id = served[3]
    job = _encode_job(client, stack_id, dataset_id, inference=INFERENCE, block_size=3, workers=2)
    expected = {"L1": [], "L2": []}
    for first in (0, 3):
        response = client.post(
            f"/models/{stack_id}/encode",
            params={**INFERENCE, "format": "npz"},
            files=_parts(images[first : first + 3]),
        )
        assert response.status_code == 200, response.text
        code = np.load(io.BytesIO(response.content))
        for name in expected:
            expected[name].append(code[name])
    assert wait_for_job(client, job["id"])["status"] == "succeeded"
    for layer in (1, 2):
        want = np.concatenate(expected[f"L{layer}"])
        assert want.shape == ((N_IMAGES, 3, 12, 12) if layer == 1 else (N_IMAGES, 2, 6, 6))
        response = client.get(f"/jobs/{job['id']}/maps", params={"layer": layer})
        assert response.status_code == 200
        with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
            got = np.stack([np.load(archive.open(f"image-{i:05d}.npy")) for i in range(N_IMAGES)])
        np.testing.assert_allclose(got, want, rtol=0, atol=50 * np.finfo(np.float32).eps * float(np.abs(want).max()))
    response = client.get(f"/jobs/{job['id']}/maps", params={"layer": 3})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "layer"]
    switches = [a["name"] for a in client.get(f"/jobs/{job['id']}/artifacts").json() if a["name"].startswith("sw")]
    assert switches == ["switches-L1.part-000.npy", "switches-L1.part-001.npy"]


def test_the_command_line_uploads_encodes_and_saves_the_maps(served, client, images, tmp_path, capsys):
    folder = tmp_path / "images"
    folder.mkdir()
    for i, image in enumerate(images):
        np.save(folder / f"{i}.npy", image)
    out = tmp_path / "maps.npz"
    argv = ["encode-job", served[1], str(folder), "--url", served[0].url, "--out", str(out), "--no-progress"]
    status = main([*argv, "--method", "fista", "--max-iter", "3", "--block-size", "4"])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    job_id = captured.out.strip()
    job = client.get(f"/jobs/{job_id}").json()
    assert job["spec"]["inference"]["method"] == "fista" and job["spec"]["inference"]["max_iter"] == 3
    assert job["spec"]["block_size"] == 4
    saved = np.load(out)
    served_maps = _zip_maps(client, job_id)
    assert sorted(saved.files) == sorted(served_maps) == [f"image-{i:05d}" for i in range(N_IMAGES)]
    for name, maps in served_maps.items():
        np.testing.assert_array_equal(saved[name], maps)
    assert main(["status", job_id, "--url", served[0].url]) == 0
    assert f"progress   {N_IMAGES}/{N_IMAGES} images encoded (100%)" in capsys.readouterr().out
    assert main(["encode-job", served[1], "--url", served[0].url]) == 2  # neither images nor --dataset
    assert "give either IMAGE files" in capsys.readouterr().err


def test_default_block_is_the_largest_the_cost_model_allows(served, client):
    """No block size: the service takes the most images per block whose estimate fits the request limit."""
    model_id = served[1]
    big = np.zeros((70, 1, 64, 64), np.float32)
    dataset = _upload(client, big)

    def cost(n: int) -> costs.Estimate:
        layer = costs.Layer(3, 1, 3)
        return costs.encode_cost(
            [layer], (n, 1, 64, 64), method="admm", max_iter=200, boundary="circular", all_layers=True
        )

    largest = max(n for n in range(1, 65) if cost(n).bytes <= REQUEST_BYTES)
    assert 1 < largest < 64  # the limit, not the cap, decides here
    response = _post(client, dataset, model_id=model_id, block_size=64)
    assert response.status_code == 413, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "block_size"]
    job = _encode_job(client, model_id, dataset)
    assert job["spec"]["block_size"] == largest
    client.delete(f"/jobs/{job['id']}")  # nothing more to see from this one
    wait_for_job(client, job["id"])


def test_a_block_larger_than_the_dataset_is_costed_as_the_dataset(served, client):
    """64 images of 64² per block are over the request limit (above), but a dataset of 3 makes blocks of 3."""
    dataset = _upload(client, np.zeros((3, 1, 64, 64), np.float32))
    job = _encode_job(client, served[1], dataset, block_size=64)
    assert job["spec"]["block_size"] == 3
    client.delete(f"/jobs/{job['id']}")
    wait_for_job(client, job["id"])


@pytest.mark.parametrize(
    ("fields", "loc", "status", "words"),
    [
        ({"model_id": "0" * 32}, ["body", "model_id"], 422, "no learning job"),
        ({"dataset_id": "0" * 32}, ["body", "dataset_id"], 422, "Extra inputs"),
        ({"layer": 2}, ["body", "layer"], 422, "between 1 and 1"),
        ({"workers": 0}, ["body", "workers"], 422, "greater than or equal to 1"),
        ({"inference": {"method": "admm", "max_iter": 0}}, ["body", "inference", "admm", "max_iter"], 422, "greater"),
        ({"kind": "encode"}, ["body", "kind"], 422, "Extra inputs"),
    ],
)
def test_bad_specs_are_refused_naming_the_field(served, client, dataset_id, fields, loc, status, words):
    model_id = served[1]
    response = _post(client, dataset_id, **{"model_id": model_id, **fields})
    assert response.status_code == status, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == loc
    assert words in detail["msg"]


@pytest.mark.parametrize(
    ("images", "words"),
    [
        (np.zeros((2, 3, 12, 12), np.float32), "3 channel(s) but the filters"),
        (np.zeros((1, 1, 2, 2), np.float32), "larger than the images of 2x2"),
    ],
    ids=["channels", "too-small"],
)
def test_datasets_the_model_cannot_encode_are_refused(served, client, images, words):
    model_id = served[1]
    response = _post(client, _upload(client, images), model_id=model_id)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["path", "dataset_id"]
    assert words in detail["msg"]


def test_an_unknown_dataset_is_a_404(served, client):
    response = _post(client, "0" * 32, model_id=served[1])
    assert response.status_code == 404
    assert "0" * 32 in response.json()["detail"]


def test_mixed_shapes_are_refused(served, client):
    model_id = served[1]
    parts = [
        ("files", ("a.npy", _npy(np.zeros((1, 12, 12), np.float32)), NPY)),
        ("files", ("b.npy", _npy(np.zeros((1, 16, 16), np.float32)), NPY)),
    ]
    dataset = client.post("/datasets", files=parts).json()["id"]
    response = _post(client, dataset, model_id=model_id)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "dataset_id"]
    assert "mixes image shapes" in response.json()["detail"][0]["msg"]


def test_a_model_must_be_a_succeeded_learning_job(served, client, dataset_id):
    _, model_id, failed_id, *_ = served
    response = _post(client, dataset_id, model_id=failed_id)
    assert response.status_code == 409
    assert response.json()["detail"][0]["loc"] == ["body", "model_id"]
    assert "failed" in response.json()["detail"][0]["msg"]
    job = _encode_job(client, model_id, dataset_id, inference={"method": "fista", "max_iter": 2})
    response = _post(client, dataset_id, model_id=job["id"])
    assert response.status_code == 422  # an encode job is no model
    assert response.json()["detail"][0]["loc"] == ["body", "model_id"]
    assert wait_for_job(client, job["id"])["status"] == "succeeded"
    for path in (f"/jobs/{job['id']}/filters", f"/jobs/{job['id']}/reconstructions", f"/jobs/{job['id']}/model"):
        response = client.get(path)
        assert response.status_code == 404, path
        assert f"its model is job {model_id}" in response.json()["detail"]
    response = client.post(f"/models/{job['id']}/encode", files=_parts(np.zeros((1, *SHAPE), np.float32)))
    assert response.status_code == 404


def test_cancel_stops_between_blocks(served, client):
    model_id = served[1]
    many = np.random.default_rng(9).standard_normal((40, 1, 32, 32)).astype(np.float32)
    dataset = _upload(client, many)
    before = _shared_files(served[0])
    job = _encode_job(client, model_id, dataset, inference={"method": "admm", "max_iter": 200}, block_size=1)
    wait_for_job(client, job["id"], lambda j: j["progress"]["iteration"] >= 1, interval=0.02)
    assert client.delete(f"/jobs/{job['id']}").status_code == 202
    done = wait_for_job(client, job["id"])
    assert done["status"] == "cancelled"
    assert done["progress"]["iteration"] < len(many)
    assert client.get(f"/jobs/{job['id']}/maps").status_code == 409
    work = served[0].data_dir / "jobs" / job["id"]
    deadline = time.monotonic() + 30
    while work.exists() and time.monotonic() < deadline:  # the runner removes it just after the job's end
        time.sleep(0.05)
    assert not work.exists()
    assert _shared_files(served[0]) == before  # the blocks it had encoded went with its work store


def test_cancel_ends_a_block_deep_in_its_inference_within_seconds(served, client):
    """A block of 50 β stages of 1,000 iterations each takes many minutes: the cancel must not wait for it."""
    model_id = served[1]
    images = np.random.default_rng(10).standard_normal((2, 1, 96, 96)).astype(np.float32)
    dataset = _upload(client, images)
    inference = {"method": "zeiler", "n_beta": 50, "beta_factor": 2.0, "inner_iter": 1000}
    job = _encode_job(client, model_id, dataset, inference=inference, block_size=2)
    wait_for_job(client, job["id"], lambda j: j["status"] == "running", interval=0.02)
    time.sleep(3.0)  # the actor has started and is inside the block's inference
    asked = time.monotonic()
    assert client.delete(f"/jobs/{job['id']}").status_code == 202
    done = wait_for_job(client, job["id"], timeout=60, interval=0.05)
    took = time.monotonic() - asked
    assert done["status"] == "cancelled"
    assert done["progress"]["iteration"] == 0
    assert took < 5.0, f"the cancel took {took:.1f} s"


def test_a_block_that_fails_names_itself_in_the_job_error(served, client):
    model_id, dataset = served[1], served[4]
    job = _encode_job(client, model_id, dataset, inference={"method": "fista", "max_iter": 2}, block_size=3)
    done = wait_for_job(client, job["id"])
    assert done["status"] == "failed"
    assert "BlockError: block 0 (images 0..2)" in done["error"]
    assert "overflow float32" in done["error"]
