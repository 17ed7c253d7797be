"""The alternating optimisation of one layer over a pool of shards (:func:`alternate`): coding step, filter
step, record of E. :func:`~solver.models.learn.learn_layer` and the distributed coordinator (``workers/``) drive it."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from ..algorithms.base import IterStats
from ..algorithms.consensus import default_rho, update_filters_consensus
from ..algorithms.filter_update import filter_lipschitz, update_filters_pooled
from ..algorithms.recentre import recentre
from ..config import LearnConfig
from ..heap import large_blocks_from_heap

# The loop's records keep the logger name they had when it lived in solver.models.learn.
logger = logging.getLogger("solver.models.learn")


_POWER_ITER_FIRST = 20  # power iterations for the filter step size at the first outer iteration
_POWER_ITER_WARM = 4  # and at the later ones, warm-started from the previous vector


def alternate(
    pool: Any,
    config: LearnConfig,
    filters: np.ndarray,
    *,
    callback: Callable[[IterStats], None] | None = None,
    start_iteration: int = 0,
    start_objective: float | None = None,
    power_vector: np.ndarray | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_iteration: Callable[[int, np.ndarray, np.ndarray], None] | None = None,
) -> tuple[np.ndarray, list[float], list[IterStats]]:
    """The outer loop over a pool of shards: coding step, filter step, record of E.

    Every reduction is a sum over the shards in pool order, so the same images on one shard or on several
    give the same filters up to round-off. This is the coordinator of both the single-process learner (a
    :class:`~solver.models.shard.LocalPool` of one shard) and the distributed one (``workers/``).

    Parameters
    ----------
    pool : LocalPool or a pool of remote shards with the same methods
    config : LearnConfig
    filters : ndarray of shape (K, C, s, s)
        Initial (or checkpointed) filters, host.
    callback : callable, optional
        Called with an :class:`IterStats` after every outer iteration.
    start_iteration : int
        Outer iterations already done (when resuming from a checkpoint).
    start_objective : float, optional
        E after the last of those (resuming): the interleaved schedule holds its first round to it, as the run
        that was not stopped would have (without it that round refuses any filter step that raises the data term,
        and the resumed run departs from the one it resumes).
    power_vector : ndarray, optional
        Warm start of the power iteration for the filter step size (from a checkpoint).
    should_stop : callable, optional
        Polled before every outer iteration; True ends the loop early (cooperative cancel).
    on_iteration : callable, optional
        Called with (iteration, filters, power vector) after every outer iteration (checkpoints).

    Returns
    -------
    filters, history, stats
    """
    with large_blocks_from_heap():  # each iteration allocates the same map-sized arrays: reuse them
        return _alternate(
            pool, config, filters, callback, start_iteration, start_objective, power_vector, should_stop, on_iteration
        )


def _alternate(
    pool: Any,
    config: LearnConfig,
    filters: np.ndarray,
    callback: Callable[[IterStats], None] | None,
    start_iteration: int,
    start_objective: float | None,
    power_vector: np.ndarray | None,
    should_stop: Callable[[], bool] | None,
    on_iteration: Callable[[int, np.ndarray, np.ndarray], None] | None,
) -> tuple[np.ndarray, list[float], list[IterStats]]:
    history: list[float] = []
    stats: list[IterStats] = []
    start = time.perf_counter()
    vector = np.ones_like(filters) if power_vector is None else power_vector
    consensus = config.schedule == "interleaved" or config.filter_update.method == "consensus"
    if consensus and config.filter_update.rho is None:  # the images' units taken out of the default penalty
        rho = default_rho(max(pool.peak()))
        config = config.model_copy(update={"filter_update": config.filter_update.model_copy(update={"rho": rho})})
    for it in range(start_iteration + 1, config.n_iter + 1):
        if should_stop is not None and should_stop():
            break
        if config.schedule == "interleaved":
            coded, filters, data = _rounds(pool, config, filters, history[-1] if history else start_objective)
        elif config.filter_update.method == "consensus":  # needs no step size
            coded = pool.code(filters)
            filters, data = update_filters_consensus(pool, filters, config.filter_update)
        else:
            coded = pool.code(filters)
            n_power = _POWER_ITER_FIRST if power_vector is None and it == start_iteration + 1 else _POWER_ITER_WARM
            lipschitz, vector = filter_lipschitz(pool, vector, n_power)
            filters, data = update_filters_pooled(pool, filters, config.filter_update, lipschitz)
        if config.filter_update.recentre and it < config.n_iter:  # the returned filters are the ones of E
            filters = recentre(pool, filters)
        penalty = sum(c.penalty for c in coded)
        E = data + penalty
        history.append(E)
        sparsity = sum(c.n_nonzero for c in coded) / sum(c.n_entries for c in coded)
        record = IterStats(it, E, data, sparsity, time.perf_counter() - start, max(c.n_iter for c in coded))
        stats.append(record)
        logger.debug("outer %d: E=%.6g data=%.6g nonzero=%.4f", it, E, data, sparsity)
        if on_iteration is not None:
            on_iteration(it, filters, vector)
        if callback is not None:
            callback(record)
    return filters, history, stats


def _rounds(
    pool: Any, config: LearnConfig, filters: np.ndarray, E_start: float | None
) -> tuple[list[Any], np.ndarray, float]:
    """The interleaved schedule's outer iteration: ``inference.max_iter`` rounds of one coding step (the shards
    run one ADMM step when their config is interleaved) and one consensus filter step. A round never ends above
    the E it started from (`E_start` for the first, when known): the coding step keeps every image's maps no
    worse, and the filter step may spend what the coding step gained, no more."""
    one_step = config.filter_update.model_copy(update={"max_iter": 1})
    rounds = config.inference.max_iter
    coded, data = [], 0.0
    for _ in range(rounds):
        coded = pool.code(filters)
        penalty = sum(c.penalty for c in coded)
        bound = None if E_start is None else E_start - penalty
        filters, data = update_filters_consensus(pool, filters, one_step, bound)
        E_start = data + penalty
    return [replace(c, n_iter=rounds) for c in coded], filters, data  # the inference steps of the iteration
