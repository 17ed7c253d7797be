"""The shared iteration loop of the inference solvers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol, TypeVar

import numpy as np

from ..backend import Array, backend_of
from ..heap import large_blocks_from_heap
from ..stopping import check_stop

S = TypeVar("S")


class Solver(Protocol[S]):
    def init(self, maps0: Array | None = None) -> S: ...

    def step(self, state: S) -> S: ...

    def objective(self, state: S) -> float: ...

    def per_item_objective(self, state: S) -> np.ndarray: ...

    def maps(self, state: S) -> Array: ...

    def converged(self, state: S, previous: S) -> np.ndarray: ...

    @property
    def max_iter(self) -> int: ...


class SolverBase:
    """What the inference solvers share: the iteration budget of their config, and E and the iterate read from
    a state whose ``objective`` is E per item (host float64, one entry per image) and whose ``maps`` is the
    iterate. A solver whose maps live elsewhere in its state overrides :meth:`maps`."""

    config: Any

    @property
    def max_iter(self) -> int:
        return self.config.max_iter

    def objective(self, state: Any) -> float:
        return float(state.objective.sum())

    def per_item_objective(self, state: Any) -> np.ndarray:
        return state.objective

    def maps(self, state: Any) -> Array:
        return state.maps


@dataclass(frozen=True)
class IterStats:
    """Progress after one iteration: what the callbacks of :func:`~solver.encode`, :func:`~solver.learn` and the
    job system receive.

    Attributes
    ----------
    iteration : int
        1-based: the inference iteration (``encode``) or the outer iteration (``learn``).
    objective : float
        E after it.
    data : float
        Its data term ½‖ŷ − y‖².
    sparsity : float
        The fraction of non-zero map entries.
    elapsed : float
        Seconds since the start of the call.
    inner_iter : int
        Inference iterations run in this iteration (1 for ``encode``).

    Examples
    --------
    >>> import numpy as np
    >>> from solver import encode
    >>> images = np.random.default_rng(0).standard_normal((1, 1, 8, 8))
    >>> seen = []
    >>> _ = encode(images, np.ones((2, 1, 3, 3)) / 3, 0.1, method="fista", max_iter=3, tol=0, callback=seen.append)
    >>> [s.iteration for s in seen]
    [1, 2, 3]
    """

    iteration: int
    objective: float
    data: float
    sparsity: float
    elapsed: float
    inner_iter: int


@dataclass(frozen=True)
class InferenceResult:
    """Feature maps and their objective.

    Attributes
    ----------
    maps : array of shape (N, K, H', W')
    objective : float
        E of `maps` (the final objective).
    history : list of float
        E after each iteration.
    n_iter : int
    state : object
        The solver's final state (for warm starts).
    """

    maps: Array
    objective: float
    history: list[float]
    n_iter: int
    state: Any = None


def run(
    solver: Solver[S],
    state: S,
    *,
    max_iter: int | None = None,
    callback: Callable[[S], bool | None] | None = None,
    stop_early: bool = True,
    keeps_states: bool = True,
) -> InferenceResult:
    """Iterate `solver` from `state` until it converges or `max_iter` steps are done.

    The result holds, image by image, the iterate of lowest E among the starting point and every step (ADMM's
    and the β schedule's objectives are not monotone), so its ``objective`` is E of its ``maps`` and a
    warm-started run never returns worse maps than it was given. ``state`` is the last state, for warm starts.
    With ``stop_early=False`` exactly `max_iter` steps are run whatever the convergence test says (learning
    does this, so that a batch split over workers runs the same iterations as the whole batch). A `callback`
    sees every state; it ends the run by returning True. ``keeps_states=False`` promises that it keeps none of
    them (it reads numbers off each), so that their arrays may be reused as when there is no callback.
    """
    with large_blocks_from_heap():  # every step allocates the same map-sized arrays (the FFTs' outputs)
        return _run(solver, state, max_iter, callback if keeps_states else None, callback, stop_early)


def _run(
    solver: Solver[S],
    state: S,
    max_iter: int | None,
    keeper: Callable[[S], bool | None] | None,
    callback: Callable[[S], bool | None] | None,
    stop_early: bool,
) -> InferenceResult:
    n = solver.max_iter if max_iter is None else max_iter
    history: list[float] = []
    start = best_maps = solver.maps(state)
    best = solver.per_item_objective(state).copy()
    # A solver that can write its next iterate into the arrays of a state given up (``step(state, out=...)``, a
    # dataclass state) steps from the previous state into that state's own arrays (``consume``: only its maps
    # may still be needed, as the best so far), but for the maps, which go into maps nobody holds any more: two
    # maps arrays and one of each other array are alive, and no iteration allocates. Not with a callback that may
    # keep the states it is shown (`keeper`), and never from the starting state, whose arrays may be the caller's.
    reuse = keeper is None and getattr(solver, "reuses_states", False)
    spare: Array | None = None  # a maps array of the run's own that holds neither the best nor the current maps
    # an image that has converged keeps the maps it had then, so that its result does not depend on the other
    # images of the batch (the run goes on until all have converged)
    done = np.zeros(best.shape, dtype=bool)
    it = 0
    for it in range(1, n + 1):  # noqa: B007
        check_stop()
        previous = state
        if reuse and it > 1:
            maps = solver.maps(previous)
            if maps is best_maps:  # kept: the new maps go elsewhere
                maps, spare = (backend_of(maps).xp.empty_like(maps) if spare is None else spare), None
            state = solver.step(previous, out=replace(previous, maps=maps), consume=True)
        else:
            state = solver.step(previous)
        E = solver.per_item_objective(state)
        history.append(float(E.sum()))
        replaced = best_maps
        mine = reuse and best_maps is not start  # the best maps are the run's own: updated where they lie
        best_maps, best = _keep_best(solver.maps(state), E, best_maps, best, done, in_place=mine)
        if reuse and replaced is not best_maps and replaced is not start and spare is None:
            spare = replaced
        if callback is not None and callback(state):
            break
        if stop_early:
            done |= solver.converged(state, previous)
            if done.all():
                break
    return InferenceResult(best_maps, float(best.sum()), history, it, state)


def _keep_best(
    maps: Array, E: np.ndarray, best_maps: Array, best: np.ndarray, done: np.ndarray, *, in_place: bool = False
) -> tuple[Array, np.ndarray]:
    """Per image not `done`, the maps of lowest E so far: `maps`, `best_maps`, or where some images improved and
    others did not, a copy mixing both (written into `best_maps` when `in_place`)."""
    better = (E <= best) & ~done
    if better.all():
        return maps, E.copy()
    if not better.any():
        return best_maps, best
    if in_place:
        for n in np.flatnonzero(better):
            best_maps[n] = maps[n]
        return best_maps, np.where(better, E, best)
    xp = backend_of(maps).xp
    mask = xp.asarray(better.reshape((-1,) + (1,) * (maps.ndim - 1)))
    return xp.where(mask, maps, best_maps), np.where(better, E, best)
