"""The pictures of the project, in one place: filter montages, sheets of images beside their reconstructions,
objective curves, and their PNG encoding (used by the job runner, the service and the CLI).

The drawing functions return float arrays in [0, 1] of shape (rows, cols) or (rows, cols, 3); :func:`png_bytes`
encodes one (Pillow). :func:`history_plot` draws with matplotlib, an optional dependency (the ``service`` and
``demo`` extras) imported only when a curve is drawn, so the numerical core does not need it.
"""

from __future__ import annotations

import io
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
        out[pad + r * step : pad + r * step + s, pad + c * step : pad + c * step + s] = _unit_range(tiles[k], True)
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


def image_sheet(*columns: np.ndarray, max_rows: int = 8) -> np.ndarray:
    """A [0, 1] picture with one row per image (at most `max_rows`): the n-th image of every column side
    by side (e.g. an input beside its reconstruction), channels averaged, each scaled to its own range."""
    rows = []
    for images in list(zip(*columns, strict=True))[:max_rows]:
        row = side_by_side(*(np.asarray(x, dtype=np.float64).mean(axis=0) for x in images))
        rows += [row, np.ones((4, row.shape[1]))]
    width = max(r.shape[1] for r in rows)
    return np.concatenate([np.pad(r, ((0, 0), (0, width - r.shape[1])), constant_values=1) for r in rows[:-1]])


def history_plot(history: list[dict], *, xlabel: str = "outer iteration", title: str = "objective") -> bytes:
    """The objective per outer iteration as PNG bytes (matplotlib, Agg): one panel per layer, each on its own
    scale (the layers' objectives differ by orders of magnitude), logarithmic where it spans a factor 10.
    `xlabel` says what ``iteration`` counts (an online job's batches or images read)."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    from matplotlib.figure import Figure  # noqa: PLC0415

    layers = sorted({h["layer"] for h in history})
    figure = Figure(figsize=(4.5 * len(layers) + 1.5, 4), dpi=100)
    for index, layer in enumerate(layers):
        axes = figure.add_subplot(1, len(layers), index + 1)
        points = [(h["iteration"], h["objective"]) for h in history if h["layer"] == layer]
        values = [v for _, v in points]
        axes.plot(*zip(*points, strict=True), marker=".", color=f"C{index}")
        axes.set_title(f"layer {layer}" if len(layers) > 1 else title)
        axes.set_xlabel(xlabel)
        axes.set_ylabel("objective E")
        axes.set_yscale("log" if min(values) > 0 and max(values) > 10 * min(values) else "linear")
        axes.grid(True, alpha=0.3)
    figure.tight_layout()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def png_bytes(picture: np.ndarray) -> bytes:
    """A [0, 1] float picture (H, W) or (H, W, 3) as PNG bytes."""
    from PIL import Image  # noqa: PLC0415

    data = (np.clip(picture, 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(data).save(buffer, format="PNG")
    return buffer.getvalue()
