"""Image quality measures of reconstructions."""

from __future__ import annotations

import math

import numpy as np

from ..backend import Array


def psnr(reference: Array, estimate: Array, *, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak² / MSE)``, computed in float64.

    `peak` defaults to the range of `reference` (2 for inputs rescaled to about [−1, 1]); inf for a perfect
    estimate.

    Parameters
    ----------
    reference, estimate : arrays of the same shape
    peak : float, optional

    Returns
    -------
    float
        In dB.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import psnr
    >>> round(psnr(np.array([0.0, 2.0]), np.array([0.0, 1.8])), 2)
    23.01
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"reference has shape {ref.shape} but estimate has shape {est.shape}")
    if ref.size == 0:
        raise ValueError(f"reference is empty (shape {ref.shape})")
    if not (np.all(np.isfinite(ref)) and np.all(np.isfinite(est))):
        raise ValueError("reference and estimate must be finite (NaN or inf found)")
    if peak is None:
        peak = float(ref.max() - ref.min())
        if peak == 0.0:
            raise ValueError(
                f"reference is constant ({float(ref.flat[0])!r}), so its range, the default peak, is 0: give peak"
            )
    elif not (math.isfinite(float(peak)) and float(peak) > 0):
        raise ValueError(f"peak must be a positive number, got {peak!r}")
    mse = float(np.mean((ref - est) ** 2))
    peak = float(peak)
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)
