r"""The convolutional sparse coding problem for fixed filters, and its objective.

.. math::

    E(z) = \tfrac12 \sum_n \sum_c \| (D z)[n, c] - y[n, c] \|^2 + \lambda \sum_n \sum_k \|z[n, k]\|_p^p

The inference algorithms share this object: the Fourier transform of the (zero-padded) images, ``Dᴴy``,
and the residual of a point given in the Fourier domain on the map grid.

:class:`PixelCodingProblem` is the 2011 model's coding problem of layer l (Zeiler, Taylor & Fergus, ICCV 2011):
the layer reconstructs the pixels through the frozen layers below (:class:`~solver.operators.pixel_path.PixelPath`,
:math:`R_l = B_l F_l`), under the constraint of at most one non-zero per pooling block of its maps,

.. math:: \min_{z_l} \tfrac12 \| R_l z_l - y \|^2 + \lambda_l \|z_l\|_p^p.

Inference is the 2011 ISTA: a gradient step on the data term through :math:`R_l^\top` (adjoint convolutions and
selection at the switches on the way up), the shrinkage, then 3-D pooling and unpooling of z_l (keep each block's
largest entry). Shrinkage then keep-the-largest is the *exact* proximal map of the penalty plus the block
constraint: keeping entry j of a block instead of none lowers the prox objective by an amount that grows with
|v_j| (for p = 1, ½(|v_j| − λ)²₊), so the best single survivor is the largest. Proximal gradient with step 1/L,
L ≥ ‖R_l‖², therefore never raises the objective, even though the constraint is not convex; it runs inside
:class:`~solver.algorithms.fista.Fista`, whose function-value restart falls back to that plain step whenever the
momentum step would not descend, so the accelerated iteration is monotone too.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from ..backend import Array, Backend, backend_of
from ..operators.convolution import ConvOperator, parseval_weights
from ..operators.pixel_path import PixelPath, Pool
from ..operators.pooling import keep_block_maxima
from ..operators.prox import LpPenalty, shrink
from ..validation import as_filters, as_images, check_boundary, check_connectivity, check_lam, check_p

#: Power iterations for the per-image step of the 2011 inference, from ones; and from the vectors of the previous
#: outer iteration (the filters moved a little since).
POWER_ITER = 20
POWER_ITER_WARM = 4


class CSCProblem:
    """One sparse coding problem: images, the synthesis operator D, and the penalty ``λ‖·‖_p^p``.

    Parameters
    ----------
    images : array of shape (N, C, H, W)
        On the operator's backend and in its dtype.
    op : ConvOperator
    penalty : LpPenalty
    """

    def __init__(self, images: Array, op: ConvOperator, penalty: LpPenalty, *, images_hat: Array | None = None):
        self.images = images
        self.op = op
        self.penalty = penalty
        self.backend = op.backend
        self._residual = GridResidual(images, op.grid, op.backend, images_hat=images_hat)
        self.images_hat = self._residual.images_hat  # F Pᵀ y on the map grid
        self._weights = self._residual.weights
        self.n_images = images.shape[0]

    @functools.cached_property
    def rhs_hat(self) -> Array:
        """F Dᴴ y, (N, K, U, V): as large as the maps, so made on first use (the fused ADMM never asks)."""
        return self.op.adjoint_hat(self.images_hat)

    @property
    def lam(self) -> float:
        return self.penalty.lam

    @property
    def p(self) -> float:
        return self.penalty.p

    @property
    def maps_shape(self) -> tuple[int, int, int, int]:
        return (self.n_images, self.op.n_filters) + self.op.map_shape

    def residual(self, maps_hat: Array) -> tuple[Array, np.ndarray]:
        """The residual of maps given in the Fourier domain.

        Returns
        -------
        resid_hat : array of shape (N, C, U, V)
            F Pᵀ(P D z − y): the residual zero-padded to the map grid, in the Fourier domain. Affine in z, so
            momentum combinations of residuals are residuals of the combined points.
        data : ndarray of shape (N,)
            ½‖P D z[n] − y[n]‖² per image (host float64).
        """
        return self._residual(self.op.forward_hat(maps_hat))

    def gradient(self, resid_hat: Array) -> Array:
        """Dᴴ Pᵀ r in the spatial domain, (N, K, H', W'), from the Fourier residual."""
        return self.op.irfft(self.op.adjoint_hat(resid_hat))

    # The composite-problem interface of FISTA (smooth part via `residual_of`/`gradient`, prox part) -------
    def zeros(self) -> Array:
        return self.backend.xp.zeros(self.maps_shape, dtype=self.images.dtype)

    def residual_of(self, maps: Array) -> tuple[Array, float]:
        """:meth:`residual` of spatial maps."""
        return self.residual(self.op.rfft(maps))

    def prox(self, v: Array, step: float) -> Array:
        return self.penalty.prox(v, step)

    def lipschitz(self) -> float:
        """‖P D‖²: exact per frequency (circular); power iteration capped by the circular bound (valid)."""
        if not self.op.grid.cropped:
            return self.op.lipschitz()
        return power_lipschitz(lambda v: self.op.adjoint(self.op.forward(v)), self.zeros()[:1], self.op.lipschitz())

    def objective(self, maps: Array) -> float:
        """E(z) computed directly in the spatial domain (independent of any solver state)."""
        resid = self.op.forward(maps) - self.images
        return 0.5 * float(sq_norm_per_item(resid).sum()) + self.penalty(maps)

    def regulariser(self, maps: Array) -> np.ndarray:
        return self.penalty.per_item(maps)


class GridResidual:
    """Images on the map grid and the residual of a synthesis given in the Fourier domain.

    Shared by the map problem (:class:`CSCProblem`) and the filter problem: both synthesise images on the map
    grid as ``synth_hat`` (N, C, U, V) and need F Pᵀ(P synth − y) with ½‖P synth − y‖² per image; by
    Parseval for the circular boundary, through the spatial crop for the valid one.
    """

    def __init__(self, images: Array, grid: Any, backend: Backend, *, images_hat: Array | None = None):
        self.images = images
        self.grid = grid
        self.backend = backend
        # `images_hat`: F Pᵀ y when the caller keeps it (the same images on the same grid)
        self.images_hat = backend.rfft2(grid.pad(images), grid.shape) if images_hat is None else images_hat
        xp = backend.xp
        self.weights = parseval_weights(grid.shape, xp, xp.real(self.images_hat[..., :1]).dtype)

    def sq_norm_hat(self, a_hat: Array) -> np.ndarray:
        """‖a[n]‖² per image of a real array on the map grid given by its rfft (Parseval), host float64 (N,)."""
        xp = self.backend.xp
        power = (a_hat.real * a_hat.real + a_hat.imag * a_hat.imag) * self.weights
        return self.backend.to_host(xp.sum(power.reshape(power.shape[0], -1), axis=1, dtype=xp.float64))

    def __call__(self, synth_hat: Array) -> tuple[Array, np.ndarray]:
        """(F Pᵀ(P synth − y), ½‖P synth[n] − y[n]‖² per image as host float64 (N,))."""
        if not self.grid.cropped:
            resid_hat = synth_hat - self.images_hat
            return resid_hat, 0.5 * self.sq_norm_hat(resid_hat)
        resid = self.grid.crop(self.backend.irfft2(synth_hat, self.grid.shape)) - self.images
        return self.backend.rfft2(self.grid.pad(resid), self.grid.shape), 0.5 * sq_norm_per_item(resid)


def sq_norm_per_item(a: Array) -> np.ndarray:
    """Σ a² over all axes but the first, as host float64 (N,)."""
    bk = backend_of(a)
    xp = bk.xp
    return bk.to_host(xp.sum((a * a).reshape(a.shape[0], -1), axis=1, dtype=xp.float64))


def power_lipschitz(normal, like: Array, bound: float, n_iter: int = 30) -> float:
    """Largest eigenvalue of the PSD map `normal` by power iteration from ones shaped like `like`, with a 2 %
    margin and capped by a known upper `bound` (FISTA still checks descent, so an underestimate is safe)."""
    xp = backend_of(like).xp
    v = xp.ones_like(like)
    v = v / math.sqrt(float(xp.sum(v * v, dtype=xp.float64)))
    lam = 0.0
    for _ in range(n_iter):
        w = normal(v)
        norm = math.sqrt(float(xp.sum(w * w, dtype=xp.float64)))
        if norm == 0.0:
            break
        lam, v = norm, w / norm
    return min(1.02 * lam, bound) if lam > 0 else bound


def objective(
    images: Array,
    maps: Array,
    filters: Array,
    lam: float,
    *,
    p: float = 1.0,
    boundary: str = "circular",
    connectivity: Array | None = None,
) -> float:
    """E(z, f) of ``docs/design.md`` section 1 for arrays already in (N, C, H, W), (N, K, H', W'), (K, C, s, s) form.

    Parameters
    ----------
    images : array of shape (N, C, H, W)
    maps : array of shape (N, K, H', W')
    filters : array of shape (K, C, s, s)
    lam, p : float
        λ and the sparsity exponent.
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional

    Returns
    -------
    float
        ½ Σ ‖ŷ − y‖² + λ Σ ‖z‖_p^p.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import objective
    >>> images = np.ones((1, 1, 4, 4))
    >>> objective(images, np.zeros((1, 2, 4, 4)), np.ones((2, 1, 2, 2)), 0.1)
    8.0
    """
    lam, p, boundary = check_lam(lam), check_p(p), check_boundary(boundary)
    y = as_images(images)
    bk = backend_of(y)
    f = as_filters(filters, y.shape[1], y.shape[-2:], y.dtype)
    if len(np.shape(maps)) != 4:
        raise ValueError(f"maps must have shape (N, K, H', W'), got shape {tuple(np.shape(maps))}")
    z = as_images(maps, "maps")
    op = ConvOperator(
        f, y.shape[-2:], boundary=boundary, connectivity=check_connectivity(connectivity, *f.shape[:2], bk)
    )
    problem = CSCProblem(y, op, LpPenalty(lam, p))
    if tuple(z.shape) != problem.maps_shape:
        raise ValueError(
            f"maps must have shape {problem.maps_shape} for these images, filters and boundary {boundary!r}, "
            f"got {tuple(z.shape)}"
        )
    return problem.objective(z)


class PixelCodingProblem:
    r"""The 2011 coding problem of one layer, in the composite form :class:`~solver.algorithms.fista.Fista`
    solves: smooth part ½‖B F z − y‖² (spatial residual, affine in z), prox = shrink then keep the block maxima.

    Parameters
    ----------
    images : array of shape (N, C_1, H, W)
        The preprocessed pixels, on the backend and in the dtype of the operators.
    op : ConvOperator
        F_l, from layer l's input space (``path.input_shape``) to its maps.
    path : PixelPath
    penalty : LpPenalty
    pool : (int, int, int) or None
        Layer l's own pooling (the block constraint).
    """

    def __init__(
        self,
        images: Array,
        op: ConvOperator,
        path: PixelPath,
        penalty: LpPenalty,
        pool: Pool | None,
        *,
        power_start: Array | None = None,
        power_iter: int = POWER_ITER,
    ):
        self.images = images
        self.op = op
        self.path = path
        self.penalty = penalty
        self.pool = pool
        self.backend = op.backend
        self.maps_shape = (int(images.shape[0]), op.n_filters) + op.map_shape
        self.power_start = power_start
        self.power_iter = power_iter
        self.power_vector: Array | None = None  # the last power-iteration vector (to warm-start the next one)

    def synthesize(self, maps: Array) -> Array:
        """R z = B F z: (N, K_l, H_l', W_l') -> (N, C_1, H, W)."""
        return self.path.forward(self.op.forward(maps))

    def normal(self, maps: Array) -> Array:
        return self.gradient(self.synthesize(maps))

    # Fista's composite-problem interface -----------------------------------------------------------------------
    def zeros(self) -> Array:
        return self.backend.xp.zeros(self.maps_shape, dtype=self.images.dtype)

    def residual_of(self, maps: Array) -> tuple[Array, np.ndarray]:
        """(R z − y, ½‖R z[n] − y[n]‖² per image as host float64)."""
        resid = self.synthesize(maps) - self.images
        return resid, 0.5 * sq_norm_per_item(resid)

    def gradient(self, resid: Array) -> Array:
        """Rᵀ r = Fᵀ Bᵀ r."""
        return self.op.adjoint(self.path.adjoint(resid))

    def prox(self, v: Array, step: float) -> Array:
        return keep_block_maxima(shrink(v, self.penalty.lam * step, self.penalty.p), self.pool)

    def regulariser(self, maps: Array) -> np.ndarray:
        return self.penalty.per_item(maps)

    def lipschitz(self) -> np.ndarray:
        """‖R_n‖² per image n (each has switches of its own) by ``power_iter`` power iterations from
        ``power_start`` (ones by default), with a 2 % margin and capped by Π‖F_j‖², as host float64 (N,). An
        image's step never depends on the other images of its batch, so a shard of any size follows the same
        trajectory; an underestimate is safe (FISTA doubles an L that fails to descend)."""
        xp = self.backend.xp
        bound = self.path.bound * self.op.lipschitz()
        start = self.power_start
        v = xp.ones(self.maps_shape, dtype=self.images.dtype) if start is None else start
        lam = np.zeros(self.maps_shape[0])
        for _ in range(self.power_iter):
            v = v / xp.asarray(np.maximum(np.sqrt(sq_norm_per_item(v)), 1e-300).reshape(-1, 1, 1, 1), dtype=v.dtype)
            w = self.normal(v)
            lam = np.sqrt(sq_norm_per_item(w))
            if not lam.any():
                break
            v = w
        self.power_vector = v
        return np.where(lam > 0, np.minimum(1.02 * lam, bound), bound)

    def objective(self, maps: Array) -> float:
        """E(z) = ½‖R z − y‖² + λ‖z‖_p^p, computed directly (z should satisfy the block constraint)."""
        _, data = self.residual_of(maps)
        return float(data.sum()) + self.penalty(maps)
