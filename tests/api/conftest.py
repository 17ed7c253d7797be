"""Fixtures of the service tests: a real uvicorn server on 127.0.0.1 (port 0) in a thread, over a fresh data
directory, with its runner on the session's Ray cluster; and small sample images as upload parts."""

from __future__ import annotations

import io
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from configs import sample_paths
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)
from workers.jobs.status import TERMINAL

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("fastapi")


@pytest.fixture(autouse=True, scope="session")
def _no_deconv_variables() -> Iterator[None]:
    """The test services take their settings from the tests, not from the developer's DECONV_* variables."""
    with pytest.MonkeyPatch.context() as patch:
        for name in [name for name in os.environ if name.startswith("DECONV_")]:
            patch.delenv(name)
        yield


@dataclass
class LiveService:
    url: str
    data_dir: Path
    app: object
    server: object


def start_service(data_dir: Path, **settings) -> LiveService:
    """Start the app under uvicorn on a free loopback port; returns once it accepts connections."""
    import uvicorn  # noqa: PLC0415

    from api.app import create_app  # noqa: PLC0415
    from api.settings import Settings  # noqa: PLC0415

    app = create_app(Settings(data_dir=data_dir, **{"checkpoint_every": 2, **settings}))
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, name="uvicorn-test", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    server._deconv_thread = thread
    return LiveService(f"http://127.0.0.1:{port}", Path(data_dir), app, server)


def stop_service(service: LiveService) -> None:
    service.server.should_exit = True
    service.server._deconv_thread.join(60)


@pytest.fixture(scope="module")
def live_service(tmp_path_factory, ray_cluster) -> Iterator[LiveService]:  # noqa: F811
    """A running service for the module's tests (jobs run on the session's Ray cluster)."""
    service = start_service(tmp_path_factory.mktemp("deconv-data"))
    yield service
    stop_service(service)


def wait_for_job(
    client, job_id: str, until: Callable[[dict], bool] | None = None, *, timeout: float = 150, interval: float = 0.05
) -> dict:
    """Poll ``GET /jobs/{job_id}`` until `until(job)` holds (by default: until the job has ended); returns the job.

    Parameters
    ----------
    client : httpx2.Client
        With the service's ``base_url``.
    job_id : str
    until : callable, optional
        Takes the job's JSON.
    timeout, interval : float
        Seconds.

    Returns
    -------
    dict
        The job's JSON when `until` first held.

    Raises
    ------
    AssertionError
        Naming the job and showing it, when it ended without `until` holding or the timeout passed.
    """
    until = until or (lambda job: job["status"] in TERMINAL)
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/jobs/{job_id}").json()
        if until(job):
            return job
        if job["status"] in TERMINAL or time.monotonic() > deadline:
            raise AssertionError(f"job {job_id} did not get there within {timeout} s: {job}")
        time.sleep(interval)


def finished_job(data_dir: Path, filters: np.ndarray) -> str:
    """A store in `data_dir` holding one succeeded one-layer job whose model has `filters`; its id. Written
    directly (no runner, no Ray): the job has its model's artifacts only."""
    from solver import StackModel  # noqa: PLC0415
    from solver.config import AdmmConfig  # noqa: PLC0415
    from workers.distributed.checkpoint import npy_bytes  # noqa: PLC0415
    from workers.jobs.models import JobModel  # noqa: PLC0415
    from workers.jobs.store import JobStore  # noqa: PLC0415

    store = JobStore(data_dir)
    dataset = store.add_dataset([("a", np.zeros((1, 16, 16), np.uint8))])
    spec = {
        "dataset_id": dataset.id,
        "layers": [{"n_filters": filters.shape[0], "filter_size": filters.shape[-1], "lam": 0.1}],
    }
    job, _ = store.submit(spec, n_layers=1, n_iter=1)
    model = JobModel(StackModel.from_layers([filters], [None], [None], [0.1], [1.0]), AdmmConfig(max_iter=10))
    arrays, metadata = model.artifacts()
    for name, array in arrays.items():
        store.put_artifact(job.id, f"{name}.npy", npy_bytes(array), "application/x-npy")
    store.put_artifact(job.id, "model.json", metadata, "application/json")
    assert store.claim_next().id == job.id
    store.finish(job.id, "succeeded")
    store.close()
    return job.id


def sample_png_parts(n: int = 3, size: int = 32) -> list[tuple[str, bytes]]:
    """`n` crops of the bundled sample images, size x size, as (name, PNG bytes)."""
    parts = []
    for path in sample_paths()[:n]:
        buffer = io.BytesIO()
        Image.open(path).crop((40, 40, 40 + size, 40 + size)).save(buffer, format="PNG")
        parts.append((path.name, buffer.getvalue()))
    return parts
