r"""Sufficient statistics of the filter sub-problem, and the quadratic surrogate they define (online learning).

With the maps z fixed, the data term is a quadratic in the filters f (K, C, s, s):

.. math:: \tfrac12 \sum_{n,c} \|P \textstyle\sum_k g_{kc}\, z_{nk} \circledast f_{kc} - y_{nc}\|^2
          = \tfrac12 \sum_{k,c} f_{kc} \cdot (A * f)_{kc} - \langle B, f \rangle + \tfrac12 \|y\|^2

with

* ``ZtZ[k, k', δ] = Σ_n Σ_x z[n, k, x] z[n, k', x + δ]`` for lags δ in [−(s−1), s−1]² (shape (K, K, 2s−1, 2s−1)),
  kept for the pairs (k, k') that share an input channel (zero otherwise), and
  ``(A * f)[k, c, u] = g[k, c] Σ_{k'} Σ_{u'} ZtZ[k, k', u − u'] f[k', c, u']`` (a convolution of f with ZtZ);
* ``ZtY[k, c, u] = Σ_n Σ_x z[n, k, x − u] y[n, c, x]`` (shape (K, C, s, s)), zero where g[k, c] is False: B.

Neither depends on the number of images, which is what online learning needs (Mairal et al., JMLR 2010; Liu,
Garcia-Cardona, Wohlberg & Yin, SIAM J. Imaging Sci. 2018): batches add their statistics into running sums
with a forgetting factor, ``A ← β_t A + ZtZ_batch``, and the filter step minimises the surrogate.

Boundaries:

* ``circular``: the lags wrap around the image, and the identity above is exact;
* ``valid``: ZtY is exact (the crop P in the correlation), while ZtZ is the *linear* (non-wrapping) correlation of
  the maps over their grid. A Gram matrix of lag form cannot hold the exact ZᴴPᵀPZ of the valid boundary, which
  depends on both taps and not only on their difference (the crop removes different border rows for each tap); the
  linear correlation is the Gram matrix of the full linear convolution, so the surrogate also asks the
  reconstruction to vanish in the border ring of width s − 1 outside the image. It is exact when the maps are zero
  within s − 1 of their grid's border, and it stays a convex quadratic (a Gram matrix), so the filter step is
  still well posed.

Everything is computed with FFTs: ZtZ as one K×K Gram matrix per frequency of the maps (a batched matrix product)
and ZtY as one K×C product per frequency. Running sums are kept in float64 on the host (they are small).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import Array, Backend, backend_of
from .convolution import Boundary, map_shape
from .linalg import stable_norm

_POWER_MARGIN = 1.05
_CHUNK_ELEMENTS = 2**23  # largest per-frequency product (complex entries) held at once by the statistics


def _lag_index(n: int, filter_size: int) -> np.ndarray:
    """Positions of the lags −(s−1) … s−1 on a circular axis of length `n`."""
    return np.arange(-(filter_size - 1), filter_size) % n


def shared_channels(connectivity: np.ndarray | None, n_filters: int) -> np.ndarray:
    """(K, K) bool: the pairs of maps that reconstruct a common channel (all True without a table)."""
    if connectivity is None:
        return np.ones((n_filters, n_filters), dtype=bool)
    g = np.asarray(connectivity, dtype=np.float64)
    return (g @ g.T) > 0


@dataclass(frozen=True)
class FilterStatistics:
    """Running sums of the filter sub-problem's statistics (host, float64).

    Attributes
    ----------
    ztz : ndarray of shape (K, K, 2s−1, 2s−1)
        ``ZtZ[k, k', s−1+δ₀, s−1+δ₁] = Σ z[k, x] z[k', x + δ]``.
    zty : ndarray of shape (K, C, s, s)
        ``ZtY[k, c, u] = Σ z[k, x − u] y[c, x]``.
    yty : float
        ``Σ y²`` (the surrogate's constant, so that its value is the data term).
    n_images : float
        The images summed, with the same weights.
    """

    ztz: np.ndarray
    zty: np.ndarray
    yty: float = 0.0
    n_images: float = 0.0

    @classmethod
    def zeros(cls, n_filters: int, n_channels: int, filter_size: int) -> FilterStatistics:
        L = 2 * filter_size - 1
        return cls(np.zeros((n_filters, n_filters, L, L)), np.zeros((n_filters, n_channels, filter_size, filter_size)))

    @property
    def filter_size(self) -> int:
        return int(self.zty.shape[-1])

    def _check_like(self, other: FilterStatistics) -> None:
        if other.ztz.shape != self.ztz.shape or other.zty.shape != self.zty.shape:
            raise ValueError(
                f"statistics of shapes ZtZ {other.ztz.shape}, ZtY {other.zty.shape} do not match "
                f"ZtZ {self.ztz.shape}, ZtY {self.zty.shape}"
            )

    def forget_and_add(self, batch: FilterStatistics, beta: float) -> FilterStatistics:
        """``β · self + batch``: the running sums after one more batch, with forgetting factor β in [0, 1]."""
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"the forgetting factor must lie in [0, 1], got {beta!r}")
        self._check_like(batch)
        return FilterStatistics(
            beta * self.ztz + batch.ztz,
            beta * self.zty + batch.zty,
            beta * self.yty + batch.yty,
            beta * self.n_images + batch.n_images,
        )


class BatchCorrelations:
    """The Fourier transforms of one coded batch, from which its statistics and data term are read.

    Parameters
    ----------
    maps : array of shape (N, K, H', W')
    images : array of shape (N, C, H, W)
        Same backend as `maps`.
    filter_size : int
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional
    """

    def __init__(
        self,
        maps: Array,
        images: Array,
        filter_size: int,
        *,
        boundary: Boundary = "circular",
        connectivity: np.ndarray | None = None,
    ):
        self.bk: Backend = backend_of(maps)
        N, K, Hm, Wm = maps.shape
        Ni, C, H, W = images.shape
        s = int(filter_size)
        if Ni != N:
            raise ValueError(f"maps hold {N} images and images {Ni}")
        if (Hm, Wm) != map_shape((H, W), s, boundary):
            raise ValueError(
                f"maps have spatial shape {(Hm, Wm)}, expected {map_shape((H, W), s, boundary)} for images "
                f"{(H, W)} with {boundary!r} boundary and filter size {s}"
            )
        self.n_images, self.n_filters, self.n_channels, self.filter_size = N, K, C, s
        self.image_shape = (H, W)
        self.connectivity = None if connectivity is None else np.asarray(connectivity, dtype=bool)
        if self.connectivity is not None and self.connectivity.shape != (K, C):
            raise ValueError(f"connectivity has shape {self.connectivity.shape}, expected (K, C) = {(K, C)}")
        # circular: the maps' own grid (lags wrap); valid: padded by s − 1 so that no lag up to s − 1 wraps, and
        # the image sits at offset s − 1 on it (where the crop P takes it from the maps' grid)
        self.grid = (Hm, Wm) if boundary == "circular" else (Hm + s - 1, Wm + s - 1)
        self.offset = 0 if boundary == "circular" else s - 1
        xp = self.bk.xp
        # per frequency: (U·V, N, K) and (U·V, N, C), so that the sums over images are batched matrix products
        self._z = self._per_frequency(self.bk.rfft2(maps, self.grid))
        padded = xp.zeros((N, C) + self.grid, dtype=images.dtype)
        padded[..., self.offset : self.offset + H, self.offset : self.offset + W] = images
        self._y = self._per_frequency(self.bk.rfft2(padded, self.grid))
        self._spectrum = self._z.shape[0]
        self.yty = float(xp.sum(images.astype(xp.float64) ** 2))
        self.images = images

    def _per_frequency(self, a_hat: Array) -> Array:
        n, m, U, V = a_hat.shape
        return self.bk.xp.ascontiguousarray(a_hat.reshape(n, m, U * V).transpose(2, 0, 1))

    def _to_grid(self, per_freq: Array) -> Array:
        """(U·V, P, Q) -> real (P, Q, H'', W'') on the grid."""
        P, Q = per_freq.shape[1:]
        U, V = self.grid[0], self.grid[1] // 2 + 1
        return self.bk.irfft2(per_freq.transpose(1, 2, 0).reshape(P, Q, U, V), self.grid)

    def _at(self, per_freq: Array, rows: np.ndarray, cols: np.ndarray) -> Array:
        """``_to_grid(per_freq)[:, :, rows][..., cols]`` without the rest of the grid: (U·V, P, Q) -> real
        (P, Q, len(rows), len(cols)).

        The statistics need a few lags of K² correlations; their inverse transforms on the whole grid cost as much
        as the maps of an image each, whatever the batch, which a part of a batch coded on one actor pays again.
        :meth:`~solver.backend.Backend.irfft2_rows_stacked` inverts the wanted rows only, all the correlations in
        one matrix product: the same numbers up to round-off.
        """
        U, V = self.grid[0], self.grid[1] // 2 + 1
        stacked = per_freq.reshape(U, V, *per_freq.shape[1:])
        return self.bk.irfft2_rows_stacked(stacked, self.grid, rows)[..., cols]

    def statistics(self) -> FilterStatistics:
        """ZtZ, ZtY and Σ y² of this batch (see the module docstring), on the host in float64."""
        xp, s = self.bk.xp, self.filter_size
        zh = xp.conj(self._z).transpose(0, 2, 1)  # (U·V, K, N)
        lags0, lags1 = (_lag_index(n, s) for n in self.grid)
        K = self.n_filters
        ztz = np.empty((K, K, 2 * s - 1, 2 * s - 1))
        # rows of maps at a time, so that the per-frequency products and their inverse transforms stay bounded
        # (K² full-grid correlations would be K² image-sized arrays)
        step = max(1, _CHUNK_ELEMENTS // (self._spectrum * K))
        for k in range(0, K, step):
            corr = self._at(zh[:, k : k + step] @ self._z, lags0, lags1)  # Σ_n conj(ẑ_k) ẑ_k' -> Σ_x z_k z_k'(x+δ)
            ztz[k : k + step] = self.bk.to_host(corr)
        ztz *= shared_channels(self.connectivity, K)[:, :, None, None]
        first = np.arange(s)
        cross = self._at(zh @ self._y, first, first)  # Σ_n conj(ẑ_k) ŷ_c -> Σ_x z_k(x) y_c(x + u)
        zty = self.bk.to_host(cross).astype(np.float64)
        if self.connectivity is not None:
            zty *= self.connectivity[:, :, None, None]
        return FilterStatistics(np.ascontiguousarray(ztz), np.ascontiguousarray(zty), self.yty, float(self.n_images))

    def data_term(self, filters: Array) -> float:
        """½‖P Z f − y‖² of this batch at `filters` (K, C, s, s) (exact for both boundaries)."""
        xp = self.bk.xp
        f = self.bk.asarray(filters, dtype=self.images.dtype)
        if self.connectivity is not None:
            f = f * self.bk.asarray(self.connectivity, dtype=f.dtype)[:, :, None, None]
        fh = self._per_frequency(self.bk.rfft2(f, self.grid))  # (U·V, K, C)
        recon = self._to_grid(self._z @ fh)  # (N, C) + grid
        H, W = self.image_shape
        o = self.offset
        resid = recon[..., o : o + H, o : o + W] - self.images
        return 0.5 * float(xp.sum(resid.astype(xp.float64) ** 2))


def correlate_statistics(
    maps: Array,
    images: Array,
    filter_size: int,
    *,
    boundary: Boundary = "circular",
    connectivity: np.ndarray | None = None,
) -> FilterStatistics:
    """The statistics ZtZ, ZtY, Σ y² of one batch of coded images (see the module docstring).

    Parameters
    ----------
    maps : array of shape (N, K, H', W')
    images : array of shape (N, C, H, W)
    filter_size : int
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional

    Returns
    -------
    FilterStatistics

    Examples
    --------
    >>> import numpy as np
    >>> rng = np.random.default_rng(0)
    >>> stats = correlate_statistics(rng.standard_normal((2, 3, 8, 8)), rng.standard_normal((2, 1, 8, 8)), 3)
    >>> stats.ztz.shape, stats.zty.shape, stats.n_images
    ((3, 3, 5, 5), (3, 1, 3, 3), 2.0)
    """
    return BatchCorrelations(maps, images, filter_size, boundary=boundary, connectivity=connectivity).statistics()


class SurrogateOperator:
    r"""The quadratic surrogate of the filter sub-problem held by some statistics.

    .. math:: Q(f) = \tfrac12 \sum_{k,c} f_{kc} \cdot (A * f)_{kc} - \langle B, f \rangle + \tfrac12 \|y\|^2

    ``apply(f)`` is A ∗ f, computed on a (2s−1)×(2s−1) grid with FFTs (every lag fits without aliasing there);
    the operator works in float64 on the host, as the statistics are stored.

    Parameters
    ----------
    statistics : FilterStatistics
    connectivity : bool array of shape (K, C), optional
    """

    def __init__(self, statistics: FilterStatistics, connectivity: np.ndarray | None = None):
        self.statistics = statistics
        K, C, s, _ = statistics.zty.shape
        self.shape = (K, C, s, s)
        self.grid = (2 * s - 1, 2 * s - 1)
        self.mask = (
            np.ones((K, C, 1, 1))
            if connectivity is None
            else np.asarray(connectivity, dtype=np.float64)[..., None, None]
        )
        if self.mask.shape[:2] != (K, C):
            raise ValueError(f"connectivity has shape {self.mask.shape[:2]}, expected (K, C) = {(K, C)}")
        # ZtZ with the lag origin moved to [0, 0] (lag δ at δ mod (2s−1)); A * f at u is Σ_δ ZtZ[δ] f[u − δ], a
        # convolution whose every term stays apart on this grid (|u − δ| < 2s − 1)
        origin = np.fft.ifftshift(statistics.ztz, axes=(-2, -1))
        self._kernel_hat = np.fft.rfft2(origin, axes=(-2, -1))

    def apply(self, filters: np.ndarray) -> np.ndarray:
        """A ∗ f: (K, C, s, s) -> (K, C, s, s)."""
        s = self.shape[-1]
        f_hat = np.fft.rfft2(filters * self.mask, s=self.grid, axes=(-2, -1))
        out_hat = np.einsum("kjuv,jcuv->kcuv", self._kernel_hat, f_hat)
        return np.fft.irfft2(out_hat, s=self.grid, axes=(-2, -1))[..., :s, :s] * self.mask

    def value_and_gradient(self, filters: np.ndarray) -> tuple[float, np.ndarray]:
        """(Q(f), A ∗ f − B)."""
        af = self.apply(filters)
        b = self.statistics.zty
        value = 0.5 * float(np.sum(filters * af)) - float(np.sum(b * filters)) + 0.5 * self.statistics.yty
        return value, af - b

    def value(self, filters: np.ndarray) -> float:
        return self.value_and_gradient(filters)[0]

    def lipschitz(self, vector: np.ndarray | None = None, n_iter: int = 30) -> tuple[float, np.ndarray]:
        """‖A‖ by `n_iter` power iterations from `vector` (warm start), with a 5 % margin; and the last vector.

        An underestimate is safe for the filter step: FISTA doubles L when a step fails to descend.
        """
        v = np.ones(self.shape) if vector is None else np.asarray(vector, dtype=np.float64)
        v = v * self.mask
        norm = stable_norm(v)
        if norm == 0.0:
            return 1.0, np.ones(self.shape)
        v = v / norm
        estimate = 0.0
        for _ in range(n_iter):
            w = self.apply(v)
            norm = stable_norm(w)
            if norm == 0.0:
                break
            estimate, v = norm, w / norm
        return (_POWER_MARGIN * estimate if estimate > 0 else 1.0), v
