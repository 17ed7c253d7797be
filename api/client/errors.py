"""What the client raises: :class:`DeconvAPIError` for every refusal or failure of the service,
:class:`JobWaitTimeout` when :meth:`~api.client.DeconvClient.wait` gives up."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import httpx2


class DeconvAPIError(Exception):
    """The service refused a request, answered with an error, or could not be reached.

    Parameters
    ----------
    status : int or None
        The HTTP status (4xx: the request's fault; 5xx: the service's); None when no answer came.
    detail : object
        The ``detail`` of the service's JSON error (a string, or a list of ``{"loc", "msg", ...}``), or the
        body's text when it was not JSON; None when no answer came.
    message : str
        One line naming the field(s) and the value(s): ``HTTP 422: layers.0.lam: Input should be ... (got 0)``.

    Examples
    --------
    >>> error = DeconvAPIError(404, "job 'x' not found", "HTTP 404: job 'x' not found")
    >>> error.client_error, str(error)
    (True, "HTTP 404: job 'x' not found")
    """

    def __init__(self, status: int | None, detail: Any, message: str):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.message = message

    @property
    def client_error(self) -> bool:
        """Whether the request was at fault (a 4xx: a bad field, a missing job, a job not finished yet).

        Returns
        -------
        bool
        """
        return self.status is not None and 400 <= self.status < 500

    @classmethod
    def from_response(cls, response: httpx2.Response) -> DeconvAPIError:
        """The error an HTTP error response stands for.

        Parameters
        ----------
        response : httpx2.Response
            A 4xx or 5xx; its JSON ``detail`` when it has one, else its text.

        Returns
        -------
        DeconvAPIError
        """
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text.strip()[:500] or response.reason_phrase
        return cls(response.status_code, detail, f"HTTP {response.status_code}: {describe_detail(detail)}")


class JobWaitTimeout(TimeoutError):
    """:meth:`~api.client.DeconvClient.wait` gave up; the job goes on at the service.

    Parameters
    ----------
    job : dict
        The job as last seen (kept as ``job``).
    timeout : float
        The seconds waited.
    """

    def __init__(self, job: dict[str, Any], timeout: float):
        p = job["progress"]
        super().__init__(
            f"job {job['id']} is still {job['status']} after {timeout:g} s (layer {p['layer']}/"
            f"{p['n_layers']}, outer iteration {p['iteration']}/{p['n_iter']}); it goes on at the "
            "service"
        )
        self.job = job


def describe_detail(detail: Any) -> str:
    """One line from a JSON error's ``detail``: ``field.path: message (got value)`` per error, joined by ``; ``.

    The location's first part (``body``, ``query``, ``path``, ``header``) is dropped for the body and kept for the
    others, so a query parameter reads ``query.layer``.

    Parameters
    ----------
    detail : str or list of dict
        The ``detail`` of the service's error.

    Returns
    -------
    str

    Examples
    --------
    >>> describe_detail([{"loc": ["body", "layers", 0, "lam"], "msg": "Input should be greater than 0",
    ...                   "input": 0}])
    'layers.0.lam: Input should be greater than 0 (got 0)'
    >>> describe_detail([{"loc": ["query", "layer"], "msg": "out of range", "input": 3}])
    'query.layer: out of range (got 3)'
    """
    if not isinstance(detail, list):
        return str(detail)
    parts = []
    for error in detail:
        if not isinstance(error, Mapping):
            parts.append(str(error))
            continue
        loc = [str(part) for part in error.get("loc", [])]
        if loc[:1] == ["body"] and len(loc) > 1:
            loc = loc[1:]
        field = ".".join(loc) or "(request)"
        value = error.get("input")
        shown = value is not None and error.get("type") != "missing" and len(repr(value)) <= 80
        got = f" (got {value!r})" if shown else ""
        parts.append(f"{field}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)
