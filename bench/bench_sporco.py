"""deconv against SPORCO 0.2.2 on the matrix of bench/README.md (three learning and three encoding sizes);
prints a markdown table per run and the matrix (time to SPORCO's best E, the ratio, the target, peak memory).

Usage::

    python bench/bench_sporco.py [--quick] [--cells CELLS] [--variants {cell,all}] [--repeats N]

CELLS: comma-separated cell names (learn-small, learn-medium, learn-large, encode-small, encode-single,
encode-batch), ``learn``, ``encode`` or ``all`` (default). ``--variants all`` adds deconv's FISTA and float64
runs to the encode cells (the matrix reads the float32 ADMM run). ``--problem NAME`` is ``--cells NAME``.
``--repeats N``: N alternating SPORCO/deconv runs per cell, reporting the pair of median ratio (default: 5 for
the small cells, whose runs take seconds, 1 for the others).

Each solve runs in a fresh child process (``--child IMPL``, internal) so that its peak resident memory is its
own, and times the FFT pair of its maps after the solve. The parent builds the data once, starts the children
one after another and writes the tables to stdout and to ``bench/results/latest.md`` (``latest-quick.md`` with
``--quick``; raw numbers in the matching ``.json``, rewritten after every cell). See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import (
    RESULTS,
    ROOT,
    TARGET_RTOL,
    WORKERS,
    Problem,
    fft_pair_pyfftw,
    fft_pair_scipy,
    machine_info,
    problems,
    random_filters,
    select_cells,
    test_images,
)

COLUMNS = (
    "problem",
    "implementation",
    "dtype",
    "iters",
    "per-iter ms (best)",
    "× FFT pair",
    "time to E_ref s",
    "time ÷ SPORCO's",
    "best E / E_ref",
    "peak RSS MB (+solve)",
    "load 1m",
)


# ---- child side --------------------------------------------------------------------------------------------


def _child(args: argparse.Namespace) -> int:
    """Run one solve (``--child IMPL``) and print its result as one ``RESULT {json}`` line."""
    import _runners  # noqa: PLC0415

    pb = problems(args.quick)[args.problem]
    images = np.load(Path(args.data) / "images.npy")
    filters = np.load(Path(args.data) / "filters.npy")
    maps_shape = (pb.n_images, pb.n_filters, pb.size, pb.size)
    fft = {}
    if args.child == "sporco":
        if args.quick:  # FFTW_MEASURE planning alone would take longer than the whole quick run
            import sporco.fft  # noqa: PLC0415

            sporco.fft.pyfftw_planner_effort = "FFTW_ESTIMATE"
        run = _runners.sporco_encode if pb.kind == "encode" else _runners.sporco_learn
        out = run(pb, images, filters)
        fft["pyfftw"] = fft_pair_pyfftw(maps_shape)
    else:
        method, dtype = args.child.split("-")
        run = _runners.deconv_encode if pb.kind == "encode" else _runners.deconv_learn
        out = run(
            pb, images, filters, method=method, dtype=dtype, target=args.target, cap_s=args.cap, max_iter=args.max_iter
        )
    fft["scipy"] = fft_pair_scipy(maps_shape)  # after the solve: it must not raise the peak RSS
    out.update(fft_pair_s=fft, load_avg=os.getloadavg()[0] if hasattr(os, "getloadavg") else None)
    print("RESULT " + json.dumps(out), flush=True)
    return 0


# ---- parent side -------------------------------------------------------------------------------------------


def _log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _run_child(
    pb: Problem,
    impl: str,
    data: Path,
    quick: bool,
    *,
    target: float | None = None,
    cap: float = math.inf,
    max_iter: int = 1,
) -> dict[str, Any]:
    """Start ``--child impl`` in a fresh interpreter; its result dict, or ``{"error": ...}``."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        impl,
        "--problem",
        pb.name,
        "--data",
        str(data),
        "--cap",
        str(cap),
        "--max-iter",
        str(max_iter),
    ]
    cmd += ["--quick"] * quick + (["--target", repr(target)] if target is not None else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        _log(f"{pb.name} {impl}: FAILED ({err})")
        return {"error": err}
    _log(f"{pb.name} {impl}: done in {time.perf_counter() - t0:.0f} s")
    return json.loads(lines[-1][len("RESULT ") :])


def _data(pb: Problem, tmp: Path) -> tuple[Path, tuple[int, int, int, int]]:
    """Save the problem's images and filters for the children; the shape of its maps."""
    images = test_images(pb.n_images, pb.size)
    # learn: deconv's seed-0 initial filters, given to SPORCO too
    filters = _learn_init(pb, seed=0) if pb.kind == "learn" else random_filters(pb.n_filters, pb.filter_size)
    folder = tmp / pb.name
    folder.mkdir(parents=True, exist_ok=True)
    np.save(folder / "images.npy", images)
    np.save(folder / "filters.npy", filters)
    return folder, (pb.n_images, pb.n_filters, pb.size, pb.size)


def _learn_init(pb: Problem, seed: int) -> np.ndarray:
    """deconv learn's initial filters for `seed` (SPORCO starts from them too)."""
    try:
        from solver.models.learn import initial_filters  # noqa: PLC0415
    except ImportError:  # same recipe: N(0, 1) from default_rng(seed), unit norm per filter
        return random_filters(pb.n_filters, pb.filter_size, seed=seed)
    return initial_filters(pb.n_filters, 1, pb.filter_size, seed=seed, norm="filter", dtype=np.float32)


def _variants(pb: Problem, quick: bool, every: bool = True) -> list[tuple[str, str]]:
    """(method, dtype) of the deconv runs of a problem: the cell's (float32 ADMM) first, then with `every` the
    other encoders and dtypes."""
    if pb.kind == "learn" or not every:
        return [("admm", "float32")]
    runs = [(m, d) for d in ("float32", "float64") for m in ("admm", "fista")]
    return runs + [("zeiler", "float32")] * quick


def _ratio(res: dict[str, Any], ref: dict[str, Any]) -> float:
    """deconv's time to E_ref over SPORCO's; infinity where deconv did not get there (or either failed)."""
    t, t_ref = res.get("time_to_target_s"), ref.get("time_to_target_s")
    return t / t_ref if t is not None and t_ref else math.inf


def _bench(
    pb: Problem, tmp: Path, quick: bool, every: bool = True, repeats: int | None = None
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All runs of one problem: `repeats` (default the cell's) alternating pairs of SPORCO (E_ref, the time
    cap) and deconv's cell run, of which the pair of median ratio is reported, then the other deconv variants."""
    data, maps_shape = _data(pb, tmp)
    info: dict[str, Any] = {"problem": pb.__dict__, "maps_shape": maps_shape}
    pairs = []
    for _ in range(max(1, repeats or pb.repeats)):
        ref = _run_child(pb, "sporco", data, quick)
        if "error" in ref:
            info["sporco"] = ref
            return [{"impl": "SPORCO", **ref}], info
        target = ref["E_ref"] * (1 + TARGET_RTOL)
        cap = max(pb.cap_factor * (ref["time_to_target_s"] or ref["total_s"]), pb.min_cap_s)
        res = _deconv_run(pb, *_variants(pb, quick, every)[0], data, quick, target, cap)
        pairs.append((_ratio(res, ref), ref, res, target, cap))
    ratios = [pair[0] for pair in pairs]
    _, ref, first, target, cap = sorted(pairs, key=lambda pair: pair[0])[(len(pairs) - 1) // 2]  # the (lower) median
    info.update(sporco=ref, target=target, cap_s=cap, ratios=ratios)
    results = [{"impl": "SPORCO", **ref}, first]
    for method, dtype in _variants(pb, quick, every)[1:]:
        results.append(_deconv_run(pb, method, dtype, data, quick, target, cap))
    return results, info


def _deconv_run(
    pb: Problem, method: str, dtype: str, data: Path, quick: bool, target: float, cap: float
) -> dict[str, Any]:
    """One deconv child: to `target` within `cap` seconds, or a fixed count of float64 iterations where the cell
    sets one."""
    fixed = dtype == "float64" and pb.f64_iter is not None
    res = _run_child(
        pb,
        f"{method}-{dtype}",
        data,
        quick,
        target=None if fixed else target,
        cap=cap,
        max_iter=pb.f64_iter if fixed else pb.max_iter,
    )
    return {"impl": f"deconv {'learn/' * (pb.kind == 'learn')}{method}", **res}


# ---- report ------------------------------------------------------------------------------------------------


def _fmt(x: float | None, spec: str) -> str:
    return "—" if x is None else format(x, spec)


def _reached(res: dict[str, Any], ref: dict[str, Any]) -> tuple[str, str]:
    """The 'time to E_ref' and 'time ÷ SPORCO's' cells."""
    t = res["time_to_target_s"]
    if t is not None:
        return f"{t:.2f} (it {res['iter_to_target']})", _fmt(t / ref["time_to_target_s"], ".2f")
    if res.get("stopped") == "max_iter":
        return f"not run to E_ref ({res['iters']} it)", "—"
    return (
        f"not reached ({res.get('stopped')}, {res['total_s']:.0f} s)",
        f"> {res['total_s'] / ref['time_to_target_s']:.1f}",
    )


def _row(pb: Problem, res: dict[str, Any], ref: dict[str, Any]) -> list[str]:
    """One table row. × FFT pair: the shortest iteration over the best of 3 scipy.fft pairs timed in the same
    process just after the solve (both approximate the cost on an idle machine)."""
    if "error" in res:
        return [pb.name, res["impl"], *["—"] * 4, f"failed: {res['error'][:80]}", *["—"] * 4]
    per_iter, best, fft = res["per_iter_s"], res["best_iter_s"], res["fft_pair_s"]["scipy"]
    return [
        pb.name,
        res["impl"],
        res["dtype"],
        str(res["iters"]),
        f"{per_iter * 1e3:.0f} ({best * 1e3:.0f})",
        f"{best / fft:.2f}",
        *_reached(res, ref),
        _fmt(res["best_E"] / ref["E_ref"], ".5f"),
        f"{res['peak_rss_mb']:.0f} (+{res['peak_rss_mb'] - res['rss_before_mb']:.0f})",
        _fmt(res.get("load_avg"), ".1f"),
    ]


def _problem_notes(pb: Problem, info: dict[str, Any], results: list[dict[str, Any]]) -> list[str]:
    """Facts under the table: sizes, E_ref, the FFT floor, SPORCO's planning, cross-checks."""
    N, K, H, W = info["maps_shape"]
    ref = info["sporco"]
    pairs = [r["fft_pair_s"]["scipy"] * 1e3 for r in results if "fft_pair_s" in r]
    lines = [
        f"- **{pb.name}**: {pb.kind}, {N} image(s) {H}×{W}, {K} filters {pb.filter_size}×{pb.filter_size}, "
        f"λ = {pb.lam}; SPORCO {pb.sporco_iter} iterations."
    ]
    if "error" in ref:
        return lines
    ratios = info.get("ratios", [])
    if len(ratios) > 1:
        lines.append(
            f"  {len(ratios)} alternating runs of SPORCO and deconv, ratios in order: "
            + ", ".join(_fmt(r, ".2f") if math.isfinite(r) else "not reached" for r in ratios)
            + "; the tables show the run of median ratio."
        )
    lines += [
        f"  FFT pair of the maps (N, K, H, W) float32: scipy.fft ({WORKERS} workers) "
        f"{min(pairs):.1f}–{max(pairs):.1f} ms over the runs; pyFFTW (SPORCO's FFTs, its layout) "
        f"{_fmt(ref['fft_pair_s'].get('pyfftw') and ref['fft_pair_s']['pyfftw'] * 1e3, '.1f')} ms.",
        f"  E_ref = {ref['E_ref']:.6g} (SPORCO's best E, by our objective: of its final iterate for encode, the "
        f"lowest of its trajectory for learn; evaluated every {pb.eval_every} iteration(s)), target "
        f"E_ref·(1+{TARGET_RTOL:g}); SPORCO's "
        f"whole run {ref['total_s']:.1f} s, plus an untimed warm-up (FFTW planning) of {ref['warmup_s']:.1f} s;"
        f" deconv runs capped at {info.get('cap_s', 0):.0f} s; non-zeros in SPORCO's maps "
        f"{100 * ref['nonzero']:.2f} %.",
        f"  E recomputed with solver.algorithms.problem.objective from the returned arrays vs the reported E "
        f"(rel. diff): {_checks(results)}.",
    ]
    return lines


def _checks(results: list[dict[str, Any]]) -> str:
    """Largest disagreement between a reported E and E recomputed from the returned arrays."""
    rels = [(r["impl"], r["check_rel"]) for r in results if r.get("check_rel") is not None]
    return ", ".join(f"{name} {rel:.1e}" for name, rel in rels)


MATRIX_COLUMNS = (
    "cell",
    "problem",
    "SPORCO: time to its best E s (it)",
    "deconv: time to it s (it)",
    "ratio",
    "target",
    "met",
    "peak RSS MB SPORCO / deconv",
    "load 1m",
)


def _matrix_row(pb: Problem, results: list[dict[str, Any]]) -> list[str]:
    """The cell's line of the matrix: SPORCO against deconv's float32 ADMM run (the first deconv run)."""
    what = f"{pb.kind} {pb.n_images}×{pb.size}², {pb.n_filters} filters {pb.filter_size}×{pb.filter_size}, λ {pb.lam:g}"
    ref, ours = results[0], (results[1] if len(results) > 1 else {"error": "not run"})
    if "error" in ref or "error" in ours:
        return [pb.name, what, *(["—"] * 5), f"failed: {(ref.get('error') or ours.get('error'))[:60]}", "—"]
    t_ref, t = ref["time_to_target_s"], ours["time_to_target_s"]
    ratio = None if t is None or not t_ref else t / t_ref
    peak_ref = ref["peak_rss_mb"] + ref.get("peak_rss_children_mb", 0.0) * (pb.kind == "learn")
    return [
        pb.name,
        what,
        f"{_fmt(t_ref, '.2f')} ({ref['iter_to_target']})",
        f"{t:.2f} ({ours['iter_to_target']})" if t is not None else f"not reached ({ours['total_s']:.0f} s)",
        _fmt(ratio, ".2f") if ratio is not None else f"> {ours['total_s'] / t_ref:.2f}",
        f"≤ {pb.target_ratio:g}",
        "yes" if ratio is not None and ratio <= pb.target_ratio else "no",
        f"{peak_ref:.0f} / {ours['peak_rss_mb']:.0f}",
        f"{_fmt(ref.get('load_avg'), '.1f')} / {_fmt(ours.get('load_avg'), '.1f')}",
    ]


def _report(
    machine: dict[str, str], table: list[list[str]], notes: list[str], argv: list[str], matrix: list[list[str]]
) -> str:
    lines = [
        f"# deconv vs SPORCO ({datetime.datetime.now().isoformat(timespec='seconds')})",
        "",
        f"`{' '.join(['python bench/bench_sporco.py', *argv])}`",
        "",
    ]
    lines += [f"- {k}: {v}" for k, v in machine.items()] + [""]
    lines += ["| " + " | ".join(MATRIX_COLUMNS) + " |", "|" + "---|" * len(MATRIX_COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in matrix] + ["", "Every run:", ""]
    lines += ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table] + [""] + notes
    return "\n".join(lines) + "\n"


def _parse(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (a few minutes)")
    ap.add_argument("--cells", help="comma-separated cells, 'learn', 'encode' or 'all' (default)")
    ap.add_argument("--problem", choices=sorted(problems(False)), help="one cell (the same as --cells NAME)")
    ap.add_argument(
        "--variants", choices=("cell", "all"), default="cell", help="'all': FISTA and float64 runs of the encode cells"
    )
    ap.add_argument(
        "--repeats", type=int, default=None, help="alternating SPORCO/deconv runs per cell (default: the cell's)"
    )
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--data", help=argparse.SUPPRESS)
    ap.add_argument("--target", type=float, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--cap", type=float, default=math.inf, help=argparse.SUPPRESS)
    ap.add_argument("--max-iter", type=int, default=1, help=argparse.SUPPRESS)
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = _parse(argv)
    if args.child:
        return _child(args)
    try:
        selected = select_cells(args.quick, args.problem or args.cells)
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 2
    table, notes, raw, matrix = [], ["Notes:", ""], {}, []
    RESULTS.mkdir(parents=True, exist_ok=True)
    stem = "latest-quick" if args.quick else "latest"  # a smoke test does not overwrite the full results
    with tempfile.TemporaryDirectory(prefix="deconv-bench-") as tmp:
        for pb in selected.values():
            results, info = _bench(pb, Path(tmp), args.quick, every=args.variants == "all", repeats=args.repeats)
            table += [_row(pb, r, info["sporco"]) for r in results]
            notes += _problem_notes(pb, info, results)
            matrix.append(_matrix_row(pb, results))
            raw[pb.name] = {"info": info, "results": results, "machine": machine_info()}
            # after every cell: a long run cut short keeps what it measured
            report = _report(machine_info(), table, notes, argv, matrix)
            (RESULTS / f"{stem}.md").write_text(report, encoding="utf-8")
            (RESULTS / f"{stem}.json").write_text(json.dumps(raw, indent=1, default=str), encoding="utf-8")
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
