"""The dataset-wide rescale step of :mod:`solver.images.preprocess`: its statistics, the fit, and the fit split
into parts for data-parallel learning.

``y = (x - shift) / scale - mean`` with ``shift = min(x)``, ``scale = (max(x) - min(x)) / 2`` and ``mean`` the mean
of ``(x - shift) / scale``, as in Zeiler's 2010 toolbox. :mod:`solver.images.preprocess` re-exports every public name.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "PreprocessStats",
    "apply_rescale",
    "combine_rescale_means",
    "combine_rescale_ranges",
    "rescale_partial_mean",
    "rescale_partial_range",
]


@dataclass(frozen=True)
class PreprocessStats:
    """Dataset statistics of the rescale step: ``y = (x - shift) / scale - mean``.

    Attributes
    ----------
    shift : float
        Dataset minimum subtracted first.
    scale : float
        Half the dataset range (positive; 1 for a constant dataset).
    mean : float
        Mean of ``(x - shift) / scale`` over the dataset.
    """

    shift: float
    scale: float
    mean: float

    def __post_init__(self) -> None:
        values = {"shift": self.shift, "scale": self.scale, "mean": self.mean}
        bad = {name: v for name, v in values.items() if not np.isfinite(v)}
        if bad:
            raise ValueError(f"PreprocessStats values must be finite, got {bad}")
        if self.scale <= 0:
            raise ValueError(f"PreprocessStats scale must be positive, got scale={self.scale}")

    @classmethod
    def identity(cls) -> PreprocessStats:
        """Statistics of the identity map (``shift=0, scale=1, mean=0``), used when ``rescale=False``."""
        return cls(shift=0.0, scale=1.0, mean=0.0)

    def to_dict(self) -> dict[str, float]:
        """Plain-float dictionary, JSON-serialisable; inverse of :meth:`from_dict`."""
        return {name: float(value) for name, value in asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> PreprocessStats:
        """Build from the output of :meth:`to_dict`; keys must be exactly ``shift``, ``scale``, ``mean``."""
        expected = {"shift", "scale", "mean"}
        if set(data) != expected:
            raise ValueError(f"data must have keys {sorted(expected)}, got {sorted(data)}")
        return cls(shift=float(data["shift"]), scale=float(data["scale"]), mean=float(data["mean"]))


def _fit_rescale(x: np.ndarray) -> PreprocessStats:
    """Fit ``shift``, ``scale`` and ``mean`` of the 2010 toolbox rescale on the whole dataset."""
    low, high = float(x.min()), float(x.max())
    # A constant dataset has no range to normalise: scale 1 maps it to all zeros instead of dividing by 0.
    scale = (high - low) / 2.0 if high > low else 1.0
    shifted = PreprocessStats(shift=low, scale=scale, mean=0.0)
    mean = float(np.mean(_rescale(x, shifted), dtype=np.float64))
    return PreprocessStats(shift=low, scale=scale, mean=mean)


def _rescale(x: np.ndarray, stats: PreprocessStats) -> np.ndarray:
    """``(x - shift) / scale - mean`` in the dtype of `x` (stats are Python floats, so no promotion)."""
    return (x - stats.shift) / stats.scale - stats.mean


# The rescale fitted part by part (data-parallel learning): every part runs the per-image steps on its own images
# (`prepare_images`), the ranges of the parts give (shift, scale), then their float64 sums of the shifted and scaled
# values give the mean. This is `_fit_rescale` split in two passes over the same values, so the result equals
# `fit_preprocess` on all the images: shift and scale exactly, the mean up to the order of a float64 summation.


def rescale_partial_range(x: np.ndarray) -> tuple[float, float]:
    """(min, max) of a part of the prepared images (first pass of the rescale fit)."""
    return float(x.min()), float(x.max())


def combine_rescale_ranges(ranges: Sequence[tuple[float, float]]) -> PreprocessStats:
    """``shift`` and ``scale`` of the whole dataset from the (min, max) of its parts (``mean`` still 0).

    Raises
    ------
    ValueError
        If `ranges` is empty.
    """
    if not ranges:
        raise ValueError("ranges must hold the (min, max) of at least one part, got none")
    low = min(lo for lo, _ in ranges)
    high = max(hi for _, hi in ranges)
    scale = (high - low) / 2.0 if high > low else 1.0  # as in _fit_rescale
    return PreprocessStats(shift=low, scale=scale, mean=0.0)


def rescale_partial_mean(x: np.ndarray, shifted: PreprocessStats) -> tuple[float, int]:
    """(float64 sum, count) of ``(x - shift) / scale`` over a part (second pass of the rescale fit)."""
    return float(np.sum(_rescale(x, shifted), dtype=np.float64)), int(x.size)


def combine_rescale_means(shifted: PreprocessStats, sums: Sequence[tuple[float, int]]) -> PreprocessStats:
    """The fitted statistics from ``shift``, ``scale`` and the (sum, count) of every part, summed in order.

    Raises
    ------
    ValueError
        If `sums` is empty or counts no value.
    """
    count = sum(n for _, n in sums)
    if count <= 0:
        raise ValueError(f"sums must count at least one value, got {len(sums)} parts with {count} values")
    total = 0.0
    for part, _ in sums:
        total += part
    return PreprocessStats(shift=shifted.shift, scale=shifted.scale, mean=total / count)


def apply_rescale(x: np.ndarray, stats: PreprocessStats) -> np.ndarray:
    """``(x - shift) / scale - mean`` in the dtype of the prepared images `x` (the last step of the pipeline)."""
    return _rescale(x, stats)
