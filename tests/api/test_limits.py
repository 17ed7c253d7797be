"""Job specs that were accepted and then held the runner or failed at run time: each is refused at submission
with a 422 naming the field; and uploads that decode past the request's budget are a 413. The service holds its
jobs (no Ray)."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image

from tests.api.conftest import sample_png_parts, start_service, stop_service

httpx2 = pytest.importorskip("httpx2")

pytestmark = pytest.mark.timeout(120)

LAYER = {"n_filters": 4, "filter_size": 5, "lam": 0.5}
SPEC = {"layers": [LAYER], "n_iter": 2}


@dataclass
class Held:
    client: httpx2.Client
    dataset_id: str  # three 32x32 sample crops


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Iterator[Held]:
    service = start_service(
        tmp_path_factory.mktemp("limits"), run_jobs=False, max_decoded_values=2**20, max_job_filter_bytes=2**30
    )
    with httpx2.Client(base_url=service.url, timeout=60) as client:
        files = [("files", (name, data, "image/png")) for name, data in sample_png_parts(3, 32)]
        dataset_id = client.post("/datasets", files=files).json()["id"]
        yield Held(client, dataset_id)
    stop_service(service)


def _layer(**changes) -> dict:
    return {**SPEC, "layers": [{**LAYER, **changes}]}


@pytest.mark.parametrize(
    ("changes", "loc", "words"),
    [
        (_layer(lam=1e308), ["layers", 0, "lam"], "less than or equal"),
        ({"seed": -1}, ["seed"], "greater than or equal"),
        (_layer(pool=[1e12, 1e12, 1e12]), ["layers", 0, "pool", 0], "less than or equal"),
        (_layer(pool=[1, 40, 2]), ["layers", 0, "pool"], "40 rows"),
        (_layer(pool=[8, 2, 2]), ["layers", 0, "pool"], "8 maps"),
        ({"inference": {"method": "zeiler", "beta_factor": 1e308}}, ["inference", "zeiler", "beta_factor"], "less"),
        ({"inference": {"method": "zeiler", "beta_factor": 1000, "n_beta": 10}}, ["inference", "zeiler"], "β"),
        ({"inference": {"method": "zeiler", "n_beta": 10**6}}, ["inference", "zeiler", "n_beta"], "less"),
        ({"inference": {"method": "zeiler", "total_iter": 10**9}}, ["inference", "zeiler", "total_iter"], "less"),
        ({"inference": {"method": "admm", "max_iter": 10**12}}, ["inference", "admm", "max_iter"], "less"),
        ({"inference": {"method": "fista", "max_iter": 10**9}}, ["inference", "fista", "max_iter"], "less"),
        ({"filter_update": {"max_iter": 10**12}}, ["filter_update", "max_iter"], "less"),
        ({"layers": [LAYER] * 1000}, ["layers"], "at most 16"),
        ({"preprocess": {"contrast_normalise": True, "cn_size": 33}}, ["preprocess", "cn_size"], "larger than"),
        ({"preprocess": {"contrast_normalise": True, "cn_size": 10**6 + 1}}, ["preprocess", "cn_size"], "larger than"),
    ],
    ids=[
        "lam-1e308",
        "seed-negative",
        "pool-1e12",
        "pool-rows-over-maps",
        "pool-maps-over-filters",
        "beta-factor-1e308",
        "last-beta-too-large",
        "n-beta",
        "zeiler-total-iter",
        "admm-max-iter",
        "fista-max-iter",
        "filter-update-max-iter",
        "1000-layers",
        "cn-size-over-images",
        "cn-size-huge",
    ],
)
def test_a_spec_the_runner_could_not_finish_is_a_422_naming_the_field(held, changes, loc, words):
    response = held.client.post("/jobs", json={**SPEC, **changes, "dataset_id": held.dataset_id})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", *loc], detail
    assert words in detail["msg"], detail["msg"]


def test_filters_over_the_memory_budget_are_refused_naming_the_layer(held):
    # layer 2: 1024 x 1024 filters of 32x32 on the 34x34 maps of layer 1 (valid): 20 GiB with their transforms
    layers = [{"n_filters": 1024, "filter_size": 3, "lam": 0.1}, {"n_filters": 1024, "filter_size": 32, "lam": 0.1}]
    response = held.client.post("/jobs", json={"dataset_id": held.dataset_id, "layers": layers, "boundary": "valid"})
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "layers", 1, "n_filters"]
    assert "DECONV_MAX_JOB_FILTER_BYTES" in detail["msg"] and "layer 2" in detail["msg"]


def test_a_spec_within_the_caps_is_accepted(held):
    spec = {
        **_layer(pool=[2, 2, 2]),
        "inference": {"method": "zeiler", "beta_factor": 10, "n_beta": 6},
        "preprocess": {"contrast_normalise": True, "cn_size": 13},
        "seed": 3,
        "dataset_id": held.dataset_id,
    }
    response = held.client.post("/jobs", json=spec)
    assert response.status_code == 202, response.text


def _png(side: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.zeros((side, side), np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def test_an_upload_that_decodes_past_the_budget_is_a_413_naming_the_file(held):
    # 2^20 values: two 600x600 grey pictures fit (720,000), a third does not
    files = [("files", (f"{i}.png", _png(600), "image/png")) for i in range(3)]
    response = held.client.post("/datasets", files=files)
    assert response.status_code == 413, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "files"] and "files[2]" in detail["msg"] and "1048576" in detail["msg"]
    assert held.client.post("/datasets", files=files[:2]).status_code == 201


def test_an_archive_that_decodes_past_the_budget_is_a_413(held):
    buffer = io.BytesIO()
    np.savez_compressed(buffer, a=np.zeros((5, 1, 512, 512), np.uint8))
    response = held.client.post("/datasets", files=[("files", ("stack.npz", buffer.getvalue(), "application/zip"))])
    assert response.status_code == 413, response.text
    assert "stack.npz" in response.json()["detail"][0]["msg"]
