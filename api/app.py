"""The HTTP service: FastAPI app over the job store and the runner (OpenAPI at ``/docs``).

::

    POST   /datasets                      upload images (multipart 'files') -> {"id", "n_images", "shapes"}
    GET    /datasets/{id}
    POST   /jobs                          a JobSpec -> 202, Location: /jobs/{id}
    GET    /jobs                          ?limit=&cursor=&status= -> {"items", "next_cursor"}, newest first
    GET    /jobs/{id}                     status and progress
    DELETE /jobs/{id}                     cancel
    GET    /jobs/{id}/filters             ?layer=&format=npy|png
    GET    /jobs/{id}/maps                ?layer= -> npz, one array per image
    GET    /jobs/{id}/reconstructions     ?format=npy|png
    GET    /jobs/{id}/history             ?format=json|png (also while the job runs)
    GET    /jobs/{id}/artifacts[/{name}]  every artifact, by name, with its sha256 as ETag
    POST   /models/{id}/encode            multipart 'files' -> maps (npy, or npz of every layer)
    POST   /reconstruct                   multipart 'maps' with 'job_id' (+ 'layer') or 'filters' -> images
    GET    /health                        no key needed

Handlers never compute on the event loop: the store calls and the encode/reconstruct work run in the thread pool
(``def`` routes), learning runs in the runner's thread and on Ray. Every bad request gets a 4xx whose JSON names
the field and the value; an ``X-API-Key`` guards every route but ``/health`` when a key is set.
"""

from __future__ import annotations

import hmac
import io
import json
import logging
import math
import zipfile
from contextlib import asynccontextmanager
from typing import Annotated, Any, Literal

import numpy as np
from fastapi import Depends, FastAPI, File, Form, Header, HTTPException, Path, Query, Request, Response, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.encoders import jsonable_encoder
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException as StarletteHTTPException

from solver.config import Boundary
from solver.images.pictures import history_plot, image_sheet, png_bytes
from workers.jobs.artifacts import ArtifactCorruptError
from workers.distributed.checkpoint import npy_bytes
from workers.distributed.cluster import ClusterConfig, connect, shutdown
from workers.jobs.datasets import ZIP_MAGIC, UploadError, decode_upload, npy_header
from workers.jobs.models import JobModel, ModelNotReadyError, load_model
from workers.jobs.runner import JobRunner
from workers.jobs.spec import JobSpec, SpecError, check_against_dataset
from workers.jobs.store import ID_PATTERN, STATUSES, JobRecord, JobStore

from . import __version__
from .schemas import ArtifactOut, DatasetOut, HealthOut, JobList, JobOut
from .settings import Settings

logger = logging.getLogger(__name__)

NPY = "application/x-npy"
NPZ = "application/x-npz"
PNG = "image/png"
_MULTIPART_SLACK = 1 << 20  # multipart boundaries and headers on top of the files' bytes

JobId = Annotated[str, Path(pattern=ID_PATTERN, description="a job id: 32 lowercase hex digits")]


def field_error(loc: list[Any], msg: str, value: Any = None, status: int = 422) -> HTTPException:
    """A 4xx naming the field, in FastAPI's validation-error shape."""
    return HTTPException(status, detail=[{"loc": loc, "msg": msg, "type": "value_error", "input": _jsonable(value)}])


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return repr(value)
    return value


def _finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by its text (``'nan'``, ``'inf'``), at any depth."""
    if isinstance(value, float) and not math.isfinite(value):
        return repr(value)
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return value


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service over `settings` (default: :meth:`Settings.from_env`). The runner starts with the app."""
    settings = settings or Settings.from_env()
    store = JobStore(settings.data_dir, settings.artifacts)
    cluster = ClusterConfig(address=settings.ray_address, num_cpus=settings.num_cpus)
    runner = JobRunner(store, cluster=cluster, checkpoint_every=settings.checkpoint_every)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        ray_context = None
        if settings.run_jobs:
            # Connect here, in the server's own thread, not in the runner's: a local cluster's processes are tied
            # to the thread that starts them (a parent-death signal) and its agents outlive a thread that ends.
            ray_context = connect(cluster)
            runner.start()
        logger.info("deconv service: data in %s, jobs %s", store.data_dir, "run" if settings.run_jobs else "held")
        yield
        if settings.run_jobs:
            await run_in_threadpool(runner.stop)
        if ray_context is not None and ray_context.started:
            shutdown()

    app = FastAPI(title="deconv", version=__version__, lifespan=lifespan, max_body_size=settings.max_json_bytes,
                  description="Convolutional sparse coding and Deconvolutional Networks as a service: upload "
                              "images, learn filters, encode and reconstruct.")
    app.state.settings, app.state.store, app.state.runner = settings, store, runner
    key_header = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed when the service has a key")

    def require_key(key: str | None = Depends(key_header)) -> None:  # noqa: B008  (a local: no Annotated alias)
        if settings.api_key is None:
            return
        if key is None or not hmac.compare_digest(key.encode(), settings.api_key.encode()):
            raise HTTPException(401, "missing or wrong X-API-Key header", headers={"WWW-Authenticate": "APIKey"})

    guarded = [Depends(require_key)]

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:  # never a bare traceback
        logger.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse({"detail": f"internal error: {type(exc).__name__}"}, status_code=500)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler, but a NaN or infinity the client sent is echoed as text: JSON has neither, and the
        # 422 could not be written (it was a 500)
        return JSONResponse({"detail": _finite(jsonable_encoder(exc.errors()))}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if exc.status_code == 404 and exc.detail == "Not Found":  # no route: say which path was asked for
            exc = StarletteHTTPException(404, f"no route for {request.method} {request.url.path}")
        return await http_exception_handler(request, exc)

    def get_job_or_404(job_id: str) -> JobRecord:
        job = store.get_job(job_id)
        if job is None:
            raise HTTPException(404, f"job {job_id!r} not found")
        return job

    def succeeded_job(job_id: str, what: str) -> JobRecord:
        job = get_job_or_404(job_id)
        if job.status != "succeeded":
            raise HTTPException(409, f"job {job_id} is {job.status}: its {what} exist once it has succeeded")
        return job

    def check_layer(job: JobRecord, layer: int | None, where: str = "query") -> int:
        n_layers = job.progress.n_layers
        if layer is None:
            return n_layers
        if not 1 <= layer <= n_layers:
            raise field_error([where, "layer"], f"layer must be between 1 and {n_layers} for this job", layer)
        return layer

    def artifact_response(request: Request, job_id: str, name: str, download: str | None = None) -> Response:
        record = store.artifact(job_id, name)
        if record is None:
            raise HTTPException(404, f"job {job_id} has no artifact {name!r}")
        etag = f'"{record.key[:64]}"'
        headers = {"ETag": etag, "Cache-Control": "private, max-age=31536000, immutable",
                   "Content-Disposition": f'attachment; filename="{download or f"{job_id}-{name}"}"'}
        if _etag_matches(request.headers.get("if-none-match"), etag):
            return Response(status_code=304, headers=headers)
        try:
            data = store.artifacts.get(record.key)
        except ArtifactCorruptError as exc:
            logger.error("%s", exc)
            raise HTTPException(500, f"artifact {name!r} of job {job_id} is damaged in the store") from None
        return Response(data, media_type=record.media_type, headers=headers)

    def read_uploads(files: list[UploadFile], field: str) -> list:
        parts = []
        for upload in files:
            parts.append((upload.filename or "", upload.file.read()))
        try:
            return decode_upload(parts, settings.upload_limits())
        except UploadError as exc:
            raise field_error(["body", field], str(exc)) from None

    # -- health ----------------------------------------------------------------------------------------------------

    @app.get("/health", response_model=HealthOut, tags=["service"])
    def health() -> HealthOut:
        state = "running" if runner.alive else ("disabled" if not settings.run_jobs else "stopped")
        queued = store.count_jobs("queued")
        return HealthOut(status="ok", version=__version__, runner=state, queued=queued)

    # -- datasets --------------------------------------------------------------------------------------------------

    @app.post("/datasets", response_model=DatasetOut, status_code=201, dependencies=guarded, tags=["datasets"],
              max_body_size=settings.max_upload_bytes + _MULTIPART_SLACK)
    def upload_dataset(files: Annotated[list[UploadFile], File(description="PNG, JPEG, TIFF or NPY files, "
                                                                           "or one zip or npz")]) -> DatasetOut:
        images = read_uploads(files, "files")
        record = store.add_dataset([(im.name, im.array) for im in images])
        return DatasetOut.of(record)

    @app.get("/datasets/{dataset_id}", response_model=DatasetOut, dependencies=guarded, tags=["datasets"])
    def get_dataset(dataset_id: Annotated[str, Path(pattern=ID_PATTERN)]) -> DatasetOut:
        record = store.get_dataset(dataset_id)
        if record is None:
            raise HTTPException(404, f"dataset {dataset_id!r} not found")
        return DatasetOut.of(record)

    # -- jobs ------------------------------------------------------------------------------------------------------

    @app.post("/jobs", response_model=JobOut, status_code=202, dependencies=guarded, tags=["jobs"])
    def submit_job(spec: JobSpec, response: Response,
                   idempotency_key: Annotated[str | None, Header(max_length=200)] = None) -> JobOut:
        dataset = store.get_dataset(spec.dataset_id)
        if dataset is None:
            raise field_error(["body", "dataset_id"], f"no dataset {spec.dataset_id!r}; upload one with "
                              "POST /datasets", spec.dataset_id)
        try:
            check_against_dataset(spec, dataset, max_filters=settings.max_filters_per_layer,
                                  max_maps_bytes=settings.max_job_maps_bytes)
        except SpecError as exc:
            raise field_error(["body", *(int(p) if p.isdigit() else p for p in exc.field.split("."))],
                              exc.message, exc.value) from None
        try:
            job, created = store.submit(spec.model_dump(mode="json"), n_layers=len(spec.layers),
                                        n_iter=[layer.n_iter or spec.n_iter for layer in spec.layers],
                                        idempotency_key=idempotency_key)
        except ValueError as exc:
            raise field_error(["header", "Idempotency-Key"], str(exc), idempotency_key, status=409) from None
        if created:
            runner.notify()
        response.headers["Location"] = f"/jobs/{job.id}"
        return JobOut.of(job)

    @app.get("/jobs", response_model=JobList, dependencies=guarded, tags=["jobs"])
    def list_jobs(limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[str | None, Query(
                  max_length=100)] = None, status: Annotated[Literal[STATUSES] | None, Query()] = None) -> JobList:
        try:
            jobs, next_cursor = store.list_jobs(limit=limit, cursor=cursor, status=status)
        except ValueError as exc:
            raise field_error(["query", "cursor"], str(exc), cursor) from None
        return JobList(items=[JobOut.of(j) for j in jobs], next_cursor=next_cursor)

    @app.get("/jobs/{job_id}", response_model=JobOut, dependencies=guarded, tags=["jobs"])
    def get_job(job_id: JobId) -> JobOut:
        return JobOut.of(get_job_or_404(job_id))

    @app.delete("/jobs/{job_id}", response_model=JobOut, dependencies=guarded, tags=["jobs"],
                responses={202: {"description": "cancel requested: the job stops after its current iteration"},
                           409: {"description": "the job has already succeeded or failed"}})
    def cancel_job(job_id: JobId, response: Response) -> JobOut:
        job = get_job_or_404(job_id)
        if job.status in ("succeeded", "failed"):
            raise HTTPException(409, f"job {job_id} has already {job.status}; there is nothing to cancel")
        job = store.request_cancel(job_id)
        response.status_code = 202 if job.status == "running" else 200
        return JobOut.of(job)

    @app.get("/jobs/{job_id}/filters", dependencies=guarded, tags=["results"],
             responses={200: {"content": {NPY: {}, PNG: {}}, "description": "(K, C, s, s) float32, or a montage"}})
    def get_filters(request: Request, job_id: JobId, layer: Annotated[int | None, Query(ge=1)] = None,
                    format: Annotated[Literal["npy", "png"], Query()] = "npy") -> Response:  # noqa: A002
        layer = check_layer(succeeded_job(job_id, "filters"), layer)
        return artifact_response(request, job_id, f"filters-L{layer}.{format}")

    @app.get("/jobs/{job_id}/maps", dependencies=guarded, tags=["results"],
             responses={200: {"content": {NPZ: {}}, "description": "one (K, H', W') array per image"}})
    def get_maps(request: Request, job_id: JobId, layer: Annotated[int | None, Query(ge=1)] = None) -> Response:
        layer = check_layer(succeeded_job(job_id, "maps"), layer)
        return artifact_response(request, job_id, f"maps-L{layer}.npz")

    @app.get("/jobs/{job_id}/reconstructions", dependencies=guarded, tags=["results"],
             responses={200: {"content": {NPY: {}, PNG: {}}, "description": "(N, C, H, W) float32, or inputs "
                                                                           "beside reconstructions"}})
    def get_reconstructions(request: Request, job_id: JobId,
                            format: Annotated[Literal["npy", "png"], Query()] = "npy") -> Response:  # noqa: A002
        succeeded_job(job_id, "reconstructions")
        return artifact_response(request, job_id, f"reconstructions.{format}")

    @app.get("/jobs/{job_id}/history", dependencies=guarded, tags=["results"],
             responses={200: {"content": {"application/json": {}, PNG: {}}}})
    def get_history(job_id: JobId, format: Annotated[Literal["json", "png"], Query()] = "json") -> Response:  # noqa: A002
        get_job_or_404(job_id)
        history = store.history(job_id)
        if format == "json":
            return JSONResponse(history)
        if not history:
            raise HTTPException(409, f"job {job_id} has no outer iteration yet to plot")
        return Response(history_plot(history), media_type=PNG)

    @app.get("/jobs/{job_id}/artifacts", response_model=list[ArtifactOut], dependencies=guarded, tags=["results"])
    def list_artifacts(job_id: JobId) -> list[ArtifactOut]:
        get_job_or_404(job_id)
        return [ArtifactOut(name=a.name, sha256=a.key[:64], size=a.size, media_type=a.media_type,
                            url=f"/jobs/{job_id}/artifacts/{a.name}") for a in store.list_artifacts(job_id)]

    @app.get("/jobs/{job_id}/artifacts/{name}", dependencies=guarded, tags=["results"])
    def get_artifact(request: Request, job_id: JobId,
                     name: Annotated[str, Path(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,100}$")]) -> Response:
        get_job_or_404(job_id)
        return artifact_response(request, job_id, name)

    # -- models: encode and reconstruct ----------------------------------------------------------------------------

    def model_of(job_id: str) -> tuple[JobRecord, JobModel]:
        job = succeeded_job(job_id, "model")
        try:
            return job, load_model(store, job_id)
        except (ModelNotReadyError, ArtifactCorruptError) as exc:
            logger.error("job %s: %s", job_id, exc)
            raise HTTPException(500, f"the model of job {job_id} cannot be read from the store") from None

    @app.post("/models/{job_id}/encode", dependencies=guarded, tags=["models"],
              max_body_size=settings.max_upload_bytes + _MULTIPART_SLACK,
              responses={200: {"content": {NPY: {}, NPZ: {}},
                               "description": "npy: (N, K, H', W') maps of `layer`; npz: 'L1', 'L2', ... up to it, "
                                              "and 'S1', ... the int32 switches of the layers that pool"}})
    def encode_images(job_id: JobId, files: Annotated[list[UploadFile], File()],
                      layer: Annotated[int | None, Query(ge=1)] = None,
                      max_iter: Annotated[int, Query(ge=1, le=5000)] = 200,
                      method: Annotated[Literal["admm", "fista", "zeiler"] | None, Query()] = None,
                      format: Annotated[Literal["npy", "npz"], Query()] = "npy") -> Response:  # noqa: A002
        job, model = model_of(job_id)
        layer = check_layer(job, layer)
        images = read_uploads(files, "files")
        if len(images) > settings.max_encode_images:
            raise field_error(["body", "files"], f"{len(images)} images, more than the limit "
                              f"{settings.max_encode_images} per encode request", len(images))
        shapes = {im.array.shape for im in images}
        if len(shapes) > 1:
            raise field_error(["body", "files"], f"the images must share one shape, got {sorted(shapes)}")
        batch = np.stack([im.array for im in images])
        _check_channels(model, batch)
        try:
            code = model.encode(batch, layer=layer, method=method, max_iter=max_iter)
        except ValueError as exc:
            message = str(exc)
            loc = ["query", "method"] if message.startswith("method") else ["body", "files"]
            raise field_error(loc, message, method if loc[1] == "method" else None) from None
        if format == "npy":
            return Response(npy_bytes(code.maps[-1].astype(np.float32)), media_type=NPY)
        buffer = io.BytesIO()
        arrays = {f"L{i + 1}": m.astype(np.float32) for i, m in enumerate(code.maps)}
        arrays.update({f"S{i + 1}": s for i, s in enumerate(code.switches) if s is not None})
        np.savez(buffer, **arrays)
        return Response(buffer.getvalue(), media_type=NPZ)

    @app.post("/reconstruct", dependencies=guarded, tags=["models"],
              max_body_size=settings.max_upload_bytes + _MULTIPART_SLACK,
              responses={200: {"content": {NPY: {}, PNG: {}}, "description": "(N, C, H, W) float32 images"}})
    def reconstruct_images(maps: Annotated[UploadFile, File(description="npy (N, K, H', W') or (K, H', W')")],
                           job_id: Annotated[str | None, Form(pattern=ID_PATTERN)] = None,
                           layer: Annotated[int | None, Form(ge=1)] = None,
                           filters: Annotated[UploadFile | None, File(description="npy (K, C, s, s)")] = None,
                           boundary: Annotated[Boundary, Form()] = "circular",
                           switches: Annotated[UploadFile | None, File(
                               description="the npz /models/{id}/encode?format=npz returned ('S<j>' and 'L<j>' "
                               "arrays): needed when a layer below `layer` pools")] = None,
                           format: Annotated[Literal["npy", "png"], Query()] = "npy") -> Response:  # noqa: A002
        z = _read_array(maps, "maps", settings)
        if z.ndim == 3:
            z = z[None]
        if z.ndim != 4:
            raise field_error(["body", "maps"], f"maps must have shape (N, K, H', W') or (K, H', W'), got {z.shape}")
        if (job_id is None) == (filters is None):
            raise field_error(["body", "job_id"], "send either job_id (a finished job's filters) or a filters file")
        try:
            if job_id is not None:
                job, model = model_of(job_id)
                top = check_layer(job, layer, where="body")  # a form field here
                if z.shape[1] != model.layers[top - 1].n_filters:
                    raise field_error(["body", "maps"], f"maps have K = {z.shape[1]} but layer {top} of job "
                                      f"{job_id} has {model.layers[top - 1].n_filters} filters", list(z.shape))
                unpool: dict = {}
                if model.stack.pools_below(top):
                    unpool = _unpooling(model, top, z, switches, settings)
                images = model.project(z, layer=top, **unpool)
            else:
                from solver.models.coding import reconstruct  # noqa: PLC0415

                f = _read_array(filters, "filters", settings)
                images = reconstruct(z, f, boundary=boundary)
        except ValueError as exc:  # solver.reconstruct names the argument at fault first
            message = str(exc)
            field = "filters" if filters is not None and message.startswith("filters") else "maps"
            raise field_error(["body", field], message) from None
        images = np.asarray(images, dtype=np.float32)
        if format == "png":
            return Response(png_bytes(image_sheet(images)), media_type=PNG)
        return Response(npy_bytes(images), media_type=NPY)

    @app.api_route("/jobs/{rest:path}", methods=["GET", "DELETE"], dependencies=guarded, include_in_schema=False)
    def not_a_job(rest: str) -> None:
        """Whatever else is under /jobs/ (a malformed id, a traversal attempt): a 404 naming the id."""
        raise field_error(["path", "job_id"], "no such job resource: a job id is 32 lowercase hex digits, "
                          "followed by nothing or one of the documented sub-resources", rest, status=404)

    return app


def _etag_matches(header: str | None, etag: str) -> bool:
    """If-None-Match (RFC 9110 13.1.2): ``*`` or a list of tags, compared weakly (``W/"x"`` matches ``"x"``)."""
    if header is None:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in header.split(",")]
    return "*" in tags or etag in tags


def _check_channels(model: JobModel, batch: np.ndarray) -> None:
    first = model.layers[0]
    c = batch.shape[1]
    grey = first.preprocess is not None and first.preprocess.config.grey
    expected = first.n_channels
    if c != expected and not (grey and c == 3 and expected == 1):
        raise field_error(["body", "files"], f"images have {c} channel(s) but the model's filters have {expected}",
                          list(batch.shape))


def _only_member(data: bytes, field: str, settings: Settings) -> bytes:
    """The bytes of the single member of an npz, after checking what it declares to unpack to."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) != 1:
                raise field_error(["body", field], f"an npz must hold exactly one array, got "
                                  f"{[m.filename for m in members]}")
            if members[0].file_size > settings.max_upload_bytes:
                raise field_error(["body", field], f"the npz unpacks to {members[0].file_size} bytes, more than "
                                  f"the limit {settings.max_upload_bytes} (max_upload_bytes)", members[0].file_size)
            return archive.read(members[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise field_error(["body", field], f"not a readable .npz file: {exc}") from None


def _unpooling(model: JobModel, top: int, z: np.ndarray, upload: UploadFile | None,
               settings: Settings) -> dict[str, list]:
    """The `switches` and `map_shapes` of :meth:`JobModel.project` for maps `z` of layer `top`, from the npz that
    ``/models/{id}/encode?format=npz`` returns: ``S<j>`` and ``L<j>`` of every pooling layer j below `top` (the
    switches are flat indices into layer j's maps, so their shape is needed exactly)."""
    if upload is None:
        raise field_error(["body", "switches"], f"layer {top} sits above a pooling layer: send the switches "
                          "('S1', ...) that /models/{id}/encode?format=npz returned with these maps")
    arrays = _read_members(upload, "switches", settings)
    switches, shapes = [], []
    n_images = z.shape[0]
    for j, layer in enumerate(model.layers[: top - 1], start=1):
        if layer.pool is None:
            switches.append(None)
            shapes.append(None)
            continue
        sw = arrays.get(f"S{j}")
        if sw is None or sw.dtype.kind not in "iu" or sw.ndim != 4 or sw.shape[0] != n_images:
            raise field_error(["body", "switches"], f"the npz needs an integer array 'S{j}' of shape (N={n_images}, "
                              f"Kb, Hb, Wb) for pooling layer {j}, got {None if sw is None else list(sw.shape)}")
        maps_j = arrays.get(f"L{j}")  # the switches are flat indices into these maps: their exact shape matters
        if maps_j is None or maps_j.ndim != 4 or maps_j.shape[:2] != (n_images, layer.n_filters):
            raise field_error(["body", "switches"], f"the npz needs the maps 'L{j}' (N={n_images}, "
                              f"K={layer.n_filters}, H', W') of pooling layer {j} beside 'S{j}', got "
                              f"{None if maps_j is None else list(maps_j.shape)}")
        switches.append(sw.astype(np.int64, copy=False))
        shapes.append(tuple(maps_j.shape))
    return {"switches": switches, "map_shapes": shapes}


def _read_members(upload: UploadFile, field: str, settings: Settings, max_members: int = 64) -> dict[str, np.ndarray]:
    """The arrays of an npz (no pickles), each bounded like an upload, the whole by ``max_upload_bytes``."""
    data = upload.file.read()
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > max_members:
                raise field_error(["body", field], f"the npz holds {len(members)} arrays, more than {max_members}")
            total = sum(m.file_size for m in members)
            if total > settings.max_upload_bytes:
                raise field_error(["body", field], f"the npz unpacks to {total} bytes, more than the limit "
                                  f"{settings.max_upload_bytes} (max_upload_bytes)", total)
            raw = {m.filename.removesuffix(".npy"): archive.read(m) for m in members}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise field_error(["body", field], f"not a readable .npz file: {exc}") from None
    return {name: _npy_array(body, field, settings) for name, body in raw.items()}


def _read_array(upload: UploadFile, field: str, settings: Settings) -> np.ndarray:
    data = upload.file.read()
    if data.startswith(ZIP_MAGIC):  # an npz of one array: that array's npy bytes, bounded like uploads
        data = _only_member(data, field, settings)
    array = _npy_array(data, field, settings)
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32, copy=False)


def _npy_array(data: bytes, field: str, settings: Settings) -> np.ndarray:
    """An npy's array, its header checked before numpy allocates anything; real numbers only, finite."""
    try:
        shape, dtype = npy_header(field, data)
    except UploadError as exc:
        raise field_error(["body", field], str(exc)) from None
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise field_error(["body", field], f"dtype {dtype} is not a real number type", str(dtype))
    declared = math.prod(shape) * dtype.itemsize
    if declared > len(data):  # numpy would allocate the declared shape before finding the data short
        raise field_error(["body", field], f"the header declares {shape} {dtype} ({declared} bytes), more than "
                          f"the {len(data)} bytes sent", list(shape))
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise field_error(["body", field], f"not a readable .npy file: {exc}") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise field_error(["body", field], "the array holds NaN or inf")
    if array.ndim >= 2 and array.shape[-1] * array.shape[-2] > settings.max_image_pixels:
        raise field_error(["body", field], f"spatial size {array.shape[-2:]} is over the limit of "
                          f"{settings.max_image_pixels} pixels", list(array.shape))
    return array

