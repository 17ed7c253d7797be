"""Public entry points for fixed filters: :func:`encode` (images -> feature maps) and :func:`reconstruct`."""

from __future__ import annotations

import numbers
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..algorithms import InferenceResult, make_solver, run
from ..algorithms.base import IterStats
from ..algorithms.fista import Fista
from ..algorithms.problem import CSCProblem, PixelCodingProblem
from ..backend import Array, Backend, backend_of, get_backend
from ..config import INFERENCE_MODELS, AdmmConfig, FistaConfig, ZeilerConfig
from ..images.preprocess import FittedPreprocess, PreprocessConfig
from ..operators import kernels
from ..operators.convolution import ConvOperator, image_shape_from_maps
from ..operators.pixel_path import PixelPath, Pool
from ..operators.pooling import keep_block_maxima
from ..operators.prox import LpPenalty
from ..validation import (
    as_filters,
    as_images,
    check_boundary,
    check_connectivity,
    check_finite,
    check_lam,
    check_p,
    check_positive_int,
    float_array,
)

Method = Literal["admm", "fista", "zeiler"]


@dataclass(frozen=True)
class EncodeResult:
    """Feature maps of :func:`encode`.

    Attributes
    ----------
    maps : array of shape (N, K, H', W')
        Same backend kind as the input images, and their dtype.
    objective : float
        E(maps) for the given filters (the final objective).
    history : list of float
        E after each iteration.
    n_iter : int
        Iterations run.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import encode
    >>> images = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    >>> result = encode(images, np.ones((3, 1, 3, 3), np.float32) / 3, 0.1, method="fista", max_iter=5)
    >>> result.maps.shape, result.n_iter == len(result.history)
    ((2, 3, 8, 8), True)
    """

    maps: Array
    objective: float
    history: list[float]
    n_iter: int


def inference_config(
    method: Method | ZeilerConfig | FistaConfig | AdmmConfig, max_iter: int | None, tol: float | None
) -> ZeilerConfig | FistaConfig | AdmmConfig:
    """The config model for `method` (a name or a model), with `max_iter` and `tol` applied when given.

    For ``zeiler``, `max_iter` is the total number of iterations, spread evenly over the β stages.
    """
    if isinstance(method, str):
        if method not in INFERENCE_MODELS:
            raise ValueError(f"method must be one of {sorted(INFERENCE_MODELS)}, got {method!r}")
        config = INFERENCE_MODELS[method]()
    elif isinstance(method, ZeilerConfig | FistaConfig | AdmmConfig):
        config = method
    else:
        raise ValueError(f"method must be a method name or an inference config, got {method!r}")
    updates: dict[str, Any] = {}
    if max_iter is not None:
        max_iter = check_positive_int(max_iter, "max_iter")
        if isinstance(config, ZeilerConfig):
            updates["total_iter"] = max_iter
        else:
            updates["max_iter"] = max_iter
    if tol is not None:
        if isinstance(tol, bool) or not (isinstance(tol, numbers.Real) and tol >= 0):
            raise ValueError(f"tol must be a non-negative number, got {tol!r}")
        if not isinstance(config, ZeilerConfig):
            updates["tol"] = float(tol)
        elif tol > 0:  # a fixed continuation: a tolerance the user counts on must not be dropped without a word
            raise ValueError(
                f"tol must be 0 or left out for method 'zeiler' (it runs its β stages in full), got {tol!r}"
            )
    return config.model_validate({**config.model_dump(), **updates}) if updates else config


def _device(a: Array, bk: Backend) -> Array:
    return a if backend_of(a).name == bk.name else bk.asarray(a)


def encode(
    images: Array,
    filters: Array,
    lam: float,
    *,
    method: Method | ZeilerConfig | FistaConfig | AdmmConfig = "admm",
    boundary: Literal["circular", "valid"] = "circular",
    p: float = 1.0,
    max_iter: int | None = None,
    tol: float | None = None,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
    connectivity: Array | None = None,
    init: Array | None = None,
    preprocess: FittedPreprocess | PreprocessConfig | None = None,
    callback: Callable[[IterStats], bool | None] | None = None,
) -> EncodeResult:
    r"""Feature maps of `images` for fixed `filters`: minimise E(z) of ``docs/design.md`` section 1.

    .. math:: \min_z \tfrac12 \sum_{n,c} \| \sum_k g_{kc}\, z_{nk} \circledast f_{kc} - y_{nc} \|^2
              + \lambda \sum_{n,k} \|z_{nk}\|_p^p

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        float32 (default) or float64; the dtype is kept. Integer images are converted to float32.
    filters : array of shape (K, C, s, s) or (K, s, s)
    lam : float
        λ > 0, the weight of the sparsity term (Zeiler's κ/λ).
    method : {"admm", "fista", "zeiler"} or an inference config model
    boundary : {"circular", "valid"}
        ``valid`` gives maps of (H+s−1)×(W+s−1).
    p : float
        Exponent of the sparsity term, in (0, 1].
    max_iter, tol : optional
        Override the method's defaults (for ``zeiler``, `max_iter` is spread over the β stages).
    backend : {"auto", "numpy", "cupy"}
    connectivity : bool array of shape (K, C), optional
    init : array of shape (N, K, H', W'), optional
        Warm start.
    preprocess : FittedPreprocess or PreprocessConfig, optional
        Applied to the images first (a config alone is fitted on these images).
    callback : callable, optional
        Called with an :class:`~solver.IterStats` after every iteration (E, its data term, the non-zero
        fraction: two more passes over the maps per iteration); returning True ends the run there, with the
        best maps so far.

    Returns
    -------
    EncodeResult
        ``maps`` (N, K, H', W') on the input's backend and dtype, ``objective``, ``history``, ``n_iter``.

    Raises
    ------
    ValueError
        Wrong rank, NaN or inf, λ ≤ 0, p outside (0, 1], a filter larger than the image, a channel mismatch.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import encode, reconstruct
    >>> rng = np.random.default_rng(0)
    >>> images = rng.standard_normal((2, 1, 8, 8)).astype(np.float32)
    >>> filters = rng.standard_normal((3, 1, 3, 3)).astype(np.float32)
    >>> result = encode(images, filters, 0.1, method="fista", max_iter=20)
    >>> result.maps.shape, result.maps.dtype
    ((2, 3, 8, 8), dtype('float32'))
    >>> reconstruct(result.maps, filters).shape
    (2, 1, 8, 8)
    """
    lam, p, boundary = check_lam(lam), check_p(p), check_boundary(boundary)
    config = inference_config(method, max_iter, tol)
    if preprocess is not None:
        images = _apply_preprocess(images, preprocess)
    y = as_images(images)
    host = backend_of(y)
    bk = get_backend(backend)
    f = as_filters(filters, y.shape[1], y.shape[-2:], y.dtype)
    g = check_connectivity(connectivity, f.shape[0], f.shape[1], bk)
    y, f = _device(y, bk), _device(f, bk)
    op = ConvOperator(f, y.shape[-2:], boundary=boundary, connectivity=g)
    problem = CSCProblem(y, op, LpPenalty(lam, p))
    solver = make_solver(problem, config)
    maps0 = None
    if init is not None:
        maps0 = _device(as_images(init, "init", dtype=y.dtype), bk)
        if tuple(maps0.shape) != problem.maps_shape:
            raise ValueError(f"init must have shape {problem.maps_shape}, got shape {np.shape(init)}")
    progress = None if callback is None else _progress(callback, solver, problem)
    result: InferenceResult = run(solver, solver.init(maps0), callback=progress, keeps_states=False)
    maps = result.maps if host.name == bk.name else bk.to_host(result.maps)
    return EncodeResult(maps, result.objective, result.history, result.n_iter)


def _progress(callback: Callable[[IterStats], bool | None], solver: Any, problem: CSCProblem):
    """The solver-state callback of :func:`~solver.algorithms.base.run` that hands `callback` an IterStats."""
    start, count = time.perf_counter(), [0]
    xp = problem.backend.xp
    # the sparsity term and the non-zero count: from the step where it counted them, otherwise in one pass over
    # the maps where a kernel does both
    summary = getattr(solver, "map_summary", lambda state: None)
    one_pass = problem.backend.name == "numpy" and kernels.available() and problem.penalty.p == 1.0

    def on_state(state: Any) -> bool:
        count[0] += 1
        maps = solver.maps(state)
        objective = float(solver.per_item_objective(state).sum())
        known = summary(state)
        if known is not None:
            sparsity, n_nonzero = float(known[0].sum()), int(known[1].sum())
        elif one_pass:
            l1, nonzero = kernels.abs_and_count(maps)
            sparsity, n_nonzero = problem.penalty.lam * float(l1.sum()), int(nonzero.sum())
        else:
            sparsity, n_nonzero = problem.penalty(maps), int(xp.count_nonzero(maps))
        stats = IterStats(
            count[0], objective, objective - sparsity, n_nonzero / maps.size, time.perf_counter() - start, 1
        )
        return bool(callback(stats))

    return on_state


def _apply_preprocess(images: Array, preprocess: FittedPreprocess | PreprocessConfig) -> np.ndarray:
    if isinstance(preprocess, FittedPreprocess):
        return preprocess.apply(np.asarray(images))
    if isinstance(preprocess, PreprocessConfig):
        return FittedPreprocess.fit(np.asarray(images), preprocess)[0]
    raise ValueError(f"preprocess must be a FittedPreprocess or a PreprocessConfig, got {type(preprocess).__name__}")


def reconstruct(
    maps: Array,
    filters: Array,
    *,
    boundary: Literal["circular", "valid"] = "circular",
    connectivity: Array | None = None,
) -> Array:
    r"""Images from feature maps: ``ŷ[n, c] = Σ_k g[k, c] · (maps[n, k] ⊛ filters[k, c])``.

    Parameters
    ----------
    maps : array of shape (N, K, H', W') or (K, H', W')
    filters : array of shape (K, C, s, s) or (K, s, s)
    boundary : {"circular", "valid"}
        ``valid``: the maps are (H+s−1)×(W+s−1) and the images H×W.
    connectivity : bool array of shape (K, C), optional

    Returns
    -------
    array of shape (N, C, H, W)
        On the backend and in the dtype of `maps`.

    Examples
    --------
    >>> import numpy as np
    >>> maps = np.zeros((1, 1, 4, 4)); maps[0, 0, 1, 1] = 1.0
    >>> reconstruct(maps, np.ones((1, 1, 2, 2)))[0, 0]
    array([[0., 0., 0., 0.],
           [0., 1., 1., 0.],
           [0., 1., 1., 0.],
           [0., 0., 0., 0.]])
    """
    boundary = check_boundary(boundary)
    z = as_images(maps, "maps") if np.ndim(maps) == 4 else as_images(_as_batch(maps), "maps")
    f = _as_filter_array(filters)
    if f.shape[0] != z.shape[1]:
        raise ValueError(
            f"filters have K = {f.shape[0]} (shape {tuple(f.shape)}) but maps have "
            f"K = {z.shape[1]} (shape {tuple(z.shape)})"
        )
    s = f.shape[-1]
    image_shape = image_shape_from_maps(z.shape[-2:], s, boundary)
    if image_shape[0] < 1 or image_shape[1] < 1:
        raise ValueError(f"maps of spatial shape {tuple(z.shape[-2:])} are smaller than the {s}x{s} filters")
    f = as_filters(f, f.shape[1], image_shape, z.dtype)
    bk = backend_of(z)
    f = _device(f, bk)
    g = check_connectivity(connectivity, f.shape[0], f.shape[1], bk)
    return ConvOperator(f, image_shape, boundary=boundary, connectivity=g).forward(z)


def _as_batch(maps: Array) -> Array:
    if np.ndim(maps) != 3:
        raise ValueError(f"maps must have shape (N, K, H', W') or (K, H', W'), got shape {np.shape(maps)}")
    return maps[None]


def _as_filter_array(filters: Array) -> Array:
    f = float_array(filters, "filters")
    if f.ndim in (3, 4) and f.shape[-1] != f.shape[-2]:  # named as given, before a grey filter gets its axis
        raise ValueError(f"filters must be square (K, C, s, s) or (K, s, s), got shape {tuple(f.shape)}")
    if f.ndim == 3:
        f = f[:, None]
    if f.ndim != 4:
        raise ValueError(f"filters must have shape (K, C, s, s) or (K, s, s), got shape {tuple(f.shape)}")
    check_finite(f, "filters")
    return f


def code_pixels(
    images: Array,
    filters: Array,
    lam: float,
    *,
    p: float = 1.0,
    pool: Pool | None = None,
    connectivity: Array | None = None,
    path: PixelPath | None = None,
    boundary: str = "circular",
    max_iter: int = 200,
    tol: float = 1e-5,
    init: Array | None = None,
    stop_early: bool = True,
):
    """Maps of one layer for the pixels `images` by the 2011 inference (:class:`PixelCodingProblem`), on the
    backend of `images`. Returns the :class:`~solver.algorithms.base.InferenceResult` (maps satisfy the block
    constraint; ``objective`` is E of ``maps``)."""
    bk = backend_of(images)
    if path is None:
        path = PixelPath((), (), images.shape[-2:], images.shape[0], boundary, bk, images.dtype)
    op = ConvOperator(
        bk.asarray(filters, dtype=images.dtype),
        path.input_shape,
        boundary=boundary,
        connectivity=None if connectivity is None else bk.asarray(connectivity),
    )
    problem = PixelCodingProblem(images, op, path, LpPenalty(lam, p), pool)
    solver = Fista(problem, FistaConfig(max_iter=max_iter, tol=tol))
    start = None if init is None else keep_block_maxima(bk.asarray(init, dtype=images.dtype), pool)
    return run(solver, solver.init(start), stop_early=stop_early)
