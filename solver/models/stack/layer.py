"""One layer of a learned stack (:class:`LayerModel`): what encoding and projection need of it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np

from ...images.preprocess import FittedPreprocess
from ...operators.pixel_path import LowerLayer
from ...operators.pooling import pooled_shape

LamScale = Literal["absolute", "relative"]


@dataclass(frozen=True)
class LayerModel:
    """What encoding and projection need of one layer.

    Attributes
    ----------
    filters : ndarray of shape (K, C, s, s)
    connectivity : bool ndarray of shape (K, C)
        g (all True for a full table).
    preprocess : FittedPreprocess or None
        The transformation of this layer's input: the job's preprocessing for layer 1, the fitted
        :data:`INTER_LAYER_PREPROCESS` rescale above it.
    lam : float
        λ > 0, the weight of the sparsity term.
    p : float
        Sparsity exponent in (0, 1].
    pool : (int, int, int) or None
        3-D max pooling (maps, rows, columns) of this layer's maps for the layer above; None: none.
    lam_scale : {"absolute", "relative"}
        How λ was given: as is, or as a fraction of λ_max (:func:`~solver.lambda_max`); `lam` is the absolute λ
        in both cases.
    lam_max : float or None
        λ_max of the training input with the initial filters, for ``lam_scale="relative"`` (then the given
        fraction is ``lam / lam_max``); None otherwise.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import LayerModel
    >>> layer = LayerModel(np.ones((4, 1, 3, 3)), np.ones((4, 1), bool), None, 0.1, pool=(2, 2, 2))
    >>> layer.n_filters, layer.n_outputs
    (4, 2)
    """

    filters: np.ndarray
    connectivity: np.ndarray
    preprocess: FittedPreprocess | None
    lam: float
    p: float = 1.0
    pool: tuple[int, int, int] | None = None
    lam_scale: LamScale = "absolute"
    lam_max: float | None = None

    def __post_init__(self) -> None:
        f, g = np.asarray(self.filters), np.asarray(self.connectivity)
        if f.ndim != 4 or f.shape[-1] != f.shape[-2] or f.dtype.kind != "f":
            raise ValueError(f"filters must be a real (K, C, s, s) array, got shape {f.shape} and dtype {f.dtype}")
        if g.dtype != bool or g.shape != f.shape[:2]:
            raise ValueError(
                f"connectivity must be a boolean array of shape (K, C) = {f.shape[:2]}, got dtype "
                f"{g.dtype} and shape {g.shape}"
            )
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam must be a positive number, got {self.lam!r}")
        if not 0 < self.p <= 1:
            raise ValueError(f"p must be in (0, 1], got {self.p!r}")
        if self.lam_scale not in ("absolute", "relative"):
            raise ValueError(f"lam_scale must be 'absolute' or 'relative', got {self.lam_scale!r}")
        if (self.lam_scale == "relative") != (self.lam_max is not None):
            raise ValueError(
                f"lam_max is recorded exactly when lam_scale is 'relative', got lam_scale "
                f"{self.lam_scale!r} and lam_max {self.lam_max!r}"
            )
        if self.lam_max is not None and not (math.isfinite(self.lam_max) and self.lam_max > 0):
            raise ValueError(f"lam_max must be a positive number, got {self.lam_max!r}")
        if self.pool is not None:
            pooled_shape((1, 1, 1, 1), self.pool)  # raises ValueError naming the size
            object.__setattr__(self, "pool", tuple(int(d) for d in self.pool))
        object.__setattr__(self, "filters", f)
        object.__setattr__(self, "connectivity", g)

    @property
    def n_filters(self) -> int:
        return int(self.filters.shape[0])

    @property
    def n_outputs(self) -> int:
        """The channels the layer above reads: K, or ⌈K/pk⌉ after pooling."""
        return self.n_filters if self.pool is None else -(-self.n_filters // self.pool[0])

    def lower(self) -> LowerLayer:
        """This layer as a frozen layer below another one (:class:`~solver.operators.pixel_path.LowerLayer`)."""
        return LowerLayer(self.filters, self.connectivity, self.pool)

    @property
    def n_channels(self) -> int:
        return int(self.filters.shape[1])

    @property
    def filter_size(self) -> int:
        return int(self.filters.shape[-1])
