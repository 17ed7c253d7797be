"""The CUDA kernels of the ADMM inner loop (solver.operators.gpu_kernels) beyond the kernel contracts that
tests/solver/test_kernels.py runs on every implementation: the ADMM loop on the kernels' host build (see
tests/solver/cuda_host.py), the whole CUDA source compiled for the GPU with ``nvcc -cubin`` and, where a libnvrtc
is found, with NVRTC (the compiler cupy.RawModule uses); tests marked ``gpu`` run the cupy ADMM against the numpy
ADMM.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import glob
import os
import subprocess
import sys
import types

import numpy as np
import pytest

from solver import backend as backend_module
from solver.algorithms.admm import Admm
from solver.backend import get_backend
from solver.config import AdmmConfig
from solver.operators import gpu_kernels, kernels
from tests.solver.admm_cases import problem_for
from tests.solver.contracts import dtype_tol
from tests.solver.cuda_host import NVCC

needs_numba = pytest.mark.skipif(not kernels.available(), reason="numba is not installed (the CPU reference)")


@needs_numba
@pytest.mark.parametrize("n_images", [1, 3])
def test_admm_through_the_host_build_follows_the_numba_admm(host_gpu_kernels, rng, dtype, n_images):
    """The ADMM loop of solver.algorithms.admm on the GPU kernels' wrappers and arithmetic (host build)."""
    problem = problem_for(rng, dtype, n_images=n_images)
    reference, emulated = Admm(problem), Admm(problem)
    assert reference._fused and emulated._fused
    emulated._kernels = types.SimpleNamespace(
        admm_spatial=host_gpu_kernels.admm_spatial, admm_fourier=host_gpu_kernels.admm_fourier, irfft2=kernels.irfft2
    )
    a, b = reference.init(), emulated.init()
    for _ in range(25):
        a, b = reference.step(a), emulated.step(b, out=b)
    tol = 1e-10 if dtype == np.float64 else 2e-3
    np.testing.assert_allclose(b.maps, a.maps, rtol=tol, atol=tol)
    np.testing.assert_allclose(b.objective, a.objective, rtol=dtype_tol(dtype))
    np.testing.assert_allclose(b.rho, a.rho, rtol=tol)
    assert b.maps.dtype == dtype


KERNEL_NAMES = [f"admm_{part}_{t}" for t in ("float", "double") for part in ("spatial", "fourier")]


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH: the CUDA source is not compiled for the GPU")
def test_cuda_source_compiles_for_the_gpu_with_nvcc(tmp_path):
    """nvcc -cubin runs the whole device tool chain (front end, NVVM, ptxas) for an H100 (sm_90)."""
    source = tmp_path / "admm_kernels.cu"
    source.write_text(gpu_kernels.SOURCE)
    done = subprocess.run(
        [NVCC, "-cubin", "-arch=sm_90", "-Werror", "all-warnings", "-o", str(tmp_path / "k.cubin"), str(source)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    ptx = subprocess.run(
        [NVCC, "-ptx", "-arch=compute_80", "-o", "-", str(source)], capture_output=True, text=True, timeout=120
    )
    assert ptx.returncode == 0, ptx.stderr
    for name in KERNEL_NAMES:
        assert f".entry {name}(" in ptx.stdout


def _find_nvrtc() -> str | None:
    """A libnvrtc: $NVRTC_LIBRARY, on the loader's path, in the CUDA toolkit, or from the nvidia-cuda-nvrtc wheel."""
    found = os.environ.get("NVRTC_LIBRARY") or ctypes.util.find_library("nvrtc")
    if found:
        return found
    patterns = [
        "/usr/local/cuda*/lib64/libnvrtc.so*",
        os.path.join(sys.prefix, "lib", "python3*", "site-packages", "nvidia", "cuda_nvrtc", "lib", "libnvrtc.so*"),
    ]
    candidates = sorted(
        p for pattern in patterns for p in glob.glob(pattern) if "builtins" not in p and ".alt." not in p
    )
    return candidates[0] if candidates else None


@pytest.mark.skipif(_find_nvrtc() is None, reason="no libnvrtc found (cupy.RawModule's compiler)")
def test_cuda_source_compiles_with_nvrtc():
    """NVRTC, unlike nvcc, includes no CUDA header: the source must stand on its own, as cupy compiles it."""
    nvrtc = ctypes.CDLL(_find_nvrtc())
    program = ctypes.c_void_p()
    assert (
        nvrtc.nvrtcCreateProgram(ctypes.byref(program), gpu_kernels.SOURCE.encode(), b"admm_kernels.cu", 0, None, None)
        == 0
    )
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


def _run(solver: Admm, n: int, *, in_place: bool = False):
    state = solver.init()
    for _ in range(n):
        state = solver.step(state, out=state if in_place else None)
    return state


@pytest.mark.gpu
@pytest.mark.parametrize("n_images", [1, 3])
def test_cupy_admm_follows_the_numpy_admm(rng, dtype, n_images):
    cpu = problem_for(np.random.default_rng(7), dtype, n_images=n_images, shape=(32, 40))
    gpu = problem_for(np.random.default_rng(7), dtype, get_backend("cupy"), n_images=n_images, shape=(32, 40))
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
    gpu = problem_for(rng, np.float32, get_backend("cupy"), shape=(32, 40))
    fused, plain = Admm(gpu), Admm(gpu, AdmmConfig(fused=False))
    assert fused._fused and not plain._fused
    a, b = _run(fused, 40), _run(plain, 40)
    np.testing.assert_allclose(gpu.backend.to_host(a.maps), gpu.backend.to_host(b.maps), rtol=2e-3, atol=2e-3)
    np.testing.assert_allclose(a.objective, b.objective, rtol=1e-4)


@pytest.mark.gpu
def test_cupy_admm_objective_after_500_iterations_is_the_numpy_objective():
    """The GPU's accuracy target: E after 500 iterations within 1e-3 of the numpy ADMM's."""
    cpu = problem_for(np.random.default_rng(3), np.float32, n_images=2, shape=(64, 64), n_filters=16, size=8)
    gpu = problem_for(
        np.random.default_rng(3), np.float32, get_backend("cupy"), n_images=2, shape=(64, 64), n_filters=16, size=8
    )
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
    tol = dtype_tol(dtype, 1e2)
    np.testing.assert_allclose(cp.to_host(maps_hat), np.fft.rfft2(maps), atol=tol * np.abs(maps).sum() / 100)
    np.testing.assert_allclose(cp.to_host(back), maps, atol=tol)
    assert back.dtype == dtype
