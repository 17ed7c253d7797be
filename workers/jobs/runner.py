"""The job runner: takes queued jobs from the store, learns them on Ray layer by layer, writes their artifacts.

One background thread runs one job at a time (oldest first). A job of L layers is L distributed runs of
:class:`~workers.distributed.coordinator.Coordinator`: layer 1 on the dataset's images with the job's preprocessing,
layer l+1 on the maps of layer l (saved as one ``.npy`` per image in the job's work folder; pooled, with their
switches saved beside them, when layer l pools) rescaled as the 2010 toolbox does. A job with ``reconstruct_to``
'pixels' (the 2011 model) runs every layer on the dataset's images instead, through the frozen layers below and
the saved switches of the same images, which each shard actor reads for its own images.

Every run checkpoints into ``jobs/<id>/checkpoints/L<l>`` every ``checkpoint_every`` outer iterations, and a
finished layer leaves ``jobs/<id>/layers/L<l>/done.json`` (written last), so a job restarted after the service
died skips its finished layers and resumes the current one from its newest checkpoint. ``model.json`` is the last
artifact stored; once it is there the job's work folder is removed, and a restarted job that finds it is done.

Progress (layer, outer iteration, objective, sparsity, elapsed time) goes to the store after every outer iteration.
A cancel request is seen before the next outer iteration. When the service stops gracefully, the running job goes
back to the queue (after a checkpoint of its last iteration); when it is killed, :meth:`JobRunner.start` of the next
service finds the job still ``running`` and queues it again.

Artifacts of a succeeded job (names in the store): ``filters-L<l>.npy`` (K, C, s, s) float32 and
``filters-L<l>.png`` (layer 1: the filters; higher layers: their pixel-space projections, or above a pooling layer
each map's strongest training activation projected down), ``connectivity-L<l>.npy``, ``maps-L<l>.npz`` (one array
per image, ``image-0000``, ...), ``switches-L<l>.npy`` (N, ⌈K/pk⌉, ⌈H'/ph⌉, ⌈W'/pw⌉) int32 for a layer that
pools, ``reconstructions.npy`` (N, C, H, W: the top layer's
maps projected to pixels, in the preprocessed space) and ``reconstructions.png`` (each preprocessed input beside its
reconstruction), ``history.json`` and ``history.png`` (the objective per outer iteration), ``config.json`` (the
resolved spec), ``model.json`` (what encoding and projection need).
"""

from __future__ import annotations

import io
import json
import logging
import re
import shutil
import threading
import traceback
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np

from solver import (
    FittedPreprocess,
    IterStats,
    LearnResult,
    StackCode,
    StackModel,
    layer_config,
    pixel_filters,
    reconstruct_from,
    top_projections,
)
from solver.images.pictures import filter_montage, history_plot, image_sheet, png_bytes
from solver.operators.pixel_path import LowerLayer
from solver.operators.pooling import pool3d, pool_maps

from ..distributed.checkpoint import atomic_write_bytes, npy_bytes
from ..distributed.cluster import ClusterConfig, connect
from .integrity import verify_dataset
from .models import JobModel, load_model
from .spec import JobSpec
from .store import JobRecord, JobStore

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class JobStopped(Exception):  # noqa: N818  (control flow, not an error)
    """The job was asked to stop (a cancel, or the service shutting down) before it finished."""


class JobRunner:
    """Runs the store's queued jobs, one at a time, in a background thread.

    Parameters
    ----------
    store : JobStore
    cluster : ClusterConfig, optional
        The Ray cluster (default: ``RAY_ADDRESS``, else a private local one, started on the first job).
    checkpoint_every : int
        Outer iterations between checkpoints.
    max_failures : int
        Shard-actor failures a job survives.
    max_attempts : int
        Times a job may be started (restarts of the service included) before it fails.
    poll_interval : float
        Seconds between looks at an empty queue.
    actor_cpus : float
        CPUs each shard actor reserves (see :class:`~workers.distributed.coordinator.Coordinator`).
    """

    def __init__(
        self,
        store: JobStore,
        *,
        cluster: ClusterConfig | None = None,
        checkpoint_every: int = 5,
        max_failures: int = 3,
        max_attempts: int = 3,
        poll_interval: float = 0.25,
        actor_cpus: float = 0.0,
    ):
        self.store = store
        self.cluster = cluster
        self.checkpoint_every = checkpoint_every
        self.max_failures = max_failures
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.actor_cpus = actor_cpus
        self._stopping = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self.current: str | None = None

    def start(self) -> None:
        """Queue again the jobs a dead service left running, then start the thread."""
        if self._thread is not None:
            raise RuntimeError("the runner is already started")
        self.store.requeue_running(max_attempts=self.max_attempts)
        self._stopping.clear()
        self._thread = threading.Thread(target=self._loop, name="deconv-runner", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float | None = 60.0) -> None:
        """Stop after the running job's current outer iteration (it goes back to the queue) and join."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            if self._thread.is_alive():
                logger.warning("the runner did not stop within %s s", timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                job = self.store.claim_next()
            except Exception:  # a locked or broken database must not kill the runner thread
                logger.exception("cannot read the job queue")
                job = None
            if job is None:
                self._wake.wait(self.poll_interval)
                self._wake.clear()
                continue
            self.run_job(job)
        self.store.close()

    def run_job(self, job: JobRecord) -> None:
        """Run one claimed job to its end state (never raises)."""
        self.current = job.id
        logger.info("job %s: started (attempt %d)", job.id, job.attempts)
        try:
            execute(
                self.store,
                job,
                cluster=self.cluster,
                checkpoint_every=self.checkpoint_every,
                max_failures=self.max_failures,
                actor_cpus=self.actor_cpus,
                should_stop=lambda: self._stopping.is_set() or self.store.cancel_requested(job.id),
            )
        except JobStopped:
            if self.store.cancel_requested(job.id):
                self.store.finish(job.id, "cancelled")
                self._discard_work(job.id)
            else:
                self.store.release(job.id)
                logger.info("job %s: back in the queue (the service is stopping)", job.id)
        except Exception as exc:
            if self._stopping.is_set():  # the stopping service took the cluster from under the job: it resumes
                logger.info("job %s: back in the queue (stopped mid-iteration: %s)", job.id, _describe(exc))
                self.store.release(job.id)
                return
            logger.error("job %s failed:\n%s", job.id, traceback.format_exc())
            self.store.finish(job.id, "failed", _describe(exc))
            self._discard_work(job.id)
        else:
            self.store.finish(job.id, "succeeded")
        finally:
            self.current = None

    def _discard_work(self, job_id: str) -> None:
        """A cancelled or failed job will not resume: its checkpoints and layer maps only take disk space."""
        shutil.rmtree(self.store.job_dir(job_id), ignore_errors=True)


def execute(
    store: JobStore,
    job: JobRecord,
    *,
    cluster: ClusterConfig | None = None,
    checkpoint_every: int = 5,
    max_failures: int = 3,
    actor_cpus: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
) -> JobModel:
    """Learn every layer of `job`, resuming what an earlier attempt left, and store the artifacts.

    Raises
    ------
    JobStopped
        When `should_stop` turned true before the end.
    """
    from ..distributed.coordinator import Coordinator  # noqa: PLC0415  (imports Ray)

    if store.artifact(job.id, "model.json") is not None:  # finished before the service died: nothing to redo
        return load_model(store, job.id)
    spec = JobSpec.model_validate(job.spec)
    config = spec.learn_config()
    dataset = store.get_dataset(spec.dataset_id)
    if dataset is None:
        raise ValueError(f"dataset {spec.dataset_id} is gone")
    verify_dataset(store, dataset)
    work = store.job_dir(job.id)
    inputs = _input_paths(store, dataset, work / "inputs")
    paths = inputs
    connect(cluster)
    pixels = config.reconstruct_to == "pixels"
    results: list[LearnResult] = []
    switch_files: list[list[Path] | None] = []
    for index in range(len(spec.layers)):
        layer_dir = work / "layers" / f"L{index + 1}"
        pool = spec.layers[index].pool
        done = _load_layer(layer_dir)
        if done is None:
            if should_stop():
                raise JobStopped
            cfg = layer_config(config, index)
            lower: list[LowerLayer] = []
            if pixels:  # every layer reads the pixels, preprocessed as for layer 1 (the same fit, repeated)
                cfg = cfg.model_copy(update={"preprocess": config.preprocess})
                lower = [LowerLayer(r.filters, _table(r), spec.layers[j].pool) for j, r in enumerate(results)]
            coordinator = Coordinator(
                paths,
                cfg,
                workers=spec.workers,
                checkpoint_dir=work / "checkpoints" / f"L{index + 1}",
                checkpoint_every=checkpoint_every,
                max_failures=max_failures,
                backend=spec.backend,
                actor_cpus=actor_cpus,
                lower=lower,
                switch_paths=list(switch_files) if pixels else [],
            )

            def progress(stats: IterStats, layer: int = index + 1) -> None:
                store.update_progress(
                    job.id,
                    layer=layer,
                    iteration=stats.iteration,
                    objective=stats.objective,
                    sparsity=stats.sparsity,
                    elapsed=stats.elapsed,
                )

            resume = (work / "checkpoints" / f"L{index + 1}").is_dir()  # an earlier attempt left checkpoints
            result = coordinator.run(callback=progress, should_stop=should_stop, resume=resume)
            if len(result.history) < cfg.n_iter:
                raise JobStopped
            done = _save_layer(layer_dir, result, pool)
        results.append(done)
        switch_files.append(None if pool is None else sorted((layer_dir / "switches").glob("*.npy")))
        if not pixels:  # the 2010 model: the next layer reads this one's (pooled) maps
            paths = sorted((layer_dir / ("maps" if pool is None else "pooled")).glob("*.npy"))
    preprocess = [r.preprocess if index == 0 or not pixels else None for index, r in enumerate(results)]
    lam_max = [r.lam_max for r in results]  # a relative λ is recorded as the absolute λ used, with λ_max
    lams = [layer.lam if top is None else layer.lam * top for layer, top in zip(spec.layers, lam_max, strict=True)]
    stack = StackModel.from_layers(
        [r.filters for r in results],
        [_table(r) for r in results],
        preprocess,
        lams,
        [layer.p for layer in spec.layers],
        spec.boundary,
        [layer.pool for layer in spec.layers],
        spec.reconstruct_to,
        lam_max=lam_max,
    )
    model = JobModel(stack, spec.inference)
    images = np.stack([np.load(p, allow_pickle=False) for p in inputs])
    _store_artifacts(store, job.id, spec, model, results, dataset_images=images)
    shutil.rmtree(work, ignore_errors=True)  # everything of value is in the artifacts now
    return model


def _table(result: LearnResult) -> np.ndarray:
    if result.connectivity is not None:
        return np.asarray(result.connectivity, dtype=bool)
    return np.ones(result.filters.shape[:2], dtype=bool)


def _input_paths(store: JobStore, dataset, folder: Path) -> list[Path]:
    """The dataset's image files: the local store's own files, else copies in the job's folder."""
    paths = []
    for index, image in enumerate(dataset.images):
        local = store.artifacts.local_path(image.key)
        if local is not None and local.is_file():
            paths.append(local)
            continue
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{index:05d}.npy"
        if not target.is_file():
            atomic_write_bytes(target, store.artifacts.get(image.key))
        paths.append(target)
    return paths


# -- finished layers in the work folder -----------------------------------------------------------------------------


def _save_layer(folder: Path, result: LearnResult, pool: tuple[int, int, int] | None) -> LearnResult:
    """Maps (one file per image, the next layer's input), their pooled maps and switches when the layer pools,
    filters, stats; ``done.json`` last."""
    maps_dir = folder / "maps"
    maps_dir.mkdir(parents=True, exist_ok=True)
    for n, m in enumerate(result.maps):
        atomic_write_bytes(maps_dir / f"{n:05d}.npy", npy_bytes(m))
    if pool is not None:
        (folder / "pooled").mkdir(exist_ok=True)
        (folder / "switches").mkdir(exist_ok=True)
        for n, m in enumerate(result.maps):
            pooled, switches = pool3d(m[None], pool)
            atomic_write_bytes(folder / "pooled" / f"{n:05d}.npy", npy_bytes(pooled[0]))
            atomic_write_bytes(folder / "switches" / f"{n:05d}.npy", npy_bytes(switches[0]))
    atomic_write_bytes(folder / "filters.npy", npy_bytes(result.filters))
    atomic_write_bytes(folder / "connectivity.npy", npy_bytes(_table(result)))
    done = {
        "stats": [asdict(s) for s in result.stats],
        "preprocess": None if result.preprocess is None else result.preprocess.to_dict(),
        "lam_max": result.lam_max,
    }
    atomic_write_bytes(folder / "done.json", json.dumps(done).encode())
    return result


def _load_layer(folder: Path) -> LearnResult | None:
    marker = folder / "done.json"
    if not marker.is_file():
        return None
    done = json.loads(marker.read_text())
    maps = np.stack([np.load(p, allow_pickle=False) for p in sorted((folder / "maps").glob("*.npy"))])
    stats = [IterStats(**s) for s in done["stats"]]
    pre = None if done["preprocess"] is None else FittedPreprocess.from_dict(done["preprocess"])
    logger.info("layer %s: finished earlier, reusing it", folder.name)
    return LearnResult(
        np.load(folder / "filters.npy"),
        maps,
        [s.objective for s in stats],
        stats,
        None,
        np.load(folder / "connectivity.npy"),
        pre,
        done.get("lam_max"),
    )


# -- artifacts ------------------------------------------------------------------------------------------------------


def _store_artifacts(
    store: JobStore, job_id: str, spec: JobSpec, model: JobModel, results: list[LearnResult], dataset_images: np.ndarray
) -> None:
    arrays, model_json = model.artifacts()
    for name, array in arrays.items():
        store.put_artifact(
            job_id,
            f"{name}.npy",
            npy_bytes(array.astype(np.float32) if array.dtype.kind == "f" else array),
            "application/x-npy",
        )
    code = StackCode(
        [r.maps for r in results],
        [pool_maps(r.maps, layer.pool)[1] for r, layer in zip(results, model.layers, strict=True)],
    )
    for number, result in enumerate(results, start=1):
        if model.stack.pools_below(number):  # seen through its strongest activation on the training images
            picture = filter_montage(top_projections(model.stack, code, number))
        else:
            picture = filter_montage(pixel_filters(model.stack, number))
        store.put_artifact(job_id, f"filters-L{number}.png", png_bytes(picture), "image/png")
        store.put_artifact(job_id, f"maps-L{number}.npz", npz_bytes(result.maps), "application/x-npz")
        if code.switches[number - 1] is not None:
            store.put_artifact(
                job_id, f"switches-L{number}.npy", npy_bytes(code.switches[number - 1]), "application/x-npy"
            )
    recon = reconstruct_from(model.stack, code, len(model.layers)).astype(np.float32)
    store.put_artifact(job_id, "reconstructions.npy", npy_bytes(recon), "application/x-npy")
    inputs = dataset_images if model.layers[0].preprocess is None else model.layers[0].preprocess.apply(dataset_images)
    store.put_artifact(job_id, "reconstructions.png", png_bytes(image_sheet(inputs, recon)), "image/png")
    history = [{"layer": index + 1, **asdict(s)} for index, r in enumerate(results) for s in r.stats]
    store.put_artifact(job_id, "history.json", json.dumps(history, indent=1).encode(), "application/json")
    store.put_artifact(job_id, "history.png", history_plot(history), "image/png")
    store.put_artifact(job_id, "config.json", spec.model_dump_json(indent=1).encode(), "application/json")
    store.put_artifact(job_id, "model.json", model_json, "application/json")  # last: the job's model


def npz_bytes(maps: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **{f"image-{n:05d}": m for n, m in enumerate(maps)})
    return buffer.getvalue()


def _describe(exc: BaseException) -> str:
    """One line for the job's error: the exception's type and message, for an error raised in a Ray actor the
    original one (not Ray's wrapper with its colour codes and process ids)."""
    cause = getattr(exc, "cause", None)  # ray.exceptions.RayTaskError carries the actor's exception
    if isinstance(cause, BaseException):
        exc = cause
    lines = [line for line in _ANSI.sub("", str(exc)).strip().splitlines() if line.strip()]
    message = (
        lines[-1].strip()
        if len(lines) > 1 and lines[-1].startswith(type(exc).__name__)
        else (lines[0].strip() if lines else "")
    )
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


__all__ = ["JobRunner", "JobStopped", "execute"]
