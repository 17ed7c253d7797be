"""Pooling between layers and the 2011 model over HTTP: a two-layer job that max-pools layer 1's
maps in 3-D with switches, in both models (2010: layer 2 codes the pooled maps; 2011: every layer reconstructs the
pixels, with the pooling in its inference), run on Ray by the service; the switches stored as artifacts; an image
encoded to layer 2 with its switches and reconstructed to pixels through the unpooling."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
from PIL import Image

from solver.images.metrics import psnr
from solver.images.preprocess import FittedPreprocess
from solver.operators.pooling import pool3d
from tests.api.conftest import sample_png_parts, wait_for_job
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

httpx2 = pytest.importorskip("httpx2")
pytestmark = pytest.mark.timeout(300)
logger = logging.getLogger(__name__)

K1, K2, S, SIDE, POOL = 6, 8, 5, 31, (2, 2, 2)  # 31 is odd: the 2×2 pooling pads, 31 → 16


def _spec(model: str) -> dict:
    inference = {"method": "fista", "max_iter": 8} if model == "pixels" else {"method": "admm", "max_iter": 10}
    return {
        "layers": [
            {"n_filters": K1, "filter_size": S, "lam": 0.1, "pool": list(POOL)},
            {"n_filters": K2, "filter_size": S, "lam": 0.05, "connectivity": "random-doubles:2"},
        ],
        "n_iter": 3,
        "inference": inference,
        "filter_update": {"max_iter": 5},
        "seed": 4,
        "workers": 2,
        "reconstruct_to": model,
    }


def _array(response) -> np.ndarray:
    assert response.status_code == 200, response.text
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def _array_json(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture(scope="module", params=["below", "pixels"])
def pooled_job(request, live_service):
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        files = [("files", (n, d, "image/png")) for n, d in sample_png_parts(3, SIDE)]
        dataset = client.post("/datasets", files=files).json()
        response = client.post("/jobs", json={"dataset_id": dataset["id"], **_spec(request.param)})
        assert response.status_code == 202, response.text
        job_id = response.json()["id"]
        job = wait_for_job(client, job_id, lambda j: j["status"] == "succeeded", timeout=250)
        yield client, job, files, request.param


def test_both_layers_decrease_and_layer_two_reads_the_pooled_maps(pooled_job):
    client, job, _, _ = pooled_job
    history = client.get(f"/jobs/{job['id']}/history").json()
    for layer in (1, 2):
        objective = np.array([h["objective"] for h in history if h["layer"] == layer])
        assert len(objective) == 3
        assert np.all(np.diff(objective) <= 1e-6 * objective[:-1]) and objective[-1] < objective[0]
    f2 = _array(client.get(f"/jobs/{job['id']}/filters", params={"layer": 2}))
    assert f2.shape == (K2, K1 // POOL[0], S, S)  # 6 maps pooled by 2 across maps: layer 2 reads 3 channels


def test_the_switches_are_those_of_the_stored_maps(pooled_job):
    client, job, _, _ = pooled_job
    index = _array_json(client.get(f"/jobs/{job['id']}/artifacts/shards.json"))
    parts = [_array(client.get(f"/jobs/{job['id']}/artifacts/{name}")) for name in index["layers"][0]["switches"]]
    assert [len(p) for p in parts] == [p["count"] for p in index["parts"]] == [2, 1]  # 3 images on 2 shards
    switches = np.concatenate(parts)
    with np.load(io.BytesIO(client.get(f"/jobs/{job['id']}/maps", params={"layer": 1}).content)) as archive:
        maps = np.stack([archive[name] for name in sorted(archive.files)])
    assert switches.dtype == np.int32 and switches.shape == (3, K1 // 2, 16, 16)
    np.testing.assert_array_equal(switches, pool3d(maps, POOL)[1])
    assert index["layers"][1]["switches"] is None  # layer 2 does not pool
    names = [a["name"] for a in client.get(f"/jobs/{job['id']}/artifacts").json()]
    assert not [n for n in names if n.startswith("switches-L2")]
    one = _array(client.get(f"/jobs/{job['id']}/maps", params={"layer": 1, "image": 2}))
    np.testing.assert_array_equal(one, maps[2])  # one image alone, from the second shard's part
    past = client.get(f"/jobs/{job['id']}/maps", params={"layer": 1, "image": len(maps)})
    detail = past.json()["detail"][0]
    assert past.status_code == 422 and detail["loc"] == ["query", "image"] and f"{len(maps)} images" in detail["msg"]


def test_pixels_model_keeps_one_non_zero_per_pooling_block(pooled_job):
    client, job, _, model = pooled_job
    with np.load(io.BytesIO(client.get(f"/jobs/{job['id']}/maps", params={"layer": 1}).content)) as archive:
        maps = np.stack([archive[name] for name in sorted(archive.files)])
    pooled, switches = pool3d(maps, POOL)
    per_block = np.zeros(pooled.shape, dtype=int)
    padded = np.pad(maps != 0, ((0, 0), (0, 0), (0, 1), (0, 1)))  # 31 → 32: blocks of 2×2×2
    for k in range(2):
        for i in range(2):
            for j in range(2):
                per_block += padded[:, k::2, i::2, j::2]
    if model == "pixels":  # the 2011 inference pools and unpools its maps at every iteration
        assert per_block.max() == 1
    else:  # the 2010 inference does not: several non-zeros per block are common
        assert per_block.max() > 1


def test_an_image_encoded_to_layer_two_reconstructs_through_the_unpooling(pooled_job, record_property):
    client, job, files, model = pooled_job
    response = client.post(f"/models/{job['id']}/encode", params={"layer": 2, "format": "npz"}, files=files[:1])
    assert response.status_code == 200, response.text
    with np.load(io.BytesIO(response.content)) as archive:
        code = {name: archive[name] for name in archive.files}
    assert sorted(code) == ["L1", "L2", "S1"]
    np.testing.assert_array_equal(code["S1"], pool3d(code["L1"], POOL)[1])
    buffer = io.BytesIO()
    np.save(buffer, code["L2"])
    maps_part = ("maps.npy", buffer.getvalue())
    refused = client.post("/reconstruct", data={"job_id": job["id"], "layer": "2"}, files={"maps": maps_part})
    assert refused.status_code == 422 and refused.json()["detail"][0]["loc"] == ["body", "switches"]
    npz = io.BytesIO()
    np.savez(npz, **code)
    response = client.post(
        "/reconstruct",
        data={"job_id": job["id"], "layer": "2"},
        files={"maps": maps_part, "switches": ("code.npz", npz.getvalue())},
    )
    image = _array(response)
    assert image.shape == (1, 1, SIDE, SIDE)
    metadata = client.get(f"/jobs/{job['id']}/artifacts/model.json").json()
    assert metadata["reconstruct_to"] == model and metadata["layers"][0]["pool"] == list(POOL)
    pixels = np.asarray(Image.open(io.BytesIO(files[0][1][1])))[None, None]
    target = FittedPreprocess.from_dict(metadata["layers"][0]["preprocess"]).apply(pixels)
    quality = psnr(target, image)
    logger.info("%s model: PSNR of the layer-2 reconstruction through the unpooling %.1f dB", model, quality)
    record_property(f"psnr_db_{model}", quality)
    # measured: 31.1 dB for the 2011 model (every layer fits the pixels), 14.6 dB for the 2010 one with pooling
    assert quality > (20.0 if model == "pixels" else 5.0)


@pytest.mark.parametrize(
    ("change", "words"),
    [
        (lambda code: {**code, "L1": np.zeros((1, K1, 200, 200), np.float32)}, "is not the pooling [2, 2, 2] of 'L1'"),
        (lambda code: {**code, "S1": np.full_like(code["S1"], 10**9)}, "'S1' must hold indices"),
        (lambda code: {**code, "S1": np.full_like(code["S1"], -5)}, "got values in [-5, -5]"),
    ],
    ids=["maps of another size", "indices past the maps", "negative indices"],
)
def test_switches_that_do_not_fit_their_maps_are_a_422_naming_them(pooled_job, change, words):
    client, job, files, _ = pooled_job
    response = client.post(f"/models/{job['id']}/encode", params={"layer": 2, "format": "npz"}, files=files[:1])
    with np.load(io.BytesIO(response.content)) as archive:
        code = change({name: archive[name] for name in archive.files})
    maps, npz = io.BytesIO(), io.BytesIO()
    np.save(maps, code["L2"])
    np.savez(npz, **code)
    response = client.post(
        "/reconstruct",
        data={"job_id": job["id"], "layer": "2"},
        files={"maps": ("maps.npy", maps.getvalue()), "switches": ("code.npz", npz.getvalue())},
    )
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "switches"] and words in detail["msg"]


def test_encode_with_admm_on_a_pixels_model_names_the_method(pooled_job):
    client, job, files, model = pooled_job
    if model != "pixels":
        pytest.skip("only the 2011 model restricts the method")
    response = client.post(f"/models/{job['id']}/encode", params={"method": "admm"}, files=files[:1])
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "method"]


def test_client_and_cli_encode_then_reconstruct_from_layer_two_with_the_switches(pooled_job, tmp_path, capsys):
    from api.cli import main  # noqa: PLC0415
    from api.client import DeconvAPIError, DeconvClient  # noqa: PLC0415

    client, job, files, _ = pooled_job
    with DeconvClient(str(client.base_url)) as deconv:
        code = deconv.encode_layers(job["id"], [files[0][1][:2]], layer=2, max_iter=50)
        assert sorted(code) == ["L1", "L2", "S1"]
        with pytest.raises(DeconvAPIError, match="switches"):
            deconv.reconstruct(code["L2"], job_id=job["id"], layer=2)
        image = deconv.reconstruct(code["L2"], job_id=job["id"], layer=2, switches=code)
    assert image.shape == (1, 1, SIDE, SIDE)
    (tmp_path / files[0][1][0]).write_bytes(files[0][1][1])
    status = main(
        [
            "encode",
            job["id"],
            str(tmp_path / files[0][1][0]),
            "--layer",
            "2",
            "--max-iter",
            "50",
            "--out",
            str(tmp_path / "code.npz"),
            "--url",
            str(client.base_url),
        ]
    )
    assert status == 0, capsys.readouterr().err
    with np.load(tmp_path / "code.npz") as archive:
        assert sorted(archive.files) == ["L1", "L2", "S1"]
        np.testing.assert_allclose(archive["L2"], code["L2"], rtol=1e-6, atol=1e-7)  # the same encode
    status = main(
        [
            "encode",
            job["id"],
            str(tmp_path / files[0][1][0]),
            "--max-iter",
            "50",
            "--out",
            str(tmp_path / "maps.npy"),
            "--url",
            str(client.base_url),
        ]
    )
    assert status == 0 and np.load(tmp_path / "maps.npy").shape == code["L2"].shape
    status = main(
        [
            "encode",
            job["id"],
            str(tmp_path / "missing.png"),
            "--out",
            str(tmp_path / "x.npz"),
            "--url",
            str(client.base_url),
        ]
    )
    assert status == 2 and "missing.png" in capsys.readouterr().err
    out = tmp_path / "image.npy"
    status = main(
        [
            "reconstruct",
            "--maps",
            str(tmp_path / "maps.npy"),
            "--job",
            job["id"],
            "--layer",
            "2",
            "--switches",
            str(tmp_path / "code.npz"),
            "--out",
            str(out),
            "--url",
            str(client.base_url),
        ]
    )
    assert status == 0, capsys.readouterr().err
    np.testing.assert_allclose(np.load(out), image, rtol=1e-5, atol=1e-6)
    # the file `deconv encode` wrote serves as both: its L2 as the maps, its S1 as the switches
    both = str(tmp_path / "code.npz")
    argv = ["reconstruct", "--maps", both, "--job", job["id"], "--layer", "2", "--switches", both]
    status = main([*argv, "--out", str(tmp_path / "from-code.npy"), "--url", str(client.base_url)])
    assert status == 0, capsys.readouterr().err
    np.testing.assert_array_equal(np.load(tmp_path / "from-code.npy"), np.load(out))
    status = main([*argv[:-4], "--layer", "3", "--out", str(tmp_path / "x.npy"), "--url", str(client.base_url)])
    assert status == 2 and "no maps of layer 3 (L3); the file holds ['L1', 'L2', 'S1']" in capsys.readouterr().err
    (tmp_path / "text.png").write_bytes(b"\x89PNG\r\n\x1a\n not maps")
    status = main(
        [
            *argv[:2],
            str(tmp_path / "text.png"),
            *argv[3:],
            "--out",
            str(tmp_path / "y.npy"),
            "--url",
            str(client.base_url),
        ]
    )
    assert status == 2 and "not a .npy or .npz file (it starts with" in capsys.readouterr().err
    status = main(
        [
            "reconstruct",
            "--maps",
            str(tmp_path / "maps.npy"),
            "--job",
            job["id"],
            "--layer",
            "2",
            "--out",
            str(tmp_path / "refused.npy"),
            "--url",
            str(client.base_url),
        ]
    )
    assert status == 2 and "switches" in capsys.readouterr().err


def test_specs_that_do_not_fit_the_pooled_maps_are_refused_naming_the_field(live_service):
    with httpx2.Client(base_url=live_service.url, timeout=60) as client:
        files = [("files", (n, d, "image/png")) for n, d in sample_png_parts(1, SIDE)]
        dataset = client.post("/datasets", files=files).json()["id"]
        spec = _spec("below")
        spec["layers"][1]["filter_size"] = 17  # 31 -> 31 (circular) -> 16 after 2x2 pooling: 17 does not fit
        response = client.post("/jobs", json={"dataset_id": dataset, **spec})
        assert response.status_code == 422, response.text
        assert response.json()["detail"][0]["loc"] == ["body", "layers", 1, "filter_size"]
        spec["layers"][1]["filter_size"] = 16
        spec["layers"][1]["connectivity"] = [[True, True, True]] * K2  # the pooled layer 1 gives 3 channels
        response = client.post("/jobs", json={"dataset_id": dataset, **spec})
        assert response.status_code == 202, response.text
        client.delete(f"/jobs/{response.json()['id']}")
        bad = {**_spec("pixels"), "inference": {"method": "admm"}}
        response = client.post("/jobs", json={"dataset_id": dataset, **bad})
        assert response.status_code == 422 and "inference.method" in response.text
        bad = {**_spec("pixels"), "layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1, "pool": [0, 2, 2]}]}
        response = client.post("/jobs", json={"dataset_id": dataset, **bad})
        assert response.status_code == 422 and response.json()["detail"][0]["loc"][:4] == ["body", "layers", 0, "pool"]
