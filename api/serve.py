"""Running the service: in the foreground (``deconv serve``) or in a background thread (``deconv demo``).

Both run uvicorn on :func:`api.app.create_app`; the app's lifespan starts and stops the job runner. Ray is
connected here, from the calling thread, before the service starts: left to the runner, ``ray.init`` would run in
the runner's thread, and the local cluster's processes die with the thread that started them (Ray starts them with
a parent-death signal, which Linux ties to the starting thread) while its agents are left behind as orphans. The
cluster this started is shut down once uvicorn has stopped, so no Ray process outlives the service.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from types import TracebackType
from typing import Any

from . import datalock
from .settings import Settings

logger = logging.getLogger("deconv.serve")


def serve(settings: Settings, *, host: str = "127.0.0.1", port: int = 8000) -> int:
    """Serve in the foreground until SIGINT or SIGTERM.

    Parameters
    ----------
    settings : Settings
    host : str
        The interface to listen on.
    port : int
        0: a free one (uvicorn logs which).

    Returns
    -------
    int
        The exit status: 0, or 1 when uvicorn failed.

    Raises
    ------
    OSError, sqlite3.Error
        When the data directory cannot be used.
    ValueError
        When the bucket of ``DECONV_ARTIFACTS`` or ``DECONV_WORK_URL`` does not exist.
    workers.jobs.objects.StoreUnreachable
        When their store does not answer.
    api.datalock.DataDirInUse
        When another live service uses the data directory.
    """
    from workers.jobs.objects import check_store  # noqa: PLC0415

    from .app import create_app  # noqa: PLC0415

    # a store that is missing or does not answer fails the start in one line, not the first job in a traceback
    check_store(settings.artifacts, "DECONV_ARTIFACTS")
    check_store(settings.work_url, "DECONV_WORK_URL")
    app = create_app(settings)
    lock = datalock.acquire(settings.data_dir) if settings.run_jobs else None  # before anything is cleaned up
    try:
        return _serve_app(app, settings, host, port)
    finally:
        if lock is not None:
            datalock.release(lock)


def _serve_app(app: Any, settings: Settings, host: str, port: int) -> int:
    import uvicorn  # noqa: PLC0415

    owns_ray = app.state.owns_cluster = _connect_ray(settings)
    where = f"http://{host}:{port}" if port else f"http://{host} on a free port (uvicorn names it below)"
    logger.info("deconv service: data in %s; listening on %s (API docs at /docs)", settings.data_dir.resolve(), where)
    # requests still running after a few seconds of SIGTERM are cut: the service stops within 10 s
    config = uvicorn.Config(app, host=host, port=port, log_level="info", lifespan="on", timeout_graceful_shutdown=3)
    server = uvicorn.Server(config)
    try:
        with _graceful_signals():
            server.run()
    except SystemExit as exc:  # uvicorn exits 1 when it cannot bind or the app fails to start
        return exc.code if isinstance(exc.code, int) else 1
    finally:
        if owns_ray:
            _shutdown_ray(settings)
    return 0 if server.started else 1


@contextmanager
def _graceful_signals() -> Iterator[None]:
    """Uvicorn shuts down gracefully on SIGINT or SIGTERM, then raises the signal again for the handler that was
    there before; with this one that re-raise is a no-op, so Ray is still stopped and the exit status is 0."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = {sig: signal.signal(sig, lambda signum, frame: None) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


class ServiceThread:
    """The service on ``127.0.0.1``, a free port, in a daemon thread; a context manager.

    ::

        with ServiceThread(Settings(data_dir=folder)) as service:
            client = DeconvClient(service.url)

    Parameters
    ----------
    settings : Settings
    start_timeout : float
        Seconds to wait for uvicorn to accept connections.
    """

    def __init__(self, settings: Settings, *, start_timeout: float = 60.0):
        self.settings = settings
        self.start_timeout = start_timeout
        self.url: str | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self._owns_ray = False
        self._lock = None

    def start(self) -> str:
        """Start uvicorn; return once the service accepts connections.

        Returns
        -------
        str
            The service's URL, ``http://127.0.0.1:<port>``.
        """
        import uvicorn  # noqa: PLC0415

        from .app import create_app  # noqa: PLC0415

        app = create_app(self.settings)
        if self.settings.run_jobs:
            self._lock = datalock.acquire(self.settings.data_dir)
        try:  # a Ray this process already had (tests) is left running
            self._owns_ray = app.state.owns_cluster = _connect_ray(self.settings)
        except BaseException:
            self.stop()
            raise
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on")
        self._server = server = uvicorn.Server(config)
        self._thread = threading.Thread(target=server.run, name="deconv-service", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + self.start_timeout
        while not server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the deconv service did not start (see the log above)")
            time.sleep(0.02)
        port = server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        logger.info("deconv service: data in %s, at %s", self.settings.data_dir.resolve(), self.url)
        return self.url

    def stop(self, timeout: float = 60.0) -> None:
        """Stop uvicorn (the runner puts a running job back in the queue), and Ray if the service started it.

        Parameters
        ----------
        timeout : float
            Seconds to wait for uvicorn's thread.
        """
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the deconv service did not stop within %s s", timeout)
        self._server = self._thread = None
        if self._owns_ray:
            _shutdown_ray(self.settings)
            self._owns_ray = False
        if self._lock is not None:
            datalock.release(self._lock)
            self._lock = None

    def __enter__(self) -> ServiceThread:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()


def _connect_ray(settings: Settings) -> bool:
    """Connect to the service's Ray cluster from this thread (see the module docstring); True if this started it.

    Raises
    ------
    ValueError
        For local-cluster resources with a remote address.
    ConnectionError
        When the cluster at the address cannot be reached.
    """
    if not settings.run_jobs:
        return False
    from workers.distributed.cluster import ClusterConfig  # noqa: PLC0415

    from .orphans import connect_owned  # noqa: PLC0415

    cluster = ClusterConfig(address=settings.ray_address, num_cpus=settings.num_cpus)
    return connect_owned(cluster, settings.data_dir).started


def _shutdown_ray(settings: Settings) -> None:
    from .orphans import stop_cluster  # noqa: PLC0415

    stop_cluster(settings.data_dir)
