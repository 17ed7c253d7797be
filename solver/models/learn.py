r"""Dictionary learning of one layer: the alternating optimisation of feature maps and filters.

.. math:: \min_{z, f} \tfrac12 \sum_{n,c} \| P \sum_k g_{kc}\, z_{nk} \circledast f_{kc} - y_{nc} \|^2
          + \lambda \sum_{n,k} \|z_{nk}\|_p^p \quad \text{s.t.} \quad \|f\|_2 \le 1

Each outer iteration: inference on every image with the current filters (warm-started from the last maps
and, for ADMM, the last duals), then a filter update with the maps fixed. The objective E is recorded after
every outer iteration. With the default projected-FISTA filter update it never increases: the coding step
returns maps no worse than the ones it started from, and the filter step is monotone.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from ..algorithms.base import IterStats
from ..algorithms.recentre import crop_to_energy, roll_state
from ..backend import Array
from ..config import FilterUpdateConfig, LayerSpec, LearnConfig, OnlineConfig
from ..images.preprocess import FittedPreprocess, PreprocessConfig
from ..operators.connectivity import boolean_table, connectivity_table
from ..operators.pixel_path import LowerLayer, input_geometry
from ..operators.prox import normalise_unit
from ..validation import as_images, check_boundary, check_init_filters, check_lam, check_p, check_positive_int
from .alternate import alternate
from .coding import inference_config
from .lam import absolute_config, lambda_max
from .shard import LocalPool, PixelShard, Shard

if TYPE_CHECKING:
    from .stack.model import StackModel

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LearnResult:
    """Learned filters of one layer.

    Attributes
    ----------
    filters : ndarray of shape (K, C, s, s)
    maps : ndarray of shape (N, K, H', W')
        The maps of the last coding step; E(maps, filters) is ``history[-1]``.
    history : list of float
        E after every outer iteration.
    stats : list of IterStats
    config : LearnConfig
    connectivity : ndarray of shape (K, C) or None
    preprocess : FittedPreprocess or None
        The preprocessing applied to the training images, to repeat on new ones.
    lam_max : float or None
        When λ was given relative to λ_max (``lam_scale="relative"``): λ_max of the training input with the
        initial filters; ``config`` then holds the absolute λ used. None otherwise.
    held_out_history : list of float
        Online learning (:func:`~solver.learn_online`) with held-out images: their objective after every
        ``online.held_out_every`` batches. Empty otherwise.
    online : OnlineConfig or None
        The online settings, for a result of :func:`~solver.learn_online`; ``history`` then holds E of every
        batch and ``config.n_iter`` the number of batches.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import learn
    >>> images = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    >>> result = learn(images, 3, 3, 0.1, n_iter=2, method="fista")
    >>> result.filters.shape, len(result.history), result.model.n_layers
    ((3, 1, 3, 3), 2, 1)
    """

    filters: np.ndarray
    maps: np.ndarray
    history: list[float]
    stats: list[IterStats] = field(default_factory=list)
    config: LearnConfig | None = None
    connectivity: np.ndarray | None = None
    preprocess: FittedPreprocess | None = None
    lam_max: float | None = None
    held_out_history: list[float] = field(default_factory=list)
    online: OnlineConfig | None = None

    @property
    def model(self) -> StackModel:
        """The learned layer as a one-layer :class:`~solver.StackModel` (what :func:`~solver.encode_layers` and
        :func:`~solver.project_down` take), like ``StackResult.model``; ``ValueError`` without a config."""
        # imported here: the stack package builds on this module (StackResult holds LearnResults)
        from .stack.model import StackModel  # noqa: PLC0415

        return StackModel.from_results([self])


_DEFAULT_INNER_ITER = 10


def initial_filters(
    n_filters: int, n_channels: int, filter_size: int, *, seed: int, norm: str, connectivity=None, dtype=np.float32
) -> np.ndarray:
    """Seeded i.i.d. N(0, 1) filters, masked by the connectivity and scaled to unit norm (host, `dtype`).

    Drawn in float64 whatever `dtype`, so float32 and float64 runs start from the same filters.
    """
    rng = np.random.default_rng(seed)
    f = rng.standard_normal((n_filters, n_channels, filter_size, filter_size))
    if connectivity is not None:
        f = f * connectivity[:, :, None, None]
    return normalise_unit(f, norm).astype(dtype)


def learn(
    images: Array,
    n_filters: int,
    filter_size: int,
    lam: float,
    *,
    n_iter: int = 50,
    method: Literal["admm", "fista", "zeiler"] | Any = "admm",
    boundary: Literal["circular", "valid"] = "circular",
    p: float = 1.0,
    lam_scale: Literal["absolute", "relative"] = "absolute",
    seed: int = 0,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
    connectivity: str | np.ndarray = "full",
    inner_iter: int | None = None,
    filter_update: Literal["fista", "cg", "consensus"] | FilterUpdateConfig | None = None,
    filter_iter: int | None = None,
    filter_norm: Literal["plane", "filter"] | None = None,
    preprocess: PreprocessConfig | None = None,
    init_filters: Array | None = None,
    callback: Callable[[IterStats], None] | None = None,
    schedule: Literal["auto", "alternate", "interleaved"] = "auto",
) -> LearnResult:
    r"""Learn `n_filters` filters of size `filter_size` from `images` (one layer).

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        float32 (default) or float64, kept; integers become float32. Used as given unless `preprocess`.
    n_filters, filter_size : int
        K and s.
    lam : float
        λ > 0, the weight of the sparsity term (Zeiler's κ/λ); with ``lam_scale="relative"`` the fraction of
        λ_max, in (0, 1).
    n_iter : int
        Outer iterations.
    method : {"admm", "fista", "zeiler"} or an inference config model
        Inference algorithm for the maps.
    boundary : {"circular", "valid"}
    p : float
        Sparsity exponent in (0, 1].
    lam_scale : {"absolute", "relative"}
        ``"relative"``: λ = lam × :func:`~solver.lambda_max` of the (preprocessed) images with the initial
        filters; ``result.config`` then holds the absolute λ and ``result.lam_max`` λ_max.
    seed : int
        Seeds the initial filters (the run is deterministic).
    backend : {"auto", "numpy", "cupy"}
    connectivity : str or bool (or 0/1) array of shape (K, C)
        ``"full"``, ``"singles-and-doubles"``, ``"random-doubles:k"`` or a table.
    inner_iter : int, optional
        Inference iterations per outer iteration (default: 10 for a method name, the model's own count for a
        config model; for zeiler, spread over the β stages). Learning always runs exactly this many: the
        inference ``tol`` is not used. With the interleaved schedule: rounds per outer iteration.
    filter_update : {"fista", "cg", "consensus"} or FilterUpdateConfig, optional
        Default: consensus with the interleaved schedule, fista otherwise. ``FilterUpdateConfig(recentre=True)``
        removes the shift ambiguity (circular boundary): all outer iterations but the last run on an
        (s+2)×(s+2) support, every filter re-centred with its maps after each filter step, and the last runs on
        each filter's s×s window of largest energy. ``history[:-1]`` is then E on the wider support, and the last
        entry (E of the result) may lie slightly above it.
    filter_iter : int, optional
        Filter-update iterations per outer iteration (default 10; alternating schedule).
    filter_norm : {"plane", "filter"}, optional
        Unit norm per plane (Zeiler) or per filter (SPORCO, the default).
    preprocess : PreprocessConfig, optional
        Fitted on `images` and applied first; kept in the result.
    init_filters : array of shape (K, C, s, s), optional
        Start from these instead of the seeded random filters.
    callback : callable, optional
        Called with an :class:`IterStats` after every outer iteration.
    schedule : {"auto", "alternate", "interleaved"}
        ``"alternate"``: each outer iteration runs `inner_iter` inference steps, then `filter_iter` filter
        steps. ``"interleaved"`` (``"admm"``, circular boundary, consensus filter update): `inner_iter` rounds
        of one step of each, all warm-started (Garcia-Cardona & Wohlberg 2018); the same number of steps, each
        filter step on fresh maps, so that a given E comes several times sooner. ``"auto"`` (default):
        interleaved for ``method="admm"`` with the circular boundary when neither `filter_update` (other than
        consensus) nor `filter_iter` is given, alternate otherwise. Either way E never increases.

    Returns
    -------
    LearnResult

    Examples
    --------
    >>> import numpy as np
    >>> from solver import learn
    >>> images = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    >>> result = learn(images, 3, 3, 0.1, n_iter=3, method="fista", seed=0)
    >>> result.filters.shape, result.maps.shape
    ((3, 1, 3, 3), (2, 3, 8, 8))
    >>> bool(result.history[-1] <= result.history[0])
    True
    """
    lam, p, boundary = check_lam(lam), check_p(p), check_boundary(boundary)
    n_iter = check_positive_int(n_iter, "n_iter")
    K, s = check_positive_int(n_filters, "n_filters"), check_positive_int(filter_size, "filter_size")
    # A method name gets 10 inference iterations per outer iteration; a config model keeps its own count.
    default_inner = _DEFAULT_INNER_ITER if isinstance(method, str) else None
    inner = default_inner if inner_iter is None else check_positive_int(inner_iter, "inner_iter")
    inference = inference_config(method, inner, None)
    schedule = _schedule(schedule, inference.method, boundary, filter_update, filter_iter)
    if filter_update is None:
        filter_update = "consensus" if schedule == "interleaved" else "fista"
    base = filter_update if isinstance(filter_update, FilterUpdateConfig) else FilterUpdateConfig(method=filter_update)
    updates = {k: v for k, v in (("max_iter", filter_iter), ("norm", filter_norm)) if v is not None}
    fu = FilterUpdateConfig.model_validate({**base.model_dump(), **updates})
    layer = LayerSpec(
        n_filters=K,
        filter_size=s,
        lam=lam,
        p=p,
        lam_scale=lam_scale,
        connectivity=connectivity if isinstance(connectivity, str) else boolean_table(connectivity).tolist(),
    )
    config = LearnConfig(
        layers=[layer],
        inference=inference,
        filter_update=fu,
        n_iter=n_iter,
        boundary=boundary,
        preprocess=preprocess,
        seed=seed,
        schedule=schedule,
    )
    return learn_layer(images, config, backend=backend, init_filters=init_filters, callback=callback)


_SCHEDULES = ("auto", "alternate", "interleaved")


def _schedule(schedule: str, method: str, boundary: str, filter_update: Any, filter_iter: int | None) -> str:
    """``learn``'s schedule: "auto" is interleaved where it applies and nothing given asks for the alternation."""
    if schedule not in _SCHEDULES:
        raise ValueError(f"schedule must be one of {_SCHEDULES}, got {schedule!r}")
    if schedule != "auto":
        return schedule
    consensus = filter_update is None or filter_update == "consensus"
    if isinstance(filter_update, FilterUpdateConfig):
        consensus = filter_update.method == "consensus" and not filter_update.recentre
    applies = method == "admm" and boundary == "circular" and consensus and filter_iter is None
    return "interleaved" if applies else "alternate"


def learn_layer(
    images: Array,
    config: LearnConfig,
    *,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
    init_filters: Array | None = None,
    callback: Callable[[IterStats], None] | None = None,
    lower: Sequence[LowerLayer] = (),
    switches: Sequence[Array | None] = (),
) -> LearnResult:
    """:func:`learn` from a validated :class:`~solver.config.LearnConfig` of one layer (the entry point of jobs).

    A config of several layers is refused: :func:`~solver.learn_stack` learns those, and
    :func:`~solver.layer_config` gives the one-layer config of each.

    With ``config.reconstruct_to == "pixels"`` (the 2011 model, :class:`~solver.models.shard.PixelShard`) the layer
    reconstructs `images`, the pixels, through the frozen layers `lower` (bottom first) at their `switches` for
    these images; its filters read the channels and spatial shape that the layer below gives, and its maps keep
    one non-zero per block of ``layers[0].pool``. Without `lower` this is a first layer.

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
    config : LearnConfig
        One layer; its ``preprocess`` is fitted on `images` and applied first.
    backend : {"auto", "numpy", "cupy"}
    init_filters : array of shape (K, C, s, s), optional
    callback : callable, optional
        Called with an :class:`IterStats` after every outer iteration.
    lower, switches : sequences, optional
        The frozen layers below and their switches for these images (2011 model only).

    Returns
    -------
    LearnResult

    Examples
    --------
    >>> import numpy as np
    >>> from solver import LearnConfig, learn_layer
    >>> config = LearnConfig.model_validate({"layers": [{"n_filters": 3, "filter_size": 3, "lam": 0.1}],
    ...                                      "n_iter": 2, "inference": {"method": "fista", "max_iter": 10}})
    >>> images = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    >>> learn_layer(images, config).filters.shape
    (3, 1, 3, 3)
    """
    if len(config.layers) != 1:
        raise ValueError(
            f"learn_layer learns one layer, got a config of {len(config.layers)} layers: use "
            "solver.learn_stack, or solver.layer_config(config, index) for one of them"
        )
    fitted = None
    if config.preprocess is not None:
        images, fitted = FittedPreprocess.fit(np.asarray(images), config.preprocess)
    y = as_images(images, dtype=config.dtype)  # checked in the dtype it is learned in
    layer = config.layers[0]
    pixels = config.reconstruct_to == "pixels"
    if (lower or switches) and not pixels:
        raise ValueError("lower layers are given only with reconstruct_to 'pixels' (the 2011 model)")
    N, C, H, W = y.shape
    C, (H, W) = input_geometry(lower, C, (H, W), config.boundary)  # what the layer reads (PixelShard checks)
    s = layer.filter_size
    if s > H or s > W:
        raise ValueError(f"filter_size {s} is larger than the layer's input ({H}x{W})")
    table = connectivity_table(layer.connectivity, layer.n_filters, C, seed=config.seed)
    if init_filters is None:
        f0 = initial_filters(
            layer.n_filters, C, s, seed=config.seed, norm=config.filter_update.norm, connectivity=table, dtype=y.dtype
        )
    else:
        f0 = np.asarray(init_filters, dtype=y.dtype)
        if f0.shape != (layer.n_filters, C, s, s):
            raise ValueError(f"init_filters must have shape {(layer.n_filters, C, s, s)}, got {f0.shape}")
        check_init_filters(f0, table)
    lam_max = None
    if layer.lam_scale == "relative":  # λ = lam × λ_max of this input with the start filters, fixed from here on
        lam_max = lambda_max(
            y, f0, boundary=config.boundary, connectivity=table, lower=lower, switches=switches, backend=backend
        )
        config = absolute_config(config, lam_max)
        logger.info("lam_scale relative: λ_max %.6g, λ = %g × λ_max = %.6g", lam_max, layer.lam, config.layers[0].lam)
    if pixels:
        pool = LocalPool([PixelShard(y, config, table, lower, switches, backend)])
        filters, history, stats = alternate(pool, config, f0, callback=callback)
    elif config.filter_update.recentre:
        pool, filters, history, stats = _learn_recentred(y, config, table, backend, f0, callback)
    else:
        pool = LocalPool([Shard(y, config, table, backend)])
        filters, history, stats = alternate(pool, config, f0, callback=callback)
    maps = np.concatenate(pool.maps())
    return LearnResult(filters, maps, history, stats, config, table, fitted, lam_max)


def _learn_recentred(
    y: Array,
    config: LearnConfig,
    table: np.ndarray | None,
    backend: str,
    f0: np.ndarray,
    callback: Callable[[IterStats], None] | None,
):
    """``filter_update.recentre``: all but the last outer iteration on an (s+2)×(s+2) support with re-centring,
    then the last one on the s×s window of largest energy of each filter, its maps rolled to match."""
    layer = config.layers[0]
    s, wide = layer.filter_size, layer.filter_size + 2
    if wide > min(y.shape[-2:]):
        raise ValueError(
            f"filter_update.recentre learns on a support of filter_size + 2 = {wide}, larger than "
            f"the images ({y.shape[-2]}x{y.shape[-1]})"
        )
    f = np.pad(f0, ((0, 0), (0, 0), (1, 1), (1, 1)))
    history: list[float] = []
    stats: list[IterStats] = []
    state = None
    if config.n_iter > 1:
        wide_config = config.model_copy(
            update={"layers": [layer.model_copy(update={"filter_size": wide})], "n_iter": config.n_iter - 1}
        )
        wide_pool = LocalPool([Shard(y, wide_config, table, backend)])
        f, history, stats = alternate(wide_pool, wide_config, f, callback=callback)
        state = wide_pool.shards[0].state()
    f, offsets = crop_to_energy(f, s)
    pool = LocalPool([Shard(y, config, table, backend)])
    if state is not None:  # the window at offset o is the wide filter shifted by −o: roll the maps by +o
        pool.shards[0].load_state(roll_state(state, -offsets))
    f, last, last_stats = alternate(pool, config, f, callback=callback, start_iteration=config.n_iter - 1)
    return pool, f, history + last, stats + last_stats


def encode_with(result: LearnResult, images: Array, **kwargs: Any):
    """Encode new images with a learned model: its filters, λ, p, boundary, connectivity and preprocessing.

    Parameters
    ----------
    result : LearnResult
        What :func:`learn` returned (with its config).
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
    **kwargs
        Passed to :func:`encode` (``method`` defaults to the one the model learned with).

    Returns
    -------
    EncodeResult

    Examples
    --------
    >>> import numpy as np
    >>> from solver import encode_with, learn
    >>> images = np.random.default_rng(0).standard_normal((2, 1, 8, 8)).astype(np.float32)
    >>> result = learn(images, 3, 3, 0.1, n_iter=2, method="fista")
    >>> encode_with(result, images[:1], max_iter=5).maps.shape
    (1, 3, 8, 8)
    """
    from .coding import encode  # noqa: PLC0415

    if result.config is None:
        raise ValueError("result has no config: encode_with needs the LearnResult returned by learn()")
    layer = result.config.layers[0]
    kwargs.setdefault("method", result.config.inference.method)
    return encode(
        images,
        result.filters,
        layer.lam,
        p=layer.p,
        boundary=result.config.boundary,
        connectivity=result.connectivity,
        preprocess=result.preprocess,
        **kwargs,
    )
