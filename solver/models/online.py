r"""Online (mini-batch) convolutional dictionary learning with sufficient statistics.

.. math:: \min_f \; \mathbb{E}_y \min_z \tfrac12 \sum_c \| P \sum_k g_{kc}\, z_k \circledast f_{kc} - y_c \|^2
          + \lambda \|z\|_p^p \quad \text{s.t.} \quad \|f\|_2 \le 1

Batch learning (:mod:`solver.models.learn`) keeps every image's maps alive between outer iterations: K times the
data. Online learning keeps only the statistics of :mod:`solver.operators.surrogate` (ZtZ of shape
(K, K, 2s−1, 2s−1), ZtY of shape (K, C, s, s)), whose size does not depend on the number of images (Mairal, Bach,
Ponce & Sapiro, JMLR 2010; Liu, Garcia-Cardona, Wohlberg & Yin, SIAM J. Imaging Sci. 2018). For batch t:

1. code the batch with the current filters: zero start, the configured inference method, exactly its
   ``max_iter`` iterations (:meth:`OnlineLearner.code_batch`);
2. fold its statistics into the running sums, ``A ← β_t A + ZtZ_t``, ``B ← β_t B + ZtY_t`` with
   ``β_t = (1 − 1/t)^ρ`` or a fixed factor (:class:`~solver.config.OnlineConfig`);
3. a few projected FISTA steps on the surrogate ½ Σ f·(A ∗ f) − ⟨B, f⟩ under the unit-norm constraint, warm-started
   at the current filters (:func:`~solver.algorithms.filter_update.update_filters_surrogate`).

The batch's maps are dropped after step 2, so the memory is set by the batch size alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..algorithms.base import IterStats
from ..algorithms.filter_update import update_filters_surrogate
from ..backend import Array
from ..config import FilterUpdateConfig, LayerSpec, LearnConfig, OnlineConfig
from ..operators.connectivity import boolean_table, connectivity_table
from ..operators.prox import project_unit_ball
from ..operators.surrogate import BatchCorrelations, FilterStatistics, SurrogateOperator
from ..validation import as_images, check_boundary, check_init_filters, check_lam, check_p, check_positive_int
from .coding import encode, inference_config
from .learn import _DEFAULT_INNER_ITER, LearnResult, initial_filters
from .shard import CodeStats, Shard

logger = logging.getLogger(__name__)

# Filter steps per batch: with strong forgetting the surrogate changes much between batches, and its steps are
# cheap (a K×K product on a (2s−1)² grid) next to coding the batch, so they run close to its minimiser (10 steps
# left the held-out objective after two passes 10 % above SPORCO's after one; 100 steps, 1 % below).
DEFAULT_FILTER_ITER = 100
_POWER_ITER_FIRST = 30  # power iterations for the filter step size on the first batch
_POWER_ITER_WARM = 5  # and on the later ones, warm-started (the statistics change little between batches)


@dataclass(frozen=True)
class BatchStep:
    """What coding one batch (or a part of one) gives online learning: its statistics, its data term
    ½‖P Z f − y‖² with the filters it was coded with, and its coding statistics (penalty, non-zeros)."""

    stats: FilterStatistics
    data: float
    code: CodeStats

    def plus(self, other: BatchStep) -> BatchStep:
        """The two parts of a batch as one (``self`` first)."""
        a, b = self.code, other.code
        code = CodeStats(
            a.penalty + b.penalty,
            a.n_nonzero + b.n_nonzero,
            a.n_entries + b.n_entries,
            max(a.n_iter, b.n_iter),
            a.n_images + b.n_images,
        )
        return BatchStep(self.stats.forget_and_add(other.stats, 1.0), self.data + other.data, code)


class OnlineLearner:
    """The state of online learning: filters, running statistics, what was seen; one batch at a time.

    Parameters
    ----------
    config : LearnConfig
        One layer: its λ, p, connectivity, inference (the coding of each batch), filter update (``max_iter``
        FISTA steps per batch, ``norm``), boundary, seed and dtype. ``n_iter`` is not used.
    online : OnlineConfig
    n_channels : int
        C of the images.
    backend : {"auto", "numpy", "cupy"}
        Where the batches are coded and correlated; the statistics and the filter step live on the host.
    init_filters : array of shape (K, C, s, s), optional
        Start from these instead of the seeded random filters.
    dtype : numpy dtype
        The computation dtype of the batches and of the filters.

    Attributes
    ----------
    filters : ndarray of shape (K, C, s, s)
    statistics : FilterStatistics
    n_batches, n_images : int
        Batches and images seen.
    history : list of float
        E of every batch with the filters it was coded with.
    stats : list of IterStats
    """

    def __init__(
        self,
        config: LearnConfig,
        online: OnlineConfig,
        n_channels: int,
        *,
        backend: Literal["auto", "numpy", "cupy"] = "auto",
        init_filters: Array | None = None,
        dtype: Any = np.float32,
    ):
        if len(config.layers) != 1:
            raise ValueError(f"online learning learns one layer, got a config of {len(config.layers)} layers")
        if config.reconstruct_to != "below" or config.filter_update.method != "fista" or config.filter_update.recentre:
            raise ValueError(
                "online learning needs reconstruct_to 'below' and filter_update.method 'fista' without recentre, "
                f"got {config.reconstruct_to!r}, {config.filter_update.method!r}, recentre "
                f"{config.filter_update.recentre}"
            )
        self.config, self.online, self.backend = config, online, backend
        self.dtype = np.dtype(config.dtype or dtype)
        layer = config.layers[0]
        K, s, C = layer.n_filters, layer.filter_size, int(n_channels)
        self.table = connectivity_table(layer.connectivity, K, C, seed=config.seed)
        norm = config.filter_update.norm
        if init_filters is None:
            self.filters = initial_filters(
                K, C, s, seed=config.seed, norm=norm, connectivity=self.table, dtype=self.dtype
            )
        else:
            f0 = np.asarray(init_filters, dtype=self.dtype)
            if f0.shape != (K, C, s, s):
                raise ValueError(f"init_filters must have shape {(K, C, s, s)}, got {f0.shape}")
            check_init_filters(f0, self.table)
            self.filters = project_unit_ball(f0, norm)
        self.statistics = FilterStatistics.zeros(K, C, s)
        self.n_batches = 0
        self.n_images = 0
        self.history: list[float] = []
        self.stats: list[IterStats] = []
        self.last_maps: np.ndarray | None = None
        self._power: np.ndarray | None = None
        self._start = time.perf_counter()

    @property
    def n_channels(self) -> int:
        return int(self.filters.shape[1])

    def _check_batch(self, images: Any) -> np.ndarray:
        y = as_images(images, dtype=self.dtype)
        s = self.config.layers[0].filter_size
        if y.shape[1] != self.n_channels:
            raise ValueError(f"a batch has {y.shape[1]} channels, the filters read {self.n_channels}")
        if s > min(y.shape[-2:]):
            raise ValueError(f"filter_size {s} is larger than the batch's images ({y.shape[-2]}x{y.shape[-1]})")
        return y

    def code_batch(self, images: Array) -> tuple[Shard, CodeStats]:
        """Code `images` (n, C, H, W) with the current filters: zero start, the configured inference, exactly its
        ``max_iter`` iterations. Returns the shard holding the maps (and the images) on the backend, and its
        coding statistics."""
        shard = Shard(self._check_batch(images), self.config, self.table, self.backend)
        return shard, shard.code(self.filters)

    def batch_statistics(self, images: Array, *, keep_maps: bool = True) -> BatchStep:
        """Code `images` with the current filters and correlate them: the batch's (or a part of a batch's)
        statistics, data term and coding statistics, without changing the learner (but ``last_maps`` when
        `keep_maps`). A data-parallel run computes this for each part of a batch where its images are, and
        :meth:`fold` sums the parts."""
        shard, code = self.code_batch(images)
        corr = BatchCorrelations(
            shard.device_maps(),
            shard.images,
            self.config.layers[0].filter_size,
            boundary=self.config.boundary,
            connectivity=self.table,
        )
        data = corr.data_term(self.filters)
        stats = corr.statistics()
        if keep_maps:
            self.last_maps = shard.maps()
        del corr, shard  # the batch's transforms and maps are not needed past this point
        return BatchStep(stats, data, code)

    def fold(self, parts: Sequence[BatchStep]) -> IterStats:
        """One step of online learning from the statistics of one batch, given as its parts in a fixed order
        (summed in that order, so that the same parts give the same filters wherever they were computed): fold
        them into the running sums with the forgetting factor, update the filters.

        Returns
        -------
        IterStats
            ``iteration`` is the batch number, ``objective`` E of the batch with the filters it was coded with,
            ``inner_iter`` the inference iterations.
        """
        if not parts:
            raise ValueError("a batch needs at least one part")
        step = parts[0]
        for part in parts[1:]:
            step = step.plus(part)
        self.n_batches += 1
        self.n_images += step.code.n_images
        self.statistics = self.statistics.forget_and_add(step.stats, self.online.beta(self.n_batches))
        self._filter_step()
        code = step.code
        E = step.data + code.penalty
        self.history.append(E)
        record = IterStats(
            self.n_batches,
            E,
            step.data,
            code.n_nonzero / code.n_entries,
            time.perf_counter() - self._start,
            code.n_iter,
        )
        self.stats.append(record)
        logger.debug("batch %d (%d images): E=%.6g data=%.6g", self.n_batches, code.n_images, E, step.data)
        return record

    def update_from_batch(self, images: Array) -> IterStats:
        """One step of online learning on the batch `images`: code, fold its statistics in, update the filters
        (:meth:`batch_statistics` then :meth:`fold`).

        Returns
        -------
        IterStats
            ``iteration`` is the batch number, ``objective`` E of the batch with the filters it was coded with,
            ``inner_iter`` the inference iterations.
        """
        return self.fold([self.batch_statistics(images)])

    def state(self) -> dict[str, Any]:
        """What a resumed learner needs (host arrays and numbers): filters, running statistics, the step size's
        power vector, the counts and the history. :meth:`load_state` restores it."""
        s = self.statistics
        return {
            "filters": self.filters.copy(),
            "ztz": s.ztz.copy(),
            "zty": s.zty.copy(),
            "yty": s.yty,
            "stat_images": s.n_images,
            "power": None if self._power is None else self._power.copy(),
            "n_batches": self.n_batches,
            "n_images": self.n_images,
            "history": list(self.history),
            "stats": list(self.stats),
        }

    def load_state(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state` returned (the same config and filter shape)."""
        filters = np.asarray(state["filters"], dtype=self.dtype)
        if filters.shape != self.filters.shape:
            raise ValueError(f"a state of filters {filters.shape} does not fit filters {self.filters.shape}")
        stats = FilterStatistics(
            np.array(state["ztz"], dtype=np.float64),
            np.array(state["zty"], dtype=np.float64),
            float(state["yty"]),
            float(state["stat_images"]),
        )
        self.statistics._check_like(stats)
        self.filters, self.statistics = filters.copy(), stats
        self._power = None if state["power"] is None else np.array(state["power"], dtype=np.float64)
        self.n_batches, self.n_images = int(state["n_batches"]), int(state["n_images"])
        self.history, self.stats = list(state["history"]), list(state["stats"])

    def _filter_step(self) -> None:
        op = SurrogateOperator(self.statistics, self.table)
        n_power = _POWER_ITER_FIRST if self._power is None else _POWER_ITER_WARM
        lipschitz, self._power = op.lipschitz(self._power, n_power)
        norm = self.config.filter_update.norm
        f, _ = update_filters_surrogate(op, self.filters, self.config.filter_update.max_iter, norm, lipschitz)
        self.filters = project_unit_ball(f.astype(self.dtype), norm)

    def objective(self, images: Array, max_iter: int | None = None) -> float:
        """E of `images` encoded with the current filters (the configured inference, `max_iter` iterations,
        default ``online.held_out_iter``, and its tolerance): the held-out objective."""
        layer = self.config.layers[0]
        method = inference_config(self.config.inference, max_iter or self.online.held_out_iter, None)
        return encode(
            self._check_batch(images),
            self.filters,
            layer.lam,
            method=method,
            boundary=self.config.boundary,
            p=layer.p,
            backend=self.backend,
            connectivity=self.table,
        ).objective

    def result(self, held_out_history: list[float] | None = None) -> LearnResult:
        """The filters learned so far as a :class:`~solver.LearnResult` (``maps``: the last batch's)."""
        if self.n_batches == 0:
            raise ValueError("no batch was seen: online learning needs at least one batch of images")
        config = self.config.model_copy(update={"n_iter": self.n_batches})
        return LearnResult(
            self.filters.copy(),
            self.last_maps,
            list(self.history),
            list(self.stats),
            config,
            self.table,
            None,
            None,
            held_out_history=list(held_out_history or []),
            online=self.online,
        )


def rebatch(batches: Iterable[Any], batch_size: int, n_epochs: int = 1) -> Iterator[np.ndarray]:
    """Batches of `batch_size` images (N, C, H, W) from an array of images or an iterable of batches.

    An array (N, C, H, W), (N, H, W) or (H, W) is split in order; an iterable yields arrays of those shapes, which
    are concatenated and cut (the last batch of each pass may be smaller). `n_epochs` passes need a re-iterable
    collection (a list, an array): a one-shot iterator is refused.
    """
    batch_size = check_positive_int(batch_size, "batch_size")
    n_epochs = check_positive_int(n_epochs, "n_epochs")
    if hasattr(batches, "ndim") and hasattr(batches, "shape"):  # one array of images, not a sequence of batches
        images = as_images(batches)
        for _ in range(n_epochs):
            for start in range(0, images.shape[0], batch_size):
                yield images[start : start + batch_size]
        return
    if n_epochs > 1 and iter(batches) is batches:
        raise ValueError(f"n_epochs = {n_epochs} needs a re-iterable collection of batches, got a one-shot iterator")
    first: tuple[int, ...] | None = None  # every image of the stream shares it, whichever batch it comes in
    for _ in range(n_epochs):
        pending: list[np.ndarray] = []
        count = 0
        for item in batches:
            a = as_images(item, "a batch")
            first = a.shape[1:] if first is None else first
            if a.shape[1:] != first:
                raise ValueError(
                    f"a batch has images of shape {a.shape[1:]}, the first batch's are {first}: the images of a "
                    "stream must share C, H and W"
                )
            pending.append(a)
            count += a.shape[0]
            while count >= batch_size:
                joined = np.concatenate(pending) if len(pending) > 1 else pending[0]
                yield joined[:batch_size]
                rest = joined[batch_size:]
                pending, count = ([rest] if rest.shape[0] else []), rest.shape[0]
        if count:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]


def learn_online(
    batches: Iterable[Any],
    n_filters: int,
    filter_size: int,
    lam: float,
    *,
    batch_size: int = 16,
    forget: float = 10.0,
    forget_factor: float | None = None,
    n_epochs: int = 1,
    method: Literal["admm", "fista", "zeiler"] | Any = "admm",
    inner_iter: int | None = None,
    filter_iter: int = DEFAULT_FILTER_ITER,
    filter_norm: Literal["plane", "filter"] = "filter",
    boundary: Literal["circular", "valid"] = "circular",
    p: float = 1.0,
    connectivity: str | np.ndarray = "full",
    seed: int = 0,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
    init_filters: Array | None = None,
    held_out: Array | None = None,
    held_out_every: int = 1,
    held_out_iter: int = 100,
    callback: Callable[[IterStats], None] | None = None,
) -> LearnResult:
    r"""Learn `n_filters` filters of size `filter_size` from a stream of image batches (one layer, online).

    Memory is set by `batch_size`, not by the number of images: each batch is coded, its statistics folded into
    running sums with forgetting, and its maps dropped (see the module docstring).

    Parameters
    ----------
    batches : iterable of arrays (n, C, H, W), (n, H, W) or (H, W), or one array of images
        Any iterable (a generator reading files, a list, a Ray Data iterator); re-batched to `batch_size`.
        Images must share C, H and W; the first batch sets the dtype (float32 default, float64 kept).
    n_filters, filter_size : int
        K and s.
    lam : float
        λ > 0, the weight of the sparsity term.
    batch_size : int
        Images per batch.
    forget : float
        ρ of the forgetting schedule β_t = (1 − 1/t)^ρ.
    forget_factor : float, optional
        A fixed forgetting factor β in [0, 1] instead of the schedule.
    n_epochs : int
        Passes over `batches` (a re-iterable collection when above 1).
    method : {"admm", "fista", "zeiler"} or an inference config model
        Inference for each batch, from zero maps.
    inner_iter : int, optional
        Inference iterations per batch (default 10 for a method name, the model's own count for a config).
    filter_iter : int
        Projected FISTA steps on the surrogate per batch.
    filter_norm : {"plane", "filter"}
    boundary : {"circular", "valid"}
    p : float
        Sparsity exponent in (0, 1].
    connectivity : str or bool array of shape (K, C)
    seed : int
        Seeds the initial filters (the run is deterministic).
    backend : {"auto", "numpy", "cupy"}
    init_filters : array of shape (K, C, s, s), optional
    held_out : array of shape (M, C, H, W), optional
        Images never learned from; their objective (encoded with `method`, `held_out_iter` iterations) is
        recorded after every `held_out_every` batches in ``result.held_out_history``.
    held_out_every, held_out_iter : int
    callback : callable, optional
        Called with an :class:`~solver.IterStats` after every batch.

    Returns
    -------
    LearnResult
        ``filters``; ``history``: E of every batch with the filters it was coded with; ``maps``: the last
        batch's; ``config`` with ``n_iter`` the number of batches; ``held_out_history``; ``online``.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import learn_online
    >>> images = np.random.default_rng(0).standard_normal((6, 1, 8, 8)).astype(np.float32)
    >>> result = learn_online(images, 3, 3, 0.1, batch_size=2, method="fista", held_out=images[:2])
    >>> result.filters.shape, len(result.history), len(result.held_out_history)
    ((3, 1, 3, 3), 3, 3)
    """
    lam, p, boundary = check_lam(lam), check_p(p), check_boundary(boundary)
    K, s = check_positive_int(n_filters, "n_filters"), check_positive_int(filter_size, "filter_size")
    default_inner = _DEFAULT_INNER_ITER if isinstance(method, str) else None
    inner = default_inner if inner_iter is None else check_positive_int(inner_iter, "inner_iter")
    inference = inference_config(method, inner, None)
    layer = LayerSpec(
        n_filters=K,
        filter_size=s,
        lam=lam,
        p=p,
        connectivity=connectivity if isinstance(connectivity, str) else boolean_table(connectivity).tolist(),
    )
    config = LearnConfig(
        layers=[layer],
        inference=inference,
        filter_update=FilterUpdateConfig(max_iter=check_positive_int(filter_iter, "filter_iter"), norm=filter_norm),
        n_iter=1,
        boundary=boundary,
        seed=seed,
    )
    online = OnlineConfig(
        batch_size=batch_size,
        forget=forget,
        forget_factor=forget_factor,
        n_epochs=n_epochs,
        held_out_every=held_out_every,
        held_out_iter=held_out_iter,
    )
    held = None if held_out is None else as_images(held_out, "held_out")
    learner: OnlineLearner | None = None
    held_out_history: list[float] = []
    for batch in rebatch(batches, online.batch_size, online.n_epochs):
        if learner is None:
            learner = OnlineLearner(
                config, online, batch.shape[1], backend=backend, init_filters=init_filters, dtype=batch.dtype
            )
        record = learner.update_from_batch(batch)
        if held is not None and learner.n_batches % online.held_out_every == 0:
            held_out_history.append(learner.objective(held))
        if callback is not None:
            callback(record)
    if learner is None:
        raise ValueError("batches held no images: online learning needs at least one batch")
    return learner.result(held_out_history)
