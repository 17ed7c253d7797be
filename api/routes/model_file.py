"""``/jobs/{id}/model``: a finished job's model as one model file, to use offline with :func:`solver.load_model`.

The file is built from the job's stored artifacts (:func:`workers.jobs.models.model_file`); one model always gives
the same bytes, so their sha256 is the ETag. Route functions carry no docstring: FastAPI would publish it as the
operation's description.
"""

from __future__ import annotations

import hashlib
import logging

from fastapi import APIRouter, HTTPException, Response

from workers.jobs.artifacts import ArtifactCorruptError
from workers.jobs.models import ModelNotReadyError, model_file

from ..deps import StoreDep, guarded
from .common import JobId, job_or_404, refuse_encode_job

logger = logging.getLogger(__name__)

MODEL = "application/zip"
"""The model file's media type: a zip archive of ``model.json`` and ``.npy`` arrays."""

router = APIRouter(tags=["models"], dependencies=guarded)


@router.get(
    "/jobs/{job_id}/model",
    summary="The model file of a finished job",
    description="A zip archive of `model.json` (boundary, inference, per layer λ, p, pooling and the fitted "
    "preprocessing) and the `filters-L<l>.npy` and `connectivity-L<l>.npy` arrays; "
    "`solver.load_model` reads it, and encoding with it gives the maps "
    "`POST /models/{id}/encode` gives. Save it as `<name>.deconv`.",
    responses={
        200: {"content": {MODEL: {"schema": {"type": "string", "format": "binary"}}}, "description": "the model file"},
        404: {"description": "no such job"},
        409: {"description": "the job has not succeeded (yet)"},
    },
)
def get_model(job_id: JobId, store: StoreDep) -> Response:
    job = job_or_404(store, job_id)
    refuse_encode_job(job, "a model file")
    if job.status != "succeeded":
        raise HTTPException(409, f"job {job_id} is {job.status}: its model file exists once it has succeeded")
    try:
        data = model_file(store, job_id)
    except (ModelNotReadyError, ArtifactCorruptError) as exc:
        logger.error("job %s: %s", job_id, exc)
        raise HTTPException(500, f"the model of job {job_id} cannot be read from the store") from None
    headers = {
        "ETag": f'"{hashlib.sha256(data).hexdigest()}"',
        "Cache-Control": "private, max-age=31536000",
        "Content-Disposition": f'attachment; filename="{job_id}.deconv"',
    }
    return Response(data, media_type=MODEL, headers=headers)
