"""``GET /jobs/{id}/model`` and the live filters against the real server and a real job: the model file the client
downloads encodes offline exactly as ``POST /models/{id}/encode`` does; ``deconv model`` writes the same file; a
running job's newest checkpoint is served with its iteration. The refusals (409 while the job has not succeeded,
404 for an unknown job) are checked without Ray."""

from __future__ import annotations

import io
import time
from collections.abc import Iterator

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from api.app import create_app
from api.cli import main
from api.client import DeconvClient
from api.routes.model_file import MODEL
from api.settings import Settings
from solver import StackModel, encode_layers, load_model
from tests.api.conftest import LiveService, sample_png_parts, start_service, stop_service
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

pytestmark = pytest.mark.timeout(240)

SIDE = 32
SPEC = {
    "layers": [
        {"n_filters": 4, "filter_size": 5, "lam": 0.5},
        {"n_filters": 3, "filter_size": 3, "lam": 0.2, "connectivity": "random-doubles:2", "n_iter": 2},
    ],
    "n_iter": 3,
    "inference": {"method": "admm", "max_iter": 10},
    "filter_update": {"max_iter": 5},
    "seed": 2,
}


def _grey(parts: list[tuple[str, bytes]]) -> np.ndarray:
    """The images as the service decodes a grey PNG: (N, 1, H, W) float32 in [0, 1]."""
    return np.stack([np.asarray(Image.open(io.BytesIO(data)), dtype=np.float32)[None] / 255 for _, data in parts])


@pytest.fixture(scope="module")
def client(live_service: LiveService) -> Iterator[DeconvClient]:
    with DeconvClient(live_service.url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def job(client) -> dict:
    dataset = client.upload_dataset(sample_png_parts(3, SIDE))
    job = client.wait(client.submit({**SPEC, "dataset_id": dataset["id"]})["id"], timeout=180)
    assert job["status"] == "succeeded", job
    return job


def test_the_downloaded_model_encodes_bit_identically_to_the_service(client, job):
    model = client.model(job["id"])
    assert isinstance(model, StackModel)
    assert [layer.n_filters for layer in model.layers] == [4, 3]
    images = _grey(sample_png_parts(2, SIDE))[:, :, 3:27, 2:30]  # new images, of another shape than the training's
    served = client.encode_layers(job["id"], images, max_iter=50)
    offline = encode_layers(model, images, max_iter=50)  # the method comes from the model, as on the service
    # the same arrays through the same code path in the same process: no tolerance
    np.testing.assert_array_equal(offline.maps[0], served["L1"])
    np.testing.assert_array_equal(offline.maps[1], served["L2"])
    np.testing.assert_array_equal(model.layers[1].filters, client.filters(job["id"], layer=2))


def test_deconv_model_writes_the_file_the_route_serves(client, job, live_service, tmp_path, capsys):
    out = tmp_path / "sub" / "model.deconv"
    assert main(["model", job["id"], "--out", str(out), "--url", live_service.url]) == 0
    assert out.read_bytes() == client.model_file(job["id"])
    assert "wrote model file" in capsys.readouterr().out
    loaded = load_model(out)
    np.testing.assert_array_equal(loaded.layers[0].filters, client.filters(job["id"], layer=1))


def test_the_model_route_names_its_media_type_and_file(client, job):
    response = client._http.get(f"/jobs/{job['id']}/model")
    assert response.headers["content-type"] == MODEL
    assert response.headers["content-disposition"] == f'attachment; filename="{job["id"]}.deconv"'
    assert response.content[:2] == b"PK"


def test_a_running_job_serves_its_newest_checkpoint(client):
    dataset = client.upload_dataset(sample_png_parts(3, SIDE))
    spec = {**SPEC, "layers": SPEC["layers"][:1], "n_iter": 20}
    job_id = client.submit({**spec, "dataset_id": dataset["id"]})["id"]
    seen = None
    deadline = time.monotonic() + 180
    while seen is None and time.monotonic() < deadline:
        response = client._http.get(f"/jobs/{job_id}/filters/latest")
        state = client.job(job_id)
        if response.status_code == 200 and state["status"] == "running":
            seen = response, state["progress"]["iteration"]
        elif state["status"] != "running" and state["status"] != "queued":
            break
        time.sleep(0.05)
    assert seen is not None, "no checkpoint was served while the job ran"
    response, done = seen
    iteration = int(response.headers["x-deconv-iteration"])
    assert response.headers["x-deconv-final"] == "false"
    assert iteration % 2 == 0 and 2 <= iteration <= done  # the service checkpoints every 2 outer iterations
    filters = np.load(io.BytesIO(response.content))
    assert filters.shape == (4, 1, 5, 5)
    np.testing.assert_allclose(np.linalg.norm(filters.reshape(4, -1), axis=1), 1.0, rtol=1e-4)
    assert client.wait(job_id, timeout=180)["status"] == "succeeded"
    final, final_iteration = client.latest_filters(job_id)
    assert final_iteration == 20
    np.testing.assert_array_equal(final, client.filters(job_id))


# -- refusals, without Ray ------------------------------------------------------------------------------------------


@pytest.fixture
def held(tmp_path) -> TestClient:
    return TestClient(create_app(Settings(data_dir=tmp_path, run_jobs=False)))


def test_the_model_of_an_unfinished_job_is_a_409_saying_why(held):
    store = held.app.state.store
    dataset = store.add_dataset([("a.npy", np.zeros((1, 12, 12), np.float32))])
    job, _ = store.submit({"dataset_id": dataset.id, "layers": SPEC["layers"]}, n_layers=2, n_iter=3)
    store.claim_next()
    response = held.get(f"/jobs/{job.id}/model")
    assert (response.status_code, response.json()) == (
        409,
        {"detail": f"job {job.id} is running: its model file exists once it has succeeded"},
    )


def test_the_model_of_an_unknown_job_is_a_404(held):
    response = held.get(f"/jobs/{'b' * 32}/model")
    assert (response.status_code, response.json()) == (404, {"detail": f"job {'b' * 32!r} not found"})


def test_the_model_route_is_documented_with_its_media_type(held):
    operation = held.app.openapi()["paths"]["/jobs/{job_id}/model"]["get"]
    assert MODEL in operation["responses"]["200"]["content"]
    assert {"404", "409"} <= set(operation["responses"])


def test_deconv_model_of_a_queued_job_exits_2_with_the_services_message(tmp_path, capsys):
    service = start_service(tmp_path / "data", run_jobs=False)
    try:
        store = service.app.state.store
        dataset = store.add_dataset([("a.npy", np.zeros((1, 12, 12), np.float32))])
        job, _ = store.submit({"dataset_id": dataset.id, "layers": SPEC["layers"]}, n_layers=2, n_iter=3)
        out = tmp_path / "model.deconv"
        assert main(["model", job.id, "--out", str(out), "--url", service.url]) == 2
        assert f"job {job.id} is queued: its model file exists once it has succeeded" in capsys.readouterr().err
        assert not out.exists()
    finally:
        stop_service(service)
