r"""ADMM for convolutional sparse coding in the Fourier domain (Wohlberg, IEEE TIP 2016).

Circular boundary (split z = x, scaled dual u, over-relaxation α):

.. math::

    \hat x &= (\hat D^H \hat D + \rho I)^{-1} (\hat D^H \hat y + \rho(\hat z - \hat u)) \\
    z &= \operatorname{shrink}_p(\alpha x + (1-\alpha) z + u, \lambda/\rho) \\
    u &\leftarrow u + \alpha x + (1-\alpha) z_{\text{old}} - z

The per-frequency solve is Sherman–Morrison/Woodbury with a factor cached until ρ changes. ρ is balanced
against the normalised primal and dual residuals every ``rho_period`` iterations (Wohlberg 2017). The dual is
kept in both domains (its update is linear), so one rfft and one irfft of the maps are done per iteration, and
the objective is E of the sparse variable z, computed from its Fourier transform.

Valid boundary: mask decoupling (Heide et al. CVPR 2015; SPORCO's ConvBPDNMaskDcpl) splits the circular
synthesis D x = y₀ on the map grid and x = y₁; the data term ½‖P y₀ − y‖² then has an element-wise prox, and
the x-step solves (DᴴD + I) x = Dᴴ(y₀ − u₀) + (y₁ − u₁) with a factor that does not depend on ρ.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from ..backend import Array
from ..config import AdmmConfig
from ..linalg import ShiftedNormalFactor, factor_shifted_normal, solve_shifted_normal
from ..problem import CSCProblem


@dataclass(frozen=True)
class AdmmState:
    """ADMM iterate. ``maps`` is the sparse split variable (z, or y₁ with the mask), and what E is of.

    ``aux``/``aux_dual`` (and their transforms) are y₀ and u₀ of mask decoupling; None for circular.
    """

    maps: Array
    maps_hat: Array
    dual: Array
    dual_hat: Array
    rho: float
    objective: float
    primal_residual: float = math.inf
    dual_residual: float = math.inf
    iteration: int = 0
    aux: Array | None = None
    aux_hat: Array | None = None
    aux_dual: Array | None = None
    aux_dual_hat: Array | None = None


def _norm(xp, a: Array) -> float:
    return math.sqrt(float(xp.sum(a * a, dtype=xp.float64)))


class Admm:
    """ADMM solver; see the module docstring."""

    def __init__(self, problem: CSCProblem, config: AdmmConfig | None = None):
        self.problem = problem
        self.config = config or AdmmConfig()
        self._masked = problem.op.grid.cropped
        self._factor: ShiftedNormalFactor | None = None
        if self._masked:
            self._factor = factor_shifted_normal(problem.op.filters_hat, 1.0)

    @property
    def max_iter(self) -> int:
        return self.config.max_iter

    def _factor_for(self, rho: float) -> ShiftedNormalFactor:
        if self._factor is None or (not self._masked and self._factor.rho != rho):
            self._factor = factor_shifted_normal(self.problem.op.filters_hat, rho)
        return self._factor

    def init(self, maps0: Array | None = None, warm: AdmmState | None = None) -> AdmmState:
        """Start from `maps0` (zeros by default); `warm` carries the dual variables and ρ of a previous run."""
        pb = self.problem
        xp = pb.backend.xp
        op = pb.op
        maps = xp.zeros(pb.maps_shape, dtype=pb.images.dtype) if maps0 is None else maps0
        maps_hat = op.rfft(maps)
        _, data = pb.residual(maps_hat)
        rho = self.config.rho if self.config.rho is not None else 50.0 * pb.lam + 1.0
        compatible = warm is not None and warm.maps.shape == maps.shape
        if compatible:
            rho = warm.rho
            dual, dual_hat = warm.dual, warm.dual_hat
        else:
            dual = xp.zeros_like(maps)
            dual_hat = xp.zeros_like(maps_hat)
        state = AdmmState(maps, maps_hat, dual, dual_hat, rho, data + pb.penalty(maps))
        if not self._masked:
            return state
        aux_hat = op.forward_hat(maps_hat)
        if compatible and warm.aux_dual is not None:
            aux_dual, aux_dual_hat = warm.aux_dual, warm.aux_dual_hat
        else:
            aux_dual = xp.zeros(maps.shape[:1] + (op.n_channels,) + op.map_shape, dtype=maps.dtype)
            aux_dual_hat = xp.zeros_like(aux_hat)
        return replace(state, aux=op.irfft(aux_hat), aux_hat=aux_hat, aux_dual=aux_dual,
                       aux_dual_hat=aux_dual_hat)

    def step(self, state: AdmmState) -> AdmmState:
        new = self._step_masked(state) if self._masked else self._step_circular(state)
        return self._balance_rho(new)

    def _step_circular(self, s: AdmmState) -> AdmmState:
        pb = self.problem
        xp = pb.backend.xp
        a, rho = self.config.relax, s.rho
        x_hat = solve_shifted_normal(self._factor_for(rho), pb.rhs_hat + rho * (s.maps_hat - s.dual_hat))
        x = pb.op.irfft(x_hat)
        xr = a * x + (1 - a) * s.maps
        maps = pb.penalty.prox(xr + s.dual, 1.0 / rho)
        dual = s.dual + xr - maps
        maps_hat = pb.op.rfft(maps)
        dual_hat = s.dual_hat + (a * x_hat + (1 - a) * s.maps_hat) - maps_hat
        _, data = pb.residual(maps_hat)
        r = _norm(xp, x - maps) / max(_norm(xp, x), _norm(xp, maps), 1e-30)
        d = _norm(xp, maps - s.maps) / max(_norm(xp, dual), 1e-30)
        return AdmmState(maps, maps_hat, dual, dual_hat, rho, data + pb.penalty(maps), r, d, s.iteration + 1)

    def _step_masked(self, s: AdmmState) -> AdmmState:
        pb = self.problem
        op = pb.op
        xp = pb.backend.xp
        a, rho = self.config.relax, s.rho
        b_hat = op.adjoint_hat(s.aux_hat - s.aux_dual_hat) + (s.maps_hat - s.dual_hat)
        x_hat = solve_shifted_normal(self._factor_for(rho), b_hat)
        x = op.irfft(x_hat)
        dx_hat = op.forward_hat(x_hat)
        dx = op.irfft(dx_hat)
        dxr = a * dx + (1 - a) * s.aux
        xr = a * x + (1 - a) * s.maps
        mask = op.grid.mask(xp, x.dtype)
        aux = (op.grid.pad(pb.images) + rho * (dxr + s.aux_dual)) / (mask + rho)
        maps = pb.penalty.prox(xr + s.dual, 1.0 / rho)
        aux_dual = s.aux_dual + dxr - aux
        dual = s.dual + xr - maps
        aux_hat = op.rfft(aux)
        maps_hat = op.rfft(maps)
        aux_dual_hat = s.aux_dual_hat + (a * dx_hat + (1 - a) * s.aux_hat) - aux_hat
        dual_hat = s.dual_hat + (a * x_hat + (1 - a) * s.maps_hat) - maps_hat
        _, data = pb.residual(maps_hat)
        primal = math.hypot(_norm(xp, dx - aux), _norm(xp, x - maps))
        scale_p = max(math.hypot(_norm(xp, dx), _norm(xp, x)), math.hypot(_norm(xp, aux), _norm(xp, maps)), 1e-30)
        dual_r = math.hypot(_norm(xp, aux - s.aux), _norm(xp, maps - s.maps))
        scale_d = max(math.hypot(_norm(xp, aux_dual), _norm(xp, dual)), 1e-30)
        return AdmmState(maps, maps_hat, dual, dual_hat, rho, data + pb.penalty(maps), primal / scale_p,
                         dual_r / scale_d, s.iteration + 1, aux, aux_hat, aux_dual, aux_dual_hat)

    def _balance_rho(self, s: AdmmState) -> AdmmState:
        """Residual balancing: scale ρ (and the scaled duals inversely) when the residuals drift apart."""
        cfg = self.config
        if not cfg.adaptive_rho or s.iteration % cfg.rho_period != 0:
            return s
        if s.primal_residual > cfg.rho_ratio * s.dual_residual:
            scale = cfg.rho_scale
        elif s.dual_residual > cfg.rho_ratio * s.primal_residual:
            scale = 1.0 / cfg.rho_scale
        else:
            return s
        inv = 1.0 / scale
        s = replace(s, rho=s.rho * scale, dual=s.dual * inv, dual_hat=s.dual_hat * inv)
        if s.aux_dual is not None:
            s = replace(s, aux_dual=s.aux_dual * inv, aux_dual_hat=s.aux_dual_hat * inv)
        return s

    def objective(self, state: AdmmState) -> float:
        return state.objective

    def maps(self, state: AdmmState) -> Array:
        return state.maps

    def converged(self, state: AdmmState, previous: AdmmState) -> bool:
        tol = self.config.tol
        return state.primal_residual <= tol and state.dual_residual <= tol
