"""ADMM per iteration on the GPU (cupy, fused CUDA kernels) against the CPU (numpy, fused numba kernels).

Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_gpu.py [--iters 500] [--threads 2] [--size 512] [--filters 64]

The problem: one 512×512 high-passed sample image (``bench/_common.test_images``), 64
random unit-norm filters 8×8, λ = 0.05, p = 1, circular boundary, float32. Both backends run the same ADMM
(``solver.algorithms.admm.Admm``, ``tol = 0``, iterating in place) for ``--iters`` iterations from zero maps; the
CPU side uses ``--threads`` threads (scipy.fft workers and numba). Every step returns the objective to the host,
so a step's wall time includes the GPU's work. The reference of each side is the bare rfft2 + irfft2 pair of a
maps-shaped float32 array on the same backend (best of 5). Parity: the relative difference of E after the last
iteration (the GPU must match the CPU's E within 1e-5) and the largest difference of the maps. GPU memory: the
bytes cupy's memory pool holds after the GPU run, which is the run's peak (the pool keeps the blocks it freed).

Without cupy or a CUDA device the script says so on one line and exits with status 0, measuring nothing. The
table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from typing import Any

import numpy as np
from _common import machine_info, random_filters, test_images

from solver.algorithms.admm import Admm
from solver.algorithms.problem import CSCProblem
from solver.backend import Backend, get_backend, gpu_available
from solver.config import AdmmConfig
from solver.operators.convolution import ConvOperator
from solver.operators.prox import LpPenalty

PARITY = 1e-5  # |E_gpu − E_cpu| / E_cpu allowed after the last iteration: float32 round-off, summed differently
WARMUP = 3  # iterations left out of the per-iteration median (kernel compilation, FFT plans, allocation)


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _sync(bk: Backend, a: Any) -> None:
    """Wait for the device: a one-element copy to the host."""
    bk.to_host(a.reshape(-1)[:1])


def fft_pair_s(bk: Backend, maps_shape: tuple[int, ...], repeats: int = 5) -> float:
    """Best time of rfft2 + irfft2 of a float32 array of `maps_shape` on backend `bk`."""
    a = bk.asarray(np.random.default_rng(0).standard_normal(maps_shape, dtype=np.float32))
    best = float("inf")
    for i in range(repeats + 1):
        _sync(bk, a)
        t0 = time.perf_counter()
        out = bk.irfft2(bk.rfft2(a), maps_shape[-2:])
        _sync(bk, out)
        if i:  # the first call plans
            best = min(best, time.perf_counter() - t0)
    return best


def run_admm(bk: Backend, images: np.ndarray, filters: np.ndarray, lam: float, n_iter: int) -> dict[str, Any]:
    """`n_iter` in-place ADMM iterations on backend `bk`: step times, final E and maps (host)."""
    op = ConvOperator(bk.asarray(filters), images.shape[-2:])
    solver = Admm(CSCProblem(bk.asarray(images), op, LpPenalty(lam)), AdmmConfig(max_iter=n_iter, tol=0.0))
    state = solver.init()
    times = []
    for it in range(n_iter):
        t0 = time.perf_counter()
        state = solver.step(state, out=state)  # returns E on the host: the step is complete
        times.append(time.perf_counter() - t0)
        if (it + 1) % 100 == 0:
            _log(f"  {bk.name}: {it + 1}/{n_iter} iterations, E = {solver.objective(state):.6g}")
    return {
        "fused": solver._fused,
        "times": times[WARMUP:] or times,
        "objective": solver.objective(state),
        "maps": bk.to_host(state.maps),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=500, help="ADMM iterations on each backend (default 500)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads: scipy.fft workers and numba")
    parser.add_argument("--size", type=int, default=512, help="image side (default 512)")
    parser.add_argument("--filters", type=int, default=64, help="number of filters (default 64)")
    parser.add_argument("--filter-size", type=int, default=8, help="filter side (default 8)")
    parser.add_argument("--lam", type=float, default=0.05, help="λ (default 0.05)")
    args = parser.parse_args(argv)
    if not gpu_available():
        print(
            "no GPU: cupy is not importable or no CUDA device answers; nothing measured "
            "(pip install -e '.[gpu]' on a machine with an NVIDIA GPU)"
        )
        return 0
    import numba  # noqa: PLC0415  (the CPU kernels' thread count)

    numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
    # the operators size their FFT thread pools from the process's CPU budget (backend_of), which this caps
    os.environ["OMP_NUM_THREADS"] = str(args.threads)
    images = test_images(1, args.size)
    filters = random_filters(args.filters, args.filter_size)
    maps_shape = (1, args.filters, args.size, args.size)
    backends = {"numpy": get_backend("numpy", workers=args.threads), "cupy": get_backend("cupy")}
    rows = {}
    for name, bk in backends.items():
        _log(f"{name}: {args.iters} ADMM iterations on {maps_shape} float32")
        rows[name] = run_admm(bk, images, filters, args.lam, args.iters)
        if name == "cupy":  # before the FFT pair's arrays join the pool
            pool_bytes = bk.xp.get_default_memory_pool().total_bytes()
        rows[name]["fft_pair"] = fft_pair_s(bk, maps_shape)
    cpu, gpu = rows["numpy"], rows["cupy"]
    rel_e = abs(gpu["objective"] - cpu["objective"]) / abs(cpu["objective"])
    maps_diff = float(np.max(np.abs(gpu["maps"] - cpu["maps"])))

    print(
        f"# ADMM per iteration: 1 image {args.size}×{args.size}, {args.filters} filters "
        f"{args.filter_size}×{args.filter_size}, λ = {args.lam}, float32, {args.iters} iterations\n"
    )
    print(
        "| backend | fused kernels | per-iter ms (median) | per-iter ms (best) | FFT pair ms | × FFT pair | "
        f"E after {args.iters} |"
    )
    print("|---|---|---|---|---|---|---|")
    for name, row in rows.items():
        median, best = statistics.median(row["times"]), min(row["times"])
        label = f"numpy ({args.threads} threads)" if name == "numpy" else "cupy"
        print(
            f"| {label} | {row['fused']} | {1e3 * median:.2f} | {1e3 * best:.2f} | {1e3 * row['fft_pair']:.2f} | "
            f"{median / row['fft_pair']:.2f} | {row['objective']:.6g} |"
        )
    speedup = statistics.median(cpu["times"]) / statistics.median(gpu["times"])
    print(
        f"\nGPU speed-up per iteration: {speedup:.1f}×. Parity: |E_gpu − E_cpu| / E_cpu = {rel_e:.2e} "
        f"({'within' if rel_e <= PARITY else 'OUTSIDE'} {PARITY:g}); max |maps_gpu − maps_cpu| = {maps_diff:.2e}."
    )
    print(f"GPU memory: cupy's pool holds {pool_bytes / 2**20:.1f} MiB after the ADMM run (its peak).")
    info = machine_info()
    print(f"\nMachine: {info['platform']}; {info['cpu']}; numpy {info['numpy']}, scipy {info['scipy']}.")
    return 0 if rel_e <= PARITY else 1


if __name__ == "__main__":
    sys.exit(main())
