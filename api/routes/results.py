"""What a job produced: ``/jobs/{id}/filters``, ``/maps``, ``/reconstructions``, ``/history``, ``/artifacts``.

Artifacts are immutable and named by their sha256, so they are served with it as ETag and cached for a year,
streamed from the store a few MiB at a time. The per-image results (maps, reconstructions) are stored in one part
per shard (:mod:`workers.jobs.results`): they are streamed from those parts, so the service never holds a whole
dataset's maps. Route functions carry no docstring: FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Path, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from solver.images.pictures import history_plot
from workers.jobs.artifacts import ArtifactCorruptError, verified_chunks
from workers.jobs.objects import npy_bytes
from workers.jobs.results import INDEX, ResultIndex, ResultsNotStoredError, etag, image_rows, maps_zip, stacked_npy
from workers.jobs.store import ArtifactRecord, JobStore

from ..deps import StoreDep, guarded
from ..errors import field_error
from ..schemas import ArtifactOut
from .common import NPY, NPZ, PNG, JobId, check_layer, job_or_404, succeeded_job

logger = logging.getLogger(__name__)

router = APIRouter(tags=["results"], dependencies=guarded)


@router.get(
    "/jobs/{job_id}/filters",
    responses={200: {"content": {NPY: {}, PNG: {}}, "description": "(K, C, s, s) float32, or a montage"}},
)
def get_filters(
    request: Request,
    job_id: JobId,
    store: StoreDep,
    layer: Annotated[int | None, Query(ge=1)] = None,
    format: Annotated[Literal["npy", "png"], Query()] = "npy",
) -> Response:  # noqa: A002
    layer = check_layer(succeeded_job(store, job_id, "filters"), layer)
    return artifact_response(request, store, job_id, f"filters-L{layer}.{format}")


@router.get(
    "/jobs/{job_id}/maps",
    responses={
        200: {
            "content": {NPZ: {}, NPY: {}},
            "description": "one (K, H', W') array per image (npz), or with ?image=i that image's (K, H', W') npy",
        }
    },
)
def get_maps(
    request: Request,
    job_id: JobId,
    store: StoreDep,
    layer: Annotated[int | None, Query(ge=1)] = None,
    image: Annotated[int | None, Query(ge=0, description="one image's maps only, by its index")] = None,
) -> Response:
    layer = check_layer(succeeded_job(store, job_id, "maps"), layer)
    if image is None and store.artifact(job_id, INDEX) is None and store.artifact(job_id, f"maps-L{layer}.npz"):
        return artifact_response(request, store, job_id, f"maps-L{layer}.npz")  # a job finished by an older deconv
    index = _index(store, job_id)
    parts = index.maps(store, job_id, layer)
    if image is not None and image >= index.n_images:
        message = f"image must be below the job's {index.n_images} images, got {image}"
        raise field_error(["query", "image"], message, image)
    tag = etag(parts, layer, image)
    headers = _cache_headers(tag, f"{job_id}-maps-L{layer}" + (".npz" if image is None else f"-{image:05d}.npy"))
    if _etag_matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    if image is not None:
        return Response(npy_bytes(image_rows(parts, image, image + 1)[0]), media_type=NPY, headers=headers)
    return StreamingResponse(maps_zip(parts), media_type=NPZ, headers=headers)


@router.get(
    "/jobs/{job_id}/reconstructions",
    responses={
        200: {"content": {NPY: {}, PNG: {}}, "description": "(N, C, H, W) float32, or inputs beside reconstructions"}
    },
)
def get_reconstructions(
    request: Request, job_id: JobId, store: StoreDep, format: Annotated[Literal["npy", "png"], Query()] = "npy"
) -> Response:  # noqa: A002
    succeeded_job(store, job_id, "reconstructions")
    if format == "png" or (store.artifact(job_id, INDEX) is None and store.artifact(job_id, "reconstructions.npy")):
        return artifact_response(request, store, job_id, f"reconstructions.{format}")
    parts = _index(store, job_id).reconstruction_parts(store, job_id)
    tag = etag(parts, "reconstructions")
    headers = _cache_headers(tag, f"{job_id}-reconstructions.npy")
    if _etag_matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    return StreamingResponse(stacked_npy(parts), media_type=NPY, headers=headers)


def _index(store: JobStore, job_id: str) -> ResultIndex:
    try:
        return ResultIndex.load(store, job_id)
    except ResultsNotStoredError as exc:
        raise HTTPException(404, str(exc)) from None


def _finite_or_none(value: Any) -> Any:
    return None if isinstance(value, float) and not math.isfinite(value) else value


def _cache_headers(etag: str, filename: str) -> dict[str, str]:
    return {
        "ETag": etag,
        "Cache-Control": "private, max-age=31536000, immutable",
        "Content-Disposition": f'attachment; filename="{filename}"',
    }


@router.get("/jobs/{job_id}/history", responses={200: {"content": {"application/json": {}, PNG: {}}}})
def get_history(
    job_id: JobId, store: StoreDep, format: Annotated[Literal["json", "png"], Query()] = "json"
) -> Response:  # noqa: A002
    job = job_or_404(store, job_id)
    history = store.history(job_id)  # readable while the job runs
    if format == "json":  # a row an older service recorded from an overflowed run: null, as JSON has no inf
        return JSONResponse([{k: _finite_or_none(v) for k, v in row.items()} for row in history])
    if not history:
        raise HTTPException(409, f"job {job_id} has no outer iteration yet to plot")
    online = (job.spec.get("learning") or {}).get("mode") == "online"  # its rows count the images read
    return Response(history_plot(history, xlabel="images read" if online else "outer iteration"), media_type=PNG)


@router.get("/jobs/{job_id}/artifacts", response_model=list[ArtifactOut])
def list_artifacts(job_id: JobId, store: StoreDep) -> list[ArtifactOut]:
    job_or_404(store, job_id)
    return [
        ArtifactOut(
            name=a.name,
            sha256=a.key[:64],
            size=a.size,
            media_type=a.media_type,
            url=f"/jobs/{job_id}/artifacts/{a.name}",
        )
        for a in store.list_artifacts(job_id)
    ]


@router.get("/jobs/{job_id}/artifacts/{name}")
def get_artifact(
    request: Request,
    job_id: JobId,
    store: StoreDep,
    name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")],
) -> Response:
    job_or_404(store, job_id)
    return artifact_response(request, store, job_id, name)


def artifact_response(request: Request, store: JobStore, job_id: str, name: str) -> Response:
    """The artifact `name` of job `job_id`, with its sha256 as ETag; a 304 when the client holds it already.

    Parameters
    ----------
    request : fastapi.Request
        Its ``If-None-Match`` header is compared with the ETag.
    store : workers.jobs.store.JobStore
    job_id, name : str

    Returns
    -------
    fastapi.Response
        200 with the bytes and the artifact's media type, or 304 without a body.
    """
    record = store.artifact(job_id, name)
    if record is None:
        raise HTTPException(404, f"job {job_id} has no artifact {name!r}")
    tag = f'"{record.key[:64]}"'
    headers = _cache_headers(tag, f"{job_id}-{name}")
    if _etag_matches(request.headers.get("if-none-match"), tag):
        return Response(status_code=304, headers=headers)
    if record.size <= _STREAM_ABOVE:
        try:
            data = store.artifacts.get(record.key)
        except ArtifactCorruptError as exc:
            logger.error("%s", exc)
            raise HTTPException(500, f"artifact {name!r} of job {job_id} is damaged in the store") from None
        return Response(data, media_type=record.media_type, headers=headers)
    try:
        fh = store.artifacts.location(record.key).open()
    except OSError:
        logger.error("artifact %s of job %s is missing from the store", record.key, job_id)
        raise HTTPException(500, f"artifact {name!r} of job {job_id} is damaged in the store") from None
    headers["Content-Length"] = str(record.size)
    return StreamingResponse(_verified_chunks(fh, record), media_type=record.media_type, headers=headers)


_STREAM_ABOVE = 1 << 24  # bytes: a larger artifact (a shard's part of the maps) is streamed, not read whole
_CHUNK = 1 << 22


def _verified_chunks(fh, record: ArtifactRecord) -> Iterator[bytes]:
    """The artifact's bytes a chunk at a time, hashed on the way: a mismatch ends the transfer short of its
    Content-Length, so a client never takes damaged bytes for the artifact."""
    with fh:
        try:
            yield from verified_chunks(fh, record.key[:64], f"artifact {record.key}", chunk=_CHUNK)
        except ArtifactCorruptError as exc:
            logger.error("%s", exc)
            raise


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): ``*`` or a list of tags, compared weakly (``W/"x"`` matches ``"x"``)."""
    if header is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags
