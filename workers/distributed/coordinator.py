"""The distributed learning run: shard actors on Ray, the alternating loop of :func:`solver.models.learn.alternate`,
checkpoints, fault tolerance and cooperative cancel.

Per outer iteration the coordinator puts the filters in the object store once per pool call, every shard actor
works on its own images with them, and only small statistics come back (a coding summary, a data term and a
K·C·s·s gradient, or a K·C·s·s normal-operator product); :func:`~solver.models.learn.alternate` sums them in
shard order. The initial filters, the shard split and the reductions are those of
:func:`solver.models.learn.learn_layer`, so the same
seed and config give the same filters and objective history on 1 or n shards, within round-off.

Fault tolerance: an actor that dies (its process or its node), or does not start or answer a call within that
call's deadline (:mod:`workers.distributed.deadlines`: sized to the call's work, with a floor), is a failure. Up to
``max_failures`` of them, the coordinator replaces the dead actors (a new actor loads the same images), rolls
**every** shard back to the last complete checkpoint (or to a fresh start when there is none) and runs the loop
again from there; the loop is deterministic, so the run ends as an uninterrupted one would. One
failure more and the run fails with :class:`JobFailedError`.

The data plane is the store: the actors read their images by location (a store URL and a key, see
:mod:`workers.jobs.objects`), write their own part of every checkpoint, and, given :class:`LayerOutputs`, their own
part of the layer's results; the coordinator holds the filters, statistics and keys only, and writes each
checkpoint's small manifest last.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import ray
from ray import exceptions as ray_errors

from solver.config import LearnConfig
from solver.images.preprocess import FittedPreprocess, PreprocessStats
from solver.models.lam import absolute_config
from solver.models.learn import IterStats, LearnResult, alternate, initial_filters
from solver.operators.connectivity import connectivity_table
from solver.operators.convolution import map_shape
from solver.operators.pixel_path import LowerLayer, input_geometry

from ..jobs.objects import ObjectStore, Part
from .actors import ShardInput
from .checkpoint import Checkpoint, as_store
from .cluster import ClusterConfig, connect
from .deadlines import CallDeadlines, Deadlines, shard_work
from .fleet import _PROBE_TIMEOUT_S, ShardFleet
from .images import ImageInfo, ImageSource
from .outputs import LayerOutputs, ShardOutput
from .placement import Placement
from .pool import CallTimeoutError, Interrupted, RayPool, Traffic
from .rollback import JobFailedError, Rollback
from .run_inputs import _check_options, _computation_dtype, _count, _describe_images, _rows_of
from .shards import shard_ranges

__all__ = ["ACTOR_FAILURES", "CallTimeoutError", "Coordinator", "Interrupted", "JobFailedError", "run_distributed"]

logger = logging.getLogger(__name__)

#: What counts as a shard failure: a dead actor, process or node, a lost object, or a call past its deadline
#: (:class:`~workers.distributed.pool.CallTimeoutError`, a GetTimeoutError).
ACTOR_FAILURES: tuple[type[BaseException], ...] = (
    ray_errors.RayActorError,
    ray_errors.WorkerCrashedError,
    ray_errors.NodeDiedError,
    ray_errors.ObjectLostError,
    ray_errors.GetTimeoutError,
)


class Coordinator(ShardFleet, Rollback):
    """A distributed learning run of one layer over image files.

    Parameters
    ----------
    image_paths : sequence of path, URL or Location; or sequence of Part
        The training images, in order: one per file (PNG, JPEG or NPY; see :mod:`workers.distributed.images`),
        or stacked in ``.npy`` parts (a lower layer's outputs, :class:`~workers.jobs.objects.Part`). Each actor
        reads its own through the store, so a URL (``s3://...``) is what a cluster of several nodes needs.
    config : LearnConfig
    workers : int
        Shards, one actor each (at most one per image).
    checkpoint_dir : path, URL or ObjectStore, optional
        Where checkpoints go (each actor writes its own part there); without it a failure restarts the run from
        scratch.
    checkpoint_every : int
        Checkpoint after every this many outer iterations (0: never).
    max_failures : int
        Shard failures the run survives; one more fails it.
    call_timeout : float, optional
        Seconds every call (and the actors' start-up) may take before the actors that have not answered count as
        failed; None (default): each call's own deadline, sized to its work by `deadlines`.
    cluster : ClusterConfig, optional
        Used to connect when this process is not connected to Ray yet.
    backend : {"auto", "numpy", "cupy"}
        ``auto``: cupy with one GPU per actor (or a fair fraction) when the cluster has GPUs, else numpy.
    actor_cpus : float
        CPUs each actor reserves. 0 (default) places any number of shards on a node, which suits numpy
        shards that are busy one at a time; set 1 to give each shard a core of its own.
    lower : sequence of LowerLayer
        With ``config.reconstruct_to`` 'pixels' (the 2011 model): the frozen layers below this one, bottom
        first. The images are then the pixels (preprocessed by ``config.preprocess``), which this layer
        reconstructs through them.
    switch_paths : sequence of (sequence of path, or sequence of Part, or None)
        With `lower`: per lower layer, one ``.npy`` file of switches per image (in image order) or parts covering
        every image, or None for a layer that does not pool. Each actor reads those of its own images.
    info : ImageInfo, optional
        What every image shares, when known (a dataset's record): the files' headers are then not read.
    outputs : LayerOutputs, or callable from LearnResult to LayerOutputs, optional
        When given, each actor writes its part of the layer's results to the store at the end of a complete run
        (:attr:`written` lists their keys) and the result holds no maps (None): nothing the size of the dataset
        comes to this process. A callable is given the result (filters, fitted preprocessing) first, for outputs
        that depend on it (the reconstructions of a job's top layer).
    gather_maps : bool
        Without `outputs`: bring every shard's maps to this process for the result (default), or not (the result
        holds None), when only the filters matter.
    placement : Placement, optional
        The resources and the reserved placement group of the job's shard actors (one bundle per shard, see
        :mod:`workers.distributed.placement`): shard i's actor, and any that replaces it, runs in bundle i, with
        the placement's backend. `backend` and `actor_cpus` are then not used. Without it each actor asks
        `actor_cpus` and its GPU share on its own, spread over the nodes.
    deadlines : Deadlines, optional
        How long the actors' start-up and each call may take (:mod:`workers.distributed.deadlines`; default:
        ``Deadlines()``, a 60 s floor).
    """

    def __init__(
        self,
        image_paths: Sequence[ImageSource] | Sequence[Part],
        config: LearnConfig,
        *,
        workers: int = 1,
        checkpoint_dir: str | Path | ObjectStore | None = None,
        checkpoint_every: int = 0,
        max_failures: int = 3,
        call_timeout: float | None = None,
        cluster: ClusterConfig | None = None,
        backend: Literal["auto", "numpy", "cupy"] = "auto",
        actor_cpus: float = 0.0,
        lower: Sequence[LowerLayer] = (),
        switch_paths: Sequence[Sequence[ImageSource] | Sequence[Part] | None] = (),
        info: ImageInfo | None = None,
        outputs: LayerOutputs | Callable[[LearnResult], LayerOutputs] | None = None,
        gather_maps: bool = True,
        placement: Placement | None = None,
        deadlines: Deadlines | None = None,
    ):
        _check_options(workers, checkpoint_dir, checkpoint_every, max_failures, call_timeout, backend, actor_cpus)
        if config.filter_update.recentre:
            raise ValueError(
                "filter_update.recentre is not available in distributed learning yet (it widens the "
                "filter support, which only solver.learn_layer does): learn in one process, or turn "
                "it off"
            )
        if len(config.layers) != 1:
            raise ValueError(
                f"a Coordinator learns one layer, got a config of {len(config.layers)} layers: run each "
                "layer with solver.layer_config (the job runner, deconv submit, does)"
            )
        if (lower or switch_paths) and config.reconstruct_to != "pixels":
            raise ValueError("lower layers are given only with reconstruct_to 'pixels' (the 2011 model)")
        if len(switch_paths) != len(lower):
            raise ValueError(f"switch_paths needs one entry per lower layer ({len(lower)}), got {len(switch_paths)}")
        self.config = config
        self.n_images, self.paths, self.info, by_rows = _describe_images(image_paths, info)
        n_shards = min(workers, self.n_images)
        if n_shards < workers:
            logger.warning("%d workers asked for %d images: using %d shards", workers, self.n_images, n_shards)
        self.ranges = shard_ranges(self.n_images, n_shards)
        self.shard_paths: list[ShardInput] = [by_rows(r) for r in self.ranges]
        self.lower = list(lower)
        for number, (layer, files) in enumerate(zip(self.lower, switch_paths, strict=True), start=1):
            if (files is None) != (layer.pool is None):
                raise ValueError(f"switch_paths of lower layer {number} must be given exactly when it pools")
            if files is not None and _count(files) != self.n_images:
                raise ValueError(
                    f"switch_paths of lower layer {number} has {_count(files)} files for {self.n_images} images"
                )
        self.shard_switches = [[_rows_of(files, r) for files in switch_paths] for r in self.ranges]
        self.checkpoint_dir = None if checkpoint_dir is None else as_store(checkpoint_dir)
        self.outputs = outputs
        self.gather_maps = gather_maps and outputs is None
        self.written: list[ShardOutput] | None = None
        self.checkpoint_every = checkpoint_every
        self.max_failures = max_failures
        self.call_timeout = call_timeout
        self.cluster = cluster
        self.backend = backend
        self.actor_cpus = actor_cpus
        if placement is not None and placement.n_shards != self.n_shards:
            raise ValueError(
                f"placement reserves {placement.n_shards} shard actor(s), this run has {self.n_shards} shards"
            )
        layer = config.layers[0]
        grey = config.preprocess is not None and config.preprocess.grey
        n_channels = 1 if grey else self.info.n_channels
        _, height, width = self.info.shape
        n_channels, (height, width) = input_geometry(self.lower, n_channels, (height, width), config.boundary)
        self.input_shape = (height, width)
        if layer.filter_size > min(height, width):
            raise ValueError(f"filter_size {layer.filter_size} is larger than the layer's input ({height}x{width})")
        self.connectivity = connectivity_table(layer.connectivity, layer.n_filters, n_channels, seed=config.seed)
        self.dtype = _computation_dtype(self.info.dtype, config)
        self.initial_filters = initial_filters(
            layer.n_filters,
            n_channels,
            layer.filter_size,
            seed=config.seed,
            norm=config.filter_update.norm,
            connectivity=self.connectivity,
            dtype=self.dtype,
        )
        self.traffic = Traffic()
        self.failures = 0
        self._actors: list[Any] = []
        self._pool: RayPool | None = None
        self._placement: Placement | None = placement
        self._rescale: PreprocessStats | None = None
        self._history: list[IterStats] = []
        self._pending: tuple[int, np.ndarray, np.ndarray] | None = None
        self._last_checkpoint = -1
        self.lam_max: float | None = None  # λ_max of a relative λ, once the shards computed it
        shards = [
            shard_work(
                config,
                len(r),
                n_channels,
                (height, width),
                n_lower=len(self.lower),
                itemsize=np.dtype(self.dtype).itemsize,
            )
            for r in self.ranges
        ]
        self._deadlines = CallDeadlines(deadlines or Deadlines(), shards, fixed=call_timeout)
        self._interrupt: Callable[[], bool] | None = None

    @property
    def n_shards(self) -> int:
        return len(self.ranges)

    def run(
        self,
        *,
        callback: Callable[[IterStats], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
        resume: bool = False,
        interrupt: Callable[[], bool] | None = None,
    ) -> LearnResult:
        """Learn the filters; the actors are released at the end, whatever happens.

        Parameters
        ----------
        callback : callable, optional
            Called with an :class:`~solver.models.learn.IterStats` after every outer iteration (``elapsed`` counts from
            the start of the run, plus the elapsed time of a resumed checkpoint). After a failure the iterations
            since the checkpoint are run, and reported, again.
        should_stop : callable, optional
            Polled before every outer iteration; True stops the run (a checkpoint of the last iteration is
            written first when checkpointing), and the result holds the iterations done.
        resume : bool
            Start from the newest valid checkpoint in ``checkpoint_dir`` (a fresh start when there is none);
            otherwise old checkpoints there are removed first.
        interrupt : callable, optional
            Asked a few times a second while the shard actors work: True stops their calls at once (their inner
            loops see it within a fraction of a second) and the run ends with :class:`Interrupted`; the outer
            iteration in flight is lost, and a resumed run starts from the last checkpoint.

        Returns
        -------
        LearnResult
            Its history covers every outer iteration from the first, resumed ones included.

        Raises
        ------
        JobFailedError
            After more than ``max_failures`` shard failures.
        Interrupted
            When `interrupt` turned true.
        ValueError
            When `resume` finds a checkpoint of another config (``n_iter`` aside), image list or shard count.
        """
        connect(self.cluster)
        self._interrupt = interrupt
        start = self._initial_checkpoint(resume)
        base = start.history[-1].elapsed if start is not None and start.history else 0.0
        t0 = time.perf_counter()

        def record(stats: IterStats) -> None:
            stats = replace(stats, elapsed=base + time.perf_counter() - t0)
            self._history.append(stats)
            if self._due(stats.iteration):
                self._checkpoint(stats.iteration)
            if callback is not None:
                callback(stats)

        try:
            while True:
                try:
                    return self._attempt(start, record, should_stop)
                except ACTOR_FAILURES as exc:
                    self._count_failure(exc)
                    start = self._rollback_point()
        finally:
            self._release()

    def shard_pids(self) -> list[int]:
        """Process ids of the live shard actors, in shard order (supervision and tests)."""
        return ray.get([a.pid.remote() for a in self._actors], timeout=_PROBE_TIMEOUT_S)

    def shard_nodes(self) -> list[str]:
        """Ray node ids of the live shard actors, in shard order."""
        return ray.get([a.node_id.remote() for a in self._actors], timeout=_PROBE_TIMEOUT_S)

    # -- one attempt: bring the shards up, restore, loop --------------------------------------------------------

    def _attempt(
        self, start: Checkpoint | None, record: Callable[[IterStats], None], should_stop: Callable[[], bool] | None
    ) -> LearnResult:
        self._bring_up()
        pool = RayPool(self._actors, deadlines=self._deadlines, traffic=self.traffic, interrupt=self._interrupt)
        self._pool = pool
        resolved = self._resolve_lam(pool)
        if start is None:
            pool.reset()
            filters, first, vector, self._history = self.initial_filters, 0, None, []
        else:
            pool.restore(start.shard_parts)
            filters, first, vector = start.filters.astype(self.dtype), start.iteration, start.power_vector
            self._history = list(start.history)
        self._last_checkpoint = first if start is not None else -1
        self._pending = None
        filters, _, _ = alternate(
            pool,
            self.config,
            filters,
            callback=record,
            start_iteration=first,
            start_objective=self._history[-1].objective if self._history else None,
            power_vector=vector,
            should_stop=should_stop,
            on_iteration=lambda it, f, v: setattr(self, "_pending", (it, f, v)),
        )
        done = self._history[-1].iteration if self._history else first
        if done < self.config.n_iter:
            logger.info("stopped after outer iteration %d of %d", done, self.config.n_iter)
            ran = self._pending is not None and self._pending[0] == done
            if ran and self.checkpoint_dir is not None and self.checkpoint_every > 0 and self._last_checkpoint < done:
                self._checkpoint(done)
        if not self.gather_maps:
            maps = None
        else:
            maps = np.concatenate(pool.maps()) if done > 0 else self._zero_maps()
        history = [h.objective for h in self._history]
        result = LearnResult(
            filters,
            maps,
            history,
            list(self._history),
            resolved,
            self.connectivity,
            self._fitted_preprocess(),
            self.lam_max,
        )
        if self.outputs is not None and done == self.config.n_iter:
            outputs = self.outputs(result) if callable(self.outputs) else self.outputs
            self.written = pool.write_outputs(outputs, [r.start for r in self.ranges])
        return result

    def _resolve_lam(self, pool: RayPool) -> LearnConfig:
        """The config with an absolute λ: a relative one (``lam_scale="relative"``) times λ_max, the largest of
        the shards' λ_max for the initial filters (the same on every attempt, resumed or not), set on every
        shard of `pool`."""
        if self.config.layers[0].lam_scale != "relative":
            return self.config
        self.lam_max = max(pool.lambda_max(self.initial_filters))
        resolved = absolute_config(self.config, self.lam_max)
        pool.set_lam(resolved.layers[0].lam)
        logger.info("lam_scale relative: λ_max %.6g, λ %.6g", self.lam_max, resolved.layers[0].lam)
        return resolved

    def _zero_maps(self) -> np.ndarray:
        """The maps before any coding step (a run stopped before its first outer iteration)."""
        layer = self.config.layers[0]
        grid = map_shape(self.input_shape, layer.filter_size, self.config.boundary)
        return np.zeros((self.n_images, layer.n_filters, *grid), dtype=self.dtype)

    def _fitted_preprocess(self) -> FittedPreprocess | None:
        pre = self.config.preprocess
        if pre is None:
            return None
        return FittedPreprocess(pre, self._rescale if pre.rescale else PreprocessStats.identity())


def run_distributed(
    image_paths: Sequence[ImageSource] | Sequence[Part],
    config: LearnConfig,
    *,
    workers: int = 1,
    checkpoint_dir: str | Path | ObjectStore | None = None,
    checkpoint_every: int = 0,
    max_failures: int = 3,
    callback: Callable[[IterStats], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    **options: Any,
) -> LearnResult:
    """Learn one layer on a Ray cluster: :class:`Coordinator` ``(...).run(...)`` in one call.

    The same seed and config give the filters and history of :func:`solver.models.learn.learn_layer` on the stacked
    images, within round-off. `options` go to :class:`Coordinator` (``call_timeout``, ``cluster``, ``backend``,
    ``actor_cpus``).
    """
    coordinator = Coordinator(
        image_paths,
        config,
        workers=workers,
        checkpoint_dir=checkpoint_dir,
        checkpoint_every=checkpoint_every,
        max_failures=max_failures,
        **options,
    )
    return coordinator.run(callback=callback, should_stop=should_stop, resume=resume)
