"""How many threads an actor's numerics run: its node's CPUs shared among the job's actors on that node.

Ray sets ``OMP_NUM_THREADS`` to the CPUs an actor reserved (one by default), and the solver's FFT workers and
numba passes keep to it (:func:`solver.backend.cpu_budget`): n actors on a node of n cores then use one core
each instead of n threads each. But a job of one actor on a node of 8 cores would run on one thread with seven
cores idle. So once a job's actors are placed, the driver tells each how many of the job's actors share its
node (:func:`share_nodes`), and the actor widens its budget to its share of the node's cores, never below what
it reserved.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from typing import Any

from solver.backend import cpu_budget, visible_cpus

_reserved: int | None = None  # the budget the process started with (Ray's grant), kept across calls


def node_share(actors_on_node: int, reserved: int = 1) -> int:
    """The threads of one of `actors_on_node` actors sharing this node's CPUs, at least `reserved`."""
    if actors_on_node < 1:
        raise ValueError(f"actors_on_node must be at least 1, got {actors_on_node}")
    return max(reserved, visible_cpus() // actors_on_node)


def take_node_share(actors_on_node: int) -> int:
    """Widen this process's thread budget to its share of the node's CPUs when `actors_on_node` of the job's
    actors run there (at least what it reserved); returns the new budget."""
    global _reserved
    if _reserved is None:
        _reserved = cpu_budget()
    threads = node_share(actors_on_node, _reserved)
    os.environ["OMP_NUM_THREADS"] = str(threads)  # read by cpu_budget() at every pass
    return threads


def share_nodes(actors: Sequence[Any]) -> list[int]:
    """Tell every actor (with ``node_id`` and ``take_node_share`` methods) how many of `actors` share its node;
    returns their thread budgets, in order."""
    import ray  # noqa: PLC0415

    nodes = ray.get([a.node_id.remote() for a in actors])
    counts = Counter(nodes)
    return ray.get([a.take_node_share.remote(counts[node]) for a, node in zip(actors, nodes, strict=True)])
