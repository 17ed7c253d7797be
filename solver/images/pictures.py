"""Pictures as arrays (no file I/O here): filter montages and images beside their reconstructions.

The results are float arrays in [0, 1] of shape (rows, cols) or (rows, cols, 3), ready for any PNG writer.
"""

from __future__ import annotations

import math

import numpy as np


def _unit_range(a: np.ndarray, symmetric: bool) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64)
    if symmetric:
        m = np.abs(a).max()
        return 0.5 + 0.5 * a / m if m > 0 else np.full_like(a, 0.5)
    lo, hi = a.min(), a.max()
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def filter_montage(filters: np.ndarray, *, scale: int = 8, pad: int = 1, n_cols: int | None = None) -> np.ndarray:
    """One tile per filter, in a grid, each filter scaled to its own symmetric range (grey = 0).

    Parameters
    ----------
    filters : ndarray of shape (K, C, s, s)
        C = 1 gives grey tiles, C = 3 colour tiles; other C show the channel mean.
    scale : int
        Pixels per filter tap (nearest-neighbour upscaling).
    pad : int
        Separator width in filter taps; the separators are white.

    Returns
    -------
    ndarray of shape (rows, cols) or (rows, cols, 3)
        Values in [0, 1]; ``ceil(K / n_cols)`` rows of ``n_cols`` tiles.
    """
    f = np.asarray(filters, dtype=np.float64)
    if f.ndim != 4:
        raise ValueError(f"filters must have shape (K, C, s, s), got shape {f.shape}")
    K, C, s, _ = f.shape
    colour = C == 3
    tiles = f.transpose(0, 2, 3, 1) if colour else f.mean(axis=1)[..., None]
    n_cols = n_cols or math.ceil(math.sqrt(K))
    n_rows = math.ceil(K / n_cols)
    step = s + pad
    out = np.ones((n_rows * step + pad, n_cols * step + pad, tiles.shape[-1]))
    for k in range(K):
        r, c = divmod(k, n_cols)
        out[pad + r * step: pad + r * step + s, pad + c * step: pad + c * step + s] = _unit_range(tiles[k], True)
    out = np.kron(out, np.ones((scale, scale, 1)))
    return out if colour else out[..., 0]


def side_by_side(*images: np.ndarray, pad: int = 4) -> np.ndarray:
    """Grey images (H, W) in one row, each scaled to [0, 1] on its own range, white separators."""
    if not images:
        raise ValueError("side_by_side needs at least one image")
    H = max(im.shape[0] for im in images)
    parts = []
    for im in images:
        tile = np.ones((H, im.shape[1]))
        tile[: im.shape[0]] = _unit_range(im, False)
        parts += [tile, np.ones((H, pad))]
    return np.concatenate(parts[:-1], axis=1)
