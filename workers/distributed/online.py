"""Online dictionary learning on Ray: coding actors pull batches of images from the store, the driver folds their
statistics in a fixed order and broadcasts the filters.

One step of :class:`OnlineRun` (batch ``t`` of the :class:`~workers.distributed.stream.StreamPlan`):

1. the batch's training indices are split into parts (:func:`~workers.distributed.stream.split`, at most one per
   coding actor); part ``j`` goes to actor ``j`` as the store locations of its images, with the filters of step
   ``t`` (``ray.put`` once per step) and the locations of its part of batch ``t + 1``;
2. each actor (:class:`~workers.distributed.online_coder.OnlineCoder`) loads its images (prefetched during the
   previous step by a thread of its own: at most the current part and the next one are held), preprocesses them
   with the dataset's fitted statistics, codes them from zero maps with the job's inference and exactly its
   ``max_iter`` iterations, and returns only the part's statistics (ZtZ, ZtY, Σy²: K²(2s−1)² + KCs² numbers),
   its data term and its coding statistics (:class:`solver.models.online.BatchStep`);
3. the driver sums the parts **in part order** (not in order of arrival), folds the sum into the running
   statistics with the forgetting factor and takes the filter step (:meth:`solver.OnlineLearner.fold`).

So the same seed and the same batches give the same filters on 1 or n actors, up to the round-off of summing a
batch's statistics in parts; with one actor the run is :func:`solver.learn_online` on the same batches. No image
passes through the driver: its memory is the statistics and the filters, whatever the collection's size.

Why actors pulling locations rather than a Ray Data stream (``Dataset.streaming_split``): a step needs every part
of batch ``t`` coded with the filters of step ``t`` before batch ``t + 1`` can start, and the parts must be summed
in a fixed order; ``streaming_split`` hands blocks to whichever consumer asks next, so which actor codes which
images, and when, is not fixed, and its read-ahead runs past the barrier of every step. Reading by location in the
actor keeps the plan deterministic, bounds what an actor holds to two parts, and needs no extra process per read.

The dataset-wide rescale of the preprocessing is fitted before the first step in two passes over the training
images (ranges, then sums), in chunks of a batch spread over the actors and combined in chunk order.

Checkpoints (``checkpoint_every`` steps, and when stopped) go to a store folder ``ckpt-<step>``
(:mod:`workers.distributed.checkpoint`, manifest last): the filters, the power vector of the step size, the
running statistics (``ztz.npy``, ``zty.npy``, their sha256 in the manifest), the history, and the stream position
(step, epoch, batch in the epoch, the plan and its seed: the permutation of an epoch is drawn from the seed and
the epoch, so they are the stream's whole random state) with the fitted rescale. A run resumed from it reads the
batches an uninterrupted run would and gives the same filters. A coding actor that dies costs the step it was in:
the actors are replaced and the step is coded again (the filters change only when a step is folded).
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from solver import LearnResult
from solver.algorithms.base import IterStats
from solver.config import LearnConfig, OnlineConfig
from solver.images.preprocess import FittedPreprocess, PreprocessStats, combine_rescale_means, combine_rescale_ranges
from solver.models.online import BatchStep, OnlineLearner

from ..jobs.objects import ObjectStore, npy_bytes
from .checkpoint import CheckpointError, as_store, begin_checkpoint, latest_checkpoint, write_checkpoint
from .deadlines import Deadlines
from .images import ImageInfo, ImageSource, inspect_images
from .online_coder import OnlineCoder, remote_coder
from .outputs import LayerOutputs, ShardOutput
from .placement import Placement, gpu_share
from .pool import gather
from .stream import StreamPlan, split
from .threads import share_nodes

logger = logging.getLogger(__name__)

_KEEP_CHECKPOINTS = 2


# -- the driver ------------------------------------------------------------------------------------------------------


@dataclass
class OnlineOutcome:
    """What :meth:`OnlineRun.run` ends with.

    Attributes
    ----------
    result : LearnResult
        Filters, the history of the batch objectives, ``held_out_history``; ``maps`` None (never gathered).
    finished : bool
        False when the run was stopped before its last step (a checkpoint was written to resume from).
    images_seen : int
    preprocess : FittedPreprocess or None
        The fitted preprocessing, to store with the model.
    step_seconds : list of float
        Wall time of every step of this run (coding, reduce and filter step).
    """

    result: LearnResult
    finished: bool
    images_seen: int
    preprocess: FittedPreprocess | None
    step_seconds: list[float] = field(default_factory=list)


class OnlineRun:
    """Online learning of one layer over the images at `sources`, on a pool of coding actors.

    Parameters
    ----------
    sources : sequence of path, URL or Location
        The training images, in the order the plan's indices refer to.
    config : LearnConfig
        One layer; its ``preprocess``, inference (coding of each batch), filter update (steps per batch), seed.
    online : OnlineConfig
        Forgetting and held-out settings (its ``batch_size`` must be the plan's).
    plan : StreamPlan
    workers : int
        Coding actors (at most the batch size).
    backend : {"auto", "numpy", "cupy"}
    placement : Placement, optional
        Reserved resources (one bundle per actor); default `actor_cpus` CPUs each, a GPU share with cupy.
    actor_cpus : float
    held_out : sequence of sources
        Images never learned from; their objective is recorded every ``online.held_out_every`` steps.
    info : ImageInfo, optional
        What the images share; read from their headers when not given.
    checkpoint_dir : str, path or ObjectStore, optional
    checkpoint_every : int
        Steps between checkpoints.
    max_failures : int
        Actor failures survived (each costs the step it happened in).
    """

    def __init__(
        self,
        sources: Sequence[ImageSource],
        config: LearnConfig,
        online: OnlineConfig,
        plan: StreamPlan,
        *,
        workers: int = 1,
        backend: str = "auto",
        placement: Placement | None = None,
        actor_cpus: float = 0.0,
        held_out: Sequence[ImageSource] = (),
        info: ImageInfo | None = None,
        checkpoint_dir: str | ObjectStore | None = None,
        checkpoint_every: int = 20,
        max_failures: int = 3,
    ):
        if plan.n_train != len(sources):
            raise ValueError(f"the plan reads {plan.n_train} training images, {len(sources)} were given")
        if online.batch_size != plan.batch_size:
            raise ValueError(f"online.batch_size {online.batch_size} differs from the plan's {plan.batch_size}")
        if checkpoint_every < 1:
            raise ValueError(f"checkpoint_every must be at least 1, got {checkpoint_every}")
        self.sources = list(sources)
        self.config, self.online, self.plan = config, online, plan
        self.n_workers = max(1, min(int(workers), plan.batch_size))
        self.backend, self.placement, self.actor_cpus = backend, placement, actor_cpus
        self.held_out = list(held_out)
        self.info = info
        self.checkpoints = None if checkpoint_dir is None else as_store(checkpoint_dir)
        self.checkpoint_every = checkpoint_every
        self.max_failures = max_failures
        self._actors: list[Any] = []
        self._fitted: FittedPreprocess | None = None
        self._backend_used = "numpy"
        self._interrupt: Callable[[], bool] | None = None

    # -- actors ------------------------------------------------------------------------------------------------

    def _placement(self) -> Placement:
        if self.placement is not None:
            return self.placement
        import ray  # noqa: PLC0415

        gpus = float(ray.cluster_resources().get("GPU", 0.0))
        use_gpu = self.backend == "cupy" or (self.backend == "auto" and gpus > 0)
        if use_gpu and gpus <= 0:
            raise ValueError("backend 'cupy' needs GPUs in the cluster, got none")
        share = gpu_share(gpus, self.n_workers) if use_gpu else 0.0
        self.placement = Placement(self.n_workers, self.actor_cpus, share, backend="cupy" if use_gpu else "numpy")
        return self.placement

    def _start_actors(self, n_channels: int) -> None:
        placement = self._placement()
        self._backend_used = placement.backend
        self._release()
        for index in range(self.n_workers):
            options = placement.actor_options(index)
            options.setdefault("scheduling_strategy", "SPREAD")
            self._actors.append(remote_coder(**options))
        self._n_channels = n_channels
        logger.info(
            "starting %d coding actor(s) (num_cpus=%g, num_gpus=%g, backend=%s)",
            self.n_workers,
            placement.cpus,
            placement.gpus,
            placement.backend,
        )
        # an actor whose process, runtime environment or resources never come fails the run here, in minutes
        gather(
            [a.ping.remote() for a in self._actors],
            self._actors,
            what="ping",
            deadline=Deadlines().startup,
            interrupt=self._interrupt,
            label=f"the start-up of {placement.describe()}",
        )
        share_nodes(self._actors)
        self._setup_actors()
        import ray  # noqa: PLC0415

        for index, device in enumerate(ray.get([actor.device.remote() for actor in self._actors])):
            logger.info("coding actor %d computes with %s", index, device)

    def _setup_actors(self) -> None:
        import ray  # noqa: PLC0415

        refs = [
            actor.setup.remote(
                self.config,
                self.online,
                self.info,
                self._n_channels,
                self._backend_used,
                self._fitted,
                self.held_out if index == 0 else (),
            )
            for index, actor in enumerate(self._actors)
        ]
        ray.get(refs)

    def _release(self) -> None:
        import ray  # noqa: PLC0415

        for actor in self._actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone  # noqa: BLE001
                logger.debug("coding actor already gone", exc_info=True)
        self._actors = []

    def actor_nodes(self) -> list[str | None]:
        """The Ray node of every coding actor (for tests of placement)."""
        import ray  # noqa: PLC0415

        return ray.get([a.node_id.remote() for a in self._actors])

    # -- preprocessing ------------------------------------------------------------------------------------------

    def _fit_rescale(self) -> PreprocessStats:
        """The dataset-wide rescale over the training images, in chunks of a batch, combined in chunk order."""
        import ray  # noqa: PLC0415

        B = self.plan.batch_size
        chunks = [self.sources[i : i + B] for i in range(0, len(self.sources), B)]
        n = len(self._actors)

        def over_chunks(call: Callable[[Any, list], Any]) -> list:
            out = []
            for start in range(0, len(chunks), n):  # one chunk per actor at a time: bounded memory
                refs = [call(self._actors[j], chunks[start + j]) for j in range(min(n, len(chunks) - start))]
                out += ray.get(refs)
            return out

        shifted = combine_rescale_ranges(over_chunks(lambda a, c: a.rescale_range.remote(c)))
        return combine_rescale_means(shifted, over_chunks(lambda a, c: a.rescale_sum.remote(c, shifted)))

    def _n_channels_of(self, info: ImageInfo) -> int:
        pre = self.config.preprocess
        return 1 if pre is not None and pre.grey and info.n_channels == 3 else info.n_channels

    # -- the run ------------------------------------------------------------------------------------------------

    def run(
        self,
        callback: Callable[[IterStats, int], None] | None = None,
        should_stop: Callable[[], bool] = lambda: False,
        resume: bool = False,
        held_out_callback: Callable[[int, float], None] | None = None,
        keep_actors: bool = False,
        interrupt: Callable[[], bool] | None = None,
    ) -> OnlineOutcome:
        """Learn until the plan's last step or until `should_stop` turns true (checked before every step).

        Parameters
        ----------
        callback : callable, optional
            ``callback(stats, images_seen)`` after every step.
        should_stop : callable
        resume : bool
            Start from the newest valid checkpoint, when there is one.
        held_out_callback : callable, optional
            ``held_out_callback(step, objective)`` whenever the held-out objective is computed.
        keep_actors : bool
            Keep the coding actors for :meth:`write_sample` (then :meth:`close`); they are released otherwise.
        interrupt : callable, optional
            Asked a few times a second while the actors code: True stops their calls at once and the run ends
            with :class:`~workers.distributed.pool.Interrupted` (the step in flight is lost; a resumed run starts
            from the last checkpoint).
        """
        self._interrupt = interrupt
        if self.info is None:
            self.info = inspect_images(self.sources)
        n_channels = self._n_channels_of(self.info)
        dtype = np.dtype(self.config.dtype) if self.config.dtype else np.float32
        learner = OnlineLearner(self.config, self.online, n_channels, backend="numpy", dtype=dtype)
        held_history: list[float] = []
        step = 0
        checkpoint = self._latest() if resume and self.checkpoints is not None else None
        pre = self.config.preprocess
        if checkpoint is not None:
            step, held_history = self._restore(checkpoint, learner)
        try:
            self._start_actors(n_channels)
            if checkpoint is None and pre is not None:
                stats = self._fit_rescale() if pre.rescale else PreprocessStats.identity()
                self._fitted = FittedPreprocess(pre, stats)
                self._setup_actors()
            outcome = self._loop(learner, step, held_history, callback, should_stop, held_out_callback)
        except BaseException:
            self._release()
            raise
        if not keep_actors:
            self._release()
        return outcome

    def close(self) -> None:
        """Release the coding actors (after a run with ``keep_actors``)."""
        self._release()

    def _loop(
        self,
        learner: OnlineLearner,
        step: int,
        held_history: list[float],
        callback: Callable[[IterStats, int], None] | None,
        should_stop: Callable[[], bool],
        held_out_callback: Callable[[int, float], None] | None,
    ) -> OnlineOutcome:
        import ray  # noqa: PLC0415

        filters_ref = ray.put(learner.filters)
        seconds: list[float] = []
        failures = 0
        while step < self.plan.n_steps:
            if should_stop():
                self._checkpoint(learner, step, held_history)
                return self._outcome(learner, step, held_history, False, seconds)
            t0 = time.perf_counter()
            try:
                parts = self._code_step(step, filters_ref)
            except ray.exceptions.RayActorError as exc:
                failures += 1
                if failures > self.max_failures:
                    raise
                logger.warning("a coding actor died at step %d (%s): replacing the actors", step + 1, exc)
                self._start_actors(self._n_channels)
                continue
            record = learner.fold(parts)
            filters_ref = ray.put(learner.filters)  # once per step: every actor reads the same object
            step += 1
            seconds.append(time.perf_counter() - t0)
            if self.held_out and (step % self.online.held_out_every == 0 or step == self.plan.n_steps):
                held_history.append(ray.get(self._actors[0].held_out.remote(filters_ref)))
                if held_out_callback is not None:
                    held_out_callback(step, held_history[-1])
            if callback is not None:
                callback(record, self.plan.images_before(step))
            if step % self.checkpoint_every == 0 or step == self.plan.n_steps:
                self._checkpoint(learner, step, held_history)
        return self._outcome(learner, step, held_history, True, seconds)

    def _code_step(self, step: int, filters_ref: Any) -> list[BatchStep]:

        parts = split(self.plan.batch(step), self.n_workers)
        following = split(self.plan.batch(step + 1), self.n_workers) if step + 1 < self.plan.n_steps else []
        refs = []
        for j, part in enumerate(parts):
            ahead = [self.sources[i] for i in following[j]] if j < len(following) else []
            refs.append(self._actors[j].code.remote([self.sources[i] for i in part], filters_ref, ahead))
        # in part order, whatever order they finished in
        return gather(refs, self._actors[: len(refs)], what="code", deadline=None, interrupt=self._interrupt)

    def _outcome(
        self, learner: OnlineLearner, step: int, held: list[float], finished: bool, seconds: list[float]
    ) -> OnlineOutcome:
        result = learner.result(held) if learner.n_batches else None
        if result is not None:
            result = LearnResult(
                result.filters,
                None,
                result.history,
                result.stats,
                result.config,
                result.connectivity,
                self._fitted,
                None,
                held_out_history=result.held_out_history,
                online=result.online,
            )
        return OnlineOutcome(result, finished, self.plan.images_before(step), self._fitted, seconds)

    def write_sample(self, sources: Sequence[ImageSource], filters: np.ndarray, outputs: LayerOutputs) -> ShardOutput:
        """Code a bounded sample of images with the final filters in the first coding actor (kept from the run,
        or a fresh one) and write their maps and reconstructions (see
        :meth:`~workers.distributed.online_coder.OnlineCoder.write_sample`)."""
        import ray  # noqa: PLC0415

        if not self._actors:  # the run's actors are gone: one fresh actor
            if self.info is None:
                self.info = inspect_images(self.sources)
            saved, self.n_workers = self.n_workers, 1
            try:
                self._start_actors(self._n_channels_of(self.info))
            finally:
                self.n_workers = saved
        return ray.get(self._actors[0].write_sample.remote(list(sources), filters, outputs))

    # -- checkpoints --------------------------------------------------------------------------------------------

    def _identity(self) -> dict[str, Any]:
        return {"plan": self.plan.to_dict(), "config": self.config.model_dump(mode="json")}

    def _checkpoint(self, learner: OnlineLearner, step: int, held: list[float]) -> None:
        if self.checkpoints is None or step == 0:
            return
        state = learner.state()
        folder = begin_checkpoint(self.checkpoints, step)
        epoch, batch = self.plan.position(step)
        meta = {
            "online": True,
            **self._identity(),
            "step": step,
            "epoch": epoch,
            "batch": batch,
            "images_seen": self.plan.images_before(step),
            "ztz": folder.write("ztz.npy", npy_bytes(state["ztz"])),
            "zty": folder.write("zty.npy", npy_bytes(state["zty"])),
            "yty": state["yty"],
            "stat_images": state["stat_images"],
            "n_batches": state["n_batches"],
            "n_images": state["n_images"],
            "held_out_history": held,
            "rescale": None if self._fitted is None else self._fitted.stats.to_dict(),
        }
        power = state["power"] if state["power"] is not None else np.zeros_like(state["filters"], dtype=np.float64)
        write_checkpoint(
            self.checkpoints, step, state["filters"], power, [], state["stats"], meta, keep=_KEEP_CHECKPOINTS
        )

    def _latest(self):
        checkpoint = latest_checkpoint(self.checkpoints)
        if checkpoint is None:
            return None
        if not checkpoint.meta.get("online") or any(checkpoint.meta.get(k) != v for k, v in self._identity().items()):
            logger.warning("checkpoint %s is of another run: starting afresh", checkpoint.path)
            return None
        return checkpoint

    def _restore(self, checkpoint, learner: OnlineLearner) -> tuple[int, list[float]]:
        meta = checkpoint.meta
        folder = as_store(checkpoint.path)
        arrays = {}
        for name in ("ztz", "zty"):
            data = folder.read(f"{name}.npy")
            if hashlib.sha256(data).hexdigest() != meta[name]:
                raise CheckpointError(f"checkpoint {checkpoint.path}: {name}.npy does not match its manifest")
            arrays[name] = np.load(io.BytesIO(data), allow_pickle=False)
        n_batches = int(meta["n_batches"])
        learner.load_state(
            {
                "filters": checkpoint.filters,
                "ztz": arrays["ztz"],
                "zty": arrays["zty"],
                "yty": meta["yty"],
                "stat_images": meta["stat_images"],
                "power": checkpoint.power_vector if n_batches else None,
                "n_batches": n_batches,
                "n_images": meta["n_images"],
                "history": [s.objective for s in checkpoint.history],
                "stats": checkpoint.history,
            }
        )
        pre = self.config.preprocess
        if pre is not None:
            stats = PreprocessStats.from_dict(meta["rescale"]) if meta["rescale"] else PreprocessStats.identity()
            self._fitted = FittedPreprocess(pre, stats)
        logger.info(
            "resuming online learning at step %d (epoch %d, batch %d)", meta["step"], meta["epoch"], meta["batch"]
        )
        return int(meta["step"]), list(meta["held_out_history"])


__all__ = ["OnlineCoder", "OnlineOutcome", "OnlineRun"]
