r"""A shard of the training images and what the alternating optimisation asks of it.

The learning loop (:mod:`solver.learn`) talks to its images only through a *pool* of shards, in a fixed order:

* ``code(filters)``: inference on the shard's images with these filters, warm-started from the shard's own
  maps and auxiliary/dual variables (they never leave the shard); returns small statistics;
* ``value_and_gradient(filters)``: the data term ½‖P Z f − y‖² of the shard and its gradient Zᴴ(P Z f − y)
  with respect to the filters (K·C·s·s numbers);
* ``value(filters)``: that data term alone (the consensus filter update compares two filters with it);
* ``normal(v)``: ZᴴPᵀPZ v, for the power iteration that gives the filter step size;
* ``consensus_step(filters, rho, relax)``: the shard's part of a consensus ADMM filter iteration
  (:mod:`solver.algorithms.consensus`), with its local filters and duals kept in the shard;
* ``maps()``: the shard's current maps (for results and checkpoints).

:class:`Shard` codes with the 2010 model (each layer reconstructs its own input); :class:`PixelShard` with the
2011 one: layer l reconstructs the pixels through the frozen layers below, and with z_l and every switch fixed, E
is quadratic in f_l and its gradient is the correlation of z_l with the pixel residual carried up through the
layers below, :math:`Z_l^\top B_l^\top (B_l Z_l f_l - y)`, so the filter updates of
:mod:`solver.algorithms.filter_update` run on it unchanged.

:class:`LocalPool` runs shards in this process; the Ray pool of ``workers/`` runs each in an actor. Images are
independent problems and the reductions are sums taken in shard order, so one shard or several give the same
filters up to round-off. Arrays cross the shard boundary as host numpy arrays.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..algorithms import make_solver
from ..algorithms.admm import AdmmWarmStart, cold_start_rho
from ..algorithms.base import run
from ..algorithms.consensus import ConsensusState, consensus_local_step
from ..algorithms.filter_update import FilterProblem
from ..algorithms.problem import CSCProblem
from ..backend import Array, Backend, backend_of
from ..config import AdmmConfig, LearnConfig
from ..operators.convolution import ConvOperator, PlaneTransforms
from ..validation import check_values
from .interleaved import code_one_step, host_warm_start
from .lam import analysis_max
from .pixel_shard import PixelShard
from .shard_base import (
    CodeStats,
    _ShardBase,
    _to_device,
    _to_host,
    _warm_rows,
    coding_groups,
    iterate_steps,
    keep_better,
    steps_never_worse,
)


class Shard(_ShardBase):
    """Some images of a learning job, with their maps and the inference state, on one backend.

    Parameters
    ----------
    images : ndarray of shape (n, C, H, W)
        Already preprocessed, in the computation dtype.
    config : LearnConfig
    connectivity : bool ndarray of shape (K, C) or None
    backend : {"auto", "numpy", "cupy"}
    """

    def __init__(self, images: np.ndarray, config: LearnConfig, connectivity: np.ndarray | None, backend: str = "auto"):
        super().__init__(images, config, connectivity, backend)
        if config.filter_update.method == "consensus":
            why = "the consensus filter step's products of three Fourier coefficients would overflow"
            check_values(self.images, "images", power=3, why=why)
        self._warm: Any = None
        self._filter_problem: FilterProblem | None = None
        self._consensus: ConsensusState | None = None
        self._packed: PackedMaps | None = None  # the maps while the filters are updated, when sparse enough
        self.maps_hat: Array | None = None  # ẑ of the maps, kept by the interleaved schedule's coding step
        self.rounds = 0  # coding steps of the interleaved schedule so far
        # the filters' planes and the images' transform, which every coding and filter step reads again
        self.transforms = PlaneTransforms()
        self._images_hat: Array | None = None

    def maps(self) -> np.ndarray:
        self._unpack()
        return super().maps()

    def code(self, filters: np.ndarray) -> CodeStats:
        """Inference with fixed filters, warm-started; never returns maps worse than the previous ones.

        Exactly ``config.inference.max_iter`` iterations, on the images a group at a time
        (:func:`~solver.models.shard_base.coding_groups`: about 8 groups, of at least 1 MiB of maps, 8 MiB on a
        GPU; they are independent problems, each with its own ρ, step sizes and momentum, so the result is that of
        one batch; groups too small for threaded passes are coded several at once, a thread each),
        each group's maps (and ADMM duals) read from and written back into the shard's own arrays: besides those,
        the coding peak is a few arrays of one group's size. The first run starts from zero maps (and zero duals),
        made once here. ADMM keeps only its current iterate (updated in place), and per image the maps it started
        from are kept when the run ends above their E. The other methods keep, per image, the iterate of lowest E
        among the start and every step: the β continuation of ``zeiler`` can end above an earlier stage, and even
        above the start (a first coding step from zero maps that ended above E(0) would leave the maps at zero,
        and the filters, whose gradient they set, where they are, for ever).
        """
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        self._unpack()  # and the FFT of the old maps, stale now, is freed before the coding peak
        op = ConvOperator(
            f, self.images.shape[-2:], boundary=self.config.boundary, connectivity=self.g, transforms=self.transforms
        )
        if self.config.schedule == "interleaved":
            return code_one_step(self, op)
        if self._maps is None:
            shape = (self.n_images, op.n_filters, *op.map_shape)
            self._maps = self.bk.xp.zeros(shape, dtype=self.images.dtype)
        if self.config.inference.method == "admm":
            return self._code_admm_in_groups(op)
        maps = self._maps
        self._warm = None  # the others start cold
        step_bound = _OnceLipschitz()

        def code(group: slice) -> int:
            solver = make_solver(_GroupProblem(self.images[group], op, self.penalty, step_bound), self.config.inference)
            maps[group] = run(solver, solver.init(maps[group]), stop_early=False).maps
            return solver.max_iter

        return self._code_stats(self._each_group(code, maps)[-1])

    def _code_admm_in_groups(self, op: ConvOperator) -> CodeStats:
        maps = self._maps
        # the runs own (and overwrite) the duals now; the cold start of every image where there are none
        warm = _full_warm_start(self._warm, maps, self.images, self.config.inference, self.penalty.lam, op)
        self._warm = None

        def code(group: slice) -> tuple[np.ndarray, int]:
            solver = make_solver(CSCProblem(self.images[group], op, self.penalty), self.config.inference)
            kept, state = steps_never_worse(solver, solver.init(maps[group], warm=_warm_rows(warm, group)))
            maps[group] = kept  # a no-op where the run kept the group's start in place
            warm.dual[group] = state.dual  # the fused run wrote it in place already: then a no-op too
            if warm.aux_dual is not None:
                warm.aux_dual[group] = state.aux_dual
            return state.rho, solver.max_iter

        done = self._each_group(code, maps)
        self._warm = AdmmWarmStart(np.concatenate([rho for rho, _ in done]), warm.dual, warm.aux_dual)
        return self._code_stats(done[-1][1])

    def _problem(self) -> FilterProblem:
        if self._filter_problem is not None:  # the maps' FFTs are reused by every filter evaluation of the step
            return self._filter_problem
        if self._maps is None:
            raise ValueError("the shard has no maps yet: call code(filters) first")
        problem = functools.partial(
            FilterProblem,
            self.images,
            filter_size=self.layer.filter_size,
            boundary=self.config.boundary,
            images_hat=self._images_hat,  # None before the first coding step: the problem makes it
            transforms=self.transforms,
        )
        if self.maps_hat is not None:  # the interleaved coding step kept the maps' transform
            self._filter_problem = problem(self._maps, connectivity=self.g, maps_hat=self.maps_hat)
            return self._filter_problem
        packed = PackedMaps.pack(self._maps) if self.bk.name == "numpy" else None
        if packed is None:
            self._filter_problem = problem(self._maps, connectivity=self.g)
        else:  # sparse maps: while the filters are updated the shard holds their transform and their non-zeros
            self._maps, self._packed = None, packed
            self._filter_problem = problem(packed.template(), connectivity=self.g, maps_hat=packed.rfft2(self.bk))
        return self._filter_problem

    def images_hat(self, grid: Any) -> Array:
        """F Pᵀ y on the map grid `grid` (made once: the images and the grid never change)."""
        if self._images_hat is None:
            self._images_hat = self.bk.rfft2(grid.pad(self.images), grid.shape)
        return self._images_hat

    def _unpack(self) -> None:
        """The maps as an array again (and the filter step's transform of them freed first)."""
        self._filter_problem = None
        if self._packed is not None:
            self._maps, self._packed = self._packed.dense(), None

    def value_and_gradient(self, filters: np.ndarray) -> tuple[float, np.ndarray]:
        """(½‖P Z f − y‖², Zᴴ(P Z f − y)) of this shard at `filters`."""
        problem = self._problem()
        resid_hat, data = problem.residual_of(self.bk.asarray(filters, dtype=self.images.dtype))
        return float(data.sum()), self.bk.to_host(problem.gradient(resid_hat))

    def value(self, filters: np.ndarray) -> float:
        """½‖P Z f − y‖² of this shard at `filters` (no gradient)."""
        return self._problem().value(self.bk.asarray(filters, dtype=self.images.dtype))

    def normal(self, v: np.ndarray) -> np.ndarray:
        """ZᴴPᵀPZ v of this shard."""
        return self.bk.to_host(self._problem().normal(self.bk.asarray(v, dtype=self.images.dtype)))

    def consensus_step(self, filters: np.ndarray, rho: float, relax: float) -> tuple[np.ndarray, int]:
        """(Σ over the shard's images of Sᴴ(d̃_n + u_n), image count) at the global filters; see
        :func:`~solver.algorithms.consensus.consensus_local_step`. The duals persist across outer iterations."""
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        partial, self._consensus = consensus_local_step(self._problem(), f, self._consensus, rho, relax)
        return self.bk.to_host(partial), self.n_images

    def lambda_max(self, filters: np.ndarray) -> float:
        """λ_max of this shard's images for `filters`: ``max |Dᴴ y|`` (:func:`solver.models.lam.lambda_max`)."""
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        op = ConvOperator(f, self.images.shape[-2:], boundary=self.config.boundary, connectivity=self.g)
        return analysis_max(op, self.images, self.bk)

    def state(self, *, copy: bool = True) -> dict[str, Any]:
        """The shard's maps and inference state as host arrays (what a checkpoint stores). With ``copy=False`` the
        arrays may be the shard's own (a caller that writes them out at once, before the next coding run, saves
        a copy of the duals)."""
        self._unpack()
        return {
            "maps": None if self._maps is None else self.maps(),
            "warm": _to_host(host_warm_start(self._warm), self.bk, copy=copy),
            "consensus": _to_host(self._consensus, self.bk, copy=copy),
            "rounds": self.rounds,
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned."""
        maps = state.get("maps")
        self._maps = None if maps is None else self.bk.asarray(maps)
        self._warm = _to_device(state.get("warm"), self.bk)
        self._consensus = _to_device(state.get("consensus"), self.bk)
        self.rounds = int(state.get("rounds", 0))
        self._filter_problem, self._packed, self.maps_hat = None, None, None


class _OnceLipschitz:
    """‖P D‖² of a coding operator, computed by the first group that asks (it depends on the filters only: for the
    valid boundary a power iteration on one image) and given to the others, which may ask at the same time."""

    def __init__(self) -> None:
        self.value: float | None = None
        self._lock = threading.Lock()

    def __call__(self, problem: CSCProblem) -> float:
        with self._lock:
            if self.value is None:
                self.value = CSCProblem.lipschitz(problem)
            return self.value


class _GroupProblem(CSCProblem):
    """The coding problem of one group of a shard's images, sharing its step bound with the other groups."""

    def __init__(self, images: Array, op: ConvOperator, penalty: Any, step_bound: _OnceLipschitz):
        super().__init__(images, op, penalty)
        self._step_bound = step_bound

    def lipschitz(self) -> float:
        return self._step_bound(self)


def _full_warm_start(
    warm: AdmmWarmStart | None, maps: Array, images: Array, config: AdmmConfig, lam: float, op: ConvOperator
) -> AdmmWarmStart:
    """`warm`, or where it has none (the first run, or duals of other shapes) the cold start of every image: ρ of a
    cold start and zero duals, in arrays of the shard's size that the groups are coded in (a run started with
    them takes the steps of a cold start)."""
    xp = backend_of(maps).xp
    if warm is not None and tuple(warm.dual.shape) == tuple(maps.shape):
        if warm.aux_dual is None and op.grid.cropped:
            return AdmmWarmStart(warm.rho, warm.dual, _zero_aux_dual(maps, op))
        return warm if op.grid.cropped else AdmmWarmStart(warm.rho, warm.dual, None)
    rho = cold_start_rho(config, lam, images)
    return AdmmWarmStart(rho, xp.zeros_like(maps), _zero_aux_dual(maps, op) if op.grid.cropped else None)


def _zero_aux_dual(maps: Array, op: ConvOperator) -> Array:
    """u₀ of mask decoupling at its cold start: zeros on the images' channels and the map grid."""
    return backend_of(maps).xp.zeros((maps.shape[0], op.n_channels, *op.map_shape), dtype=maps.dtype)


@dataclass(frozen=True)
class PackedMaps:
    """Sparse maps as their non-zero entries: flat indices (int32 where they fit) and values, with each image's
    first entry. Exact: :meth:`dense` gives the maps back bit for bit (a zero is +0 either way).

    A shard keeps its maps so while it updates its filters, when at most :data:`PACK_DENSITY` of them is non-zero:
    the filter step needs only their transform, and the next coding step the maps themselves.
    """

    shape: tuple[int, ...]
    index: np.ndarray
    values: np.ndarray
    starts: np.ndarray

    @classmethod
    def pack(cls, maps: np.ndarray) -> PackedMaps | None:
        """The packed `maps` (N, K, H', W') (host numpy), or None when more than PACK_DENSITY of them is non-zero."""
        n = maps.shape[0]
        counts = np.count_nonzero(maps.reshape(n, -1), axis=1)
        if counts.sum() > PACK_DENSITY * maps.size:
            return None
        row = maps[0].size
        dtype = np.int32 if maps.size < 2**31 else np.int64
        starts = np.concatenate([[0], np.cumsum(counts)])
        index, values = np.empty(int(starts[-1]), dtype=dtype), np.empty(int(starts[-1]), dtype=maps.dtype)
        for block in coding_groups(n, maps.nbytes):  # a group at a time: the int64 indices of one group only
            flat = maps[block].reshape(-1)
            where = np.flatnonzero(flat)
            lo, hi = starts[block.start], starts[block.stop]
            index[lo:hi] = where + block.start * row
            values[lo:hi] = flat[where]
        return cls(tuple(maps.shape), index, values, starts)

    def rows(self, lo: int, hi: int) -> np.ndarray:
        """Images ``lo:hi`` as a dense array."""
        row = int(np.prod(self.shape[1:]))
        out = np.zeros((hi - lo) * row, dtype=self.values.dtype)
        a, b = self.starts[lo], self.starts[hi]
        out[self.index[a:b] - lo * row] = self.values[a:b]
        return out.reshape((hi - lo, *self.shape[1:]))

    def dense(self) -> np.ndarray:
        return self.rows(0, self.shape[0])

    def template(self) -> np.ndarray:
        """An array of no image with the maps' dtype and trailing shape."""
        return np.empty((0, *self.shape[1:]), dtype=self.values.dtype)

    def rfft2(self, bk: Backend) -> Array:
        """rfft2 of the maps over their own grid, a group of images at a time (the same transform per image): with
        the transform and the duals the shard holds, the dense group and its transform are the peak."""
        n = self.shape[0]
        nbytes = n * int(np.prod(self.shape[1:])) * self.values.dtype.itemsize
        out = None
        for block in coding_groups(n, nbytes):
            part = bk.rfft2(self.rows(block.start, block.stop), self.shape[-2:])
            if out is None:
                out = bk.xp.empty((n, *part.shape[1:]), dtype=part.dtype)
            out[block] = part
        return out


#: Maps with at most this fraction of non-zeros are packed during a filter update (8 bytes per non-zero of
#: float32 maps with int32 indices: at most 0.4 of the maps' bytes).
PACK_DENSITY = 0.2


class LocalPool:
    """Shards in this process, called one after another (the single-process learner uses one shard)."""

    def __init__(self, shards: Sequence[Shard]):
        if not shards:
            raise ValueError("a pool needs at least one shard")
        self.shards = list(shards)

    def code(self, filters: np.ndarray) -> list[CodeStats]:
        return [s.code(filters) for s in self.shards]

    def value_and_gradient(self, filters: np.ndarray) -> list[tuple[float, np.ndarray]]:
        return [s.value_and_gradient(filters) for s in self.shards]

    def value(self, filters: np.ndarray) -> list[float]:
        return [s.value(filters) for s in self.shards]

    def normal(self, v: np.ndarray) -> list[np.ndarray]:
        return [s.normal(v) for s in self.shards]

    def consensus_step(self, filters: np.ndarray, rho: float, relax: float) -> list[tuple[np.ndarray, int]]:
        return [s.consensus_step(filters, rho, relax) for s in self.shards]

    def maps(self) -> list[np.ndarray]:
        return [s.maps() for s in self.shards]

    def lambda_max(self, filters: np.ndarray) -> list[float]:
        return [s.lambda_max(filters) for s in self.shards]

    def peak(self) -> list[float]:
        return [s.peak() for s in self.shards]

    def set_lam(self, lam: float) -> None:
        for s in self.shards:
            s.set_lam(lam)


__all__ = [
    "PACK_DENSITY",
    "CodeStats",
    "LocalPool",
    "PackedMaps",
    "PixelShard",
    "Shard",
    "iterate_steps",
    "keep_better",
]
