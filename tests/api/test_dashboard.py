"""The dashboard's files and the presets route, without a server or Ray (the page in a browser:
``tests/api/test_browser.py``)."""

from __future__ import annotations

import re

import pytest
from starlette.testclient import TestClient

from api.app import create_app
from api.routes.dashboard import STATIC
from api.routes.presets import preset_paths
from api.settings import Settings
from workers.jobs.spec import JobSpec


@pytest.fixture
def client(tmp_path):
    return TestClient(create_app(Settings(data_dir=tmp_path, run_jobs=False, api_key="secret")))


def test_the_page_and_its_files_are_served_without_a_key(client):
    page = client.get("/")
    assert (page.status_code, page.headers["content-type"]) == (200, "text/html; charset=utf-8")
    assert '<script src="static/app.js"' in page.text
    script = client.get("/static/app.js")
    assert script.status_code == 200
    assert script.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    assert client.get("/static/style.css").headers["content-type"].startswith("text/css")
    # a path out of static/ is no file: 404 with the key (without it every unknown path is a 401)
    assert client.get("/static/../app.py", headers={"X-API-Key": "secret"}).status_code == 404


def test_the_page_only_calls_documented_routes(client):
    """Every path the script fetches is a route of the public API (a renamed route breaks this test, not the
    page in front of a user)."""
    script = (STATIC / "app.js").read_text()
    called = set(re.findall(r'[`"]((?:jobs|datasets|models|presets|health|reconstruct)\b[^"`?]*)', script))
    documented = set(client.app.openapi()["paths"])
    as_routes = {re.sub(r"\$\{[^}]*\}", "{job_id}", path) for path in called}
    assert as_routes == {
        "jobs",
        "jobs/{job_id}",
        "jobs/{job_id}/history",
        "jobs/{job_id}/filters/latest",
        "jobs/{job_id}/reconstructions",
        "presets",
        "datasets",
        "health",
    }
    assert {f"/{path}" for path in as_routes} <= documented


def test_the_presets_are_the_bundled_files_and_each_makes_a_valid_spec(client):
    response = client.get("/presets", headers={"X-API-Key": "secret"})
    assert response.status_code == 200
    presets = response.json()
    assert [p["name"] for p in presets] == [path.stem for path in preset_paths()]
    assert "demo" in [p["name"] for p in presets]
    for preset in presets:
        JobSpec.model_validate({**preset["spec"], "dataset_id": "0" * 32})
        assert preset["description"]


def test_a_preset_described_as_a_named_job_is_that_preset(client):
    """The description is the file's leading comment: one copied from another preset names the other."""
    for preset in client.get("/presets", headers={"X-API-Key": "secret"}).json():
        named = re.match(r"The (\S+) (?:job|preset)\b", preset["description"])
        assert named is None or named.group(1) == preset["name"], preset


def test_the_presets_need_the_key(client):
    assert client.get("/presets").status_code == 401
