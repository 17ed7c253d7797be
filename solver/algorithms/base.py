"""The shared iteration loop of the inference solvers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from ..backend import Array

S = TypeVar("S")


class Solver(Protocol[S]):
    def init(self, maps0: Array | None = None) -> S: ...

    def step(self, state: S) -> S: ...

    def objective(self, state: S) -> float: ...

    def maps(self, state: S) -> Array: ...

    def converged(self, state: S, previous: S) -> bool: ...

    @property
    def max_iter(self) -> int: ...


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
    callback: Callable[[S], None] | None = None,
) -> InferenceResult:
    """Iterate `solver` from `state` until it converges or `max_iter` steps are done.

    The result holds the iterate of lowest E among the starting point and every step (ADMM's and the β
    schedule's objectives are not monotone), so its ``objective`` is E of its ``maps`` and a warm-started run
    never returns worse maps than it was given. ``state`` is the last state, for warm starts.
    """
    n = solver.max_iter if max_iter is None else max_iter
    history: list[float] = []
    best_maps, best = solver.maps(state), solver.objective(state)
    it = 0
    for it in range(1, n + 1):  # noqa: B007
        previous, state = state, solver.step(state)
        E = solver.objective(state)
        history.append(E)
        if E <= best:
            best_maps, best = solver.maps(state), E
        if callback is not None:
            callback(state)
        if solver.converged(state, previous):
            break
    return InferenceResult(best_maps, best, history, it, state)
