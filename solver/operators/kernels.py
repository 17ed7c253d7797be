r"""Fused CPU kernels (numba) for the inner loop of ADMM on one-channel images with p = 1.

One ADMM iteration of :mod:`solver.algorithms.admm` (circular boundary) is an inverse FFT, a spatial pass, a
forward FFT and a Fourier pass. The numpy formulation makes a dozen passes over arrays as large as the maps;
these kernels make two, around the FFT pair that nothing avoids:

* :func:`admm_spatial`: relaxation, soft threshold and dual update, ‖z‖₁ and the non-zeros of z (E and the
  progress reports need them every iteration), and when asked every per-image norm the residuals need;
* :func:`admm_fourier`: the Fourier-domain dual update, the data term (Parseval) of the new maps, and the
  Sherman–Morrison solve of the *next* iteration, x̂ = ŵ + âᴴ(ρ + ‖â‖²)⁻¹(ŷ − Σ_k â_k ŵ_k) with ŵ = ẑ − û.

They are the same arithmetic as the module's numpy path (a test holds them together), in the arrays' own
dtype (float32/complex64 by default), and may write into their inputs (``out=``) so that a caller that owns
its state can iterate without allocating. The numpy path stays the reference, the fallback when numba is
missing, and the path for cupy, C > 1 and p < 1.

:func:`irfft2` is scipy.fft's inverse in two explicit passes, which pocketfft runs about a third faster than
its own two-axis ``irfft2`` on maps-shaped arrays (same result, bit for bit).
"""

from __future__ import annotations

import functools
import math

import numpy as np
import scipy.fft

from .. import fftw, openmp
from ..backend import cpu_budget, fftw_threads, pass_threads, threads_for

try:  # numba is a dependency; the guard keeps the package importable where it cannot be installed
    import numba
    from numba import njit, prange

    NUMBA = True
except ImportError:  # pragma: no cover
    NUMBA = False


class _threads_for:  # noqa: N801  (used as a function: ``with _threads_for(n):``)
    """Threads for a pass over `n_entries` entries (:func:`solver.backend.pass_threads`), within the process's
    CPU budget (:func:`solver.backend.cpu_budget`) and the caller's numba setting. Numba's count is per calling
    thread, so it is set around each pass and put back. (A class, not a generator: entered twice an iteration
    of a small ADMM loop, whose Python between passes is its overhead.)"""

    __slots__ = ("n", "previous")

    def __init__(self, n_entries: int):
        self.previous = _pool_threads()
        self.n = min(pass_threads(n_entries, cpu_budget()), self.previous)

    def __enter__(self) -> None:
        if self.n != self.previous:
            numba.set_num_threads(self.n)

    def __exit__(self, *exc: object) -> None:
        if self.n != self.previous:
            numba.set_num_threads(self.previous)


def _pool_threads() -> int:
    """This thread's numba thread count; the first call starts numba's pool, its OpenMP runtime sleeping soon
    after a pass (:mod:`solver.openmp`)."""
    if _count is None:
        _start_pool()
    return _count()


_count = None  # numba's count once its pool runs: its internal reader, without the start-up check and locks


def _start_pool() -> None:
    global _count
    with openmp.loading_runtime():
        numba.get_num_threads()  # loads the threading layer and starts its threads
    from numba.np.ufunc import parallel  # noqa: PLC0415

    _count = getattr(parallel, "_get_num_threads", numba.get_num_threads)


_CHUNK = 512  # frequencies per parallel task
# Reassociation and contraction let LLVM vectorise the sums and fuse multiply-adds; no flag that assumes
# finite values or ignores signed zeros is set, so NaN/inf and the threshold at zero behave as in numpy.
_FLAGS = {"reassoc", "contract"}
N_SUMS = 7  # per-image sums of admm_spatial: ‖x − z‖², ‖x‖², ‖z‖², ‖z − z_old‖², ‖u‖², ‖z‖₁, ‖z‖₀


def available() -> bool:
    return NUMBA


@functools.cache
def thread_safe() -> bool:
    """Whether the kernels may be entered from several threads at once (:mod:`solver.concurrent`): numba's OpenMP
    and TBB threading layers allow it; its own workqueue layer, numba's fallback where neither library loads,
    aborts the process. Decided without starting numba's threads where none ran yet (a process whose OpenMP
    threads have started cannot fork): from the layer asked for (``NUMBA_THREADING_LAYER``, and for ``default``
    the order of ``NUMBA_THREADING_LAYER_PRIORITY``) and the libraries that load, as numba picks the first that
    does. True without numba (the numpy path)."""
    if not NUMBA:
        return True
    from numba.np.ufunc import parallel  # noqa: PLC0415

    if getattr(parallel, "_is_initialized", False):  # started: the layer it chose
        return numba.threading_layer() in ("omp", "tbb")
    layer = str(numba.config.THREADING_LAYER).lower()
    # the layers numba would try, in its order (forksafe's OpenMP, which it tries off Linux only, left out)
    order = {
        "default": [str(name).lower() for name in numba.config.THREADING_LAYER_PRIORITY],
        "threadsafe": ["tbb", "omp"],
        "safe": ["tbb"],
        "forksafe": ["tbb", "workqueue"],
    }.get(layer, [layer])
    for name in order:
        if name in ("tbb", "omp") and _layer_loads(name):
            return True
        if name == "workqueue":  # it always loads: numba would stop here
            return False
    return False


def _layer_loads(name: str) -> bool:
    """Whether numba's threading layer `name` (``tbb`` or ``omp``) would load here, as numba checks it."""
    from numba.np.ufunc import parallel  # noqa: PLC0415

    try:
        if name == "tbb":
            parallel._check_tbb_version_compatible()
            from numba.np.ufunc import tbbpool  # noqa: F401, PLC0415
        elif name == "omp":  # loads the OpenMP runtime the pool will use: with the pool's settings
            with openmp.loading_runtime():
                from numba.np.ufunc import omppool  # noqa: F401, PLC0415
        else:
            return False
    except (ImportError, OSError, RuntimeError, AttributeError):
        return False
    return True


if NUMBA:

    @njit(inline="always", cache=True)
    def _chunk_of(task, n_chunks, F):  # pragma: no cover  (compiled)
        """(image, chunk, first frequency, frequencies) of a parallel task over images × chunks of F."""
        c = task % n_chunks
        lo = c * _CHUNK
        return task // n_chunks, c, lo, min(_CHUNK, F - lo)

    @njit(inline="always", cache=True, fastmath=_FLAGS)
    def _weighted_misfit(dr, di, yn, wn, m):  # pragma: no cover  (compiled)
        """Σ_i w_i |d_i − y_i|² over a chunk: d as real and imaginary rows, y interleaved."""
        acc = 0.0
        for i in range(m):
            er = dr[i] - yn[2 * i]
            ei = di[i] - yn[2 * i + 1]
            acc += wn[i] * (er * er + ei * ei)
        return acc

    @njit(inline="always", cache=True, fastmath=_FLAGS)
    def _shrink(x, z_old, u_old, alpha, beta, t):  # pragma: no cover  (compiled)
        """(z, u) of one entry: v = αx + (1−α)z_old + u_old, z = soft(v, t), u = v − z."""
        v = alpha * x + beta * z_old + u_old
        m = abs(v) - t
        z = math.copysign(m, v) if m > 0 else v - v  # v − v: a zero of v's type (no float64 promotion)
        return z, v - z

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _admm_spatial(x, x_scale, z_old, u_old, alpha, beta, thr, residuals, z_new, u_new, partial):  # pragma: no cover
        # x is read times x_scale: an unnormalised inverse FFT's 1/(H·W), applied here rather than in a pass of
        # its own (the product FFTW's own scaling makes, so the same numbers as its normalised x)
        N, K, P = x.shape
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
            s_nz = 0
            if residuals:
                for i in range(P):
                    xi = x[n, k, i] * x_scale
                    zo = z_old[n, k, i]
                    zi, ui = _shrink(xi, zo, u_old[n, k, i], alpha, beta, t)
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
                    s_nz += zi != 0
            else:  # the loop LLVM vectorises best: only ‖z‖₁, which E needs, and the count of non-zeros
                for i in range(P):
                    zi, ui = _shrink(x[n, k, i] * x_scale, z_old[n, k, i], u_old[n, k, i], alpha, beta, t)
                    z_new[n, k, i] = zi
                    u_new[n, k, i] = ui
                    s_abs += abs(zi)
                    s_nz += zi != 0
            partial[n, k, 0] = s_xz
            partial[n, k, 1] = s_x
            partial[n, k, 2] = s_z
            partial[n, k, 3] = s_dz
            partial[n, k, 4] = s_u
            partial[n, k, 5] = s_abs
            partial[n, k, 6] = s_nz

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _admm_fourier(z_hat, t_hat, scale, a, y_hat, w, inv, alpha, beta, x_out, t_out, partial):  # pragma: no cover
        # Complex arrays come as float views (..., 2F), real and imaginary parts interleaved, and every loop
        # runs over 0-based slices: LLVM vectorises that form (twice as fast as numba's complex type and
        # offset indices). Per frequency f: u = scale·(t − z), w = z − u, c = inv·(y − Σ_k a_k w_k),
        # x = w + conj(a)·c, t_out = u + αx + (1−α)z; and Σ_k a_k z_k for the data term.
        N, K, F2 = z_hat.shape
        F = F2 // 2
        n_chunks = (F + _CHUNK - 1) // _CHUNK
        for task in prange(N * n_chunks):
            n, c, lo, m = _chunk_of(task, n_chunks, F)
            span = slice(2 * lo, 2 * (lo + m))
            sc = scale[n]
            sums = np.zeros((4, m), dtype=w.dtype)
            dr, di, cr, ci = sums[0], sums[1], sums[2], sums[3]  # Σ_k a z, then Σ_k a w and c
            for k in range(K):
                ak, zk, tk = a[k, span], z_hat[n, k, span], t_hat[n, k, span]
                for i in range(m):
                    ar, ai, zr, zi = ak[2 * i], ak[2 * i + 1], zk[2 * i], zk[2 * i + 1]
                    wr = zr - sc * (tk[2 * i] - zr)
                    wi = zi - sc * (tk[2 * i + 1] - zi)
                    dr[i] += ar * zr - ai * zi
                    di[i] += ar * zi + ai * zr
                    cr[i] += ar * wr - ai * wi
                    ci[i] += ar * wi + ai * wr
            yn, wn, invn = y_hat[n, span], w[lo : lo + m], inv[n, lo : lo + m]
            acc = 0.0
            for i in range(m):
                er = dr[i] - yn[2 * i]
                ei = di[i] - yn[2 * i + 1]
                acc += wn[i] * (er * er + ei * ei)
                cr[i] = invn[i] * (yn[2 * i] - cr[i])
                ci[i] = invn[i] * (yn[2 * i + 1] - ci[i])
            partial[n, c] = acc
            # t_out may be z_hat or t_hat: a chunk-sized buffer takes each row before it is copied over its
            # input, so that the loop keeps no possibly aliasing store (which LLVM would not vectorise).
            t_row = np.empty(2 * m, dtype=w.dtype)
            for k in range(K):  # u and w are recomputed rather than stored: no map-sized scratch array
                ak, zk, tk = a[k, span], z_hat[n, k, span], t_hat[n, k, span]
                xo = x_out[n, k, span]
                for i in range(m):
                    ar, ai, zr, zi = ak[2 * i], ak[2 * i + 1], zk[2 * i], zk[2 * i + 1]
                    ur = sc * (tk[2 * i] - zr)
                    ui = sc * (tk[2 * i + 1] - zi)
                    xr = zr - ur + ar * cr[i] + ai * ci[i]
                    xi = zi - ui + ar * ci[i] - ai * cr[i]
                    xo[2 * i] = xr
                    xo[2 * i + 1] = xi
                    t_row[2 * i] = ur + alpha * xr + beta * zr
                    t_row[2 * i + 1] = ui + alpha * xi + beta * zi
                t_out[n, k, span] = t_row


if NUMBA:

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _consensus(a, y_hat, g_hat, dual, local, rho, alpha, beta, fresh, partial):  # pragma: no cover
        # Float views (..., 2F) as in _admm_fourier. Per image n and frequency f: u ← u + d̃ − ĝ (or 0 when
        # fresh), b = conj(a)ŷ + ρ(ĝ − u), d = (b − conj(a)·(Σ_k a b)/(ρ + Σ_k |a|²))/ρ, d̃ = αd + (1−α)ĝ;
        # and Σ_n (d̃ + u) per filter. A task owns a chunk of frequencies for every image, so the sum over the
        # images needs no reduction across tasks.
        N, K, F2 = a.shape
        F = F2 // 2
        n_chunks = (F + _CHUNK - 1) // _CHUNK
        inv_rho = 1.0 / rho
        for c in prange(n_chunks):
            lo = c * _CHUNK
            m = min(_CHUNK, F - lo)
            span = slice(2 * lo, 2 * (lo + m))
            for k in range(K):
                pk = partial[k, span]
                for i in range(2 * m):
                    pk[i] = 0.0
            sums = np.zeros((3, m), dtype=partial.dtype)
            abr, abi, aa = sums[0], sums[1], sums[2]
            for n in range(N):
                yn = y_hat[n, span]
                for i in range(m):
                    abr[i] = 0.0
                    abi[i] = 0.0
                    aa[i] = 0.0
                for k in range(K):
                    ak, gk, uk, dk = a[n, k, span], g_hat[k, span], dual[n, k, span], local[n, k, span]
                    for i in range(m):
                        if fresh:
                            ur = gk[2 * i] - gk[2 * i]
                            ui = ur
                        else:
                            ur = uk[2 * i] + dk[2 * i] - gk[2 * i]
                            ui = uk[2 * i + 1] + dk[2 * i + 1] - gk[2 * i + 1]
                        uk[2 * i] = ur
                        uk[2 * i + 1] = ui
                        ar, ai, yr, yi = ak[2 * i], ak[2 * i + 1], yn[2 * i], yn[2 * i + 1]
                        br = ar * yr + ai * yi + rho * (gk[2 * i] - ur)
                        bi = ar * yi - ai * yr + rho * (gk[2 * i + 1] - ui)
                        abr[i] += ar * br - ai * bi
                        abi[i] += ar * bi + ai * br
                        aa[i] += ar * ar + ai * ai
                for i in range(m):
                    q = 1.0 / (rho + aa[i])
                    abr[i] *= q
                    abi[i] *= q
                for k in range(K):
                    ak, gk, uk, dk = a[n, k, span], g_hat[k, span], dual[n, k, span], local[n, k, span]
                    pk = partial[k, span]
                    for i in range(m):
                        ar, ai, yr, yi = ak[2 * i], ak[2 * i + 1], yn[2 * i], yn[2 * i + 1]
                        ur, ui, gr, gi = uk[2 * i], uk[2 * i + 1], gk[2 * i], gk[2 * i + 1]
                        br = ar * yr + ai * yi + rho * (gr - ur)
                        bi = ar * yi - ai * yr + rho * (gi - ui)
                        dr = (br - (ar * abr[i] + ai * abi[i])) * inv_rho
                        di = (bi - (ar * abi[i] - ai * abr[i])) * inv_rho
                        dr = alpha * dr + beta * gr
                        di = alpha * di + beta * gi
                        dk[2 * i] = dr
                        dk[2 * i + 1] = di
                        pk[2 * i] += dr + ur
                        pk[2 * i + 1] += di + ui


if NUMBA:

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _data_term(z_hat, a, y_hat, w, partial):  # pragma: no cover
        # Σ_f w_f |Σ_k a_k ẑ_k − ŷ|² per image and chunk of frequencies (float views, as in _admm_fourier)
        N, K, F2 = z_hat.shape
        F = F2 // 2
        n_chunks = (F + _CHUNK - 1) // _CHUNK
        for task in prange(N * n_chunks):
            n, c, lo, m = _chunk_of(task, n_chunks, F)
            span = slice(2 * lo, 2 * (lo + m))
            sums = np.zeros((2, m), dtype=w.dtype)
            dr, di = sums[0], sums[1]
            for k in range(K):
                ak, zk = a[k, span], z_hat[n, k, span]
                for i in range(m):
                    ar, ai, zr, zi = ak[2 * i], ak[2 * i + 1], zk[2 * i], zk[2 * i + 1]
                    dr[i] += ar * zr - ai * zi
                    di[i] += ar * zi + ai * zr
            partial[n, c] = _weighted_misfit(dr, di, y_hat[n, span], w[lo : lo + m], m)

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _dual_and_data(z_hat, t_hat, scale, a, y_hat, w, u_out, partial):  # pragma: no cover
        # the first half of _admm_fourier without the solve: u = scale·(t − z) per frequency (into u_out, which
        # may be t_hat: each entry is read before it is written) and Σ_f w_f |Σ_k a_k z_k − y|² per chunk
        N, K, F2 = z_hat.shape
        F = F2 // 2
        n_chunks = (F + _CHUNK - 1) // _CHUNK
        for task in prange(N * n_chunks):
            n, c, lo, m = _chunk_of(task, n_chunks, F)
            span = slice(2 * lo, 2 * (lo + m))
            sc = scale[n]
            sums = np.zeros((2, m), dtype=w.dtype)
            dr, di = sums[0], sums[1]
            for k in range(K):
                ak, zk, tk, uk = a[k, span], z_hat[n, k, span], t_hat[n, k, span], u_out[n, k, span]
                for i in range(m):
                    ar, ai, zr, zi = ak[2 * i], ak[2 * i + 1], zk[2 * i], zk[2 * i + 1]
                    dr[i] += ar * zr - ai * zi
                    di[i] += ar * zi + ai * zr
                    uk[2 * i] = sc * (tk[2 * i] - zr)
                    uk[2 * i + 1] = sc * (tk[2 * i + 1] - zi)
            partial[n, c] = _weighted_misfit(dr, di, y_hat[n, span], w[lo : lo + m], m)

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _dual_hat(x, t, z, alpha, beta):  # pragma: no cover
        # x ← t − αx − (1−α)z, in place (float views of (N, K, 2F) arrays)
        N, K, F2 = x.shape
        for row in prange(N * K):
            n = row // K
            k = row % K
            xr, tr, zr = x[n, k], t[n, k], z[n, k]
            for i in range(F2):
                xr[i] = tr[i] - alpha * xr[i] - beta * zr[i]

    @njit(parallel=True, nogil=True, cache=True, fastmath=_FLAGS)
    def _abs_and_count(x, out_abs, out_count):  # pragma: no cover
        N, P = x.shape
        for n in prange(N):
            s = 0.0
            c = 0
            xn = x[n]
            for i in range(P):
                v = xn[i]
                s += abs(v)
                c += v != 0
            out_abs[n] = s
            out_count[n] = c


def data_term(z_hat: np.ndarray, a: np.ndarray, y_hat: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Σ_f w_f |Σ_k â_k ẑ_k − ŷ|² per image, (N,) float64: twice the data term of the maps ẑ (N, K, F) with the
    one-channel filters â (K, F), the images ŷ (N, F) and the Parseval weights w (F,) (one pass, no temporary)."""
    n_chunks = (z_hat.shape[2] + _CHUNK - 1) // _CHUNK
    partial = np.empty((z_hat.shape[0], n_chunks), dtype=np.float64)
    views = [_as_real(arr, name) for arr, name in ((z_hat, "z_hat"), (a, "a"), (y_hat, "y_hat"))]
    with _threads_for(2 * z_hat.size):
        _data_term(*views, np.ascontiguousarray(w, dtype=views[0].dtype), partial)
    return partial.sum(axis=1)


def dual_and_data(
    z_hat: np.ndarray,
    t_hat: np.ndarray,
    scale: np.ndarray,
    a: np.ndarray,
    y_hat: np.ndarray,
    w: np.ndarray,
    *,
    u_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The last Fourier pass of a run whose next solve is not wanted (the filters change before it): the dual
    û = scale·(t̂ − ẑ) (N, K, ...), into `u_out` when given (it may be `t_hat`), and twice the data term per image
    (float64), as :func:`admm_fourier` gives them, in one pass without the solve."""
    shape, flat = z_hat.shape, z_hat.shape[:2] + (-1,)  # (N, K, ...) planes, flattened per map
    u_hat = _check_out(u_out, z_hat, "u_out")
    z_hat, t_hat, u_flat = (arr.reshape(flat) for arr in (z_hat, t_hat, u_hat))
    n_chunks = (z_hat.shape[2] + _CHUNK - 1) // _CHUNK
    partial = np.empty((shape[0], n_chunks), dtype=np.float64)
    views = [_as_real(arr, name) for arr, name in ((z_hat, "z_hat"), (t_hat, "t_hat"))]
    real = views[0].dtype.type
    with _threads_for(2 * z_hat.size):
        _dual_and_data(
            *views,
            np.ascontiguousarray(scale, dtype=real),
            _as_real(a, "a"),
            _as_real(y_hat, "y_hat"),
            np.ascontiguousarray(w, dtype=real),
            _as_real(u_flat, "u_out"),
            partial,
        )
    return u_hat, partial.sum(axis=1)


def dual_hat(x_hat: np.ndarray, t_hat: np.ndarray, z_hat: np.ndarray, alpha: float) -> np.ndarray:
    """û = t̂ − αx̂ − (1−α)ẑ written over `x_hat` (N, K, F) (the dual of an ADMM iterate from its carry)."""
    real = x_hat.real.dtype.type
    views = [
        _as_real(arr, name).reshape(arr.shape[:2] + (-1,))
        for arr, name in ((x_hat, "x_hat"), (t_hat, "t_hat"), (z_hat, "z_hat"))
    ]
    with _threads_for(2 * x_hat.size):
        _dual_hat(*views, real(alpha), real(1 - alpha))
    return x_hat


def abs_and_count(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per item along the first axis: Σ|x| (float64) and the number of non-zeros (int64), in one pass."""
    flat = np.ascontiguousarray(x).reshape(x.shape[0], -1)
    total, count = np.empty(x.shape[0]), np.empty(x.shape[0], dtype=np.int64)
    with _threads_for(flat.size):
        _abs_and_count(flat, total, count)
    return total, count


def consensus_step(
    a: np.ndarray,
    y_hat: np.ndarray,
    g_hat: np.ndarray,
    dual: np.ndarray,
    local: np.ndarray,
    rho: float,
    alpha: float,
    *,
    fresh: bool,
) -> np.ndarray:
    r"""One consensus ADMM filter iteration of every image in the Fourier domain (one channel, every pair
    connected; :func:`solver.algorithms.consensus.consensus_local_step` is the numpy reference).

    Shapes: a = ẑ (N, K, F); y_hat (N, F); g_hat (K, F); dual and local (N, K, F), updated in place (with
    `fresh` the duals start at zero and `local` is only written). Returns Σ_n (d̃_n + u_n), (K, F).
    """
    partial = np.empty_like(g_hat)
    real = partial.real.dtype.type
    views = [_as_real(arr, name) for arr, name in ((a, "a"), (y_hat, "y_hat"), (g_hat, "g_hat"))]
    with _threads_for(2 * a.size):
        _consensus(
            *views,
            _as_real(dual, "dual"),
            _as_real(local, "local"),
            real(rho),
            real(alpha),
            real(1 - alpha),
            bool(fresh),
            partial.view(real),
        )
    return partial


def _check_out(out: np.ndarray | None, like: np.ndarray, name: str) -> np.ndarray:
    if out is None:
        return np.empty_like(like)
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"{name} must be a C-contiguous {like.dtype} array of shape {like.shape}, got {out.dtype} {out.shape}"
        )
    return out


def admm_spatial(
    x: np.ndarray,
    z_old: np.ndarray,
    u_old: np.ndarray,
    alpha: float,
    thr: np.ndarray,
    *,
    residuals: bool = True,
    z_out: np.ndarray | None = None,
    u_out: np.ndarray | None = None,
    x_scale: float = 1.0,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """z = soft(αx + (1−α)z_old + u_old, thr_n), u = that argument − z, with per-image sums.

    Arrays are (N, K, P); `thr` is (N,). `z_out`/`u_out` may be `z_old`/`u_old` themselves (each entry is read
    before it is written). Returns z, u and an (N, 7) float64 array of the sums (‖x − z‖², ‖x‖², ‖z‖²,
    ‖z − z_old‖², ‖u‖², ‖z‖₁, the count of non-zeros of z); without `residuals` only the last two columns are
    computed, the others are 0. `x` is read times `x_scale` (where it is an unnormalised inverse transform); the
    sums are of that product.
    """
    z_new, u_new = _check_out(z_out, x, "z_out"), _check_out(u_out, x, "u_out")
    partial = np.empty(x.shape[:2] + (N_SUMS,), dtype=np.float64)
    real = x.dtype.type
    with _threads_for(x.size):
        _admm_spatial(
            x,
            real(x_scale),
            z_old,
            u_old,
            real(alpha),
            real(1 - alpha),
            thr.astype(x.dtype),
            bool(residuals),
            z_new,
            u_new,
            partial,
        )
    return z_new, u_new, partial.sum(axis=1)


def admm_fourier(
    z_hat: np.ndarray,
    t_hat: np.ndarray,
    scale: np.ndarray,
    a: np.ndarray,
    y_hat: np.ndarray,
    w: np.ndarray,
    inv: np.ndarray,
    alpha: float,
    *,
    x_out: np.ndarray | None = None,
    t_out: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r"""The Fourier half of an ADMM iteration and the solve of the next one (one channel).

    With û = scale·(t̂ − ẑ) (the dual, rescaled when ρ changed) and ŵ = ẑ − û:

    * x̂ = (âᴴâ + ρI)⁻¹(âᴴŷ + ρŵ) = ŵ + âᴴ·inv·(ŷ − Σ_k â_k ŵ_k), inv = (ρ + ‖â‖²)⁻¹ (Sherman–Morrison);
    * t̂_out = û + αx̂ + (1−α)ẑ, so that the next dual is t̂_out − ẑ_next;
    * per image Σ_f w_f |Σ_k â_k ẑ_k − ŷ|², twice the data term of z.

    Shapes: z_hat, t_hat (N, K, F); scale (N,); a (K, F); y_hat (N, F); w (F,); inv (N, F). `t_out` may be
    `z_hat` or `t_hat` itself; `x_out` must not overlap any input. Returns x̂, t̂_out and the (N,) float64
    sums.
    """
    x_new, t_new = _check_out(x_out, z_hat, "x_out"), _check_out(t_out, z_hat, "t_out")
    n_chunks = (z_hat.shape[2] + _CHUNK - 1) // _CHUNK
    partial = np.empty((z_hat.shape[0], n_chunks), dtype=np.float64)
    real = w.dtype.type
    views = [_as_real(arr, name) for arr, name in ((z_hat, "z_hat"), (t_hat, "t_hat"), (a, "a"), (y_hat, "y_hat"))]
    with _threads_for(2 * z_hat.size):
        _admm_fourier(
            *views[:2],
            scale.astype(w.dtype),
            *views[2:],
            w,
            np.ascontiguousarray(inv),
            real(alpha),
            real(1 - alpha),
            x_new.view(real),
            t_new.view(real),
            partial,
        )
    return x_new, t_new, partial.sum(axis=1)


def _as_real(a: np.ndarray, name: str) -> np.ndarray:
    """A C-contiguous complex array (..., F) as the float view (..., 2F) of its interleaved parts."""
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a.view(a.real.dtype)


def irfft2(
    a_hat: np.ndarray, shape: tuple[int, int], workers: int, *, overwrite: bool = False, scaled: bool = True
) -> np.ndarray:
    """``scipy.fft.irfft2(a_hat, s=shape, axes=(-2, -1))``: by FFTW where it takes the array (:mod:`solver.fftw`),
    otherwise the complex inverse over axis −2, then the real one over axis −1. With `overwrite` either may run
    in `a_hat` (which then holds garbage) instead of a copy. Not `scaled`: H·W times the inverse, for a caller
    that applies 1/(H·W) in its next pass (:func:`admm_spatial`'s `x_scale`)."""
    out = fftw.irfft2(a_hat, shape, fftw_threads(2 * a_hat.size, workers), overwrite=overwrite, scaled=scaled)
    if out is not None:
        return out
    workers = threads_for(2 * a_hat.size, workers)
    norm = "backward" if scaled else "forward"  # "forward": the inverse is not scaled
    t = scipy.fft.ifft(a_hat, n=shape[0], axis=-2, norm=norm, workers=workers, overwrite_x=overwrite)
    return scipy.fft.irfft(t, n=shape[1], axis=-1, norm=norm, workers=workers, overwrite_x=True)
