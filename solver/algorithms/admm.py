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

from dataclasses import dataclass, replace

import numpy as np

from .. import kernels
from ..backend import Array
from ..config import AdmmConfig
from ..linalg import ShiftedNormalFactor, factor_shifted_normal, solve_shifted_normal
from ..problem import CSCProblem, sq_norm_per_item


@dataclass(frozen=True)
class AdmmState:
    """ADMM iterate. ``maps`` is the sparse split variable (z, or y₁ with the mask), and what E is of.

    ``rho``, ``objective`` and the two relative residuals are host float64 arrays with one entry per image:
    images are independent problems, each with its own penalty, so a batch split over several workers follows
    the same trajectories. ``aux``/``aux_dual`` (and their transforms) are y₀ and u₀ of mask decoupling; None
    for the circular boundary.
    """

    maps: Array
    maps_hat: Array
    dual: Array
    dual_hat: Array
    rho: np.ndarray
    objective: np.ndarray
    primal_residual: np.ndarray
    dual_residual: np.ndarray
    iteration: int = 0
    aux: Array | None = None
    aux_hat: Array | None = None
    aux_dual: Array | None = None
    aux_dual_hat: Array | None = None


def _norms(*arrays: Array) -> np.ndarray:
    """Per-image Euclidean norm of the concatenation of `arrays` (each (N, ...))."""
    return np.sqrt(sum(sq_norm_per_item(a) for a in arrays))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.maximum(den, 1e-30)


class Admm:
    """ADMM solver; see the module docstring."""

    def __init__(self, problem: CSCProblem, config: AdmmConfig | None = None):
        self.problem = problem
        self.config = config or AdmmConfig()
        self._masked = problem.op.grid.cropped
        self._factor: ShiftedNormalFactor | None = None
        lam = problem.lam
        self._rho_target = (
            self.config.rho_target if self.config.rho_target is not None else 1.0 + 18.3 ** (np.log10(lam) + 1.0)
        )
        if self._masked:  # mask decoupling solves (DᴴD + I): the shift does not depend on ρ
            self._factor = factor_shifted_normal(problem.op.filters_hat, 1.0)
        op = problem.op
        self._fused = (
            self.config.fused and not self._masked and kernels.available() and problem.backend.name == "numpy"
            and op.n_channels == 1 and problem.p == 1.0 and problem.images.dtype in (np.float32, np.float64)
        )
        if self._fused:  # flattened views and the full Parseval weights the kernels read
            U, V = problem.images_hat.shape[-2:]
            self._a = np.ascontiguousarray(op.filters_hat[:, 0].reshape(op.n_filters, U * V))
            self._y_hat = np.ascontiguousarray(problem.images_hat[:, 0].reshape(-1, U * V))
            self._w = np.ascontiguousarray(np.broadcast_to(problem._weights, (U, V)).reshape(U * V))

    @property
    def max_iter(self) -> int:
        return self.config.max_iter

    def _factor_for(self, rho: np.ndarray) -> ShiftedNormalFactor:
        if self._masked:
            return self._factor
        if self._factor is None or not np.array_equal(self._factor.rho, rho):
            self._factor = factor_shifted_normal(self.problem.op.filters_hat, rho)
        return self._factor

    def _rho(self, rho: np.ndarray, like: Array) -> Array:
        return self.problem.backend.asarray(rho.reshape(-1, 1, 1, 1), dtype=like.real.dtype)

    def init(self, maps0: Array | None = None, warm: AdmmState | None = None) -> AdmmState:
        """Start from `maps0` (zeros by default); `warm` carries the dual variables and ρ of a previous run."""
        pb = self.problem
        xp = pb.backend.xp
        op = pb.op
        maps = pb.zeros() if maps0 is None else maps0
        maps_hat = op.rfft(maps)
        _, data = pb.residual(maps_hat)
        n = maps.shape[0]
        rho0 = self.config.rho if self.config.rho is not None else 50.0 * pb.lam + 1.0
        compatible = warm is not None and warm.maps.shape == maps.shape
        if compatible:
            rho, dual, dual_hat = warm.rho, warm.dual, warm.dual_hat
        else:
            rho, dual, dual_hat = np.full(n, rho0), xp.zeros_like(maps), xp.zeros_like(maps_hat)
        inf = np.full(n, np.inf)
        state = AdmmState(maps, maps_hat, dual, dual_hat, rho, data + pb.regulariser(maps), inf, inf)
        if not self._masked:
            return state
        aux_hat = op.forward_hat(maps_hat)
        if compatible and warm.aux_dual is not None:
            aux_dual, aux_dual_hat = warm.aux_dual, warm.aux_dual_hat
        else:
            aux_dual = xp.zeros((n, op.n_channels) + op.map_shape, dtype=maps.dtype)
            aux_dual_hat = xp.zeros_like(aux_hat)
        return replace(state, aux=op.irfft(aux_hat), aux_hat=aux_hat, aux_dual=aux_dual, aux_dual_hat=aux_dual_hat)

    def step(self, state: AdmmState) -> AdmmState:
        if self._masked:
            new = self._step_masked(state)
        elif self._fused:
            new = self._step_fused(state)
        else:
            new = self._step_circular(state)
        return self._balance_rho(new)

    def _step_fused(self, s: AdmmState) -> AdmmState:
        """:meth:`_step_circular` for one channel and p = 1 with the fused kernels of :mod:`solver.kernels`."""
        pb = self.problem
        N, K = s.maps.shape[:2]
        U, V = s.maps_hat.shape[-2:]
        factor = self._factor_for(s.rho)
        inv = np.broadcast_to(factor.inverse.reshape(-1, U * V), (N, U * V))
        flat_hat = (N, K, U * V)
        x_hat = kernels.sm_solve(self._a, self._y_hat, s.maps_hat.reshape(flat_hat), s.dual_hat.reshape(flat_hat),
                                 inv, s.rho).reshape(s.maps_hat.shape)
        x = pb.op.irfft(x_hat)
        flat = (N, K, -1)
        maps, dual, sums = kernels.admm_spatial(x.reshape(flat), s.maps.reshape(flat), s.dual.reshape(flat),
                                                self.config.relax, pb.lam / s.rho)
        maps, dual = maps.reshape(s.maps.shape), dual.reshape(s.maps.shape)
        maps_hat = pb.op.rfft(maps)
        dual_hat, twice_data = kernels.admm_fourier(x_hat.reshape(flat_hat), s.maps_hat.reshape(flat_hat),
                                                    maps_hat.reshape(flat_hat), s.dual_hat.reshape(flat_hat),
                                                    self.config.relax, self._a, self._y_hat, self._w)
        primal = _ratio(np.sqrt(sums[:, 0]), np.maximum(np.sqrt(sums[:, 1]), np.sqrt(sums[:, 2])))
        dual_r = _ratio(np.sqrt(sums[:, 3]), np.sqrt(sums[:, 4]))
        E = 0.5 * twice_data + pb.lam * sums[:, 5]
        return AdmmState(maps, maps_hat, dual, dual_hat.reshape(s.maps_hat.shape), s.rho, E, primal, dual_r,
                         s.iteration + 1)

    def _step_circular(self, s: AdmmState) -> AdmmState:
        pb = self.problem
        a = self.config.relax
        rho = self._rho(s.rho, s.maps_hat)
        x_hat = solve_shifted_normal(self._factor_for(s.rho), pb.rhs_hat + rho * (s.maps_hat - s.dual_hat))
        x = pb.op.irfft(x_hat)
        xr = a * x + (1 - a) * s.maps
        maps = pb.penalty.prox(xr + s.dual, 1.0 / self._rho(s.rho, x))
        dual = s.dual + xr - maps
        maps_hat = pb.op.rfft(maps)
        dual_hat = s.dual_hat + (a * x_hat + (1 - a) * s.maps_hat) - maps_hat
        _, data = pb.residual(maps_hat)
        primal = _ratio(_norms(x - maps), np.maximum(_norms(x), _norms(maps)))
        dual_r = _ratio(_norms(maps - s.maps), _norms(dual))
        E = data + pb.regulariser(maps)
        return AdmmState(maps, maps_hat, dual, dual_hat, s.rho, E, primal, dual_r, s.iteration + 1)

    def _step_masked(self, s: AdmmState) -> AdmmState:
        pb = self.problem
        op = pb.op
        xp = pb.backend.xp
        a = self.config.relax
        b_hat = op.adjoint_hat(s.aux_hat - s.aux_dual_hat) + (s.maps_hat - s.dual_hat)
        x_hat = solve_shifted_normal(self._factor_for(s.rho), b_hat)
        x = op.irfft(x_hat)
        dx_hat = op.forward_hat(x_hat)
        dx = op.irfft(dx_hat)
        dxr = a * dx + (1 - a) * s.aux
        xr = a * x + (1 - a) * s.maps
        rho = self._rho(s.rho, x)
        aux = (op.grid.pad(pb.images) + rho * (dxr + s.aux_dual)) / (op.grid.mask(xp, x.dtype) + rho)
        maps = pb.penalty.prox(xr + s.dual, 1.0 / rho)
        aux_dual = s.aux_dual + dxr - aux
        dual = s.dual + xr - maps
        aux_hat = op.rfft(aux)
        maps_hat = op.rfft(maps)
        aux_dual_hat = s.aux_dual_hat + (a * dx_hat + (1 - a) * s.aux_hat) - aux_hat
        dual_hat = s.dual_hat + (a * x_hat + (1 - a) * s.maps_hat) - maps_hat
        _, data = pb.residual(maps_hat)
        primal = _ratio(_norms(dx - aux, x - maps), np.maximum(_norms(dx, x), _norms(aux, maps)))
        dual_r = _ratio(_norms(aux - s.aux, maps - s.maps), _norms(aux_dual, dual))
        E = data + pb.regulariser(maps)
        return AdmmState(maps, maps_hat, dual, dual_hat, s.rho, E, primal, dual_r, s.iteration + 1,
                         aux, aux_hat, aux_dual, aux_dual_hat)

    def _balance_rho(self, s: AdmmState) -> AdmmState:
        """Residual balancing per image (Wohlberg 2015): when the relative primal and dual residuals r and s
        drift from the target ratio ξ by more than μ, scale ρ by √(r/(ξs)) (at most τ) and the scaled duals
        inversely."""
        cfg = self.config
        if not cfg.adaptive_rho or s.iteration % cfg.rho_period != 0:
            return s
        r, d, xi, mu, tau = s.primal_residual, s.dual_residual, self._rho_target, cfg.rho_ratio, cfg.rho_scale
        up = r > xi * mu * d
        down = d > (mu / xi) * r
        if not (up.any() or down.any()):
            return s
        if cfg.rho_autoscale:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(up, r / (xi * d), (xi * d) / r)
            step = np.where(np.isfinite(ratio) & (ratio > 0), np.minimum(np.sqrt(ratio), tau), tau)
        else:
            step = np.full_like(r, tau)
        scale = np.where(up, step, np.where(down, 1.0 / step, 1.0))
        inv_dual = self._rho(1.0 / scale, s.dual)
        inv_hat = self._rho(1.0 / scale, s.dual_hat)
        s = replace(s, rho=s.rho * scale, dual=s.dual * inv_dual, dual_hat=s.dual_hat * inv_hat)
        if s.aux_dual is not None:
            s = replace(s, aux_dual=s.aux_dual * inv_dual, aux_dual_hat=s.aux_dual_hat * inv_hat)
        return s

    def objective(self, state: AdmmState) -> float:
        return float(state.objective.sum())

    def per_item_objective(self, state: AdmmState) -> np.ndarray:
        return state.objective

    def maps(self, state: AdmmState) -> Array:
        return state.maps

    def converged(self, state: AdmmState, previous: AdmmState) -> bool:
        tol = self.config.tol
        return bool(np.all(state.primal_residual <= tol) and np.all(state.dual_residual <= tol))
