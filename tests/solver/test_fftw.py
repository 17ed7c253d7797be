"""The FFTW engine of the CPU backend's real 2-D FFTs (:mod:`solver.fftw`) and its scipy.fft fallback."""

from __future__ import annotations

import importlib.util
import sys
import threading

import numpy as np
import pytest

from solver import fftw
from solver.backend import (
    FFTW_ENTRIES_PER_THREAD,
    PASS_ENTRIES_PER_THREAD,
    Backend,
    fftw_threads,
    pass_threads,
)
from solver.operators import kernels
from tests.solver.contracts import dtype_tol

needs_pyfftw = pytest.mark.skipif(importlib.util.find_spec("pyfftw") is None, reason="pyFFTW is not installed")

SHAPES = [(16, 16), (15, 22), (9, 7)]  # even, odd last axis, odd first axis


@pytest.fixture
def engine(request, monkeypatch):
    """The engine named by the test's parameter, chosen as a user does: with DECONV_FFT."""
    monkeypatch.setenv(fftw.ENV, request.param)
    fftw._pyfftw.cache_clear()
    fftw.clear()
    yield request.param
    fftw._pyfftw.cache_clear()
    fftw.clear()


ENGINES = [pytest.param("fftw", marks=needs_pyfftw), "scipy"]


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("workers", [1, 2])
def test_the_pair_is_numpys_fft_within_the_dtypes_round_off(engine, rng, dtype, shape, workers):
    a = rng.standard_normal((3, 4, *shape)).astype(dtype)
    bk = Backend("numpy", np, workers)
    a_hat = bk.rfft2(a)
    assert fftw.engine() == engine
    assert a_hat.dtype == np.result_type(dtype, np.complex64) and a_hat.shape == (3, 4, shape[0], shape[1] // 2 + 1)
    np.testing.assert_allclose(a_hat, np.fft.rfft2(a.astype(np.float64)), rtol=0, atol=dtype_tol(dtype) * 10)
    for inverse in (bk.irfft2, lambda h, s: kernels.irfft2(h, s, workers)):
        back = inverse(a_hat, shape)
        assert back.dtype == dtype
        np.testing.assert_allclose(back, a, rtol=0, atol=dtype_tol(dtype))
        expected = np.fft.irfft2(a_hat.astype(np.complex128), s=shape)
        np.testing.assert_allclose(back, expected, rtol=0, atol=dtype_tol(dtype))


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
def test_zero_padding_to_the_plane(engine, rng):
    filters = rng.standard_normal((5, 2, 4, 3)).astype(np.float32)
    got = Backend("numpy", np, 1).rfft2(filters, (12, 10))
    np.testing.assert_allclose(got, np.fft.rfft2(filters.astype(np.float64), s=(12, 10)), atol=dtype_tol(np.float32))


@needs_pyfftw
@pytest.mark.parametrize("engine", ["fftw"], indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_batch_transforms_as_its_planes_bit_for_bit(engine, rng, dtype):
    # what makes 1 or n shards, and blocks of any size, give the same numbers: no plan depends on the batch
    a = rng.standard_normal((5, 3, 32, 24)).astype(dtype)
    by_plane = [[fftw.rfft2(a[n, k][None], (32, 24), 1)[0] for k in range(3)] for n in range(5)]
    by_plane = np.array(by_plane)
    inverse_by_plane = np.array(
        [[fftw.irfft2(by_plane[n, k][None], (32, 24), 1)[0] for k in range(3)] for n in range(5)]
    )
    for threads in (1, 2):
        for rows in (slice(0, 5), slice(1, 3), slice(4, 5)):
            np.testing.assert_array_equal(fftw.rfft2(a[rows], (32, 24), threads), by_plane[rows])
            np.testing.assert_array_equal(fftw.irfft2(by_plane[rows], (32, 24), threads), inverse_by_plane[rows])


@needs_pyfftw
@pytest.mark.parametrize("engine", ["fftw"], indirect=True)
def test_results_belong_to_the_caller_and_the_input_is_kept(engine, rng):
    a, b = rng.standard_normal((2, 2, 8, 8)).astype(np.float32), rng.standard_normal((2, 2, 8, 8)).astype(np.float32)
    a_hat = fftw.rfft2(a, (8, 8), 1)
    kept = a_hat.copy()
    b_hat = fftw.rfft2(b, (8, 8), 1)  # the same plan: it must not write into the first result
    assert not np.shares_memory(a_hat, b_hat)
    np.testing.assert_array_equal(a_hat, kept)
    back = fftw.irfft2(a_hat, (8, 8), 1)  # FFTW's inverse destroys its input: the plan's copy, not a_hat
    np.testing.assert_array_equal(a_hat, kept)
    again = fftw.irfft2(b_hat, (8, 8), 1)
    assert not np.shares_memory(back, again)
    np.testing.assert_allclose(back, a, atol=dtype_tol(np.float32))


def _misaligned(a: np.ndarray) -> np.ndarray:
    """A C-contiguous copy of `a` at an address 4 bytes past a 16-byte boundary."""
    raw = np.empty(a.nbytes + 32, dtype=np.uint8)
    start = (-raw.ctypes.data) % 16 + 4
    out = raw[start : start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@needs_pyfftw
@pytest.mark.parametrize("engine", ["fftw"], indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_a_transform_in_place_of_the_callers_array_is_the_copied_one(engine, rng, dtype):
    # arrays the plan can read where they lie are not copied into its buffer: the same plan, the same numbers
    a = rng.standard_normal((3, 2, 16, 12)).astype(dtype)
    strided = np.ascontiguousarray(np.swapaxes(a, 0, 1)).swapaxes(0, 1)  # not C-contiguous: copied
    odd = _misaligned(a)  # not aligned as the plan's buffer: copied
    a_hat = fftw.rfft2(a, (16, 12), 1)
    plan = fftw._cache.plans[next(reversed(fftw._cache.plans))]
    assert plan.takes(a) and not plan.takes(strided) and not plan.takes(odd)
    kept = a.copy()
    for other in (strided, odd):
        np.testing.assert_array_equal(fftw.rfft2(other, (16, 12), 1), a_hat)
    np.testing.assert_array_equal(a, kept)  # a forward transform keeps its input
    assert plan.fftw.input_array is plan.buffer  # and the plan does not keep it

    back = fftw.irfft2(a_hat, (16, 12), 1)
    for other in (a_hat.copy(), _misaligned(a_hat)):
        np.testing.assert_array_equal(fftw.irfft2(other, (16, 12), 1, overwrite=True), back)
    inverse = fftw._cache.plans[next(reversed(fftw._cache.plans))]
    assert inverse.fftw.input_array is inverse.buffer
    np.testing.assert_allclose(back, a, atol=dtype_tol(dtype))

    read_only = a_hat.copy()  # given up, but not to be written: copied (in place, FFTW would write into it)
    read_only.flags.writeable = False
    assert inverse.takes(read_only)
    np.testing.assert_array_equal(fftw.irfft2(read_only, (16, 12), 1, overwrite=True), back)
    np.testing.assert_array_equal(read_only, a_hat)


@needs_pyfftw
@pytest.mark.parametrize("engine", ["fftw"], indirect=True)
def test_large_arrays_and_other_dtypes_are_left_to_scipy(engine, rng, monkeypatch):
    monkeypatch.setattr(fftw, "MAX_ENTRIES", 2 * 8 * 8)
    small, large = rng.standard_normal((2, 8, 8)), rng.standard_normal((3, 8, 8))
    assert fftw.rfft2(small, (8, 8), 1) is not None
    assert fftw.rfft2(large, (8, 8), 1) is None
    assert fftw.rfft2(small.astype(np.float16), (8, 8), 1) is None
    np.testing.assert_allclose(Backend("numpy", np, 1).rfft2(large), np.fft.rfft2(large), atol=dtype_tol(np.float64))


@needs_pyfftw
@pytest.mark.parametrize("engine", ["fftw"], indirect=True)
def test_the_plans_a_thread_keeps_are_bounded(engine, rng, monkeypatch):
    one = np.zeros((4, 16, 16), dtype=np.float64).nbytes
    monkeypatch.setattr(fftw, "CACHE_BYTES", 3 * one)
    for n in range(2, 12):
        x = rng.standard_normal((4, 16, 16 + n))
        np.testing.assert_allclose(fftw.rfft2(x, x.shape[-2:], 1), np.fft.rfft2(x), atol=dtype_tol(np.float64))
        assert fftw._cache.nbytes <= 3 * one * 1.2
    assert 1 <= len(fftw._cache.plans) <= 3


@needs_pyfftw
@pytest.mark.parametrize("engine", ["fftw"], indirect=True)
def test_threads_transform_side_by_side(engine, rng):
    # a pyFFTW object is not safe to run from two threads at once: each thread plans its own
    arrays = [rng.standard_normal((6, 4, 32, 32)).astype(np.float32) for _ in range(4)]
    results: dict[int, list[np.ndarray]] = {}
    start = threading.Barrier(len(arrays))

    def work(i: int) -> None:
        start.wait()
        results[i] = [fftw.irfft2(fftw.rfft2(arrays[i], (32, 32), 1), (32, 32), 1) for _ in range(20)]

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(arrays))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i, a in enumerate(arrays):
        for back in results[i]:
            np.testing.assert_allclose(back, a, atol=dtype_tol(np.float32))


def test_an_unknown_engine_is_refused_by_name(monkeypatch):
    monkeypatch.setenv(fftw.ENV, "mkl")
    fftw._pyfftw.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"DECONV_FFT.*'mkl'"):
            fftw.available()
    finally:
        monkeypatch.undo()
        fftw._pyfftw.cache_clear()


def test_asking_for_fftw_without_pyfftw_is_an_error_not_a_fallback(monkeypatch):
    monkeypatch.setenv(fftw.ENV, "fftw")
    monkeypatch.setitem(sys.modules, "pyfftw", None)  # import pyfftw now raises ImportError
    fftw._pyfftw.cache_clear()
    try:
        with pytest.raises(ValueError, match="pyFFTW is not importable"):
            fftw.available()
        monkeypatch.setenv(fftw.ENV, "auto")
        fftw._pyfftw.cache_clear()
        assert fftw.engine() == "scipy"
    finally:
        monkeypatch.undo()
        fftw._pyfftw.cache_clear()


@pytest.mark.parametrize("engine", ENGINES, indirect=True)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", SHAPES)
def test_an_unscaled_inverse_is_the_inverse_before_its_factor(engine, rng, dtype, shape):
    # the ADMM loop applies 1/(H·W) in its next pass: scaling the unscaled inverse there must give the inverse
    a_hat = Backend("numpy", np, 2).rfft2(rng.standard_normal((3, 4, *shape)).astype(dtype))
    scaled = kernels.irfft2(a_hat, shape, 2)
    raw = kernels.irfft2(a_hat, shape, 2, scaled=False)
    assert raw.dtype == scaled.dtype == dtype
    factor = dtype(1.0 / (shape[0] * shape[1]))
    if engine == "fftw":  # the same product as the plan's own scaling, bit for bit
        np.testing.assert_array_equal(raw * factor, scaled)
    else:  # pocketfft scales inside its passes
        np.testing.assert_allclose(raw * factor, scaled, rtol=0, atol=dtype_tol(dtype))
    assert np.abs(raw).max() > 2 * np.abs(scaled).max()  # not scaled after all


@pytest.mark.parametrize(
    ("threads", "per"), [(fftw_threads, FFTW_ENTRIES_PER_THREAD), (pass_threads, PASS_ENTRIES_PER_THREAD)]
)
def test_threads_grow_with_the_array_up_to_the_workers(threads, per):
    assert threads(per - 1, 8) == 1
    assert threads(2 * per, 8) == 2
    assert threads(64 * per, 8) == 8
    assert threads(64 * per, 1) == 1
