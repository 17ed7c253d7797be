"""A host build of the CUDA kernels of solver.operators.gpu_kernels, for tests without a GPU.

The kernels' shared ``__host__ __device__`` source is compiled for the host (g++ and, where present, nvcc) into a
small shared library, loaded with ctypes; the library also emulates the two kernel launches block by block (the
per-thread index math of the kernels, serially), which lets the Python wrappers of solver.operators.gpu_kernels and
the ADMM loop run on the CPU through a stand-in for cupy (:func:`host_cupy`).
"""

from __future__ import annotations

import ctypes
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest

from solver import backend as backend_module
from solver.operators import gpu_kernels

NVCC = shutil.which("nvcc")
COMPILERS = [c for c in ("g++", "nvcc") if shutil.which(c)]

# The host side: the shared device functions, plus, per dtype, the kernels' arithmetic over whole arrays and the
# two launches emulated block by block (threads one after the other, the tree sum replaced by a serial one).
HOST_DRIVER = r"""
template <typename T>
static void emulate_spatial(const T* x, T xs, const T* z_old, const T* u_old, T alpha, T beta, const T* thr,
                            int residuals, T* z_new, T* u_new, double* partial, long long K, long long P,
                            long long blocks_per_row, long long n_blocks, long long threads) {
    for (long long b = 0; b < n_blocks; ++b) {
        double acc[DK_N_SUMS] = {0.0};
        for (long long tid = 0; tid < threads; ++tid) {
            double sums[DK_N_SUMS] = {0.0};
            dk_spatial_thread<T>(x, xs, z_old, u_old, alpha, beta, thr, residuals != 0, z_new, u_new, K, P,
                                 blocks_per_row, b, threads, tid, sums);
            for (int j = 0; j < DK_N_SUMS; ++j) acc[j] += sums[j];
        }
        for (int j = 0; j < DK_N_SUMS; ++j) partial[DK_N_SUMS * b + j] = acc[j];
    }
}

template <typename T>
static void emulate_fourier(const T* z_hat, const T* t_hat, const T* scale, const T* a, const T* y_hat,
                            const T* w, const T* inv, T alpha, T beta, T* x_out, T* t_out, double* partial,
                            long long K, long long F, long long blocks_per_image, long long n_blocks,
                            long long threads) {
    for (long long b = 0; b < n_blocks; ++b) {
        double acc = 0.0;
        for (long long tid = 0; tid < threads; ++tid) {
            acc += dk_fourier_thread<T>(z_hat, t_hat, scale, a, y_hat, w, inv, alpha, beta, x_out, t_out, K, F,
                                        blocks_per_image, b, threads, tid);
        }
        partial[b] = acc;
    }
}

#define HOST_ENTRY_POINTS(T)                                                                                  \
extern "C" void emulate_admm_spatial_##T(const T* x, T xs, const T* z_old, const T* u_old, T alpha, T beta,   \
        const T* thr, int residuals, T* z_new, T* u_new, double* partial, long long K, long long P,           \
        long long blocks_per_row, long long n_blocks, long long threads) {                                    \
    emulate_spatial<T>(x, xs, z_old, u_old, alpha, beta, thr, residuals, z_new, u_new, partial, K, P,          \
                       blocks_per_row, n_blocks, threads);                                                     \
}                                                                                                             \
extern "C" void emulate_admm_fourier_##T(const T* z_hat, const T* t_hat, const T* scale, const T* a,          \
        const T* y_hat, const T* w, const T* inv, T alpha, T beta, T* x_out, T* t_out, double* partial,       \
        long long K, long long F, long long blocks_per_image, long long n_blocks, long long threads) {        \
    emulate_fourier<T>(z_hat, t_hat, scale, a, y_hat, w, inv, alpha, beta, x_out, t_out, partial, K, F,        \
                       blocks_per_image, n_blocks, threads);                                                   \
}
HOST_ENTRY_POINTS(float)
HOST_ENTRY_POINTS(double)
"""

HOST_PRELUDE = """#include <math.h>
#ifndef __CUDACC__
#define __host__
#define __device__
#endif
"""


def build(compiler: str, directory: Path) -> ctypes.CDLL:
    """Compile the shared device functions and the host driver into a shared library."""
    source = directory / ("kernels_host.cu" if compiler == "nvcc" else "kernels_host.cpp")
    sums = f"#define DK_N_SUMS {gpu_kernels.N_SUMS}\n"
    source.write_text(HOST_PRELUDE + gpu_kernels.DEVICE_FUNCTIONS + sums + HOST_DRIVER)
    library = directory / f"libkernels_{compiler.replace('+', 'p')}.so"
    if compiler == "nvcc":
        cmd = [NVCC, "-O2", "-shared", "-Xcompiler", "-fPIC", "-o", str(library), str(source)]
    else:
        cmd = [compiler, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(library), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return ctypes.CDLL(str(library))


def _c_arg(value: object) -> object:
    """A kernel argument as cupy would pass it, for the host library."""
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    if isinstance(value, np.float32):
        return ctypes.c_float(value)
    if isinstance(value, np.float64):
        return ctypes.c_double(value)
    if isinstance(value, np.int32):
        return ctypes.c_int(int(value))
    if isinstance(value, np.int64):
        return ctypes.c_longlong(int(value))
    raise TypeError(f"unexpected kernel argument {type(value).__name__}")


def host_cupy(library: ctypes.CDLL) -> types.SimpleNamespace:
    """A stand-in for the cupy module on numpy arrays, whose RawModule runs the emulated launches."""

    class RawModule:
        def __init__(self, code: str):
            assert code == gpu_kernels.SOURCE

        def get_function(self, name: str):
            function = getattr(library, f"emulate_{name}")

            def launch(grid: tuple[int], block: tuple[int], args: tuple) -> None:
                function(*(_c_arg(a) for a in args), ctypes.c_longlong(grid[0]), ctypes.c_longlong(block[0]))

            return launch

    return types.SimpleNamespace(
        empty_like=np.empty_like,
        empty=np.empty,
        asarray=np.asarray,
        ascontiguousarray=np.ascontiguousarray,
        broadcast_to=np.broadcast_to,
        asnumpy=np.asarray,
        float64=np.float64,
        RawModule=RawModule,
    )


class Libraries(dict):
    """compiler -> the host library built with it, built on first use into `directory`."""

    def __init__(self, directory: Path):
        super().__init__()
        self.directory = directory

    def __missing__(self, compiler: str) -> ctypes.CDLL:
        folder = self.directory / compiler.replace("+", "p")
        folder.mkdir()
        self[compiler] = library = build(compiler, folder)
        return library


def use_host_build(library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """solver.operators.gpu_kernels with cupy replaced by `library` until `monkeypatch` is undone (the kernels'
    compiled-module cache is cleared now; the caller clears it again after)."""
    monkeypatch.setattr(backend_module, "cupy_module", lambda: host_cupy(library))
    gpu_kernels._module.cache_clear()
    return gpu_kernels
