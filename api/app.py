"""The HTTP service: FastAPI app over the job store and the runner (OpenAPI at ``/docs``).

::

    POST   /datasets                      upload images (multipart 'files') -> {"id", "n_images", "shapes"}
    GET    /datasets/{id}
    POST   /jobs                          a JobSpec -> 202, Location: /jobs/{id}
    POST   /datasets/{id}/encode          {"model_id", ...} -> 202, an encode job: every image's maps, by blocks
    GET    /jobs                          ?limit=&cursor=&status= -> {"items", "next_cursor"}, newest first
    GET    /jobs/{id}                     status and progress
    DELETE /jobs/{id}                     cancel
    GET    /jobs/{id}/filters             ?layer=&format=npy|png
    GET    /jobs/{id}/filters/latest      ?layer=&format=npy|png, also while the job runs (its newest checkpoint)
    GET    /jobs/{id}/maps                ?layer= -> npz, one array per image (streamed); ?image=i -> npy
    GET    /jobs/{id}/reconstructions     ?format=npy|png
    GET    /jobs/{id}/history             ?format=json|png (also while the job runs)
    GET    /jobs/{id}/artifacts[/{name}]  every artifact, by name, with its sha256 as ETag
    GET    /jobs/{id}/model               the model file (a zip that solver.load_model reads)
    POST   /models/{id}/encode            multipart 'files' -> maps (npy, or npz of every layer)
    POST   /reconstruct                   multipart 'maps' with 'job_id' (+ 'layer') or 'filters' -> images
    GET    /presets                       the bundled presets as job specs without dataset_id
    GET    /health                        no key needed
    GET    /                              the dashboard (api/static), no key needed: it asks for one

The routes live in :mod:`api.routes`, one module per resource; what they depend on (settings, store, runner, the
key check) in :mod:`api.deps`; the error responses in :mod:`api.errors`. Handlers never compute on the event
loop: the store calls and the encode/reconstruct work run in the thread pool (``def`` routes), learning runs in
the runner's thread and on Ray. Every bad request gets a 4xx whose JSON names the field and the value; an
``X-API-Key`` guards every route but ``/health`` when a key is set.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.concurrency import run_in_threadpool

from workers.distributed.cluster import ClusterConfig
from workers.jobs.runner import JobRunner
from workers.jobs.store import JobStore

from . import __version__, datalock, openapi, orphans
from .errors import exception_handlers
from .guard import Guard
from .head import HeadAsGet
from .routes import dashboard, datasets, encode_jobs, health, jobs, live, model_file, models, presets, results
from .routes.common import MULTIPART_SLACK
from .settings import Settings

logger = logging.getLogger(__name__)

STOP_GRACE_S = 3.0
"""Seconds a stopping service lets a running job reach the end of its outer iteration before it interrupts it."""
STOP_TIMEOUT_S = 6.0
"""Seconds a stopping service waits for its job threads (an interrupted job ends within about a second)."""


def create_app(settings: Settings | None = None) -> FastAPI:
    """The service over `settings`; its job runner starts and stops with the app (its lifespan).

    Parameters
    ----------
    settings : Settings, optional
        Default: :meth:`Settings.from_env`, the ``DECONV_*`` environment variables.

    Returns
    -------
    fastapi.FastAPI
        With ``app.state.settings``, ``app.state.store`` (:class:`workers.jobs.store.JobStore`) and
        ``app.state.runner`` (:class:`workers.jobs.runner.JobRunner`), which the dependencies of :mod:`api.deps` read.

    Examples
    --------
    >>> import tempfile
    >>> app = create_app(Settings(data_dir=tempfile.mkdtemp(), run_jobs=False))
    >>> sorted(app.openapi()["paths"])[:3]
    ['/', '/datasets', '/datasets/{dataset_id}']
    """
    settings = settings or Settings.from_env()
    store = JobStore(settings.data_dir, settings.artifacts, settings.work_url)
    cluster = ClusterConfig(address=settings.ray_address, num_cpus=settings.num_cpus)
    app = FastAPI(
        title="deconv",
        version=__version__,
        lifespan=_lifespan,
        exception_handlers=exception_handlers(),
        description="Convolutional sparse coding and Deconvolutional Networks as a service: upload "
        "images, learn filters, encode and reconstruct.",
    )
    app.state.settings, app.state.store, app.state.cluster = settings, store, cluster
    app.state.runner = JobRunner(
        store,
        cluster=cluster,
        checkpoint_every=settings.checkpoint_every,
        actor_cpus=settings.actor_cpus,
        max_running=settings.max_running_jobs,
        deadlines=settings.deadlines(),
    )
    app.include_router(health.router)
    app.include_router(datasets.router)
    app.include_router(encode_jobs.router)
    app.include_router(jobs.router)
    app.include_router(live.router)
    app.include_router(model_file.router)
    app.include_router(results.router)
    app.include_router(presets.router)
    app.include_router(dashboard.router)
    app.mount("/static", dashboard.static_files, name="static")
    app.include_router(models.router)
    app.include_router(jobs.unknown)  # last: it answers whatever under /jobs/ the routers above did not match
    app.add_middleware(HeadAsGet)
    # the host, origin, key and body-size checks run before any route reads a byte of the body
    app.add_middleware(Guard, settings=settings, upload_paths=takes_uploads, multipart_slack=MULTIPART_SLACK)
    openapi.install(app)
    return app


def takes_uploads(path: str) -> bool:
    """Whether `path` is a route that takes uploaded files (its body may be as large as an upload).

    Parameters
    ----------
    path : str
        The request's path.

    Returns
    -------
    bool
    """
    return path in ("/datasets", "/reconstruct") or (path.startswith("/models/") and path.endswith("/encode"))


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    runner: JobRunner = app.state.runner
    ray_context = lock = None
    if settings.run_jobs:
        lock = datalock.acquire(settings.data_dir)  # a live service's folder is not cleaned up under it
        # Connect here, in the server's own thread, not in the runner's: a local cluster's processes are tied
        # to the thread that starts them (a parent-death signal) and its agents outlive a thread that ends.
        try:
            ray_context = orphans.connect_owned(app.state.cluster, settings.data_dir)
        except BaseException:
            datalock.release(lock)
            raise
        runner.start()
    logger.info("deconv service: data in %s, jobs %s", app.state.store.data_dir, "run" if settings.run_jobs else "held")
    yield
    if settings.run_jobs:
        # a job stops between outer iterations; one still mid-iteration after the grace period is interrupted and
        # loses that iteration only (its actors' calls stop, they are released), and it resumes from its
        # checkpoint on the next start
        await run_in_threadpool(functools.partial(runner.stop, STOP_TIMEOUT_S, grace=STOP_GRACE_S))
    if ray_context is not None and ray_context.started:
        orphans.stop_cluster(settings.data_dir)
    if lock is not None:
        datalock.release(lock)
