"""A finished job as a model: ``POST /models/{id}/encode`` (images to maps) and ``POST /reconstruct`` (maps to
images, with a job's filters or uploaded ones).

Both compute in the thread pool (``def`` routes), never on the event loop. Route functions carry no docstring:
FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

import io
import logging
from typing import Annotated, Literal

import numpy as np
from fastapi import APIRouter, File, Form, HTTPException, Query, Response, UploadFile

from solver.config import Boundary
from solver.images.pictures import image_sheet, png_bytes
from workers.distributed.checkpoint import npy_bytes
from workers.jobs.artifacts import ArtifactCorruptError
from workers.jobs.models import JobModel, ModelNotReadyError, load_model
from workers.jobs.store import ID_PATTERN, JobRecord, JobStore

from .. import costs
from ..deps import SettingsDep, StoreDep, guarded
from ..errors import field_error
from ..settings import Settings
from ..uploads import read_array, read_members, read_uploads
from .common import NPY, NPZ, PNG, JobId, check_layer, succeeded_job

logger = logging.getLogger(__name__)

router = APIRouter(tags=["models"], dependencies=guarded)


@router.post(
    "/models/{job_id}/encode",
    responses={
        200: {
            "content": {NPY: {}, NPZ: {}},
            "description": "npy: (N, K, H', W') maps of `layer`; npz: 'L1', 'L2', ... up to it, "
            "and 'S1', ... the int32 switches of the layers that pool",
        }
    },
)
def encode_images(
    job_id: JobId,
    files: Annotated[list[UploadFile], File()],
    settings: SettingsDep,
    store: StoreDep,
    layer: Annotated[int | None, Query(ge=1)] = None,
    max_iter: Annotated[int, Query(ge=1, le=5000)] = 200,
    method: Annotated[Literal["admm", "fista", "zeiler"] | None, Query()] = None,
    format: Annotated[Literal["npy", "npz"], Query()] = "npy",
) -> Response:  # noqa: A002
    job, model = _model_of(store, job_id)
    layer = check_layer(job, layer)
    name = method or model.inference.method
    layers = _cost_layers(model, layer)
    images = read_uploads(files, "files", settings, max_values=costs.values_budget(layers, name, settings))
    if len(images) > settings.max_encode_images:
        raise field_error(
            ["body", "files"],
            f"{len(images)} images, more than the limit {settings.max_encode_images} per encode request",
            len(images),
        )
    shapes = {im.array.shape for im in images}
    if len(shapes) > 1:
        raise field_error(["body", "files"], f"the images must share one shape, got {sorted(shapes)}")
    batch = np.stack([im.array for im in images])
    _check_channels(model, batch)
    estimate = costs.encode_cost(
        layers,
        batch.shape,
        method=name,
        max_iter=max_iter,
        boundary=model.stack.boundary,
        itemsize=8 if batch.dtype == np.float64 else 4,
        all_layers=format == "npz",
    )
    what = f"encoding {batch.shape[0]} image(s) of {'x'.join(map(str, batch.shape[1:]))} up to layer {layer}"
    costs.check(estimate, settings, loc=["body", "files"], work_loc=["query", "max_iter"], what=what)
    try:
        code = model.encode(batch, layer=layer, method=method, max_iter=max_iter)
    except ValueError as exc:
        message = str(exc)
        loc = ["query", "method"] if message.startswith("method") else ["body", "files"]
        raise field_error(loc, message, method if loc[1] == "method" else None) from None
    maps = [m.astype(np.float32) for m in code.maps]
    for number, m in enumerate(maps, start=1):
        if not np.isfinite(m).all():
            raise field_error(
                ["body", "files"],
                f"the maps of layer {number} overflow float32 (inf or NaN): the images' values are too large to "
                f"encode (largest magnitude {float(np.abs(batch).max()):.3g}); scale them down",
            )
    if format == "npy":
        return Response(npy_bytes(maps[-1]), media_type=NPY)
    buffer = io.BytesIO()
    arrays = {f"L{i + 1}": m for i, m in enumerate(maps)}
    arrays.update({f"S{i + 1}": s for i, s in enumerate(code.switches) if s is not None})
    np.savez(buffer, **arrays)
    return Response(buffer.getvalue(), media_type=NPZ)


@router.post(
    "/reconstruct", responses={200: {"content": {NPY: {}, PNG: {}}, "description": "(N, C, H, W) float32 images"}}
)
def reconstruct_images(
    maps: Annotated[UploadFile, File(description="npy (N, K, H', W') or (K, H', W')")],
    settings: SettingsDep,
    store: StoreDep,
    job_id: Annotated[str | None, Form(pattern=ID_PATTERN)] = None,
    layer: Annotated[int | None, Form(ge=1)] = None,
    filters: Annotated[UploadFile | None, File(description="npy (K, C, s, s)")] = None,
    boundary: Annotated[Boundary, Form()] = "circular",
    switches: Annotated[
        UploadFile | None,
        File(
            description="the npz /models/{id}/encode?format=npz returned ('S<j>' and 'L<j>' "
            "arrays): needed when a layer below `layer` pools"
        ),
    ] = None,
    format: Annotated[Literal["npy", "png"], Query()] = "npy",
) -> Response:  # noqa: A002
    z = read_array(maps, "maps", settings)
    if z.ndim == 3:
        z = z[None]
    if z.ndim != 4:
        raise field_error(["body", "maps"], f"maps must have shape (N, K, H', W') or (K, H', W'), got {z.shape}")
    if (job_id is None) == (filters is None):
        raise field_error(["body", "job_id"], "send either job_id (a finished job's filters) or a filters file")
    f = None
    try:
        if job_id is not None:
            images = _project_with_job(store, settings, job_id, layer, z, switches)
        else:
            from solver.models.coding import reconstruct  # noqa: PLC0415  (the solver loads only when used)

            f = read_array(filters, "filters", settings)
            if f.ndim in (3, 4):
                explicit = costs.Layer(f.shape[0], f.shape[1] if f.ndim == 4 else 1, f.shape[-1])
                _check_reconstruct_cost([explicit], z, boundary, settings)
            images = reconstruct(z, f, boundary=boundary)
    except ValueError as exc:  # solver.reconstruct names the argument at fault first
        message = str(exc)
        field = "filters" if filters is not None and message.startswith("filters") else "maps"
        raise field_error(["body", field], message) from None
    images = np.asarray(images, dtype=np.float32)
    if not np.isfinite(images).all():
        _refuse_overflow(z, f)
    if format == "png":
        return Response(png_bytes(image_sheet(images)), media_type=PNG)
    return Response(npy_bytes(images), media_type=NPY)


def _model_of(store: JobStore, job_id: str) -> tuple[JobRecord, JobModel]:
    job = succeeded_job(store, job_id, "model")
    try:
        return job, load_model(store, job_id)
    except (ModelNotReadyError, ArtifactCorruptError) as exc:
        logger.error("job %s: %s", job_id, exc)
        raise HTTPException(500, f"the model of job {job_id} cannot be read from the store") from None


def _project_with_job(
    store: JobStore, settings: Settings, job_id: str, layer: int | None, z: np.ndarray, switches: UploadFile | None
) -> np.ndarray:
    """Maps `z` of `layer` of job `job_id` projected down to images, unpooling with the uploaded `switches`."""
    job, model = _model_of(store, job_id)
    top = check_layer(job, layer, where="body")  # a form field here
    if z.shape[1] != model.layers[top - 1].n_filters:
        raise field_error(
            ["body", "maps"],
            f"maps have K = {z.shape[1]} but layer {top} of job {job_id} has {model.layers[top - 1].n_filters} filters",
            list(z.shape),
        )
    _check_reconstruct_cost(_cost_layers(model, top), z, model.stack.boundary, settings)
    unpool: dict = {}
    if model.stack.pools_below(top):
        unpool = _unpooling(model, top, z, switches, settings)
    return model.project(z, layer=top, **unpool)


def _cost_layers(model: JobModel, top: int) -> list[costs.Layer]:
    """The layers up to `top`, as the cost estimate reads them."""
    return [
        costs.Layer(layer.n_filters, layer.n_channels, layer.filters.shape[-1], layer.pool)
        for layer in model.layers[:top]
    ]


def _check_reconstruct_cost(layers: list[costs.Layer], z: np.ndarray, boundary: str, settings: Settings) -> None:
    estimate = costs.reconstruct_cost(layers, z.shape, boundary=boundary, itemsize=z.dtype.itemsize)
    what = f"projecting maps of shape {list(z.shape)} through {len(layers)} layer(s)"
    costs.check(estimate, settings, loc=["body", "maps"], work_loc=["body", "maps"], what=what)


def _refuse_overflow(z: np.ndarray, f: np.ndarray | None) -> None:
    """A 422 naming the input whose values made the images overflow float32."""
    largest = {"maps": float(np.abs(z).max())}
    if f is not None:
        largest["filters"] = float(np.abs(f).max())
    field = max(largest, key=largest.get)
    sizes = ", ".join(f"{name} {value:.3g}" for name, value in largest.items())
    raise field_error(
        ["body", field],
        f"the reconstructed images overflow float32 (inf or NaN): the {field}' values are too large "
        f"(largest magnitude: {sizes}); scale them down",
    )


def _check_channels(model: JobModel, batch: np.ndarray) -> None:
    first = model.layers[0]
    c = batch.shape[1]
    grey = first.preprocess is not None and first.preprocess.config.grey
    expected = first.n_channels
    if c != expected and not (grey and c == 3 and expected == 1):
        raise field_error(
            ["body", "files"], f"images have {c} channel(s) but the model's filters have {expected}", list(batch.shape)
        )


def _unpooling(
    model: JobModel, top: int, z: np.ndarray, upload: UploadFile | None, settings: Settings
) -> dict[str, list]:
    """The `switches` and `map_shapes` of :meth:`JobModel.project` for maps `z` of layer `top`, from the npz that
    ``/models/{id}/encode?format=npz`` returns: ``S<j>`` and ``L<j>`` of every pooling layer j below `top` (the
    switches are flat indices into layer j's maps, so their shape is needed exactly)."""
    if upload is None:
        raise field_error(
            ["body", "switches"],
            f"layer {top} sits above a pooling layer: send the switches "
            "('S1', ...) that /models/{id}/encode?format=npz returned with these maps",
        )
    from solver.operators.pooling import pooled_shape  # noqa: PLC0415  (the solver loads only when used)

    arrays = read_members(upload, "switches", settings)
    switches, shapes = [], []
    n_images = z.shape[0]
    for j, layer in enumerate(model.layers[: top - 1], start=1):
        if layer.pool is None:
            switches.append(None)
            shapes.append(None)
            continue
        sw = arrays.get(f"S{j}")
        if sw is None or sw.dtype.kind not in "iu" or sw.ndim != 4 or sw.shape[0] != n_images:
            raise field_error(
                ["body", "switches"],
                f"the npz needs an integer array 'S{j}' of shape (N={n_images}, "
                f"Kb, Hb, Wb) for pooling layer {j}, got {None if sw is None else list(sw.shape)}",
            )
        maps_j = arrays.get(f"L{j}")  # the switches are flat indices into these maps: their exact shape matters
        if maps_j is None or maps_j.ndim != 4 or maps_j.shape[:2] != (n_images, layer.n_filters):
            raise field_error(
                ["body", "switches"],
                f"the npz needs the maps 'L{j}' (N={n_images}, "
                f"K={layer.n_filters}, H', W') of pooling layer {j} beside 'S{j}', got "
                f"{None if maps_j is None else list(maps_j.shape)}",
            )
        # the switches must be those of maps of that shape: a pooled shape of other maps would reconstruct images
        # of another size without a word, and an index past the maps would be blamed on the maps sent
        expected = pooled_shape(maps_j.shape, layer.pool)
        if tuple(sw.shape) != expected:
            raise field_error(
                ["body", "switches"],
                f"'S{j}' of shape {list(sw.shape)} is not the pooling {list(layer.pool)} of 'L{j}' of shape "
                f"{list(maps_j.shape)}, which gives {list(expected)}",
            )
        size = int(np.prod(maps_j.shape[1:]))
        if sw.size and (int(sw.min()) < 0 or int(sw.max()) >= size):
            raise field_error(
                ["body", "switches"],
                f"'S{j}' must hold indices into each image's maps 'L{j}', in [0, {size}), got values in "
                f"[{int(sw.min())}, {int(sw.max())}]",
            )
        switches.append(sw.astype(np.int64, copy=False))
        shapes.append(tuple(maps_j.shape))
    return {"switches": switches, "map_shapes": shapes}
