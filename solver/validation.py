"""Input checks of the public functions: every failure is a ``ValueError`` naming the argument and the value."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from .backend import Array, Backend, backend_of
from .operators.connectivity import boolean_table
from .operators.convolution import BOUNDARIES


def _as_array(a: Any, name: str) -> Array:
    try:
        return a if hasattr(a, "__array_namespace__") or hasattr(a, "__cuda_array_interface__") else np.asarray(a)
    except Exception as exc:  # ragged lists and the like
        raise ValueError(f"{name} must be an array, got {type(a).__name__}: {exc}") from None


def _float_dtype(a: Array, name: str) -> Array:
    """Keep float32/float64; integers and float16 become float32; anything else is refused."""
    kind = np.dtype(a.dtype).kind
    if kind == "f":
        return a if a.dtype in (np.float32, np.float64) else a.astype(np.float32)
    if kind in "iu":
        return a.astype(np.float32)
    raise ValueError(f"{name} must hold real numbers, got dtype {a.dtype}")


def check_finite(a: Array, name: str) -> None:
    xp = backend_of(a).xp
    if not bool(xp.all(xp.isfinite(a))):
        _refuse_non_finite(a, name)


def _refuse_non_finite(a: Array, name: str) -> None:
    xp = backend_of(a).xp
    n_nan = int(xp.sum(xp.isnan(a)))
    n_inf = int(xp.sum(xp.isinf(a)))
    raise ValueError(f"{name} contains non-finite values ({n_nan} NaN, {n_inf} inf)")


def magnitude_limit(dtype: Any, shape: tuple[int, int], power: int = 2) -> float:
    """The largest |value| that images (or maps) of `shape` may hold in `dtype`.

    The solvers square Fourier coefficients in the arrays' dtype (Parseval's norms, the filter update's Gram
    matrices); a coefficient is a sum over the H·W pixels, so it reaches H·W times the peak value, and its square
    overflows float32 (largest 3.4e38) for a 128×128 image with values near 1e15. The factor 4 leaves room for a
    residual or a sum over filters being larger than the images. The consensus filter step multiplies three such
    coefficients per frequency (conj(ẑ)·ẑ·ŷ): `power` 3 (float32, 256×256 positive images failed from 1e9; this
    limit is 2.7e7 there).
    """
    return float(np.finfo(dtype).max) ** (1.0 / power) / (4.0 * shape[0] * shape[1])


def check_values(a: Array, name: str, dtype: Any = None, power: int = 2, why: str = "") -> None:
    """Finite, and within :func:`magnitude_limit` of `a`'s last two axes in `dtype` (default: `a`'s, else the one
    `a` is about to be cast to): two reductions, no temporary array."""
    xp = backend_of(a).xp
    peak = max(float(xp.max(a)), -float(xp.min(a)))
    if not math.isfinite(peak):
        _refuse_non_finite(a, name)
    dtype = np.dtype(a.dtype if dtype is None else dtype)
    limit = magnitude_limit(dtype, tuple(a.shape[-2:]), power)
    if peak > limit:
        wider = " or compute in float64" if dtype.itemsize < 8 else ""
        what = why or "the squares of their Fourier coefficients would overflow"
        raise ValueError(
            f"{name} holds values up to {peak:.3g}, past the {limit:.3g} that {dtype.name} takes for "
            f"{a.shape[-2]}x{a.shape[-1]} arrays ({what}): scale {name} down (the maps and λ scale with the "
            f"images){wider}"
        )


def float_array(a: Any, name: str) -> Array:
    """`a` as a float32 or float64 array (integers become float32), or a ValueError naming `name`."""
    return _float_dtype(_as_array(a, name), name)


def as_images(images: Any, name: str = "images", dtype: Any = None) -> Array:
    """(N, C, H, W), (N, H, W) or (H, W) -> (N, C, H, W) real floating array (in `dtype` when given), its values
    checked in the dtype it will be computed in."""
    a = float_array(images, name)
    if a.ndim == 2:
        a = a[None, None]
    elif a.ndim == 3:
        a = a[:, None]
    elif a.ndim != 4:
        raise ValueError(f"{name} must have shape (N, C, H, W), (N, H, W) or (H, W), got shape {tuple(a.shape)}")
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {tuple(a.shape)})")
    check_values(a, name, dtype)  # before a cast to a narrower dtype, which would turn them into inf
    return a if dtype is None else a.astype(dtype, copy=False)


def as_filters(filters: Any, n_channels: int, image_shape: tuple[int, int], dtype) -> Array:
    """(K, C, s, s) or (K, s, s) -> (K, C, s, s) in `dtype`, checked against the images."""
    f = float_array(filters, "filters")
    if f.ndim == 3:
        f = f[:, None]
    if f.ndim != 4:
        raise ValueError(f"filters must have shape (K, C, s, s) or (K, s, s), got shape {tuple(f.shape)}")
    K, C, s0, s1 = f.shape
    if K == 0 or s0 == 0:
        raise ValueError(f"filters is empty (shape {tuple(f.shape)})")
    if s0 != s1:
        raise ValueError(f"filters must be square (K, C, s, s), got shape {tuple(f.shape)}")
    if C != n_channels:
        raise ValueError(f"filters have {C} channels (shape {tuple(f.shape)}) but the images have {n_channels}")
    if s0 > image_shape[0] or s0 > image_shape[1]:
        raise ValueError(f"filters of size {s0}x{s0} are larger than the images ({image_shape[0]}x{image_shape[1]})")
    check_finite(f, "filters")
    return f.astype(dtype, copy=False)


def check_init_filters(filters: np.ndarray, table: Any) -> None:
    """Refuse start filters that are zero on every channel they connect to: such a filter's maps stay zero, so
    does its gradient, and it would never learn (as the all-zero start that leaves E at ½‖y‖²)."""
    check_finite(filters, "init_filters")
    K, C = filters.shape[:2]
    connected = np.ones((K, C), dtype=bool) if table is None else np.asarray(table, dtype=bool)
    energy = np.einsum("kcij,kcij->kc", filters, filters, dtype=np.float64)
    dead = np.flatnonzero(~np.any((energy > 0) & connected, axis=1))
    if dead.size:
        raise ValueError(
            f"init_filters has {dead.size} filter(s) of zero norm on their connected channels (index "
            f"{', '.join(map(str, dead[:10].tolist()))}{', ...' if dead.size > 10 else ''}): a zero filter's maps and "
            "gradient stay zero, so it never learns; start every filter from non-zero values"
        )


def check_lam(lam: Any) -> float:
    try:
        value = float(lam)
    except (TypeError, ValueError):
        raise ValueError(f"lam must be a positive number, got {lam!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise ValueError(f"lam must be a positive number, got {lam!r}")
    return value


def check_p(p: Any) -> float:
    try:
        value = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"p must be in (0, 1], got {p!r}") from None
    if not 0 < value <= 1:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    return value


def check_boundary(boundary: Any) -> str:
    if boundary not in BOUNDARIES:
        raise ValueError(f"boundary must be one of {BOUNDARIES}, got {boundary!r}")
    return boundary


def check_positive_int(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def check_connectivity(connectivity: Any, n_filters: int, n_channels: int, backend: Backend) -> Array | None:
    if connectivity is None:
        return None
    g = boolean_table(connectivity if backend.name == "numpy" else backend.to_host(connectivity))
    if g.shape != (n_filters, n_channels):
        raise ValueError(
            f"connectivity must be a boolean (or 0/1) array of shape (K, C) = {(n_filters, n_channels)}, "
            f"got shape {g.shape}"
        )
    return backend.asarray(g)
