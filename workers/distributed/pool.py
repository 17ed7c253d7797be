"""The pool protocol of :func:`solver.models.learn.alternate` over Ray shard actors, and the traffic it causes.

Every call puts its array argument in the object store once (``ray.put``), calls every actor with the reference,
and gathers every result with one ``ray.get`` bounded by a timeout; results come back in shard order, so the
learning loop's sums are taken in the same order as in one process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
import ray

from solver.models.shard import CodeStats


@dataclass
class Traffic:
    """Bytes of numbers the learning loop moves between the coordinator and the shard actors.

    Counts the calls of :func:`~solver.models.learn.alternate` (``code``, ``value_and_gradient``, ``value``, ``normal``,
    ``consensus_step``): arrays by nbytes, scalars as 8 bytes; a broadcast argument once per actor that reads
    it. Setup, checkpoints and the final maps are not counted.
    """

    calls: int = 0
    bytes_out: int = 0
    bytes_in: int = 0


def payload_bytes(obj: Any) -> int:
    """Bytes of the numbers in `obj` (arrays, scalars, and tuples, lists, dicts and dataclasses of them)."""
    if isinstance(obj, np.ndarray):
        return int(obj.nbytes)
    if isinstance(obj, bool | int | float | np.generic):
        return 8
    if isinstance(obj, list | tuple):
        return sum(payload_bytes(o) for o in obj)
    if isinstance(obj, dict):
        return sum(payload_bytes(o) for o in obj.values())
    if is_dataclass(obj):
        return sum(payload_bytes(getattr(obj, f.name)) for f in fields(obj))
    return 0


class RayPool:
    """The pool protocol of :func:`solver.models.learn.alternate` over shard actors, results in shard order.

    Every call puts its array argument in the object store once, calls all actors with the reference, and
    gathers all results with one ``ray.get`` (bounded by `timeout` seconds).
    """

    def __init__(self, actors: Sequence[Any], *, timeout: float | None, traffic: Traffic | None = None):
        if not actors:
            raise ValueError("a pool needs at least one shard actor")
        self.actors = list(actors)
        self.timeout = timeout
        self.traffic = Traffic() if traffic is None else traffic

    def _broadcast(self, method: str, *args: Any, counted: bool = False) -> list[Any]:
        shared = [ray.put(a) if isinstance(a, np.ndarray) else a for a in args]
        refs = [getattr(actor, method).remote(*shared) for actor in self.actors]
        results = ray.get(refs, timeout=self.timeout)
        if counted:
            self.traffic.calls += 1
            self.traffic.bytes_out += payload_bytes(list(args)) * len(self.actors)
            self.traffic.bytes_in += payload_bytes(results)
        return results

    def code(self, filters: np.ndarray) -> list[CodeStats]:
        return self._broadcast("code", filters, counted=True)

    def value_and_gradient(self, filters: np.ndarray) -> list[tuple[float, np.ndarray]]:
        return self._broadcast("value_and_gradient", filters, counted=True)

    def value(self, filters: np.ndarray) -> list[float]:
        return self._broadcast("value", filters, counted=True)

    def normal(self, v: np.ndarray) -> list[np.ndarray]:
        return self._broadcast("normal", v, counted=True)

    def consensus_step(self, filters: np.ndarray, rho: float, relax: float) -> list[tuple[np.ndarray, int]]:
        return self._broadcast("consensus_step", filters, rho, relax, counted=True)

    def maps(self) -> list[np.ndarray]:
        return self._broadcast("maps")

    def lambda_max(self, filters: np.ndarray) -> list[float]:
        return self._broadcast("lambda_max", filters)

    def set_lam(self, lam: float) -> None:
        self._broadcast("set_lam", lam)

    def states(self) -> list[dict[str, Any]]:
        return self._broadcast("state")

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        if len(states) != len(self.actors):
            raise ValueError(f"states must hold one state per shard ({len(self.actors)}), got {len(states)}")
        ray.get(
            [actor.load_state.remote(s) for actor, s in zip(self.actors, states, strict=True)], timeout=self.timeout
        )

    def reset(self) -> None:
        self._broadcast("reset")

    def save_states(self, folder: Any) -> list[Any]:
        """Every actor writes its part of a checkpoint into `folder`; returns the parts (sha256, size), in order."""
        refs = [actor.save_state.remote(folder, index) for index, actor in enumerate(self.actors)]
        return ray.get(refs, timeout=self.timeout)

    def restore(self, parts: Sequence[Any]) -> None:
        """Every actor reads its own part of a checkpoint from the store."""
        if len(parts) != len(self.actors):
            raise ValueError(f"a checkpoint must hold one part per shard ({len(self.actors)}), got {len(parts)}")
        ray.get([actor.restore.remote(p) for actor, p in zip(self.actors, parts, strict=True)], timeout=self.timeout)

    def write_outputs(self, outputs: Any, firsts: Sequence[int]) -> list[Any]:
        """Every actor writes its part of the layer's results; returns their keys, in shard order."""
        refs = [
            a.write_outputs.remote(outputs, i, first)
            for i, (a, first) in enumerate(zip(self.actors, firsts, strict=True))
        ]
        return ray.get(refs, timeout=self.timeout)
