r"""Fourier-domain convolution operators of the model, with their adjoints.

Shapes (one convention everywhere):

=================  ==================  ===========================================================
name               shape               meaning
=================  ==================  ===========================================================
``images``         ``(N, C, H, W)``    N images with C channels
``filters``        ``(K, C, s, s)``    K filters, one s×s plane per input channel
``connectivity``   ``(K, C)`` bool     g: which input channels map k reconstructs
``maps``           ``(N, K, H', W')``  ``H' = H`` (circular) or ``H + s - 1`` (valid)
=================  ==================  ===========================================================

Reconstruction ``ŷ[n, c] = Σ_k g[k, c] · (maps[n, k] ⊛ filters[k, c])`` with ⊛ a true convolution:

* ``circular``: the filter is zero-padded to H×W with its [0, 0] entry at the origin (SPORCO's convention);
* ``valid``: ``scipy.signal.convolve2d(map, filter, mode="valid")`` on a map of (H+s−1)×(W+s−1).

Both are computed on the *map grid* (H', W'): a circular convolution there, followed for ``valid`` by the crop
``P`` to the rows and columns ``s−1 … s−1+H−1``. On those the circular and the linear convolution coincide
(no index wraps), so ``valid = P ∘ circular``. Fourier-domain arrays carry the suffix ``_hat`` and have shape
``(..., H', W'//2 + 1)`` (real FFTs over the last two axes).

Connectivity: the operators keep the Fourier filter planes of the connected (k, c) pairs only, ``planes_hat`` in
the *pair layout* of :mod:`solver.operators.pairs` (``(K, C, U, V)`` for a full table, ``(P, U, V)`` for P
connected pairs otherwise), and every product, sum, FFT of filters and per-frequency solve runs over those P pairs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import numpy as np

from ..backend import Array, Backend, backend_of
from .linalg import ShiftedNormalFactor
from .pairs import Connections, PairFactor, analyse_hat, connections, image_blocks, synthesize_hat  # noqa: F401  (re-exported)

Boundary = Literal["circular", "valid"]
BOUNDARIES: tuple[str, ...] = ("circular", "valid")


def map_shape(image_shape: tuple[int, int], filter_size: int, boundary: Boundary) -> tuple[int, int]:
    """Spatial shape (H', W') of the maps for images of spatial shape (H, W)."""
    H, W = image_shape
    if boundary == "circular":
        return (H, W)
    if boundary == "valid":
        return (H + filter_size - 1, W + filter_size - 1)
    raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")


def image_shape_from_maps(grid: tuple[int, int], filter_size: int, boundary: Boundary) -> tuple[int, int]:
    """Inverse of :func:`map_shape`: the image shape (H, W) of maps on the grid (H', W')."""
    Hm, Wm = grid
    if boundary == "circular":
        return (Hm, Wm)
    if boundary == "valid":
        return (Hm - filter_size + 1, Wm - filter_size + 1)
    raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")


class _Grid:
    """The map grid, the crop P (valid boundary) and its adjoint, the zero-padding Pᵀ."""

    def __init__(self, image_shape: tuple[int, int], filter_size: int, boundary: Boundary):
        self.image_shape = (int(image_shape[0]), int(image_shape[1]))
        self.filter_size = int(filter_size)
        self.boundary: Boundary = boundary
        self.shape = map_shape(self.image_shape, self.filter_size, boundary)
        o = self.filter_size - 1 if boundary == "valid" else 0
        H, W = self.image_shape
        self.window = (slice(o, o + H), slice(o, o + W))

    @property
    def cropped(self) -> bool:
        return self.boundary == "valid"

    def crop(self, a: Array) -> Array:
        """P: grid (…, H', W') -> image (…, H, W)."""
        return a[..., self.window[0], self.window[1]] if self.cropped else a

    def pad(self, a: Array) -> Array:
        """Pᵀ: image (…, H, W) -> grid (…, H', W'), zeros outside the image window."""
        if not self.cropped:
            return a
        xp = backend_of(a).xp
        out = xp.zeros(a.shape[:-2] + self.shape, dtype=a.dtype)
        out[..., self.window[0], self.window[1]] = a
        return out

    def mask(self, xp, dtype) -> Array:
        """PᵀP as a (H', W') array of ones inside the image window, zeros outside."""
        m = xp.zeros(self.shape, dtype=dtype)
        m[self.window[0], self.window[1]] = 1
        return m


class ConvOperator:
    r"""Synthesis D: maps (N, K, H', W') -> images (N, C, H, W).

    .. math:: (D z)[n, c] = P \sum_k g_{kc}\, f_{kc} \circledast z_{nk}

    with ⊛ the circular convolution on the map grid and P the crop of the ``valid`` boundary (identity for
    ``circular``). Immutable once built: ``forward``/``adjoint`` never modify their inputs and return arrays on
    the input's backend with the filters' real dtype.

    Parameters
    ----------
    filters : array of shape (K, C, s, s)
        Real floating dtype; the operator works in that dtype (complex64 for float32).
    image_shape : (int, int)
        Spatial shape (H, W) of the images.
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional
        g; all True when omitted.

    Attributes
    ----------
    connections : FullConnections or SparseConnections
        The connected pairs (:mod:`solver.operators.pairs`).
    planes_hat : array of shape (K, C, U, V) (full table) or (P, U, V) (P connected pairs)
        The Fourier filter planes of the connected pairs, the only filter array the operator computes with.
    """

    def __init__(
        self,
        filters: Array,
        image_shape: tuple[int, int],
        *,
        boundary: Boundary = "circular",
        connectivity: Array | None = None,
        transforms: PlaneTransforms | None = None,
    ):
        self.backend: Backend = backend_of(filters)
        self.dtype = filters.dtype
        self.n_filters, self.n_channels, s, _ = filters.shape
        self.filter_size = int(s)
        self.grid = _Grid(image_shape, s, boundary)
        self.connectivity = connectivity
        self.connections: Connections = connections(connectivity, self.n_filters, self.n_channels, self.backend.xp)
        planes = self.connections.gather(filters)
        self.filters = self.connections.scatter(planes)  # zero where not connected
        if transforms is None:
            self.planes_hat = self.backend.rfft2(planes, self.grid.shape)
        else:
            self.planes_hat = transforms.get(filters, lambda f: self.backend.rfft2(planes, self.grid.shape))

    @functools.cached_property
    def filters_hat(self) -> Array:
        """The Fourier filters in the dense layout (K, C, U, V), zero where not connected.

        The planes themselves for a full table; for a sparse one a K·C copy built on first use, for code that
        needs the dense layout (the Woodbury factor of :mod:`solver.operators.linalg`); the operator's own work uses
        ``planes_hat`` only.
        """
        return self.connections.scatter(self.planes_hat)

    @property
    def boundary(self) -> Boundary:
        return self.grid.boundary

    @property
    def image_shape(self) -> tuple[int, int]:
        return self.grid.image_shape

    @property
    def map_shape(self) -> tuple[int, int]:
        return self.grid.shape

    # Fourier domain, on the map grid (no crop) -------------------------------------------------------
    def forward_hat(self, maps_hat: Array) -> Array:
        """(N, K, U, V) -> (N, C, U, V): the circular synthesis in the Fourier domain."""
        return self.connections.synthesize(self.planes_hat, maps_hat)

    def adjoint_hat(self, images_hat: Array) -> Array:
        """(N, C, U, V) -> (N, K, U, V): the adjoint of :meth:`forward_hat`."""
        return self.connections.analyse(self.planes_hat, images_hat)

    # Spatial domain ----------------------------------------------------------------------------------
    def rfft(self, a: Array) -> Array:
        """Real FFT on the map grid of (…, H', W') arrays (or of images, zero-padded by Pᵀ first)."""
        return self.backend.rfft2(a, self.grid.shape)

    def irfft(self, a_hat: Array) -> Array:
        """Inverse of :meth:`rfft` on the map grid."""
        return self.backend.irfft2(a_hat, self.grid.shape)

    def synthesize(self, maps: Array) -> Array:
        """Circular synthesis on the map grid: (N, K, H', W') -> (N, C, H', W') (no crop)."""
        return self.irfft(self.forward_hat(self.rfft(maps)))

    def forward(self, maps: Array) -> Array:
        """D: (N, K, H', W') -> (N, C, H, W)."""
        return self.grid.crop(self.synthesize(maps))

    def adjoint(self, images: Array) -> Array:
        """Dᴴ: (N, C, H, W) -> (N, K, H', W')."""
        return self.irfft(self.adjoint_hat(self.rfft(self.grid.pad(images))))

    # Per-frequency algebra ----------------------------------------------------------------------------
    def lipschitz(self) -> float:
        """‖D‖² of the circular operator: max over frequencies of λ_max(D̂(ω)ᴴ D̂(ω)).

        Exact for ``circular``; an upper bound for ``valid`` (‖P‖ ≤ 1).
        """
        return self.connections.gram_max_eigenvalue(self.planes_hat)

    def factor_shifted_normal(self, rho: float | np.ndarray) -> ShiftedNormalFactor | PairFactor:
        """The cached part of the solve of ``(DᴴD + ρI) x = b`` per frequency (ρ > 0, or one per image), for
        :meth:`solve_shifted_normal`: the Woodbury inverse of :mod:`solver.operators.linalg`, from the pairs only."""
        # one channel: the ρ-free part (U, V) is kept, ADMM refactors whenever its ρ changes and this sum over the
        # filters is most of a factor's cost; several: the Gram (U, V, C, C) is the size of a factor (memory the
        # service's estimates count) and its inversion the larger cost, so it is made each time
        power = self._filter_power if self.n_channels == 1 else None
        return self.connections.factor_shifted_normal(self.planes_hat, rho, power)

    @functools.cached_property
    def _filter_power(self) -> Array:
        return self.connections.normal_gram(self.planes_hat)

    def solve_shifted_normal(self, factor: ShiftedNormalFactor | PairFactor, b_hat: Array) -> Array:
        """x̂ = (DᴴD + ρI)⁻¹ b̂ at every frequency of the map grid: (N, K, U, V) -> (N, K, U, V)."""
        return self.connections.solve_shifted_normal(factor, self.planes_hat, b_hat)


class FilterOperator:
    r"""Synthesis for fixed maps, linear in the filters: filters (K, C, s, s) -> images (N, C, H, W).

    .. math:: (Z f)[n, c] = P \sum_k g_{kc}\, z_{nk} \circledast S f_{kc}

    S zero-pads an s×s filter plane to the map grid; its adjoint Sᴴ keeps the [0:s, 0:s] corner.

    Parameters
    ----------
    maps : array of shape (N, K, H', W')
    image_shape : (int, int)
        (H, W) of the images.
    filter_size : int
        s.
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional
    n_channels : int
        C (needed when `connectivity` is omitted).
    maps_hat : array of shape (N, K, U, V), optional
        rfft2 of the maps on the grid, when the caller made it (then `maps` only gives their dtype and trailing
        shape: a shard keeps its maps packed while it updates its filters).

    Attributes
    ----------
    connections : FullConnections or SparseConnections
        The filters enter through the planes of the connected pairs only (:meth:`filters_to_hat`).
    """

    def __init__(
        self,
        maps: Array,
        image_shape: tuple[int, int],
        filter_size: int,
        *,
        boundary: Boundary = "circular",
        connectivity: Array | None = None,
        n_channels: int = 1,
        maps_hat: Array | None = None,
        transforms: PlaneTransforms | None = None,
    ):
        self.backend: Backend = backend_of(maps)
        self.dtype = maps.dtype
        self.grid = _Grid(image_shape, filter_size, boundary)
        if tuple(maps.shape[-2:]) != self.grid.shape:
            raise ValueError(
                f"maps have spatial shape {tuple(maps.shape[-2:])}, expected {self.grid.shape} "
                f"for images {tuple(image_shape)} with {boundary!r} boundary and filter size {filter_size}"
            )
        self.filter_size = int(filter_size)
        self.n_filters = maps.shape[1]
        self.n_channels = int(connectivity.shape[1]) if connectivity is not None else int(n_channels)
        self.connectivity = connectivity
        self.connections: Connections = connections(connectivity, self.n_filters, self.n_channels, self.backend.xp)
        self.maps_hat = _rfft2_in_blocks(self.backend, maps, self.grid.shape) if maps_hat is None else maps_hat
        self.transforms = transforms

    @property
    def boundary(self) -> Boundary:
        return self.grid.boundary

    def filters_to_hat(self, filters: Array) -> Array:
        """(K, C, s, s) -> the Fourier planes of the connected pairs, (K, C, U, V) or (P, U, V)."""
        if self.transforms is not None:
            return self.transforms.get(filters, self._filters_to_hat)
        return self._filters_to_hat(filters)

    def _filters_to_hat(self, filters: Array) -> Array:
        return self.backend.rfft2(self.connections.gather(filters), self.grid.shape)

    def hat_to_filters(self, planes_hat: Array) -> Array:
        """Sᴴ ∘ irfft of pair planes: -> (K, C, s, s), zero where not connected."""
        s = self.filter_size
        return self.connections.scatter(self.backend.irfft2_corner(planes_hat, self.grid.shape, s))

    def forward_hat(self, planes_hat: Array) -> Array:
        """Pair planes (K, C, U, V) or (P, U, V) -> (N, C, U, V)."""
        return self.connections.synthesize(planes_hat, self.maps_hat)

    def adjoint_hat(self, images_hat: Array) -> Array:
        """(N, C, U, V) -> pair planes: Σ_n conj(ẑ[n, k]) ŝ[n, c] for each connected (k, c)."""
        return self.connections.correlate(self.maps_hat, images_hat)

    def forward(self, filters: Array) -> Array:
        """Z: (K, C, s, s) -> (N, C, H, W)."""
        out = self.backend.irfft2(self.forward_hat(self.filters_to_hat(filters)), self.grid.shape)
        return self.grid.crop(out)

    def adjoint(self, images: Array) -> Array:
        """Zᴴ: (N, C, H, W) -> (K, C, s, s)."""
        s_hat = self.backend.rfft2(self.grid.pad(images), self.grid.shape)
        return self.hat_to_filters(self.adjoint_hat(s_hat))

    def lipschitz(self) -> float:
        """An upper bound of ‖Z‖²: max over frequencies of λ_max(Ẑ(ω)ᴴ Ẑ(ω)) with Ẑ(ω) the N×K matrix.

        The support restriction S and the crop P can only lower the norm, so this is a valid step bound.
        """
        from .linalg import max_gram_eigenvalue  # noqa: PLC0415

        # maps_hat is (N, K, U, V): the same layout as filters_hat (K, C, U, V) with rows N and columns K,
        # and λ_max(AᴴA) = λ_max(AAᴴ), so one routine serves both operators.
        return max_gram_eigenvalue(self.maps_hat)


class PlaneTransforms:
    """The Fourier planes of the last few filters on one grid, with one connectivity (a learner's shard transforms
    the same filters in its coding step, its filter step and the checks of that step). Callers must not write
    into the planes it returns."""

    def __init__(self, size: int = 2):
        self.size = size
        self._entries: list[tuple[Array, Array]] = []

    def get(self, filters: Array, compute: Callable[[Array], Array]) -> Array:
        """The planes of `filters`: cached when the same values were among the last `size` asked for (least
        recently used out first), else ``compute(filters)``."""
        xp = backend_of(filters).xp
        for i, (seen, planes_hat) in enumerate(self._entries):
            if seen.shape == filters.shape and seen.dtype == filters.dtype and bool(xp.array_equal(seen, filters)):
                self._entries.insert(0, self._entries.pop(i))
                return planes_hat
        planes_hat = compute(filters)
        self._entries = [(xp.array(filters, copy=True), planes_hat), *self._entries[: self.size - 1]]
        return planes_hat


def parseval_weights(grid: tuple[int, int], xp, dtype) -> Array:
    """Weights w over the last rfft axis with ‖x‖² = Σ w·|x̂|² / (H'·W') for real x on `grid`."""
    W = grid[1]
    n = W // 2 + 1
    w = np.full(n, 2.0)
    w[0] = 1.0
    if W % 2 == 0:
        w[-1] = 1.0
    return xp.asarray(w / (grid[0] * grid[1]), dtype=dtype)


def _rfft2_in_blocks(bk: Backend, maps: Array, shape: tuple[int, int]) -> Array:
    """rfft2 of (N, K, H', W') maps a few images at a time into one array: the transform's temporaries are a
    fraction of the maps (each image's transform is the same)."""
    if bk.name != "numpy":
        return bk.rfft2(maps, shape)
    blocks = image_blocks(maps.shape[0], maps.nbytes)
    first = bk.rfft2(maps[blocks[0]], shape)
    if len(blocks) == 1:
        return first
    out = bk.xp.empty((maps.shape[0], *first.shape[1:]), dtype=first.dtype)
    out[blocks[0]] = first
    for block in blocks[1:]:
        out[block] = bk.rfft2(maps[block], shape)
    return out
