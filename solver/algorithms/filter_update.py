r"""Filter updates with the maps fixed.

.. math:: \min_f \tfrac12 \sum_{n,c} \| P \sum_k g_{kc}\, z_{nk} \circledast S f_{kc} - y_{nc} \|^2
          \quad \text{s.t.} \quad \|f_{kc}\|_2 \le 1 \ (\text{per plane}) \text{ or } \|f_k\|_2 \le 1

* ``fista`` (default): projected FISTA on this problem (the support constraint is built into the s×s
  parametrisation, the norm constraint is the projection); monotone, so the learning objective never rises.
* ``cg``: Zeiler's toolbox: a few conjugate-gradient steps on the normal equations ZᴴPᵀPZ f = ZᴴPᵀy,
  warm-started at the current filters, then every plane (or filter) rescaled to unit norm.

Online learning (:mod:`solver.models.online`) replaces the images and maps by their sufficient statistics and runs
the same projected FISTA on the quadratic surrogate of :mod:`solver.operators.surrogate`
(:func:`update_filters_surrogate`).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..backend import Array
from ..config import FilterUpdateConfig, FistaConfig
from ..operators import kernels
from ..operators.convolution import Boundary, FilterOperator, PlaneTransforms
from ..operators.linalg import conjugate_gradient, stable_norm
from ..operators.prox import normalise_unit, project_unit_ball
from ..operators.surrogate import SurrogateOperator
from ..stopping import check_stop
from .base import run
from .fista import Fista
from .problem import GridResidual


class FilterProblem:
    """The data term of the filter sub-problem on some images with fixed maps: its value and gradient in the
    filters, and its normal operator (what a shard contributes to the pooled filter update).

    Parameters
    ----------
    images : array of shape (N, C, H, W)
    maps : array of shape (N, K, H', W')
    filter_size : int
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional
    maps_hat : array of shape (N, K, U, V), optional
        The maps' transform when the caller made it (then `maps` only gives their dtype and trailing shape).
    images_hat : array of shape (N, C, U, V), optional
        F Pᵀ y on the map grid, when the caller keeps it.
    transforms : PlaneTransforms, optional
        A cache of the filters' Fourier planes (:class:`~solver.operators.convolution.PlaneTransforms`).
    """

    def __init__(
        self,
        images: Array,
        maps: Array,
        filter_size: int,
        *,
        boundary: Boundary = "circular",
        connectivity: Array | None = None,
        maps_hat: Array | None = None,
        images_hat: Array | None = None,
        transforms: PlaneTransforms | None = None,
    ):
        self.images = images
        self.op = FilterOperator(
            maps,
            images.shape[-2:],
            filter_size,
            boundary=boundary,
            connectivity=connectivity,
            n_channels=images.shape[1],
            maps_hat=maps_hat,
            transforms=transforms,
        )
        self.backend = self.op.backend
        self._residual = GridResidual(images, self.op.grid, self.backend, images_hat=images_hat)
        self.images_hat = self._residual.images_hat  # F Pᵀ y on the map grid (read by the consensus update)

    def residual_of(self, filters: Array) -> tuple[Array, np.ndarray]:
        """(F Pᵀ(P Z f − y), [½‖P Z f − y‖²]) at `filters` (K, C, s, s)."""
        resid_hat, data = self._residual(self.op.forward_hat(self.op.filters_to_hat(filters)))
        return resid_hat, np.array([float(data.sum())])

    def value(self, filters: Array) -> float:
        """½‖P Z f − y‖² at `filters` (one fused pass for one channel, every pair connected, circular, on the CPU)."""
        op = self.op
        fused = (
            self.backend.name == "numpy"
            and kernels.available()
            and not op.grid.cropped
            and op.connections.full
            and op.n_channels == 1
            and op.maps_hat.flags.c_contiguous
        )
        if not fused:
            return float(self.residual_of(filters)[1].sum())
        planes = op.filters_to_hat(filters)
        N, K = op.maps_hat.shape[:2]
        F = int(np.prod(op.maps_hat.shape[2:]))
        w = np.broadcast_to(self._residual.weights, op.maps_hat.shape[2:]).reshape(F)
        twice = kernels.data_term(
            op.maps_hat.reshape(N, K, F),
            np.ascontiguousarray(planes.reshape(K, F)),
            np.ascontiguousarray(self.images_hat.reshape(N, F)),
            w,
        )
        return 0.5 * float(twice.sum())

    def gradient(self, resid_hat: Array) -> Array:
        return self.op.hat_to_filters(self.op.adjoint_hat(resid_hat))

    def normal(self, filters: Array) -> Array:
        """ZᴴPᵀPZ f (the normal operator of the CG update)."""
        return self.op.adjoint(self.op.forward(filters))


class PooledFilterProblem:
    """The filter sub-problem over a pool of shards, in FISTA's composite form.

    Each evaluation asks every shard for its data term and gradient and sums them in shard order. The gradient
    is affine in the filters, so it stands in for the "residual" that FISTA combines with its momentum weights:
    one round trip to the shards per iteration.
    """

    def __init__(self, pool: Any, shape: tuple[int, ...], dtype: Any, norm: str, lipschitz: float):
        self.pool = pool
        self.shape = shape
        self.dtype = dtype
        self.norm = norm
        self._lipschitz = lipschitz

    def zeros(self) -> np.ndarray:
        return np.zeros(self.shape, dtype=self.dtype)

    def residual_of(self, filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        parts = self.pool.value_and_gradient(filters)
        data = sum(value for value, _ in parts)
        grad = parts[0][1].copy()
        for _, g in parts[1:]:
            grad += g
        return grad, np.array([data])

    def gradient(self, grad: np.ndarray) -> np.ndarray:
        return grad

    def prox(self, v: np.ndarray, step: float) -> np.ndarray:
        return project_unit_ball(v, self.norm)

    def regulariser(self, filters: np.ndarray) -> np.ndarray:
        return np.zeros(1)

    def lipschitz(self) -> float:
        return self._lipschitz


def pooled_normal(pool: Any, v: np.ndarray) -> np.ndarray:
    """Σ over shards (in order) of ZᴴPᵀPZ v."""
    parts = pool.normal(v)
    out = parts[0].copy()
    for part in parts[1:]:
        out += part
    return out


def filter_lipschitz(pool: Any, vector: np.ndarray, n_iter: int) -> tuple[float, np.ndarray]:
    """‖Z‖² by `n_iter` power iterations from `vector` (warm-started across outer iterations), with a margin.

    Returns the estimate and the last unit vector (to warm-start the next call). An underestimate is safe:
    FISTA doubles L when a step fails to descend.
    """
    v = vector / max(stable_norm(vector), 1e-300)
    lam = 0.0
    for _ in range(n_iter):
        check_stop()
        w = pooled_normal(pool, v)
        norm = stable_norm(w)
        if norm == 0.0:
            break
        lam, v = norm, w / norm
    return _LIPSCHITZ_MARGIN * lam if lam > 0 else 1.0, v


_LIPSCHITZ_MARGIN = 1.05


def update_filters_pooled(
    pool: Any, filters: np.ndarray, config: FilterUpdateConfig, lipschitz: float
) -> tuple[np.ndarray, float]:
    """One filter update from `filters` over a pool of shards whose maps are fixed.

    Returns
    -------
    filters : ndarray of shape (K, C, s, s)
        Feasible filters (host).
    data : float
        The data term Σ_shards ½‖P Z f − y‖² at the returned filters.
    """
    if config.method == "fista":
        problem = PooledFilterProblem(pool, filters.shape, filters.dtype, config.norm, lipschitz)
        solver = Fista(problem, FistaConfig(max_iter=config.max_iter, tol=0.0))
        result = run(solver, solver.init(project_unit_ball(filters, config.norm)), stop_early=False)
        return result.maps, result.objective
    zero = np.zeros_like(filters)
    rhs = -PooledFilterProblem(pool, filters.shape, filters.dtype, config.norm, 1.0).residual_of(zero)[0]
    # The normal equations ZᴴZ f = Zᴴy have entries of the order of the data's energy, which CG's inner products
    # square: the system is divided by ‖Zᴴy‖ (the same solution, vectors of the order of one), in float64 (filters
    # are small), and the shards are handed unit vectors (the map is linear), so that Z and Zᴴ applied to them stay
    # within float32 where the shards compute in it
    wide = np.float64
    energy = stable_norm(rhs) or 1.0

    def normal(v: np.ndarray) -> np.ndarray:
        size = stable_norm(v)
        if size == 0.0:
            return np.zeros_like(v)
        unit = (v / size).astype(filters.dtype, copy=False)
        return (size / energy) * np.asarray(pooled_normal(pool, unit), dtype=wide)

    new = conjugate_gradient(normal, rhs.astype(wide) / energy, filters.astype(wide), config.max_iter)
    new = normalise_unit(new, config.norm).astype(filters.dtype, copy=False)
    data = sum(value for value, _ in pool.value_and_gradient(new))
    return new, float(data)


class SurrogateFilterProblem:
    r"""The filter step of online learning in FISTA's composite form:

    .. math:: \min_f \tfrac12 \sum_{k,c} f_{kc} \cdot (A * f)_{kc} - \langle B, f \rangle
              \quad \text{s.t.} \quad \|f\|_2 \le 1

    on the statistics A = ZtZ, B = ZtY of :class:`~solver.operators.surrogate.SurrogateOperator` (host, float64).
    The gradient A ∗ f − B is affine in f, so it stands in for FISTA's residual, as in :class:`PooledFilterProblem`.
    """

    def __init__(self, op: SurrogateOperator, norm: str, lipschitz: float):
        self.op = op
        self.norm = norm
        self._lipschitz = lipschitz

    def zeros(self) -> np.ndarray:
        return np.zeros(self.op.shape)

    def residual_of(self, filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        value, grad = self.op.value_and_gradient(filters)
        return grad, np.array([value])

    def gradient(self, grad: np.ndarray) -> np.ndarray:
        return grad

    def prox(self, v: np.ndarray, step: float) -> np.ndarray:
        return project_unit_ball(v * self.op.mask, self.norm)

    def regulariser(self, filters: np.ndarray) -> np.ndarray:
        return np.zeros(1)

    def lipschitz(self) -> float:
        return self._lipschitz


def update_filters_surrogate(
    op: SurrogateOperator, filters: np.ndarray, n_iter: int, norm: str, lipschitz: float
) -> tuple[np.ndarray, float]:
    """`n_iter` projected FISTA steps on the surrogate `op`, warm-started at `filters` (projected first).

    The steps never raise the surrogate (FISTA's function-value restart), so the returned filters are no worse
    on it than the (projected) start.

    Returns
    -------
    filters : ndarray of shape (K, C, s, s)
        Feasible filters, float64 (the caller casts them to its dtype).
    value : float
        The surrogate at the returned filters.
    """
    problem = SurrogateFilterProblem(op, norm, lipschitz)
    solver = Fista(problem, FistaConfig(max_iter=n_iter, tol=0.0))
    start = problem.prox(np.asarray(filters, dtype=np.float64), 1.0)
    result = run(solver, solver.init(start), stop_early=False)
    return result.maps, result.objective
