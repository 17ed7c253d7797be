"""The measured solves. Each runs in a fresh child process (one solve per process, so that its peak resident
memory is its own) and returns a JSON-able dict of its trajectory, timings and memory.

Times count from the start of the solver's set-up (SPORCO: object construction; deconv: the call) and exclude
one untimed warm-up run of a few iterations on the same arrays, which pays SPORCO's FFTW planning (reported
separately). Objective values are E of docs/design.md section 1 on each implementation's sparse variable.
"""

from __future__ import annotations

import gc
import inspect
import time
from typing import Any

import numpy as np
from _common import (
    TARGET_RTOL,
    WORKERS,
    Problem,
    current_rss_mb,
    first_reach,
    fourier_objective,
    iteration_times,
    peak_rss_mb,
)


class _Stop(Exception):
    """Raised by a recorder to end a deconv run early (target reached or time cap)."""


# ---- SPORCO ------------------------------------------------------------------------------------------------


def _sporco_layout(images: np.ndarray, filters: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """D (s, s, K) and S (H, W, N) in SPORCO's layout."""
    D = np.ascontiguousarray(np.transpose(filters[:, 0], (1, 2, 0)))
    S = np.ascontiguousarray(np.transpose(images[:, 0], (1, 2, 0)))
    return D, S


def _ours(Y: np.ndarray) -> np.ndarray:
    """SPORCO's (H, W, 1, N, K) maps as a (N, K, H, W) view."""
    return np.transpose(Y[:, :, 0], (2, 3, 0, 1))


def _filters_of(D: np.ndarray) -> np.ndarray:
    """SPORCO's (s, s, [1, 1,] K) dictionary as (K, 1, s, s)."""
    s, K = D.shape[0], D.shape[-1]
    return np.transpose(D.reshape(s, s, K), (2, 0, 1))[:, None]


class _SporcoTrace:
    """SPORCO callback: our E on the current iterate every `every` iterations, with SPORCO's solve timer
    paused so that evaluating E costs the measured run nothing."""

    def __init__(self, images: np.ndarray, lam: float, every: int, last: int, state_of):
        self.images, self.lam, self.every, self.last, self.state_of = images, lam, every, last, state_of
        self.times: list[float] = []
        self.values: list[float] = []
        self.iters: list[int] = []
        self.count = 0

    def __call__(self, b) -> bool:
        b.timer.stop("solve")
        self.count += 1
        if self.count % self.every == 0 or self.count in (1, self.last):
            maps, filters = self.state_of(b)
            self.iters.append(self.count)
            self.times.append(b.timer.elapsed("init") + b.timer.elapsed("solve"))
            self.values.append(fourier_objective(self.images, maps, filters, self.lam))
        b.timer.start("solve")
        return False


def _sporco_measure(make, maps_of, filters_of, pb: Problem, images: np.ndarray) -> dict[str, Any]:
    """Warm up, then run ``make(pb.sporco_iter, callback)``; its trajectory, E_ref, times and memory.

    E_ref is SPORCO's best E: encode, E of its final iterate (its E only falls); learn, the lowest E of its
    trajectory. SPORCO's time to E_ref is when its iterate first reaches E_ref·(1 + rtol).
    """
    import resource  # noqa: PLC0415

    from solver.algorithms.problem import objective  # noqa: PLC0415

    rss0 = current_rss_mb()  # before the warm-up, whose freed memory the allocator may keep
    warm = _warm_up(lambda: make(2).solve())
    trace = _SporcoTrace(images, pb.lam, pb.eval_every, pb.sporco_iter, lambda b: (maps_of(b), filters_of(b)))
    b = make(pb.sporco_iter, trace)
    b.solve()
    peak = peak_rss_mb()
    maps, filters = np.ascontiguousarray(maps_of(b)), np.ascontiguousarray(filters_of(b))
    E_ref = objective(images, maps, filters, pb.lam)
    if pb.kind == "learn":  # its best, by the trajectory's (independent) E
        E_ref = min(E_ref, min(trace.values))
    total = b.timer.elapsed("init") + b.timer.elapsed("solve")
    t, i = first_reach(trace.times, trace.values, E_ref * (1 + TARGET_RTOL))
    it = None if i is None else trace.iters[i - 1]
    return {
        "iters": pb.sporco_iter,
        **iteration_times(list(b.getitstat().Time)),
        "time_to_target_s": t,
        "iter_to_target": it,
        "total_s": total,
        "E_ref": E_ref,
        "best_E": min(trace.values),
        "dtype": "/".join(sorted({str(maps.dtype), str(filters.dtype)})),
        "warmup_s": warm,
        "rss_before_mb": rss0,
        "peak_rss_mb": peak,
        "peak_rss_children_mb": peak_rss_mb(resource.RUSAGE_CHILDREN),
        "nonzero": float(np.count_nonzero(maps)) / maps.size,
        "check_rel": abs(fourier_objective(images, maps, filters, pb.lam) - objective(images, maps, filters, pb.lam))
        / E_ref,
        "trajectory": [list(x) for x in zip(trace.iters, trace.times, trace.values, strict=True)],
    }


def sporco_encode(pb: Problem, images: np.ndarray, filters: np.ndarray, **_: Any) -> dict[str, Any]:
    """SPORCO's ConvBPDN (ADMM), ``pb.sporco_iter`` iterations, float32, automatic ρ; E_ref from its final Y."""
    from sporco.admm import cbpdn  # noqa: PLC0415

    D, S = _sporco_layout(images, filters)

    def make(n_iter: int, callback=None):
        opt = cbpdn.ConvBPDN.Options(
            {
                "Verbose": False,
                "MaxMainIter": n_iter,
                "RelStopTol": 0.0,
                "AutoRho": {"Enabled": True},
                "DataType": np.float32,
                "Callback": callback,
            }
        )
        return cbpdn.ConvBPDN(D, S, pb.lam, opt, dimK=1)

    return _sporco_measure(make, lambda b: _ours(b.Y), lambda b: filters, pb, images)


def sporco_learn(pb: Problem, images: np.ndarray, filters: np.ndarray, **_: Any) -> dict[str, Any]:
    """SPORCO's parallel consensus dictionary learning (``prlcnscdl.ConvBPDNDictLearn_Consensus``: one ADMM step
    of coding and one of consensus dictionary update per iteration) on WORKERS processes, float32, from the
    dictionary `filters`. Its fastest: its serial ``ConvBPDNDictLearn`` (PGM dictionary update) from the same
    start reaches its best E within a few iterations, far above this one's, and rises from there."""
    from sporco.dictlrn import prlcnscdl  # noqa: PLC0415

    D0, S = _sporco_layout(images, filters)

    def make(n_iter: int, callback=None):
        opt = prlcnscdl.ConvBPDNDictLearn_Consensus.Options(
            {
                "Verbose": False,
                "MaxMainIter": n_iter,
                "Callback": callback,
                "CBPDN": {"DataType": np.float32},
                "CCMOD": {"DataType": np.float32},
            }
        )
        return prlcnscdl.ConvBPDNDictLearn_Consensus(D0, S, pb.lam, opt, nproc=WORKERS, dimK=1)

    return _sporco_measure(make, lambda d: _ours(d.getcoef()), lambda d: _filters_of(d.getdict()), pb, images)


def _warm_up(fn) -> float:
    """Seconds of an untimed first run (FFTW planning, caches); its garbage is collected before measuring."""
    t0 = time.perf_counter()
    fn()
    elapsed = time.perf_counter() - t0
    gc.collect()
    return elapsed


# ---- deconv ------------------------------------------------------------------------------------------------


class _Recorder:
    """deconv callback: (seconds since the call, E) after every iteration, from the IterStats it is given; at
    the target or the cap it returns True (encode stops there) or, with `raise_stop`, raises _Stop (learn's
    callback cannot end the run)."""

    def __init__(self, target: float | None, cap_s: float, min_iter: int = 1, *, raise_stop: bool = False):
        self.target, self.cap_s, self.min_iter, self.raise_stop = target, cap_s, min_iter, raise_stop
        self.times: list[float] = []
        self.values: list[float] = []
        self.stopped = "max_iter"
        self.t0 = time.perf_counter()  # made just before the call it times

    def __call__(self, stats) -> bool:
        t = time.perf_counter() - self.t0
        self.times.append(t)
        self.values.append(stats.objective)
        reached = self.target is not None and min(self.values) <= self.target
        if reached and len(self.values) >= self.min_iter:
            self.stopped = "target"
        elif t > self.cap_s:
            self.stopped = "cap"
        else:
            return False
        if self.raise_stop:
            raise _Stop
        return True


def _deconv_summary(rec: _Recorder, check: tuple[float, float] | None) -> dict[str, Any]:
    t, i = first_reach(rec.times, rec.values, rec.target) if rec.target is not None else (None, None)
    return {
        "iters": len(rec.values),
        **iteration_times(rec.times),
        "time_to_target_s": t,
        "iter_to_target": i,
        "total_s": rec.times[-1] if rec.times else None,
        "best_E": min(rec.values) if rec.values else None,
        "stopped": rec.stopped,
        "check_rel": None if check is None else abs(check[0] - check[1]) / abs(check[1]),
        "trajectory": [[k + 1, t, v] for k, (t, v) in enumerate(zip(rec.times, rec.values, strict=True))],
    }


def deconv_encode(
    pb: Problem,
    images: np.ndarray,
    filters: np.ndarray,
    *,
    method: str,
    dtype: str,
    target: float | None,
    cap_s: float,
    max_iter: int,
) -> dict[str, Any]:
    """deconv's :func:`solver.models.coding.encode` with tol = 0, until E ≤ `target`, `cap_s` seconds or `max_iter`."""
    from solver.algorithms.problem import objective  # noqa: PLC0415
    from solver.models.coding import encode  # noqa: PLC0415

    y, f = images.astype(dtype), filters.astype(dtype)
    tol = None if method == "zeiler" else 0.0
    rss0 = current_rss_mb()
    warm = _warm_up(lambda: encode(y, f, pb.lam, method=method, max_iter=2, tol=tol))
    rec = _Recorder(target, cap_s, pb.min_iter)
    res = encode(y, f, pb.lam, method=method, max_iter=max_iter, tol=tol, callback=rec)
    maps, reported = res.maps, res.objective  # the best iterate, also when the recorder stopped the run
    peak = peak_rss_mb()
    out = _deconv_summary(rec, (objective(y, maps, f, pb.lam), reported))
    out.update(
        dtype=str(maps.dtype),
        warmup_s=warm,
        rss_before_mb=rss0,
        peak_rss_mb=peak,
        nonzero=float(np.count_nonzero(maps)) / maps.size,
    )
    return out


def deconv_learn(
    pb: Problem,
    images: np.ndarray,
    filters: np.ndarray,
    *,
    method: str,
    dtype: str,
    target: float | None,
    cap_s: float,
    max_iter: int,
) -> dict[str, Any]:
    """deconv's :func:`solver.learn`, until E ≤ `target`, `cap_s` seconds or `max_iter` outer iterations."""
    from solver.algorithms.problem import objective  # noqa: PLC0415
    from solver.models.learn import learn  # noqa: PLC0415

    y = images.astype(dtype)
    if "callback" not in inspect.signature(learn).parameters:
        raise RuntimeError("solver.models.learn.learn takes no callback: cannot time its outer iterations")
    kwargs = {"method": method, "boundary": "circular", "seed": 0}
    rss0 = current_rss_mb()
    warm = _warm_up(lambda: learn(y, pb.n_filters, pb.filter_size, pb.lam, n_iter=1, **kwargs))
    res = None
    rec = _Recorder(target, cap_s, pb.min_iter, raise_stop=True)
    try:
        res = learn(y, pb.n_filters, pb.filter_size, pb.lam, n_iter=max_iter, callback=rec, **kwargs)
    except _Stop:
        pass
    peak = peak_rss_mb()
    check = None if res is None else (objective(y, res.maps, res.filters, pb.lam), res.history[-1])
    out = _deconv_summary(rec, check)
    out.update(
        dtype=str(y.dtype),
        warmup_s=warm,
        rss_before_mb=rss0,
        peak_rss_mb=peak,
        nonzero=None if res is None else float(np.count_nonzero(res.maps)) / res.maps.size,
    )
    return out
