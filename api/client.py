"""The Python client of the deconv service (httpx2), one method per route.

::

    from api.client import DeconvClient
    from configs import sample_paths

    with DeconvClient("http://127.0.0.1:8000", api_key=None) as client:
        dataset = client.upload_dataset(sample_paths()[:2])   # image paths, or a folder, or (name, bytes) parts
        job = client.submit({"dataset_id": dataset["id"], "layers": [{"n_filters": 8, "filter_size": 7, "lam": 1}],
                             "n_iter": 20})
        job = client.wait(job["id"], on_progress=lambda j: print(j["progress"]))
        filters = client.filters(job["id"])                   # (K, C, s, s) float32
        maps = client.encode(job["id"], new_images)            # (N, K, H', W')
        images = client.reconstruct(maps, job_id=job["id"])    # (N, C, H, W)

Every refusal of the service raises :class:`DeconvAPIError`, whose message names the field(s) the service named
(``layers.0.lam: Input should be greater than 0 (got 0)``); so does a service that cannot be reached (``status``
None, the message names the URL). :meth:`DeconvClient.wait` raises :class:`JobWaitTimeout` when its timeout passes.
Arrays travel as ``.npy`` (``allow_pickle=False`` both ways).
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx2
import numpy as np
from pydantic import BaseModel

from workers.jobs.status import TERMINAL

__all__ = ["DeconvAPIError", "DeconvClient", "JobWaitTimeout", "TERMINAL_STATUSES"]

TERMINAL_STATUSES = TERMINAL
_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")
_CHUNK = 1 << 16

#: what :meth:`DeconvClient.upload_dataset` and :meth:`DeconvClient.encode` take: paths (files or folders of
#: image files) or (name, bytes) parts.
ImageParts = Sequence[str | os.PathLike[str] | tuple[str, bytes]]


class DeconvAPIError(Exception):
    """The service refused a request, answered with an error, or could not be reached.

    Attributes
    ----------
    status : int or None
        The HTTP status (4xx: the request's fault; 5xx: the service's); None when no answer came.
    detail : object
        The ``detail`` of the service's JSON error (a string, or a list of ``{"loc", "msg", ...}``), or the
        body's text when it was not JSON; None when no answer came.
    message : str
        One line naming the field(s) and the value(s): ``HTTP 422: layers.0.lam: Input should be ... (got 0)``.
    """

    def __init__(self, status: int | None, detail: Any, message: str):
        super().__init__(message)
        self.status = status
        self.detail = detail
        self.message = message

    @property
    def client_error(self) -> bool:
        """True for a 4xx: the request was at fault (a bad field, a missing job, a job not finished yet)."""
        return self.status is not None and 400 <= self.status < 500

    @classmethod
    def from_response(cls, response: httpx2.Response) -> DeconvAPIError:
        try:
            detail = response.json().get("detail")
        except (ValueError, AttributeError):
            detail = response.text.strip()[:500] or response.reason_phrase
        return cls(response.status_code, detail, f"HTTP {response.status_code}: {describe_detail(detail)}")


class JobWaitTimeout(TimeoutError):
    """:meth:`DeconvClient.wait` gave up; `job` is the job as last seen (it goes on at the service)."""

    def __init__(self, job: dict[str, Any], timeout: float):
        p = job["progress"]
        super().__init__(f"job {job['id']} is still {job['status']} after {timeout:g} s (layer {p['layer']}/"
                         f"{p['n_layers']}, outer iteration {p['iteration']}/{p['n_iter']}); it goes on at the "
                         "service")
        self.job = job


def describe_detail(detail: Any) -> str:
    """One line from a JSON error's ``detail``: ``field.path: message (got value)`` per error, joined by ``; ``.

    The location's first part (``body``, ``query``, ``path``, ``header``) is dropped for the body and kept for the
    others, so a query parameter reads ``query.layer``.
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
        shown = "input" in error and error.get("type") != "missing" and len(repr(value)) <= 80
        got = f" (got {value!r})" if shown else ""
        parts.append(f"{field}: {error.get('msg', 'invalid')}{got}")
    return "; ".join(parts)


class DeconvClient:
    """A connection to the deconv service.

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

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 120.0,
                 transport: httpx2.BaseTransport | None = None):
        self.base_url = base_url.rstrip("/")
        headers = {"X-API-Key": api_key} if api_key else {}
        self._http = httpx2.Client(base_url=self.base_url, headers=headers, timeout=timeout, transport=transport)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> DeconvClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DeconvClient({self.base_url!r})"

    # -- service and datasets ------------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """``{"status": "ok", "version", "runner", "queued"}``; needs no key."""
        return self._request("GET", "/health").json()

    def upload_dataset(self, images: ImageParts) -> dict[str, Any]:
        """Upload images as one dataset; returns ``{"id", "n_images", "shapes", "dtypes", "created_at"}``.

        Parameters
        ----------
        images : sequence of path or (name, bytes)
            Image files (PNG, JPEG, TIFF, NPY; or one zip or npz), folders of them (their image files, sorted by
            name), or (name, bytes) parts.
        """
        return self._request("POST", "/datasets", files=_file_parts("files", images)).json()

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        return self._request("GET", f"/datasets/{dataset_id}").json()

    # -- jobs ----------------------------------------------------------------------------------------------------

    def submit(self, spec: Mapping[str, Any] | BaseModel, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a learning job; returns the job (``status`` "queued").

        Parameters
        ----------
        spec : dict or JobSpec
            The fields of :class:`workers.jobs.spec.JobSpec`: a learning config plus ``dataset_id`` (and optionally
            ``workers``, ``backend``).
        idempotency_key : str, optional
            The same key again returns the job it first created, instead of a second job.
        """
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/jobs", json=body, headers=headers).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """The job: ``status``, ``progress`` (layer, iteration, objective, ...), ``error``, ``spec``, ``links``."""
        return self._request("GET", f"/jobs/{job_id}").json()

    def jobs(self, limit: int | None = None, status: str | None = None, *, page_size: int = 100
             ) -> Iterator[dict[str, Any]]:
        """Every job (newest first), or the first `limit`, optionally of one `status`, page after page.

        A generator: the requests are made as it is iterated.
        """
        cursor: str | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            size = page_size if remaining is None else min(page_size, remaining)
            params = {k: v for k, v in (("limit", size), ("cursor", cursor), ("status", status)) if v is not None}
            page = self._request("GET", "/jobs", params=params).json()
            yield from page["items"]
            if remaining is not None:
                remaining -= len(page["items"])
            cursor = page["next_cursor"]
            if cursor is None or not page["items"]:
                return

    def cancel(self, job_id: str) -> dict[str, Any]:
        """Cancel a job: a queued one at once, a running one after its current outer iteration."""
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def wait(self, job_id: str, *, poll: float = 0.5, timeout: float | None = None, max_poll: float = 5.0,
             on_progress: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Poll the job until it has succeeded, failed or been cancelled; returns it as it ended.

        Parameters
        ----------
        poll : float
            Seconds between polls at first. While nothing changes the interval grows by a quarter per poll up to
            `max_poll`; a change brings it back to `poll`.
        timeout : float, optional
            Seconds to wait in all (default: as long as it takes).
        on_progress : callable, optional
            Called with the job whenever its status or progress changed (and once at the start).

        Raises
        ------
        JobWaitTimeout
            When `timeout` passed first; the job goes on at the service.
        """
        if poll <= 0:
            raise ValueError(f"poll must be positive, got {poll}")
        deadline = None if timeout is None else time.monotonic() + timeout
        interval, seen = poll, None
        while True:
            job = self.job(job_id)
            state = (job["status"], job["progress"])
            if state != seen:
                seen, interval = state, poll
                if on_progress is not None:
                    on_progress(job)
            else:
                interval = min(interval * 1.25, max(max_poll, poll))
            if job["status"] in TERMINAL_STATUSES:
                return job
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JobWaitTimeout(job, timeout)
                interval = min(interval, left)
            time.sleep(interval)

    # -- results -------------------------------------------------------------------------------------------------

    def filters(self, job_id: str, layer: int | None = None) -> np.ndarray:
        """Filters of `layer` (default: the top one), (K, C, s, s) float32."""
        return _load_npy(self._request("GET", f"/jobs/{job_id}/filters", params=_params(layer=layer)).content)

    def filters_png(self, job_id: str, layer: int | None = None) -> bytes:
        """A montage of the filters of `layer` (higher layers: projected to pixel space), PNG bytes."""
        params = _params(layer=layer, format="png")
        return self._request("GET", f"/jobs/{job_id}/filters", params=params).content

    def maps(self, job_id: str, layer: int | None = None) -> dict[str, np.ndarray]:
        """Feature maps of the training images for `layer`: ``{"image-00000": (K, H', W'), ...}``."""
        data = self._request("GET", f"/jobs/{job_id}/maps", params=_params(layer=layer)).content
        with np.load(io.BytesIO(data), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    def reconstructions(self, job_id: str) -> np.ndarray:
        """The training images rebuilt from the top layer's maps, (N, C, H, W) float32 (preprocessed space)."""
        return _load_npy(self._request("GET", f"/jobs/{job_id}/reconstructions").content)

    def reconstructions_png(self, job_id: str) -> bytes:
        """Each preprocessed input beside its reconstruction, PNG bytes."""
        return self._request("GET", f"/jobs/{job_id}/reconstructions", params={"format": "png"}).content

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """One record per outer iteration so far: ``layer``, ``iteration``, ``objective``, ``sparsity``, ..."""
        return self._request("GET", f"/jobs/{job_id}/history").json()

    def history_png(self, job_id: str) -> bytes:
        """The objective per outer iteration as a plot, PNG bytes."""
        return self._request("GET", f"/jobs/{job_id}/history", params={"format": "png"}).content

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """Every artifact of the job: ``name``, ``sha256``, ``size``, ``media_type``, ``url``."""
        return self._request("GET", f"/jobs/{job_id}/artifacts").json()

    def download(self, job_id: str, name: str, path: str | os.PathLike[str]) -> Path:
        """Save artifact `name` of the job to `path` (a file, or a folder to put `name` in); returns the file.

        The bytes stream into a temporary file beside the target, are checked against the sha256 that
        ``/jobs/{id}/artifacts`` lists, and only then replace the target: a failed download leaves nothing.
        """
        listed = {a["name"]: a for a in self.artifacts(job_id)}
        if name not in listed:
            raise DeconvAPIError(404, None, f"HTTP 404: job {job_id} has no artifact {name!r} (it has "
                                 f"{', '.join(sorted(listed)) or 'none'})")
        target = Path(path)
        if target.is_dir():
            target = target / name
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
        try:
            with handle, self._stream("GET", f"/jobs/{job_id}/artifacts/{name}") as response:
                for chunk in response.iter_bytes(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != listed[name]["sha256"]:
                raise DeconvAPIError(None, None, f"artifact {name!r} of job {job_id} arrived damaged: sha256 "
                                     f"{digest.hexdigest()}, the service lists {listed[name]['sha256']}")
            os.chmod(handle.name, 0o644)
            os.replace(handle.name, target)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        return target

    # -- models --------------------------------------------------------------------------------------------------

    def encode(self, job_id: str, images: np.ndarray | ImageParts, *, layer: int | None = None,
               max_iter: int = 200, method: str | None = None) -> np.ndarray:
        """Feature maps of new images with the job's filters, (N, K, H', W') float32 of `layer` (default: top).

        Parameters
        ----------
        images : array or sequence of path or (name, bytes)
            An array of shape (H, W) or (C, H, W) (one image) or (N, C, H, W); or image files as for
            :meth:`upload_dataset`. They must share one shape; the job's preprocessing is applied to them.
        max_iter : int
            Inference iterations per layer.
        method : {"admm", "fista", "zeiler"}, optional
            Default: the job's inference method.
        """
        if isinstance(images, np.ndarray):
            files = [("files", ("images.npy", _npy_bytes(images), "application/x-npy"))]
        else:
            files = _file_parts("files", images)
        params = _params(layer=layer, max_iter=max_iter, method=method)
        return _load_npy(self._request("POST", f"/models/{job_id}/encode", params=params, files=files).content)

    def encode_layers(self, job_id: str, images: np.ndarray | ImageParts, *, layer: int | None = None,
                      max_iter: int = 200, method: str | None = None) -> dict[str, np.ndarray]:
        """As :meth:`encode`, the maps of every layer up to `layer` (``"L1"``, ``"L2"``, ...) and the switches
        of the layers that pool (``"S1"``, ...): what :meth:`reconstruct` needs (``switches=``) to project maps
        of a layer above a pooling layer down to pixels."""
        if isinstance(images, np.ndarray):
            files = [("files", ("images.npy", _npy_bytes(images), "application/x-npy"))]
        else:
            files = _file_parts("files", images)
        params = _params(layer=layer, max_iter=max_iter, method=method, format="npz")
        body = self._request("POST", f"/models/{job_id}/encode", params=params, files=files).content
        with np.load(io.BytesIO(body), allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}

    def reconstruct(self, maps: np.ndarray, *, job_id: str | None = None, layer: int | None = None,
                    filters: np.ndarray | None = None, boundary: str = "circular",
                    switches: Mapping[str, np.ndarray] | None = None) -> np.ndarray:
        """Images (N, C, H, W) from maps (N, K, H', W') or (K, H', W').

        Give either `job_id` (a finished job's filters; maps of `layer`, default the top one, projected through
        every layer below to pixels) or `filters` (K, C, s, s) with their `boundary` ("circular" or "valid").
        When a layer below `layer` pools, `switches` is what :meth:`encode_layers` returned for these maps.
        """
        return _load_npy(self._reconstruct(maps, job_id, layer, filters, boundary, "npy", switches))

    def reconstruct_png(self, maps: np.ndarray, *, job_id: str | None = None, layer: int | None = None,
                        filters: np.ndarray | None = None, boundary: str = "circular",
                        switches: Mapping[str, np.ndarray] | None = None) -> bytes:
        """As :meth:`reconstruct`, the images as one PNG sheet."""
        return self._reconstruct(maps, job_id, layer, filters, boundary, "png", switches)

    def _reconstruct(self, maps: np.ndarray, job_id: str | None, layer: int | None, filters: np.ndarray | None,
                     boundary: str, format: str, switches: Mapping[str, np.ndarray] | None) -> bytes:  # noqa: A002
        files = [("maps", ("maps.npy", _npy_bytes(maps), "application/x-npy"))]
        if filters is not None:
            files.append(("filters", ("filters.npy", _npy_bytes(filters), "application/x-npy")))
        if switches is not None:
            buffer = io.BytesIO()
            np.savez(buffer, **{k: np.asarray(v) for k, v in switches.items() if k[:1] in "LS"})
            files.append(("switches", ("switches.npz", buffer.getvalue(), "application/x-npz")))
        data = _params(job_id=job_id, layer=layer, boundary=boundary)
        return self._request("POST", "/reconstruct", params={"format": format}, data=data, files=files).content

    # -- transport -----------------------------------------------------------------------------------------------

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
        exc.request  # noqa: B018
    except RuntimeError:
        return False
    return True


def _params(**values: Any) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _load_npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in `folder` (PNG, JPEG, TIFF, NPY), sorted by name."""
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in _IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"folder {str(folder)!r} holds no {'/'.join(_IMAGE_SUFFIXES)} file")
    return paths


def _file_parts(field: str, images: ImageParts) -> list[tuple[str, tuple[str, bytes, str]]]:
    if isinstance(images, str | os.PathLike | tuple):
        raise TypeError("images must be a sequence of paths or (name, bytes) parts, got a single "
                        f"{type(images).__name__}; wrap it in a list")
    parts = []
    for item in images:
        if isinstance(item, tuple):
            name, data = item
            parts.append((field, (name, bytes(data), "application/octet-stream")))
            continue
        path = Path(item)
        for file in image_files(path) if path.is_dir() else [path]:
            parts.append((field, (file.name, file.read_bytes(), "application/octet-stream")))
    if not parts:
        raise ValueError("no image to send")
    return parts
