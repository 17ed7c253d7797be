"""``GET /jobs/{id}/filters/latest`` without Ray: a job held by the store (``run_jobs=False``), claimed as the runner
would claim it, with checkpoints and a finished layer written where the runner writes them."""

from __future__ import annotations

import io
import json
import uuid
from dataclasses import asdict

import numpy as np
import pytest
from PIL import Image
from starlette.testclient import TestClient

from api.app import create_app
from api.settings import Settings
from solver import StackModel, pixel_filters
from solver.images.pictures import filter_montage, png_bytes
from solver.models.learn import IterStats
from solver.operators.connectivity import connectivity_table
from workers.distributed.checkpoint import npy_bytes, write_checkpoint
from workers.jobs.live import latest_filters, layer_folder

K1, K2, S = 4, 3, 3
SPEC_LAYERS = [
    {"n_filters": K1, "filter_size": S, "lam": 0.5},
    {"n_filters": K2, "filter_size": S, "lam": 0.5, "connectivity": "random-doubles:2"},
]


@pytest.fixture(params=["local", "fsspec"])
def app(request, tmp_path):
    """The service with the default work folder, or with the jobs' work in an fsspec store (as on a cluster,
    where the shard actors of other nodes write it)."""
    work = None if request.param == "local" else f"memory://deconv-live-{uuid.uuid4().hex}"
    return create_app(Settings(data_dir=tmp_path, run_jobs=False, checkpoint_every=2, work_url=work))


@pytest.fixture
def client(app):
    return TestClient(app)


def _job(app, status: str = "running", n_iter=(6, 4)) -> str:
    store = app.state.store
    dataset = store.add_dataset([("a.npy", np.zeros((1, 12, 12), np.float32))])
    job, _ = store.submit(
        {"dataset_id": dataset.id, "layers": SPEC_LAYERS, "n_iter": n_iter[0]}, n_layers=2, n_iter=list(n_iter)
    )
    if status != "queued":
        assert store.claim_next().id == job.id
    if status in ("failed", "succeeded"):
        store.finish(job.id, status)
    return job.id


def _checkpoint(app, job_id: str, layer: int, iteration: int, filters: np.ndarray) -> None:
    history = [IterStats(i, 1.0, 1.0, 0.5, 0.1, 3) for i in range(1, iteration + 1)]
    write_checkpoint(
        layer_folder(app.state.store, job_id, layer).child("checkpoints"),
        iteration,
        filters,
        np.zeros_like(filters),
        [{"maps": np.zeros(2)}],
        history,
        {},
    )


def _finish_layer(app, job_id: str, layer: int, filters: np.ndarray, n_iter: int) -> None:
    folder = layer_folder(app.state.store, job_id, layer)
    folder.write("filters.npy", npy_bytes(filters))
    stats = [asdict(IterStats(i, 1.0, 1.0, 0.5, 0.1, 3)) for i in range(1, n_iter + 1)]
    folder.write("done.json", json.dumps({"stats": stats, "preprocess": None}).encode())


def _filters(k: int, c: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((k, c, S, S)).astype(np.float32)


def _png_array(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)))


def test_a_running_job_serves_its_newest_checkpoint_with_its_iteration(app, client):
    job = _job(app)
    _checkpoint(app, job, 1, 2, _filters(K1, 1, 0))
    newest = _filters(K1, 1, 1)
    _checkpoint(app, job, 1, 4, newest)
    response = client.get(f"/jobs/{job}/filters/latest")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    assert (
        response.headers["x-deconv-layer"],
        response.headers["x-deconv-iteration"],
        response.headers["x-deconv-final"],
        response.headers["cache-control"],
    ) == ("1", "4", "false", "no-store")
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), newest)
    picture = client.get(f"/jobs/{job}/filters/latest", params={"format": "png"})
    assert picture.headers["content-type"] == "image/png"
    np.testing.assert_array_equal(_png_array(picture.content), _png_array(png_bytes(filter_montage(newest))))


def test_a_damaged_checkpoint_is_skipped_for_the_one_before(app, client):
    job = _job(app)
    older = _filters(K1, 1, 0)
    _checkpoint(app, job, 1, 2, older)
    _checkpoint(app, job, 1, 4, _filters(K1, 1, 1))
    checkpoint = layer_folder(app.state.store, job, 1).child("checkpoints/ckpt-000004")
    checkpoint.write("filters.npy", npy_bytes(_filters(K1, 1, 2)))  # no longer the bytes its manifest hashed
    response = client.get(f"/jobs/{job}/filters/latest", params={"layer": 1})
    assert response.headers["x-deconv-iteration"] == "2"
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), older)


def test_before_the_first_checkpoint_the_answer_is_a_409_saying_so(app, client):
    job = _job(app)
    response = client.get(f"/jobs/{job}/filters/latest")
    assert response.status_code == 409
    assert response.json()["detail"] == (
        f"job {job} is running: layer 1 has no checkpoint yet (one every 2 outer iterations)"
    )


def test_a_finished_layer_serves_its_learned_filters_and_the_next_one_is_seen_in_pixel_space(app, client):
    job = _job(app)
    first = _filters(K1, 1, 3)
    _finish_layer(app, job, 1, first, n_iter=6)
    table = connectivity_table("random-doubles:2", K2, K1, seed=0)
    second = _filters(K2, K1, 4) * table[:, :, None, None]  # unconnected filters stay zero while learning
    _checkpoint(app, job, 2, 2, second)
    app.state.store.update_progress(job, layer=2, iteration=3, objective=1.0, sparsity=0.5, elapsed=1.0)

    done = client.get(f"/jobs/{job}/filters/latest", params={"layer": 1})
    assert (done.headers["x-deconv-iteration"], done.headers["x-deconv-final"]) == ("6", "true")
    np.testing.assert_array_equal(np.load(io.BytesIO(done.content)), first)

    live = client.get(f"/jobs/{job}/filters/latest", params={"format": "png"})  # default: the layer running
    assert (live.headers["x-deconv-layer"], live.headers["x-deconv-iteration"]) == ("2", "2")
    model = StackModel.from_layers([first, second], [None, table], [None, None], [0.5, 0.5], [1.0, 1.0])
    expected = png_bytes(filter_montage(pixel_filters(model, 2)))
    np.testing.assert_array_equal(_png_array(live.content), _png_array(expected))


def test_a_succeeded_job_serves_its_artifacts_with_the_layers_iteration_count(app, client):
    job = _job(app, "succeeded")
    store = app.state.store
    learned = _filters(K2, K1, 5)
    store.put_artifact(job, "filters-L2.npy", npy_bytes(learned), "application/x-npy")
    response = client.get(f"/jobs/{job}/filters/latest")  # default: the top layer
    assert (
        response.headers["x-deconv-layer"],
        response.headers["x-deconv-iteration"],
        response.headers["x-deconv-final"],
    ) == ("2", "4", "true")
    np.testing.assert_array_equal(np.load(io.BytesIO(response.content)), learned)


@pytest.mark.parametrize(("status", "code"), [("queued", 409), ("failed", 409)])
def test_a_job_without_filters_to_show_is_a_409(app, client, status, code):
    job = _job(app, status)
    response = client.get(f"/jobs/{job}/filters/latest")
    assert response.status_code == code
    assert f"job {job} is {status}" in response.json()["detail"]


def test_an_unknown_job_is_a_404_and_a_layer_out_of_range_names_the_field(app, client):
    assert client.get(f"/jobs/{'a' * 32}/filters/latest").status_code == 404
    job = _job(app)
    response = client.get(f"/jobs/{job}/filters/latest", params={"layer": 3})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "layer"]


def test_the_access_function_sees_nothing_once_the_work_folder_is_gone(app):
    job = _job(app)
    _checkpoint(app, job, 1, 2, _filters(K1, 1, 0))
    assert latest_filters(app.state.store, job, 1).iteration == 2
    app.state.store.job_work(job).remove_all()
    assert latest_filters(app.state.store, job, 1) is None
