r"""Fused CPU kernels (numba) for the inner loop of ADMM on one-channel images with p = 1.

The numpy formulation of one ADMM iteration makes a dozen passes over arrays as large as the maps; these
kernels make three, plus the FFT pair that nothing avoids:

* :func:`sm_solve`: the right-hand side ``D̂ᴴŷ + ρ(ẑ − û)`` and its Sherman–Morrison solve, in one kernel;
* :func:`admm_spatial`: relaxation, soft threshold, dual update and every per-image norm the residuals need;
* :func:`admm_fourier`: the Fourier-domain dual update and the data term (Parseval) of the new maps.

They are the same arithmetic as :mod:`solver.algorithms.admm`'s numpy path (a test holds them together), in
the arrays' own dtype (float32/complex64 by default). The numpy path stays the reference, the fallback when
numba is missing, and the path for cupy, C > 1 and p < 1.
"""

from __future__ import annotations

import math

import numpy as np

try:  # numba is a dependency; the guard keeps the package importable where it cannot be installed
    from numba import njit, prange

    NUMBA = True
except ImportError:  # pragma: no cover
    NUMBA = False

_CHUNK = 2048  # frequencies per parallel task
# Reassociation and contraction let LLVM vectorise the sums and fuse multiply-adds; no flag that assumes
# finite values or ignores signed zeros is set, so NaN/inf and the threshold at zero behave as in numpy.
_FLAGS = {"reassoc", "contract"}


def available() -> bool:
    return NUMBA


if NUMBA:

    @njit(inline="always", cache=True, fastmath=_FLAGS)
    def _rhs(ar, ai, y, z, u, r):  # pragma: no cover  (compiled)
        """conj(a)·y + r·(z − u) in real and imaginary parts."""
        return ar * y.real + ai * y.imag + r * (z.real - u.real), ar * y.imag - ai * y.real + r * (z.imag - u.imag)

    @njit(parallel=True, cache=True, fastmath=_FLAGS)
    def _sm_solve(a, y_hat, z_hat, u_hat, inv, rho, out):  # pragma: no cover  (compiled)
        # Complex products are written out in real and imaginary parts: LLVM vectorises these, not numba's
        # complex type. b = conj(a)·y + ρ(z − u); s = inv · Σ_k a·b; x = (b − conj(a)·s)/ρ.
        N, K, F = z_hat.shape
        n_chunks = (F + _CHUNK - 1) // _CHUNK
        for task in prange(N * n_chunks):
            n = task // n_chunks
            lo = (task % n_chunks) * _CHUNK
            hi = min(lo + _CHUNK, F)
            r = rho[n]
            sr = np.zeros(hi - lo, dtype=inv.dtype)
            si = np.zeros(hi - lo, dtype=inv.dtype)
            for k in range(K):
                for f in range(lo, hi):
                    ar, ai = a[k, f].real, a[k, f].imag
                    br, bi = _rhs(ar, ai, y_hat[n, f], z_hat[n, k, f], u_hat[n, k, f], r)
                    sr[f - lo] += ar * br - ai * bi
                    si[f - lo] += ar * bi + ai * br
            for f in range(lo, hi):
                sr[f - lo] *= inv[n, f]
                si[f - lo] *= inv[n, f]
            for k in range(K):  # b is recomputed rather than stored: one map-sized array less to write
                for f in range(lo, hi):
                    ar, ai = a[k, f].real, a[k, f].imag
                    br, bi = _rhs(ar, ai, y_hat[n, f], z_hat[n, k, f], u_hat[n, k, f], r)
                    cr = ar * sr[f - lo] + ai * si[f - lo]
                    ci = ar * si[f - lo] - ai * sr[f - lo]
                    out[n, k, f] = complex((br - cr) / r, (bi - ci) / r)

    @njit(parallel=True, cache=True, fastmath=_FLAGS)
    def _admm_spatial(x, z_old, u_old, alpha, thr, z_new, u_new, partial):  # pragma: no cover
        N, K, P = x.shape
        beta = 1 - alpha
        for row in prange(N * K):
            n = row // K
            k = row % K
            t = thr[n]
            s_xz = 0.0
            s_x = 0.0
            s_z = 0.0
            s_dz = 0.0
            s_u = 0.0
            s_abs = 0.0
            for i in range(P):
                xi = x[n, k, i]
                zo = z_old[n, k, i]
                v = alpha * xi + beta * zo + u_old[n, k, i]
                zi = math.copysign(max(abs(v) - t, 0), v)
                ui = v - zi
                z_new[n, k, i] = zi
                u_new[n, k, i] = ui
                d = xi - zi
                s_xz += d * d
                s_x += xi * xi
                s_z += zi * zi
                e = zi - zo
                s_dz += e * e
                s_u += ui * ui
                s_abs += abs(zi)
            partial[n, k, 0] = s_xz
            partial[n, k, 1] = s_x
            partial[n, k, 2] = s_z
            partial[n, k, 3] = s_dz
            partial[n, k, 4] = s_u
            partial[n, k, 5] = s_abs

    @njit(parallel=True, cache=True, fastmath=_FLAGS)
    def _admm_fourier(x_hat, z_hat_old, z_hat, u_hat, alpha, a, y_hat, w, u_hat_new, partial):  # pragma: no cover
        N, K, F = z_hat.shape
        beta = 1 - alpha
        n_chunks = (F + _CHUNK - 1) // _CHUNK
        for task in prange(N * n_chunks):
            n = task // n_chunks
            c = task % n_chunks
            lo = c * _CHUNK
            hi = min(lo + _CHUNK, F)
            rr = np.zeros(hi - lo, dtype=w.dtype)
            ri = np.zeros(hi - lo, dtype=w.dtype)
            for k in range(K):
                for f in range(lo, hi):
                    zr, zi = z_hat[n, k, f].real, z_hat[n, k, f].imag
                    ur = u_hat[n, k, f].real + alpha * x_hat[n, k, f].real + beta * z_hat_old[n, k, f].real - zr
                    ui = u_hat[n, k, f].imag + alpha * x_hat[n, k, f].imag + beta * z_hat_old[n, k, f].imag - zi
                    u_hat_new[n, k, f] = complex(ur, ui)
                    ar, ai = a[k, f].real, a[k, f].imag
                    rr[f - lo] += ar * zr - ai * zi
                    ri[f - lo] += ar * zi + ai * zr
            acc = 0.0
            for f in range(lo, hi):
                dr = rr[f - lo] - y_hat[n, f].real
                di = ri[f - lo] - y_hat[n, f].imag
                acc += w[f] * (dr * dr + di * di)
            partial[n, c] = acc


def sm_solve(a: np.ndarray, y_hat: np.ndarray, z_hat: np.ndarray, u_hat: np.ndarray, inv: np.ndarray,
             rho: np.ndarray) -> np.ndarray:
    """x̂ = (âᴴâ + ρI)⁻¹(âᴴŷ + ρ(ẑ − û)) per image and frequency (one channel).

    Shapes: a (K, F), y_hat (N, F), z_hat and u_hat (N, K, F), inv (N, F) = 1/(ρ_n + ‖a(f)‖²), rho (N,).
    """
    out = np.empty_like(z_hat)
    _sm_solve(a, y_hat, z_hat, u_hat, inv, rho.astype(z_hat.real.dtype), out)
    return out


def admm_spatial(x: np.ndarray, z_old: np.ndarray, u_old: np.ndarray, alpha: float, thr: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z = soft(αx + (1−α)z_old + u_old, thr_n), u = that argument − z; and per image the sums
    (‖x − z‖², ‖x‖², ‖z‖², ‖z − z_old‖², ‖u‖², ‖z‖₁) as a (N, 6) float64 array. Arrays (N, K, P)."""
    z_new = np.empty_like(x)
    u_new = np.empty_like(x)
    partial = np.empty(x.shape[:2] + (6,), dtype=np.float64)
    dtype = x.dtype.type
    _admm_spatial(x, z_old, u_old, dtype(alpha), thr.astype(x.dtype), z_new, u_new, partial)
    return z_new, u_new, partial.sum(axis=1)


def admm_fourier(x_hat: np.ndarray, z_hat_old: np.ndarray, z_hat: np.ndarray, u_hat: np.ndarray, alpha: float,
                 a: np.ndarray, y_hat: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """û_new = û + αx̂ + (1−α)ẑ_old − ẑ, and per image Σ_f w_f |Σ_k a_k ẑ_k − ŷ|² (twice the data term)."""
    u_hat_new = np.empty_like(u_hat)
    n_chunks = (z_hat.shape[2] + _CHUNK - 1) // _CHUNK
    partial = np.empty((z_hat.shape[0], n_chunks), dtype=np.float64)
    dtype = z_hat.real.dtype.type
    _admm_fourier(x_hat, z_hat_old, z_hat, u_hat, dtype(alpha), a, y_hat, w, u_hat_new, partial)
    return u_hat_new, partial.sum(axis=1)
