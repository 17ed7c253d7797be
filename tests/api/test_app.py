"""The app's assembly, without a server or Ray: the routes it serves, the key check on each, the error shapes."""

from __future__ import annotations

import pytest
from fastapi.routing import iter_route_contexts
from starlette.testclient import TestClient

from api.app import create_app
from api.settings import Settings

JOB = "0" * 32
ROUTES = {
    ("GET", "/health"),
    ("POST", "/datasets"),
    ("GET", "/datasets/{dataset_id}"),
    ("POST", "/datasets/{dataset_id}/encode"),
    ("POST", "/jobs"),
    ("GET", "/jobs"),
    ("GET", "/jobs/{job_id}"),
    ("DELETE", "/jobs/{job_id}"),
    ("GET", "/jobs/{job_id}/filters"),
    ("GET", "/jobs/{job_id}/maps"),
    ("GET", "/jobs/{job_id}/reconstructions"),
    ("GET", "/jobs/{job_id}/history"),
    ("GET", "/jobs/{job_id}/artifacts"),
    ("GET", "/jobs/{job_id}/artifacts/{name}"),
    ("POST", "/models/{job_id}/encode"),
    ("POST", "/reconstruct"),
    ("GET", "/jobs/{job_id}/filters/latest"),
    ("GET", "/jobs/{job_id}/model"),
    ("GET", "/presets"),
    ("GET", "/"),
}
PUBLIC = {("GET", "/health"), ("GET", "/")}


@pytest.fixture
def app(tmp_path):
    return create_app(Settings(data_dir=tmp_path, run_jobs=False, api_key="secret"))


def _served(app) -> set[tuple[str, str]]:
    # included routers are resolved lazily: app.routes holds the routers, iter_route_contexts their routes
    return {
        (method, route.path)
        for route in iter_route_contexts(app.routes)
        if route.methods and getattr(route, "include_in_schema", False)
        for method in route.methods - {"HEAD", "OPTIONS"}
    }


def test_the_app_serves_exactly_the_documented_routes(app):
    documented = {(method.upper(), path) for path, item in app.openapi()["paths"].items() for method in item}
    assert _served(app) == ROUTES
    assert documented == ROUTES


@pytest.mark.parametrize(("method", "path"), sorted(ROUTES - PUBLIC))
def test_every_route_but_health_needs_the_key(app, method, path):
    url = path.format(dataset_id=JOB, job_id=JOB, name="filters-L1.npy")
    response = TestClient(app).request(method, url)
    assert (response.status_code, response.json()["detail"]) == (401, "missing or wrong X-API-Key header")


def test_health_needs_no_key(app):
    response = TestClient(app).get("/health")
    assert (response.status_code, response.json()["runner"]) == (200, "disabled")


def test_an_unknown_path_under_jobs_is_a_404_naming_the_field(app):
    response = TestClient(app).get(f"/jobs/{JOB}/nothing", headers={"X-API-Key": "secret"})
    assert response.status_code == 404
    assert response.json()["detail"][0]["loc"] == ["path", "job_id"]


def test_an_unknown_route_is_a_404_naming_the_path(app):
    response = TestClient(app).get("/nowhere", headers={"X-API-Key": "secret"})
    assert response.json() == {"detail": "no route for GET /nowhere"}
