r"""Per-frequency linear algebra: the shifted normal equations, spectral norms, and conjugate gradients.

In the Fourier domain the synthesis D of :class:`~solver.operators.convolution.ConvOperator` is, at each frequency ω, a
C×K matrix ``A(ω)`` with ``A[c, k] = f̂[k, c](ω)``. The normal equations of every inference algorithm are

.. math:: (A^H A + \rho I)\, x = b

one K×K system per frequency, of rank at most C. The Woodbury identity (Sherman–Morrison for C = 1) solves it
with a C×C inverse per frequency (Wohlberg, IEEE TIP 2016):

.. math:: (A^H A + \rho I)^{-1} b = \rho^{-1}\big(b - A^H (\rho I + A A^H)^{-1} A b\big)

The C×C inverses depend on the filters and ρ only, so they are computed once (a :class:`ShiftedNormalFactor`)
and reused while both stay fixed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ..backend import Array, backend_of
from ..stopping import check_stop

_EXACT_GRAM_MAX = 16  # largest min(P, Q) for which the per-frequency Gram eigenvalues are computed exactly
_POWER_ITER = 50
_POWER_SAFETY = 1.05


def max_gram_eigenvalue(a_hat: Array) -> float:
    """max over frequencies of σ_max(M(ω))², with M(ω)[p, q] = a_hat[p, q, ω] (a (P, Q, U, V) array).

    Exact (batched Hermitian eigenvalues of the smaller Gram matrix) when min(P, Q) ≤ 16; otherwise a power
    iteration over all frequencies at once, multiplied by a 5 % margin (callers that need a guarantee also
    check for descent).
    """
    bk = backend_of(a_hat)
    xp = bk.xp
    P, Q = a_hat.shape[:2]
    real = xp.real(a_hat[:1, :1, :1, :1]).dtype
    if min(P, Q) == 1:
        return bk.scalar(xp.max(xp.sum(xp.abs(a_hat) ** 2, axis=(0, 1))))
    if min(P, Q) <= _EXACT_GRAM_MAX:
        if P <= Q:
            gram = xp.einsum("pquv,rquv->uvpr", a_hat, xp.conj(a_hat))
        else:
            gram = xp.einsum("pquv,pruv->uvqr", xp.conj(a_hat), a_hat)
        return bk.scalar(xp.max(xp.linalg.eigvalsh(gram)))
    # Power iteration on the block-diagonal MᴴM: converges to the largest eigenvalue over all frequencies.
    v = xp.ones((Q,) + a_hat.shape[2:], dtype=a_hat.dtype)
    lam = 0.0
    for _ in range(_POWER_ITER):
        w = xp.einsum("pquv,puv->quv", xp.conj(a_hat), xp.einsum("pquv,quv->puv", a_hat, v))
        norm = bk.scalar(xp.sqrt(xp.sum(xp.abs(w) ** 2)))
        if norm == 0.0:
            return 0.0
        lam = norm / bk.scalar(xp.sqrt(xp.sum(xp.abs(v) ** 2)))
        v = w / xp.asarray(norm, dtype=real)
    return lam * _POWER_SAFETY


@dataclass(frozen=True)
class ShiftedNormalFactor:
    """The cached part of the solve of ``(AᴴA + ρI) x = b`` per frequency.

    Attributes
    ----------
    filters_hat : array of shape (K, C, U, V)
        f̂, the columns of A.
    rho : float or ndarray of shape (N,)
        The shift ρ > 0: one for all images, or one per image.
    inverse : array
        ``(ρ + ‖a‖²)⁻¹`` (Sherman–Morrison, C = 1) of shape (U, V) or (N, 1, U, V), or ``(ρI + AAᴴ)⁻¹``
        (Woodbury) of shape (U, V, C, C) or (N, U, V, C, C).
    """

    filters_hat: Array
    rho: float | np.ndarray
    inverse: Array

    def rho_array(self, like: Array) -> Array | float:
        """ρ broadcasting over an (N, K, U, V) array (a float when shared)."""
        return broadcast_rho(self.rho, like)


def broadcast_rho(rho: float | np.ndarray, like: Array) -> Array | float:
    """ρ broadcasting over an (N, K, U, V) array like `like`: a float when shared, else an (N, 1, 1, 1) array of
    `like`'s backend and real dtype."""
    if np.ndim(rho) == 0:
        return float(rho)
    xp = backend_of(like).xp
    return xp.asarray(np.asarray(rho).reshape(-1, 1, 1, 1), dtype=like.real.dtype)


def normal_gram(filters_hat: Array) -> Array:
    """The part of ``AᴴA`` that :func:`factor_shifted_normal` needs, which does not depend on ρ: ``Σ_k |f̂_k|²``
    of shape (U, V) (real) for C = 1, the Gram ``Σ_k f̂[k, c] conj(f̂[k, d])`` of shape (U, V, C, C) otherwise."""
    xp = backend_of(filters_hat).xp
    if filters_hat.shape[1] == 1:
        a = filters_hat[:, 0]
        return xp.sum(xp.real(a * xp.conj(a)), axis=0)
    return xp.einsum("kcuv,kduv->uvcd", filters_hat, xp.conj(filters_hat))


def factor_shifted_normal(
    filters_hat: Array, rho: float | np.ndarray, gram: Array | None = None
) -> ShiftedNormalFactor:
    """Precompute the per-frequency inverse for :func:`solve_shifted_normal` (ρ scalar, or one per image).

    `gram`: :func:`normal_gram` of `filters_hat`, when the caller keeps it (ADMM refactors at every change of ρ;
    the Gram is most of the work for one channel)."""
    rho_host = np.asarray(rho, dtype=np.float64)
    if not (np.all(np.isfinite(rho_host)) and np.all(rho_host > 0)):
        raise ValueError(f"rho must be positive, got {rho!r}")
    xp = backend_of(filters_hat).xp
    real = xp.real(filters_hat[:1, :1, :1, :1]).dtype
    per_image = rho_host.ndim > 0
    gram = normal_gram(filters_hat) if gram is None else gram
    if filters_hat.shape[1] == 1:
        inverse = shifted_power_inverse(gram, rho_host, real)
    else:
        inverse = shifted_gram_inverse(gram, rho_host)
    stored = rho_host.copy() if per_image else float(rho_host)
    return ShiftedNormalFactor(filters_hat=filters_hat, rho=stored, inverse=inverse)


def shifted_power_inverse(power: Array, rho: np.ndarray, dtype) -> Array:
    """``(ρ + ‖a‖²)⁻¹`` per frequency for the power ‖a‖² of shape (U, V): (U, V) for a scalar ρ, (N, 1, U, V)
    for one ρ per image."""
    xp = backend_of(power).xp
    if np.ndim(rho) > 0:
        inverse = 1.0 / (xp.asarray(np.asarray(rho).reshape(-1, 1, 1, 1), dtype=dtype) + power[None, None])
    else:
        inverse = 1.0 / (float(rho) + power)
    return inverse.astype(dtype, copy=False)


def shifted_gram_inverse(gram: Array, rho: np.ndarray) -> Array:
    """``(G + ρI)⁻¹`` per frequency for a Hermitian PSD Gram G of shape (U, V, C, C): (U, V, C, C) for a scalar ρ,
    (N, U, V, C, C) for one ρ per image.

    With one ρ per image the Gram is diagonalised once, G = Q Λ Qᴴ, and every image's inverse is
    Q diag(1/(ρₙ + Λ)) Qᴴ: one batch of eigendecompositions instead of N batches of inversions (about 2× faster
    for N = 8, C = 16, and the gap grows with N).
    """
    xp = backend_of(gram).xp
    if np.ndim(rho) == 0:
        return xp.linalg.inv(gram + float(rho) * xp.eye(gram.shape[-1], dtype=gram.dtype))
    eigenvalues, vectors = xp.linalg.eigh(gram)  # (U, V, C), (U, V, C, C)
    r = xp.asarray(np.asarray(rho).reshape(-1, 1, 1, 1), dtype=eigenvalues.dtype)
    scale = 1.0 / (r + xp.maximum(eigenvalues, 0)[None])  # (N, U, V, C); Λ ≥ 0 up to round-off
    return (vectors[None] * scale[..., None, :].astype(vectors.dtype)) @ xp.swapaxes(xp.conj(vectors), -1, -2)[None]


def solve_shifted_normal(factor: ShiftedNormalFactor, b_hat: Array) -> Array:
    """x̂ = (AᴴA + ρI)⁻¹ b̂ at every frequency.

    Parameters
    ----------
    factor : ShiftedNormalFactor
    b_hat : array of shape (N, K, U, V)

    Returns
    -------
    array of shape (N, K, U, V)
    """
    xp = backend_of(b_hat).xp
    f = factor.filters_hat
    rho = factor.rho_array(b_hat)
    if f.shape[1] == 1:
        a = f[:, 0]  # (K, U, V)
        ab = xp.sum(a[None] * b_hat, axis=1, keepdims=True)  # (N, 1, U, V)
        return (b_hat - xp.conj(a)[None] * (factor.inverse * ab)) / rho
    ab = xp.einsum("kcuv,nkuv->ncuv", f, b_hat)
    spec = "nuvcd,nduv->ncuv" if factor.inverse.ndim == 5 else "uvcd,nduv->ncuv"
    t = xp.einsum(spec, factor.inverse, ab)
    return (b_hat - xp.einsum("kcuv,ncuv->nkuv", xp.conj(f), t)) / rho


def stable_norm(a: np.ndarray) -> float:
    """‖a‖₂ of a host array without overflow: scaled by its largest |entry| first.

    The filter steps' power iterations take norms of ZᴴZ v, whose entries are of the order of the data's energy:
    squaring them overflowed float32 for images of 1e8 and float64 for 1e100 (np.linalg.norm squares as it goes).
    """
    peak = float(np.max(np.abs(a))) if a.size else 0.0
    if peak == 0.0 or not np.isfinite(peak):
        return peak
    return peak * float(np.linalg.norm(np.asarray(a, dtype=np.float64) / peak))


def inner(a: Array, b: Array, *, per_item: bool = True) -> np.ndarray:
    """Real inner products accumulated in float64 on the host: Σ a[i]·b[i] per item i along the first axis
    (shape (n,)), or over the whole arrays when ``per_item=False`` (shape (1,))."""
    bk = backend_of(a)
    xp = bk.xp
    rows = a.shape[0] if per_item and a.ndim > 0 else 1
    return bk.to_host(xp.sum((a * b).reshape(rows, -1), axis=1, dtype=xp.float64))


def conjugate_gradient(
    apply: Callable[[Array], Array],
    b: Array,
    x0: Array,
    n_iter: int,
    *,
    tol: float = 1e-6,
    per_item: bool = False,
) -> Array:
    """A few steps of linear conjugate gradients on ``apply(x) = b`` (symmetric positive semi-definite).

    With ``per_item=True`` every item along the first axis is its own system (`apply` must act on each item
    separately, as the normal operators of the images do) with its own step sizes, so a batch gives the same
    result as its items one by one. Warm-started at `x0`; a system stops when ‖r‖ < tol·‖b‖. Each step lowers
    the quadratic ½⟨x, A x⟩ − ⟨b, x⟩. As in Zeiler's toolbox, a step whose denominator vanishes is skipped
    instead of dividing by ~0.
    """
    xp = backend_of(b).xp
    shape = (-1,) + (1,) * (b.ndim - 1) if per_item else (1,) * b.ndim

    def dot(u: Array, v: Array) -> np.ndarray:
        return inner(u, v, per_item=per_item)

    def broadcast(v: np.ndarray) -> Array:
        return xp.asarray(v.reshape(shape), dtype=b.dtype)

    x = x0
    r = b - apply(x)
    rr = dot(r, r)
    threshold = (tol**2) * np.maximum(dot(b, b), 1e-300)
    d = r
    for _ in range(n_iter):
        check_stop()
        active = rr > threshold
        if not active.any():
            break
        Ad = apply(d)
        dAd = dot(d, Ad)
        active &= dAd > 1e-30
        alpha = np.where(active, rr / np.where(active, dAd, 1.0), 0.0)
        x = x + broadcast(alpha) * d
        r = r - broadcast(alpha) * Ad
        rr_new = dot(r, r)
        beta = np.where(active, rr_new / np.where(rr > 0, rr, 1.0), 0.0)
        d = r + broadcast(beta) * d
        rr = rr_new
    return x
