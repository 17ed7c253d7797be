"""Path types, media types and job look-ups shared by the routers."""

from __future__ import annotations

from typing import Annotated

from fastapi import HTTPException, Path

from workers.jobs.encoding import is_encode_job
from workers.jobs.store import ID_PATTERN, JobRecord, JobStore

from ..errors import field_error

NPY = "application/x-npy"
NPZ = "application/x-npz"
PNG = "image/png"
MULTIPART_SLACK = 1 << 20
"""Bytes allowed on top of an upload's files for the multipart boundaries and part headers."""

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a job id: 32 lowercase hex digits")]


def job_or_404(store: JobStore, job_id: str) -> JobRecord:
    """The job `job_id`, or a 404 naming it.

    Parameters
    ----------
    store : workers.jobs.store.JobStore
    job_id : str

    Returns
    -------
    workers.jobs.store.JobRecord
    """
    job = store.get_job(job_id)
    if job is None:
        raise HTTPException(404, f"job {job_id!r} not found")
    return job


def succeeded_job(store: JobStore, job_id: str, what: str) -> JobRecord:
    """The job `job_id` once it has succeeded; a 409 naming its status and `what` the caller wanted otherwise.

    Parameters
    ----------
    store : workers.jobs.store.JobStore
    job_id : str
    what : str
        What the caller asked for (``"filters"``), for the message.

    Returns
    -------
    workers.jobs.store.JobRecord
    """
    job = job_or_404(store, job_id)
    if what != "maps":
        refuse_encode_job(job, what)
    if job.status != "succeeded":
        raise HTTPException(409, f"job {job_id} is {job.status}: its {what} can be read once it has succeeded")
    return job


def refuse_encode_job(job: JobRecord, what: str) -> None:
    """A 404 for what only a learning job has (filters, a model, reconstructions) asked of an encode job.

    Parameters
    ----------
    job : workers.jobs.store.JobRecord
    what : str
        What the caller wanted, for the message.
    """
    if is_encode_job(job.spec):
        raise HTTPException(
            404,
            f"job {job.id} is an encode job: it has maps only, not {what}; its model is job {job.spec['model_id']}",
        )


def check_layer(job: JobRecord, layer: int | None, where: str = "query") -> int:
    """The layer asked for, checked against the job's layers; the top layer when `layer` is None.

    Parameters
    ----------
    job : workers.jobs.store.JobRecord
    layer : int or None
        1-based.
    where : {"query", "body"}
        Where the client sent `layer`, for the error's ``loc``.

    Returns
    -------
    int
        A layer between 1 and the job's number of layers.
    """
    n_layers = job.spec["layer"] if is_encode_job(job.spec) else job.progress.n_layers  # maps of the layers encoded
    if layer is None:
        return n_layers
    if not 1 <= layer <= n_layers:
        raise field_error([where, "layer"], f"layer must be between 1 and {n_layers} for this job", layer)
    return layer
