r"""The coding half of a round of the interleaved schedule (``LearnConfig.schedule == "interleaved"``).

A round is one ADMM step on the maps, then one consensus step on the filters (Garcia-Cardona & Wohlberg 2018,
"Convolutional dictionary learning: a comparative review and new algorithms": on small sets, one step of each,
every variable warm-started, reaches a given objective sooner than inner loops run further). With one step per
call, what an alternating coding step pays once per ten steps is paid every step: here the shard keeps the maps'
transform ẑ and the dual's û between rounds, so that

* the warm start of the next round needs no FFT (:meth:`~solver.algorithms.admm.Admm.fourier_warm_start`),
* and the filter step reads ẑ instead of transforming the maps again.

A round is never worse than its start, image by image: an image whose step ended above its E keeps its maps
(and their transform), as in the alternating schedule. Memory: besides the maps and the spatial duals the shard
holds ẑ and û (about as many bytes each as the maps) and the consensus state; images are not coded in groups.
"""

from __future__ import annotations

from dataclasses import replace
from typing import TYPE_CHECKING

import numpy as np

from ..algorithms import make_solver
from ..algorithms.admm_state import AdmmWarmStart, MapSummary
from ..algorithms.problem import CSCProblem
from ..operators import kernels
from ..operators.convolution import ConvOperator
from .shard_base import CodeStats, keep_better

if TYPE_CHECKING:
    from .shard import Shard


def code_one_step(shard: Shard, op: ConvOperator) -> CodeStats:
    """One ADMM step on all of the shard's images with the filters of `op`, warm-started from its last round.

    Leaves in the shard: the maps (never worse, per image, than the ones it started from), the warm start with
    ẑ and û of the new iterate, and ẑ for the filter step (``shard.maps_hat``).
    """
    warm: AdmmWarmStart | None = shard._warm
    shard._warm = None  # the run owns (and overwrites) the warm start's arrays now
    problem = CSCProblem(shard.images, op, shard.penalty, images_hat=shard.images_hat(op.grid))
    solver = make_solver(problem, shard.config.inference)
    solver.keep_maps_hat = True
    state = solver.init(shard._maps, warm=warm)
    # the rounds count as one run's iterations, so that ρ is balanced every rho_period rounds
    state = replace(state, iteration=shard.rounds, residual_iteration=shard.rounds)
    shard.rounds += 1
    maps0, hat0, E0 = state.maps, state.maps_hat, solver.per_item_objective(state).copy()
    start = solver.map_summary(state)  # λ‖z‖₁ and the non-zeros of the start, where the solver knows them
    xp = shard.bk.xp
    # the new maps go to a new array (the start's are kept); the rest of the start is given up
    state = solver.step(state, out=replace(state, maps=xp.empty_like(maps0)), final=True)
    E = solver.per_item_objective(state)
    shard._maps = keep_better(state.maps, E, maps0, E0, in_place=True)  # made by this step, for this shard
    warm = solver.fourier_warm_start(state)
    worse = E > E0
    if worse.any():  # those images keep their maps: and the transform of those maps
        rows = xp.asarray(np.flatnonzero(worse))
        warm.maps_hat[rows] = hat0[rows]
    summary = _kept_summary(start, solver.map_summary(state), worse)
    if summary is not None:  # the next round's start (these maps) then needs no pass over them for its E
        warm = replace(warm, summary=MapSummary(problem.lam, problem.p, *summary))
    shard._warm = warm
    shard.maps_hat = warm.maps_hat
    return _stats(shard, summary)


def _kept_summary(
    start: tuple[np.ndarray, np.ndarray] | None, step: tuple[np.ndarray, np.ndarray] | None, worse: np.ndarray
) -> tuple[np.ndarray, np.ndarray] | None:
    """λ‖z‖₁ and the non-zero count per image of the maps kept: the start's for the images whose step was worse,
    the step's for the others (None where either is unknown)."""
    if start is None or step is None:
        return None
    return np.where(worse, start[0], step[0]), np.where(worse, start[1], step[1])


def _stats(shard: Shard, summary: tuple[np.ndarray, np.ndarray] | None) -> CodeStats:
    """The coding step's statistics: from the fused kernels' sums where they made them (`summary`, per image),
    else for p = 1 on the CPU in one pass over the maps."""
    maps = shard._maps
    if summary is not None:
        sparsity, nonzero = summary
        return CodeStats(float(sparsity.sum()), int(nonzero.sum()), int(maps.size), 1, shard.n_images)
    if shard.bk.name != "numpy" or not kernels.available() or shard.penalty.p != 1.0:
        return shard._code_stats(1)
    l1, nonzero = kernels.abs_and_count(maps)
    penalty = shard.penalty.lam * float(l1.sum())
    return CodeStats(penalty, int(nonzero.sum()), int(maps.size), 1, shard.n_images)


def host_warm_start(warm: AdmmWarmStart | None) -> AdmmWarmStart | None:
    """`warm` without its Fourier arrays (a checkpoint keeps what a warm start needs; they are derived again)."""
    if warm is None or warm.maps_hat is None:
        return warm
    return AdmmWarmStart(warm.rho, warm.dual, warm.aux_dual)
