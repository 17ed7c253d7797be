r"""FISTA (Beck & Teboulle 2009) for composite problems ``min_x f(x) + g(x)``, written once for the maps and
for the filters.

For the maps this is the 2011 ISTA inference, accelerated:

.. math:: \min_z \tfrac12 \|P D z - y\|^2 + \lambda \|z\|_p^p

and for the filters, the projected gradient step onto the unit ball. The step is 1/L with L = ‖D‖² (exact
per frequency for the circular boundary, a power-iteration bound otherwise). The residual is affine in x, so
it is carried in the Fourier domain and combined with the momentum weights: one forward transform of the new
iterate and one inverse transform of the gradient per iteration. A step that would raise the objective
restarts the momentum and takes the plain proximal-gradient step instead (O'Donoghue & Candès' function-value
restart; L doubles if even that fails, which only happens when L was underestimated), so the objective never
increases.

The problem object supplies ``zeros()``, ``residual_of(x) -> (r̂, f(x))``, ``gradient(r̂)``,
``prox(v, step)``, ``regulariser(x) = g(x)``, ``lipschitz()`` and its arrays' dtype via ``zeros()``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Array, backend_of
from ..config import FistaConfig
from .base import SolverBase

_MAX_BACKTRACK = 30
_T_AFTER_PLAIN_STEP = 0.5 * (1.0 + math.sqrt(5.0))


@dataclass(frozen=True)
class FistaState:
    """Current iterate x with its Fourier residual, the previous one (for momentum), t per item and L.

    ``objective`` and ``t`` are host float64 arrays with one entry per item (per image for the maps, a single
    entry for the filters): images are independent problems, so each has its own momentum and restarts, and a
    batch split over several workers follows the same trajectories.
    """

    maps: Array
    resid_hat: Array
    objective: np.ndarray
    prev_maps: Array
    prev_resid_hat: Array
    t: np.ndarray
    lipschitz: float | np.ndarray
    iteration: int = 0


class Fista(SolverBase):
    """FISTA solver; see the module docstring."""

    def __init__(self, problem: Any, config: FistaConfig | None = None):
        self.problem = problem
        self.config = config or FistaConfig()
        L = problem.lipschitz()  # a float, or one per item (problems whose items have operators of their own)
        self._lipschitz = max(L, 1e-12) if np.ndim(L) == 0 else np.maximum(np.asarray(L, dtype=np.float64), 1e-12)
        zeros = problem.zeros()
        self._bk = backend_of(zeros)
        # The objective is evaluated from arrays of this dtype: changes below this are round-off, not ascent.
        self._slack = 100 * float(self._bk.xp.finfo(zeros.dtype).eps)

    def init(self, maps0: Array | None = None, warm: Any = None) -> FistaState:
        pb = self.problem
        x = pb.zeros() if maps0 is None else maps0
        resid_hat, data = pb.residual_of(x)
        E = data + pb.regulariser(x)
        return FistaState(x, resid_hat, E, x, resid_hat, np.ones_like(E), self._lipschitz)

    def _per_item(self, values: np.ndarray, like: Array) -> Array:
        """Host per-item scalars (n,) as a device array broadcasting over `like` (n, 1, 1, ...)."""
        return self._bk.asarray(values.reshape((-1,) + (1,) * (like.ndim - 1)), dtype=like.real.dtype)

    def _prox_grad(self, point: Array, resid_hat: Array, L: float | np.ndarray) -> tuple[Array, Array, np.ndarray]:
        pb = self.problem
        if np.ndim(L) == 0:
            new = pb.prox(point - pb.gradient(resid_hat) / L, 1.0 / L)
        else:  # a step per item, broadcast over its entries
            step = self._per_item(1.0 / L, point)
            new = pb.prox(point - pb.gradient(resid_hat) * step, step)
        new_resid_hat, data = pb.residual_of(new)
        return new, new_resid_hat, data + pb.regulariser(new)

    def _select(self, take: np.ndarray, a: Array, b: Array) -> Array:
        """Per item: `a` where `take`, else `b` (no copy when all or none are taken)."""
        if take.all():
            return a
        if not take.any():
            return b
        return self._bk.xp.where(self._per_item(take, a), a, b)

    def step(self, state: FistaState) -> FistaState:
        t_next = 0.5 * (1.0 + np.sqrt(1.0 + 4.0 * state.t * state.t))
        mu = (state.t - 1.0) / t_next  # 0 on a fresh sequence: the step is then the plain proximal-gradient step
        L = state.lipschitz
        m_maps = self._per_item(mu, state.maps)
        m_resid = self._per_item(mu, state.resid_hat)
        point = state.maps + m_maps * (state.maps - state.prev_maps)
        resid = state.resid_hat + m_resid * (state.resid_hat - state.prev_resid_hat)
        new, new_resid, E = self._prox_grad(point, resid, L)
        limit = state.objective + self._slack * np.abs(state.objective)
        restart = E > np.where(mu > 0, state.objective, limit)
        t_new = t_next
        if restart.any():
            # Restart those items: a proximal-gradient step from the current point, which lowers E whenever
            # L ≥ ‖D‖². It is the first step of a fresh momentum sequence (t₁ = 1), so t becomes t₂.
            t_new = np.where(restart, _T_AFTER_PLAIN_STEP, t_next)
            for _ in range(_MAX_BACKTRACK):
                plain, plain_resid, E_plain = self._prox_grad(state.maps, state.resid_hat, L)
                failed = restart & (E_plain > limit)
                if not failed.any():
                    break
                # L was underestimated (power iteration): a larger L guarantees descent (per item when each
                # item has its own L, so that an item's steps do not depend on the others in its batch)
                L = L * 2.0 if np.ndim(L) == 0 else np.where(failed, 2.0 * L, L)
            else:
                plain, plain_resid, E_plain = state.maps, state.resid_hat, state.objective
            new = self._select(~restart, new, plain)
            new_resid = self._select(~restart, new_resid, plain_resid)
            E = np.where(restart, E_plain, E)
        return FistaState(new, new_resid, E, state.maps, state.resid_hat, t_new, L, state.iteration + 1)

    def converged(self, state: FistaState, previous: FistaState) -> np.ndarray:
        """Per image: E changed by at most tol (relative) in the last iteration."""
        change = np.abs(previous.objective - state.objective)
        return change <= self.config.tol * np.abs(state.objective)
