"""The client's connection to the service: one ``httpx2.Client``, the key header, and the translation of every
HTTP error or unreachable service into :class:`~api.client.errors.DeconvAPIError`."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx2

from .errors import DeconvAPIError


class Connection:
    """An open connection to the deconv service, the base of :class:`~api.client.DeconvClient`.

    Parameters
    ----------
    base_url : str
        ``http://host:port`` of the service.
    api_key : str, optional
        Sent as ``X-API-Key`` (needed when the service has a key).
    timeout : float
        Seconds to wait for a connection and for each read (an upload or an encode can take a while).
    transport : httpx2.BaseTransport, optional
        For tests (``httpx2.ASGITransport``, ``httpx2.MockTransport``).
    """

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 120.0,
        transport: httpx2.BaseTransport | None = None,
    ):
        scheme, _, rest = str(base_url).partition("://")
        if scheme.lower() not in ("http", "https") or not rest.strip("/"):
            raise ValueError(f"url: the service's URL must be http://HOST:PORT or https://..., got {base_url!r}")
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx2.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        """Close the connection; the client cannot be used after."""
        self._http.close()

    def __enter__(self) -> Connection:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    def health(self) -> dict[str, Any]:
        """The service's state; needs no key.

        Returns
        -------
        dict
            ``{"status": "ok", "version", "runner", "queued"}``.
        """
        return self._request("GET", "/health").json()

    def _request(self, method: str, path: str, **kwargs: Any) -> httpx2.Response:
        try:
            response = self._http.request(method, path, **kwargs)
        except httpx2.TransportError as exc:
            raise self._unreachable(exc) from None
        if response.is_error:
            raise DeconvAPIError.from_response(response)
        return response

    @contextmanager
    def _stream(self, method: str, path: str) -> Iterator[httpx2.Response]:
        try:
            with self._http.stream(method, path) as response:
                if response.is_error:
                    response.read()
                    raise DeconvAPIError.from_response(response)
                yield response
        except httpx2.TransportError as exc:
            raise self._unreachable(exc) from None

    def _unreachable(self, exc: httpx2.TransportError) -> DeconvAPIError:
        url = f"{self.base_url}{exc.request.url.path}" if _has_request(exc) else self.base_url
        if isinstance(exc, httpx2.TimeoutException):
            why = f"no answer from the deconv service at {url} in time ({type(exc).__name__})"
        else:
            why = f"cannot reach the deconv service at {url}: {exc or type(exc).__name__}"
        return DeconvAPIError(None, None, why + " (is `deconv serve` running there? see --url / DECONV_URL)")


def _has_request(exc: httpx2.TransportError) -> bool:
    try:
        exc.request  # noqa: B018  (httpx2 raises RuntimeError when the error has no request)
    except RuntimeError:
        return False
    return True
