"""Learning per outer iteration on each backend, in one process (``solver.learn``, no Ray), on growing problems.

Usage::

    PYTHONPATH=. .venv/bin/python bench/bench_gpu_learn.py [--backends numpy,cupy] [--n-iter 6] [--threads 2]
        [--cells small,medium,large] [--profile CELL]

The cells are the learning cells of ``bench_sporco.py``'s matrix (high-passed sample images, λ = 0.1, ADMM with
the default schedule, float32, circular boundary): ``small`` 4 × 128² with 16 filters 8×8, ``medium`` 8 × 256²
with 32 × 8×8, ``large`` 16 × 256² with 64 × 11×11. Each cell runs once for 1 outer iteration untimed (kernel
compilation, FFT plans), then for ``--n-iter``; the table gives the median time of an outer iteration after the
first, E after the last (the same on both backends within float32 round-off), and on the GPU the bytes cupy's
memory pool holds afterwards (the run's peak: the pool keeps the blocks it freed). ``--profile CELL`` adds the
20 functions of most own time in that cell's timed run on the last backend listed (cProfile), to stderr.

A backend that is not available (cupy without a CUDA device) is left out with a line saying so.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import statistics
import sys
import time
from typing import Any

from _common import machine_info, test_images

from solver import learn
from solver.backend import get_backend, gpu_available

CELLS = {  # name: (images, side, filters, filter side)
    "small": (4, 128, 16, 8),
    "medium": (8, 256, 32, 8),
    "large": (16, 256, 64, 11),
}
LAM = 0.1


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def run_cell(cell: str, backend: str, n_iter: int, profile: bool) -> dict[str, Any]:
    n, side, k, s = CELLS[cell]
    images = test_images(n, side)
    bk = get_backend(backend)
    learn(images, k, s, LAM, n_iter=1, backend=backend)  # untimed: compiles the kernels, plans the FFTs
    if bk.name == "cupy":
        bk.xp.get_default_memory_pool().free_all_blocks()
    stamps: list[float] = []
    profiler = cProfile.Profile() if profile else None
    start = time.perf_counter()
    if profiler:
        profiler.enable()
    result = learn(
        images, k, s, LAM, n_iter=n_iter, backend=backend, callback=lambda _: stamps.append(time.perf_counter())
    )
    if profiler:
        profiler.disable()
        text = io.StringIO()
        pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(20)
        _log(f"profile of {cell} on {backend}:\n{text.getvalue()}")
    steps = [b - a for a, b in zip([start, *stamps], stamps, strict=False)]
    pool = bk.xp.get_default_memory_pool().total_bytes() / 2**20 if bk.name == "cupy" else None
    return {
        "first": steps[0],
        "per_iter": statistics.median(steps[1:]) if len(steps) > 1 else steps[0],
        "objective": result.history[-1],
        "pool": pool,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backends", default="numpy,cupy", help="comma-separated (default numpy,cupy)")
    parser.add_argument("--cells", default="small,medium,large", help=f"comma-separated of {', '.join(CELLS)}")
    parser.add_argument("--n-iter", type=int, default=6, help="timed outer iterations (default 6)")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads (scipy.fft workers and numba)")
    parser.add_argument("--profile", default=None, help="a cell to profile on the last backend")
    args = parser.parse_args(argv)
    cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in cells if c not in CELLS]
    if unknown or (args.profile is not None and args.profile not in CELLS):
        parser.error(f"--cells/--profile take {', '.join(CELLS)}, got {unknown or args.profile}")
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    if "cupy" in backends and not gpu_available():
        _log("no GPU: cupy is not importable or no CUDA device answers; the cupy runs are left out")
        backends.remove("cupy")
    if "numpy" in backends:
        import numba  # noqa: PLC0415  (the CPU kernels' thread count)

        numba.set_num_threads(min(args.threads, numba.config.NUMBA_NUM_THREADS))
        # solver.learn sizes its FFT thread pools from the process's CPU budget, which this caps
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    rows = []
    for cell in cells:
        for backend in backends:
            _log(f"{cell} on {backend}: {args.n_iter} outer iterations")
            profile = args.profile == cell and backend == backends[-1]
            rows.append((cell, backend, run_cell(cell, backend, args.n_iter, profile)))
    print(f"# Learning per outer iteration (solver.learn, one process), λ = {LAM}, float32, {args.n_iter} iterations\n")
    print("| cell | images | filters | backend | ms per outer iter (median) | first (s) | E after last | pool MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for cell, backend, row in rows:
        n, side, k, s = CELLS[cell]
        label = f"numpy ({args.threads} threads)" if backend == "numpy" else backend
        pool = "" if row["pool"] is None else f"{row['pool']:.0f}"
        print(
            f"| {cell} | {n} × {side}² | {k} × {s}×{s} | {label} | {1e3 * row['per_iter']:.1f} | {row['first']:.2f} | "
            f"{row['objective']:.7g} | {pool} |"
        )
    info = machine_info()
    print(f"\nMachine: {info['platform']}; {info['cpu']}; numpy {info['numpy']}, scipy {info['scipy']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
