r"""Filter updates with the maps fixed.

.. math:: \min_f \tfrac12 \sum_{n,c} \| P \sum_k g_{kc}\, z_{nk} \circledast S f_{kc} - y_{nc} \|^2
          \quad \text{s.t.} \quad \|f_{kc}\|_2 \le 1 \ (\text{per plane}) \text{ or } \|f_k\|_2 \le 1

* ``fista`` (default): projected FISTA on this problem (the support constraint is built into the s×s
  parametrisation, the norm constraint is the projection); monotone, so the learning objective never rises.
* ``cg``: Zeiler's toolbox: a few conjugate-gradient steps on the normal equations ZᴴPᵀPZ f = ZᴴPᵀy,
  warm-started at the current filters, then every plane (or filter) rescaled to unit norm.
"""

from __future__ import annotations

import numpy as np

from ..backend import Array
from ..config import FilterUpdateConfig, FistaConfig
from ..linalg import conjugate_gradient
from ..operators import Boundary, FilterOperator, parseval_weights
from ..problem import power_lipschitz
from ..prox import normalise_unit, project_unit_ball
from .base import run
from .fista import Fista


class FilterProblem:
    """The filter sub-problem in FISTA's composite form: f = the data term, g = the indicator of the ball.

    Parameters
    ----------
    images : array of shape (N, C, H, W)
    maps : array of shape (N, K, H', W')
    filter_size : int
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional
    norm : {"plane", "filter"}
    """

    def __init__(
        self,
        images: Array,
        maps: Array,
        filter_size: int,
        *,
        boundary: Boundary = "circular",
        connectivity: Array | None = None,
        norm: str = "filter",
    ):
        self.images = images
        self.norm = norm
        self.op = FilterOperator(
            maps, images.shape[-2:], filter_size, boundary=boundary, connectivity=connectivity,
            n_channels=images.shape[1],
        )
        bk = self.op.backend
        self.backend = bk
        self.images_hat = bk.rfft2(self.op.grid.pad(images), self.op.grid.shape)
        xp = bk.xp
        self._weights = parseval_weights(self.op.grid.shape, xp, images.dtype)
        self.shape = (maps.shape[1], images.shape[1], filter_size, filter_size)

    def zeros(self) -> Array:
        return self.backend.xp.zeros(self.shape, dtype=self.images.dtype)

    def residual_of(self, filters: Array) -> tuple[Array, np.ndarray]:
        """(F Pᵀ(P Z f − y), [½‖P Z f − y‖²]): the filters are one item for FISTA."""
        op = self.op
        xp = self.backend.xp
        synth_hat = op.forward_hat(op.filters_to_hat(filters))
        if not op.grid.cropped:
            r_hat = synth_hat - self.images_hat
            power = r_hat.real * r_hat.real + r_hat.imag * r_hat.imag
            data = self.backend.to_host(xp.sum(power * self._weights, dtype=xp.float64))
            return r_hat, np.array([0.5 * float(data)])
        resid = op.grid.crop(self.backend.irfft2(synth_hat, op.grid.shape)) - self.images
        data = self.backend.to_host(xp.sum(resid * resid, dtype=xp.float64))
        return self.backend.rfft2(op.grid.pad(resid), op.grid.shape), np.array([0.5 * float(data)])

    def gradient(self, resid_hat: Array) -> Array:
        return self.op.hat_to_filters(self.op.adjoint_hat(resid_hat))

    def prox(self, v: Array, step: float) -> Array:
        return project_unit_ball(v, self.norm)

    def regulariser(self, filters: Array) -> np.ndarray:
        return np.zeros(1)

    def lipschitz(self) -> float:
        bound = self.op.lipschitz()
        if not self.op.grid.cropped:
            return bound
        return power_lipschitz(lambda f: self.op.adjoint(self.op.forward(f)), self.zeros(), bound)

    def normal(self, filters: Array) -> Array:
        """ZᴴPᵀPZ f (the normal operator of the CG update)."""
        return self.op.adjoint(self.op.forward(filters))


def update_filters(
    images: Array,
    maps: Array,
    filters: Array,
    config: FilterUpdateConfig,
    *,
    boundary: Boundary = "circular",
    connectivity: Array | None = None,
) -> tuple[Array, float]:
    """One filter update from `filters` with `maps` fixed.

    Returns
    -------
    filters : array of shape (K, C, s, s)
        The updated, feasible filters.
    data : float
        ½‖P Z f − y‖² at the returned filters.
    """
    problem = FilterProblem(images, maps, filters.shape[-1], boundary=boundary, connectivity=connectivity,
                            norm=config.norm)
    if config.method == "fista":
        solver = Fista(problem, FistaConfig(max_iter=config.max_iter, tol=0.0))
        result = run(solver, solver.init(project_unit_ball(filters, config.norm)))
        return result.maps, result.objective
    rhs = problem.gradient(problem.residual_of(problem.zeros())[0]) * -1.0  # ZᴴPᵀy
    new = conjugate_gradient(problem.normal, rhs, filters, config.max_iter)
    new = normalise_unit(new, config.norm)
    if problem.op.connectivity is not None:
        new = new * problem.backend.xp.asarray(problem.op.connectivity, dtype=new.dtype)[:, :, None, None]
    return new, float(problem.residual_of(new)[1].sum())
