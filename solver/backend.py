"""Array backends: numpy (default) or cupy. This is the only module that imports cupy.

A :class:`Backend` bundles the array namespace ``xp`` with the matching real FFTs. Numerical code receives a
backend explicitly (or infers it once from its input with :func:`backend_of`) and never branches on the array
type itself.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Literal

import numpy as np
import scipy.fft

from . import fftw

BackendName = Literal["numpy", "cupy"]
Array = Any  # numpy.ndarray or cupy.ndarray


@functools.cache
def _cupy() -> ModuleType | None:
    """Import cupy lazily; None when it is missing or no CUDA device answers."""
    try:
        import cupy  # noqa: PLC0415  (the one cupy import of the project)
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return None
    try:
        if not cupy.cuda.is_available():
            return None
        cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return None
    return cupy


def gpu_available() -> bool:
    """True when cupy imports and at least one CUDA device answers.

    Returns
    -------
    bool

    Examples
    --------
    >>> from solver import gpu_available
    >>> isinstance(gpu_available(), bool)
    True
    """
    return _cupy() is not None


def cupy_module() -> ModuleType:
    """The cupy module, for the GPU kernels (:mod:`solver.operators.gpu_kernels`); ``ValueError`` without a GPU."""
    cupy = _cupy()
    if cupy is None:
        raise ValueError("cupy is not importable or no CUDA device answers")
    return cupy


_PLANNED_DTYPES = {"R2C": ("<f4", "<f8"), "C2R": ("<c8", "<c16")}


def _cufft_plan(value_type: Literal["R2C", "C2R"], a: Array, s: tuple[int, int]) -> Any:
    """The reusable cuFFT plan of a 2-D real transform of size `s` over the last two axes of the C-contiguous
    cupy array `a` (None, cupy's own planning, for dtypes other than float32/64 and complex64/128)."""
    if a.dtype.str not in _PLANNED_DTYPES[value_type]:
        return None
    return _cufft_plan_on(value_type, tuple(a.shape), a.dtype.str, tuple(s), _cupy().cuda.runtime.getDevice())


@functools.lru_cache(maxsize=32)
def _cufft_plan_on(value_type: str, shape: tuple[int, ...], dtype: str, s: tuple[int, int], device: int) -> Any:
    """Plans keyed by the input's shape and dtype, the spatial size and the device, so that the inner loops of
    the solvers plan once per array shape. At most 32 are kept (each holds cuFFT work space)."""
    import cupyx.scipy.fft as cufft  # noqa: PLC0415

    template = _cupy().empty(shape, dtype=dtype)  # get_fft_plan reads the shape, dtype and layout only
    return cufft.get_fft_plan(template, shape=s, axes=(-2, -1), value_type=value_type)


#: Arrays of fewer entries are transformed by scipy.fft on one thread, and coded groups of fewer map entries run
#: several at once (:mod:`solver.concurrent`): on small arrays waking a thread pool costs more than it saves.
#: Measured on the shared 2-core VM (load 15-20): a round of interleaved learning on 4 images 128² with 16
#: filters took 3.7× as long with two threads as with one, on 2 images 64² 35× (the pool's wake-up,
#: milliseconds under load, against passes of tens of microseconds). FFTW's transforms and the numba passes take
#: a thread per 2¹⁷ entries instead (:func:`fftw_threads`, :func:`pass_threads`).
PARALLEL_MIN_ENTRIES = 1 << 21


@functools.lru_cache(maxsize=16)
def _inverse_dft_rows(n: int, rows: tuple[int, ...], dtype: str) -> np.ndarray:
    """The rows `rows` (indices in [0, n)) of the inverse DFT matrix of size `n` (1/n included), in complex
    `dtype`."""
    index = np.asarray(rows)[:, None] * np.arange(n)[None, :] % n  # reduced first: the phases stay exact
    out = (np.exp(2j * np.pi * index / n) / n).astype(dtype)
    out.setflags(write=False)  # cached and shared
    return out


class _ThreadCap(threading.local):
    threads: int | None = None  # a class default: a thread that never set one reads None


_cap = _ThreadCap()


@contextlib.contextmanager
def threads_capped(n: int) -> Iterator[None]:
    """Within this block this thread's passes and transforms use at most `n` threads (:func:`cpu_budget`,
    :func:`threads_for`, :func:`fftw_threads`): for work that runs beside other such work on the process's other
    threads (:mod:`solver.concurrent`)."""
    outer = _cap.threads
    _cap.threads = n if outer is None else min(n, outer)
    try:
        yield
    finally:
        _cap.threads = outer


def _capped(workers: int) -> int:
    cap = _cap.threads
    return workers if cap is None else min(workers, cap)


def threads_for(n_entries: int, workers: int) -> int:
    """`workers` (at most this thread's cap), or 1 for an array of fewer than :data:`PARALLEL_MIN_ENTRIES`
    entries."""
    return _capped(workers) if n_entries >= PARALLEL_MIN_ENTRIES else 1


#: Real-side entries per FFTW thread: FFTW's threads pay off on smaller arrays than scipy.fft's and the numba
#: passes' (:mod:`solver.fftw`). On a 2-core AMD VM, two threads on 16 maps of 128² (2¹⁸ entries) ran ADMM
#: encoding in 0.77–0.82× the time of one (on a 2-core Intel VM, in the same time).
FFTW_ENTRIES_PER_THREAD = 1 << 17


#: Entries per thread of a numba pass (:mod:`solver.operators.kernels`). On the 2-core Intel VM, encoding one
#: image 128² with 16 filters 7×7 (passes over 2¹⁸ entries) took 0.86–0.88× the time with two threads as with
#: one, once the OpenMP runtimes no longer spun for milliseconds between passes (:mod:`solver.openmp`); before,
#: two threads were no faster there.
PASS_ENTRIES_PER_THREAD = 1 << 17


def pass_threads(n_entries: int, workers: int) -> int:
    """Threads for a numba pass over `n_entries` entries: one per :data:`PASS_ENTRIES_PER_THREAD`, at least 1,
    at most `workers`."""
    return _one_thread_per(PASS_ENTRIES_PER_THREAD, n_entries, workers)


def fftw_threads(n_entries: int, workers: int) -> int:
    """Threads for an FFTW transform of `n_entries` real-side entries: one per
    :data:`FFTW_ENTRIES_PER_THREAD`, at least 1, at most `workers`."""
    return _one_thread_per(FFTW_ENTRIES_PER_THREAD, n_entries, workers)


def _one_thread_per(entries: int, n_entries: int, workers: int) -> int:
    return max(1, min(_capped(workers), n_entries // entries))


#: Seconds a reading of the process's CPU affinity is reused: every numba pass asks for the CPU budget, and
#: reading it for each pass was about 1 ms of a 45 ms ADMM encode of one image 128² with 16 filters.
AFFINITY_TTL_S = 1.0

_affinity: tuple[float, int] = (-math.inf, 1)  # (when it was read, the count)


def visible_cpus() -> int:
    """The CPUs this process may run on (its affinity, read at most every :data:`AFFINITY_TTL_S` seconds; the
    machine's count where that is unknown)."""
    global _affinity
    now = time.monotonic()
    if now - _affinity[0] > AFFINITY_TTL_S:
        count = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        _affinity = (now, max(1, count))
    return _affinity[1]


def cpu_budget() -> int:
    """Threads this process may keep busy: the CPUs it may run on, capped by ``OMP_NUM_THREADS`` when that is set.

    The cap is how a scheduler tells a process its share of a machine: Ray sets ``OMP_NUM_THREADS`` to the CPUs
    an actor was granted (one by default), while the actor still sees every core of its node. Without the cap, n
    actors of one CPU each would each start a pool as wide as the node, and their parallel passes would wait on
    each other's threads.
    """
    cap = _omp_num_threads(os.environ.get("OMP_NUM_THREADS", ""))
    cpus = visible_cpus()
    return cpus if cap is None else min(cpus, cap)


@functools.lru_cache(maxsize=8)
def _omp_num_threads(value: str) -> int | None:
    """The thread count of an ``OMP_NUM_THREADS`` value, None where it sets none. OpenMP's list form ("4,2": per
    nesting level) starts with the outer level's count."""
    first = value.split(",")[0].strip()
    return int(first) if first.isdigit() and int(first) >= 1 else None


def thread_budget() -> int:
    """Threads the calling thread may keep busy: :func:`cpu_budget` under the thread's cap
    (:func:`threads_capped`)."""
    return _capped(cpu_budget())


@dataclass(frozen=True)
class Backend:
    """An array namespace and its real FFTs over the last two axes.

    Attributes
    ----------
    name : {"numpy", "cupy"}
    xp : module
        ``numpy`` or ``cupy``.
    workers : int
        Threads for the CPU FFTs (scipy.fft); ignored on the GPU.
    """

    name: BackendName
    xp: ModuleType
    workers: int = 1

    def rfft2(self, a: Array, shape: tuple[int, int] | None = None) -> Array:
        """Real 2-D FFT over the last two axes, zero-padding to `shape`; float32 -> complex64.

        On the GPU the cuFFT plan of `a`'s shape and dtype is made once and reused (:func:`_cufft_plan`).
        """
        if self.name == "numpy":
            shape = tuple(a.shape[-2:]) if shape is None else tuple(shape)
            n_entries = a.size // max(1, a.shape[-2] * a.shape[-1]) * shape[0] * shape[1]
            out = fftw.rfft2(a, shape, fftw_threads(n_entries, self.workers))  # where FFTW takes it
            if out is not None:
                return out
            # two explicit passes (the real one over the last axis, then the complex one): the same numbers as
            # scipy.fft.rfft2, bit for bit, and up to 2.6x faster on small maps (as kernels.irfft2 for the inverse)
            workers = threads_for(n_entries, self.workers)
            t = scipy.fft.rfft(a, n=shape[1], axis=-1, workers=workers)
            return scipy.fft.fft(t, n=shape[0], axis=-2, workers=workers, overwrite_x=True)
        import cupyx.scipy.fft as cufft  # noqa: PLC0415

        if shape is not None and tuple(shape) != tuple(a.shape[-2:]):  # zero-padding: cupy pads, then plans
            return cufft.rfft2(a, s=shape, axes=(-2, -1))
        a = self.xp.ascontiguousarray(a)
        return cufft.rfft2(a, axes=(-2, -1), plan=_cufft_plan("R2C", a, a.shape[-2:]))

    def irfft2(self, a: Array, shape: tuple[int, int], *, overwrite: bool = False) -> Array:
        """Inverse of :meth:`rfft2` for a real signal of spatial `shape`; complex64 -> float32.

        With `overwrite` the transform may destroy `a` (which saves cuFFT's copy of the input on the GPU).
        """
        if self.name == "numpy":
            out = fftw.irfft2(a, shape, fftw_threads(2 * a.size, self.workers), overwrite=overwrite)
            if out is not None:
                return out
            workers = threads_for(2 * a.size, self.workers)
            return scipy.fft.irfft2(a, s=shape, axes=(-2, -1), workers=workers, overwrite_x=overwrite)
        import cupyx.scipy.fft as cufft  # noqa: PLC0415

        a = self.xp.ascontiguousarray(a)
        return cufft.irfft2(a, s=shape, axes=(-2, -1), overwrite_x=overwrite, plan=_cufft_plan("C2R", a, shape))

    def irfft2_corner(self, a: Array, shape: tuple[int, int], size: int) -> Array:
        """``irfft2(a, shape)[..., :size, :size]`` without the rest of the inverse: the filters' corner of their
        planes (:meth:`irfft2_rows`, for 8×8 filters on 256×256 planes about a fifth of the whole inverse's
        work). Round-off differs from :meth:`irfft2` by a few ulps."""
        if size >= int(shape[0]):
            return self.irfft2(a, shape)[..., :size, :size]
        return self.irfft2_rows(a, shape, range(size))[..., :size]

    def irfft2_rows(self, a: Array, shape: tuple[int, int], rows: Sequence[int]) -> Array:
        """``irfft2(a, shape)[..., rows, :]`` for a few `rows` (indices, negative ones counted from the end)
        without the rest of the inverse. The first axis is inverted at those rows only, as a product with those
        rows of the inverse DFT matrix, then the last axis by a real FFT of each kept row. Round-off differs from
        :meth:`irfft2` by a few ulps."""
        partial = self._inverse_rows(int(shape[0]), rows, a.dtype) @ a  # (rows, H) @ (..., H, V)
        return self._irfft_last(partial, int(shape[1]))

    def irfft2_rows_stacked(self, a: Array, shape: tuple[int, int], rows: Sequence[int]) -> Array:
        """:meth:`irfft2_rows` of planes stored spectrum first: `a` of shape (U, V, *batch) gives
        (*batch, len(rows), W). The first axis is inverted by one matrix product over every plane at once (a
        product per plane, on planes in the last two axes, cost several times as much for a few hundred small
        planes), then the kept rows by real FFTs."""
        U, V, *batch = a.shape
        inverse = self._inverse_rows(int(shape[0]), rows, a.dtype)
        partial = (inverse @ a.reshape(U, -1)).reshape(len(inverse), V, -1)
        partial = self.xp.moveaxis(partial, 2, 0).reshape(*batch, len(inverse), V)
        return self._irfft_last(partial, int(shape[1]))

    def _inverse_rows(self, n: int, rows: Sequence[int], dtype: Any) -> Array:
        """The `rows` (negative ones counted from the end) of the inverse DFT matrix of size `n`, on this backend."""
        return self.asarray(_inverse_dft_rows(n, tuple(int(r) % n for r in rows), np.dtype(dtype).str))

    def _irfft_last(self, a: Array, n: int) -> Array:
        """The real inverse FFT of length `n` over the last axis."""
        if self.name == "numpy":
            return scipy.fft.irfft(a, n=n, axis=-1)
        return self.xp.fft.irfft(a, n=n, axis=-1)

    def asarray(self, a: Array, dtype: Any = None) -> Array:
        """Move `a` to this backend (no copy when it is already there with that dtype)."""
        return self.xp.asarray(a, dtype=dtype)

    def to_host(self, a: Array) -> np.ndarray:
        """A numpy copy (or view) of `a`, for I/O and process boundaries."""
        if self.name == "numpy":
            return np.asarray(a)
        return self.xp.asnumpy(a)

    def scalar(self, a: Array) -> float:
        """A Python float from a 0-d array (synchronises on the GPU)."""
        return float(a)

    def describe(self) -> str:
        """Where this backend computes, for logs: ``numpy on the CPU (2 threads)`` or ``cupy on NVIDIA H200 (CUDA
        device 0 of CUDA_VISIBLE_DEVICES=3)``: a Ray actor given one GPU sees it as its device 0."""
        if self.name == "numpy":
            return f"numpy on the CPU ({self.workers} thread{'s' if self.workers != 1 else ''})"
        device = self.xp.cuda.Device()
        name = self.xp.cuda.runtime.getDeviceProperties(device.id)["name"]
        name = name.decode() if isinstance(name, bytes) else str(name)
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f"CUDA device {device.id}" + ("" if visible is None else f" of CUDA_VISIBLE_DEVICES={visible}")
        return f"cupy on {name} ({where})"


def get_backend(name: Literal["auto", "numpy", "cupy"] = "auto", *, workers: int | None = None) -> Backend:
    """Resolve a backend by name.

    ``"auto"`` picks cupy when it imports and a CUDA device answers, numpy otherwise. ``"cupy"`` without a GPU
    raises ``ValueError``.

    Parameters
    ----------
    name : {"auto", "numpy", "cupy"}
    workers : int, optional
        Threads of the CPU FFTs (default: :func:`cpu_budget`, the cores this process may use, capped by
        ``OMP_NUM_THREADS``).

    Returns
    -------
    Backend

    Examples
    --------
    >>> from solver import get_backend
    >>> get_backend("numpy").name
    'numpy'
    """
    if name not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {name!r}")
    n_workers = cpu_budget() if workers is None else int(workers)
    cupy = _cupy()
    if name == "cupy" and cupy is None:
        raise ValueError("backend='cupy' was requested, but cupy is not importable or no CUDA device answers")
    if name in ("auto", "cupy") and cupy is not None:
        return Backend("cupy", cupy, n_workers)
    return Backend("numpy", np, n_workers)


def backend_of(a: Array) -> Backend:
    """The backend that holds array `a` (the only type check on arrays in the project)."""
    if isinstance(a, np.ndarray | np.generic):
        return Backend("numpy", np, cpu_budget())
    cupy = _cupy()
    if cupy is not None and isinstance(a, cupy.ndarray):
        return Backend("cupy", cupy, 1)
    raise ValueError(f"expected a numpy or cupy array, got {type(a).__name__}")
