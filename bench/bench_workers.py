"""Distributed learning: time per outer iteration and bytes moved per outer iteration, for 1, 2 and 4 shards, with
the reduced-gradient projected-FISTA filter update and with consensus ADMM; then the two filter updates compared
at equal time in one process.

    PYTHONPATH=. .venv/bin/python bench/bench_workers.py [--iters 6] [--shards 1 2 4] [--compare-iters 40]

The problem: the 8 bundled sample images (128x128, grey), 16 filters 8x8, the ``quick`` preset's settings
(ADMM coding, 10 iterations; projected-FISTA filter update, 10 iterations; preprocessing on), float32, on a
private local Ray cluster with every core of this machine. The single-process learner (``learn_layer``, no Ray)
is the baseline. "Later iterations" is the median over iterations 2..n (the first one also runs 20 power
iterations instead of 4 for the filter step size); "first" includes starting the actors and loading the images.
Bytes count the arrays and scalars of the learning loop's calls (filters out to every shard, statistics back).
The second table runs ``learn_layer`` for ``--compare-iters`` outer iterations with each filter update and reads
E when 10, 20 and 30 seconds had passed (0 skips it). The tables go to stdout, progress to stderr. Nothing here
asserts a speed-up: on a 2-core machine there is none to expect.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repository is not installed in the venv: make `solver`, `workers` importable
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # Ray's local workers import `solver` and `workers` from the driver's working directory

from configs import sample_paths  # noqa: E402
from solver import learn_layer, load_config  # noqa: E402
from solver.config import FilterUpdateConfig  # noqa: E402
from workers.distributed.cluster import ClusterConfig, connect, shutdown  # noqa: E402
from workers.distributed.coordinator import Coordinator  # noqa: E402
from workers.distributed.images import inspect_images, load_images  # noqa: E402

logger = logging.getLogger("bench.workers")


UPDATES = {
    "fista": FilterUpdateConfig(method="fista"),
    "consensus": FilterUpdateConfig(method="consensus"),
    "consensus ρ=1": FilterUpdateConfig(method="consensus", rho=1.0),
}


def _config(n_iter: int, update: str = "fista"):
    config = load_config("quick")
    layer = config.layers[0].model_copy(update={"filter_size": 8})
    return config.model_copy(
        update={"layers": [layer], "n_iter": n_iter, "dtype": "float32", "filter_update": UPDATES[update]}
    )


def _baseline(paths, config) -> dict:
    images = load_images(paths, inspect_images(paths))
    times = []
    start = time.perf_counter()
    result = learn_layer(images, config, backend="numpy", callback=lambda s: times.append(s.elapsed))
    return {"total": time.perf_counter() - start, "times": times, "history": result.history}


def _distributed(paths, config, n_shards: int) -> dict:
    coordinator = Coordinator(paths, config, workers=n_shards, backend="numpy")
    times, traffic = [], []

    def record(stats) -> None:
        times.append(stats.elapsed)
        t = coordinator.traffic
        traffic.append((t.calls, t.bytes_out, t.bytes_in))

    start = time.perf_counter()
    result = coordinator.run(callback=record)
    return {"total": time.perf_counter() - start, "times": times, "traffic": traffic, "history": result.history}


def _per_iteration(times: list[float]) -> tuple[float, float]:
    """(first iteration's seconds, median seconds of the later ones)."""
    steps = np.diff([0.0, *times])
    return float(steps[0]), float(statistics.median(steps[1:])) if len(steps) > 1 else float("nan")


def _row(label: str, run: dict, reference: list[float]) -> str:
    first, later = _per_iteration(run["times"])
    drift = max(abs(a - b) / abs(b) for a, b in zip(run["history"], reference, strict=True))
    if "traffic" not in run:
        return f"| {label} | {first:.2f} | {later:.3f} | – | – | – | – | {drift:.1e} |"
    counts = np.diff(np.array([(0, 0, 0), *run["traffic"]]), axis=0)[1:]  # per later iteration
    calls, out, back = (float(np.median(counts[:, i])) for i in range(3))
    return (
        f"| {label} | {first:.2f} | {later:.3f} | {calls:.0f} | {out / 1024:.1f} | {back / 1024:.1f} | "
        f"{(out + back) / calls:.0f} | {drift:.1e} |"
    )


def _shard_table(paths, args, cores: int) -> list[str]:
    rows = []
    context = connect(ClusterConfig(address="local", num_cpus=cores))
    try:
        for update in args.updates:
            config = _config(args.iters, update)
            logger.info("%s: baseline, learn_layer in one process", update)
            baseline = _baseline(paths, config)
            rows.append(_row(f"{update}: 1 process, no Ray", baseline, baseline["history"]))
            for n in args.shards:
                logger.info("%s: %d shard(s)", update, n)
                run = _distributed(paths, config, n)
                rows.append(_row(f"{update}: {n} shard{'s' if n > 1 else ''}", run, baseline["history"]))
    finally:
        if context.started:
            shutdown()
    return rows


def _comparison_table(paths, n_iter: int) -> list[str]:
    rows = []
    for update in UPDATES:
        logger.info("comparison: %s, %d outer iterations in one process", update, n_iter)
        run = _baseline(paths, _config(n_iter, update))
        times, history = np.array(run["times"]), np.array(run["history"])
        at = [
            f"{history[np.searchsorted(times, t, side='right') - 1]:.1f}" if times[0] <= t else "–"
            for t in (10, 20, 30)
        ]
        rows.append(f"| {update} | {times[-1] / n_iter:.2f} | {' | '.join(at)} | {history[-1]:.1f} |")
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iters", type=int, default=6, help="outer iterations per distributed run (default 6)")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--updates", nargs="+", choices=sorted(UPDATES), default=["fista", "consensus"])
    parser.add_argument("--compare-iters", type=int, default=40, help="outer iterations of the comparison (0: skip)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    logging.getLogger("workers").setLevel(logging.WARNING)

    paths = sample_paths()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    rows = _shard_table(paths, args, cores)
    comparison = _comparison_table(paths, args.compare_iters) if args.compare_iters > 0 else []
    _, height, width = inspect_images(paths).shape
    config = _config(args.iters)
    layer = config.layers[0]
    print(
        f"{len(paths)} images {height}x{width}, {layer.n_filters} filters {layer.filter_size}x"
        f"{layer.filter_size}, {config.inference.method} {config.inference.max_iter} coding iterations and 10 "
        f"filter-update iterations per outer iteration, float32, {cores} cores\n"
    )
    print(f"Per outer iteration ({args.iters} outer iterations per run):\n")
    print(
        "| filter update: run | first iteration s (incl. start) | later iterations s (median) | calls / iter | "
        "KiB out / iter | KiB back / iter | bytes / call | max rel. diff. of E vs 1 process |"
    )
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    if comparison:
        print(f"\nFilter updates at equal time, one process, {args.compare_iters} outer iterations:\n")
        print("| filter update | s / outer iteration | E at 10 s | E at 20 s | E at 30 s | final E |")
        print("|---|---|---|---|---|---|")
        print("\n".join(comparison))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
