"""``/jobs``: submit, list, look up and cancel learning jobs; and the 404 for any other path under ``/jobs/``.

Route functions carry no docstring: FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Annotated

from fastapi import APIRouter, Header, HTTPException, Query, Request, Response

from workers.jobs.spec import JobSpec, SpecError, check_against_dataset, check_resources, progress_steps
from workers.jobs.status import JobStatus
from workers.jobs.store import QueueFull

from ..deps import RunnerDep, SettingsDep, StoreDep, guarded
from ..errors import documented_methods, field_error
from ..schemas import JobList, JobOut
from .common import JobId, job_or_404

if TYPE_CHECKING:
    from workers.jobs.runner import JobRunner
    from workers.jobs.store import JobStore

    from ..settings import Settings

router = APIRouter(tags=["jobs"], dependencies=guarded)

RETRY_AFTER_S = 30
"""Seconds a client refused for a full queue is asked to wait (the ``Retry-After`` header)."""
_queue_lock = threading.Lock()  # the count of queued jobs and the insert that follows it, as one step

IdempotencyKey = Annotated[
    str | None,
    Header(
        min_length=1,
        max_length=200,
        pattern=r"^[!-~]+$",
        description="makes a retried submission return the first one's job; printable ASCII without spaces "
        "(an empty key would be one key shared by every client)",
    ),
]


@router.post("/jobs", response_model=JobOut, status_code=202)
def submit_job(
    spec: JobSpec,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    runner: RunnerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    dataset = store.get_dataset(spec.dataset_id)
    if dataset is None:
        raise field_error(
            ["body", "dataset_id"], f"no dataset {spec.dataset_id!r}; upload one with POST /datasets", spec.dataset_id
        )
    try:
        check_against_dataset(
            spec,
            dataset,
            max_filters=settings.max_filters_per_layer,
            max_maps_bytes=settings.max_job_maps_bytes,
            max_filter_bytes=settings.max_job_filter_bytes,
        )
        check_resources(spec, max_cpus=settings.max_actor_cpus, max_gpus=settings.max_actor_gpus)
    except SpecError as exc:
        raise field_error(
            ["body", *(int(p) if p.isdigit() else p for p in exc.field.split("."))], exc.message, exc.value
        ) from None
    return enqueue(
        spec.model_dump(mode="json"),
        n_layers=len(spec.layers),
        n_iter=progress_steps(spec, dataset.n_images),
        idempotency_key=idempotency_key,
        store=store,
        runner=runner,
        settings=settings,
        response=response,
    )


def enqueue(
    spec: dict,
    *,
    n_layers: int,
    n_iter: int,
    idempotency_key: str | None,
    store: JobStore,
    runner: JobRunner,
    settings: Settings,
    response: Response,
) -> JobOut:
    """Queue a checked job spec (a reused key: its job, or 409 for another spec; then the queue's bound: 429 with
    ``Retry-After``), wake the runner for a new job and point ``Location`` at it."""
    with _queue_lock:
        try:
            job, created = store.submit(
                spec,
                n_layers=n_layers,
                n_iter=n_iter,
                idempotency_key=idempotency_key,
                max_queued=settings.max_queued_jobs,
            )
        except ValueError as exc:  # the key was used before for another spec
            raise field_error(["header", "Idempotency-Key"], str(exc), idempotency_key, status=409) from None
        except QueueFull as exc:
            raise HTTPException(
                429,
                f"{exc.queued} jobs are waiting to run, the most this service queues "
                f"(DECONV_MAX_QUEUED_JOBS = {settings.max_queued_jobs}); submit again later",
                headers={"Retry-After": str(RETRY_AFTER_S)},
            ) from None
    if created:
        runner.notify()
    response.headers["Location"] = f"/jobs/{job.id}"
    return JobOut.of(job)


@router.get("/jobs", response_model=JobList)
def list_jobs(
    store: StoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=100)] = None,
    status: Annotated[JobStatus | None, Query()] = None,
) -> JobList:
    try:
        jobs, next_cursor = store.list_jobs(limit=limit, cursor=cursor, status=status)
    except ValueError as exc:
        raise field_error(["query", "cursor"], str(exc), cursor) from None
    return JobList(items=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)


@router.get("/jobs/{job_id}", response_model=JobOut)
def get_job(job_id: JobId, store: StoreDep) -> JobOut:
    return JobOut.of(job_or_404(store, job_id))


@router.delete(
    "/jobs/{job_id}",
    response_model=JobOut,
    responses={
        202: {"description": "cancel requested: a running job stops within a second or two, even mid-iteration"},
        409: {"description": "the job has already succeeded or failed"},
    },
)
def cancel_job(job_id: JobId, response: Response, store: StoreDep) -> JobOut:
    job = job_or_404(store, job_id)
    if job.status in ("succeeded", "failed"):
        raise HTTPException(409, f"job {job_id} has already {job.status}; there is nothing to cancel")
    job = store.request_cancel(job_id)
    response.status_code = 202 if job.status == "running" else 200
    return JobOut.of(job)


unknown = APIRouter(dependencies=guarded)
"""Whatever else is under ``/jobs/`` (a malformed id, a traversal attempt); included after every other router,
so that it only catches what none of them matched."""


@unknown.api_route("/jobs/{rest:path}", methods=["GET", "DELETE"], include_in_schema=False)
def not_a_job(rest: str, request: Request) -> None:
    if documented_methods(request):  # a documented path asked with another method: a 405 with its Allow
        raise HTTPException(405)
    raise field_error(
        ["path", "job_id"],
        "no such job resource: a job id is 32 lowercase hex digits, "
        "followed by nothing or one of the documented sub-resources",
        rest,
        status=404,
    )
