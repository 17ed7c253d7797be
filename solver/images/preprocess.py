r"""Image preprocessing for Deconvolutional Networks: grey, mean removal, contrast normalisation, rescale.

The steps follow Zeiler's toolboxes (see ``docs/zeiler.md`` section 5) and run in this fixed order:

1. ``grey``: colour ``(N, 3, H, W)`` to luma ``(N, 1, H, W)`` with ITU-R 601 weights (0.299, 0.587, 0.114).
2. ``zero_mean``: subtract each image's per-channel mean.
3. ``contrast_normalise``: local contrast normalisation (LCN) with a normalised Gaussian window ``w``,

   .. math::

       v = x - w \star x, \qquad \sigma = \sqrt{w \star v^2}, \qquad y = v / \max(\sigma, \text{floor}),

   computed per image and channel as a 'same' correlation with reflect padding (``scipy.ndimage`` mode
   ``"reflect"``, i.e. numpy.pad mode ``"symmetric"``: the edge pixel is repeated). The floor is 1 (2010
   toolbox) or the median of the image's local std over all its channels and pixels (2011 toolbox), itself
   floored at ``1e-4`` so that flat images do not divide by zero.
4. ``rescale``: over the whole dataset, ``y = (x - shift) / scale - mean`` with ``shift = min(x)``,
   ``scale = (max(x) - min(x)) / 2`` and ``mean`` the mean of ``(x - shift) / scale``, as in the 2010
   toolbox. The output has zero mean and a span of exactly 2, so it lies in about [-1, 1] (exactly when the
   data are symmetric about their mean). The fitted :class:`PreprocessStats` let new images be encoded with
   the same affine map.

All functions run on host numpy arrays and never modify their inputs. Images are ``(N, C, H, W)``;
``(N, H, W)`` and ``(H, W)`` arrays are taken as grey and promoted to ``(N, 1, H, W)``. float32 stays
float32 and float64 stays float64; the integer types of image files (uint8, uint16, int8, int16) become float32
divided by the dtype's maximum (uint8 and uint16 land in [0, 1]); wider integers (int32, int64, uint32, uint64)
become float32 as they are, as floats are taken: such arrays are mostly small numbers in a wide type (``np.save``
of Python integers writes int64), which the type's maximum (9.2e18 for int64) would turn into zeros; float16
becomes float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy import ndimage

from .rescale import (
    PreprocessStats,
    _fit_rescale,
    _rescale,
    apply_rescale,
    combine_rescale_means,
    combine_rescale_ranges,
    rescale_partial_mean,
    rescale_partial_range,
)

__all__ = [
    "FittedPreprocess",
    "PreprocessConfig",
    "PreprocessStats",
    "apply_preprocess",
    "apply_rescale",
    "combine_rescale_means",
    "combine_rescale_ranges",
    "fit_preprocess",
    "prepare_images",
    "rescale_partial_mean",
    "rescale_partial_range",
]

_LUMA_WEIGHTS = (0.299, 0.587, 0.114)  # ITU-R BT.601
# Lowest divisor for the "median" floor: a flat image (median local std 0) stays flat instead of blowing up.
_CN_EPS = 1e-4


class PreprocessConfig(BaseModel):
    """Preprocessing options; see the module docstring for the order and the mathematics.

    Attributes
    ----------
    grey : bool
        Convert 3-channel colour to 1-channel luma; 1-channel images pass through.
    zero_mean : bool
        Subtract each image's per-channel mean.
    contrast_normalise : bool
        Apply local contrast normalisation with a ``cn_size`` x ``cn_size`` Gaussian of width ``cn_sigma``.
    cn_size : int
        Odd window size, at least 3 (2010 toolbox: 5; 2011: 13).
    cn_sigma : float
        Gaussian standard deviation in pixels (2010 toolbox: 1.591; 2011: 4.77).
    cn_floor : {"one", "median"}
        Floor of the local std: 1 (2010 toolbox) or the image's median local std (2011 toolbox).
    cn_divisive : bool
        Divide by the floored local std; False keeps only the subtractive (high-pass) part.
    rescale : bool
        Rescale the whole dataset to span 2 with zero mean (about [-1, 1]).

    Examples
    --------
    >>> from solver import PreprocessConfig
    >>> PreprocessConfig(contrast_normalise=False).rescale
    True
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    grey: bool = False
    zero_mean: bool = True
    contrast_normalise: bool = False
    cn_size: int = Field(default=5, ge=3)
    cn_sigma: float = Field(default=1.591, gt=0, allow_inf_nan=False)
    cn_floor: Literal["one", "median"] = "median"
    cn_divisive: bool = True
    rescale: bool = True

    @field_validator("cn_size")
    @classmethod
    def _check_odd(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"cn_size must be odd so the window has a centre pixel, got {value}")
        return value


def fit_preprocess(images: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, PreprocessStats]:
    """Preprocess a dataset and fit the rescale statistics on it.

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        Images; float32, float64 or integer (integers are divided by the dtype's maximum). Not modified.
    config : PreprocessConfig
        Which steps to apply.

    Returns
    -------
    out : ndarray of shape (N, C', H, W)
        Preprocessed images, float32 unless `images` is float64; ``C' = 1`` when ``config.grey``.
    stats : PreprocessStats
        Fitted rescale statistics; the identity when ``config.rescale`` is False. For a constant dataset
        (max == min) ``scale`` is 1 and the output is all zeros.

    Raises
    ------
    ValueError
        If `images` has the wrong rank, is empty, has an unsupported dtype, holds NaN or inf, is smaller than
        ``cn_size`` when contrast normalising, or has neither 1 nor 3 channels when ``grey`` is set.

    Examples
    --------
    >>> images = np.zeros((2, 1, 8, 8), dtype=np.float32)
    >>> images[0, 0, 4, 4] = 1.0
    >>> out, stats = fit_preprocess(images, PreprocessConfig())
    >>> out.shape, out.dtype
    ((2, 1, 8, 8), dtype('float32'))
    >>> round(float(out.max() - out.min()), 6)
    2.0
    """
    x = _prepare(images, config)
    if not config.rescale:
        return x, PreprocessStats.identity()
    stats = _fit_rescale(x)
    return _rescale(x, stats), stats


def apply_preprocess(images: np.ndarray, config: PreprocessConfig, stats: PreprocessStats) -> np.ndarray:
    """Preprocess images with previously fitted rescale statistics (no refitting).

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        Images, as for :func:`fit_preprocess`. Not modified.
    config : PreprocessConfig
        The configuration used when `stats` were fitted.
    stats : PreprocessStats
        Output of :func:`fit_preprocess` (ignored when ``config.rescale`` is False).

    Returns
    -------
    ndarray of shape (N, C', H, W)
        Preprocessed images; on the fitting images this equals :func:`fit_preprocess`'s output exactly.

    Raises
    ------
    ValueError
        As for :func:`fit_preprocess`.
    """
    x = _prepare(images, config)
    return _rescale(x, stats) if config.rescale else x


def _prepare(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Validate, convert and run every step before the rescale; returns a new (N, C', H, W) array."""
    x = _as_float_images(images)
    if config.grey:
        x = _to_grey(x)
    if config.zero_mean:
        x = x - x.mean(axis=(2, 3), keepdims=True)
    if config.contrast_normalise:
        x = _contrast_normalise(x, config)
    return x


def _as_float_images(images: np.ndarray) -> np.ndarray:
    """Promote to (N, C, H, W), convert to float32/float64, copy, and check the values are finite."""
    a = np.asarray(images)
    if a.ndim not in (2, 3, 4):
        raise ValueError(f"images must have shape (N, C, H, W), (N, H, W) or (H, W), got shape {a.shape}")
    if a.size == 0:
        raise ValueError(f"images must not be empty, got shape {a.shape}")
    if np.issubdtype(a.dtype, np.integer) and a.dtype.itemsize <= 2:
        x = a.astype(np.float32) / np.float32(np.iinfo(a.dtype).max)
    elif np.issubdtype(a.dtype, np.integer):
        x = a.astype(np.float32)
    elif a.dtype in (np.float32, np.float64):
        x = a.copy()
    elif a.dtype == np.float16:
        x = a.astype(np.float32)
    else:
        raise ValueError(f"images must have an integer or real floating dtype, got dtype {a.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"images must be finite, got {np.count_nonzero(~np.isfinite(x))} NaN or inf values")
    if x.ndim == 2:
        return x[None, None]
    return x[:, None] if x.ndim == 3 else x


def _to_grey(x: np.ndarray) -> np.ndarray:
    """Luma of (N, 3, H, W) colour images as (N, 1, H, W); (N, 1, H, W) passes through."""
    channels = x.shape[1]
    if channels == 1:
        return x
    if channels != 3:
        raise ValueError(f"images must have 1 or 3 channels when grey=True, got C={channels} (shape {x.shape})")
    weights = np.asarray(_LUMA_WEIGHTS, dtype=x.dtype)
    return np.einsum("nchw,c->nhw", x, weights)[:, None]


def _gaussian_window(size: int, sigma: float) -> np.ndarray:
    """Gaussian window of shape (size, size), float64, normalised to sum 1."""
    r = np.arange(size, dtype=np.float64) - size // 2
    g = np.exp(-(r**2) / (2.0 * sigma**2))
    w = np.outer(g, g)
    return w / w.sum()


def _contrast_normalise(x: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Local contrast normalisation of (N, C, H, W) images, each channel separately; same shape and dtype."""
    height, width = x.shape[2:]
    if min(height, width) < config.cn_size:
        raise ValueError(
            f"images of size {height}x{width} are smaller than cn_size={config.cn_size} for contrast normalisation"
        )
    # A (1, 1, s, s) window filters H and W only: no mixing across images or channels.
    window = _gaussian_window(config.cn_size, config.cn_sigma)[None, None]
    centred = x - ndimage.correlate(x, window, mode="reflect")
    if not config.cn_divisive:
        return centred
    local_std = np.sqrt(np.maximum(ndimage.correlate(centred**2, window, mode="reflect"), 0))
    if config.cn_floor == "one":
        floor = np.ones((), dtype=x.dtype)
    else:
        median = np.median(local_std, axis=(1, 2, 3), keepdims=True)
        floor = np.maximum(median, np.asarray(_CN_EPS, dtype=x.dtype))
    return centred / np.maximum(local_std, floor)


def prepare_images(images: np.ndarray, config: PreprocessConfig) -> np.ndarray:
    """Every per-image step (grey, zero mean, contrast normalisation), without the dataset-wide rescale.

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        As for :func:`fit_preprocess`. Not modified.
    config : PreprocessConfig

    Returns
    -------
    ndarray of shape (N, C', H, W)
        What :func:`fit_preprocess` rescales; per image, so a split of the images gives the split of this.
    """
    return _prepare(images, config)


@dataclass(frozen=True)
class FittedPreprocess:
    """A preprocessing config with the statistics fitted on a training set: kept with a learned model so that
    encoding new images repeats exactly the same transformation.

    Attributes
    ----------
    config : PreprocessConfig
    stats : PreprocessStats
        What :meth:`fit` measured (the rescale's shift, scale and mean).

    Examples
    --------
    >>> import numpy as np
    >>> from solver import FittedPreprocess, PreprocessConfig
    >>> images = np.random.default_rng(0).random((2, 1, 16, 16))
    >>> out, fitted = FittedPreprocess.fit(images, PreprocessConfig(contrast_normalise=False))
    >>> bool(np.allclose(fitted.apply(images), out))
    True
    """

    config: PreprocessConfig
    stats: PreprocessStats

    @classmethod
    def fit(cls, images: np.ndarray, config: PreprocessConfig) -> tuple[np.ndarray, FittedPreprocess]:
        """Preprocess `images` and fit the statistics on them; returns (preprocessed images, fitted)."""
        out, stats = fit_preprocess(images, config)
        return out, cls(config, stats)

    def apply(self, images: np.ndarray) -> np.ndarray:
        """Preprocess new images with the fitted statistics (no refitting)."""
        return apply_preprocess(images, self.config, self.stats)

    def to_dict(self) -> dict:
        return {"config": self.config.model_dump(), "stats": self.stats.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> FittedPreprocess:
        return cls(PreprocessConfig.model_validate(data["config"]), PreprocessStats.from_dict(data["stats"]))
