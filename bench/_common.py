"""Shared pieces of the benchmarks: problems, test data, an independent objective, measurements.

Nothing here imports :mod:`solver` or SPORCO, so the parent process of a benchmark stays light and each child
process imports only the implementation it measures.
"""

from __future__ import annotations

import os
import platform
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import scipy.fft
from scipy.ndimage import gaussian_filter

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "bench" / "results"
if str(ROOT) not in sys.path:  # the repository is not installed in the venv: make `solver` importable
    sys.path.insert(0, str(ROOT))

WORKERS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
IMAGE_NAMES = ("camera", "astronaut", "coffee", "chelsea", "rocket", "coins", "moon", "clock")
HIGHPASS_SIGMA = 4.0
DICT_SEED = 1
TARGET_RTOL = 1e-3


@dataclass(frozen=True)
class Problem:
    """One benchmark problem.

    Attributes
    ----------
    name : str
    kind : {"encode", "learn"}
    n_images, size : int
        N images of size×size pixels, one channel.
    n_filters, filter_size : int
        K filters of filter_size×filter_size.
    lam : float
        λ, the weight of the ℓ1 term.
    sporco_iter : int
        SPORCO iterations (ADMM iterations for encode, outer iterations for learn); SPORCO's final E is E_ref.
    max_iter : int
        At most this many deconv iterations (or outer iterations for learn).
    cap_factor, min_cap_s : float
        A deconv run stops at ``max(cap_factor × SPORCO's time to E_ref, min_cap_s)`` seconds.
    eval_every : int
        SPORCO's trajectory (our E on its iterate) is evaluated every `eval_every` iterations.
    min_iter : int
        A deconv run that reaches E_ref goes on to at least this many iterations (for its per-iteration time).
    f64_iter : int or None
        float64 deconv runs: this many iterations for the per-iteration time only (None: run to E_ref too).
    target_ratio : float
        The cell's target: deconv's time to E_ref at most this fraction of SPORCO's.
    repeats : int
        Alternating runs of SPORCO and deconv (``--repeats`` overrides): a cell whose runs take seconds is at the
        mercy of the shared machine's speed, which drifts by tens of percent within minutes; the matrix shows
        the pair of median ratio, the notes every ratio.
    """

    name: str
    kind: Literal["encode", "learn"]
    n_images: int
    size: int
    n_filters: int
    filter_size: int
    lam: float
    sporco_iter: int
    max_iter: int
    cap_factor: float = 3.0
    min_cap_s: float = 20.0
    eval_every: int = 1
    min_iter: int = 1
    f64_iter: int | None = None
    target_ratio: float = 0.25
    repeats: int = 1


# The matrix: three learning and three encoding sizes, small to large. Learning is timed against SPORCO's
# parallel consensus dictionary learning on WORKERS processes, its fastest; its E barely rises after its best,
# so E_ref (its best E) is about its final one.
FULL = (
    Problem(
        "learn-small",
        "learn",
        4,
        128,
        16,
        8,
        0.1,
        sporco_iter=100,
        max_iter=300,
        min_cap_s=10.0,
        target_ratio=0.33,
        repeats=5,
    ),
    Problem(
        "learn-medium",
        "learn",
        8,
        256,
        32,
        8,
        0.1,
        sporco_iter=100,
        max_iter=300,
        cap_factor=2.0,
        eval_every=2,
        target_ratio=0.33,
    ),
    Problem(
        "learn-large",
        "learn",
        16,
        256,
        64,
        11,
        0.1,
        sporco_iter=50,
        max_iter=300,
        cap_factor=2.0,
        eval_every=2,
        target_ratio=0.33,
    ),
    Problem(
        "encode-small",
        "encode",
        1,
        128,
        16,
        7,
        0.05,
        sporco_iter=150,
        max_iter=1000,
        min_cap_s=5.0,
        f64_iter=10,
        repeats=5,
    ),
    Problem("encode-single", "encode", 1, 512, 32, 8, 0.05, sporco_iter=150, max_iter=1000, eval_every=2, f64_iter=10),
    Problem(
        "encode-batch",
        "encode",
        8,
        256,
        64,
        11,
        0.05,
        sporco_iter=60,
        max_iter=1000,
        cap_factor=2.0,
        eval_every=3,
        f64_iter=10,
    ),
)
QUICK = (
    Problem("learn-small", "learn", 2, 64, 8, 8, 0.1, sporco_iter=30, max_iter=100, min_cap_s=2.0, target_ratio=0.33),
    Problem(
        "learn-medium", "learn", 2, 128, 16, 8, 0.1, sporco_iter=30, max_iter=100, min_cap_s=2.0, target_ratio=0.33
    ),
    Problem(
        "learn-large", "learn", 4, 128, 16, 11, 0.1, sporco_iter=20, max_iter=100, min_cap_s=2.0, target_ratio=0.33
    ),
    Problem("encode-small", "encode", 1, 64, 8, 7, 0.05, sporco_iter=100, max_iter=1000, min_cap_s=2.0),
    Problem("encode-single", "encode", 1, 128, 16, 8, 0.05, sporco_iter=100, max_iter=1000, min_cap_s=2.0),
    Problem("encode-batch", "encode", 2, 128, 16, 11, 0.05, sporco_iter=100, max_iter=1000, min_cap_s=2.0),
)


def problems(quick: bool) -> dict[str, Problem]:
    """The cells of a full or a ``--quick`` run, by name."""
    return {p.name: p for p in (QUICK if quick else FULL)}


def select_cells(quick: bool, spec: str | None) -> dict[str, Problem]:
    """The cells named in `spec`: comma-separated names, or ``learn``/``encode`` for a row of the matrix, or
    ``all`` (None); ``ValueError`` naming an unknown one."""
    cells = problems(quick)
    if spec is None or spec == "all":
        return cells
    chosen: dict[str, Problem] = {}
    for name in (part.strip() for part in spec.split(",") if part.strip()):
        if name in ("learn", "encode"):
            chosen.update({k: p for k, p in cells.items() if p.kind == name})
        elif name in cells:
            chosen[name] = cells[name]
        else:
            raise ValueError(f"--cells: unknown cell {name!r}; the cells are {', '.join(cells)}, learn, encode, all")
    return chosen


def _grey(name: str) -> np.ndarray:
    import skimage.color  # noqa: PLC0415  (only the parent builds the data)
    import skimage.data  # noqa: PLC0415
    import skimage.util  # noqa: PLC0415

    img = getattr(skimage.data, name)()
    if img.ndim == 3:
        img = skimage.color.rgb2gray(img[..., :3])
    return skimage.util.img_as_float64(img)


def _square(img: np.ndarray, size: int) -> np.ndarray:
    import skimage.transform  # noqa: PLC0415

    scale = size / min(img.shape)
    if scale != 1.0:
        shape = (max(size, round(img.shape[0] * scale)), max(size, round(img.shape[1] * scale)))
        img = skimage.transform.resize(img, shape, anti_aliasing=scale < 1)
    top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
    return img[top : top + size, left : left + size]


def test_images(n_images: int, size: int) -> np.ndarray:
    """High-passed grey scikit-image samples, float32 of shape (N, 1, size, size).

    Each image is made grey in [0, 1], scaled so that its shorter side is `size`, centre-cropped, and has a
    Gaussian-blurred copy (σ = 4) subtracted (the usual CSC high-pass).
    """
    out = []
    for i in range(n_images):
        img = _square(_grey(IMAGE_NAMES[i % len(IMAGE_NAMES)]), size)
        out.append(img - gaussian_filter(img, HIGHPASS_SIGMA, mode="wrap"))
    return np.stack(out)[:, None].astype(np.float32)


def random_filters(n_filters: int, filter_size: int, seed: int = DICT_SEED) -> np.ndarray:
    """Gaussian random filters of unit norm, float32 of shape (K, 1, s, s)."""
    f = np.random.default_rng(seed).standard_normal((n_filters, 1, filter_size, filter_size))
    f /= np.sqrt(np.sum(f * f, axis=(1, 2, 3), keepdims=True))
    return f.astype(np.float32)


def fourier_objective(images: np.ndarray, maps: np.ndarray, filters: np.ndarray, lam: float, chunk: int = 4) -> float:
    """E = ½‖Σ_k maps_k ⊛ f_k − y‖² + λ‖maps‖₁ (circular, one channel), written independently of `solver`.

    Works through the filters `chunk` at a time so that it needs only a few image-sized work arrays (it runs
    inside the measured processes). `maps` may be a strided view, e.g. of SPORCO's (H, W, 1, N, K) array.
    """
    shape, K = images.shape[-2:], filters.shape[0]
    synth_hat = 0
    l1 = 0.0
    for k in range(0, K, chunk):
        z = np.ascontiguousarray(maps[:, k : k + chunk])  # (N, chunk, H, W)
        f_hat = scipy.fft.rfft2(filters[k : k + chunk, 0], s=shape, workers=WORKERS)
        synth_hat = synth_hat + np.einsum("nkuv,kuv->nuv", scipy.fft.rfft2(z, workers=WORKERS), f_hat)
        l1 += float(np.sum(np.abs(z), dtype=np.float64))
    resid = scipy.fft.irfft2(synth_hat, s=shape, workers=WORKERS) - images[:, 0]
    return 0.5 * float(np.sum(resid.astype(np.float64) ** 2)) + lam * l1


def first_reach(times: list[float], values: list[float], target: float) -> tuple[float | None, int | None]:
    """(time, 1-based iteration) of the first value ≤ `target`, or (None, None)."""
    for i, (t, v) in enumerate(zip(times, values, strict=True)):
        if v <= target:
            return t, i + 1
    return None, None


def iteration_times(times: list[float]) -> dict[str, float | None]:
    """Median and shortest time between consecutive iterations, from cumulative `times`.

    The median is the typical cost under the machine's load at the time; the shortest approximates the cost on
    an idle machine (the best-of-n of a noisy machine). With one iteration, its time from the start.
    """
    if len(times) < 2:
        t = times[0] if times else None
        return {"per_iter_s": t, "best_iter_s": t}
    steps = np.diff(times)
    return {"per_iter_s": float(np.median(steps)), "best_iter_s": float(np.min(steps))}


def peak_rss_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process so far (ru_maxrss), in MB; with ``RUSAGE_CHILDREN``, that of its
    largest waited-for child (SPORCO's worker processes)."""
    scale = 1.0 if sys.platform == "darwin" else 1024.0  # bytes on macOS, KiB on Linux
    return resource.getrusage(who).ru_maxrss * scale / 2**20


def current_rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux; the peak elsewhere)."""
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return peak_rss_mb()


def best_time(fn, repeats: int) -> float:
    """Best wall time of `repeats` calls of `fn` after one untimed warm-up call."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def fft_pair_scipy(maps_shape: tuple[int, ...], repeats: int = 3) -> float:
    """Seconds for rfft2 + irfft2 of a float32 array of `maps_shape` (N, K, H, W), scipy.fft, all cores."""
    a = np.random.default_rng(0).standard_normal(maps_shape, dtype=np.float32)
    shape = maps_shape[-2:]
    return best_time(lambda: scipy.fft.irfft2(scipy.fft.rfft2(a, workers=WORKERS), s=shape, workers=WORKERS), repeats)


def fft_pair_pyfftw(maps_shape: tuple[int, ...], repeats: int = 3) -> float | None:
    """The same pair with SPORCO's FFTs (pyFFTW, FFTW_MEASURE) on SPORCO's (H, W, 1, N, K) layout."""
    try:
        import sporco.fft as sfft  # noqa: PLC0415
    except ImportError:
        return None
    N, K, H, W = maps_shape
    a = np.random.default_rng(0).standard_normal((H, W, 1, N, K), dtype=np.float32)
    return best_time(lambda: sfft.irfftn(sfft.rfftn(a, None, (0, 1)), (H, W), (0, 1)), repeats)


def _fft_engine() -> str:
    """What transforms deconv's small and medium CPU arrays here (``DECONV_FFT`` reaches the children too)."""
    try:
        from solver import fftw  # noqa: PLC0415
    except ImportError:
        return "scipy.fft"
    if not fftw.available():
        return "scipy.fft"
    return f"FFTW (FFTW_ESTIMATE) up to {fftw.MAX_ENTRIES} entries, scipy.fft above"


def machine_info() -> dict[str, str]:
    """Platform, cores and library versions."""
    import importlib.metadata as md  # noqa: PLC0415

    def version(name: str) -> str:
        try:
            return md.version(name)
        except md.PackageNotFoundError:
            return "not installed"

    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": f"{platform.processor() or platform.machine()}, {os.cpu_count()} logical cores, {WORKERS} usable",
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "sporco": version("sporco"),
        "pyfftw": version("pyFFTW"),
        "deconv's CPU FFTs": _fft_engine(),
        "load average": ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "?",
    }
