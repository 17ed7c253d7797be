"""Shard actors: one shard of a job's images, loaded by the actor itself, with its maps and inference state.

:class:`ShardWorker` is a plain class (tested without Ray); :func:`shard_actor_class` wraps it with
``ray.remote`` for the coordinator. A worker's life:

1. :meth:`~ShardWorker.load`: read its own images from the store (image files by location, or its rows of the
   previous layer's parts) and run the per-image preprocessing steps;
2. when the dataset-wide rescale is not fitted yet, :meth:`~ShardWorker.rescale_range` then
   :meth:`~ShardWorker.rescale_sum`, which the coordinator combines over the shards (in shard order);
3. :meth:`~ShardWorker.build`: apply the rescale and the computation dtype, and hold a
   :class:`solver.models.shard.Shard`;
4. then the pool methods of the learning loop (``code``, ``value_and_gradient``, ``normal``, ``consensus_step``);
   ``save_state`` / ``restore`` write and read the shard's own part of a checkpoint, ``write_outputs`` its part
   of the layer's results, ``maps``, ``state``, ``load_state``, ``reset`` serve runs in one process.

A worker runs one call at a time, and the actor has a second thread for :meth:`~ShardWorker.cancel` (and pings)
while a call runs: the inner loops of every long call check the cancel flag at each iteration
(:func:`solver.stopping.stop_on`) and end the call with :class:`solver.stopping.Stopped`. A cancelled worker
stays cancelled: its state is half-updated, and the coordinator replaces it.

The images never travel: only locations in a store come in (a store URL and a key, never a host path, so an
actor on another node reads the same bytes), and only small statistics (K·C·s·s numbers and scalars) and keys go
back per call, as host numpy arrays.
"""

from __future__ import annotations

import copy
import functools
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver.config import LearnConfig
from solver.images.preprocess import (
    PreprocessStats,
    apply_rescale,
    prepare_images,
    rescale_partial_mean,
    rescale_partial_range,
)
from solver.models.shard import CodeStats, PixelShard, Shard
from solver.operators.pixel_path import LowerLayer
from solver.stopping import stop_on
from solver.validation import as_images

from ..jobs.objects import ObjectStore, Part, as_location, read_array, rows_of_parts
from .checkpoint import ShardPart, read_shard_state, write_shard_state
from .images import ImageInfo, ImageSource, load_images
from .outputs import LayerOutputs, ShardOutput, write_shard_outputs
from .threads import take_node_share


@dataclass(frozen=True)
class PartRows:
    """Rows ``start:stop`` of the images that some parts cover (a shard's input from the layer below, or its
    switches): read by the shard from the store."""

    parts: tuple[Part, ...]
    start: int
    stop: int

    def read(self) -> np.ndarray:
        return rows_of_parts(self.parts, self.start, self.stop)


#: A shard's images, or its switches of one layer: one file per image, or rows of stored parts.
ShardInput = Sequence[ImageSource] | PartRows


def _read_input(source: ShardInput, info: ImageInfo | None = None) -> np.ndarray:
    if isinstance(source, PartRows):
        return source.read()
    if info is not None:
        return load_images(source, info)
    return np.stack([read_array(as_location(f)) for f in source])


def _stoppable(method: Callable[..., Any]) -> Callable[..., Any]:
    """A worker method whose loops end with :class:`solver.stopping.Stopped` once the worker is cancelled."""

    @functools.wraps(method)
    def run(self: ShardWorker, *args: Any, **kwargs: Any) -> Any:
        with stop_on(self._cancelled.is_set, every=0.0):  # an Event read costs nanoseconds: every iteration
            return method(self, *args, **kwargs)

    return run


class ShardWorker:
    """One shard of a learning job (the body of a Ray shard actor; usable in-process too)."""

    def __init__(self) -> None:
        self._config: LearnConfig | None = None
        self._prepared: np.ndarray | None = None
        self._shard: Shard | PixelShard | None = None
        self._cancelled = threading.Event()

    def cancel(self) -> None:
        """Stop the call that runs now (from another thread) and every later one: they raise Stopped."""
        self._cancelled.set()

    # -- setup --------------------------------------------------------------------------------------------------

    @_stoppable
    def load(self, paths: ShardInput, config: LearnConfig, info: ImageInfo) -> tuple[int, ...]:
        """Read the shard's images (image files, or rows of stored parts) and run the per-image preprocessing;
        returns their shape (n, C', H, W)."""
        if not isinstance(paths, PartRows) and not paths:
            raise ValueError("a shard needs at least one image file, got none")
        images = _read_input(paths, info)
        self._config = config
        self._prepared = prepare_images(images, config.preprocess) if config.preprocess is not None else images
        self._shard = None
        return tuple(int(n) for n in self._prepared.shape)

    def rescale_range(self) -> tuple[float, float]:
        """(min, max) of the prepared images: the first pass of the dataset-wide rescale fit."""
        return rescale_partial_range(self._loaded())

    def rescale_sum(self, shifted: PreprocessStats) -> tuple[float, int]:
        """(float64 sum, count) of the shifted, scaled images: the second pass of the rescale fit."""
        return rescale_partial_mean(self._loaded(), shifted)

    @_stoppable
    def build(
        self,
        stats: PreprocessStats | None,
        connectivity: np.ndarray | None,
        backend: str,
        lower: Sequence[LowerLayer] = (),
        switch_paths: Sequence[ShardInput | None] = (),
    ) -> str:
        """Finish the images (rescale with the dataset's `stats`, computation dtype) and hold a fresh shard.

        For a config with ``reconstruct_to`` 'pixels' the shard is a :class:`solver.models.shard.PixelShard` over the
        frozen layers `lower`, with the switches of this shard's images read from `switch_paths` (per lower layer,
        one ``.npy`` file per image in the shard's image order or the shard's rows of stored parts; None for a
        layer that does not pool).

        Returns
        -------
        str
            The computation dtype of the shard's images.
        """
        x = self._loaded()
        config = self._config
        rescale = config.preprocess is not None and config.preprocess.rescale
        if rescale and stats is None:
            raise ValueError("stats must be the dataset's fitted rescale statistics when preprocess.rescale is set")
        # checked in the dtype the shard computes in: float64 data within its bounds can overflow float32
        y = as_images(apply_rescale(x, stats) if rescale else x, dtype=config.dtype)
        if config.reconstruct_to == "pixels":
            switches = [None if files is None else _read_input(files) for files in switch_paths]
            self._shard = PixelShard(y, config, connectivity, lower, switches, backend)
        else:
            self._shard = Shard(y, config, connectivity, backend)
        self._prepared = None  # the shard holds the finished images
        return str(y.dtype)

    @_stoppable
    def setup(
        self,
        paths: ShardInput,
        config: LearnConfig,
        info: ImageInfo,
        stats: PreprocessStats | None,
        connectivity: np.ndarray | None,
        backend: str,
        lower: Sequence[LowerLayer] = (),
        switch_paths: Sequence[ShardInput | None] = (),
    ) -> str:
        """:meth:`load` then :meth:`build`, for a shard whose dataset statistics are already fitted."""
        self.load(paths, config, info)
        return self.build(stats, connectivity, backend, lower, switch_paths)

    def device(self) -> str:
        """Where the shard computes (:meth:`solver.backend.Backend.describe`), for the job's log."""
        return self._ready().bk.describe()

    def _loaded(self) -> np.ndarray:
        if self._prepared is None:
            raise ValueError("the worker has no prepared images: call load(paths, config, info) first")
        return self._prepared

    def _ready(self) -> Shard | PixelShard:
        if self._shard is None:
            raise ValueError("the worker has no shard: call build(stats, connectivity, backend) first")
        return self._shard

    # -- the pool protocol of solver.models.learn.alternate ------------------------------------------------------------

    @_stoppable
    def code(self, filters: np.ndarray) -> CodeStats:
        return self._ready().code(filters)

    @_stoppable
    def value_and_gradient(self, filters: np.ndarray) -> tuple[float, np.ndarray]:
        return self._ready().value_and_gradient(filters)

    @_stoppable
    def value(self, filters: np.ndarray) -> float:
        return self._ready().value(filters)

    @_stoppable
    def normal(self, v: np.ndarray) -> np.ndarray:
        return self._ready().normal(v)

    @_stoppable
    def consensus_step(self, filters: np.ndarray, rho: float, relax: float) -> tuple[np.ndarray, int]:
        return self._ready().consensus_step(filters, rho, relax)

    def maps(self) -> np.ndarray:
        return self._ready().maps()

    @_stoppable
    def lambda_max(self, filters: np.ndarray) -> float:
        return self._ready().lambda_max(filters)

    def set_lam(self, lam: float) -> None:
        self._ready().set_lam(lam)

    def peak(self) -> float:
        return self._ready().peak()

    # -- checkpoints and supervision ----------------------------------------------------------------------------

    def state(self) -> dict[str, Any]:
        return self._ready().state()

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore a checkpointed state. Copied first: arrays that come out of Ray's object store are read-only."""
        self._ready().load_state(copy.deepcopy(state))

    def save_state(self, folder: ObjectStore, index: int) -> ShardPart:
        """Write this shard's part (number `index`) of a checkpoint into `folder`; returns its sha256 and size."""
        return write_shard_state(folder, index, self._ready().state(copy=False))  # written at once: no copy

    def restore(self, part: ShardPart) -> None:
        """Restore this shard's part of a checkpoint, read from the store and verified against its sha256."""
        self._ready().load_state(read_shard_state(part))

    @_stoppable
    def write_outputs(self, outputs: LayerOutputs, index: int, first: int) -> ShardOutput:
        """Write this shard's part of the layer's results (see :mod:`workers.distributed.outputs`); returns
        their keys."""
        return write_shard_outputs(self._ready().maps(), outputs, index, first)

    def reset(self) -> None:
        """Forget the maps and inference state (back to a fresh shard on the same images)."""
        self._ready().load_state({})

    def n_images(self) -> int:
        return self._ready().n_images

    def pid(self) -> int:
        return os.getpid()

    def ping(self) -> bool:
        return True

    def take_node_share(self, actors_on_node: int) -> int:
        """Run on this node's CPUs shared among `actors_on_node` actors (:mod:`workers.distributed.threads`)."""
        return take_node_share(actors_on_node)

    def node_id(self) -> str | None:
        """The Ray node this worker runs on; None outside Ray."""
        import ray  # noqa: PLC0415

        return ray.get_runtime_context().get_node_id() if ray.is_initialized() else None


@functools.cache
def _remote_worker() -> Any:
    import ray  # noqa: PLC0415  (importing workers.distributed.actors must not need Ray, only creating actors)

    return ray.remote(ShardWorker)


def new_shard_actor(**options: Any) -> Any:
    """A :class:`ShardWorker` Ray actor with these Ray options (resources, scheduling strategy).

    The actors are never restarted by Ray (``max_restarts=0``): the coordinator replaces a dead one itself and
    rolls every shard back to the last checkpoint, because the shards' states must stay consistent with each
    other and with the filters. Two threads (``max_concurrency=2``): the coordinator sends one call at a time,
    and :meth:`ShardWorker.cancel` reaches the actor while it runs.
    """
    return _remote_worker().options(max_restarts=0, max_task_retries=0, max_concurrency=2, **options).remote()


def shard_actor_class(num_cpus: float, num_gpus: float) -> Any:
    """:class:`ShardWorker` as a Ray actor class with these resources, outside any placement group; ``SPREAD``
    places the shards of a job on as many nodes as it can."""
    return _remote_worker().options(
        num_cpus=num_cpus,
        num_gpus=num_gpus,
        max_restarts=0,
        max_task_retries=0,
        max_concurrency=2,
        scheduling_strategy="SPREAD",
    )
