"""FFTW (through pyFFTW) for the CPU backend's real 2-D FFTs of small and medium arrays, where it is installed.

Measured on the shared 2-core VM inside interleaved learning on 4 images of 128² with 16 filters (maps of
4 × 16 × 128²), one thread each: FFTW's rank-2 plans took 8.0 ms per forward transform against scipy.fft's
10.0 ms (its two one-dimensional passes), 8.7 ms per inverse against 12.6 ms. FFTW's threads also pay where
scipy.fft's do not: ADMM encoding of one 128² image with 16 filters ran in 0.77–0.82× the time with two FFTW
threads as with one (on an AMD EPYC VM; on an Intel Xeon VM of two cores, in the same time). On large arrays
its ``FFTW_ESTIMATE`` plans are slower than scipy.fft (a pair on 32 maps of 512², 1.9×), so arrays above
:data:`MAX_ENTRIES` stay with scipy.fft, as do zero-padded inputs (filters to their planes), whose zero rows
scipy.fft's first pass skips.

Plans are made with ``FFTW_ESTIMATE`` only: a plan chosen by timing (``FFTW_MEASURE``) may differ from one
process to the next, and with it the round-off, which would break deconv's promise that 1 or n shards give the
same numbers. Estimated plans transform every 2-D plane with the same arithmetic whatever the number of planes
and threads, so a batch's transform equals its planes' transforms bit for bit (tested). Nor would measured plans
pay much inside a solver: alone, on 16 planes of 128², they take about 0.6 of estimated ones' time, but in ADMM
encoding of one 128² image with 16 filters (31 iterations, both plan kinds in turn in one process, 15 times) the
run took 86.9 ms with them against 88.8 ms (medians).

pyFFTW is optional (``pip install 'deconv[fftw]'``; FFTW itself is GPL-licensed). ``DECONV_FFT=scipy`` turns it
off, ``DECONV_FFT=fftw`` makes its absence an error instead of a silent fallback.

Each thread keeps its own plans (executing one pyFFTW object from two threads is not safe), least recently used
first out once their buffers pass :data:`CACHE_BYTES`; they go with the thread (the service's pool threads are
retired after ten idle seconds) or with :func:`clear`.
"""

from __future__ import annotations

import collections
import functools
import logging
import math
import os
import threading
from typing import Any

import numpy as np

from . import openmp

log = logging.getLogger(__name__)

#: Above this many entries on the real side, scipy.fft: FFTW_ESTIMATE's plans lose there, and a plan's buffer
#: would weigh tens of megabytes.
MAX_ENTRIES = 1 << 22

#: Bytes of input buffers one thread's plans keep; each plan also holds the output array of its next call,
#: allocated but not yet written (about as many bytes again where it comes from the heap).
CACHE_BYTES = 64 << 20

ENV = "DECONV_FFT"

_REAL_OF = {np.dtype(np.complex64): np.dtype(np.float32), np.dtype(np.complex128): np.dtype(np.float64)}
_COMPLEX_OF = {real: cplx for cplx, real in _REAL_OF.items()}


@functools.cache
def _pyfftw() -> Any:
    """The pyfftw module, or None when it is not installed or turned off by ``DECONV_FFT``."""
    choice = os.environ.get(ENV, "auto").strip().lower() or "auto"
    if choice not in ("auto", "fftw", "scipy"):
        raise ValueError(f"{ENV} must be 'auto', 'fftw' or 'scipy', got {choice!r}")
    if choice == "scipy":
        return None
    # FFTW's threads come from the OpenMP runtime bundled with pyFFTW's wheels: loaded to sleep soon after a
    # transform (solver.openmp), or its idle threads would spin on the cores of the passes that follow
    try:
        with openmp.loading_runtime():
            import pyfftw  # noqa: PLC0415
    except ImportError as exc:
        if choice == "fftw":
            raise ValueError(f"{ENV}=fftw but pyFFTW is not importable ({exc}); pip install 'deconv[fftw]'") from exc
        return None
    log.debug("CPU FFTs of up to %d entries by FFTW (pyFFTW %s, %s=%s)", MAX_ENTRIES, pyfftw.__version__, ENV, choice)
    return pyfftw


def available() -> bool:
    """True when the CPU FFTs of arrays up to :data:`MAX_ENTRIES` go through FFTW."""
    return _pyfftw() is not None


def engine() -> str:
    """``"fftw"`` or ``"scipy"``: what transforms this process's small CPU arrays (for logs and benchmarks)."""
    return "fftw" if available() else "scipy"


class _Plan:
    """One FFTW plan over the last two axes of arrays of one shape, with its own aligned input buffer. The
    caller's array is transformed where it lies when the plan can read it there (its strides, and FFTW's
    alignment) and the transform may: a forward one keeps its input, an inverse one destroys it, so an inverse
    runs there only on a writeable array the caller gives up. Otherwise it is copied into the buffer (on 16
    maps of 128², two threads, the copy made the inverse 0.57 ms instead of 0.40). The plan never keeps the
    caller's array after a call; each call hands out the output and gives the plan a fresh, untouched one."""

    def __init__(
        self,
        pyfftw: Any,
        in_shape: tuple[int, ...],
        in_dtype: np.dtype,
        out_shape: tuple[int, ...],
        out_dtype: np.dtype,
        threads: int,
        forward: bool,
    ):
        self._empty, self._aligned = pyfftw.empty_aligned, pyfftw.is_byte_aligned
        self.buffer = pyfftw.zeros_aligned(in_shape, dtype=in_dtype)
        self.out_shape, self.out_dtype = out_shape, out_dtype
        flags = ("FFTW_ESTIMATE",) if forward else ("FFTW_ESTIMATE", "FFTW_DESTROY_INPUT")
        self.fftw = pyfftw.FFTW(
            self.buffer,
            self._empty(out_shape, dtype=out_dtype),
            axes=(-2, -1),
            direction="FFTW_FORWARD" if forward else "FFTW_BACKWARD",
            flags=flags,
            threads=threads,
        )
        self.nbytes = self.buffer.nbytes
        # in the output's dtype: pyFFTW's own scaling multiplies by a float64, 8× the time of this multiply on
        # 16 maps 128² (0.15 ms against 0.02 ms), for the same numbers
        self.scale = None if forward else out_dtype.type(1.0 / (out_shape[-2] * out_shape[-1]))

    def run(self, source: np.ndarray | None = None, *, scaled: bool = True) -> np.ndarray:
        """Transform `source` (read by a forward plan, destroyed by an inverse one) or, without it, the buffer;
        the output array is the caller's from now on. An inverse is scaled by 1/(H·W), as numpy's and scipy's,
        unless not `scaled` (for a caller that folds the factor into its next pass)."""
        if source is not None:
            self.fftw.update_arrays(source, self.fftw.output_array)
        try:
            self.fftw.execute()
            out = self.fftw.output_array
        finally:  # the plan never keeps the caller's array
            self.fftw.update_arrays(self.buffer, self._empty(self.out_shape, dtype=self.out_dtype))
        if self.scale is not None and scaled:
            out *= self.scale
        return out

    def takes(self, a: np.ndarray) -> bool:
        """Whether the plan can transform `a` where it lies (its layout and alignment are the buffer's)."""
        # pyFFTW's test reads the pointer without building numpy's ctypes object (a tenth of the time)
        return a.strides == self.buffer.strides and self._aligned(a, self.fftw.input_alignment)


class _Cache(threading.local):
    def __init__(self) -> None:
        self.plans: collections.OrderedDict[tuple, _Plan] = collections.OrderedDict()
        self.nbytes = 0


_cache = _Cache()


def _plan(key: tuple, make) -> _Plan:
    plans = _cache.plans
    plan = plans.get(key)
    if plan is not None:
        plans.move_to_end(key)
        return plan
    plan = make()
    plans[key] = plan
    _cache.nbytes += plan.nbytes
    while _cache.nbytes > CACHE_BYTES and len(plans) > 1:
        _, old = plans.popitem(last=False)
        _cache.nbytes -= old.nbytes
    return plan


def clear() -> None:
    """Drop this thread's plans and their buffers."""
    _cache.plans.clear()
    _cache.nbytes = 0


def _fits(lead: tuple[int, ...], shape: tuple[int, int]) -> bool:
    return math.prod(lead) * shape[0] * shape[1] <= MAX_ENTRIES


def rfft2(a: np.ndarray, shape: tuple[int, int], threads: int) -> np.ndarray | None:
    """``scipy.fft.rfft2(a, s=shape, axes=(-2, -1))`` by FFTW, or None where FFTW does not take it (not
    installed, a dtype other than float32/64, too large, `a` to be padded to `shape`)."""
    pyfftw = _pyfftw()
    dtype = np.dtype(a.dtype)
    if pyfftw is None or dtype not in _COMPLEX_OF or a.ndim < 2 or not _fits(a.shape[:-2], shape):
        return None
    if tuple(a.shape[-2:]) != tuple(shape):
        # zero-padded (filters to their planes): scipy's two passes skip the zero rows in the first, FFTW does
        # not, and took 1.8× scipy's time on 16 filters 8×8 padded to 128²
        return None
    in_shape = tuple(a.shape)
    out_shape = (*a.shape[:-2], shape[0], shape[1] // 2 + 1)
    key = ("r2c", in_shape, dtype.str, threads)
    plan = _plan(key, lambda: _Plan(pyfftw, in_shape, dtype, out_shape, _COMPLEX_OF[dtype], threads, True))
    if plan.takes(a):  # FFTW's real-to-complex transforms keep their input
        return plan.run(a)
    plan.buffer[...] = a
    return plan.run()


def irfft2(
    a_hat: np.ndarray, shape: tuple[int, int], threads: int, *, overwrite: bool = False, scaled: bool = True
) -> np.ndarray | None:
    """``scipy.fft.irfft2(a_hat, s=shape, axes=(-2, -1))`` by FFTW, or None where FFTW does not take it. `a_hat`
    is read only, unless `overwrite` lets the transform destroy it (which saves a copy; a read-only array is
    never written). Not `scaled`: without the factor 1/(H·W)."""
    pyfftw = _pyfftw()
    dtype = np.dtype(a_hat.dtype)
    if pyfftw is None or dtype not in _REAL_OF or a_hat.ndim < 2 or not _fits(a_hat.shape[:-2], shape):
        return None
    if a_hat.shape[-2:] != (shape[0], shape[1] // 2 + 1):
        return None  # a truncated or padded spectrum: scipy's semantics, left to scipy
    out_shape = (*a_hat.shape[:-2], *shape)
    key = ("c2r", tuple(a_hat.shape), dtype.str, tuple(shape), threads)
    plan = _plan(key, lambda: _Plan(pyfftw, tuple(a_hat.shape), dtype, out_shape, _REAL_OF[dtype], threads, False))
    if overwrite and a_hat.flags.writeable and plan.takes(a_hat):
        return plan.run(a_hat, scaled=scaled)
    plan.buffer[...] = a_hat
    return plan.run(scaled=scaled)
