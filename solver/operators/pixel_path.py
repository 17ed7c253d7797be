r"""The fixed lower part of the 2011 Adaptive Deconvolutional Network (Zeiler, Taylor & Fergus, ICCV 2011; see
``docs/zeiler.md`` §8): the frozen layers below layer l, from layer l's input space down to the pixels.

With :math:`F_j` the synthesis of layer j (:class:`~solver.operators.convolution.ConvOperator`) and
:math:`U_{s_j}` the unpooling at layer j's switches (:func:`~solver.operators.pooling.unpool3d`), layer l codes
the preprocessed images y through

.. math:: R_l = B_l F_l, \qquad B_l = F_1 U_{s_1} F_2 U_{s_2} \cdots F_{l-1} U_{s_{l-1}}

(:math:`B_1` is the identity; a layer without pooling has :math:`U = I`). The lower switches are fixed: those of
the maps the layers below found for the same images (a bottom-up pass). :class:`PixelPath` is :math:`B_l` and its
adjoint; the coding problem on it is :class:`~solver.algorithms.problem.PixelCodingProblem`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Array, Backend
from .convolution import ConvOperator, map_shape
from .pooling import pooled_shape, select3d, unpool3d

Pool = tuple[int, int, int]


@dataclass(frozen=True)
class LowerLayer:
    """A frozen layer below the one being coded: its filters, connectivity and pooling (None: no pooling)."""

    filters: np.ndarray
    connectivity: np.ndarray | None
    pool: Pool | None = None


def input_geometry(
    lower: Sequence[LowerLayer], n_channels: int, image_shape: tuple[int, int], boundary: str
) -> tuple[int, tuple[int, int]]:
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

    def __init__(
        self,
        lower: Sequence[LowerLayer],
        switches: Sequence[Array | None],
        image_shape: tuple[int, int],
        n_images: int,
        boundary: str,
        backend: Backend,
        dtype: Any,
    ):
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

    def rows(self, group: slice) -> PixelPath:
        """The path of the images of `group` (``lo:hi``) only: the same operators, those images' switches."""
        path = copy.copy(self)
        n = group.stop - group.start
        path.switches = [None if sw is None else sw[group] for sw in self.switches]
        path.map_shapes = [(n, *shape[1:]) for shape in self.map_shapes]
        return path

    def forward(self, x: Array) -> Array:
        """B x: (N, C_l, H_l, W_l) -> (N, C_1, H, W)."""
        for op, sw, shape in zip(reversed(self.ops), reversed(self.switches), reversed(self.map_shapes), strict=True):
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
