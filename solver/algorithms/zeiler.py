r"""Zeiler et al. (CVPR 2010): auxiliary variable with continuation in β.

Split objective at a fixed β (x is the auxiliary, sparse variable):

.. math:: C_\beta(z, x) = \tfrac12 \|P D z - y\|^2 + \tfrac\beta2 \|z - x\|^2 + \lambda \|x\|_p^p

Each stage fixes β = β₀·m^j (toolbox: β₀ = 1, m = 10, 6 stages) and alternates

* x-step: ``x = shrink_p(z, λ/β)``, exact;
* z-step: ``(DᴴPᵀPD + βI) z = DᴴPᵀy + βx``: exactly per frequency by Woodbury (circular), or by a few
  conjugate-gradient steps warm-started at z (valid boundary, and ``z_solver='cg'`` for the toolbox's CG).

Both steps are minimisations of C_β (CG from a warm start lowers the quadratic), so C_β never increases
within a stage. The toolbox does the x-step first; here a step is (z-step, then x-step with the β of the next
iteration), which is the same sequence with the state cut at another place. The returned maps are x, and
E(x) is the reported objective.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Array
from ..config import ZeilerConfig
from ..operators.linalg import conjugate_gradient
from .base import SolverBase
from .problem import CSCProblem


@dataclass(frozen=True)
class ZeilerState:
    """z (coefficients), x = shrink(z) (sparse auxiliary; the maps), and the position in the β schedule."""

    z: Array
    x: Array
    x_hat: Array
    stage: int
    objective: np.ndarray  # E(x) per image, host float64 (N,)
    iteration: int = 0


class Zeiler(SolverBase):
    """The 2010 inference; see the module docstring."""

    def __init__(self, problem: CSCProblem, config: ZeilerConfig | None = None):
        self.problem = problem
        self.config = config or ZeilerConfig()
        self._exact = not problem.op.grid.cropped and self.config.z_solver == "exact"
        self._factors: dict[int, object] = {}

    def beta(self, stage: int) -> float:
        return self.config.beta0 * self.config.beta_factor**stage

    def stage_of(self, iteration: int) -> int:
        """β stage in force for the x-step that ends `iteration` (iteration 0: the initial x)."""
        return self.config.stage_of(iteration)

    def _x_step(self, z: Array, stage: int) -> tuple[Array, Array, np.ndarray]:
        pb = self.problem
        x = pb.penalty.prox(z, 1.0 / self.beta(stage))
        x_hat = pb.op.rfft(x)
        _, data = pb.residual(x_hat)
        return x, x_hat, data + pb.regulariser(x)

    def init(self, maps0: Array | None = None, warm: object = None) -> ZeilerState:
        """Start from `maps0` as both z and x (zeros by default, as in the toolbox, where the first x-step of
        z = 0 gives x = 0). A warm start keeps the given sparse maps as x instead of shrinking them again, so the
        run never returns worse maps than it was given; β restarts at β0 (as in the toolbox), `warm` is unused."""
        pb = self.problem
        xp = pb.backend.xp
        z = xp.zeros(pb.maps_shape, dtype=pb.images.dtype) if maps0 is None else maps0
        x_hat = pb.op.rfft(z)
        _, data = pb.residual(x_hat)
        return ZeilerState(z, z, x_hat, 0, data + pb.regulariser(z))

    def _z_step(self, state: ZeilerState) -> Array:
        pb = self.problem
        beta = self.beta(state.stage)
        if self._exact:
            if state.stage not in self._factors:
                self._factors[state.stage] = pb.op.factor_shifted_normal(beta)
            z_hat = pb.op.solve_shifted_normal(self._factors[state.stage], pb.rhs_hat + beta * state.x_hat)
            return pb.op.irfft(z_hat)
        op = pb.op
        rhs = pb.op.irfft(pb.rhs_hat) + beta * state.x

        def normal(v: Array) -> Array:
            return op.adjoint(op.forward(v)) + beta * v

        return conjugate_gradient(normal, rhs, state.z, self.config.cg_iter, per_item=True)

    def step(self, state: ZeilerState) -> ZeilerState:
        z = self._z_step(state)
        stage = self.stage_of(state.iteration + 1)
        x, x_hat, E = self._x_step(z, stage)
        return ZeilerState(z, x, x_hat, stage, E, state.iteration + 1)

    def split_objective(self, state: ZeilerState) -> float:
        """C_β(z, x) at the state's β."""
        pb = self.problem
        xp = pb.backend.xp
        d = state.z - state.x
        coupling = 0.5 * self.beta(state.stage) * float(xp.sum(d * d, dtype=xp.float64))
        _, data = pb.residual(pb.op.rfft(state.z))
        return float(data.sum()) + coupling + pb.penalty(state.x)

    def maps(self, state: ZeilerState) -> Array:
        return state.x

    def converged(self, state: ZeilerState, previous: ZeilerState) -> np.ndarray:
        return np.zeros(np.shape(state.objective), dtype=bool)  # the β schedule fixes the number of iterations
