"""Requests that are small on the wire but would be huge to compute: each is refused before it runs, quickly, with
the service's memory (its peak resident set, measured in its own process) growing less than 100 MB; results that
overflow float32 are refused with a 422 naming the input. The service runs in a subprocess (no Ray) over a store
that holds a finished job with a three-filter model, written directly."""

from __future__ import annotations

import io
import os
import socket
import struct
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from api.costs import BASE_BYTES, Layer, encode_cost, reconstruct_cost
from solver import StackModel
from tests.api.conftest import finished_job
from workers.distributed.checkpoint import npy_bytes

httpx2 = pytest.importorskip("httpx2")

pytestmark = pytest.mark.timeout(180)

ROOT = Path(__file__).resolve().parents[2]
NPY = "application/x-npy"
MB = 2**20


def _npy(array: np.ndarray) -> bytes:
    return npy_bytes(array)


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


@dataclass
class Service:
    url: str
    process: subprocess.Popen
    job_id: str

    def peak_growth(self, request: Callable[[], httpx2.Response]) -> tuple[httpx2.Response, float, float]:
        """(response, seconds, MB by which the service's peak resident set grew while it answered)."""
        status = Path(f"/proc/{self.process.pid}/status")
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")  # resets the peak to the current size
        before = _vm_kb(status, "VmHWM")
        started = time.monotonic()
        response = request()
        seconds = time.monotonic() - started
        return response, seconds, (_vm_kb(status, "VmHWM") - before) / 1024


def _vm_kb(status: Path, field: str) -> int:
    line = next(line for line in status.read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def service(tmp_path_factory) -> Iterator[Service]:
    data_dir = tmp_path_factory.mktemp("costs")
    rng = np.random.default_rng(0)
    job_id = finished_job(data_dir, rng.standard_normal((3, 1, 7, 7)).astype(np.float32))
    port = _free_port()
    code = (
        "import sys, uvicorn\n"
        "from api.app import create_app\n"
        "from api.settings import Settings\n"
        "app = create_app(Settings(data_dir=sys.argv[1], run_jobs=False))\n"
        "uvicorn.run(app, host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("DECONV_")}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen([sys.executable, "-c", code, str(data_dir), str(port)], env=env, cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx2.get(url + "/health").status_code == 200:
                break
        except httpx2.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the service did not start")
        time.sleep(0.1)
    yield Service(url, process, job_id)
    process.terminate()
    process.wait(30)


def _encode(service: Service, files: list, **params) -> httpx2.Response:
    return httpx2.post(f"{service.url}/models/{service.job_id}/encode", files=files, params=params, timeout=120)


def _reconstruct(service: Service, files: list, **data) -> httpx2.Response:
    return httpx2.post(f"{service.url}/reconstruct", files=files, data=data, timeout=120)


def _refused(response: httpx2.Response, status: int, field: str, *words: str) -> None:
    assert response.status_code == status, response.text[:500]
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field], detail
    for word in words:
        assert word in detail["msg"], detail["msg"]


# -- refused before they run ----------------------------------------------------------------------------------------


def test_a_small_image_encodes(service):
    image = (np.arange(64 * 64) % 251).reshape(64, 64).astype(np.uint8)
    response = _encode(service, [("files", ("a.png", _png(image), "image/png"))])
    assert response.status_code == 200, response.text
    assert np.load(io.BytesIO(response.content)).shape == (1, 3, 64, 64)


def test_a_black_2048_png_to_encode_is_a_413_before_it_runs(service):
    data = _png(np.zeros((2048, 2048), np.uint8))
    assert len(data) < 20_000
    response, seconds, grown = service.peak_growth(
        lambda: _encode(service, [("files", ("black.png", data, "image/png"))])
    )
    _refused(response, 413, "files", "DECONV_MAX_REQUEST_BYTES", "GiB")
    assert seconds < 1.0 and grown < 100, (seconds, grown)


def test_ten_black_4096_pngs_are_refused_before_they_are_decoded(service):
    data = _png(np.zeros((4096, 4096), np.uint8))
    files = [("files", (f"{i}.png", data, "image/png")) for i in range(10)]
    response, seconds, grown = service.peak_growth(lambda: _encode(service, files))
    _refused(response, 413, "files", "values")
    assert seconds < 1.0 and grown < 100, (seconds, grown)


def test_filters_that_would_make_a_terabyte_of_images_are_a_413(service):
    files = [
        ("maps", ("maps.npy", _npy(np.zeros((1, 1, 2048, 2048), np.float32)), NPY)),
        ("filters", ("filters.npy", _npy(np.ones((1, 65536, 1, 1), np.float32)), NPY)),
    ]
    response, seconds, grown = service.peak_growth(lambda: _reconstruct(service, files))
    _refused(response, 413, "maps", "DECONV_MAX_REQUEST_BYTES")
    assert seconds < 1.0 and grown < 100, (seconds, grown)


def _forged_npz(declared: int) -> bytes:
    """An npz of one member that inflates to `declared` zero bytes behind an NPY header, with a wrong CRC."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (declared // 4,)})
    body = header.getvalue() + bytes(declared - len(header.getvalue()))
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("maps.npy", body)
    data = bytearray(buffer.getvalue())
    del body
    # the CRC sits at offset 14 of the local header and 16 of the central directory entry
    data[14:18] = struct.pack("<I", 0xDEADBEEF)
    central = data.rfind(b"PK\x01\x02")
    data[central + 16 : central + 20] = struct.pack("<I", 0xDEADBEEF)
    return bytes(data)


def test_a_forged_npz_is_refused_before_it_is_inflated(service):
    data = _forged_npz(200 * MB)
    assert len(data) < 1 * MB
    files = [("maps", ("maps.npz", data, "application/zip"))]
    response, seconds, grown = service.peak_growth(lambda: _reconstruct(service, files, job_id=service.job_id))
    _refused(response, 413, "maps", "unpacks to")
    assert seconds < 1.0 and grown < 100, (seconds, grown)


def test_too_many_iterations_for_the_images_are_a_422_naming_max_iter(service):
    image = (np.arange(1024 * 1024) % 253).reshape(1024, 1024).astype(np.uint8)
    response = _encode(service, [("files", ("a.png", _png(image), "image/png"))], max_iter=5000)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["query", "max_iter"] and "DECONV_MAX_REQUEST_WORK" in detail["msg"]


# -- results that overflow ------------------------------------------------------------------------------------------


def test_images_whose_maps_overflow_are_a_422_naming_them(service):
    image = np.full((1, 32, 32), 1e40)
    image[0, ::3, ::5] = -1e40
    response = _encode(service, [("files", ("big.npy", _npy(image), NPY))])
    _refused(response, 422, "files", "overflow", "1e+40")


def test_maps_whose_images_overflow_are_a_422_naming_the_maps(service):
    maps = np.full((1, 3, 32, 32), 3e38, np.float32)
    response = _reconstruct(service, [("maps", ("maps.npy", _npy(maps), NPY))], job_id=service.job_id)
    _refused(response, 422, "maps", "overflow")


def test_filters_whose_images_overflow_are_a_422_naming_the_filters(service):
    files = [
        ("maps", ("maps.npy", _npy(np.ones((1, 2, 16, 16), np.float32)), NPY)),
        ("filters", ("filters.npy", _npy(np.full((2, 1, 3, 3), 3e38, np.float32)), NPY)),
    ]
    _refused(_reconstruct(service, files), 422, "filters", "overflow")


# -- the estimates --------------------------------------------------------------------------------------------------


def _peak(function: Callable[[], object]) -> int:
    """The peak of Python-traced memory of a call of `function`, after one untraced call: the first call in a
    process also makes what is made once (FFT plans, imports), which the estimates leave to BASE_BYTES, so that
    the measure would depend on which test ran first."""
    import tracemalloc  # noqa: PLC0415

    function()
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
@pytest.mark.parametrize(("k", "c", "n", "side"), [(3, 1, 1, 128), (8, 3, 2, 64), (16, 8, 1, 48)])
def test_the_encode_estimate_bounds_the_measured_peak(method, k, c, n, side):
    from solver import encode_layers  # noqa: PLC0415

    rng = np.random.default_rng(1)
    filters = rng.standard_normal((k, c, 5, 5)).astype(np.float32)
    model = StackModel.from_layers([filters], [None], [None], [0.1], [1.0])
    images = rng.standard_normal((n, c, side, side)).astype(np.float32)
    encode_layers(model, images[:1, :, :8, :8], method=method, max_iter=1, backend="numpy")  # compiled once
    # 12 iterations: ADMM changes ρ on the way, when the next per-image factors are made beside the current ones
    peak = _peak(lambda: encode_layers(model, images, method=method, max_iter=12, backend="numpy"))
    estimate = encode_cost([Layer(k, c, 5)], images.shape, method=method, max_iter=12, boundary="circular")
    assert peak <= estimate.bytes - BASE_BYTES <= 6 * peak, (peak, estimate.bytes)


@pytest.mark.parametrize(("k", "c", "n", "side"), [(3, 1, 1, 128), (8, 3, 2, 64), (64, 16, 1, 32)])
def test_the_reconstruct_estimate_bounds_the_measured_peak(k, c, n, side):
    from solver.models.coding import reconstruct  # noqa: PLC0415

    rng = np.random.default_rng(2)
    maps = rng.standard_normal((n, k, side, side)).astype(np.float32)
    filters = rng.standard_normal((k, c, 7, 7)).astype(np.float32)
    peak = _peak(lambda: np.asarray(reconstruct(maps, filters), dtype=np.float32))
    estimate = reconstruct_cost([Layer(k, c, 7)], maps.shape, boundary="circular")
    assert peak <= estimate.bytes - BASE_BYTES <= 6 * peak, (peak, estimate.bytes)
