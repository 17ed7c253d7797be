"""The iterate of :class:`~solver.algorithms.admm.Admm` and what a warm start keeps of it (re-exported by
:mod:`solver.algorithms.admm`, whose docstring describes the variables).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Array


@dataclass(frozen=True)
class AdmmState:
    """ADMM iterate. ``maps`` is the sparse split variable (z, or y₁ with the mask), and what E is of.

    ``rho`` (the penalty of the next iteration), ``objective`` and the two relative residuals are host float64
    arrays with one entry per image: images are independent problems, each with its own penalty, so a batch
    split over several workers follows the same trajectories. The residuals are those of iteration
    ``residual_iteration`` (every ``rho_period``-th; the others skip them).

    Circular boundary: ``solve_hat`` is x̂ of the next iteration and ``carry_hat`` is û + αx̂ + (1−α)ẑ.
    Valid boundary: ``maps_hat``/``dual_hat`` are ẑ and û, and ``aux``/``aux_dual`` (with their transforms)
    are y₀ and u₀ of mask decoupling.

    ``sparsity`` (λ‖z‖ₚᵖ) and ``nonzero`` (the count of non-zero entries), per image, where the step computed
    them on its way (the fused kernels, CPU or GPU), so that progress reports need no pass over the maps.
    """

    maps: Array
    dual: Array
    rho: np.ndarray
    objective: np.ndarray
    primal_residual: np.ndarray
    dual_residual: np.ndarray
    iteration: int = 0
    residual_iteration: int = 0
    solve_hat: Array | None = None
    carry_hat: Array | None = None
    maps_hat: Array | None = None
    dual_hat: Array | None = None
    aux: Array | None = None
    aux_hat: Array | None = None
    aux_dual: Array | None = None
    aux_dual_hat: Array | None = None
    sparsity: np.ndarray | None = None
    nonzero: np.ndarray | None = None

    def warm_start(self) -> AdmmWarmStart:
        """What a warm start reads, without the arrays that depend on the filters (a learner keeps this between
        its outer iterations, when the filters change)."""
        return AdmmWarmStart(self.rho, self.dual, self.aux_dual)


@dataclass(frozen=True)
class AdmmWarmStart:
    """ρ per image and the scaled spatial duals u (and u₀ of mask decoupling) of a previous run.

    ``maps_hat`` and ``dual_hat`` (circular boundary) are ẑ and û of that run's last iterate, when the caller kept
    them (:meth:`~solver.algorithms.admm.Admm.fourier_warm_start`): a warm start that has them costs no FFT.

    ``summary`` is that of the maps the warm start is given with, where the caller knows it from the run that made
    both (the interleaved schedule): the start's E then needs no pass over the maps. Whoever pairs the warm start
    with other maps must leave it None.
    """

    rho: np.ndarray
    dual: Array
    aux_dual: Array | None = None
    maps_hat: Array | None = None
    dual_hat: Array | None = None
    summary: MapSummary | None = None


@dataclass(frozen=True)
class MapSummary:
    """The sparsity term λ‖z‖ₚᵖ and the non-zero count of some maps, per image (host float64), with the λ and p
    it was computed at: a start coded with another penalty computes its own."""

    lam: float
    p: float
    sparsity: np.ndarray
    nonzero: np.ndarray


__all__ = ["AdmmState", "AdmmWarmStart", "MapSummary"]
