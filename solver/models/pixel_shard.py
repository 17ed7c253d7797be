""":class:`PixelShard`: a shard of a 2011 learning job, whose layer reconstructs the pixels through the frozen
layers below."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ..algorithms.fista import Fista
from ..algorithms.problem import POWER_ITER, POWER_ITER_WARM, PixelCodingProblem, sq_norm_per_item
from ..backend import Array
from ..config import FistaConfig, LearnConfig
from ..operators.convolution import ConvOperator, FilterOperator
from ..operators.pixel_path import LowerLayer, PixelPath
from ..operators.pooling import keep_block_maxima
from .lam import analysis_max
from .shard_base import CodeStats, _ShardBase, steps_never_worse


class PixelShard(_ShardBase):
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

    def __init__(
        self,
        images: np.ndarray,
        config: LearnConfig,
        connectivity: np.ndarray | None,
        lower: Sequence[LowerLayer] = (),
        switches: Sequence[Array | None] = (),
        backend: str = "auto",
    ):
        if config.reconstruct_to != "pixels" or config.inference.method != "fista":
            raise ValueError("a PixelShard needs a config with reconstruct_to 'pixels' and fista inference")
        super().__init__(images, config, connectivity, backend)
        self.path = PixelPath(
            lower, switches, self.images.shape[-2:], self.images.shape[0], config.boundary, self.bk, self.images.dtype
        )
        self._power: Array | None = None  # per-image power-iteration vectors of the step sizes, kept warm
        self._filter_op: FilterOperator | None = None

    @property
    def input_channels(self) -> int:
        """C_l: the channels layer l reads (the pooled maps of layer l−1, or the pixels' for layer 1)."""
        return int(self.images.shape[1]) if self.path.input_channels is None else self.path.input_channels

    def code(self, filters: np.ndarray) -> CodeStats:
        """``config.inference.max_iter`` steps of the 2011 inference, warm-started; never worse maps.

        The images are coded a group at a time (:func:`~solver.models.shard_base.coding_groups`; small groups
        several at once, a thread each), each with its own switches, power vectors and step sizes: an image's steps
        never depend on the others', so the result is that of one batch, and the peak is the maps and power vectors
        the shard keeps plus a few arrays of each group in flight.
        """
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        self._filter_op = None
        op = ConvOperator(f, self.path.input_shape, boundary=self.config.boundary, connectivity=self.g)
        warm = self._power is not None  # the filters moved a little since: a few steps from the last vector
        cold = self._maps is None  # a first run starts from zero maps (the block constraint holds for them)
        if cold:
            self._maps = self.bk.xp.zeros((self.n_images, op.n_filters, *op.map_shape), dtype=self.images.dtype)
        maps = self._maps
        if self._power is None:
            self._power = self.bk.xp.empty(maps.shape, dtype=maps.dtype)

        def code(group: slice) -> int:
            problem = PixelCodingProblem(
                self.images[group],
                op,
                self.path.rows(group),
                self.penalty,
                self.layer.pool,
                power_start=self._power[group] if warm else None,
                power_iter=POWER_ITER_WARM if warm else POWER_ITER,
            )
            solver = Fista(problem, FistaConfig(max_iter=self.config.inference.max_iter, tol=0.0))
            self._power[group] = problem.power_vector  # the group's start is read: its vectors take its place
            start = maps[group] if cold else keep_block_maxima(maps[group], self.layer.pool)
            maps[group], _ = steps_never_worse(solver, solver.init(start))
            return solver.max_iter

        return self._code_stats(self._each_group(code, maps)[-1])

    def _operator(self) -> FilterOperator:
        if self._maps is None:
            raise ValueError("the shard has no maps yet: call code(filters) first")
        if self._filter_op is None:
            self._filter_op = FilterOperator(
                self._maps,
                self.path.input_shape,
                self.layer.filter_size,
                boundary=self.config.boundary,
                connectivity=self.g,
                n_channels=self.input_channels,
            )
        return self._filter_op

    def value_and_gradient(self, filters: np.ndarray) -> tuple[float, np.ndarray]:
        """(½‖B Z f − y‖², Zᵀ Bᵀ(B Z f − y)) of this shard at `filters`."""
        zop = self._operator()
        resid = self.path.forward(zop.forward(self.bk.asarray(filters, dtype=self.images.dtype))) - self.images
        data = 0.5 * float(sq_norm_per_item(resid).sum())
        return data, self.bk.to_host(zop.adjoint(self.path.adjoint(resid)))

    def value(self, filters: np.ndarray) -> float:
        """½‖B Z f − y‖² of this shard at `filters`."""
        return self.value_and_gradient(filters)[0]

    def normal(self, v: np.ndarray) -> np.ndarray:
        """Zᵀ Bᵀ B Z v of this shard."""
        zop = self._operator()
        w = self.path.forward(zop.forward(self.bk.asarray(v, dtype=self.images.dtype)))
        return self.bk.to_host(zop.adjoint(self.path.adjoint(w)))

    def consensus_step(self, filters: np.ndarray, rho: float, relax: float) -> tuple[np.ndarray, int]:
        raise ValueError("consensus filter updates are not available with reconstruct_to 'pixels'")

    def lambda_max(self, filters: np.ndarray) -> float:
        """λ_max of this shard's pixels for `filters` through the layers below: ``max |Fᴴ Bᴴ y|``."""
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        op = ConvOperator(f, self.path.input_shape, boundary=self.config.boundary, connectivity=self.g)
        return analysis_max(op, self.images, self.bk, self.path)

    def state(self, *, copy: bool = True) -> dict[str, Any]:
        """The maps and the power vectors of the step sizes (a resumed run takes the same steps)."""
        power = None if self._power is None else self.bk.to_host(self._power)
        return {"maps": None if self._maps is None else self.maps(), "warm": power, "consensus": None}

    def load_state(self, state: dict[str, Any]) -> None:
        maps, power = state.get("maps"), state.get("warm")
        self._maps = None if maps is None else self.bk.asarray(maps)
        self._power = None if power is None else self.bk.asarray(power, dtype=self.images.dtype)
        self._filter_op = None
