r"""Proximal maps: the shrinkage of ``τ|x|^p`` and the projections of the filter constraint.

Shrinkage solves, element by element,

.. math:: \operatorname{shrink}_p(v, \tau) = \arg\min_x \; \tau |x|^p + \tfrac12 (x - v)^2, \qquad 0 < p \le 1

* p = 1: soft threshold;
* p = 1/2 and p = 2/3: the closed-form roots of Krishnan & Fergus (NIPS 2009), a cubic and a quartic;
* other p: Newton's method on the stationarity condition from x = |v|, vectorised, then the comparison with
  x = 0 (the problem is non-convex for p < 1, so zero must be tested explicitly).

Every shrinkage keeps the backend and dtype of `v` and never modifies it.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np

from ..backend import Array, backend_of

FilterNorm = Literal["plane", "filter"]

_NEWTON_STEPS = 12


def soft_threshold(v: Array, threshold: float) -> Array:
    r"""Proximal operator of ``threshold * ‖·‖₁``.

    Parameters
    ----------
    v : array of shape (...)
        Input point; any backend, real floating dtype.
    threshold : float
        Non-negative threshold.

    Returns
    -------
    array of shape (...)
        ``sign(v) * max(|v| - threshold, 0)``, same backend and dtype as `v`.

    Examples
    --------
    >>> import numpy as np
    >>> soft_threshold(np.array([-2.0, 0.5, 3.0]), 1.0)
    array([-1.,  0.,  2.])
    """
    xp = backend_of(v).xp
    return xp.sign(v) * xp.maximum(xp.abs(v) - threshold, 0)


def _floor(xp, dtype) -> float:
    # tiny**(1/3): keeps a**1.5 and a**(p-2) finite for p in (0, 1) without warnings; below it, x = 0 anyway.
    return float(xp.finfo(dtype).tiny) ** (1.0 / 3.0)


def _keep_if_better(a: Array, x: Array, tau: float, p: float) -> Array:
    """x where τx^p + ½(x − a)² < ½a² (beats zero), else 0; a = |v| ≥ 0, x ≥ 0 a candidate root."""
    xp = backend_of(a).xp
    x = xp.where(xp.isfinite(x) & (x > 0), x, 0)
    better = tau * x**p + 0.5 * (x - a) ** 2 < 0.5 * a * a
    return xp.where(better, x, 0)


def _shrink_half(a: Array, tau: float) -> Array:
    """p = 1/2 on a = |v|: x = t² with t the largest root of t³ − a·t + τ/2 = 0 (trigonometric form)."""
    xp = backend_of(a).xp
    safe = xp.maximum(a, _floor(xp, a.dtype))
    arg = -(3.0 * math.sqrt(3.0) * tau / 4.0) / (safe * xp.sqrt(safe))
    real_roots = arg >= -1  # three real roots, hence a positive local minimum of the scalar problem
    phi = xp.arccos(xp.clip(arg, -1, 1)) / 3.0
    t = 2.0 * xp.sqrt(safe / 3.0) * xp.cos(phi)
    return _keep_if_better(a, xp.where(real_roots, t * t, 0), tau, 0.5)


def _shrink_two_thirds(a: Array, tau: float) -> Array:
    """p = 2/3 on a = |v|: x = t³ with t the largest root of t⁴ − a·t + 2τ/3 = 0 (Ferrari).

    Computed in float64 whatever the input dtype (a⁴ and the resolvent overflow or cancel in float32), with the
    cancellation-free form of Cardano's root, then polished by two Newton steps on the stationarity condition.
    """
    xp = backend_of(a).xp
    a64 = a.astype(xp.float64)
    tau = tau if isinstance(tau, float) else tau.astype(xp.float64)
    r = 2.0 * tau / 3.0
    # Resolvent cubic m³ − r·m − a²/8 = 0; its largest real root m > 0 splits the quartic into quadratics.
    # With u = a²/16 and c = r³/27 the discriminant is u² − c, written as u²(1 − (√c/u)²) to avoid overflow.
    u = a64 * a64 / 16.0
    c = r**3 / 27.0
    ratio = xp.sqrt(c) / xp.maximum(u, _floor(xp, xp.float64))  # √c / u, so that u² is never formed
    one_root = ratio <= 1
    big = xp.cbrt(u + u * xp.sqrt(xp.maximum(1 - ratio * ratio, 0)))  # ≥ (r/3)^(1/2) > 0 on that branch
    cardano = big + (r / 3.0) / xp.maximum(big, _floor(xp, xp.float64))  # product of the two cube roots is r/3
    arg = xp.clip(u * xp.sqrt(27.0 / r**3), -1, 1)  # cos(3θ) = u / √c on the three-real-root branch
    trig = 2.0 * xp.sqrt(r / 3.0) * xp.cos(xp.arccos(arg) / 3.0)
    m = xp.maximum(xp.where(one_root, cardano, trig), _floor(xp, xp.float64))
    s = xp.sqrt(2.0 * m)
    inside = 2.0 * a64 / s - 2.0 * m
    t = 0.5 * (s + xp.sqrt(xp.maximum(inside, 0)))
    x = xp.where(inside >= 0, t**3, 0)
    x = _newton_polish(a64, x, tau, 2.0 / 3.0, steps=2)
    return _keep_if_better(a, xp.minimum(x, a64).astype(a.dtype), tau, 2.0 / 3.0)


def _newton_polish(a: Array, x: Array, tau: float, p: float, *, steps: int) -> Array:
    """A few Newton steps on τ p x^(p−1) + x − a = 0 from x > 0 (zeros stay zero)."""
    xp = backend_of(a).xp
    positive = x > 0
    xs = xp.where(positive, x, 1)
    for _ in range(steps):
        g = tau * p * xs ** (p - 1) + xs - a
        dg = 1.0 + tau * p * (p - 1) * xs ** (p - 2)
        xs = xp.where(dg > 0, xs - g / xp.where(dg > 0, dg, 1), xs)
        xs = xp.maximum(xs, _floor(xp, xs.dtype))
    return xp.where(positive, xs, 0)


def _shrink_newton(a: Array, tau: float, p: float) -> Array:
    """General p on a = |v|: Newton on g(x) = τ p x^(p−1) + x − a from x = a.

    For 0 < p < 1, g is convex on x > 0, so from x = a (where g > 0) Newton decreases monotonically to the
    largest root, the local minimiser, whenever one exists.
    """
    xp = backend_of(a).xp
    x = a
    tiny = _floor(xp, a.dtype)
    for _ in range(_NEWTON_STEPS):
        xs = xp.maximum(x, tiny)
        g = tau * p * xs ** (p - 1) + xs - a
        dg = 1.0 + tau * p * (p - 1) * xs ** (p - 2)
        x = xp.where(dg > 0, xs - g / xp.where(dg > 0, dg, 1), 0)
        x = xp.maximum(x, 0)
    return _keep_if_better(a, x, tau, p)


def shrink(v: Array, threshold: float | Array, p: float = 1.0) -> Array:
    r"""Proximal operator of ``threshold * |·|^p``, element-wise.

    Parameters
    ----------
    v : array of shape (...)
        Input point; any backend, real floating dtype.
    threshold : float, or array broadcasting against `v`
        τ ≥ 0 (an array gives one threshold per image, for example; its values are trusted).
    p : float
        Exponent in (0, 1].

    Returns
    -------
    array of shape (...)
        ``argmin_x τ|x|^p + ½(x − v)²``, same backend and dtype as `v`.

    Examples
    --------
    >>> import numpy as np
    >>> shrink(np.array([-2.0, 0.5, 3.0]), 1.0, p=1.0)
    array([-1.,  0.,  2.])
    """
    if not 0 < p <= 1:
        raise ValueError(f"p must be in (0, 1], got {p!r}")
    scalar = isinstance(threshold, int | float)
    if scalar:
        if not threshold >= 0:
            raise ValueError(f"threshold must be non-negative, got {threshold!r}")
        threshold = float(threshold)
    if p == 1.0:
        return soft_threshold(v, threshold)
    if scalar and threshold == 0:
        return v.copy()
    xp = backend_of(v).xp
    a = xp.abs(v)
    if p == 0.5:
        x = _shrink_half(a, threshold)
    elif abs(p - 2.0 / 3.0) < 1e-12:
        x = _shrink_two_thirds(a, threshold)
    else:
        x = _shrink_newton(a, threshold, p)
    return (xp.sign(v) * x).astype(v.dtype, copy=False)


class LpPenalty:
    r"""The sparsity term ``λ Σ |x|^p`` with its proximal map.

    ``penalty(x)`` is the value (a float); ``penalty.prox(v, step)`` is ``shrink(v, λ·step, p)``.
    """

    def __init__(self, lam: float, p: float = 1.0):
        if not lam > 0:
            raise ValueError(f"lam must be positive, got {lam!r}")
        if not 0 < p <= 1:
            raise ValueError(f"p must be in (0, 1], got {p!r}")
        self.lam = float(lam)
        self.p = float(p)

    def __call__(self, x: Array) -> float:
        return float(self.per_item(x).sum())

    def per_item(self, x: Array) -> np.ndarray:
        """``λ Σ |x[i]|^p`` for each item i along the first axis (each image), as host float64 (N,)."""
        bk = backend_of(x)
        xp = bk.xp
        a = xp.abs(x) if self.p == 1.0 else xp.abs(x) ** self.p
        sums = xp.sum(a.reshape(a.shape[0], -1), axis=1, dtype=xp.float64)
        return self.lam * bk.to_host(sums)

    def prox(self, v: Array, step: float) -> Array:
        return shrink(v, self.lam * step, self.p)


def _filter_norms(filters: Array, norm: FilterNorm) -> Array:
    xp = backend_of(filters).xp
    if norm == "plane":
        return xp.sqrt(xp.sum(filters * filters, axis=(-2, -1), keepdims=True))
    if norm == "filter":
        return xp.sqrt(xp.sum(filters * filters, axis=(-3, -2, -1), keepdims=True))
    raise ValueError(f"filter norm must be 'plane' or 'filter', got {norm!r}")


def project_unit_ball(filters: Array, norm: FilterNorm = "filter") -> Array:
    r"""Projection of (K, C, s, s) filters onto ``‖f‖₂ ≤ 1``, per plane f[k, c] or per filter f[k].

    The support constraint needs no work here: filters are stored on their s×s support.
    """
    xp = backend_of(filters).xp
    n = _filter_norms(filters, norm)
    return filters / xp.maximum(n, 1)


def normalise_unit(filters: Array, norm: FilterNorm = "plane") -> Array:
    """Rescale each plane (or filter) to unit norm exactly, as Zeiler's toolbox does; zero ones stay zero."""
    xp = backend_of(filters).xp
    n = _filter_norms(filters, norm)
    return xp.where(n > 0, filters / xp.where(n > 0, n, 1), 0)
