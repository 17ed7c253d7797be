"""The job runner: takes queued jobs from the store, learns them on Ray layer by layer, writes their artifacts.

A background thread starts the queued jobs, oldest first, up to ``max_running`` at once, each in a thread of its
own once its shard actors' resources are reserved on the cluster (a placement group held for the whole job).
A job of L layers is L distributed runs of
:class:`~workers.distributed.coordinator.Coordinator`: layer 1 on the dataset's images with the job's preprocessing,
layer l+1 on the maps of layer l (pooled when layer l pools) rescaled as the 2010 toolbox does. A job with
``reconstruct_to`` 'pixels' (the 2011 model) runs every layer on the dataset's images instead, through the frozen
layers below and the switches of the same images.

The store is the data plane: the shard actors read the dataset's images from the artifact store by key, and at the
end of a layer each writes its part of the layer's results (:mod:`workers.distributed.outputs`): maps, switches and
pooled maps into the job's work store; layer l+1's actors read their rows of those parts. When the job succeeds its
maps, switches and reconstructions are adopted into the artifact store (a hard link, or a copy inside the object
store); a failed or cancelled job's work store is removed with all of them. This process records keys only, so its
memory does not grow with the dataset.

Every run checkpoints into ``<work>/<id>/layers/L<l>/checkpoints`` every ``checkpoint_every`` outer iterations
(each actor writes its own part, the coordinator the manifest, last), and a finished layer leaves
``layers/L<l>/done.json`` (written last: its filters, statistics and the keys of its parts), so a job restarted
after the service died skips its finished layers and resumes the current one from its newest checkpoint.
``model.json`` is the last artifact stored; once it is there the job's work folder is removed, and a restarted job
that finds it is done. The work store is ``DECONV_WORK_URL``, by default beside the artifacts.

Progress (layer, outer iteration, objective, sparsity, elapsed time) goes to the store after every outer iteration.
A cancel request is seen within a fraction of a second, even in the middle of an outer iteration: the shard actors'
calls stop, the actors are released, and the job is ``cancelled``. When the service stops gracefully, the running
job goes back to the queue: after a checkpoint of its last iteration when it reaches the end of its outer iteration
within the grace period, else interrupted (it resumes from its last checkpoint); when the service is killed,
:meth:`JobRunner.start` of the next service finds the job still ``running`` and queues it again (or ends it, and
removes its work, when it was cancelled or has used its attempts), and removes the work folders of finished jobs that
the killed service left.

Artifacts of a succeeded job (names in the store): ``filters-L<l>.npy`` (K, C, s, s) float32 and
``filters-L<l>.png`` (layer 1: the filters; higher layers: their pixel-space projections, or above a pooling layer
each map's strongest activation on the first :data:`SAMPLE_IMAGES` training images projected down),
``connectivity-L<l>.npy``; per shard i, ``maps-L<l>.part-<i>.npy`` (n_i, K, H', W'), ``switches-L<l>.part-<i>.npy``
(n_i, ⌈K/pk⌉, ⌈H'/ph⌉, ⌈W'/pw⌉) int32 for a layer that pools, and ``reconstructions.part-<i>.npy`` (n_i, C, H, W)
float32 (the top layer's maps projected to pixels, in the preprocessed space), with their index ``shards.json``
(:mod:`workers.jobs.results` serves them as one array); ``reconstructions.png`` (the first :data:`SAMPLE_IMAGES`
preprocessed inputs beside their reconstructions), ``history.json`` and ``history.png`` (the objective per outer
iteration), ``config.json`` (the resolved spec), ``model.json`` (what encoding and projection need).
"""

from __future__ import annotations

import logging
import re
import sqlite3
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from typing import TypeVar

from ..distributed.address import LOCAL
from ..distributed.cluster import ClusterConfig, connect
from ..distributed.deadlines import Deadlines
from ..distributed.placement import (
    Placement,
    is_ready,
    node_resources,
    release,
    reserve,
    resolve_resources,
    unplaceable,
)
from .encoding import actors_of, execute_encode, is_encode_job, job_spec
from .learning import JobStopped, execute
from .publish import SAMPLE_IMAGES, part_name
from .store import JobRecord, JobStore, transient

logger = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
T = TypeVar("T")
RECORD_RETRY_S = 1.0
"""Seconds before a job's end state is written again when the store could not take it; doubled up to
:data:`RECORD_RETRY_MAX_S`."""
RECORD_RETRY_MAX_S = 30.0


class JobRunner:
    """Runs the store's queued jobs in background threads, up to `max_running` at once, oldest first.

    A job starts only once its shard actors' resources are reserved together (a Ray placement group, see
    :mod:`workers.distributed.placement`): the oldest queued job's group is asked for, and while the cluster has no
    room for all of it the job stays queued and the younger ones wait behind it (no job is passed over for ever).
    A job that can never fit (more than a private local cluster has) fails at once, saying what it asked.

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
        Seconds between looks at the queue while nothing changes.
    actor_cpus : float
        CPUs each shard actor reserves when the job's spec does not say (``resources.cpus``).
    max_running : int
        Jobs that run at the same time.
    deadlines : Deadlines, optional
        How long the shard actors' start-up and calls may take (default: ``Deadlines()``).
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
        actor_cpus: float = 1.0,
        max_running: int = 2,
        deadlines: Deadlines | None = None,
    ):
        if isinstance(max_running, bool) or not isinstance(max_running, int) or max_running < 1:
            raise ValueError(f"max_running must be a positive integer, got {max_running!r}")
        self.store = store
        self.cluster = cluster
        self.checkpoint_every = checkpoint_every
        self.max_failures = max_failures
        self.max_attempts = max_attempts
        self.poll_interval = poll_interval
        self.actor_cpus = actor_cpus
        self.max_running = max_running
        self.deadlines = deadlines
        self._stopping = threading.Event()
        self._interrupt_at = float("inf")  # when a stopping runner interrupts the jobs still mid-iteration
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._jobs: dict[str, threading.Thread] = {}  # running jobs, oldest first (dicts keep insertion order)
        self._waiting: tuple[str, Placement] | None = None  # the oldest queued job and its pending reservation
        self._told_waiting: str | None = None

    def start(self) -> None:
        """Queue again the jobs a dead service left running, then start the thread."""
        if self._thread is not None:
            raise RuntimeError("the runner is already started")
        self.store.requeue_running(max_attempts=self.max_attempts)
        self.store.sweep_work()
        self._stopping.clear()
        self._interrupt_at = float("inf")
        self._thread = threading.Thread(target=self._loop, name="deconv-runner", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        """A job was queued: look now rather than at the next poll."""
        self._wake.set()

    def stop(self, timeout: float | None = 60.0, *, grace: float = 3.0) -> None:
        """Stop every running job (they go back to the queue) and join.

        A job stops at the end of its current outer iteration, with a checkpoint of it, when that comes within
        `grace` seconds; past them it is interrupted (its shard actors' calls stop, and it resumes from its last
        checkpoint).
        """
        self._interrupt_at = time.monotonic() + grace
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

    @property
    def running(self) -> list[str]:
        """Ids of the jobs running now, oldest first."""
        return [job_id for job_id, thread in list(self._jobs.items()) if thread.is_alive()]

    @property
    def current(self) -> str | None:
        """The oldest running job's id (None when none runs)."""
        running = self.running
        return running[0] if running else None

    def _loop(self) -> None:
        while not self._stopping.is_set():
            try:
                started = self._schedule()
            except Exception:  # a locked database or a lost cluster must not kill the runner thread
                logger.exception("cannot schedule the job queue")
                started = False
            if not started:
                self._wake.wait(self.poll_interval)
                self._wake.clear()
        self._drop_waiting()
        for thread in list(self._jobs.values()):
            thread.join()
        self._jobs.clear()
        self.store.close()

    def _schedule(self) -> bool:
        """Start the oldest queued job if a slot is free and its resources are reserved; True if the queue moved."""
        for job_id, thread in list(self._jobs.items()):
            if not thread.is_alive():
                del self._jobs[job_id]
        if len(self._jobs) >= self.max_running:
            return False
        job = self.store.next_queued()
        if self._waiting is not None and (job is None or self._waiting[0] != job.id):
            self._drop_waiting()  # cancelled, or an older job came back to the queue: it goes first
        if job is None:
            return False
        if self._waiting is None:
            try:
                request = self._request(job)
            except ValueError as exc:  # a job that cannot run here: it fails now rather than waiting for ever
                self._fail_queued(job.id, exc)
                return True
            # a name of its own per reservation: a dead service's group of the same job may not be gone yet
            self._waiting = (job.id, reserve(request, name=f"deconv-job-{job.id}-{uuid.uuid4().hex[:8]}"))
        job_id, placement = self._waiting
        if not is_ready(placement):
            if self._told_waiting != job_id:
                logger.info("job %s: waiting for room on the cluster for %s", job_id, placement.describe())
                self._told_waiting = job_id
            return False
        self._waiting = None
        claimed = self.store.claim(job_id)
        if claimed is None:  # cancelled between the look and the claim
            release(placement)
            return True
        thread = threading.Thread(
            target=self._run_in_thread, args=(claimed, placement), name=f"deconv-job-{job_id[:8]}", daemon=True
        )
        self._jobs[job_id] = thread
        thread.start()
        return True

    def _request(self, job: JobRecord) -> Placement:
        """What the job's shard actors reserve; ValueError for a job that cannot run on this cluster."""
        import ray  # noqa: PLC0415

        spec = job_spec(job.spec)  # a learning job's, or an encode job's
        dataset = self.store.get_dataset(spec.dataset_id)
        if dataset is None:
            raise ValueError(f"dataset {spec.dataset_id} is gone")
        connect(self.cluster)
        placement = resolve_resources(
            spec.resources,
            n_shards=actors_of(spec, dataset.n_images),
            backend=spec.backend,
            cluster_gpus=float(ray.cluster_resources().get("GPU", 0.0)),
            default_cpus=self.actor_cpus,
        )
        why = unplaceable(placement, node_resources())
        if why is not None:
            if (self.cluster or ClusterConfig()).resolved_address() == LOCAL:
                raise ValueError(f"the job cannot be placed on this machine's private Ray cluster: {why}")
            logger.warning("job %s waits for nodes to join: %s", job.id, why)  # a real cluster may grow
        return placement

    def _fail_queued(self, job_id: str, exc: ValueError) -> None:
        if self.store.claim(job_id) is not None:
            self.store.finish(job_id, "failed", describe_error(exc))

    def _drop_waiting(self) -> None:
        if self._waiting is not None:
            release(self._waiting[1])
            self._waiting = None

    def _run_in_thread(self, job: JobRecord, placement: Placement | None) -> None:
        try:
            self.run_job(job, placement)
        finally:
            self.store.close()  # this thread's connection

    def run_job(self, job: JobRecord, placement: Placement | None = None) -> None:
        """Run one claimed job to its end state (never raises); its placement group is removed at the end."""
        logger.info("job %s: started (attempt %d)", job.id, job.attempts)
        run = execute_encode if is_encode_job(job.spec) else execute
        try:
            run(
                self.store,
                job,
                cluster=self.cluster,
                checkpoint_every=self.checkpoint_every,
                max_failures=self.max_failures,
                actor_cpus=self.actor_cpus,
                placement=placement,
                should_stop=lambda: self._stopping.is_set() or self.store.cancel_requested(job.id),
                interrupt=lambda: time.monotonic() >= self._interrupt_at or self._cancel_asked(job.id),
                deadlines=self.deadlines,
            )
        except JobStopped:
            if self._record(job.id, lambda: self.store.cancel_requested(job.id)):
                self._record(job.id, lambda: self.store.finish(job.id, "cancelled"))
                self._discard_work(job.id)
            else:
                self._record(job.id, lambda: self.store.release(job.id))
                logger.info("job %s: back in the queue (the service is stopping)", job.id)
        except Exception as exc:
            if self._stopping.is_set():  # the stopping service took the cluster from under the job: it resumes
                logger.info("job %s: back in the queue (stopped mid-iteration: %s)", job.id, describe_error(exc))
                self._record(job.id, lambda: self.store.release(job.id))
                return
            logger.error("job %s failed:\n%s", job.id, traceback.format_exc())
            error = describe_error(exc)
            self._record(job.id, lambda: self.store.finish(job.id, "failed", error))
            self._discard_work(job.id)
        else:
            self._record(job.id, lambda: self.store.finish(job.id, "succeeded"))
        finally:
            release(placement)

    def _record(self, job_id: str, write: Callable[[], T]) -> T | None:
        """`write` (a job's end state in the store), retried while the store cannot take it (a full disk): the
        job must not stay "running" for ever because its end could not be written once. Gives up when the
        service stops (its successor finds the job running and queues it again)."""
        wait = RECORD_RETRY_S
        while True:
            try:
                return write()
            except (sqlite3.Error, OSError) as exc:
                if not transient(exc):  # a programming error: writing again would fail again
                    logger.exception("job %s: cannot record its state", job_id)
                    return None
                logger.error("job %s: cannot record its state (%s); retrying in %.0f s", job_id, exc, wait)
            if self._stopping.wait(wait):
                return None
            wait = min(2 * wait, RECORD_RETRY_MAX_S)

    def _cancel_asked(self, job_id: str) -> bool:
        """Whether the job's cancel was asked; asked a few times a second while its actors work, so a database
        busy for a moment answers "not yet" rather than failing the job."""
        try:
            return self.store.cancel_requested(job_id)
        except sqlite3.Error:
            logger.debug("job %s: could not read its cancel flag", job_id, exc_info=True)
            return False

    def _discard_work(self, job_id: str) -> None:
        """A cancelled or failed job will not resume: its checkpoints and parts only take space (what cannot be
        removed now is left for the orphan sweep)."""
        try:
            self.store.discard_work(job_id)
        except (sqlite3.Error, OSError) as exc:
            logger.warning("job %s: its work folder was not removed (%s)", job_id, exc)


def describe_error(exc: BaseException) -> str:
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


__all__ = ["SAMPLE_IMAGES", "JobRunner", "JobStopped", "describe_error", "execute", "part_name"]
