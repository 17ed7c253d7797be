"""What every shard shares (:class:`CodeStats`, :class:`_ShardBase`: the images, the penalty, the maps and
coding steps that are never worse) and the helpers of their coding and state."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from ..algorithms.admm import Admm, AdmmWarmStart
from ..backend import PARALLEL_MIN_ENTRIES, Array, Backend, backend_of, get_backend, thread_budget
from ..concurrent import map_concurrently
from ..config import LearnConfig
from ..operators.pairs import image_blocks
from ..operators.prox import LpPenalty
from ..stopping import check_stop
from .lam import with_lam

R = TypeVar("R")


@dataclass(frozen=True)
class CodeStats:
    """What a shard's coding step returns: the sparsity term of its maps and their non-zero count."""

    penalty: float
    n_nonzero: int
    n_entries: int
    n_iter: int
    n_images: int = 0


class _ShardBase:
    """What both shards hold (images on a backend, the layer, its connectivity and penalty, the current maps) and
    the end of their coding step."""

    def __init__(self, images: np.ndarray, config: LearnConfig, connectivity: np.ndarray | None, backend: str):
        self.bk: Backend = get_backend(backend)
        self.config = config
        self.layer = config.layers[0]
        self.images = self.bk.asarray(images)
        self.g = None if connectivity is None else self.bk.asarray(connectivity)
        self.penalty = LpPenalty(self.layer.lam, self.layer.p)
        self._maps: Array | None = None

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    def maps(self) -> np.ndarray:
        if self._maps is None:
            raise ValueError("the shard has no maps yet: call code(filters) first")
        return self.bk.to_host(self._maps)

    def device_maps(self) -> Array:
        """The current maps on the shard's backend (no copy; for statistics computed where the maps are)."""
        if self._maps is None:
            raise ValueError("the shard has no maps yet: call code(filters) first")
        return self._maps

    def peak(self) -> float:
        """The largest |y| over this shard's images (the scale of the default consensus penalty)."""
        xp = self.bk.xp
        return float(self.bk.to_host(xp.max(xp.abs(self.images)))) if self.n_images else 0.0

    def set_lam(self, lam: float) -> None:
        """Code with the absolute λ `lam` from now on (a relative λ, resolved on λ_max of every shard)."""
        self.config = with_lam(self.config, lam)
        self.layer = self.config.layers[0]
        self.penalty = LpPenalty(self.layer.lam, self.layer.p)

    def _each_group(self, code: Callable[[slice], R], maps: Array) -> list[R]:
        """``code(group)`` for each of the groups in which the shard codes `maps`
        (:func:`coding_groups`), in order. Groups too small for threaded passes
        (:data:`~solver.backend.PARALLEL_MIN_ENTRIES`) are coded several at once, a thread each, at most
        :data:`CONCURRENT_GROUP_BYTES` of maps at a time (:mod:`solver.concurrent`): `code` may write only its own
        group's rows of the shard's arrays."""
        gpu = self.bk.name != "numpy"
        groups = coding_groups(self.n_images, maps.nbytes, gpu=gpu)
        if gpu or maps[groups[0]].size >= PARALLEL_MIN_ENTRIES:
            return [code(group) for group in groups]
        # as many groups as there are threads to code them, where that is more (each group is still of
        # MIN_GROUP_BYTES at least): the result does not depend on the grouping
        threads = thread_budget()
        if threads > CODING_GROUPS:
            groups = coding_groups(self.n_images, maps.nbytes, blocks=threads)
        at_once = max(1, CONCURRENT_GROUP_BYTES // maps[groups[0]].nbytes)
        return map_concurrently(code, groups, at_most=at_once)

    def _code_stats(self, n_iter: int) -> CodeStats:
        xp, maps = self.bk.xp, self._maps
        # per image, a block of images at a time: |z| of all the maps at once would be a copy of them
        per_image = [self.penalty.per_item(maps[b]) for b in image_blocks(maps.shape[0], maps.nbytes)]
        penalty = float(np.concatenate(per_image).sum())
        return CodeStats(penalty, int(xp.count_nonzero(maps)), int(maps.size), n_iter, self.n_images)


#: A shard codes its images in about this many groups (images are independent problems: the result is that of one
#: batch): besides the maps (and ADMM duals) it keeps, its coding peak is a few arrays of one group's size ...
CODING_GROUPS = 8
#: ... of at least this many bytes of maps each: smaller groups cost more in calls than they save in memory.
MIN_GROUP_BYTES = 2**20
#: The same on a GPU, where every group's steps are kernel launches: the group size measured there before.
GPU_MIN_GROUP_BYTES = 8 * 2**20
#: Groups coded at once on several threads (:meth:`_ShardBase._each_group`) hold at most this many bytes of maps
#: between them: each group in flight adds a few arrays of its size, so this bounds what the threads add to a
#: shard's coding peak whatever their number.
CONCURRENT_GROUP_BYTES = 32 * 2**20


def coding_groups(n: int, maps_bytes: int, *, gpu: bool = False, blocks: int = CODING_GROUPS) -> list[slice]:
    """The groups of images ``lo:hi`` in which a shard of `n` images whose maps take `maps_bytes` codes them (about
    `blocks` of them)."""
    min_bytes = GPU_MIN_GROUP_BYTES if gpu else MIN_GROUP_BYTES
    return image_blocks(n, maps_bytes, blocks=blocks, min_bytes=min_bytes)


def steps_never_worse(solver: Any, state: Any) -> tuple[Array, Any]:
    """``solver.max_iter`` steps from `state`: (per image the new maps unless their E is above the start's, the
    last state)."""
    maps0, E0 = solver.maps(state), solver.per_item_objective(state).copy()
    state = iterate_steps(solver, state, solver.max_iter)
    return keep_better(solver.maps(state), solver.per_item_objective(state), maps0, E0), state


def _warm_rows(warm: AdmmWarmStart, group: slice) -> AdmmWarmStart:
    """The warm start of the images of `group` (views: the run writes their new duals in place)."""
    aux = None if warm.aux_dual is None else warm.aux_dual[group]
    return AdmmWarmStart(np.asarray(warm.rho)[group], warm.dual[group], aux)


def iterate_steps(solver: Any, state: Any, n_iter: int) -> Any:
    """`n_iter` steps of `solver` from `state`; only the last state is kept.

    ADMM steps write into the arrays of the state they replace (``out=``), except the maps of `state`, which
    the caller keeps: the first step writes its maps into a new array. The duals of `state` are given up.
    """
    if n_iter == 0:
        return state
    if not isinstance(solver, Admm):
        for _ in range(n_iter):
            check_stop()
            state = solver.step(state)
        return state
    xp = backend_of(state.maps).xp
    state = solver.step(state, out=replace(state, maps=xp.empty_like(state.maps)))
    for _ in range(n_iter - 1):
        check_stop()
        state = solver.step(state, out=state)
    return state


def keep_better(maps: Array, E: np.ndarray, maps0: Array, E0: np.ndarray, *, in_place: bool = False) -> Array:
    """Per image, `maps` unless its E is above E0 of `maps0` (no copy when one of them wins everywhere).

    `in_place`: the caller owns `maps`; the worse images' maps are copied into it (no map-sized allocation)."""
    worse = E > E0
    if not worse.any():
        return maps
    if worse.all():
        return maps0
    xp = backend_of(maps).xp
    if in_place:
        rows = xp.asarray(np.flatnonzero(worse))
        maps[rows] = maps0[rows]
        return maps
    return xp.where(xp.asarray(worse.reshape((-1,) + (1,) * (maps.ndim - 1))), maps0, maps)


def _to_host(obj: Any, bk: Backend, *, copy: bool = True) -> Any:
    """A solver state (frozen dataclass of arrays and scalars) with every array copied to the host (copied on
    the host too unless `copy` is False: the next coding run overwrites the duals of the shard)."""
    if obj is None or not hasattr(obj, "__dataclass_fields__"):
        return obj
    fields = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    host = (lambda v: np.array(bk.to_host(v))) if copy else bk.to_host
    converted = {k: (host(v) if hasattr(v, "shape") else v) for k, v in fields.items()}
    return type(obj)(**converted)


def _to_device(obj: Any, bk: Backend) -> Any:
    if obj is None or not hasattr(obj, "__dataclass_fields__"):
        return obj
    fields = {k: getattr(obj, k) for k in obj.__dataclass_fields__}
    # copies: a coding run overwrites the duals it is given, which must not be the caller's arrays
    return type(obj)(
        **{k: (bk.xp.array(v) if isinstance(v, np.ndarray) and v.ndim >= 2 else v) for k, v in fields.items()}
    )
