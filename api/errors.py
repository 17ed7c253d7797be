"""The service's error responses: one shape for a bad field, a message otherwise, never a traceback.

A bad field answers ``{"detail": [{"loc": [...], "msg": ..., "type": "value_error", "input": ...}]}``, the shape
of FastAPI's own validation errors, so that a client reads one shape whether pydantic or the service refused the
value; any other error answers ``{"detail": "message"}``.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import sys
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

logger = logging.getLogger(__name__)


def field_error(loc: list[Any], msg: str, value: Any = None, status: int = 422) -> HTTPException:
    """An HTTP error naming the field at fault, in FastAPI's validation-error shape.

    Parameters
    ----------
    loc : list of str or int
        Where the value was, as FastAPI writes it: ``["body", "layers", 0, "n_filters"]``, ``["query", "layer"]``.
    msg : str
        What is wrong, in words.
    value : object, optional
        The value sent; echoed when JSON can carry it, else its ``repr``.
    status : int, default 422
        The HTTP status.

    Returns
    -------
    fastapi.HTTPException
        To be raised by a route.

    Examples
    --------
    >>> error = field_error(["query", "layer"], "layer must be between 1 and 2 for this job", 3)
    >>> error.status_code, error.detail[0]["loc"], error.detail[0]["input"]
    (422, ['query', 'layer'], 3)
    """
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": "value_error", "input": _jsonable(value)}])


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by its text (``'nan'``, ``'inf'``), at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


async def _internal_error(request: Request, exc: Exception) -> JSONResponse:
    # the client gets the exception's type only: a traceback would show the server's paths and code
    logger.exception("internal error on %s %s", request.method, request.url.path)
    return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)


async def _store_unwritable(request: Request, exc: sqlite3.OperationalError) -> JSONResponse:
    # the job store cannot be read or written at the moment (a full disk, a lock held too long): the request is
    # fine and may succeed later, so a 503 with Retry-After; any other SQLite error is the service's own (a 500
    # naming its type only, as for every other exception)
    from workers.jobs.store import transient  # noqa: PLC0415

    if not transient(exc):
        return await _internal_error(request, exc)
    logger.warning("job store unavailable on %s %s: %s", request.method, request.url.path, exc)
    return JSONResponse(
        {
            "detail": "the job store cannot be written or read at the moment (a full disk or a busy database); "
            "try again later"
        },
        status_code=503,
        headers={"Retry-After": str(STORE_RETRY_AFTER_S)},
    )


STORE_RETRY_AFTER_S = 30


async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
    # FastAPI's own handler, except that a NaN or infinity the client sent is echoed as text: JSON has neither,
    # so the 422 could not be written otherwise
    return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)


async def _http_error(request: Request, exc: StarletteHTTPException) -> Response:
    if exc.status_code == 404 and exc.detail == "Not Found":  # no route matched: say which path was asked for
        exc = StarletteHTTPException(404, f"no route for {request.method} {request.url.path}")
    elif exc.status_code == 405:
        exc = _method_not_allowed(request)
    elif exc.status_code == 400 and isinstance(exc.detail, str):
        exc = _unreadable_body(request, exc)
    return await http_exception_handler(request, exc)


def documented_methods(request: Request) -> set[str]:
    """The methods of the documented routes whose path matches the request's (empty when none does).

    Parameters
    ----------
    request : fastapi.Request

    Returns
    -------
    set of str
    """
    path = request.url.path
    methods: set[str] = set()
    for route in flat_routes(request.app.routes):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and getattr(route, "include_in_schema", True) and regex.match(path):
            methods.update(route_methods)
    return methods


def _method_not_allowed(request: Request) -> StarletteHTTPException:
    """A 405 whose Allow header lists the methods of every route on the path: Starlette's names the methods of
    the first route that matched the path only, and a path such as ``/jobs/{id}`` has one route per method."""
    path = request.url.path
    methods: set[str] = set()
    catch_all: set[str] = set()  # the methods of routes outside the schema (the 404 of unknown job paths)
    for route in flat_routes(request.app.routes):
        regex, route_methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and route_methods and regex.match(path):
            (methods if getattr(route, "include_in_schema", True) else catch_all).update(route_methods)
    methods = methods or catch_all
    if "GET" in methods:
        methods.add("HEAD")
    allow = ", ".join(sorted(methods))
    return StarletteHTTPException(
        405, f"{request.method} is not allowed on {path}; allowed: {allow}", headers={"Allow": allow}
    )


def flat_routes(routes: list[Any]) -> list[Any]:
    """Every route, included routers opened up (FastAPI keeps an included router as one entry; this app includes
    its routers without a prefix)."""
    flat = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        flat.extend(flat_routes(inner.routes) if inner is not None else [route])
    return flat


_UPLOAD_FIELDS = {"/datasets": "files", "/reconstruct": "maps"}
_MAX_JSON_DEPTH = sys.getrecursionlimit()  # json.loads recurses once per level of nesting


def _unreadable_body(request: Request, exc: StarletteHTTPException) -> HTTPException:
    """A 400 from the body parser in the field-error shape. A multipart body (malformed, too many parts, a form
    field over its size) is named by the form field the route reads, with the parser's message and its limits; a
    JSON body that json.loads could not take apart without raising a JSONDecodeError (nested past the recursion
    limit, bytes that are not UTF-8) is a 422 at the body, as FastAPI answers other invalid JSON."""
    path = request.url.path
    content_type = request.headers.get("content-type", "")
    if not content_type.lower().startswith(("multipart/", "application/x-www-form-urlencoded")):
        # FastAPI raises its 400 from the parser's own exception: that says what is wrong with the JSON
        cause = exc.__cause__
        if isinstance(cause, RecursionError):
            reason = f"it is nested too deeply (more than about {_MAX_JSON_DEPTH} levels of arrays or objects)"
        elif isinstance(cause, UnicodeDecodeError):
            reason = f"it is not UTF-8 text ({cause.reason} at byte {cause.start})"
        else:
            reason = f"{exc.detail}" + (f": {type(cause).__name__}: {cause}" if cause is not None else "")
        return field_error(["body"], f"the JSON body cannot be read: {reason}")
    field = _UPLOAD_FIELDS.get(path, "files" if path.startswith("/models/") else "body")
    return field_error(
        ["body", field] if field != "body" else ["body"],
        f"the request body cannot be read: {exc.detail} (a multipart/form-data body takes at most 1000 "
        "parts and 1 MiB per field that is not a file)",
        status=400,
    )


def exception_handlers() -> dict[Any, Any]:
    """The service's exception handlers, for ``FastAPI(exception_handlers=...)``.

    Returns
    -------
    dict
        Exception class to handler: any uncaught exception gives a 500 naming its type only, a job store that
        cannot be written (a full disk) a 503 with Retry-After, a request that fails validation a 422 (non-finite
        numbers echoed as text), an unknown path a 404 naming it.
    """
    return {
        Exception: _internal_error,
        sqlite3.OperationalError: _store_unwritable,
        RequestValidationError: _validation_error,
        StarletteHTTPException: _http_error,
    }
