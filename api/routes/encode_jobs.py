"""``POST /datasets/{id}/encode``: an encode job, the maps of every image of a stored dataset with a finished job's
model.

The job is checked against its model and dataset here (one image shape, the model's channels, filters that fit)
and its block size bounded with the cost model of ``POST /models/{id}/encode`` (:mod:`api.costs`): one block is
what one actor holds, as one encode request is what the service holds. It is then queued as any job: ``GET
/jobs/{id}`` shows its progress in images, ``DELETE /jobs/{id}`` cancels it between blocks, ``GET /jobs/{id}/maps``
serves its maps. Route functions carry no docstring: FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, HTTPException, Path, Response

from workers.jobs.artifacts import ArtifactCorruptError
from workers.jobs.encoding import MAX_BLOCK_SIZE, EncodeRequest, EncodeSpec, check_encode, is_encode_job
from workers.jobs.models import JobModel, ModelNotReadyError, load_model
from workers.jobs.spec import SpecError, check_resources
from workers.jobs.store import ID_PATTERN, DatasetRecord, JobStore

from .. import costs
from ..deps import RunnerDep, SettingsDep, StoreDep, guarded
from ..errors import field_error
from ..schemas import JobOut
from ..settings import Settings
from .jobs import IdempotencyKey, enqueue

logger = logging.getLogger(__name__)

router = APIRouter(tags=["jobs"], dependencies=guarded)

DEFAULT_BLOCK = 64
"""Most images of a block the service chooses itself (a smaller block shows progress and cancels sooner)."""


@router.post(
    "/datasets/{dataset_id}/encode",
    response_model=JobOut,
    status_code=202,
    summary="Encode a stored dataset with a finished job's model, as a job",
    description="Queues an encode job: every image's maps (of every layer up to `layer`), computed by blocks on "
    "the cluster and served by `GET /jobs/{id}/maps` once it has succeeded. `GET /jobs/{id}` shows the images "
    "encoded so far, `DELETE /jobs/{id}` cancels it between blocks.",
    responses={
        404: {"description": "no such dataset"},
        409: {"description": "the model's job has not succeeded, or the Idempotency-Key was used for another spec"},
        413: {"description": "one block of the dataset's images would take more memory than a request may"},
    },
)
def submit_encode_job(
    dataset_id: Annotated[str, Path(pattern=ID_PATTERN, description="an uploaded dataset: 32 lowercase hex digits")],
    request: EncodeRequest,
    response: Response,
    settings: SettingsDep,
    store: StoreDep,
    runner: RunnerDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    dataset = store.get_dataset(dataset_id)
    if dataset is None:
        raise HTTPException(404, f"dataset {dataset_id!r} not found")
    spec = EncodeSpec(**request.model_dump(), dataset_id=dataset_id)
    model = _model(store, spec.model_id)
    try:
        top = check_encode(spec, model.stack, dataset)
        check_resources(spec, max_cpus=settings.max_actor_cpus, max_gpus=settings.max_actor_gpus)
    except SpecError as exc:
        where = "path" if exc.field == "dataset_id" else "body"
        raise field_error([where, *exc.field.split(".")], exc.message, exc.value) from None
    block_size = _block_size(spec, model, top, dataset, settings)
    resolved = spec.model_copy(update={"layer": top, "block_size": block_size})
    return enqueue(  # progress counts images: one step per image
        resolved.model_dump(mode="json"),
        n_layers=1,
        n_iter=dataset.n_images,
        idempotency_key=idempotency_key,
        store=store,
        runner=runner,
        settings=settings,
        response=response,
    )


def _model(store: JobStore, model_id: str) -> JobModel:
    job = store.get_job(model_id)
    if job is None or is_encode_job(job.spec):
        raise field_error(["body", "model_id"], f"no learning job {model_id!r}: a model is a learning job's", model_id)
    if job.status != "succeeded":
        raise field_error(
            ["body", "model_id"],
            f"job {model_id} is {job.status}: its model exists once it has succeeded",
            model_id,
            status=409,
        )
    try:
        return load_model(store, model_id)
    except (ModelNotReadyError, ArtifactCorruptError) as exc:
        logger.error("job %s: %s", model_id, exc)
        raise HTTPException(500, f"the model of job {model_id} cannot be read from the store") from None


def _block_size(spec: EncodeSpec, model: JobModel, top: int, dataset: DatasetRecord, settings: Settings) -> int:
    """The spec's block size if the cost model allows it, else the largest it allows (up to
    :data:`DEFAULT_BLOCK` and the dataset's size); the cost model's 413 or 422 when one image is already too much."""
    layers = [costs.Layer(m.n_filters, m.n_channels, m.filters.shape[-1], m.pool) for m in model.layers[:top]]
    method, iterations = _method(spec, model)
    channels, height, width = dataset.images[0].shape
    itemsize = 8 if dataset.images[0].dtype == "float64" else 4

    def cost(n: int) -> costs.Estimate:
        return costs.encode_cost(
            layers,
            (n, channels, height, width),
            method=method,
            max_iter=iterations,
            boundary=model.stack.boundary,
            itemsize=itemsize,
            all_layers=True,
        )

    def fits(n: int) -> bool:
        estimate = cost(n)
        return estimate.bytes <= settings.max_request_bytes and estimate.work <= settings.max_request_work

    work_loc = ["body", "inference", "max_iter"]
    if spec.block_size is not None:
        block = min(spec.block_size, dataset.n_images)  # no block holds more images than the dataset has
        what = f"a block of {block} image(s) of {channels}x{height}x{width} up to layer {top}"
        costs.check(cost(block), settings, loc=["body", "block_size"], work_loc=work_loc, what=what)
        return block
    what = f"one image of {channels}x{height}x{width} of dataset {dataset.id} up to layer {top}"
    costs.check(cost(1), settings, loc=["path", "dataset_id"], work_loc=work_loc, what=what)
    low, high = 1, min(DEFAULT_BLOCK, dataset.n_images, MAX_BLOCK_SIZE)
    while low < high:  # the largest block that fits: the cost grows with the images
        middle = (low + high + 1) // 2
        low, high = (middle, high) if fits(middle) else (low, middle - 1)
    return low


def _method(spec: EncodeSpec, model: JobModel) -> tuple[str, int]:
    """The method's name and its iterations per layer, as the cost model counts them."""
    config = spec.inference
    if config is None:
        return model.inference.method, 200
    if config.method == "zeiler":
        return "zeiler", config.max_iter
    return config.method, config.max_iter
