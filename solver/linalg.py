r"""Per-frequency linear algebra: the shifted normal equations, spectral norms, and conjugate gradients.

In the Fourier domain the synthesis D of :class:`~solver.operators.ConvOperator` is, at each frequency ω, a
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

from .backend import Array, backend_of

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
    rho : float
        The shift ρ > 0.
    inverse : array of shape (U, V) when C = 1, else (U, V, C, C)
        ``(ρ + ‖a‖²)⁻¹`` (Sherman–Morrison) or ``(ρI + AAᴴ)⁻¹`` (Woodbury).
    """

    filters_hat: Array
    rho: float
    inverse: Array


def factor_shifted_normal(filters_hat: Array, rho: float) -> ShiftedNormalFactor:
    """Precompute the per-frequency inverse for :func:`solve_shifted_normal`."""
    if not rho > 0:
        raise ValueError(f"rho must be positive, got {rho!r}")
    xp = backend_of(filters_hat).xp
    K, C = filters_hat.shape[:2]
    if C == 1:
        a = filters_hat[:, 0]
        inverse = 1.0 / (rho + xp.sum(xp.real(a * xp.conj(a)), axis=0))
        inverse = inverse.astype(xp.real(a).dtype, copy=False)
    else:
        gram = xp.einsum("kcuv,kduv->uvcd", filters_hat, xp.conj(filters_hat))
        eye = xp.eye(C, dtype=gram.dtype)
        inverse = xp.linalg.inv(gram + rho * eye)
    return ShiftedNormalFactor(filters_hat=filters_hat, rho=float(rho), inverse=inverse)


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
    if f.shape[1] == 1:
        a = f[:, 0]  # (K, U, V)
        ab = xp.sum(a[None] * b_hat, axis=1, keepdims=True)  # (N, 1, U, V)
        return (b_hat - xp.conj(a)[None] * (factor.inverse * ab)) / factor.rho
    ab = xp.einsum("kcuv,nkuv->ncuv", f, b_hat)
    t = xp.einsum("uvcd,nduv->ncuv", factor.inverse, ab)
    return (b_hat - xp.einsum("kcuv,ncuv->nkuv", xp.conj(f), t)) / factor.rho


def inner(a: Array, b: Array) -> float:
    """Real inner product Σ a·b over all entries, accumulated in float64."""
    xp = backend_of(a).xp
    return float(xp.sum(a * b, dtype=xp.float64))


def conjugate_gradient(
    apply: Callable[[Array], Array], b: Array, x0: Array, n_iter: int, *, tol: float = 1e-6
) -> Array:
    """A few steps of linear conjugate gradients on ``apply(x) = b`` (symmetric positive semi-definite).

    Warm-started at `x0`; stops early when ‖r‖ < tol·‖b‖. Each step lowers the quadratic
    ½⟨x, A x⟩ − ⟨b, x⟩ (the property the alternating schemes need). As in Zeiler's toolbox, a step whose
    denominator vanishes ends the loop instead of dividing by ~0.
    """
    x = x0
    r = b - apply(x)
    rr = inner(r, r)
    threshold = (tol**2) * max(inner(b, b), 1e-300)
    d = r
    for _ in range(n_iter):
        if rr <= threshold:
            break
        Ad = apply(d)
        dAd = inner(d, Ad)
        if dAd <= 1e-30:
            break
        alpha = rr / dAd
        x = x + alpha * d
        r = r - alpha * Ad
        rr_new = inner(r, r)
        d = r + (rr_new / rr) * d
        rr = rr_new
    return x
