r"""λ relative to λ_max: the smallest λ whose coding problem (p = 1) has the all-zero maps as its solution.

.. math:: \lambda_{\max} = \max_{n, k, i, j} \big|(D^H y_n)_{k, i, j}\big|

E(z) = ½‖Dz − y‖² + λ‖z‖₁ is convex; z = 0 is its minimiser iff 0 ∈ −Dᴴy + λ ∂‖·‖₁(0), that is iff
‖Dᴴy‖_∞ ≤ λ. Dᴴ is the adjoint of the synthesis with the boundary and the connectivity (for ``valid`` it
zero-pads the images first and yields maps of (H+s−1)×(W+s−1)); in the 2011 model it is Fᴴ Bᴴ, through the
frozen layers below (:class:`~solver.operators.pixel_path.PixelPath`), and the pooling of the layer's own maps
keeps the same threshold (its prox keeps one entry per block of the shrunk values). For p < 1 the zero maps
are always a local minimiser, so λ_max is then only a scale, the same as for p = 1 (alphacsc's and DiCoDiLe's
``reg`` × λ_max convention).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from ..backend import Array, Backend, get_backend
from ..config import LearnConfig
from ..operators.convolution import ConvOperator
from ..operators.pixel_path import LowerLayer, PixelPath
from ..validation import as_filters, as_images, check_boundary, check_connectivity, check_lam


def lambda_max(
    images: Array,
    filters: Array,
    *,
    boundary: Literal["circular", "valid"] = "circular",
    connectivity: Array | None = None,
    lower: Sequence[LowerLayer] = (),
    switches: Sequence[Array | None] = (),
    backend: Literal["auto", "numpy", "cupy"] = "auto",
) -> float:
    r"""The smallest λ for which :func:`~solver.encode` (p = 1) gives all-zero maps: ``max |Dᴴ y|``.

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        As the coding problem sees them (already preprocessed); computed in their dtype.
    filters : array of shape (K, C, s, s) or (K, s, s)
    boundary : {"circular", "valid"}
    connectivity : bool array of shape (K, C), optional
    lower : sequence of LowerLayer, optional
        The 2011 model: the frozen layers below (bottom first), through which the layer reconstructs `images`;
        `filters` then read the channels of the layer below.
    switches : sequence of integer arrays or None
        The switches of `lower` for these images (one entry per lower layer; None where it does not pool).
    backend : {"auto", "numpy", "cupy"}

    Returns
    -------
    float
        λ_max ≥ 0; λ = ``frac * lambda_max(...)`` with frac in (0, 1) is the usual way to choose λ.

    Examples
    --------
    >>> import numpy as np
    >>> y = np.zeros((1, 1, 4, 4)); y[0, 0, 1, 2] = 3.0
    >>> lambda_max(y, np.ones((1, 1, 2, 2)) / 2)
    1.5
    """
    boundary = check_boundary(boundary)
    y = as_images(images)
    bk = get_backend(backend)
    y = bk.asarray(y)
    path = PixelPath(lower, switches, y.shape[-2:], y.shape[0], boundary, bk, y.dtype) if lower else None
    n_channels = y.shape[1] if path is None else path.input_channels
    input_shape = y.shape[-2:] if path is None else path.input_shape
    f = bk.asarray(as_filters(filters, n_channels, input_shape, y.dtype))
    g = check_connectivity(connectivity, f.shape[0], f.shape[1], bk)
    op = ConvOperator(f, input_shape, boundary=boundary, connectivity=g)
    return analysis_max(op, y, bk, path)


def analysis_max(op: ConvOperator, images: Array, bk: Backend, path: PixelPath | None = None) -> float:
    """``max |Fᴴ (Bᴴ) y|`` for an operator and images already on the backend `bk` (what shards call)."""
    adjoint = op.adjoint(images if path is None else path.adjoint(images))
    return float(bk.to_host(bk.xp.max(bk.xp.abs(adjoint))))


def absolute_config(config: LearnConfig, lam_max: float) -> LearnConfig:
    """The one-layer `config` with its relative λ (``lam_scale="relative"``) made absolute: ``lam × lam_max``.

    Parameters
    ----------
    config : LearnConfig
        One layer, ``lam_scale="relative"``.
    lam_max : float
        λ_max of the layer's training input with its initial filters.

    Returns
    -------
    LearnConfig
        The same config with ``lam = config.layers[0].lam * lam_max`` and ``lam_scale="absolute"``.

    Examples
    --------
    >>> from solver import LayerSpec, LearnConfig
    >>> config = LearnConfig(layers=[LayerSpec(n_filters=2, filter_size=3, lam=0.5, lam_scale="relative")])
    >>> absolute_config(config, 4.0).layers[0].lam
    2.0
    """
    layer = config.layers[0]
    if len(config.layers) != 1 or layer.lam_scale != "relative":
        raise ValueError("absolute_config takes a one-layer config whose lam_scale is 'relative'")
    if not lam_max > 0:
        raise ValueError(
            f"lam_scale 'relative': λ_max of the training input is {lam_max!r}, so no λ relative to "
            "it can be positive (are the training images all zero?)"
        )
    return with_lam(config, layer.lam * lam_max)


def with_lam(config: LearnConfig, lam: float) -> LearnConfig:
    """The one-layer `config` with the absolute λ `lam` (``lam_scale="absolute"``); ``ValueError`` unless
    ``lam > 0``."""
    lam = check_lam(lam)
    spec = config.layers[0].model_copy(update={"lam": lam, "lam_scale": "absolute"})
    return LearnConfig.model_validate({**config.model_dump(exclude={"layers"}), "layers": [spec.model_dump()]})
