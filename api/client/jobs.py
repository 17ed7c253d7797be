"""The client's dataset and job methods: upload, submit, look up, list, cancel, wait."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from pydantic import BaseModel

from workers.jobs.status import TERMINAL

from .connection import Connection
from .errors import JobWaitTimeout
from .payloads import ImageParts, file_parts


class JobMethods(Connection):
    """``/datasets`` and ``/jobs``; a part of :class:`~api.client.DeconvClient`.

    Parameters
    ----------
    base_url, api_key, timeout, transport
        As for :class:`~api.client.connection.Connection`.
    """

    def upload_dataset(self, images: ImageParts) -> dict[str, Any]:
        """Upload images as one dataset.

        Parameters
        ----------
        images : sequence of path or (name, bytes)
            Image files (PNG, JPEG, TIFF, NPY; or one zip or npz), folders of them (their image files, sorted by
            name), or (name, bytes) parts.

        Returns
        -------
        dict
            ``{"id", "n_images", "shapes", "dtypes", "created_at"}``.
        """
        return self._request("POST", "/datasets", files=file_parts("files", images)).json()

    def dataset(self, dataset_id: str) -> dict[str, Any]:
        """A dataset uploaded before.

        Parameters
        ----------
        dataset_id : str

        Returns
        -------
        dict
            As :meth:`upload_dataset` returned it.
        """
        return self._request("GET", f"/datasets/{dataset_id}").json()

    def submit(self, spec: Mapping[str, Any] | BaseModel, *, idempotency_key: str | None = None) -> dict[str, Any]:
        """Submit a learning job.

        Parameters
        ----------
        spec : dict or JobSpec
            The fields of :class:`workers.jobs.spec.JobSpec`: a learning config plus ``dataset_id`` (and optionally
            ``workers``, ``backend``).
        idempotency_key : str, optional
            The same key again returns the job it first created, instead of a second job.

        Returns
        -------
        dict
            The job, ``status`` "queued" (see :meth:`job`).
        """
        body = spec.model_dump(mode="json") if isinstance(spec, BaseModel) else dict(spec)
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", "/jobs", json=body, headers=headers).json()

    def submit_encode(
        self,
        model_id: str,
        dataset_id: str,
        *,
        layer: int | None = None,
        inference: Mapping[str, Any] | None = None,
        block_size: int | None = None,
        workers: int = 1,
        idempotency_key: str | None = None,
    ) -> dict[str, Any]:
        """Submit an encode job: the maps of every image of an uploaded dataset with a finished job's model,
        computed on the cluster block by block (``GET /jobs/{id}/maps`` serves them, :meth:`save_maps` saves them).

        Parameters
        ----------
        model_id : str
            A succeeded learning job.
        dataset_id : str
            An uploaded dataset (:meth:`upload_dataset`) of images of one shape.
        layer : int, optional
            The top layer to encode (default: the model's top); every layer's maps up to it are kept.
        inference : dict, optional
            ``{"method": "admm" | "fista" | "zeiler", "max_iter": ..., ...}``; default: the model's method with
            200 iterations per layer, as :meth:`encode` encodes.
        block_size : int, optional
            Images per block; default: the most the service allows per block.
        workers : int
            Coding actors.
        idempotency_key : str, optional
            The same key again returns the job it first created.

        Returns
        -------
        dict
            The job, ``status`` "queued"; its ``spec`` holds the resolved ``layer`` and ``block_size``.
        """
        body: dict[str, Any] = {"model_id": model_id, "workers": workers}
        for name, value in (("layer", layer), ("inference", inference), ("block_size", block_size)):
            if value is not None:
                body[name] = dict(value) if isinstance(value, Mapping) else value
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else None
        return self._request("POST", f"/datasets/{dataset_id}/encode", json=body, headers=headers).json()

    def job(self, job_id: str) -> dict[str, Any]:
        """A job as it is now.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        dict
            ``status``, ``progress`` (layer, iteration, objective, ...), ``error``, ``spec``, ``links``.
        """
        return self._request("GET", f"/jobs/{job_id}").json()

    def jobs(
        self, limit: int | None = None, status: str | None = None, *, page_size: int = 100
    ) -> Iterator[dict[str, Any]]:
        """Every job, newest first, page after page (the requests are made as the generator is iterated).

        Parameters
        ----------
        limit : int, optional
            At most this many jobs.
        status : str, optional
            Only jobs in this state (``queued``, ``running``, ``succeeded``, ``failed``, ``cancelled``).
        page_size : int, default 100
            Jobs per request.

        Yields
        ------
        dict
            Each job, as :meth:`job` returns it.
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
        """Cancel a job: a queued one at once, a running one within a second or two.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        dict
            The job: ``cancelled``, or still ``running`` with ``cancel_requested`` true.
        """
        return self._request("DELETE", f"/jobs/{job_id}").json()

    def wait(
        self,
        job_id: str,
        *,
        poll: float = 0.5,
        timeout: float | None = None,
        max_poll: float = 5.0,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> dict[str, Any]:
        """Poll the job until it has succeeded, failed or been cancelled.

        Parameters
        ----------
        job_id : str
        poll : float
            Seconds between polls at first. While nothing changes the interval grows by a quarter per poll up to
            `max_poll`; a change brings it back to `poll`.
        timeout : float, optional
            Seconds to wait in all (default: as long as it takes).
        max_poll : float
            The longest interval between polls.
        on_progress : callable, optional
            Called with the job whenever its status or progress changed (and once at the start).

        Returns
        -------
        dict
            The job as it ended.

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
            if job["status"] in TERMINAL:
                return job
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise JobWaitTimeout(job, timeout)
                interval = min(interval, left)
            time.sleep(interval)
