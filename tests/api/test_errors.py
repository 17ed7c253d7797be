"""Bad requests against the real server: each gets a 4xx (never a 500) whose JSON names the field or the value at
fault; an API key guards every route but /health. The services here hold their jobs (no Ray)."""

from __future__ import annotations

import base64
import io
import struct
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pytest

from tests.api.conftest import finished_job, sample_png_parts, start_service, stop_service

httpx2 = pytest.importorskip("httpx2")

pytestmark = pytest.mark.timeout(120)

SPEC = {"layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}], "n_iter": 2}
UNKNOWN = "f" * 32
NPY = "application/x-npy"
UPLOAD_LIMIT = 256 * 1024


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
        + chunk(b"IEND", b"")
    )


@dataclass
class Held:
    client: httpx2.Client
    dataset_id: str
    job_id: str  # queued, never run


@pytest.fixture(scope="module")
def held(tmp_path_factory) -> Iterator[Held]:
    service = start_service(tmp_path_factory.mktemp("errors"), run_jobs=False, max_upload_bytes=UPLOAD_LIMIT)
    with httpx2.Client(base_url=service.url, timeout=60) as client:
        files = [("files", (name, data, "image/png")) for name, data in sample_png_parts(3, 32)]
        dataset_id = client.post("/datasets", files=files).json()["id"]
        job_id = client.post("/jobs", json={**SPEC, "dataset_id": dataset_id}).json()["id"]
        yield Held(client, dataset_id, job_id)
    stop_service(service)


def _names(response, field: str) -> bool:
    """Whether the error JSON names `field`: in a validation item's loc or message, or in the detail text."""
    detail = response.json()["detail"]
    if isinstance(detail, str):
        return field in detail
    return any(field in [str(part) for part in item["loc"]] or field in item["msg"] for item in detail)


def _job(**changes) -> dict:
    return {**SPEC, **changes}


def _layer(**changes) -> dict:
    return _job(layers=[{**SPEC["layers"][0], **changes}])


# -- job specs ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (_job(oops=1), ["body", "oops"]),
        (_layer(lam=0), ["body", "layers", 0, "lam"]),
        (_layer(lam=-1.0), ["body", "layers", 0, "lam"]),
        (_layer(filter_size=33), ["body", "layers", 0, "filter_size"]),
        (_layer(n_filters=2000), ["body", "layers", 0, "n_filters"]),
        (_layer(connectivity="sometimes"), ["body", "layers", 0, "connectivity"]),
        (_layer(connectivity=[[1.0]] * 4), ["body", "layers", 0, "connectivity"]),
        (_layer(connectivity=[["yes"]] * 4), ["body", "layers", 0, "connectivity"]),
        (_job(n_iter=0), ["body", "n_iter"]),
        (_job(inference={"method": "magic"}), ["body", "inference"]),
        (_job(workers=0), ["body", "workers"]),
        (_job(backend="tpu"), ["body", "backend"]),
        ({k: v for k, v in SPEC.items() if k != "layers"}, ["body", "layers"]),
        (_job(resources={"cpus": 17}), ["body", "resources", "cpus"]),
        (_job(resources={"cpus": 1.5}), ["body", "resources", "cpus"]),
        (_job(resources={"gpus": 2}), ["body", "resources", "gpus"]),
        (_job(backend="numpy", resources={"gpus": 0.5}), ["body", "resources", "gpus"]),
        (_job(resources={"custom": {"CPU": 1}}), ["body", "resources", "custom"]),
        (_job(resources={"custom": {"highmem": 0}}), ["body", "resources", "custom"]),
        (_job(resources={"strategy": "ANYWHERE"}), ["body", "resources", "strategy"]),
        (_job(resources={"memory": 1}), ["body", "resources", "memory"]),
    ],
    ids=[
        "unknown-field",
        "lam-0",
        "lam-negative",
        "filters-larger-than-images",
        "too-many-filters",
        "connectivity",
        "connectivity-floats",
        "connectivity-strings",
        "n_iter",
        "algorithm",
        "workers",
        "backend",
        "missing-layers",
        "cpus-over-the-limit",
        "cpus-fraction-above-1",
        "gpus-over-the-limit",
        "gpus-with-numpy",
        "custom-built-in-name",
        "custom-zero",
        "strategy",
        "resources-unknown-field",
    ],
)
def test_a_bad_spec_is_a_422_naming_the_field(held, body, loc):
    response = held.client.post("/jobs", json={"dataset_id": held.dataset_id, **body})
    assert response.status_code == 422, response.text
    assert [item["loc"][: len(loc)] for item in response.json()["detail"]][0] == loc


@pytest.mark.parametrize("dataset_id", [UNKNOWN, "../../etc/passwd", 42])
def test_a_spec_naming_no_dataset_is_a_422(held, dataset_id):
    response = held.client.post("/jobs", json=_job(dataset_id=dataset_id))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "dataset_id"]


@pytest.mark.parametrize("value", ["NaN", "Infinity", "-Infinity"])
def test_a_non_finite_number_in_the_json_is_a_422_naming_the_field(held, value):
    body = f'{{"dataset_id": "{held.dataset_id}", "layers": [{{"n_filters": 4, "filter_size": 5, "lam": {value}}}]}}'
    response = held.client.post("/jobs", content=body.encode(), headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "layers", 0, "lam"]


@pytest.mark.parametrize(
    ("field", "value"),
    [("n_iter", 10**30), ("seed", 10**30), ("seed", 2**63), ("seed", -1)],
    ids=["n_iter-huge", "seed-huge", "seed-past-int64", "seed-negative"],
)
def test_an_integer_out_of_range_is_a_422_naming_the_field(held, field, value):
    # a seed numpy refuses (negative) would fail the job only once it runs; one past int64 does not fit the
    # integer columns and arrays that carry it
    response = held.client.post("/jobs", json=_job(dataset_id=held.dataset_id, **{field: value}))
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", field]


def test_the_largest_int64_seed_is_taken(held):
    response = held.client.post("/jobs", json=_job(dataset_id=held.dataset_id, seed=2**63 - 1))
    assert response.status_code == 202, response.text


def test_malformed_json_is_a_422_at_the_body(held):
    response = held.client.post("/jobs", content=b'{"dataset_id": "ab', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert (response.json()["detail"][0]["type"], response.json()["detail"][0]["loc"][0]) == ("json_invalid", "body")


@pytest.mark.parametrize("path", ["/jobs", "/datasets/{dataset}/encode"])
def test_json_nested_too_deeply_is_a_422_about_the_json_body(held, path):
    body = b"[" * 5000 + b"]" * 5000  # past the parser's recursion limit
    response = held.client.post(
        path.format(dataset=held.dataset_id), content=body, headers={"content-type": "application/json"}
    )
    assert response.status_code == 422, response.text
    item = response.json()["detail"][0]
    assert item["loc"] == ["body"]
    assert "JSON body" in item["msg"] and "nested too deeply" in item["msg"]
    assert "multipart" not in item["msg"]


def test_a_json_body_that_is_not_utf8_is_a_422_about_the_json_body(held):
    response = held.client.post("/jobs", content=b'{"a": "\xff\xfe"}', headers={"content-type": "application/json"})
    assert response.status_code == 422, response.text
    assert "JSON body" in response.json()["detail"][0]["msg"]
    assert "multipart" not in response.text


@pytest.mark.parametrize("dtype", [">f4", ">i2", ">f8"])
def test_an_npy_of_the_other_byte_order_is_taken_with_its_values(held, dtype):
    values = np.arange(16 * 16).reshape(16, 16).astype(dtype)
    response = held.client.post("/datasets", files=[("files", ("big-endian.npy", _npy(values), NPY))])
    assert response.status_code == 201, response.text
    dataset = response.json()["id"]
    stored = held.client.get(f"/datasets/{dataset}").json()
    assert stored["dtypes"] == [np.dtype(dtype).newbyteorder("=").name]


def test_a_dataset_of_mixed_dtypes_cannot_be_learned_naming_the_dtypes(held):
    grey8 = ("a.npy", _npy(np.zeros((16, 16), np.uint8)), NPY)
    grey16 = ("b.npy", _npy(np.zeros((16, 16), np.uint16)), NPY)
    dataset = held.client.post("/datasets", files=[("files", grey8), ("files", grey16)]).json()
    response = held.client.post("/jobs", json=_job(dataset_id=dataset["id"]))
    assert response.status_code == 422
    message = response.json()["detail"][0]["msg"]
    assert "uint8" in message and "uint16" in message and "one shape and dtype" in message


def test_a_dataset_of_mixed_shapes_cannot_be_learned(held):
    small, large = sample_png_parts(1, 16)[0], sample_png_parts(1, 24)[0]
    dataset = held.client.post("/datasets", files=[("files", small), ("files", large)]).json()
    response = held.client.post("/jobs", json=_job(dataset_id=dataset["id"]))
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "dataset_id"]
    assert "one shape" in response.json()["detail"][0]["msg"]


def test_a_json_body_over_the_limit_is_a_413(held):
    response = held.client.post("/jobs", json=_job(dataset_id=held.dataset_id, padding="x" * (2 * 2**20)))
    assert response.status_code == 413


# -- uploads --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "data", "words"),
    [
        ("notes.txt", b"this is not a picture at all", "notes.txt"),
        ("cut.png", sample_png_parts(1, 64)[0][1][:300], "cut.png"),
        (
            "huge.png",  # past Pillow's own bound too, which it checks first: only the service's limit is named
            _png_header_only(100_000, 100_000),
            "image of 10000000000 pixels is larger than the limit of 16777216 pixels (DECONV_MAX_IMAGE_PIXELS)",
        ),
        ("wide.png", _png_header_only(5000, 4000), "pixels (DECONV_MAX_IMAGE_PIXELS)"),
        ("nan.npy", _npy(np.full((4, 4), np.nan)), "NaN"),
        ("vast.npy", _npy(np.full((16, 16), 1e38, dtype=np.float32)), "float32 values up to 1e+38 in magnitude"),
        ("large.npy", _npy(np.full((16, 16), -1e20, dtype=np.float32)), "more than the 1e+18 taken"),
        ("int64.npy", _npy(np.full((16, 16), np.iinfo(np.int64).min)), "more than the 1e+18 taken"),
        ("wide.npy", _npy(np.full((16, 16), 1e300)), "float64 values up to 1e+300 in magnitude, more than the 1e+150"),
        ("evil.npy", _npy(np.array([[object()] * 2] * 2, dtype=object), allow_pickle=True), "dtype object"),
        ("empty.zip", b"PK\x05\x06" + b"\0" * 18, "an empty zip archive (it holds no file)"),
    ],
    ids=[
        "not-an-image",
        "truncated-png",
        "huge-dimensions",
        "over-pixel-limit",
        "nan-npy",
        "vast-npy",
        "large-npy",
        "int64-npy",
        "float64-npy",
        "object-npy",
        "empty-zip",
    ],
)
def test_a_bad_upload_is_a_422_naming_the_file(held, name, data, words):
    response = held.client.post("/datasets", files=[("files", (name, data, "application/octet-stream"))])
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "files"]
    assert words in response.json()["detail"][0]["msg"]


@pytest.mark.parametrize(("value", "dtype"), [(-1e18, np.float32), (1e150, np.float64)])
def test_values_up_to_the_bound_are_taken(held, value, dtype):
    files = [("files", ("near.npy", _npy(np.full((16, 16), value, dtype=dtype)), NPY))]
    assert held.client.post("/datasets", files=files).status_code == 201


def test_an_encode_upload_with_values_too_large_is_a_422_naming_the_file(tmp_path):
    job_id = finished_job(tmp_path, np.ones((2, 1, 3, 3), np.float32))
    service = start_service(tmp_path, run_jobs=False)
    try:
        files = [("files", ("large.npy", _npy(np.full((16, 16), 1e20, dtype=np.float32)), NPY))]
        response = httpx2.post(f"{service.url}/models/{job_id}/encode", files=files, timeout=60)
    finally:
        stop_service(service)
    assert response.status_code == 422, response.text
    item = response.json()["detail"][0]
    assert item["loc"] == ["body", "files"]
    assert "large.npy" in item["msg"] and "more than the 1e+18 taken" in item["msg"]


def test_an_upload_without_files_is_a_422(held):
    response = held.client.post("/datasets", data={"other": "x"})
    assert response.status_code == 422
    assert _names(response, "files")


@pytest.mark.parametrize("over", [10, 2**21], ids=["just-over", "far-over"])
def test_an_upload_over_the_limit_is_a_413_naming_the_setting(held, over):
    response = held.client.post("/datasets", files=[("files", ("big.npy", b"\0" * (UPLOAD_LIMIT + over), NPY))])
    assert response.status_code == 413
    assert "DECONV_MAX_UPLOAD_BYTES" in response.text


# -- ids, paths and queries -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "path",
    [
        f"/jobs/{UNKNOWN}",
        f"/jobs/{UNKNOWN}/filters",
        f"/jobs/{UNKNOWN}/history",
        f"/jobs/{UNKNOWN}/artifacts",
        f"/jobs/{UNKNOWN}/artifacts/filters-L1.npy",
        f"/datasets/{UNKNOWN}",
    ],
)
def test_an_unknown_id_is_a_404_naming_it(held, path):
    response = held.client.get(path)
    assert response.status_code == 404
    assert _names(response, UNKNOWN)


@pytest.mark.parametrize(
    "path",
    [
        "/jobs/..%2F..%2Fetc%2Fpasswd",
        "/jobs/%2E%2E",
        "/jobs/ABC",
        "/jobs/..%2F..%2Fdeconv.sqlite3/filters",
        "/jobs/{job}/artifacts/..%2F..%2F..%2Fdeconv.sqlite3",
        "/jobs/{job}/artifacts/%2E%2E",
        "/jobs/{job}/artifacts/.hidden",
        "/datasets/..%2F..%2Fetc%2Fpasswd",
    ],
)
def test_a_path_traversal_reaches_no_file(held, path):
    response = held.client.get(path.format(job=held.job_id))
    assert response.status_code in (404, 422), response.text
    assert b"root:" not in response.content and b"SQLite" not in response.content
    assert response.headers["content-type"] == "application/json"


def test_a_traversal_in_a_job_id_is_named_in_the_404(held):
    response = held.client.get("/jobs/..%2F..%2Fetc%2Fpasswd")
    assert response.status_code == 404
    assert _names(response, "job_id")


@pytest.mark.parametrize(
    ("path", "params", "field"),
    [
        ("/jobs/{job}/filters", {"format": "gif"}, "format"),
        ("/jobs/{job}/filters", {"layer": 0}, "layer"),
        ("/jobs/{job}/filters", {"layer": "top"}, "layer"),
        ("/jobs/{job}/maps", {"layer": -1}, "layer"),
        ("/jobs/{job}/reconstructions", {"format": "tiff"}, "format"),
        ("/jobs/{job}/history", {"format": "csv"}, "format"),
        ("/jobs", {"limit": 0}, "limit"),
        ("/jobs", {"limit": 101}, "limit"),
        ("/jobs", {"cursor": "not-a-cursor"}, "cursor"),
        ("/jobs", {"cursor": base64.urlsafe_b64encode(b"seq:" + b"9" * 30).decode()}, "cursor"),
        ("/jobs", {"status": "sleeping"}, "status"),
    ],
)
def test_a_bad_query_value_is_a_422_naming_it(held, path, params, field):
    response = held.client.get(path.format(job=held.job_id), params=params)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["query", field]


@pytest.mark.parametrize("path", ["/jobs/{job}/filters", "/jobs/{job}/maps", "/jobs/{job}/reconstructions"])
def test_results_of_an_unfinished_job_are_a_409(held, path):
    response = held.client.get(path.format(job=held.job_id))
    assert response.status_code == 409
    assert "queued" in response.json()["detail"]


def test_an_unfinished_job_cannot_encode(held):
    response = held.client.post(f"/models/{held.job_id}/encode", files=[("files", sample_png_parts(1, 32)[0])])
    assert response.status_code == 409


def test_the_history_plot_of_a_job_without_iterations_is_a_409(held):
    assert held.client.get(f"/jobs/{held.job_id}/history", params={"format": "png"}).status_code == 409


# -- reconstruct ----------------------------------------------------------------------------------------------------

MAPS = _npy(np.zeros((1, 4, 8, 8), np.float32))
FILTERS = _npy(np.zeros((4, 1, 3, 3), np.float32))


def _npy_header_only(shape: tuple[int, ...]) -> bytes:
    """An NPY that declares `shape` (float32) and holds no data: numpy would allocate it all before reading."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return np.lib.format.magic(1, 0) + header.getvalue()[8:]


def _npz(**arrays) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, data in arrays.items():
            archive.writestr(f"{name}.npy", data)
    return buffer.getvalue()


def _bad_crc(archive: bytes) -> bytes:
    data = bytearray(archive)
    entry = data.index(b"PK\x01\x02")  # the central directory's CRC-32 of the member, at offset 16
    data[entry + 16 : entry + 20] = b"\0\0\0\0"
    return bytes(data)


@pytest.mark.parametrize(
    ("files", "data", "field", "status"),
    [
        ({"maps": ("m.npy", b"not an array", NPY), "filters": ("f.npy", FILTERS, NPY)}, {}, "maps", 422),
        (
            {"maps": ("m.npy", _npy(np.array([[None]], dtype=object), True), NPY), "filters": ("f.npy", FILTERS, NPY)},
            {},
            "maps",
            422,
        ),
        (
            {"maps": ("m.npy", _npy(np.full((1, 4, 8, 8), np.nan)), NPY), "filters": ("f.npy", FILTERS, NPY)},
            {},
            "maps",
            422,
        ),
        ({"maps": ("m.npy", _npy(np.zeros(8)), NPY), "filters": ("f.npy", FILTERS, NPY)}, {}, "maps", 422),
        ({"maps": ("m.npy", MAPS, NPY), "filters": ("f.npy", b"garbage", NPY)}, {}, "filters", 422),
        ({"maps": ("m.npy", MAPS, NPY), "filters": ("f.npy", _npy(np.zeros((3, 1, 3, 3))), NPY)}, {}, "K = 4", 422),
        ({"maps": ("m.npy", MAPS, NPY), "filters": ("f.npy", _npy(np.zeros((4, 1, 16, 16))), NPY)}, {}, "filters", 422),
        ({"maps": ("m.npy", MAPS, NPY)}, {}, "job_id", 422),
        ({"maps": ("m.npy", MAPS, NPY), "filters": ("f.npy", FILTERS, NPY)}, {"job_id": UNKNOWN}, "job_id", 422),
        ({"maps": ("m.npy", MAPS, NPY)}, {"job_id": "../../etc"}, "job_id", 422),
        ({"maps": ("m.npy", MAPS, NPY)}, {"job_id": UNKNOWN}, UNKNOWN, 404),
        ({"maps": ("m.npy", MAPS, NPY), "filters": ("f.npy", FILTERS, NPY)}, {"boundary": "mirror"}, "boundary", 422),
        ({"filters": ("f.npy", FILTERS, NPY)}, {}, "maps", 422),
        (
            {"maps": ("m.npy", _npy_header_only((1, 4, 50_000, 50_000)), NPY), "filters": ("f.npy", FILTERS, NPY)},
            {},
            "maps",
            422,
        ),
        (
            {
                "maps": ("m.npy", _npy_header_only((10**4, 10**4, 10**3, 10**3)), NPY),
                "filters": ("f.npy", FILTERS, NPY),
            },
            {},
            "maps",
            422,
        ),
        (
            {"maps": ("m.npy", MAPS, NPY), "filters": ("f.npy", _npy_header_only((10**6, 10**6, 3, 3)), NPY)},
            {},
            "filters",
            422,
        ),
        (
            {
                "maps": ("m.npz", _npz(m=_npy_header_only((1, 4, 50_000, 50_000))), NPY),
                "filters": ("f.npy", FILTERS, NPY),
            },
            {},
            "maps",
            422,
        ),
        (
            {
                "maps": ("m.npz", _npz(m=_npy(np.array([[None]], dtype=object), True)), NPY),
                "filters": ("f.npy", FILTERS, NPY),
            },
            {},
            "maps",
            422,
        ),
        ({"maps": ("m.npz", _bad_crc(_npz(m=MAPS)), NPY), "filters": ("f.npy", FILTERS, NPY)}, {}, "maps", 422),
        ({"maps": ("m.npz", _npz(a=MAPS, b=MAPS), NPY), "filters": ("f.npy", FILTERS, NPY)}, {}, "maps", 422),
        (
            {
                "maps": ("m.npz", _npz(m=_npy(np.zeros((1, 4, 256, 512), np.float32))), NPY),
                "filters": ("f.npy", FILTERS, NPY),
            },
            {},
            "unpacks to",
            422,
        ),
        ({"maps": ("m.npz", _npz(m=MAPS), NPY), "filters": ("f.npy", FILTERS, NPY)}, {}, None, 200),
    ],
    ids=[
        "maps-not-npy",
        "maps-object",
        "maps-nan",
        "maps-1d",
        "filters-not-npy",
        "k-mismatch",
        "filters-too-large",
        "neither-job-nor-filters",
        "both-job-and-filters",
        "job-id-traversal",
        "unknown-job",
        "boundary",
        "no-maps",
        "maps-huge-header",
        "maps-absurd-header",
        "filters-absurd-header",
        "npz-huge-header",
        "npz-object",
        "npz-bad-crc",
        "npz-two-arrays",
        "npz-bomb",
        "npz-good",
    ],
)
def test_a_bad_reconstruct_request_is_a_4xx_naming_the_field(held, files, data, field, status):
    response = held.client.post("/reconstruct", files=files, data=data)
    assert response.status_code == status, response.text[:2000]
    assert field is None or _names(response, field), response.text[:2000]


# -- the API key ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[httpx2.Client]:
    service = start_service(tmp_path_factory.mktemp("keyed"), run_jobs=False, api_key="s3cret")
    with httpx2.Client(base_url=service.url, timeout=60) as client:
        yield client
    stop_service(service)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/jobs"),
        ("POST", "/jobs"),
        ("GET", f"/jobs/{UNKNOWN}"),
        ("DELETE", f"/jobs/{UNKNOWN}"),
        ("POST", "/datasets"),
        ("GET", f"/datasets/{UNKNOWN}"),
        ("POST", "/reconstruct"),
        ("POST", f"/models/{UNKNOWN}/encode"),
        ("GET", f"/jobs/{UNKNOWN}/filters"),
    ],
)
@pytest.mark.parametrize("key", [None, "wrong", ""], ids=["no-key", "wrong-key", "empty-key"])
def test_without_the_right_key_every_route_is_a_401(keyed, method, path, key):
    response = keyed.request(method, path, headers={} if key is None else {"X-API-Key": key})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "APIKey"
    assert "X-API-Key" in response.json()["detail"]


def test_with_the_key_the_routes_answer(keyed):
    assert keyed.get("/jobs", headers={"X-API-Key": "s3cret"}).status_code == 200
    assert keyed.get(f"/jobs/{UNKNOWN}", headers={"X-API-Key": "s3cret"}).status_code == 404


def test_health_needs_no_key(keyed):
    response = keyed.get("/health")
    assert (response.status_code, response.json()["status"], response.json()["runner"]) == (200, "ok", "disabled")


def test_a_job_whose_maps_would_not_fit_the_memory_budget_is_refused_naming_the_layer(tmp_path_factory):
    # 3 images of 32x32, circular: layer 1 (4 maps) holds 3*4*32*32*4 = 48 KiB, layer 2 (8 maps) 96 KiB more
    service = start_service(tmp_path_factory.mktemp("budget"), run_jobs=False, max_job_maps_bytes=100_000)
    try:
        with httpx2.Client(base_url=service.url, timeout=30) as client:
            files = [("files", (n, d, "image/png")) for n, d in sample_png_parts(3, 32)]
            dataset = client.post("/datasets", files=files).json()["id"]
            layers = [{"n_filters": 4, "filter_size": 5, "lam": 0.1}, {"n_filters": 8, "filter_size": 5, "lam": 0.1}]
            response = client.post("/jobs", json={"dataset_id": dataset, "layers": layers})
            assert response.status_code == 422, response.text
            detail = response.json()["detail"][0]
            assert detail["loc"] == ["body", "layers", 1, "n_filters"] and detail["input"] == 8
            assert "DECONV_MAX_JOB_MAPS_BYTES" in detail["msg"] and "layer 2" in detail["msg"]
            response = client.post("/jobs", json={"dataset_id": dataset, "layers": layers[:1]})
            assert response.status_code == 202, response.text
    finally:
        stop_service(service)
