"""``/``: the dashboard, a page of HTML, CSS and plain JavaScript shipped in ``api/static`` (no build step).

The page and its two files need no key: they hold no data. The page reads everything through the public API and
sends the key the user gives it (kept in the tab's sessionStorage) as ``X-API-Key``.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC = Path(__file__).resolve().parents[1] / "static"
"""The page's files: ``index.html``, ``app.js``, ``style.css``."""

router = APIRouter(tags=["dashboard"])

static_files = StaticFiles(directory=STATIC)
"""Mounted at ``/static`` by :func:`api.app.create_app`."""


@router.get(
    "/",
    response_class=FileResponse,
    summary="The dashboard",
    description="An HTML page showing the jobs, their progress, objective curves, filters and "
    "reconstructions, with a form to upload images and submit a preset.",
    responses={200: {"content": {"text/html": {}}}},
)
def dashboard() -> FileResponse:
    return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Cache-Control": "no-cache"})
