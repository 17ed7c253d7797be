"""The OpenAPI document as the service behaves: every status each operation can answer, with its JSON error model;
the media types of the binary responses; the constraints the routes check themselves.

FastAPI documents what it sees in the route signatures: a 200 in JSON and the 422 of its own validation. The
statuses that come from elsewhere are added here, from one table, so that a client generator (or schemathesis) sees
all of them:

* from the front door (:mod:`api.guard`), on every operation: 400 for a ``Host`` the service does not answer to,
  403 for a request from another site without a key, 401 without the key (all but the public routes), 413 for a
  body over its limit (operations with a body);
* from the routes: 404 for an unknown job or dataset, 409 for a job in the wrong state (or an Idempotency-Key
  used for another spec), 429 for a full queue, 304 for an unchanged artifact, 500 for an artifact damaged in the
  store (the only 5xx the service answers on purpose), 400 for a multipart body that cannot be read and 413 for
  an encode or reconstruction estimated over the request's limits.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

from .guard import PUBLIC_PATHS
from .routes.common import NPY, NPZ, PNG

JSON = "application/json"
ZIP = "application/zip"
BINARY = {"type": "string", "format": "binary"}


class ErrorItem(BaseModel):
    """One bad field: where it was (``["body", "layers", 0, "lam"]``), what is wrong, and the value sent."""

    loc: list[str | int]
    msg: str
    type: str
    input: Any = None


class ErrorOut(BaseModel):
    """Every error answer: a message, or a list of bad fields (the shape of FastAPI's validation errors)."""

    detail: str | list[ErrorItem]


_DESCRIPTIONS = {
    304: "the artifact is unchanged: the client's If-None-Match holds its ETag",
    400: "the Host header names another service (DECONV_ALLOWED_HOSTS), or the multipart body cannot be read",
    401: "the service has a key and the request does not carry it in X-API-Key",
    403: "without an API key, a request from another site's page (a foreign Origin) is refused",
    404: "no such job, dataset or artifact",
    409: "the job is not in a state that has this",
    413: "the body is over its limit, or the request's estimated cost is (each names the limit)",
    429: "the queue is full (DECONV_MAX_QUEUED_JOBS): retry after Retry-After seconds",
    500: "an artifact of the job is damaged in the store",
}

# the statuses each operation answers besides those of the front door, FastAPI's 422 and its success
_STATUSES: dict[tuple[str, str], tuple[int, ...]] = {
    ("post", "/datasets"): (400, 413),
    ("get", "/datasets/{dataset_id}"): (404,),
    ("post", "/jobs"): (409, 429),
    ("post", "/datasets/{dataset_id}/encode"): (404, 409, 429, 500),
    ("get", "/jobs/{job_id}"): (404,),
    ("delete", "/jobs/{job_id}"): (404, 409),
    ("get", "/jobs/{job_id}/filters/latest"): (404, 409, 500),
    ("get", "/jobs/{job_id}/model"): (404, 409, 500),
    ("get", "/jobs/{job_id}/filters"): (304, 404, 409, 500),
    ("get", "/jobs/{job_id}/maps"): (304, 404, 409, 500),
    ("get", "/jobs/{job_id}/reconstructions"): (304, 404, 409, 500),
    ("get", "/jobs/{job_id}/history"): (404, 409),
    ("get", "/jobs/{job_id}/artifacts"): (404,),
    ("get", "/jobs/{job_id}/artifacts/{name}"): (304, 404, 500),
    ("post", "/models/{job_id}/encode"): (400, 404, 409, 413, 500),
    ("post", "/reconstruct"): (400, 404, 409, 413, 500),
}

# the media types of the binary answers (FastAPI would also list JSON, which they never are)
_MEDIA: dict[tuple[str, str], tuple[str, ...]] = {
    ("get", "/jobs/{job_id}/filters/latest"): (NPY, PNG),
    ("get", "/jobs/{job_id}/model"): (ZIP,),
    ("get", "/jobs/{job_id}/filters"): (NPY, PNG),
    ("get", "/jobs/{job_id}/maps"): (NPZ, NPY),
    ("get", "/jobs/{job_id}/reconstructions"): (NPY, PNG),
    ("get", "/jobs/{job_id}/artifacts/{name}"): (NPY, NPZ, PNG, JSON),
    ("post", "/models/{job_id}/encode"): (NPY, NPZ),
    ("post", "/reconstruct"): (NPY, PNG),
}


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` return the completed document (built once, then cached as FastAPI does).

    Parameters
    ----------
    app : fastapi.FastAPI
    """

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = complete(document)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any]) -> dict[str, Any]:
    """`document` (FastAPI's) with the statuses, media types and constraints of the module docstring.

    Parameters
    ----------
    document : dict
        An OpenAPI document as :func:`fastapi.openapi.utils.get_openapi` returns it.

    Returns
    -------
    dict
        The same document, completed in place.
    """
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas["ErrorItem"] = ErrorItem.model_json_schema(ref_template="#/components/schemas/{model}")
    error_out = ErrorOut.model_json_schema(ref_template="#/components/schemas/{model}")
    error_out.pop("$defs", None)
    schemas["ErrorOut"] = error_out
    for path, operations in document.get("paths", {}).items():
        for method, operation in operations.items():
            _complete_operation(method, path, operation)
    for name, schema in schemas.items():  # the upload routes refuse an upload without a file
        files = schema.get("properties", {}).get("files") if name.startswith("Body_") else None
        if files is not None and files.get("type") == "array":
            files["minItems"] = 1
    return document


def _complete_operation(method: str, path: str, operation: dict[str, Any]) -> None:
    responses = operation.setdefault("responses", {})
    statuses = {400, 403, *_STATUSES.get((method, path), ())}
    if path not in PUBLIC_PATHS:
        statuses.add(401)
    if "requestBody" in operation:
        statuses.add(413)
    for status in sorted(statuses):
        entry = responses.setdefault(str(status), {})
        entry.setdefault("description", _DESCRIPTIONS[status])
        if status == 304:
            continue
        entry["content"] = {JSON: {"schema": {"$ref": "#/components/schemas/ErrorOut"}}}
        if status == 429:
            entry["headers"] = {"Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}}
        if status == 401:
            entry["headers"] = {"WWW-Authenticate": {"schema": {"type": "string", "enum": ["APIKey"]}}}
    media = _MEDIA.get((method, path))
    success = next((code for code in ("200", "201", "202") if code in responses), None)
    if media is not None and success is not None:
        content = responses[success].setdefault("content", {})
        content.pop(JSON, None)
        for media_type in media:
            schema = content.get(media_type, {}).get("schema") if media_type == JSON else BINARY
            content[media_type] = {"schema": schema or {}}
    if (method, path) == ("get", "/jobs/{job_id}/history"):
        content = responses["200"].setdefault("content", {})
        content[JSON] = {"schema": {"type": "array", "items": {"type": "object"}}}
        content[PNG] = {"schema": BINARY}
    if (method, path) == ("delete", "/jobs/{job_id}") and "200" in responses:
        responses["202"]["content"] = responses["200"].get("content", {})
