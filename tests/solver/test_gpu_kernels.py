"""The CUDA kernels of the ADMM inner loop (solver.operators.gpu_kernels), checked with and without a GPU.

Without a GPU: the kernels' shared ``__host__ __device__`` source is compiled for the host (g++ and, where
present, nvcc) into a small shared library, loaded with ctypes, and compared with the numba kernels on random
float32 and float64 data; the library also emulates the two kernel launches block by block (the per-thread
index math of the kernels, serially), which lets the Python wrappers of solver.operators.gpu_kernels and the ADMM loop
run on the CPU through a stand-in for cupy. The whole CUDA source is compiled for the GPU with ``nvcc -cubin`` and,
where a libnvrtc is found, with NVRTC (the compiler cupy.RawModule uses). Tests marked ``gpu`` run the cupy ADMM
against the numpy ADMM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import shutil
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

from solver import backend as backend_module
from solver.operators import gpu_kernels, kernels
from solver.algorithms.admm import Admm
from solver.algorithms.problem import CSCProblem
from solver.backend import get_backend
from solver.config import AdmmConfig
from solver.operators.convolution import ConvOperator
from solver.operators.linalg import factor_shifted_normal, solve_shifted_normal
from solver.operators.prox import LpPenalty

NVCC = shutil.which("nvcc")
COMPILERS = [c for c in ("g++", "nvcc") if shutil.which(c)]
needs_compiler = pytest.mark.skipif(not COMPILERS, reason="neither g++ nor nvcc is on PATH: no host build of the "
                                                          "kernels' __host__ __device__ source")
needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed (the CPU reference)")

# The host side: the shared device functions, plus, per dtype, the kernels' arithmetic over whole arrays and the
# two launches emulated block by block (threads one after the other, the tree sum replaced by a serial one).
HOST_DRIVER = r"""
template <typename T>
static void emulate_spatial(const T* x, const T* z_old, const T* u_old, T alpha, T beta, const T* thr,
                            int residuals, T* z_new, T* u_new, double* partial, long long K, long long P,
                            long long blocks_per_row, long long n_blocks, long long threads) {
    for (long long b = 0; b < n_blocks; ++b) {
        double acc[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
        for (long long tid = 0; tid < threads; ++tid) {
            double sums[6] = {0.0, 0.0, 0.0, 0.0, 0.0, 0.0};
            dk_spatial_thread<T>(x, z_old, u_old, alpha, beta, thr, residuals != 0, z_new, u_new, K, P,
                                 blocks_per_row, b, threads, tid, sums);
            for (int j = 0; j < 6; ++j) acc[j] += sums[j];
        }
        for (int j = 0; j < 6; ++j) partial[6 * b + j] = acc[j];
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
extern "C" void emulate_admm_spatial_##T(const T* x, const T* z_old, const T* u_old, T alpha, T beta,         \
        const T* thr, int residuals, T* z_new, T* u_new, double* partial, long long K, long long P,           \
        long long blocks_per_row, long long n_blocks, long long threads) {                                    \
    emulate_spatial<T>(x, z_old, u_old, alpha, beta, thr, residuals, z_new, u_new, partial, K, P,              \
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


def _build(compiler: str, directory: Path) -> ctypes.CDLL:
    """Compile the shared device functions and the host driver into a shared library."""
    source = directory / ("kernels_host.cu" if compiler == "nvcc" else "kernels_host.cpp")
    source.write_text(HOST_PRELUDE + gpu_kernels.DEVICE_FUNCTIONS + HOST_DRIVER)
    library = directory / f"libkernels_{compiler.replace('+', 'p')}.so"
    if compiler == "nvcc":
        cmd = [NVCC, "-O2", "-shared", "-Xcompiler", "-fPIC", "-o", str(library), str(source)]
    else:
        cmd = [compiler, "-O2", "-shared", "-fPIC", "-Wall", "-Werror", "-o", str(library), str(source)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(cmd)} failed:\n{done.stderr}"
    return ctypes.CDLL(str(library))


@pytest.fixture(scope="module", params=COMPILERS)
def host_library(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> ctypes.CDLL:
    return _build(request.param, tmp_path_factory.mktemp(request.param.replace("+", "p")))


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


def _host_cupy(library: ctypes.CDLL) -> types.SimpleNamespace:
    """A stand-in for the cupy module on numpy arrays, whose RawModule runs the emulated launches."""

    class RawModule:
        def __init__(self, code: str):
            assert code == gpu_kernels.SOURCE

        def get_function(self, name: str):
            function = getattr(library, f"emulate_{name}")

            def launch(grid: tuple[int], block: tuple[int], args: tuple) -> None:
                function(*(_c_arg(a) for a in args), ctypes.c_longlong(grid[0]), ctypes.c_longlong(block[0]))

            return launch

    return types.SimpleNamespace(empty_like=np.empty_like, empty=np.empty, asarray=np.asarray,
                                 ascontiguousarray=np.ascontiguousarray, broadcast_to=np.broadcast_to,
                                 asnumpy=np.asarray, float64=np.float64, RawModule=RawModule)


@pytest.fixture
def host_gpu_kernels(host_library: ctypes.CDLL, monkeypatch: pytest.MonkeyPatch):
    """solver.operators.gpu_kernels with cupy replaced by the host library (the kernels' cache cleared around)."""
    monkeypatch.setattr(backend_module, "cupy_module", lambda: _host_cupy(host_library))
    gpu_kernels._module.cache_clear()
    yield gpu_kernels
    gpu_kernels._module.cache_clear()


def _problem(rng, dtype, xp_backend=None, shape=(13, 16), n_images=3, n_filters=5, size=4):
    filters = rng.standard_normal((n_filters, 1, size, size))
    filters /= np.sqrt((filters**2).sum(axis=(1, 2, 3), keepdims=True))
    images = rng.standard_normal((n_images, 1) + shape)
    bk = xp_backend or get_backend("numpy")
    op = ConvOperator(bk.asarray(filters, dtype=dtype), shape)
    return CSCProblem(bk.asarray(images, dtype=dtype), op, LpPenalty(0.1))


def _fourier_inputs(rng, dtype, n_images=3, n_filters=5, shape=(13, 16)):
    problem = _problem(rng, dtype, shape=shape, n_images=n_images, n_filters=n_filters)
    op = problem.op
    z_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    t_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    rho, scale = np.linspace(0.5, 7.0, n_images), np.linspace(1.0, 0.25, n_images)
    factor = factor_shifted_normal(op.filters_hat, rho)
    N, K, U, V = z_hat.shape
    flat = (N, K, U * V)
    args = (z_hat.reshape(flat), t_hat.reshape(flat), scale, op.filters_hat[:, 0].reshape(K, U * V),
            problem.images_hat[:, 0].reshape(N, U * V), np.broadcast_to(problem._weights, (U, V)).reshape(-1),
            factor.inverse.reshape(N, U * V), 1.8)
    return problem, factor, args


def _tol(dtype) -> float:
    return 1e2 * float(np.finfo(dtype).eps)


# ---- the shared source on the host ---------------------------------------------------------------------------


@needs_compiler
@needs_numba
@pytest.mark.parametrize("residuals", [True, False])
@pytest.mark.parametrize("shape", [(2, 3, 50), (1, 2, 2500)], ids=["one-block", "blocks-per-row"])
def test_host_build_of_admm_spatial_follows_the_numba_kernel(host_gpu_kernels, rng, dtype, shape, residuals):
    x, z, u = (rng.standard_normal(shape).astype(dtype) for _ in range(3))
    thr = np.linspace(0.3, 0.7, shape[0])
    z_ref, u_ref, sums_ref = kernels.admm_spatial(x, z, u, 1.8, thr, residuals=residuals)
    z_new, u_new, sums = host_gpu_kernels.admm_spatial(x, z, u, 1.8, thr, residuals=residuals)
    tol = _tol(dtype)
    np.testing.assert_allclose(z_new, z_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(u_new, u_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(sums, sums_ref, rtol=tol, atol=tol)
    assert z_new.dtype == u_new.dtype == dtype and sums.shape == (shape[0], gpu_kernels.N_SUMS)


@needs_compiler
@needs_numba
def test_host_build_of_admm_spatial_propagates_nan_and_inf_like_numpy(host_gpu_kernels):
    x = np.array([[[np.nan, np.inf, -np.inf, 0.0, -0.0, 0.5]]])
    z, u = np.zeros_like(x), np.zeros_like(x)
    got = host_gpu_kernels.admm_spatial(x, z, u, 1.0, np.array([0.25]))
    expected = kernels.admm_spatial(x, z, u, 1.0, np.array([0.25]))
    for a, b in zip(got, expected, strict=True):
        np.testing.assert_array_equal(a, b)


@needs_compiler
@needs_numba
def test_host_build_of_admm_spatial_may_write_over_its_inputs(host_gpu_kernels, rng):
    x, z, u = (rng.standard_normal((2, 3, 20)) for _ in range(3))
    thr = np.array([0.3, 0.7])
    z_new, u_new, sums = host_gpu_kernels.admm_spatial(x, z, u, 1.8, thr)
    z_in, u_in, sums_in = host_gpu_kernels.admm_spatial(x, z, u, 1.8, thr, z_out=z, u_out=u)
    assert z_in is z and u_in is u
    np.testing.assert_array_equal(z_in, z_new)
    np.testing.assert_array_equal(u_in, u_new)
    np.testing.assert_array_equal(sums_in, sums)


@needs_compiler
@needs_numba
@pytest.mark.parametrize("shape", [(13, 16), (40, 30)], ids=["one-block", "blocks-per-image"])
def test_host_build_of_admm_fourier_follows_numba_and_sherman_morrison(host_gpu_kernels, rng, dtype, shape):
    problem, factor, args = _fourier_inputs(rng, dtype, shape=shape)
    x_ref, t_ref, sums_ref = kernels.admm_fourier(*args)
    x_hat, t_new, sums = host_gpu_kernels.admm_fourier(*args)
    tol = _tol(dtype)
    np.testing.assert_allclose(x_hat, x_ref, atol=tol * np.abs(x_ref).max())
    np.testing.assert_allclose(t_new, t_ref, atol=tol * np.abs(t_ref).max())
    np.testing.assert_allclose(sums, sums_ref, rtol=tol)
    # and against the dense formulation: x̂ = (âᴴâ + ρ)⁻¹(âᴴŷ + ρ(ẑ − û))
    z_hat = args[0].reshape(problem.maps_shape[:2] + problem.images_hat.shape[-2:])
    u_hat = args[2][:, None, None, None] * (args[1].reshape(z_hat.shape) - z_hat)
    x_dense = solve_shifted_normal(factor, problem.rhs_hat + factor.rho_array(z_hat) * (z_hat - u_hat))
    np.testing.assert_allclose(x_hat.reshape(z_hat.shape), x_dense, atol=tol * np.abs(x_dense).max())
    np.testing.assert_allclose(0.5 * sums, problem.residual(z_hat)[1], rtol=tol)
    assert x_hat.dtype == t_new.dtype == z_hat.dtype


@needs_compiler
@needs_numba
@pytest.mark.parametrize("over", [0, 1], ids=["z_hat", "t_hat"])
def test_host_build_of_admm_fourier_may_write_its_carry_over_an_input(host_gpu_kernels, rng, over):
    _, _, args = _fourier_inputs(rng, np.float64)
    x_new, t_new, sums = host_gpu_kernels.admm_fourier(*args)
    inputs = [args[0].copy(), args[1].copy()]
    x_in, t_in, sums_in = host_gpu_kernels.admm_fourier(*inputs, *args[2:], t_out=inputs[over])
    assert t_in is inputs[over]
    np.testing.assert_array_equal(t_in, t_new)
    np.testing.assert_array_equal(x_in, x_new)
    np.testing.assert_array_equal(sums_in, sums)


@needs_compiler
@needs_numba
def test_gpu_kernels_refuse_an_output_of_the_wrong_dtype(host_gpu_kernels, rng):
    x = rng.standard_normal((2, 3, 20))
    with pytest.raises(ValueError, match="z_out"):
        host_gpu_kernels.admm_spatial(x, x, x, 1.8, np.ones(2), z_out=np.empty(x.shape, dtype=np.float32))


@needs_compiler
@needs_numba
@pytest.mark.parametrize("n_images", [1, 3])
def test_admm_through_the_host_build_follows_the_numba_admm(host_gpu_kernels, rng, dtype, n_images):
    """The ADMM loop of solver.algorithms.admm on the GPU kernels' wrappers and arithmetic (host build)."""
    problem = _problem(rng, dtype, n_images=n_images)
    reference, emulated = Admm(problem), Admm(problem)
    assert reference._fused and emulated._fused
    emulated._kernels = types.SimpleNamespace(admm_spatial=host_gpu_kernels.admm_spatial,
                                              admm_fourier=host_gpu_kernels.admm_fourier, irfft2=kernels.irfft2)
    a, b = reference.init(), emulated.init()
    for _ in range(25):
        a, b = reference.step(a), emulated.step(b, out=b)
    tol = 1e-10 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(b.maps, a.maps, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.objective, a.objective, rtol=1e3 * np.finfo(dtype).eps)
    np.testing.assert_allclose(b.rho, a.rho, rtol=tol)
    assert b.maps.dtype == dtype


# ---- the CUDA source for the GPU -----------------------------------------------------------------------------


KERNEL_NAMES = [f"admm_{part}_{t}" for t in ("float", "double") for part in ("spatial", "fourier")]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: the CUDA source is not compiled for the GPU")
def test_cuda_source_compiles_for_the_gpu_with_nvcc(tmp_path):
    """nvcc -cubin runs the whole device tool chain (front end, NVVM, ptxas) for an H100 (sm_90)."""
    source = tmp_path / "admm_kernels.cu"
    source.write_text(gpu_kernels.SOURCE)
    done = subprocess.run([NVCC, "-cubin", "-arch=sm_90", "-Werror", "all-warnings", "-o",
                           str(tmp_path / "k.cubin"), str(source)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    ptx = subprocess.run([NVCC, "-ptx", "-arch=compute_80", "-o", "-", str(source)], capture_output=True, text=True,
                         timeout=120)
    assert ptx.returncode == 0, ptx.stderr
    for name in KERNEL_NAMES:
        assert f".entry {name}(" in ptx.stdout


def _find_nvrtc() -> str | None:
    """A libnvrtc: $NVRTC_LIBRARY, on the loader's path, in the CUDA toolkit, or from the nvidia-cuda-nvrtc wheel."""
    found = os.environ.get("NVRTC_LIBRARY") or ctypes.util.find_library("nvrtc")
    if found:
        return found
    patterns = ["/usr/local/cuda*/lib64/libnvrtc.so*", os.path.join(sys.prefix, "lib", "python3*", "site-packages",
                                                                     "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*")]
    candidates = sorted(p for pattern in patterns for p in glob.glob(pattern)
                        if "builtins" not in p and ".alt." not in p)
    return candidates[0] if candidates else None


@pytest.mark.skipif(_find_nvrtc() is None, reason="no libnvrtc found (cupy.RawModule's compiler)")
def test_cuda_source_compiles_with_nvrtc():
    """NVRTC, unlike nvcc, includes no CUDA header: the source must stand on its own, as cupy compiles it."""
    nvrtc = ctypes.CDLL(_find_nvrtc())
    program = ctypes.c_void_p()
    assert nvrtc.nvrtcCreateProgram(ctypes.byref(program), gpu_kernels.SOURCE.encode(), b"admm_kernels.cu", 0,
                                    None, None) == 0
    options = (ctypes.c_char_p * 1)(b"--gpu-architecture=compute_80")
    status = nvrtc.nvrtcCompileProgram(program, 1, options)
    size = ctypes.c_size_t()
    nvrtc.nvrtcGetProgramLogSize(program, ctypes.byref(size))
    log = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetProgramLog(program, log)
    assert status == 0, log.value.decode()
    nvrtc.nvrtcGetPTXSize(program, ctypes.byref(size))
    ptx = ctypes.create_string_buffer(size.value)
    nvrtc.nvrtcGetPTX(program, ptx)
    nvrtc.nvrtcDestroyProgram(ctypes.byref(program))
    for name in KERNEL_NAMES:
        assert f".entry {name}(".encode() in ptx.value


# ---- on a GPU ------------------------------------------------------------------------------------------------


def _run(solver: Admm, n: int, *, in_place: bool = False):
    state = solver.init()
    for _ in range(n):
        state = solver.step(state, out=state if in_place else None)
    return state


@pytest.mark.gpu
def test_gpu_kernels_follow_the_numba_kernels(rng, dtype):
    cp = get_backend("cupy")
    x, z, u = (rng.standard_normal((2, 3, 5000)).astype(dtype) for _ in range(3))
    thr = np.array([0.3, 0.7])
    z_ref, u_ref, sums_ref = kernels.admm_spatial(x, z, u, 1.8, thr)
    z_new, u_new, sums = gpu_kernels.admm_spatial(cp.asarray(x), cp.asarray(z), cp.asarray(u), 1.8, thr)
    tol = _tol(dtype)
    np.testing.assert_allclose(cp.to_host(z_new), z_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(cp.to_host(u_new), u_ref, rtol=tol, atol=tol)
    np.testing.assert_allclose(sums, sums_ref, rtol=tol, atol=tol)
    _, _, args = _fourier_inputs(rng, dtype, shape=(40, 30))
    x_ref, t_ref, data_ref = kernels.admm_fourier(*args)
    device_args = [cp.asarray(a) if isinstance(a, np.ndarray) else a for a in args]
    x_hat, t_new, data = gpu_kernels.admm_fourier(*device_args)
    np.testing.assert_allclose(cp.to_host(x_hat), x_ref, atol=tol * np.abs(x_ref).max())
    np.testing.assert_allclose(cp.to_host(t_new), t_ref, atol=tol * np.abs(t_ref).max())
    np.testing.assert_allclose(data, data_ref, rtol=tol)


@pytest.mark.gpu
@pytest.mark.parametrize("n_images", [1, 3])
def test_cupy_admm_follows_the_numpy_admm(rng, dtype, n_images):
    cpu = _problem(np.random.default_rng(7), dtype, n_images=n_images, shape=(32, 40))
    gpu = _problem(np.random.default_rng(7), dtype, get_backend("cupy"), n_images=n_images, shape=(32, 40))
    on_cpu, on_gpu = Admm(cpu), Admm(gpu)
    assert on_gpu._fused and on_gpu._kernels is gpu_kernels
    a, b = _run(on_cpu, 40), _run(on_gpu, 40, in_place=True)
    tol = 1e-9 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(gpu.backend.to_host(b.maps), a.maps, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.objective, a.objective, rtol=1e-4 if dtype == np.float32 else 1e-10)
    np.testing.assert_allclose(b.rho, a.rho, rtol=tol)
    assert b.maps.dtype == dtype and gpu.backend.name == "cupy"


@pytest.mark.gpu
def test_cupy_admm_fused_and_plain_paths_agree(rng):
    gpu = _problem(rng, np.float32, get_backend("cupy"), shape=(32, 40))
    fused, plain = Admm(gpu), Admm(gpu, AdmmConfig(fused=False))
    assert fused._fused and not plain._fused
    a, b = _run(fused, 40), _run(plain, 40)
    np.testing.assert_allclose(gpu.backend.to_host(a.maps), gpu.backend.to_host(b.maps), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-4)


@pytest.mark.gpu
def test_cupy_admm_objective_after_500_iterations_is_the_numpy_objective():
    """The target of issue #6 on the GPU: E after 500 iterations within 1e-3 of the numpy ADMM's."""
    cpu = _problem(np.random.default_rng(3), np.float32, n_images=2, shape=(64, 64), n_filters=16, size=8)
    gpu = _problem(np.random.default_rng(3), np.float32, get_backend("cupy"), n_images=2, shape=(64, 64),
                   n_filters=16, size=8)
    config = AdmmConfig(max_iter=500, tol=0.0)
    a, b = _run(Admm(cpu, config), 500), _run(Admm(gpu, config), 500, in_place=True)
    np.testing.assert_allclose(b.objective.sum(), a.objective.sum(), rtol=1e-3)


@pytest.mark.gpu
def test_cupy_fft_plans_are_reused_and_match_scipy(rng, dtype):
    cp = get_backend("cupy")
    maps = rng.standard_normal((2, 3, 24, 30)).astype(dtype)
    backend_module._cufft_plan_on.cache_clear()
    for _ in range(3):
        maps_hat = cp.rfft2(cp.asarray(maps))
        back = cp.irfft2(maps_hat, maps.shape[-2:])
    info = backend_module._cufft_plan_on.cache_info()
    assert info.misses == 2 and info.hits == 4
    tol = _tol(dtype)
    np.testing.assert_allclose(cp.to_host(maps_hat), np.fft.rfft2(maps), atol=tol * np.abs(maps).sum() / 100)
    np.testing.assert_allclose(cp.to_host(back), maps, atol=tol)
    assert back.dtype == dtype
