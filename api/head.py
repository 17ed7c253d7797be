"""HEAD on every GET route: an ASGI middleware that answers a HEAD request as the GET of the same path would be
answered, headers only.

FastAPI's routes answer the methods they declare only, so a HEAD on a GET route was a 405 whose ``Allow`` header
(:mod:`api.errors`) offered HEAD. Here a HEAD on a path that has a GET route runs that route as a GET, its status
and headers (``Content-Length`` included) go out unchanged and its body is dropped; the route's own checks (the
key, the 404s) apply as to the GET. Other paths keep HEAD, and get the router's 405.
"""

from __future__ import annotations

from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import flat_routes


class HeadAsGet:
    """The middleware; see the module docstring.

    Parameters
    ----------
    app : ASGI application
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "HEAD" or not _has_get(scope):
            await self.app(scope, receive, send)
            return
        ended = False

        async def send_headers_only(message: Message) -> None:
            nonlocal ended
            if message["type"] != "http.response.body":
                await send(message)
            elif not ended:
                # the first body message ends the response: the server then reports the client gone to the
                # route, and a streamed body stops there instead of being produced for nobody
                ended = True
                await send({"type": "http.response.body", "body": b"", "more_body": False})

        await self.app({**scope, "method": "GET"}, receive, send_headers_only)


def _has_get(scope: Scope) -> bool:
    """Whether a route of the app answers GET on the request's path."""
    app: Any = scope.get("app")
    path = scope.get("path", "")
    for route in flat_routes(app.routes if app is not None else []):
        regex, methods = getattr(route, "path_regex", None), getattr(route, "methods", None)
        if regex is not None and methods and "GET" in methods and regex.match(path):
            return True
    return False
