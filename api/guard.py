"""The service's front door: an ASGI middleware that checks a request's headers before any of its body is read.

In order, each refusal a JSON error in the service's shape (:mod:`api.errors`), sent without reading the body:

1. ``Host`` must name this service (``DECONV_ALLOWED_HOSTS``; by default ``localhost``, the loopback addresses
   and the address the client connected to): a page whose DNS name was re-pointed at the service (DNS
   rebinding) sends its own name and is refused with a 400.
2. Without an API key, a request carrying an ``Origin`` other than the service's own is refused with a 403: a
   browser sends ``Origin`` with every cross-site POST, so a web page cannot submit jobs or uploads (CSRF).
3. With an API key, every path but the public ones (``/health``, the dashboard, the API docs) needs it in
   ``X-API-Key``: 401 before a byte of the body is read, so an unauthenticated client can neither make the
   service buffer an upload nor learn from a 422 what the routes expect.
4. The body is bounded: a ``Content-Length`` over the route's limit is a 413 at once; a body sent in chunks is
   counted as it arrives and refused with a 413 as soon as it passes the limit. Both 413s name the limit and the
   variable that sets it.

The key is also a dependency of the guarded routers (:func:`api.deps.require_key`), which documents it in the
OpenAPI; this middleware refuses first.
"""

from __future__ import annotations

import hmac
import json
from collections.abc import Callable
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .settings import Settings, env_name

PUBLIC_PATHS = frozenset({"/health", "/", "/docs", "/docs/oauth2-redirect", "/redoc", "/openapi.json"})
"""Paths that need no key: they hold no data (the dashboard asks for the key itself)."""
PUBLIC_PREFIXES = ("/static/",)
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})

KEY_MESSAGE = "missing or wrong X-API-Key header"


class BodyTooLarge(HTTPException):
    """A request body past its route's limit, found while it was read (a 413 naming the limit)."""

    def __init__(self, limit: int, variable: str, received: int | None = None):
        sent = f"{received} bytes or more" if received is not None else "more"
        super().__init__(
            413,
            f"the request body holds {sent}, more than the limit of {limit} bytes for this route ({variable})",
        )
        self.limit = limit


class Guard:
    """The middleware; see the module docstring.

    Parameters
    ----------
    app : ASGI application
    settings : Settings
        ``api_key``, ``allowed_hosts``, ``max_json_bytes`` and ``max_upload_bytes``.
    upload_paths : callable
        Whether a path takes uploads (its body limit is the upload limit plus `multipart_slack`); any other
        path takes ``max_json_bytes``.
    multipart_slack : int
        Bytes allowed on top of an upload's files for the multipart boundaries and part headers.
    """

    def __init__(
        self, app: ASGIApp, settings: Settings, upload_paths: Callable[[str], bool], multipart_slack: int
    ) -> None:
        self.app = app
        self.settings = settings
        self.upload_paths = upload_paths
        self.multipart_slack = multipart_slack
        self.allowed_hosts = _parse_hosts(settings.allowed_hosts)
        self._key = settings.api_key.encode() if settings.api_key is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        refusal = self._refusal(scope, headers)
        if refusal is not None:
            status, detail, extra = refusal
            await _send_json(send, status, {"detail": detail}, extra)
            return
        path = scope.get("path", "")
        if self.upload_paths(path):
            limit, variable = self.settings.max_upload_bytes + self.multipart_slack, env_name("max_upload_bytes")
        else:
            limit, variable = self.settings.max_json_bytes, env_name("max_json_bytes")
        length = headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            error = BodyTooLarge(limit, variable, int(length))
            await _send_json(send, 413, {"detail": error.detail}, {"Connection": "close"})
            return
        await self.app(scope, _counting(receive, limit, variable), send)

    def _refusal(self, scope: Scope, headers: Headers) -> tuple[int, str, dict[str, str]] | None:
        """(status, message, headers) of the answer that refuses the request, or None to let it through."""
        host = _hostname(headers.get("host", ""))
        if "*" not in self.allowed_hosts and host not in self._hosts_for(scope):
            return (
                400,
                f"Host {host!r} is not one this service answers to; set {env_name('allowed_hosts')} "
                "to the names clients use",
                {},
            )
        origin = headers.get("origin")
        if self._key is None and origin is not None and not _same_origin(origin, headers.get("host", "")):
            return (
                403,
                f"a request from the web page at {origin!r} is refused: without an API key the service "
                "answers its own pages only",
                {},
            )
        path = scope.get("path", "")
        if self._key is not None and path not in PUBLIC_PATHS and not path.startswith(PUBLIC_PREFIXES):
            sent = headers.get("x-api-key")
            if sent is None or not hmac.compare_digest(sent.encode("latin-1"), self._key):
                return 401, KEY_MESSAGE, {"WWW-Authenticate": "APIKey"}
        return None

    def _hosts_for(self, scope: Scope) -> frozenset[str]:
        if self.allowed_hosts:
            return self.allowed_hosts
        server = scope.get("server")
        # the address this connection reached: the bound one, or the interface's when bound to every interface
        return LOOPBACK_HOSTS | ({str(server[0]).lower()} if server else set())


def _parse_hosts(value: str | None) -> frozenset[str]:
    if not value:
        return frozenset()
    return frozenset(h.strip().lower().strip("[]") for h in value.split(",") if h.strip())


def _hostname(host: str) -> str:
    """The name in a Host header, without its port; IPv6 literals without their brackets."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


def _same_origin(origin: str, host: str) -> bool:
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and parts.netloc.lower() == host.strip().lower()


def _counting(receive: Receive, limit: int, variable: str) -> Receive:
    """`receive` that raises :class:`BodyTooLarge` once the body read so far passes `limit`."""
    total = 0

    async def counted() -> Message:
        nonlocal total
        message = await receive()
        if message["type"] == "http.request":
            total += len(message.get("body", b""))
            if total > limit:
                raise BodyTooLarge(limit, variable, total)
        return message

    return counted


async def _send_json(send: Send, status: int, body: object, headers: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data})
