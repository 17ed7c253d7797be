r"""Consensus ADMM for the filter update over shards of images (Garcia-Cardona & Wohlberg 2018, "Convolutional
dictionary learning: a comparative review and new algorithms"; SPORCO's ``ConvCnstrMOD_Consensus`` and the
parallel consensus dictionary learning ``dictlrn.prlcnscdl`` are the reference).

.. math:: \min_{d_1 \dots d_N,\, g} \; \sum_n \tfrac12 \sum_c \Big\| \sum_k g_{kc}\, z_{nk} \circledast d_{n,kc}
          - y_{nc} \Big\|^2 + \iota_C(g) \quad \text{s.t.} \quad d_n = g \;\; \forall n

Every image n keeps a local copy :math:`d_n` of the filters (full size, in the Fourier domain) and a scaled dual
:math:`u_n`; C is the set of filters supported on s×s, zero where the connectivity is, of norm ≤ 1 (per filter or
per plane). One iteration, with ρ the penalty and α the over-relaxation:

* :math:`u_n \leftarrow u_n + \tilde d_n - g` (the dual step of the previous iteration, done when g arrives);
* :math:`d_n \leftarrow (\hat a_n^* \hat a_n^\top + \rho I)^{-1} (\hat a_n^* \hat y_n + \rho(\hat g - \hat u_n))`
  per frequency and channel, with :math:`\hat a_{n,k} = g_{kc} \hat z_{nk}`: a rank-one Sherman–Morrison solve;
* :math:`\tilde d_n \leftarrow \alpha d_n + (1 - \alpha) g`;
* :math:`g \leftarrow \Pi_C\big(\tfrac1N \sum_n S^H(\tilde d_n + u_n)\big)`.

Only the last step crosses shards, and since :math:`\Pi_C` keeps the s×s support only, each shard sends
:math:`\sum_{n \in \text{shard}} S^H(\tilde d_n + u_n)`: K·C·s·s numbers per iteration, summed in shard order.
The duals persist across outer iterations, as in SPORCO. The Fourier diagonalisation needs the ``circular``
boundary.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..backend import Array
from ..config import FilterUpdateConfig
from ..operators import kernels
from ..operators.prox import project_unit_ball
from ..stopping import check_stop
from .filter_update import FilterProblem

DEFAULT_RHO = 2.0
"""The consensus penalty ρ when the config leaves it unset. Each image's local step solves
(ẑᴴẑ + ρI) d = ẑᴴŷ + ρ(g − u) on its own maps, so ρ weighs one image's maps against the pull to the consensus:
it does not grow with the number of images. ρ = N (the K its consensus class means to set; SPORCO's parallel
learner in fact runs with its ADMM base class's 1.0) slows learning the more images there are: time to a given E,
interleaved rounds, on contrast-normalised images at λ = 0.1 (E after 40 / 60 / 100 rounds):
16 × 256², 64 filters 11×11: ρ = 16 → 697.1, 4 → 672.3, 2 → 669.0, 1 → 671.5;
8 × 256², 32 × 8×8: ρ = 8 → 363.4, 4 → 361.5, 2 → 361.5, 1 → 364.1;
4 × 128², 16 × 8×8: ρ = 4 → 93.3, 2 → 92.9, 1 → 93.2.
With ten consensus steps per outer iteration (the alternating schedule, 8 × 256²) ρ matters less: E 379.6 after 8
outer iterations with ρ = 2, 376.8 with ρ = 8.
These images are of at most unit range; see :func:`default_rho` for others."""


def default_rho(peak: float) -> float:
    """:data:`DEFAULT_RHO` for images whose largest |y| is `peak`, scaled by peak² above unit range.

    The maps scale with the images (y → cy gives z → cz at λ → cλ), so ẑᴴẑ in the local step scales by c²; a
    fixed ρ would weigh the consensus c² times less on images in pixel units (0..255) than on the same images in
    [0, 1], and learning there stalls. Within unit range ρ stays the tuned 2."""
    return DEFAULT_RHO * max(1.0, float(peak)) ** 2


@dataclass(frozen=True)
class ConsensusState:
    """One shard's consensus variables (Fourier domain, on the map grid).

    Attributes
    ----------
    dual_hat : array of shape (n, K, C, U, V) (full table) or (n, P, U, V) (P connected pairs)
        The scaled duals u_n, on the connected pairs only (:mod:`solver.operators.pairs`).
    local_hat : array of the shape of `dual_hat`
        The relaxed local filters d̃_n of the last iteration (their dual step is pending).
    """

    dual_hat: Array
    local_hat: Array


def consensus_local_step(
    problem: FilterProblem, filters: Array, state: ConsensusState | None, rho: float, relax: float
) -> tuple[Array, ConsensusState]:
    """A shard's part of one consensus iteration at the global filters g = `filters`.

    Parameters
    ----------
    problem : FilterProblem
        The shard's images and (fixed) maps; ``circular`` boundary.
    filters : array of shape (K, C, s, s)
        g, feasible.
    state : ConsensusState or None
        The shard's duals and last local filters (None: zero duals, no pending dual step).
    rho, relax : float
        ρ > 0 and α in (0, 2).

    Returns
    -------
    partial : array of shape (K, C, s, s)
        Σ over the shard's images of Sᴴ(d̃_n + u_n).
    state : ConsensusState
    """
    op = problem.op
    if op.grid.cropped:
        raise ValueError("the consensus filter update needs the 'circular' boundary, got 'valid'")
    xp = problem.backend.xp
    pairs = op.connections
    g_hat = op.filters_to_hat(filters)  # the connected planes only (pair layout)
    if _fused(problem, g_hat):
        return _fused_step(problem, g_hat, state, rho, relax)
    if state is None:
        dual = xp.zeros((op.maps_hat.shape[0], *g_hat.shape), dtype=g_hat.dtype)
    else:
        dual = state.dual_hat + (state.local_hat - g_hat[None])
    # Per pair (k, c): a = ẑ[n, k], and the Sherman–Morrison sums run over the maps k that read channel c.
    a = pairs.per_pair_maps(op.maps_hat)
    b = xp.conj(a) * pairs.per_pair_channels(problem.images_hat) + rho * (g_hat[None] - dual)
    a_b = pairs.per_pair_channels(pairs.sum_over_maps(a * b))
    a_a = pairs.per_pair_channels(pairs.sum_over_maps(a.real * a.real + a.imag * a.imag))
    local = (b - xp.conj(a) * (a_b / (rho + a_a))) / rho
    local = relax * local + (1 - relax) * g_hat[None]
    partial = op.hat_to_filters(xp.sum(local + dual, axis=0))
    return partial, ConsensusState(dual, local)


def _fused(problem: FilterProblem, g_hat: Array) -> bool:
    """Whether the numba kernel applies: numpy arrays, one channel, every pair connected (the (K, 1, U, V) layout)."""
    op = problem.op
    return (
        problem.backend.name == "numpy"
        and kernels.available()
        and op.connections.full
        and op.n_channels == 1
        and g_hat.dtype in (np.complex64, np.complex128)
        and op.maps_hat.dtype == g_hat.dtype
        and op.maps_hat.flags.c_contiguous
    )


def _fused_step(
    problem: FilterProblem, g_hat: Array, state: ConsensusState | None, rho: float, relax: float
) -> tuple[Array, ConsensusState]:
    """:func:`consensus_local_step` by :func:`solver.operators.kernels.consensus_step`: one pass, the state's
    arrays updated in place."""
    op = problem.op
    N, K = op.maps_hat.shape[:2]
    shape = (N, K, 1, *g_hat.shape[2:])
    F = int(np.prod(g_hat.shape[2:]))
    if state is None or state.dual_hat.shape != shape:
        state = ConsensusState(np.empty(shape, dtype=g_hat.dtype), np.empty(shape, dtype=g_hat.dtype))
        fresh = True
    else:
        fresh = False
    y_hat = np.ascontiguousarray(problem.images_hat.reshape(N, F))
    total = kernels.consensus_step(
        op.maps_hat.reshape(N, K, F),
        y_hat,
        np.ascontiguousarray(g_hat.reshape(K, F)),
        state.dual_hat.reshape(N, K, F),
        state.local_hat.reshape(N, K, F),
        rho,
        relax,
        fresh=fresh,
    )
    return op.hat_to_filters(total.reshape(g_hat.shape)), state


def consensus_project(partials: list[tuple[np.ndarray, int]], norm: str) -> np.ndarray:
    """g = Π_C of the mean over all images of Sᴴ(d̃_n + u_n), from the shards' (sum, image count) in order."""
    total = partials[0][0].copy()
    for part, _ in partials[1:]:
        total += part
    n_images = sum(n for _, n in partials)
    return project_unit_ball(total / n_images, norm)


def update_filters_consensus(
    pool: Any, filters: np.ndarray, config: FilterUpdateConfig, data_bound: float | None = None
) -> tuple[np.ndarray, float]:
    """``config.max_iter`` consensus ADMM iterations over a pool of shards whose maps are fixed.

    ρ is ``config.rho``, or :data:`DEFAULT_RHO` when that is None (the learning loop sets it from the images'
    peak, :func:`default_rho`).

    Monotone by construction: the result is the consensus filters when their data term is at most that of
    `filters` or at most `data_bound`, else `filters`. With no bound the data term never rises. The interleaved
    schedule gives as bound the E its round started from less the penalty of the new maps: a filter step may then
    give back part of what the coding step gained, and E still never rises from round to round. Holding every
    filter step to its own start instead throws away ADMM steps that would pay a round later (on 16 images 256²
    with 64 filters 11×11: E 795.4 after 20 rounds that way, 751.7 with the bound).

    Returns
    -------
    filters : ndarray of shape (K, C, s, s)
        Feasible filters (host).
    data : float
        The data term Σ_shards ½‖Z f − y‖² at the returned filters.
    """
    rho = DEFAULT_RHO if config.rho is None else config.rho
    g = project_unit_ball(filters, config.norm)
    for _ in range(config.max_iter):
        check_stop()
        partials = pool.consensus_step(g, rho, config.relax)
        g = consensus_project(partials, config.norm).astype(filters.dtype, copy=False)
    new = float(sum(pool.value(g)))
    if data_bound is not None and new <= data_bound:
        return g, new  # taken whatever the old filters' data term: a pass over every shard's maps saved
    old = float(sum(pool.value(filters)))
    if new <= old:
        return g, new
    return filters, old
