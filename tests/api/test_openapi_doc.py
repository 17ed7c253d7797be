"""The OpenAPI document tells what the service does: the statuses each route answers with the JSON error model,
the media types of the binary answers, the constraints the routes enforce. (schemathesis checks the answers
against it: tests/api/test_openapi_fuzz.py.)"""

from __future__ import annotations

import pytest

from api.app import create_app
from api.settings import Settings

ERROR = {"$ref": "#/components/schemas/ErrorOut"}


@pytest.fixture(scope="module")
def document(tmp_path_factory) -> dict:
    return create_app(Settings(data_dir=tmp_path_factory.mktemp("doc"), run_jobs=False)).openapi()


def _responses(document: dict, method: str, path: str) -> dict:
    return document["paths"][path][method]["responses"]


@pytest.mark.parametrize(
    ("method", "path", "statuses"),
    [
        ("post", "/datasets", {"201", "400", "401", "403", "413", "422"}),
        ("post", "/jobs", {"202", "400", "401", "403", "409", "413", "422", "429"}),
        ("delete", "/jobs/{job_id}", {"200", "202", "401", "404", "409", "422"}),
        ("get", "/jobs/{job_id}/filters", {"200", "304", "401", "404", "409", "422", "500"}),
        ("post", "/models/{job_id}/encode", {"200", "400", "401", "404", "409", "413", "422", "500"}),
        ("post", "/reconstruct", {"200", "400", "401", "404", "409", "413", "422", "500"}),
        ("get", "/health", {"200", "400", "403"}),
    ],
)
def test_every_status_a_route_answers_is_documented(document, method, path, statuses):
    responses = _responses(document, method, path)
    assert statuses <= set(responses), sorted(set(responses))
    for status in statuses - {"200", "201", "202", "304", "422"}:
        assert responses[status]["content"]["application/json"]["schema"] == ERROR, status


def test_health_needs_no_key_and_says_so(document):
    assert "401" not in _responses(document, "get", "/health")


def test_the_queue_s_429_documents_retry_after(document):
    assert "Retry-After" in _responses(document, "post", "/jobs")["429"]["headers"]


@pytest.mark.parametrize(
    ("method", "path", "media"),
    [
        ("get", "/jobs/{job_id}/filters", {"application/x-npy", "image/png"}),
        ("get", "/jobs/{job_id}/maps", {"application/x-npz", "application/x-npy"}),
        ("get", "/jobs/{job_id}/model", {"application/zip"}),
        (
            "get",
            "/jobs/{job_id}/artifacts/{name}",
            {"application/x-npy", "application/x-npz", "image/png", "application/json"},
        ),
        ("post", "/models/{job_id}/encode", {"application/x-npy", "application/x-npz"}),
        ("post", "/reconstruct", {"application/x-npy", "image/png"}),
    ],
)
def test_binary_answers_have_their_media_types_and_not_json(document, method, path, media):
    content = _responses(document, method, path)["200"]["content"]
    assert set(content) == media
    assert all(content[m]["schema"] == {"type": "string", "format": "binary"} for m in media - {"application/json"})


def test_the_constraints_the_routes_check_are_in_the_schemas(document):
    schemas = document["components"]["schemas"]
    pool = schemas["JobLayerSpec"]["properties"]["pool"]["anyOf"][0]
    assert [item["minimum"] for item in pool["prefixItems"]] == [1, 1, 1]
    assert schemas["JobLayerSpec"]["properties"]["lam"]["maximum"] == 1e6
    assert schemas["JobSpec"]["properties"]["layers"]["maxItems"] == 16
    encode = document["paths"]["/models/{job_id}/encode"]["post"]["requestBody"]["content"]["multipart/form-data"]
    body = schemas[encode["schema"]["$ref"].rsplit("/", 1)[1]]
    assert body["properties"]["files"]["minItems"] == 1
    key = next(p for p in document["paths"]["/jobs"]["post"]["parameters"] if p["name"] == "idempotency-key")
    assert key["schema"]["anyOf"][0]["minLength"] == 1
