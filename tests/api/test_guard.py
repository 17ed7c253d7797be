"""The service's front door against the real server: the key before the body, the Host and Origin checks, the body
limits as JSON 413s, the bounded queue, and the errors of the HTTP layer (405 Allow, unreadable multipart bodies,
an empty Idempotency-Key) in the service's JSON shape. The services here hold their jobs (no Ray)."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator

import pytest

from tests.api.conftest import LiveService, sample_png_parts, start_service, stop_service

httpx2 = pytest.importorskip("httpx2")

pytestmark = pytest.mark.timeout(120)

SPEC = {"layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}], "n_iter": 2}
KEY = "s3cret"


def _files() -> list:
    return [("files", (name, data, "image/png")) for name, data in sample_png_parts(2, 32)]


@pytest.fixture(scope="module")
def keyed(tmp_path_factory) -> Iterator[LiveService]:
    service = start_service(tmp_path_factory.mktemp("guard-keyed"), run_jobs=False, api_key=KEY)
    yield service
    stop_service(service)


@pytest.fixture(scope="module")
def keyless(tmp_path_factory) -> Iterator[LiveService]:
    service = start_service(tmp_path_factory.mktemp("guard-keyless"), run_jobs=False, max_queued_jobs=2)
    yield service
    stop_service(service)


def _raw_request(url: str, head: str, body: bytes = b"", wait: float = 5.0) -> tuple[int, dict[str, str], bytes]:
    """Send `head` and `body` over a socket and read the answer without sending more: (status, headers, body).
    The socket times out after `wait` seconds (a server still waiting for the rest of the body)."""
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=wait) as sock:
        sock.sendall(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        header_text, _, rest = data.partition(b"\r\n\r\n")
        lines = header_text.decode("latin-1").split("\r\n")
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        while len(rest) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), headers, rest


# -- the key before the body ----------------------------------------------------------------------------------------


def test_without_the_key_an_upload_is_refused_before_its_body_arrives(keyed):
    # 100 MB announced, a few bytes sent: the 401 must come while the server still waits for the rest
    host = keyed.url.removeprefix("http://")
    head = (
        f"POST /datasets HTTP/1.1\nHost: {host}\nContent-Type: multipart/form-data; boundary=x\n"
        f"Content-Length: {100 * 2**20}\n"
    )
    started = time.monotonic()
    status, headers, body = _raw_request(keyed.url, head, b"--x\r\n", wait=5.0)
    assert (status, headers["www-authenticate"]) == (401, "APIKey")
    assert "X-API-Key" in json.loads(body)["detail"]
    assert time.monotonic() - started < 2.0


@pytest.mark.parametrize(
    ("method", "path", "content"),
    [("POST", "/jobs", b"{not json"), ("POST", "/datasets", b"--x\r\nbroken"), ("GET", "/no/such/route", b"")],
    ids=["bad-json", "bad-multipart", "unknown-path"],
)
def test_without_the_key_a_malformed_request_is_a_401_not_a_parse_error(keyed, method, path, content):
    headers = {"Content-Type": "multipart/form-data; boundary=x" if "datasets" in path else "application/json"}
    response = httpx2.request(method, keyed.url + path, content=content, headers=headers)
    assert response.status_code == 401, response.text


def test_with_the_key_the_guarded_routes_answer_and_the_public_ones_need_none(keyed):
    assert httpx2.get(keyed.url + "/jobs", headers={"X-API-Key": KEY}).status_code == 200
    for path in ("/health", "/", "/openapi.json", "/static/app.js"):
        assert httpx2.get(keyed.url + path).status_code == 200, path


# -- Host and Origin ------------------------------------------------------------------------------------------------


def test_a_foreign_host_is_refused(keyless):
    response = httpx2.get(keyless.url + "/jobs", headers={"Host": "attacker.example"})
    assert response.status_code == 400
    assert "attacker.example" in response.json()["detail"] and "DECONV_ALLOWED_HOSTS" in response.json()["detail"]


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "localhost:8000"])
def test_the_loopback_names_are_hosts_by_default(keyless, host):
    assert httpx2.get(keyless.url + "/jobs", headers={"Host": host}).status_code == 200


def test_the_allowed_hosts_replace_the_defaults(tmp_path):
    service = start_service(tmp_path, run_jobs=False, allowed_hosts="deconv.internal, other.example")
    try:
        assert httpx2.get(service.url + "/jobs", headers={"Host": "deconv.internal:8000"}).status_code == 200
        assert httpx2.get(service.url + "/jobs", headers={"Host": "attacker.example"}).status_code == 400
        assert httpx2.get(service.url + "/jobs").status_code == 400  # 127.0.0.1 is not in the list
    finally:
        stop_service(service)


def test_without_a_key_a_request_from_another_site_is_refused(keyless):
    response = httpx2.post(keyless.url + "/datasets", files=_files(), headers={"Origin": "https://evil.example"})
    assert response.status_code == 403
    assert "evil.example" in response.json()["detail"]


def test_without_a_key_a_request_from_the_service_s_own_page_passes(keyless):
    response = httpx2.post(keyless.url + "/datasets", files=_files(), headers={"Origin": keyless.url})
    assert response.status_code == 201, response.text


def test_with_a_key_the_origin_is_left_to_the_key(keyed):
    headers = {"Origin": "https://elsewhere.example", "X-API-Key": KEY}
    assert httpx2.get(keyed.url + "/jobs", headers=headers).status_code == 200


# -- body limits ----------------------------------------------------------------------------------------------------


def test_a_json_body_announced_over_the_limit_is_a_json_413_naming_the_limit(keyless):
    host = keyless.url.removeprefix("http://")
    head = f"POST /jobs HTTP/1.1\nHost: {host}\nContent-Type: application/json\nContent-Length: {2**21}\n"
    status, headers, body = _raw_request(keyless.url, head, b"{")
    assert (status, headers["content-type"]) == (413, "application/json")
    assert "DECONV_MAX_JSON_BYTES" in json.loads(body)["detail"] and str(2**20) in json.loads(body)["detail"]


def test_a_chunked_body_over_the_limit_is_a_json_413(keyless):
    def chunks() -> Iterator[bytes]:
        for _ in range(40):
            yield b" " * 65536

    response = httpx2.post(keyless.url + "/jobs", content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert "DECONV_MAX_JSON_BYTES" in response.json()["detail"]


# -- the HTTP layer's errors ----------------------------------------------------------------------------------------


def test_a_405_allows_every_method_of_the_path(keyless):
    response = httpx2.post(keyless.url + "/jobs/" + "a" * 32)
    assert response.status_code == 405
    assert response.headers["allow"] == "DELETE, GET, HEAD"
    assert "DELETE, GET, HEAD" in response.json()["detail"]


def test_head_answers_every_get_route_with_the_gets_headers_and_no_body(keyless):
    dataset = httpx2.post(keyless.url + "/datasets", files=_files()).json()["id"]
    for path in ["/health", "/jobs", "/presets", f"/datasets/{dataset}", "/openapi.json", "/"]:
        got, head = httpx2.get(keyless.url + path), httpx2.head(keyless.url + path)
        assert (head.status_code, got.status_code) == (200, 200), path
        assert head.content == b"", path
        assert head.headers["content-type"] == got.headers["content-type"], path
    got, head = httpx2.get(keyless.url + "/presets"), httpx2.head(keyless.url + "/presets")
    assert head.headers["content-length"] == got.headers["content-length"] == str(len(got.content))


def test_head_answers_as_get_does_when_get_is_refused(keyless):
    response = httpx2.head(keyless.url + "/jobs/" + "a" * 32)
    assert (response.status_code, response.content) == (404, b"")


def test_head_on_a_path_without_get_is_a_405_that_does_not_offer_head(keyless):
    response = httpx2.head(keyless.url + "/reconstruct")
    assert response.status_code == 405
    assert response.headers["allow"] == "POST"


def test_head_needs_the_key_as_get_does(keyed):
    assert httpx2.head(keyed.url + "/jobs").status_code == 401
    assert httpx2.head(keyed.url + "/jobs", headers={"X-API-Key": KEY}).status_code == 200
    assert httpx2.head(keyed.url + "/health").status_code == 200


@pytest.mark.parametrize(
    ("path", "field"), [("/datasets", "files"), ("/reconstruct", "maps"), (f"/models/{'a' * 32}/encode", "files")]
)
def test_an_unreadable_multipart_body_is_a_json_400_naming_the_field(keyless, path, field):
    headers = {"Content-Type": "multipart/form-data"}  # no boundary
    response = httpx2.post(keyless.url + path, content=b"--x\r\nnothing", headers=headers)
    assert response.status_code == 400
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", field] and "boundary" in detail["msg"]


def test_an_empty_idempotency_key_is_a_422_naming_the_header(keyless):
    dataset = httpx2.post(keyless.url + "/datasets", files=_files()).json()["id"]
    response = httpx2.post(keyless.url + "/jobs", json={**SPEC, "dataset_id": dataset}, headers={"Idempotency-Key": ""})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["header", "idempotency-key"]


def test_the_queue_is_bounded_with_a_429_and_retry_after(keyless):
    client = httpx2.Client(base_url=keyless.url)
    dataset = client.post("/datasets", files=_files()).json()["id"]
    queued = client.get("/health").json()["queued"]
    for seed in range(2 - queued):
        assert client.post("/jobs", json={**SPEC, "dataset_id": dataset, "seed": seed}).status_code == 202
    response = client.post("/jobs", json={**SPEC, "dataset_id": dataset, "seed": 99})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert "DECONV_MAX_QUEUED_JOBS" in response.json()["detail"]
    assert client.get("/health").json()["queued"] == 2


def test_a_retry_with_its_key_gets_its_job_even_when_the_queue_is_full(tmp_path):
    """A client whose response was lost retries with the same key: it is answered its job, not told to wait; the
    same key with another spec is still a conflict, not congestion."""
    service = start_service(tmp_path, run_jobs=False, max_queued_jobs=2)
    try:
        with httpx2.Client(base_url=service.url) as client:
            dataset = client.post("/datasets", files=_files()).json()["id"]
            spec = {**SPEC, "dataset_id": dataset, "seed": 7}
            first = client.post("/jobs", json=spec, headers={"Idempotency-Key": "retry-me"})
            assert client.post("/jobs", json={**spec, "seed": 1}).status_code == 202
            assert client.post("/jobs", json={**spec, "seed": 2}).status_code == 429  # the queue is full
            again = client.post("/jobs", json=spec, headers={"Idempotency-Key": "retry-me"})
            other = client.post("/jobs", json={**spec, "seed": 8}, headers={"Idempotency-Key": "retry-me"})
    finally:
        stop_service(service)
    assert first.status_code == 202
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]
    assert other.status_code == 409 and other.json()["detail"][0]["loc"] == ["header", "Idempotency-Key"]
