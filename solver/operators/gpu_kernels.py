r"""Fused CUDA kernels (CuPy) for the inner loop of ADMM on one-channel images with p = 1.

The GPU twin of :mod:`solver.operators.kernels` (numba), with the same signatures and the same arithmetic, so that
:class:`solver.algorithms.admm.Admm` calls either through one interface:

* :func:`admm_spatial`: relaxation v = αx + (1−α)z_old + u_old, soft threshold z = soft(v, t), dual u = v − z,
  and the per-image sums (‖x − z‖², ‖x‖², ‖z‖², ‖z − z_old‖², ‖u‖², ‖z‖₁, the non-zeros of z; only the last
  two unless asked), reduced
  per block in float64 in the kernel;
* :func:`admm_fourier`: one thread per frequency, looping over the K filters: the Fourier dual update, the
  data term (Parseval) and the Sherman–Morrison solve of the next iteration,
  x̂ = ŵ + âᴴ(ρ + ‖â‖²)⁻¹(ŷ − Σ_k â_k ŵ_k) with ŵ = ẑ − û.

The arithmetic of one entry and of one frequency, and what one thread of each kernel does (its indices), are
written once, as ``__host__ __device__`` inline functions in :data:`DEVICE_FUNCTIONS`, which includes nothing.
The kernels (:data:`KERNELS`: those threads plus a shared-memory sum per block) are compiled from
``DEVICE_FUNCTIONS + KERNELS`` by NVRTC through ``cupy.RawModule``; the tests compile the same
``DEVICE_FUNCTIONS`` for the host (g++ or nvcc), emulate the launches block by block, and compare the results
with the numba kernels, so the arithmetic, the indexing and the wrappers below are checked without a GPU.
Complex arrays are read as interleaved (re, im) float views, as in the numba kernels, so no complex type is
needed on either side.

This module imports no cupy at import time: cupy comes from :func:`solver.backend.cupy_module` on the first
call.
"""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from .. import backend

N_SUMS = 7  # per-image sums of admm_spatial, in the order of solver.operators.kernels.N_SUMS
THREADS = 256  # threads per block; a power of two (the block reductions halve it)
_ENTRIES_PER_THREAD = 4  # spatial kernel: entries per thread before another block is started on a row

DEVICE_FUNCTIONS = r"""
// The arithmetic of the ADMM inner loop, shared by the CUDA kernels and the host build of the tests.
// A host compiler needs <math.h> and empty __host__/__device__ macros before this text.
__host__ __device__ inline float dk_abs(float v) { return fabsf(v); }
__host__ __device__ inline double dk_abs(double v) { return fabs(v); }
__host__ __device__ inline float dk_copysign(float m, float v) { return copysignf(m, v); }
__host__ __device__ inline double dk_copysign(double m, double v) { return copysign(m, v); }

// One entry: v = alpha x + beta z_old + u_old, z = soft(v, t), u = v - z; adds to the seven sums
// (|x - z|^2, |x|^2, |z|^2, |z - z_old|^2, |u|^2 only with residuals; |z| and z != 0 always). z may alias z_old.
template <typename T>
__host__ __device__ inline void dk_spatial_entry(T x, T z_old, T u_old, T alpha, T beta, T t, bool residuals,
                                                 T* z, T* u, double* sums) {
    T v = alpha * x + beta * z_old + u_old;
    T m = dk_abs(v) - t;
    T zi = m > T(0) ? dk_copysign(m, v) : v - v;  // v - v: a zero of v's type, NaN for NaN/inf as in numpy
    T ui = v - zi;
    *z = zi;
    *u = ui;
    if (residuals) {
        T d = x - zi;
        T e = zi - z_old;
        sums[0] += d * d;
        sums[1] += x * x;
        sums[2] += zi * zi;
        sums[3] += e * e;
        sums[4] += ui * ui;
    }
    sums[5] += dk_abs(zi);
    sums[6] += zi != T(0) ? 1.0 : 0.0;
}

// One frequency f of one image. z_hat, t_hat, x_out, t_out point at the image's (K, F) complex block and
// a at the filters' (K, F) block, y_hat at the image's F values, all interleaved (re, im). With
// u = sc (t - z) and w = z - u: c = inv (y - sum_k a_k w_k), x = w + conj(a) c, t_out = u + alpha x + beta z.
// Returns w_f |sum_k a_k z_k - y|^2 (twice the data term's share of f). t_out may alias z_hat or t_hat:
// every entry is read before it is written, by the same thread.
template <typename T>
__host__ __device__ inline T dk_fourier_frequency(const T* z_hat, const T* t_hat, T sc, const T* a,
                                                  const T* y_hat, T w, T inv, T alpha, T beta, T* x_out,
                                                  T* t_out, long long K, long long F, long long f) {
    T dr = T(0), di = T(0), cr = T(0), ci = T(0);
    for (long long k = 0; k < K; ++k) {
        const long long i = 2 * (k * F + f);
        const T ar = a[i], ai = a[i + 1], zr = z_hat[i], zi = z_hat[i + 1];
        const T wr = zr - sc * (t_hat[i] - zr);
        const T wi = zi - sc * (t_hat[i + 1] - zi);
        dr += ar * zr - ai * zi;
        di += ar * zi + ai * zr;
        cr += ar * wr - ai * wi;
        ci += ar * wi + ai * wr;
    }
    const T yr = y_hat[2 * f], yi = y_hat[2 * f + 1];
    const T er = dr - yr, ei = di - yi;
    const T data = w * (er * er + ei * ei);
    cr = inv * (yr - cr);
    ci = inv * (yi - ci);
    for (long long k = 0; k < K; ++k) {  // u and w recomputed rather than stored
        const long long i = 2 * (k * F + f);
        const T ar = a[i], ai = a[i + 1], zr = z_hat[i], zi = z_hat[i + 1];
        const T ur = sc * (t_hat[i] - zr);
        const T ui = sc * (t_hat[i + 1] - zi);
        const T xr = zr - ur + ar * cr + ai * ci;
        const T xi = zi - ui + ar * ci - ai * cr;
        x_out[i] = xr;
        x_out[i + 1] = xi;
        t_out[i] = ur + alpha * xr + beta * zr;
        t_out[i + 1] = ui + alpha * xi + beta * zi;
    }
    return data;
}

// One thread of the spatial kernel: thread `tid` of block `block` (of `threads`) on row n K + k of (N, K, P)
// arrays; entries chunk * threads + tid, then every blocks_per_row * threads. Adds to its seven sums. x is read
// times xs (an unnormalised inverse transform's 1 / (H W)).
template <typename T>
__host__ __device__ inline void dk_spatial_thread(const T* x, T xs, const T* z_old, const T* u_old, T alpha,
                                                  T beta, const T* thr, bool residuals, T* z_new, T* u_new,
                                                  long long K, long long P, long long blocks_per_row, long long block,
                                                  long long threads, long long tid, double* sums) {
    const long long row = block / blocks_per_row;
    const long long chunk = block % blocks_per_row;
    const T t = thr[row / K];
    const long long base = row * P;
    for (long long i = chunk * threads + tid; i < P; i += blocks_per_row * threads) {
        dk_spatial_entry<T>(x[base + i] * xs, z_old[base + i], u_old[base + i], alpha, beta, t, residuals,
                            z_new + base + i, u_new + base + i, sums);
    }
}

// One thread of the Fourier kernel: frequency f = (block % blocks_per_image) threads + tid of image
// n = block / blocks_per_image of (N, K, F) arrays; returns its share of the data sum (0 past F).
template <typename T>
__host__ __device__ inline double dk_fourier_thread(const T* z_hat, const T* t_hat, const T* scale, const T* a,
                                                    const T* y_hat, const T* w, const T* inv, T alpha, T beta,
                                                    T* x_out, T* t_out, long long K, long long F,
                                                    long long blocks_per_image, long long block,
                                                    long long threads, long long tid) {
    const long long n = block / blocks_per_image;
    const long long f = (block % blocks_per_image) * threads + tid;
    if (f >= F) return 0.0;
    const long long off = 2 * n * K * F;
    return dk_fourier_frequency<T>(z_hat + off, t_hat + off, scale[n], a, y_hat + 2 * n * F, w[f],
                                   inv[n * F + f], alpha, beta, x_out + off, t_out + off, K, F, f);
}
"""

KERNELS = (
    f"#define DK_THREADS {THREADS}\n"
    + r"""
// Tree sum of n_values doubles per thread over the block; thread 0 gets the totals in buf[j * DK_THREADS].
__device__ inline void dk_block_sum(double* buf, int n_values) {
    for (int s = DK_THREADS / 2; s > 0; s >>= 1) {
        if (threadIdx.x < s) {
            for (int j = 0; j < n_values; ++j) {
                buf[j * DK_THREADS + threadIdx.x] += buf[j * DK_THREADS + threadIdx.x + s];
            }
        }
        __syncthreads();
    }
}

// Grid: N K blocks_per_row blocks of DK_THREADS threads (dk_spatial_thread). Each block writes its seven
// float64 sums to partial[blockIdx.x, :].
template <typename T>
__device__ inline void dk_admm_spatial(const T* x, T xs, const T* z_old, const T* u_old, T alpha, T beta,
                                       const T* thr, int residuals, T* z_new, T* u_new, double* partial,
                                       long long K, long long P, long long blocks_per_row) {
    __shared__ double buf[7 * DK_THREADS];
    double sums[7] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
    dk_spatial_thread<T>(x, xs, z_old, u_old, alpha, beta, thr, residuals != 0, z_new, u_new, K, P,
                         blocks_per_row, blockIdx.x, DK_THREADS, threadIdx.x, sums);
    for (int j = 0; j < 7; ++j) buf[j * DK_THREADS + threadIdx.x] = sums[j];
    __syncthreads();
    dk_block_sum(buf, 7);
    if (threadIdx.x == 0) {
        for (int j = 0; j < 7; ++j) partial[7 * (long long)blockIdx.x + j] = buf[j * DK_THREADS];
    }
}

// Grid: N blocks_per_image blocks of DK_THREADS threads, one per frequency (dk_fourier_thread). Each block
// writes its share of the data sum to partial[blockIdx.x].
template <typename T>
__device__ inline void dk_admm_fourier(const T* z_hat, const T* t_hat, const T* scale, const T* a,
                                       const T* y_hat, const T* w, const T* inv, T alpha, T beta, T* x_out,
                                       T* t_out, double* partial, long long K, long long F,
                                       long long blocks_per_image) {
    __shared__ double buf[DK_THREADS];
    buf[threadIdx.x] = dk_fourier_thread<T>(z_hat, t_hat, scale, a, y_hat, w, inv, alpha, beta, x_out, t_out, K, F,
                                            blocks_per_image, blockIdx.x, DK_THREADS, threadIdx.x);
    __syncthreads();
    dk_block_sum(buf, 1);
    if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

#define DK_KERNELS(T)                                                                                         \
extern "C" __global__ void admm_spatial_##T(const T* x, T xs, const T* z_old, const T* u_old, T alpha,       \
                                            T beta, const T* thr, int residuals, T* z_new, T* u_new,           \
                                            double* partial, long long K, long long P,                         \
                                            long long blocks_per_row) {                                        \
    dk_admm_spatial<T>(x, xs, z_old, u_old, alpha, beta, thr, residuals, z_new, u_new, partial, K, P,          \
                       blocks_per_row);                                                                        \
}                                                                                                             \
extern "C" __global__ void admm_fourier_##T(const T* z_hat, const T* t_hat, const T* scale, const T* a,        \
                                            const T* y_hat, const T* w, const T* inv, T alpha, T beta,         \
                                            T* x_out, T* t_out, double* partial, long long K, long long F,    \
                                            long long blocks_per_image) {                                      \
    dk_admm_fourier<T>(z_hat, t_hat, scale, a, y_hat, w, inv, alpha, beta, x_out, t_out, partial, K, F,        \
                       blocks_per_image);                                                                      \
}
DK_KERNELS(float)
DK_KERNELS(double)
"""
)

SOURCE = DEVICE_FUNCTIONS + KERNELS
"""The whole CUDA source of the kernels: the shared device functions and the ``extern "C"`` kernels."""

_SUFFIX = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def available() -> bool:
    """True when cupy imports and a CUDA device answers (the kernels compile on first use)."""
    return backend.gpu_available()


@functools.cache
def _module() -> Any:
    """The compiled kernels (NVRTC through cupy; cupy also caches the binary on disk)."""
    return backend.cupy_module().RawModule(code=SOURCE)


def _kernel(name: str, dtype: np.dtype) -> Any:
    if dtype not in _SUFFIX:
        raise ValueError(f"the GPU kernels take float32 or float64 arrays, got {dtype}")
    return _module().get_function(f"{name}_{_SUFFIX[dtype]}")


def _check_out(out: Any, like: Any, name: str) -> Any:
    if out is None:
        return backend.cupy_module().empty_like(like)
    if out.shape != like.shape or out.dtype != like.dtype or not out.flags.c_contiguous:
        raise ValueError(
            f"{name} must be a C-contiguous {like.dtype} array of shape {like.shape}, got {out.dtype} {out.shape}"
        )
    return out


def _contiguous(a: Any, name: str) -> Any:
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous")
    return a


def admm_spatial(
    x: Any,
    z_old: Any,
    u_old: Any,
    alpha: float,
    thr: np.ndarray,
    *,
    residuals: bool = True,
    z_out: Any = None,
    u_out: Any = None,
    x_scale: float = 1.0,
) -> tuple[Any, Any, np.ndarray]:
    """z = soft(αx + (1−α)z_old + u_old, thr_n), u = that argument − z, with per-image sums (on the GPU).

    Parameters
    ----------
    x, z_old, u_old : cupy arrays of shape (N, K, P)
        C-contiguous, float32 or float64.
    alpha : float
        Relaxation α.
    thr : array of shape (N,)
        Threshold per image (host or device).
    residuals : bool
        Compute all seven sums; otherwise only ‖z‖₁ and the non-zeros (the others are 0).
    z_out, u_out : cupy arrays of shape (N, K, P), optional
        Where z and u go; may be `z_old` and `u_old` themselves.
    x_scale : float
        `x` is read times this factor (an unnormalised inverse transform's 1/(H·W)); the sums are of the product.

    Returns
    -------
    z, u : cupy arrays of shape (N, K, P)
    sums : ndarray of shape (N, 7)
        Host float64: ‖x − z‖², ‖x‖², ‖z‖², ‖z − z_old‖², ‖u‖², ‖z‖₁, the count of non-zeros of z per image.
    """
    cupy = backend.cupy_module()
    x, z_old, u_old = (_contiguous(a, name) for a, name in ((x, "x"), (z_old, "z_old"), (u_old, "u_old")))
    z_new, u_new = _check_out(z_out, x, "z_out"), _check_out(u_out, x, "u_out")
    N, K, P = x.shape
    real = x.dtype.type
    per_block = THREADS * _ENTRIES_PER_THREAD
    blocks_per_row = max(1, (P + per_block - 1) // per_block)
    n_blocks = N * K * blocks_per_row
    partial = cupy.empty((n_blocks, N_SUMS), dtype=cupy.float64)
    if n_blocks:
        _kernel("admm_spatial", x.dtype)(
            (n_blocks,),
            (THREADS,),
            (
                x,
                real(x_scale),
                z_old,
                u_old,
                real(alpha),
                real(1 - alpha),
                cupy.asarray(thr, dtype=x.dtype),
                np.int32(residuals),
                z_new,
                u_new,
                partial,
                np.int64(K),
                np.int64(P),
                np.int64(blocks_per_row),
            ),
        )
    sums = partial.reshape(N, K * blocks_per_row, N_SUMS).sum(axis=1)
    return z_new, u_new, cupy.asnumpy(sums)


def admm_fourier(
    z_hat: Any,
    t_hat: Any,
    scale: np.ndarray,
    a: Any,
    y_hat: Any,
    w: Any,
    inv: Any,
    alpha: float,
    *,
    x_out: Any = None,
    t_out: Any = None,
) -> tuple[Any, Any, np.ndarray]:
    r"""The Fourier half of an ADMM iteration and the solve of the next one (one channel, on the GPU).

    With û = scale·(t̂ − ẑ) and ŵ = ẑ − û: x̂ = ŵ + âᴴ·inv·(ŷ − Σ_k â_k ŵ_k), t̂_out = û + αx̂ + (1−α)ẑ, and
    per image Σ_f w_f |Σ_k â_k ẑ_k − ŷ|² (twice the data term of z); see :func:`solver.operators.kernels.admm_fourier`.

    Parameters
    ----------
    z_hat, t_hat : cupy arrays of shape (N, K, F)
        C-contiguous complex64 or complex128.
    scale : array of shape (N,)
        Rescaling of the dual per image (host or device).
    a : cupy array of shape (K, F)
        Filters' transforms.
    y_hat : cupy array of shape (N, F)
        Images' transforms.
    w : cupy array of shape (F,)
        Parseval weights (real).
    inv : cupy array broadcasting to (N, F)
        (ρ_n + ‖â‖²)⁻¹ (real).
    alpha : float
        Relaxation α.
    x_out, t_out : cupy arrays of shape (N, K, F), optional
        Where x̂ and t̂_out go; `t_out` may be `z_hat` or `t_hat`, `x_out` must not overlap any input.

    Returns
    -------
    x_hat, t_hat_out : cupy arrays of shape (N, K, F)
    sums : ndarray of shape (N,)
        Host float64 Σ_f w_f |Σ_k â_k ẑ_k − ŷ|².
    """
    cupy = backend.cupy_module()
    x_new, t_new = _check_out(x_out, z_hat, "x_out"), _check_out(t_out, z_hat, "t_out")
    N, K, F = z_hat.shape
    real = w.dtype.type
    views = [
        _contiguous(arr, name).view(real)
        for arr, name in ((z_hat, "z_hat"), (t_hat, "t_hat"), (a, "a"), (y_hat, "y_hat"))
    ]
    inv = cupy.ascontiguousarray(cupy.broadcast_to(inv, (N, F)), dtype=real)
    blocks_per_image = max(1, (F + THREADS - 1) // THREADS)
    partial = cupy.empty((N, blocks_per_image), dtype=cupy.float64)
    if N * F:
        _kernel("admm_fourier", np.dtype(real))(
            (N * blocks_per_image,),
            (THREADS,),
            (
                *views[:2],
                cupy.asarray(scale, dtype=real),
                *views[2:],
                cupy.ascontiguousarray(w, dtype=real),
                inv,
                real(alpha),
                real(1 - alpha),
                x_new.view(real),
                t_new.view(real),
                partial,
                np.int64(K),
                np.int64(F),
                np.int64(blocks_per_image),
            ),
        )
    return x_new, t_new, cupy.asnumpy(partial.sum(axis=1))


def irfft2(a_hat: Any, shape: tuple[int, int], workers: int, *, overwrite: bool = False) -> Any:
    """The inverse real FFT of the cupy backend (cuFFT, plan reused), with the signature of
    :func:`solver.operators.kernels.irfft2`; `workers` is ignored. With `overwrite`, `a_hat` may be destroyed."""
    return backend.Backend("cupy", backend.cupy_module()).irfft2(a_hat, shape, overwrite=overwrite)
