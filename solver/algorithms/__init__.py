"""Inference algorithms for the feature maps (zeiler, fista, admm) and the filter updates.

Each solver holds its problem and config, and exposes ``init(maps0) -> state``, ``step(state) -> state`` and
``objective(state) -> float``; states are frozen dataclasses of arrays (they pickle, so they checkpoint).
"""

from .admm import Admm, AdmmState
from .base import InferenceResult, run
from .fista import Fista, FistaState
from .zeiler import Zeiler, ZeilerState

__all__ = ["Admm", "AdmmState", "Fista", "FistaState", "InferenceResult", "Zeiler", "ZeilerState", "run", "make_solver"]


def make_solver(problem, config):
    """The solver for an :data:`~solver.config.InferenceConfig` (dispatch on ``config.method``)."""
    solvers = {"zeiler": Zeiler, "fista": Fista, "admm": Admm}
    return solvers[config.method](problem, config)
