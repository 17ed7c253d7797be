"""How long a shard actor may take to start, and each of its calls to answer, sized to the work.

A stuck cluster (an actor whose resources never come, a runtime-env agent that died while the actor started, a
call that hangs) must fail the attempt in minutes, through the coordinator's usual retry, not after a timeout
sized for the largest job. So every call gets its own deadline, estimated from what it does:

* work: the operations of one inference iteration on the shard's images (the Fourier-domain products
  N·K·C·H'W' and the FFTs N·(K+C)·H'W'·log₂ H'W', as :mod:`api.costs` counts them) times the iterations of the
  call, at a conservative throughput (:attr:`Deadlines.throughput`, several times below what one busy core
  measured) plus a per-iteration overhead;
* bytes: what the call reads or writes in the store (images, the shard's state), at a conservative rate;

times a safety factor, and never less than a floor. An actor's start-up (the process, its runtime environment
and its resources) gets :attr:`Deadlines.startup` seconds.

The floors come from the service's settings (``DECONV_ACTOR_START_TIMEOUT``, ``DECONV_CALL_TIMEOUT_FLOOR``);
importing this module does not import Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from solver.config import LearnConfig
from solver.operators.convolution import map_shape

__all__ = ["CallDeadlines", "Deadlines", "shard_work"]

#: The pool calls that run one inference (the shard's coding step).
CODING_CALLS = frozenset({"code"})
#: The calls that read or write the shard's images or state in the store.
STORE_CALLS = frozenset(
    {"setup", "load", "build", "save_state", "restore", "write_outputs", "maps", "state", "load_state"}
)


@dataclass(frozen=True)
class Deadlines:
    """The parameters of the deadlines.

    Attributes
    ----------
    startup : float
        Seconds a new shard actor has to start and answer a ping.
    floor : float
        The least any call gets, in seconds.
    throughput : float
        Operations per second assumed of a shard actor (one core of numpy measures 2e8 to 9e8 on the
        inference of 2 to 4 images of 128² with 8 to 16 filters: this is a slow, shared core).
    overhead : float
        Seconds per iteration on top of its operations (Python and small arrays).
    io_rate : float
        Bytes per second assumed of the store.
    safety : float
        The factor on the estimate.
    """

    startup: float = 60.0
    floor: float = 60.0
    throughput: float = 1e8
    overhead: float = 0.01
    io_rate: float = 10 * 2**20
    safety: float = 4.0

    def __post_init__(self) -> None:
        for name in ("startup", "floor", "throughput", "io_rate", "safety"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"Deadlines.{name} must be a positive number, got {value!r}")
        if not (isinstance(self.overhead, int | float) and 0 <= self.overhead < math.inf):
            raise ValueError(f"Deadlines.overhead must be a number >= 0, got {self.overhead!r}")

    def seconds(self, work: float, iterations: float = 1.0, nbytes: float = 0.0) -> float:
        """The deadline of a call of `work` operations in `iterations` iterations that moves `nbytes` bytes."""
        estimate = work / self.throughput + iterations * self.overhead + nbytes / self.io_rate
        return self.floor + self.safety * estimate


@dataclass(frozen=True)
class ShardWork:
    """What one shard's calls cost: `unit` operations per inference iteration, `iterations` per coding step,
    `nbytes` of images and state it reads or writes."""

    unit: float
    iterations: float
    nbytes: float


def shard_work(
    config: LearnConfig, n_images: int, n_channels: int, shape: tuple[int, int], *, n_lower: int = 0, itemsize: int = 4
) -> ShardWork:
    """The work of a shard of `n_images` images of `n_channels` × `shape` under `config` (one layer).

    Parameters
    ----------
    config : LearnConfig
    n_images : int
        The shard's images.
    n_channels : int
        Channels of the layer's input.
    shape : (int, int)
        Its height and width.
    n_lower : int
        Frozen layers below (the 2011 model, which carries every iteration through them).
    itemsize : int
        Bytes per value of the computation dtype.

    Returns
    -------
    ShardWork
    """
    layer = config.layers[0]
    height, width = map_shape(shape, layer.filter_size, config.boundary)
    grid = height * width
    n_filters = layer.n_filters
    unit = n_images * n_filters * n_channels * grid
    unit += n_images * (n_filters + n_channels) * grid * max(math.log2(max(grid, 2)), 1.0)
    unit *= 1 + n_lower
    inference = config.inference
    iterations = float(inference.max_iter)
    if inference.method == "zeiler" and (inference.z_solver == "cg" or config.boundary == "valid"):
        iterations *= inference.cg_iter + 1
    elif inference.method == "fista":
        iterations *= 2  # a restart takes a second proximal step
    # images, maps, duals and the auxiliary variables of the method: a few arrays of the maps' size
    nbytes = itemsize * n_images * (n_channels * shape[0] * shape[1] + 4 * n_filters * grid) * (1 + n_lower)
    return ShardWork(unit, iterations, nbytes)


class CallDeadlines:
    """The deadline of each call of a run's shard actors: the largest shard's work under :class:`Deadlines`, or
    `fixed` seconds for every call and the start-up.

    Examples
    --------
    >>> from solver.config import LearnConfig
    >>> config = LearnConfig.model_validate({"layers": [{"n_filters": 8, "filter_size": 5, "lam": 0.1}]})
    >>> small = CallDeadlines(Deadlines(), [shard_work(config, 2, 1, (64, 64))])
    >>> small.of("code") == Deadlines().floor + 4.0 * (small.work.unit * 10 / 1e8 + 10 * 0.01)
    True
    """

    def __init__(self, deadlines: Deadlines, shards: list[ShardWork], *, fixed: float | None = None):
        self.deadlines = deadlines
        self.work = max(shards, key=lambda w: w.unit * w.iterations + w.nbytes)
        self.fixed = fixed

    @property
    def startup(self) -> float:
        """Seconds new shard actors have to start (the fixed deadline when there is one)."""
        return self.deadlines.startup if self.fixed is None else self.fixed

    def of(self, call: str) -> float:
        """Seconds the call `call` (a method of the shard actor) may take (the fixed deadline when there is one)."""
        if self.fixed is not None:
            return self.fixed
        work = self.work
        if call in CODING_CALLS:
            return self.deadlines.seconds(work.unit * work.iterations, work.iterations)
        if call in STORE_CALLS:  # reading or writing in the store; building a shard costs a few iterations
            return self.deadlines.seconds(10 * work.unit, 10, work.nbytes)
        # the filter step's calls (data term and gradient, normal operator, consensus step), λ_max, set_lam:
        # a few transforms of the maps each
        return self.deadlines.seconds(4 * work.unit, 4)
