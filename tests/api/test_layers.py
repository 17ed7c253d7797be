"""A two-layer job over HTTP: each layer's filters, maps and history fetched, layer-2 pixel-space filters
as a montage, an image encoded to layer 2 and reconstructed from layer 2 down to pixels, with its PSNR reported."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from solver.images.metrics import psnr
from solver.images.pictures import filter_montage
from solver.images.preprocess import FittedPreprocess
from tests.api.conftest import sample_png_parts, wait_for_job
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.timeout(240)
logger = logging.getLogger(__name__)

K1, K2, S, SIDE = 4, 10, 5, 32  # singles-and-doubles on 4 maps: 4 + 6 = 10 maps, each reading one or two
SPEC = {
    "layers": [
        {"n_filters": K1, "filter_size": S, "lam": 0.2},
        {"n_filters": K2, "filter_size": S, "lam": 0.05, "connectivity": "singles-and-doubles", "n_iter": 4},
    ],
    "n_iter": 3,
    "inference": {"method": "admm", "max_iter": 10},
    "filter_update": {"max_iter": 5},
    "seed": 2,
    "workers": 2,
}


def _array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


@pytest.fixture(scope="module")
def stack_job(live_service):
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        files = [("files", (n, d, "image/png")) for n, d in sample_png_parts(3, SIDE)]
        dataset = client.post("/datasets", files=files).json()
        response = client.post("/jobs", json={"dataset_id": dataset["id"], **SPEC})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        job = wait_for_job(client, job_id, lambda j: j["status"] == "succeeded", timeout=200)
        yield client, job, files


def test_both_layers_learn_and_their_objectives_decrease(stack_job):
    client, job, _ = stack_job
    assert (job["progress"]["layer"], job["progress"]["n_layers"]) == (2, 2)
    assert (job["progress"]["step"], job["progress"]["total_steps"], job["progress"]["fraction"]) == (7, 7, 1.0)
    history = client.get(f"/jobs/{job['id']}/history").json()
    for layer, n_iter in ((1, 3), (2, 4)):
        objective = np.array([h["objective"] for h in history if h["layer"] == layer])
        assert len(objective) == n_iter
        assert np.all(np.diff(objective) <= 1e-6 * objective[:-1]) and objective[-1] < objective[0]


def test_each_layer_has_its_filters_and_maps(stack_job):
    client, job, _ = stack_job
    f1 = _array(client.get(f"/jobs/{job['id']}/filters", params={"layer": 1}))
    f2 = _array(client.get(f"/jobs/{job['id']}/filters", params={"layer": 2}))
    assert f1.shape == (K1, 1, S, S) and f2.shape == (K2, K1, S, S)
    table = _array(client.get(f"/jobs/{job['id']}/artifacts/connectivity-L2.npy"))
    assert table.shape == (K2, K1) and table.sum(axis=1).tolist() == [1] * K1 + [2] * (K2 - K1)
    assert np.all(f2[~table] == 0)  # filters exist only where connected
    with np.load(io.BytesIO(client.get(f"/jobs/{job['id']}/maps", params={"layer": 2}).content)) as maps:
        assert sorted(maps.files) == [f"image-{n:05d}" for n in range(3)]
        assert maps["image-00000"].shape == (K2, SIDE, SIDE)


def test_layer_two_pixel_filters_cover_the_composite_support(stack_job):
    client, job, _ = stack_job
    response = client.get(f"/jobs/{job['id']}/filters", params={"layer": 2, "format": "png"})
    picture = np.asarray(Image.open(io.BytesIO(response.content)))
    composite = 2 * S - 1  # a one-hot layer-2 map reaches (s1 - 1) + (s2 - 1) + 1 pixels
    assert picture.shape == filter_montage(np.zeros((K2, 1, composite, composite))).shape


def test_an_image_encoded_to_layer_two_reconstructs_to_pixels(stack_job, record_property):
    client, job, files = stack_job
    response = client.post(f"/models/{job['id']}/encode", params={"layer": 2, "format": "npz"}, files=files[:1])
    with np.load(io.BytesIO(response.content)) as maps:
        z1, z2 = maps["L1"], maps["L2"]
    assert z1.shape == (1, K1, SIDE, SIDE) and z2.shape == (1, K2, SIDE, SIDE)
    images = {}
    for layer, z in ((1, z1), (2, z2)):
        buffer = io.BytesIO()
        np.save(buffer, z)
        response = client.post(
            "/reconstruct",
            data={"job_id": job["id"], "layer": str(layer)},
            files={"maps": ("maps.npy", buffer.getvalue())},
        )
        images[layer] = _array(response)
        assert images[layer].shape == (1, 1, SIDE, SIDE)
    # Both projections live in the space of layer 1's preprocessed input: preprocess the image as the model does.
    model = client.get(f"/jobs/{job['id']}/artifacts/model.json").json()
    pixels = np.asarray(Image.open(io.BytesIO(files[0][1][1])))[None, None]
    target = FittedPreprocess.from_dict(model["layers"][0]["preprocess"]).apply(pixels)
    quality = {layer: psnr(target, image) for layer, image in images.items()}
    logger.info("PSNR of the reconstruction from layer 1: %.1f dB, from layer 2: %.1f dB", quality[1], quality[2])
    record_property("psnr_db", quality)
    assert all(np.isfinite(q) and q > 0 for q in quality.values())
