"""``/jobs/{id}/filters/latest``: a job's newest filters while it runs (its last checkpoint), its learned ones after.

The response says where the filters come from in headers, so that the same bytes serve ``<img>`` tags and
numpy: ``X-Deconv-Layer``, ``X-Deconv-Iteration`` (the layer's outer iteration after which they were saved) and
``X-Deconv-Final`` (``true`` once the layer has finished). Never cached: the next checkpoint replaces them. Route
functions carry no docstring: FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

import logging
from typing import Annotated, Literal

from fastapi import APIRouter, HTTPException, Query, Response

from solver.images.pictures import png_bytes
from workers.distributed.checkpoint import npy_bytes
from workers.jobs.artifacts import ArtifactCorruptError
from workers.jobs.live import latest_filters, live_montage
from workers.jobs.store import JobRecord, JobStore

from ..deps import SettingsDep, StoreDep, guarded
from .common import NPY, PNG, JobId, check_layer, job_or_404, refuse_encode_job

logger = logging.getLogger(__name__)

router = APIRouter(tags=["results"], dependencies=guarded)

_HEADERS = {
    "X-Deconv-Layer": {"description": "the layer (1-based)", "schema": {"type": "integer"}},
    "X-Deconv-Iteration": {
        "description": "the layer's outer iteration after which these filters were saved",
        "schema": {"type": "integer"},
    },
    "X-Deconv-Final": {"description": "true once the layer has finished learning", "schema": {"type": "boolean"}},
}


@router.get(
    "/jobs/{job_id}/filters/latest",
    summary="The newest filters of a job, also while it runs",
    description="While the job runs: the filters of its newest checkpoint of `layer` (default: the layer "
    "being learned), written every `DECONV_CHECKPOINT_EVERY` outer iterations, or the layer's "
    "learned filters once it has finished. After the job has succeeded: its learned filters "
    "(default: the top layer). npy: (K, C, s, s) float32; png: one tile per filter, higher "
    "layers seen in pixel space. 409 while there is no checkpoint yet, and for a job that "
    "failed or was cancelled.",
    responses={
        200: {"content": {NPY: {}, PNG: {}}, "headers": _HEADERS},
        409: {
            "description": "no filters yet (queued, or before the first checkpoint), or the job failed or was cancelled"
        },
    },
)
def get_latest_filters(
    job_id: JobId,
    store: StoreDep,
    settings: SettingsDep,
    layer: Annotated[int | None, Query(ge=1)] = None,
    format: Annotated[Literal["npy", "png"], Query()] = "npy",
) -> Response:  # noqa: A002
    job = job_or_404(store, job_id)
    refuse_encode_job(job, "filters")
    if layer is None and job.status != "succeeded":
        layer = max(job.progress.layer, 1)  # the layer being learned
    layer = check_layer(job, layer)
    if job.status == "succeeded":
        return _learned(store, job, layer, format)
    if job.status not in ("queued", "running"):
        raise HTTPException(409, f"job {job_id} is {job.status}: it has no filters to show")
    newest = latest_filters(store, job_id, layer)
    if newest is None:
        raise HTTPException(
            409,
            f"job {job_id} is {job.status}: layer {layer} has no checkpoint yet (one every "
            f"{settings.checkpoint_every} outer iterations)",
        )
    if format == "npy":
        data, media_type = npy_bytes(newest.filters), NPY
    else:
        below = [latest_filters(store, job_id, j) for j in range(1, layer)]
        known = [b for b in below if b is not None]  # None only when the job ends meanwhile: drawn unprojected
        data, media_type = png_bytes(live_montage(newest, known, job.spec.get("layers", []))), PNG
    return _response(data, media_type, layer, newest.iteration, newest.final)


def _learned(store: JobStore, job: JobRecord, layer: int, format: str) -> Response:  # noqa: A002
    try:
        data = store.read_artifact(job.id, f"filters-L{layer}.{format}")
    except ArtifactCorruptError as exc:
        logger.error("%s", exc)
        raise HTTPException(500, f"the filters of layer {layer} of job {job.id} are damaged in the store") from None
    if data is None:
        raise HTTPException(404, f"job {job.id} has no artifact filters-L{layer}.{format}")
    return _response(data, NPY if format == "npy" else PNG, layer, job.progress.layer_iters[layer - 1], True)


def _response(data: bytes, media_type: str, layer: int, iteration: int, final: bool) -> Response:
    return Response(
        data,
        media_type=media_type,
        headers={
            "X-Deconv-Layer": str(layer),
            "X-Deconv-Iteration": str(iteration),
            "X-Deconv-Final": "true" if final else "false",
            "Cache-Control": "no-store",
        },
    )
