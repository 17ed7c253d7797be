r"""The connected (map, channel) pairs of a connectivity table, and the Fourier-domain sums over them.

A table g (K, C) says which input channels c each map k reconstructs. The operators keep one Fourier filter plane
per *connected pair* and compute every product and sum on those pairs only, so their work scales with the number
P of pairs, not with K·C (Zeiler's toolbox: "all loops test C(j,k)==1"):

* synthesis ``ŷ[n, c] = Σ_{k: g[k,c]} f̂[k, c] ẑ[n, k]``: P products per image and frequency, summed per channel;
* analysis ``x̂[n, k] = Σ_{c: g[k,c]} conj(f̂[k, c]) ŝ[n, c]``: P products, summed per map;
* filter correlation ``Σ_n conj(ẑ[n, k]) ŝ[n, c]`` for each pair: N·P products;
* the per-frequency Gram matrix ``Σ_k f̂[k, c] conj(f̂[k, d])`` (C×C): Σ_k deg(k)² products, deg(k) the number of
  channels map k reads.

Two layouts of *pair arrays* (arrays with one entry per pair, then trailing axes):

* :class:`FullConnections` (every pair connected): the dense layout ``(K, C, ...)``, the filters' own, and the
  dense einsums (the fastest path for a full table);
* :class:`SparseConnections`: ``(P, ...)`` with the pairs in row-major (k, c) order (``numpy.nonzero(g)``), index
  arrays to gather them, and grouped sums that add each pair's product into its channel (or map) in as many
  vectorised steps as the largest group has members (see :func:`_steps`; ``add.reduceat`` does the same adds but
  is several times slower in numpy over a middle axis).

Both expose the same methods, so the operators and algorithms never branch on the table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Array, backend_of
from .linalg import (
    ShiftedNormalFactor,
    broadcast_rho,
    factor_shifted_normal,
    max_gram_eigenvalue,
    normal_gram,
    shifted_gram_inverse,
    shifted_power_inverse,
    solve_shifted_normal,
)

_EXACT_GRAM_MAX = 16  # largest C for which the per-frequency Gram eigenvalues are computed exactly (as in linalg)
_POWER_ITER = 50
_POWER_SAFETY = 1.05


def synthesize_hat(filters_hat: Array, maps_hat: Array) -> Array:
    """Σ_k f̂[k, c] · ẑ[n, k]: (K, C, U, V) × (N, K, U, V) -> (N, C, U, V)."""
    xp = backend_of(maps_hat).xp
    if filters_hat.shape[1] != 1:
        return xp.einsum("kcuv,nkuv->ncuv", filters_hat, maps_hat)
    # one channel: a plain multiply-reduce, no einsum loop overhead; a few images at a time, so that its product
    # is a fraction of the maps (the same sums, image by image)
    n = maps_hat.shape[0]
    out = xp.empty((n, 1, *maps_hat.shape[2:]), dtype=xp.result_type(filters_hat, maps_hat))
    for block in image_blocks(n, maps_hat.nbytes):
        out[block] = xp.sum(filters_hat[None, :, 0] * maps_hat[block], axis=1, keepdims=True)
    return out


#: Arrays as large as the maps are made in up to this many blocks of images (:func:`image_blocks`) ...
IMAGE_BLOCKS = 8
#: ... of at least this many bytes each: smaller blocks cost more in calls than they save in memory.
MIN_BLOCK_BYTES = 8 * 2**20


def image_blocks(n: int, nbytes: int, *, blocks: int | None = None, min_bytes: int | None = None) -> list[slice]:
    """`n` images whose arrays take `nbytes` in contiguous blocks: `blocks` (:data:`IMAGE_BLOCKS`) of them,
    fewer when the blocks would be under `min_bytes` (:data:`MIN_BLOCK_BYTES`; one block for small arrays)."""
    blocks = IMAGE_BLOCKS if blocks is None else blocks
    min_bytes = MIN_BLOCK_BYTES if min_bytes is None else min_bytes
    blocks = max(1, min(blocks, n, -(-int(nbytes) // max(1, min_bytes))))
    step = -(-n // blocks)
    return [slice(lo, min(n, lo + step)) for lo in range(0, n, step)]


def analyse_hat(filters_hat: Array, images_hat: Array) -> Array:
    """Σ_c conj(f̂[k, c]) · ŝ[n, c]: (K, C, U, V) × (N, C, U, V) -> (N, K, U, V)."""
    xp = backend_of(images_hat).xp
    if filters_hat.shape[1] == 1:
        return xp.conj(filters_hat[None, :, 0]) * images_hat
    return xp.einsum("kcuv,ncuv->nkuv", xp.conj(filters_hat), images_hat)


def connections(table: Array | None, n_filters: int, n_channels: int, xp: Any = np) -> Connections:
    """The pairs of `table` with index arrays on the array namespace `xp`.

    Parameters
    ----------
    table : bool array of shape (K, C), or None
        g; None (or a table with every entry True) gives :class:`FullConnections`.
    n_filters, n_channels : int
        K and C.
    xp : module
        ``numpy`` or ``cupy``: where the index arrays live.
    """
    if table is None:
        return FullConnections(n_filters, n_channels)
    try:
        g = np.asarray(backend_of(table).to_host(table), dtype=bool)
    except ValueError:  # a nested list
        g = np.asarray(table, dtype=bool)
    if g.shape != (n_filters, n_channels):
        raise ValueError(f"connectivity has shape {g.shape}, expected (K, C) = {(n_filters, n_channels)}")
    if g.all():
        return FullConnections(n_filters, n_channels)
    return SparseConnections(g, xp)


class FullConnections:
    """Every (k, c) pair: pair arrays are dense ``(K, C, ...)``; the products are the dense einsums."""

    full = True

    def __init__(self, n_filters: int, n_channels: int):
        self.n_filters, self.n_channels = int(n_filters), int(n_channels)
        self.n_pairs = self.n_filters * self.n_channels
        self.pair_shape = (self.n_filters, self.n_channels)

    @property
    def table(self) -> np.ndarray:
        return np.ones(self.pair_shape, dtype=bool)

    def gather(self, a: Array) -> Array:
        """(K, C, ...) -> pair layout (here the same array)."""
        return a

    def scatter(self, pairs: Array) -> Array:
        """Pair layout -> (K, C, ...) with zeros where not connected (here the same array)."""
        return pairs

    def synthesize(self, planes_hat: Array, maps_hat: Array) -> Array:
        return synthesize_hat(planes_hat, maps_hat)

    def analyse(self, planes_hat: Array, images_hat: Array) -> Array:
        return analyse_hat(planes_hat, images_hat)

    def correlate(self, maps_hat: Array, images_hat: Array) -> Array:
        # conj(Σ ẑ conj(ŝ)) is Σ conj(ẑ) ŝ exactly (a conjugate only flips a sign), and conjugates the images,
        # not a copy of the maps
        xp = backend_of(maps_hat).xp
        return xp.conj(xp.einsum("nkuv,ncuv->kcuv", maps_hat, xp.conj(images_hat)))

    def per_pair_maps(self, maps_hat: Array) -> Array:
        """(N, K, ...) broadcast to pair arrays (N, K, 1, ...)."""
        return maps_hat[:, :, None]

    def per_pair_channels(self, images_hat: Array) -> Array:
        """(N, C, ...) broadcast to pair arrays (N, 1, C, ...)."""
        return images_hat[:, None]

    def sum_over_maps(self, pairs: Array) -> Array:
        """Σ over the maps of each channel: (N, K, C, ...) -> (N, C, ...)."""
        return pairs.sum(axis=1)

    def gram_max_eigenvalue(self, planes_hat: Array) -> float:
        return max_gram_eigenvalue(planes_hat)

    def normal_gram(self, planes_hat: Array) -> Array:
        return normal_gram(planes_hat)

    def factor_shifted_normal(
        self, planes_hat: Array, rho: float | np.ndarray, gram: Array | None = None
    ) -> ShiftedNormalFactor:
        return factor_shifted_normal(planes_hat, rho, gram)

    def solve_shifted_normal(self, factor: ShiftedNormalFactor, planes_hat: Array, b_hat: Array) -> Array:
        return solve_shifted_normal(factor, b_hat)


def _steps(group_of: np.ndarray, n_groups: int, xp: Any, *columns: np.ndarray) -> list[tuple[Array, ...]]:
    """A plan to add terms into groups with one vectorised step per *rank*: step j takes the j-th term of every
    group that has more than j terms.

    The loop then runs (largest group size) times, whatever the number of groups, and the work is one product and
    one add per term. Returns, per step, the `columns` (per-term index arrays) at that step's terms, then the
    step's group ids, or None when the step covers every group in order (a plain add, no scatter).
    """
    group_of = np.asarray(group_of, dtype=np.intp)
    if group_of.size == 0:
        return []
    order = np.argsort(group_of, kind="stable")
    counts = np.bincount(group_of, minlength=n_groups)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]])
    rank = np.empty_like(group_of)
    rank[order] = np.arange(group_of.size) - first[group_of[order]]
    steps = []
    for j in range(int(rank.max()) + 1):
        terms = order[rank[order] == j]
        groups = group_of[terms]
        every = groups.size == n_groups  # sorted by group, so then groups == arange(n_groups)
        steps.append(tuple(xp.asarray(c[terms]) for c in columns) + (None if every else xp.asarray(groups),))
    return steps


def _accumulate(steps: list[tuple[Array, ...]], term: Any, out_shape: tuple[int, ...], like: Array) -> Array:
    """Σ of ``term(*columns)`` (arrays (N, n_terms, ...)) into the groups along axis 1 of an `out_shape` array."""
    xp = backend_of(like).xp
    out = None
    for *columns, groups in steps:
        t = term(*columns)
        if out is None and groups is None:
            out = t  # a fresh product: safe to add into
        elif groups is None:
            out += t
        else:
            if out is None:
                out = xp.zeros(out_shape, dtype=t.dtype)
            out[:, groups] += t  # each group at most once per step
    return xp.zeros(out_shape, dtype=like.dtype) if out is None else out


@dataclass(frozen=True)
class PairFactor:
    """The cached inverse of the Woodbury solve on the pairs: ``(ρI + AAᴴ)⁻¹`` per frequency.

    Attributes
    ----------
    rho : float or ndarray of shape (N,)
    inverse : array
        (U, V) or (N, 1, U, V) for C = 1 (Sherman–Morrison), (U, V, C, C) or (N, U, V, C, C) otherwise.
    """

    rho: float | np.ndarray
    inverse: Array

    def rho_array(self, like: Array) -> Array | float:
        return broadcast_rho(self.rho, like)


class SparseConnections:
    """Some pairs: pair arrays are ``(P, ...)`` in row-major (k, c) order, P = number of True entries of g.

    Parameters
    ----------
    table : bool ndarray of shape (K, C)
        On the host.
    xp : module
        Where the index arrays live.
    """

    full = False

    def __init__(self, table: np.ndarray, xp: Any = np):
        self._table = np.array(table, dtype=bool)
        self.n_filters, self.n_channels = self._table.shape
        maps, channels = np.nonzero(self._table)  # sorted by map: each map's pairs are one run
        self.n_pairs = int(maps.size)
        self.pair_shape = (self.n_pairs,)
        self._maps, self._channels = xp.asarray(maps), xp.asarray(channels)
        index = np.arange(self.n_pairs)
        self._per_channel = _steps(channels, self.n_channels, xp, index, maps)  # synthesis: Σ over maps
        self._per_map = _steps(maps, self.n_filters, xp, index, channels)  # analysis: Σ over channels
        # Gram C×C per frequency: every ordered pair (j1, j2) of pairs of one map adds to entry (c_j1, c_j2).
        first, second = [], []
        for k in range(self.n_filters):
            js = np.flatnonzero(maps == k)
            first.append(np.repeat(js, js.size))
            second.append(np.tile(js, js.size))
        first_a, second_a = np.concatenate(first), np.concatenate(second)
        target = channels[first_a] * self.n_channels + channels[second_a]
        self._per_gram_entry = _steps(target, self.n_channels**2, xp, first_a, second_a)

    @property
    def table(self) -> np.ndarray:
        return self._table.copy()

    def gather(self, a: Array) -> Array:
        """(K, C, ...) -> (P, ...): the connected planes."""
        return a[self._maps, self._channels]

    def scatter(self, pairs: Array) -> Array:
        """(P, ...) -> (K, C, ...) with zeros where not connected."""
        xp = backend_of(pairs).xp
        out = xp.zeros((self.n_filters, self.n_channels) + pairs.shape[1:], dtype=pairs.dtype)
        out[self._maps, self._channels] = pairs
        return out

    def synthesize(self, planes_hat: Array, maps_hat: Array) -> Array:
        """Σ_{k: g[k,c]} f̂[k, c] ẑ[n, k]: (P, U, V) × (N, K, U, V) -> (N, C, U, V)."""
        shape = (maps_hat.shape[0], self.n_channels) + maps_hat.shape[2:]
        return _accumulate(self._per_channel, lambda j, k: planes_hat[j][None] * maps_hat[:, k], shape, maps_hat)

    def analyse(self, planes_hat: Array, images_hat: Array) -> Array:
        """Σ_{c: g[k,c]} conj(f̂[k, c]) ŝ[n, c]: (P, U, V) × (N, C, U, V) -> (N, K, U, V)."""
        xp = backend_of(images_hat).xp
        shape = (images_hat.shape[0], self.n_filters) + images_hat.shape[2:]
        return _accumulate(
            self._per_map, lambda j, c: xp.conj(planes_hat[j])[None] * images_hat[:, c], shape, images_hat
        )

    def correlate(self, maps_hat: Array, images_hat: Array) -> Array:
        """Σ_n conj(ẑ[n, k]) ŝ[n, c] for each pair: (N, K, U, V) × (N, C, U, V) -> (P, U, V)."""
        xp = backend_of(maps_hat).xp
        conj_images = xp.conj(images_hat)  # as in FullConnections.correlate: no conjugated copy of the maps
        out = xp.empty((self.n_pairs,) + maps_hat.shape[2:], dtype=xp.result_type(maps_hat, images_hat))
        for j, c, k in self._per_map:  # step r: the r-th channel of every map that reads more than r
            z = maps_hat if k is None else maps_hat[:, k]
            out[j] = xp.conj(xp.sum(z * conj_images[:, c], axis=0))
        return out

    def per_pair_maps(self, maps_hat: Array) -> Array:
        """(N, K, ...) -> (N, P, ...): the map of each pair."""
        return maps_hat[:, self._maps]

    def per_pair_channels(self, images_hat: Array) -> Array:
        """(N, C, ...) -> (N, P, ...): the channel of each pair."""
        return images_hat[:, self._channels]

    def sum_over_maps(self, pairs: Array) -> Array:
        """Σ over the pairs of each channel: (N, P, ...) -> (N, C, ...)."""
        shape = (pairs.shape[0], self.n_channels) + pairs.shape[2:]
        return _accumulate(self._per_channel, lambda j, k: pairs[:, j], shape, pairs)

    def gram(self, planes_hat: Array) -> Array:
        """``Σ_k f̂[k, c] conj(f̂[k, d])`` per frequency from the pairs: (P, U, V) -> (U, V, C, C)."""
        xp = backend_of(planes_hat).xp
        C = self.n_channels
        sums = _accumulate(
            self._per_gram_entry,
            lambda a, b: (planes_hat[a] * xp.conj(planes_hat[b]))[None],
            (1, C * C) + planes_hat.shape[1:],
            planes_hat,
        )[0]
        return xp.moveaxis(sums.reshape((C, C) + sums.shape[1:]), (0, 1), (-2, -1))

    def gram_max_eigenvalue(self, planes_hat: Array) -> float:
        """Exact (batched eigenvalues of the C×C Gram) for C ≤ 16; otherwise a power iteration over all
        frequencies at once through :meth:`synthesize`/:meth:`analyse`, with a 5 % margin (as in linalg)."""
        bk = backend_of(planes_hat)
        xp = bk.xp
        if self.n_pairs == 0:
            return 0.0
        if self.n_channels <= _EXACT_GRAM_MAX:
            return bk.scalar(xp.max(xp.linalg.eigvalsh(self.gram(planes_hat))))
        v = xp.ones((1, self.n_filters) + planes_hat.shape[1:], dtype=planes_hat.dtype)
        lam = 0.0
        for _ in range(_POWER_ITER):
            w = self.analyse(planes_hat, self.synthesize(planes_hat, v))
            norm = bk.scalar(xp.sqrt(xp.sum(xp.abs(w) ** 2)))
            if norm == 0.0:
                return 0.0
            lam = norm / bk.scalar(xp.sqrt(xp.sum(xp.abs(v) ** 2)))
            v = w / norm
        return lam * _POWER_SAFETY

    def normal_gram(self, planes_hat: Array) -> Array:
        """What :meth:`factor_shifted_normal` needs of the filters, for every ρ: the power (U, V) for C = 1, the
        Gram (U, V, C, C) otherwise."""
        gram = self.gram(planes_hat)
        return gram[..., 0, 0].real if self.n_channels == 1 else gram

    def factor_shifted_normal(
        self, planes_hat: Array, rho: float | np.ndarray, gram: Array | None = None
    ) -> PairFactor:
        """The inverse of the Woodbury solve of ``(AᴴA + ρI) x = b`` (see :mod:`solver.operators.linalg`), from the
        pairs; `gram` is :meth:`normal_gram` of `planes_hat` when the caller keeps it."""
        rho_host = np.asarray(rho, dtype=np.float64)
        if not (np.all(np.isfinite(rho_host)) and np.all(rho_host > 0)):
            raise ValueError(f"rho must be positive, got {rho!r}")
        per_image = rho_host.ndim > 0
        gram = self.normal_gram(planes_hat) if gram is None else gram
        if self.n_channels == 1:
            inverse = shifted_power_inverse(gram, rho_host, planes_hat.real.dtype)
        else:
            inverse = shifted_gram_inverse(gram, rho_host)
        return PairFactor(rho_host.copy() if per_image else float(rho_host), inverse)

    def solve_shifted_normal(self, factor: PairFactor, planes_hat: Array, b_hat: Array) -> Array:
        """x̂ = ρ⁻¹(b̂ − Aᴴ(ρI + AAᴴ)⁻¹ A b̂) per frequency: two pair products and a C×C product."""
        xp = backend_of(b_hat).xp
        ab = self.synthesize(planes_hat, b_hat)  # (N, C, U, V)
        if self.n_channels == 1:
            t = factor.inverse * ab
        else:
            spec = "nuvcd,nduv->ncuv" if factor.inverse.ndim == 5 else "uvcd,nduv->ncuv"
            t = xp.einsum(spec, factor.inverse, ab)
        return (b_hat - self.analyse(planes_hat, t)) / factor.rho_array(b_hat)


Connections = FullConnections | SparseConnections
