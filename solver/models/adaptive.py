r"""The 2011 Adaptive Deconvolutional Network: every layer reconstructs the pixels through the frozen layers below
it, with 3-D max pooling and switches between layers (Zeiler, Taylor & Fergus, ICCV 2011; ``notes/zeiler.md`` §8).

With :math:`F_j` the synthesis of layer j (:class:`~solver.operators.convolution.ConvOperator`) and :math:`U_{s_j}` the
unpooling at layer j's switches (:func:`~solver.operators.pooling.unpool3d`), layer l codes the preprocessed images y by

.. math:: R_l = B_l F_l, \qquad B_l = F_1 U_{s_1} F_2 U_{s_2} \cdots F_{l-1} U_{s_{l-1}},

.. math:: \min_{z_l} \tfrac12 \| R_l z_l - y \|^2 + \lambda_l \|z_l\|_p^p
          \quad \text{s.t. at most one non-zero per pooling block of } z_l

(:math:`B_1` is the identity; a layer without pooling has :math:`U = I` and no block constraint). The lower
switches are fixed: those of the maps the layers below found for the same images (a bottom-up pass).

Inference is the 2011 ISTA: a gradient step on the data term through :math:`R_l^\top` (adjoint convolutions and
selection at the switches on the way up), the shrinkage, then 3-D pooling and unpooling of z_l (keep each block's
largest entry). Shrinkage then keep-the-largest is the *exact* proximal map of the penalty plus the block
constraint: keeping entry j of a block instead of none lowers the prox objective by an amount that grows with
|v_j| (for p = 1, ½(|v_j| − λ)²₊), so the best single survivor is the largest. Proximal gradient with step 1/L,
L ≥ ‖R_l‖², therefore never raises the objective, even though the constraint is not convex; we run it inside
:class:`~solver.algorithms.fista.Fista`, whose function-value restart falls back to that plain step whenever the
momentum step would not descend, so the accelerated iteration is monotone too.

Learning layer l (:class:`PixelShard`, driven by :func:`solver.models.learn.alternate` like any shard): with z_l and
every switch fixed, E is quadratic in f_l and its gradient is the correlation of z_l with the pixel residual
carried up through the layers below, :math:`Z_l^\top B_l^\top (B_l Z_l f_l - y)`; the projected-FISTA (or CG)
filter update of :mod:`solver.algorithms.filter_update` runs on it unchanged. The objective recorded after each
outer iteration is this pixel-space E, and it never increases.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..algorithms.base import run
from ..algorithms.fista import Fista
from ..algorithms.problem import sq_norm_per_item
from ..backend import Array, Backend, backend_of, get_backend
from ..config import FistaConfig, LearnConfig
from ..operators.convolution import ConvOperator, FilterOperator, map_shape
from ..operators.pooling import pool3d, pooled_shape, select3d, unpool3d
from ..operators.prox import LpPenalty, shrink
from .shard import CodeStats, iterate_steps, keep_better

Pool = tuple[int, int, int]
_POWER_ITER = 20  # power iterations for the per-image step of the 2011 inference, from ones
_POWER_ITER_WARM = 4  # and from the vectors of the previous outer iteration


@dataclass(frozen=True)
class LowerLayer:
    """A frozen layer below the one being coded: its filters, connectivity and pooling (None: no pooling)."""

    filters: np.ndarray
    connectivity: np.ndarray | None
    pool: Pool | None = None


def keep_block_maxima(maps: Array, pool: Pool | None) -> Array:
    """Zero every entry of `maps` (N, K, H', W') but the largest in magnitude of each pooling block (step (c) of
    the 2011 iteration: pool, then unpool at the new switches). The identity for ``pool`` None or (1, 1, 1)."""
    if pool is None or tuple(pool) == (1, 1, 1):
        return maps
    return unpool3d(*pool3d(maps, pool), maps.shape)


def pool_maps(maps: Array, pool: Pool | None) -> tuple[Array, Array | None]:
    """(pooled maps, switches) of `maps` for the layer above, or (maps, None) without pooling."""
    if pool is None:
        return maps, None
    return pool3d(maps, pool)


def input_geometry(lower: Sequence[LowerLayer], n_channels: int, image_shape: tuple[int, int],
                   boundary: str) -> tuple[int, tuple[int, int]]:
    """(C_l, (H_l, W_l)): what the layer above `lower` reads, for images of `n_channels` × `image_shape`."""
    C, (H, W) = int(n_channels), (int(image_shape[0]), int(image_shape[1]))
    for layer in lower:
        s = int(np.shape(layer.filters)[-1])
        C, (H, W) = int(np.shape(layer.filters)[0]), map_shape((H, W), s, boundary)
        if layer.pool is not None:
            _, C, H, W = pooled_shape((1, C, H, W), layer.pool)
    return C, (H, W)


class PixelPath:
    r"""The fixed lower part :math:`B = F_1 U_{s_1} \cdots F_{l-1} U_{s_{l-1}}`: from the input space of layer l,
    ``(N, C_l, H_l, W_l)``, to the pixels ``(N, C_1, H, W)``; and its adjoint (up through the layers, selecting at
    the switches). The identity when there is no layer below.

    Parameters
    ----------
    lower : sequence of LowerLayer
        Layers 1 … l−1, bottom first.
    switches : sequence of integer arrays or None
        ``switches[j]``: layer j+1's switches for these N images, shape ``pooled_shape`` of its maps (None
        exactly where that layer does not pool).
    image_shape : (int, int)
        (H, W) of the pixels.
    n_images : int
    boundary : {"circular", "valid"}
    backend : Backend
    dtype : dtype
        The computation dtype (the filters are cast to it).
    """

    def __init__(self, lower: Sequence[LowerLayer], switches: Sequence[Array | None], image_shape: tuple[int, int],
                 n_images: int, boundary: str, backend: Backend, dtype: Any):
        if len(switches) != len(lower):
            raise ValueError(f"switches needs one entry per layer below ({len(lower)}), got {len(switches)}")
        self.ops: list[ConvOperator] = []
        self.map_shapes: list[tuple[int, int, int, int]] = []
        self.switches: list[Array | None] = []
        shape, channels = tuple(int(d) for d in image_shape), None
        for number, (layer, sw) in enumerate(zip(lower, switches, strict=True), start=1):
            f = backend.asarray(layer.filters, dtype=dtype)
            if channels is not None and f.shape[1] != channels:
                raise ValueError(f"layer {number} reads {f.shape[1]} channels but the layer below gives {channels}")
            g = None if layer.connectivity is None else backend.asarray(layer.connectivity)
            op = ConvOperator(f, shape, boundary=boundary, connectivity=g)
            maps_shape = (int(n_images), op.n_filters) + op.map_shape
            if (sw is None) != (layer.pool is None):
                raise ValueError(f"layer {number}: switches must be given exactly when the layer pools")
            if sw is not None:
                expected = pooled_shape(maps_shape, layer.pool)
                if tuple(sw.shape) != expected:
                    raise ValueError(f"switches of layer {number} must have shape {expected}, got {tuple(sw.shape)}")
                sw = backend.asarray(sw)
                _, channels, *rest = expected
            else:
                channels, rest = op.n_filters, list(op.map_shape)
            shape = (int(rest[0]), int(rest[1]))
            self.ops.append(op)
            self.map_shapes.append(maps_shape)
            self.switches.append(sw)
        self.input_channels: int | None = channels  # None: the pixels' own channels
        self.input_shape: tuple[int, int] = shape
        self.bound = float(np.prod([op.lipschitz() for op in self.ops])) if self.ops else 1.0

    @property
    def identity(self) -> bool:
        return not self.ops

    def forward(self, x: Array) -> Array:
        """B x: (N, C_l, H_l, W_l) -> (N, C_1, H, W)."""
        for op, sw, shape in zip(reversed(self.ops), reversed(self.switches), reversed(self.map_shapes),
                                 strict=True):
            if sw is not None:
                x = unpool3d(x, sw, shape)
            x = op.forward(x)
        return x

    def adjoint(self, r: Array) -> Array:
        """Bᵀ r: (N, C_1, H, W) -> (N, C_l, H_l, W_l)."""
        for op, sw in zip(self.ops, self.switches, strict=True):
            r = op.adjoint(r)
            if sw is not None:
                r = select3d(r, sw)
        return r


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

    def __init__(self, images: Array, op: ConvOperator, path: PixelPath, penalty: LpPenalty, pool: Pool | None,
                 *, power_start: Array | None = None, power_iter: int = _POWER_ITER):
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


def code_pixels(images: Array, filters: Array, lam: float, *, p: float = 1.0, pool: Pool | None = None,
                connectivity: Array | None = None, path: PixelPath | None = None, boundary: str = "circular",
                max_iter: int = 200, tol: float = 1e-5, init: Array | None = None, stop_early: bool = True):
    """Maps of one layer for the pixels `images` by the 2011 inference (:class:`PixelCodingProblem`), on the
    backend of `images`. Returns the :class:`~solver.algorithms.base.InferenceResult` (maps satisfy the block
    constraint; ``objective`` is E of ``maps``)."""
    bk = backend_of(images)
    if path is None:
        path = PixelPath((), (), images.shape[-2:], images.shape[0], boundary, bk, images.dtype)
    op = ConvOperator(bk.asarray(filters, dtype=images.dtype), path.input_shape, boundary=boundary,
                      connectivity=None if connectivity is None else bk.asarray(connectivity))
    problem = PixelCodingProblem(images, op, path, LpPenalty(lam, p), pool)
    solver = Fista(problem, FistaConfig(max_iter=max_iter, tol=tol))
    start = None if init is None else keep_block_maxima(bk.asarray(init, dtype=images.dtype), pool)
    return run(solver, solver.init(start), stop_early=stop_early)


class PixelShard:
    """Some images of a 2011 learning job (layer l reconstructs their pixels through the frozen layers below),
    with the interface of :class:`solver.models.shard.Shard` that :func:`solver.models.learn.alternate` drives.

    Parameters
    ----------
    images : ndarray of shape (n, C_1, H, W)
        The preprocessed pixels, in the computation dtype.
    config : LearnConfig
        The one-layer config of layer l (``reconstruct_to`` 'pixels', fista inference).
    connectivity : bool ndarray of shape (K_l, C_l) or None
    lower : sequence of LowerLayer
        Layers 1 … l−1.
    switches : sequence of integer arrays or None
        Their switches for these n images (see :class:`PixelPath`).
    backend : {"auto", "numpy", "cupy"}
    """

    def __init__(self, images: np.ndarray, config: LearnConfig, connectivity: np.ndarray | None,
                 lower: Sequence[LowerLayer] = (), switches: Sequence[Array | None] = (), backend: str = "auto"):
        if config.reconstruct_to != "pixels" or config.inference.method != "fista":
            raise ValueError("a PixelShard needs a config with reconstruct_to 'pixels' and fista inference")
        self.bk: Backend = get_backend(backend)
        self.config = config
        self.layer = config.layers[0]
        self.images = self.bk.asarray(images)
        self.path = PixelPath(lower, switches, self.images.shape[-2:], self.images.shape[0], config.boundary,
                              self.bk, self.images.dtype)
        self.g = None if connectivity is None else self.bk.asarray(connectivity)
        self.penalty = LpPenalty(self.layer.lam, self.layer.p)
        self._maps: Array | None = None
        self._power: Array | None = None  # per-image power-iteration vectors of the step sizes, kept warm
        self._filter_op: FilterOperator | None = None

    @property
    def n_images(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_channels(self) -> int:
        """C_l: the channels layer l reads (the pooled maps of layer l−1, or the pixels' for layer 1)."""
        return int(self.images.shape[1]) if self.path.input_channels is None else self.path.input_channels

    def code(self, filters: np.ndarray) -> CodeStats:
        """``config.inference.max_iter`` steps of the 2011 inference, warm-started; never worse maps."""
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        self._filter_op = None
        op = ConvOperator(f, self.path.input_shape, boundary=self.config.boundary, connectivity=self.g)
        warm = self._power is not None  # the filters moved a little since: a few steps from the last vector
        problem = PixelCodingProblem(self.images, op, self.path, self.penalty, self.layer.pool,
                                     power_start=self._power, power_iter=_POWER_ITER_WARM if warm else _POWER_ITER)
        solver = Fista(problem, FistaConfig(max_iter=self.config.inference.max_iter, tol=0.0))
        self._power = problem.power_vector
        start = None if self._maps is None else keep_block_maxima(self._maps, self.layer.pool)
        state = solver.init(start)
        maps0, E0 = solver.maps(state), solver.per_item_objective(state).copy()
        state = iterate_steps(solver, state, solver.max_iter)
        self._maps = keep_better(solver.maps(state), solver.per_item_objective(state), maps0, E0)
        xp = self.bk.xp
        return CodeStats(self.penalty(self._maps), int(xp.count_nonzero(self._maps)), int(self._maps.size),
                         solver.max_iter, self.n_images)

    def _operator(self) -> FilterOperator:
        if self._maps is None:
            raise ValueError("the shard has no maps yet: call code(filters) first")
        if self._filter_op is None:
            self._filter_op = FilterOperator(self._maps, self.path.input_shape, self.layer.filter_size,
                                             boundary=self.config.boundary, connectivity=self.g,
                                             n_channels=self.input_channels)
        return self._filter_op

    def value_and_gradient(self, filters: np.ndarray) -> tuple[float, np.ndarray]:
        """(½‖B Z f − y‖², Zᵀ Bᵀ(B Z f − y)) of this shard at `filters`."""
        zop = self._operator()
        resid = self.path.forward(zop.forward(self.bk.asarray(filters, dtype=self.images.dtype))) - self.images
        data = 0.5 * float(sq_norm_per_item(resid).sum())
        return data, self.bk.to_host(zop.adjoint(self.path.adjoint(resid)))

    def normal(self, v: np.ndarray) -> np.ndarray:
        """Zᵀ Bᵀ B Z v of this shard."""
        zop = self._operator()
        w = self.path.forward(zop.forward(self.bk.asarray(v, dtype=self.images.dtype)))
        return self.bk.to_host(zop.adjoint(self.path.adjoint(w)))

    def consensus_step(self, filters: np.ndarray, rho: float, relax: float) -> tuple[np.ndarray, int]:
        raise ValueError("consensus filter updates are not available with reconstruct_to 'pixels'")

    def maps(self) -> np.ndarray:
        if self._maps is None:
            raise ValueError("the shard has no maps yet: call code(filters) first")
        return self.bk.to_host(self._maps)

    def state(self) -> dict[str, Any]:
        """The maps and the power vectors of the step sizes (a resumed run takes the same steps)."""
        power = None if self._power is None else self.bk.to_host(self._power)
        return {"maps": None if self._maps is None else self.maps(), "warm": power, "consensus": None}

    def load_state(self, state: dict[str, Any]) -> None:
        maps, power = state.get("maps"), state.get("warm")
        self._maps = None if maps is None else self.bk.asarray(maps)
        self._power = None if power is None else self.bk.asarray(power, dtype=self.images.dtype)
        self._filter_op = None


__all__ = ["LowerLayer", "PixelCodingProblem", "PixelPath", "PixelShard", "code_pixels", "input_geometry",
           "keep_block_maxima", "pool_maps"]
