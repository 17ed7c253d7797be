"""The JSON shapes of the HTTP API (pydantic), shared by the server, the client and the CLI.

The job spec itself is :class:`workers.jobs.spec.JobSpec` (a learning config plus ``dataset_id``, ``workers``,
``backend``), or for an encode job :class:`workers.jobs.encoding.EncodeSpec` (``model_id``, ``dataset_id``, ``kind``).
Errors are ``{"detail": [{"loc": [...], "msg": ..., "type": ..., "input": ...}]}`` for a bad field
(FastAPI's validation shape, also used for the service's own checks) and ``{"detail": "message"}`` otherwise.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

from pydantic import BaseModel, ConfigDict

from workers.jobs.encoding import EncodeSpec, is_encode_job
from workers.jobs.spec import JobSpec
from workers.jobs.store import DatasetRecord, JobRecord

__all__ = [
    "ArtifactOut",
    "DatasetOut",
    "EncodeSpec",
    "HealthOut",
    "JobList",
    "JobOut",
    "JobSpec",
    "PresetOut",
    "ProgressOut",
]


class _Out(BaseModel):
    model_config = ConfigDict(frozen=True)


class DatasetOut(_Out):
    """An uploaded dataset: its images' shapes (C, H, W) and dtypes, in upload order."""

    id: str
    n_images: int
    shapes: list[list[int]]
    dtypes: list[str]
    created_at: datetime

    @classmethod
    def of(cls, record: DatasetRecord) -> DatasetOut:
        """The JSON shape of a stored dataset.

        Parameters
        ----------
        record : workers.jobs.store.DatasetRecord

        Returns
        -------
        DatasetOut
        """
        return cls(
            id=record.id,
            n_images=record.n_images,
            shapes=record.shapes,
            dtypes=[im.dtype for im in record.images],
            created_at=_time(record.created_at),
        )


class ProgressOut(_Out):
    """Where a job is: the layer and outer iteration, the step over all layers, the last objective and sparsity."""

    layer: int
    n_layers: int
    iteration: int
    n_iter: int
    step: int
    total_steps: int
    objective: float | None
    sparsity: float | None
    elapsed: float | None
    fraction: float


class JobOut(_Out):
    """A job: its status, progress, spec, and links to its results once it has succeeded."""

    id: str
    status: str
    dataset_id: str
    progress: ProgressOut
    error: str | None
    cancel_requested: bool
    attempts: int
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    spec: dict[str, Any]
    links: dict[str, str]

    @classmethod
    def of(cls, job: JobRecord) -> JobOut:
        """The JSON shape of a stored job.

        Parameters
        ----------
        job : workers.jobs.store.JobRecord

        Returns
        -------
        JobOut
            With ``links`` to the results only once the job has succeeded.
        """
        p = job.progress
        progress = ProgressOut(
            layer=p.layer,
            n_layers=p.n_layers,
            iteration=p.iteration,
            n_iter=p.n_iter,
            step=p.step,
            total_steps=p.total_steps,
            objective=p.objective,
            sparsity=p.sparsity,
            elapsed=p.elapsed,
            fraction=p.fraction,
        )
        base = f"/jobs/{job.id}"
        links = {"self": base, "history": f"{base}/history", "artifacts": f"{base}/artifacts"}
        if is_encode_job(job.spec):  # its maps only; the model is the learning job it names
            links["model"] = f"/jobs/{job.spec['model_id']}"
            if job.status == "succeeded":
                links["maps"] = f"{base}/maps"
        elif job.status == "succeeded":
            links |= {
                "filters": f"{base}/filters",
                "maps": f"{base}/maps",
                "reconstructions": f"{base}/reconstructions",
                "encode": f"/models/{job.id}/encode",
            }
        return cls(
            id=job.id,
            status=job.status,
            dataset_id=job.spec.get("dataset_id", ""),
            progress=progress,
            error=public_error(job.error),
            cancel_requested=job.cancel_requested,
            attempts=job.attempts,
            created_at=_time(job.created_at),
            started_at=_time(job.started_at),
            finished_at=_time(job.finished_at),
            spec=job.spec,
            links=links,
        )


class JobList(_Out):
    """A page of jobs, newest first; ``next_cursor`` asks for the next page (None: the last page)."""

    items: list[JobOut]
    next_cursor: str | None


class ArtifactOut(_Out):
    """One stored result of a job, by name, with its sha256 (also its ETag) and its download URL."""

    name: str
    sha256: str
    size: int
    media_type: str
    url: str


class PresetOut(_Out):
    """A bundled preset: its name, what it is, and its learning config as a job spec without ``dataset_id``."""

    name: str
    description: str
    spec: dict[str, Any]


class HealthOut(_Out):
    """The service's state: its version, its runner (running, stopped or disabled) and its queue length."""

    status: str
    version: str
    runner: str
    queued: int | None = None


_PATH = re.compile(r"(?<![\w:/.])(?:[A-Za-z]:)?[/\\](?:[^\s/\\'\"]+[/\\])+([^\s/\\'\"]+)")


def public_error(error: str | None) -> str | None:
    """A job's error as clients see it: every file path shortened to its last part, so that the server's folders
    (the data directory, the installation) are not shown.

    Parameters
    ----------
    error : str or None

    Returns
    -------
    str or None

    Examples
    --------
    >>> public_error("FileNotFoundError: [Errno 2] No such file: '/srv/deconv/jobs/ab/L1/maps/00001.npy'")
    "FileNotFoundError: [Errno 2] No such file: '…/00001.npy'"
    """
    return None if error is None else _PATH.sub(r"…/\1", error)


def _time(t: float | None) -> datetime | None:
    return None if t is None else datetime.fromtimestamp(t, tz=UTC)
