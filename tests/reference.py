"""Slow, direct references for the convolutions of the model (float64, explicit index loops).

Conventions of ``docs/design.md`` section 1: images ``(N, C, H, W)``, filters ``(K, C, s, s)``, connectivity ``(K, C)``
bool, maps ``(N, K, H', W')``.

* circular: ``y[n, c, i, j] = Σ_k g[k, c] Σ_{a, b} f[k, c, a, b] · z[n, k, (i − a) % H, (j − b) % W]``;
* valid:    ``y[n, c, i, j] = Σ_k g[k, c] Σ_{a, b} f[k, c, a, b] · z[n, k, i + s − 1 − a, j + s − 1 − b]``
  on maps of (H + s − 1) × (W + s − 1), which is ``scipy.signal.convolve2d(map, filter, mode="valid")``.

The loops run over the channel, filter, tap and pixel indices; leading batch axes of `maps` and `filters` are
broadcast against each other, which is how the dense matrices are built from unit vectors in one call.
Only for tiny shapes.
"""

from __future__ import annotations

import numpy as np

from solver.operators.convolution import map_shape


def _connectivity(connectivity, n_filters: int, n_channels: int) -> np.ndarray:
    if connectivity is None:
        return np.ones((n_filters, n_channels), dtype=bool)
    return np.asarray(connectivity, dtype=bool)


def convolve_loops(
    maps: np.ndarray,
    filters: np.ndarray,
    image_shape: tuple[int, int],
    boundary: str,
    connectivity=None,
) -> np.ndarray:
    """Reconstruction ``ŷ`` by explicit loops.

    Parameters
    ----------
    maps : array of shape (..., K, H', W')
    filters : array of shape (..., K, C, s, s)
    image_shape : (H, W)
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional

    Returns
    -------
    array of shape (broadcast of the leading axes) + (C, H, W), float64
    """
    maps = np.asarray(maps, dtype=np.float64)
    filters = np.asarray(filters, dtype=np.float64)
    K, C, s, _ = filters.shape[-4:]
    H, W = image_shape
    Hm, Wm = maps.shape[-2:]
    if (Hm, Wm) != map_shape((H, W), s, boundary):
        raise ValueError(f"maps of spatial shape {(Hm, Wm)} do not fit images {(H, W)} ({boundary})")
    g = _connectivity(connectivity, K, C)
    batch = np.broadcast_shapes(maps.shape[:-3], filters.shape[:-4])
    out = np.zeros(batch + (C, H, W))
    for c in range(C):
        for k in range(K):
            if not g[k, c]:
                continue
            for a in range(s):
                for b in range(s):
                    tap = filters[..., k, c, a, b]
                    for i in range(H):
                        for j in range(W):
                            if boundary == "circular":
                                row, col = (i - a) % H, (j - b) % W
                            else:
                                row, col = i + s - 1 - a, j + s - 1 - b
                            out[..., c, i, j] += tap * maps[..., k, row, col]
    return out


def circular_convolve(maps: np.ndarray, filters: np.ndarray, connectivity=None) -> np.ndarray:
    """(N, K, H, W) maps, (K, C, s, s) filters -> (N, C, H, W) by circular index loops."""
    return convolve_loops(maps, filters, maps.shape[-2:], "circular", connectivity)


def valid_convolve(maps: np.ndarray, filters: np.ndarray, connectivity=None) -> np.ndarray:
    """(N, K, H+s-1, W+s-1) maps, (K, C, s, s) filters -> (N, C, H, W) by linear index loops."""
    s = filters.shape[-1]
    Hm, Wm = maps.shape[-2:]
    return convolve_loops(maps, filters, (Hm - s + 1, Wm - s + 1), "valid", connectivity)


def dense_conv_matrix(
    filters: np.ndarray, image_shape: tuple[int, int], boundary: str, connectivity=None
) -> np.ndarray:
    """Dense D of the map operator of one image.

    Rows index the flattened image ``(C, H, W)`` (N = 1), columns the flattened maps ``(K, H', W')``; column j
    is the loop reference applied to the j-th unit vector.
    """
    K, C, s, _ = np.shape(filters)
    grid = map_shape(tuple(image_shape), s, boundary)
    n_cols = K * grid[0] * grid[1]
    units = np.eye(n_cols).reshape((n_cols, K) + grid)
    return convolve_loops(units, filters, image_shape, boundary, connectivity).reshape(n_cols, -1).T


def dense_filter_matrix(
    maps: np.ndarray,
    image_shape: tuple[int, int],
    filter_size: int,
    boundary: str,
    connectivity=None,
    *,
    n_channels: int | None = None,
) -> np.ndarray:
    """Dense Z of the filter operator for fixed maps (N, K, H', W').

    Rows index the flattened images ``(N, C, H, W)``, columns the flattened filters ``(K, C, s, s)``; column j
    is the loop reference applied to the j-th unit filter. C is `n_channels`, else the width of
    `connectivity`, else 1.
    """
    K = np.shape(maps)[1]
    if n_channels is None:
        n_channels = 1 if connectivity is None else np.shape(connectivity)[1]
    s = filter_size
    n_cols = K * n_channels * s * s
    units = np.eye(n_cols).reshape((n_cols, 1, K, n_channels, s, s))  # (B, 1): broadcast against the N of maps
    return convolve_loops(maps, units, image_shape, boundary, connectivity).reshape(n_cols, -1).T


def shrink_reference(v: np.ndarray, threshold: float, p: float) -> np.ndarray:
    """``argmin_x threshold·|x|^p + ½(x − v)²`` element by element, by bracketing (float64, a loop over entries).

    For 0 < p < 1 the stationarity condition ``g(x) = τ p x^(p−1) + x − |v| = 0`` is convex in x > 0 with its
    minimum at ``x_m = (τ p (1 − p))^(1/(2−p))``; the local minimiser is the root in ``[x_m, |v|]`` (when
    ``g(x_m) ≤ 0``), found by Brent's method, and it is kept only when it beats x = 0.
    """
    from scipy.optimize import brentq  # noqa: PLC0415

    v = np.asarray(v, dtype=np.float64)
    out = np.zeros_like(v)
    for idx, value in np.ndenumerate(v):
        a = abs(value)
        if p == 1.0:
            out[idx] = np.sign(value) * max(a - threshold, 0.0)
            continue
        x_m = (threshold * p * (1.0 - p)) ** (1.0 / (2.0 - p))

        def g(x: float, a: float = a) -> float:
            return threshold * p * x ** (p - 1.0) + x - a

        if x_m >= a or g(x_m) > 0:
            continue
        x = brentq(g, x_m, a, xtol=1e-300, rtol=4 * np.finfo(np.float64).eps, maxiter=500)
        if threshold * x**p + 0.5 * (x - a) ** 2 < 0.5 * a * a:
            out[idx] = np.sign(value) * x
    return out


def objective_reference(
    images: np.ndarray,
    maps: np.ndarray,
    filters: np.ndarray,
    lam: float,
    *,
    p: float = 1.0,
    boundary: str = "circular",
    connectivity=None,
) -> float:
    """E = ½ Σ ‖ŷ − y‖² + λ Σ |z|^p with ŷ from the loop reference, all in float64."""
    recon = convolve_loops(maps, filters, np.shape(images)[-2:], boundary, connectivity)
    resid = recon - np.asarray(images, dtype=np.float64)
    return 0.5 * float(np.sum(resid * resid)) + lam * float(np.sum(np.abs(np.asarray(maps, np.float64)) ** p))


def ista_dense(D: np.ndarray, y: np.ndarray, lam: float, n_iter: int) -> np.ndarray:
    """Plain ISTA on ``½‖D x − y‖² + λ‖x‖₁`` for one flattened image, step 1/‖D‖², from zero.

    The textbook iteration ``x ← soft(x − Dᵀ(D x − y)/L, λ/L)`` with a dense D: slow, and correct by inspection.
    """
    L = np.linalg.norm(D, 2) ** 2
    x = np.zeros(D.shape[1])
    for _ in range(n_iter):
        v = x - D.T @ (D @ x - y) / L
        x = np.sign(v) * np.maximum(np.abs(v) - lam / L, 0.0)
    return x


# --- pooling and the 2011 pixel path (Zeiler, Taylor & Fergus 2011) -------------------------------------------------


def pool_loops(maps: np.ndarray, size: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """3-D max pooling by explicit loops: per block (padded at the end of each axis), the first entry in (k, i, j)
    order of largest |value|, and its flat index ``(k·H + i)·W + j`` in the image's (K, H, W) stack."""
    maps = np.asarray(maps)
    N, K, H, W = maps.shape
    pk, ph, pw = size
    Kb, Hb, Wb = -(-K // pk), -(-H // ph), -(-W // pw)
    pooled = np.zeros((N, Kb, Hb, Wb), dtype=maps.dtype)
    switches = np.zeros((N, Kb, Hb, Wb), dtype=np.int64)
    for n in range(N):
        for kb in range(Kb):
            for ib in range(Hb):
                for jb in range(Wb):
                    best, where = -1.0, None
                    for k in range(kb * pk, min((kb + 1) * pk, K)):
                        for i in range(ib * ph, min((ib + 1) * ph, H)):
                            for j in range(jb * pw, min((jb + 1) * pw, W)):
                                if abs(maps[n, k, i, j]) > best:
                                    best, where = abs(maps[n, k, i, j]), (k, i, j)
                    k, i, j = where
                    pooled[n, kb, ib, jb] = maps[n, k, i, j]
                    switches[n, kb, ib, jb] = (k * H + i) * W + j
    return pooled, switches


def unpool_loops(pooled: np.ndarray, switches: np.ndarray, shape: tuple[int, int, int, int]) -> np.ndarray:
    """Each pooled value written back at its switch (an explicit loop), zeros elsewhere; float64."""
    N, K, H, W = shape
    out = np.zeros((N, K * H * W))
    for n in range(N):
        for b, s in enumerate(np.asarray(switches[n]).ravel()):
            out[n, int(s)] = float(np.asarray(pooled[n]).ravel()[b])
    return out.reshape(shape)


def dense_unpool_matrix(switches: np.ndarray, n_entries: int) -> np.ndarray:
    """Dense U of one image: ``n_entries`` (K·H·W) rows, one column per block, a 1 at (switch, block)."""
    sw = np.asarray(switches).ravel()
    U = np.zeros((n_entries, sw.size))
    for b, s in enumerate(sw):
        U[int(s), b] = 1.0
    return U


def dense_path_matrices(
    layers, switches, image_shape: tuple[int, int], boundary: str, n_images: int
) -> list[np.ndarray]:
    """Per image n, the dense ``R = F_1 U_1 F_2 U_2 ⋯ F_L`` of a stack, from the loop convolutions.

    Parameters
    ----------
    layers : sequence of (filters (K, C, s, s), connectivity (K, C) or None, pool (3,) or None)
        Bottom layer first.
    switches : sequence of integer arrays (N, Kb, Hb, Wb) or None
        ``switches[j]`` for layer j+1 (None where it does not pool). One per layer below the top one gives
        ``R`` on the top layer's maps; one per layer, the top one included, gives the path ``B`` of the layer
        above (the unknowns are then the top layer's pooled maps).
    image_shape : (H, W)
    boundary : {"circular", "valid"}
    n_images : int
        N.

    Returns
    -------
    list of N arrays, rows the flattened image (C_1, H, W), columns the flattened top maps (K_L, H_L', W_L')
    """
    shape = tuple(image_shape)
    blocks = []  # per layer: (dense F, shape of its maps (K, H', W'), switches or None)
    for index, (f, g, pool) in enumerate(layers):
        s = np.shape(f)[-1]
        F = dense_conv_matrix(f, shape, boundary, g)
        grid = map_shape(shape, s, boundary)
        K = np.shape(f)[0]
        sw = switches[index] if index < len(switches) else None
        blocks.append((F, (K,) + tuple(grid), sw))
        if sw is not None:
            shape = (-(-grid[0] // pool[1]), -(-grid[1] // pool[2]))
        else:
            shape = tuple(grid)
    out = []
    for n in range(n_images):
        R = None
        for F, maps_shape, sw in blocks:
            R = F if R is None else R @ F
            if sw is not None:
                R = R @ dense_unpool_matrix(sw[n], int(np.prod(maps_shape)))
        out.append(R)
    return out
