"""The coding actor of online learning on Ray (:mod:`workers.distributed.online`): loads its part of each batch from
the store, codes it with the filters it is given, and returns only the part's statistics.

:class:`OnlineCoder` is a plain class (tested without Ray); :func:`remote_coder` starts it as a Ray actor, never
restarted by Ray (the driver replaces dead actors itself and codes the step again). What an actor holds: its part
of the current batch and, loaded by a thread of its own while it codes, its part of the next one; the maps of the
part while it codes it; the held-out images (the first actor).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from solver.backend import get_backend
from solver.config import LearnConfig, OnlineConfig
from solver.images.preprocess import (
    FittedPreprocess,
    PreprocessStats,
    prepare_images,
    rescale_partial_mean,
    rescale_partial_range,
)
from solver.models.online import BatchStep, OnlineLearner

from .actors import _stoppable
from .images import ImageInfo, ImageSource, load_images
from .outputs import LayerOutputs, ShardOutput, write_shard_outputs
from .threads import take_node_share


class OnlineCoder:
    """One coding actor of online learning (the body of a Ray actor; usable in-process too).

    :meth:`setup` once, then :meth:`code` per step; :meth:`rescale_range` / :meth:`rescale_sum` before the first
    step when the rescale is fitted; :meth:`held_out` for the objective of the held-out images;
    :meth:`write_sample` for the maps and reconstructions of a bounded sample at the end.
    """

    def __init__(self) -> None:
        self._learner: OnlineLearner | None = None
        self._info: ImageInfo | None = None
        self._config: LearnConfig | None = None
        self._fitted: FittedPreprocess | None = None
        self._held: np.ndarray | None = None
        self._held_sources: list[ImageSource] = []
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="prefetch")
        self._next: tuple[tuple[str, ...], Future] | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the call that runs now (from the actor's second thread) and every later one: they raise Stopped."""
        self._cancelled.set()

    def setup(
        self,
        config: LearnConfig,
        online: OnlineConfig,
        info: ImageInfo,
        n_channels: int,
        backend: str,
        fitted: FittedPreprocess | None,
        held_out: Sequence[ImageSource] = (),
    ) -> str:
        """Hold the learner (coding only: the filters come with each call) and the held-out images; returns the
        computation dtype."""
        self._config, self._info, self._fitted = config, info, fitted
        dtype = np.dtype(config.dtype) if config.dtype else np.float32
        self._learner = OnlineLearner(config, online, n_channels, backend=backend, dtype=dtype)
        self._held_sources = list(held_out)
        self._held = None  # loaded at the first held_out() call: the rescale may not be fitted yet
        self._next = None
        return str(self._learner.dtype)

    def device(self) -> str:
        """Where the batches are coded (:meth:`solver.backend.Backend.describe`), for the job's log."""
        if self._learner is None:
            raise ValueError("the coding actor is not set up: call setup(...) first")
        return get_backend(self._learner.backend).describe()

    def _raw(self, sources: Sequence[ImageSource]) -> np.ndarray:
        images = load_images(list(sources), self._info)
        pre = self._config.preprocess
        return prepare_images(images, pre) if pre is not None else images

    def load(self, sources: Sequence[ImageSource]) -> np.ndarray:
        """The images at `sources`, preprocessed with the fitted statistics, in the computation dtype."""
        x = self._raw(sources)
        pre = self._config.preprocess
        if pre is not None and pre.rescale:
            if self._fitted is None:
                raise ValueError("the rescale is not fitted: setup() needs the fitted preprocessing")
            x = (x - self._fitted.stats.shift) / self._fitted.stats.scale - self._fitted.stats.mean
        dtype = self._learner.dtype if self._learner is not None else np.float32
        return np.ascontiguousarray(x, dtype=dtype)

    def rescale_range(self, sources: Sequence[ImageSource]) -> tuple[float, float]:
        """(min, max) of the prepared images at `sources` (first pass of the rescale fit)."""
        return rescale_partial_range(self._raw(sources))

    def rescale_sum(self, sources: Sequence[ImageSource], shifted: PreprocessStats) -> tuple[float, int]:
        """(float64 sum, count) of the shifted, scaled images at `sources` (second pass)."""
        return rescale_partial_mean(self._raw(sources), shifted)

    def _take(self, sources: Sequence[ImageSource]) -> np.ndarray:
        keys = _keys(sources)
        pending, self._next = self._next, None
        if pending is not None and pending[0] == keys:
            return pending[1].result()
        return self.load(sources)

    @_stoppable
    def code(
        self, sources: Sequence[ImageSource], filters: np.ndarray, following: Sequence[ImageSource] = ()
    ) -> BatchStep:
        """Code the images at `sources` with `filters` and return their part of the batch's statistics; start
        loading `following` (this actor's part of the next batch) meanwhile."""
        if self._learner is None:
            raise ValueError("the coder is not set up: call setup() first")
        images = self._take(sources)
        if following:
            self._next = (_keys(following), self._pool.submit(self.load, list(following)))
        self._learner.filters = np.asarray(filters, dtype=self._learner.dtype)
        return self._learner.batch_statistics(images, keep_maps=False)

    @_stoppable
    def held_out(self, filters: np.ndarray) -> float:
        """E of the held-out images encoded with `filters` (the learner's held-out settings)."""
        if not self._held_sources:
            raise ValueError("this coder holds no held-out images")
        if self._held is None:
            self._held = self.load(self._held_sources)
        self._learner.filters = np.asarray(filters, dtype=self._learner.dtype)
        return self._learner.objective(self._held)

    @_stoppable
    def write_sample(self, sources: Sequence[ImageSource], filters: np.ndarray, outputs: LayerOutputs) -> ShardOutput:
        """Code the sample images at `sources` with the final `filters` and write their maps (and, when `outputs`
        asks, reconstructions) to the artifact store, as shard 0 of images 0.."""
        self._learner.filters = np.asarray(filters, dtype=self._learner.dtype)
        shard, _ = self._learner.code_batch(self.load(sources))
        return write_shard_outputs(shard.maps(), outputs, 0, 0)

    def ping(self) -> bool:
        return True

    def take_node_share(self, actors_on_node: int) -> int:
        """Run on this node's CPUs shared among `actors_on_node` actors (:mod:`workers.distributed.threads`)."""
        return take_node_share(actors_on_node)

    def node_id(self) -> str | None:
        import ray  # noqa: PLC0415

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None

    def peak_rss_mb(self) -> float:
        """This process's peak resident memory, MiB (Linux ``ru_maxrss``)."""
        import resource  # noqa: PLC0415

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _keys(sources: Sequence[ImageSource]) -> tuple[str, ...]:
    return tuple(str(s) for s in sources)


def remote_coder(**options: Any) -> Any:
    import ray  # noqa: PLC0415  (importing this module must not need Ray, only starting actors)

    # two threads: one call at a time from the driver, and cancel() while it runs
    return ray.remote(OnlineCoder).options(max_restarts=0, max_task_retries=0, max_concurrency=2, **options).remote()
