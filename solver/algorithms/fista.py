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
from dataclasses import dataclass, replace
from typing import Any

from ..backend import Array, backend_of
from ..config import FistaConfig

_MAX_BACKTRACK = 30
_T_AFTER_PLAIN_STEP = 0.5 * (1.0 + math.sqrt(5.0))


@dataclass(frozen=True)
class FistaState:
    """Current iterate x with its Fourier residual, the previous one (for momentum), t and L."""

    maps: Array
    resid_hat: Array
    objective: float
    prev_maps: Array
    prev_resid_hat: Array
    t: float
    lipschitz: float
    iteration: int = 0


class Fista:
    """FISTA solver; see the module docstring."""

    def __init__(self, problem: Any, config: FistaConfig | None = None):
        self.problem = problem
        self.config = config or FistaConfig()
        self._lipschitz = max(problem.lipschitz(), 1e-12)
        dtype = problem.zeros().dtype
        # The objective is evaluated from arrays of this dtype: changes below this are round-off, not ascent.
        self._slack = 100 * float(backend_of(problem.zeros()).xp.finfo(dtype).eps)

    @property
    def max_iter(self) -> int:
        return self.config.max_iter

    def init(self, maps0: Array | None = None, warm: Any = None) -> FistaState:
        pb = self.problem
        x = pb.zeros() if maps0 is None else maps0
        resid_hat, data = pb.residual_of(x)
        return FistaState(x, resid_hat, data + pb.regulariser(x), x, resid_hat, 1.0, self._lipschitz)

    def _prox_grad(self, point: Array, resid_hat: Array, L: float) -> tuple[Array, Array, float]:
        pb = self.problem
        new = pb.prox(point - pb.gradient(resid_hat) / L, 1.0 / L)
        new_resid_hat, data = pb.residual_of(new)
        return new, new_resid_hat, data + pb.regulariser(new)

    def step(self, state: FistaState) -> FistaState:
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * state.t * state.t))
        mu = (state.t - 1.0) / t_next
        L = state.lipschitz
        if mu > 0:
            point = state.maps + mu * (state.maps - state.prev_maps)
            resid = state.resid_hat + mu * (state.resid_hat - state.prev_resid_hat)
            new, new_resid, E = self._prox_grad(point, resid, L)
            if E <= state.objective:
                return FistaState(new, new_resid, E, state.maps, state.resid_hat, t_next, L, state.iteration + 1)
        # Restart: a proximal-gradient step from the current point, which lowers E whenever L ≥ ‖D‖². It is the
        # first step of a fresh momentum sequence (t₁ = 1), so the next step uses t₂ = (1 + √5)/2.
        for _ in range(_MAX_BACKTRACK):
            new, new_resid, E = self._prox_grad(state.maps, state.resid_hat, L)
            if E <= state.objective + self._slack * abs(state.objective):
                break
            L *= 2.0
        else:
            return replace(state, t=1.0, iteration=state.iteration + 1)
        return FistaState(new, new_resid, E, state.maps, state.resid_hat, _T_AFTER_PLAIN_STEP, L, state.iteration + 1)

    def objective(self, state: FistaState) -> float:
        return state.objective

    def maps(self, state: FistaState) -> Array:
        return state.maps

    def converged(self, state: FistaState, previous: FistaState) -> bool:
        # A step that changed nothing because the backtracking gave up (t == 1) is not evidence of convergence.
        return state.t > 1.0 and abs(previous.objective - state.objective) <= self.config.tol * abs(state.objective)
