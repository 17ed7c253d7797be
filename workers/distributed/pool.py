"""The pool protocol of :func:`solver.models.learn.alternate` over Ray shard actors, and the traffic it causes.

Every call puts its array argument in the object store once (``ray.put``), calls every actor with the reference,
and gathers every result (:func:`gather`) within the call's deadline (:mod:`workers.distributed.deadlines`);
results come back in shard order, so the learning loop's sums are taken in the same order as in one process.

While it waits, :func:`gather` asks the run's `interrupt` callable a few times a second: once it is true, every
actor is told to stop its call (``cancel``, which the actor's inner loops see within a fraction of a second) and
the run ends with :class:`Interrupted`. An actor past its deadline is killed (it could hold its only call slot
for ever) and the call fails with :class:`CallTimeoutError`, which the coordinator counts as a shard failure.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import numpy as np
import ray
from ray import exceptions as ray_errors

from solver.models.shard import CodeStats

from .deadlines import CallDeadlines

logger = logging.getLogger("workers.distributed.coordinator")

_POLL_S = 0.2  # how often a wait asks `interrupt`
_STOP_WAIT_S = 1.0  # how long an interrupted wait lets the actors' calls end by themselves
_KILL_WAIT_S = 10.0  # how long a timed-out call waits for the actors it killed to be gone


class CallTimeoutError(ray_errors.GetTimeoutError):
    """Shard actors did not answer a call (or did not start) within its deadline."""


class Interrupted(Exception):  # noqa: N818  (control flow, not an error)
    """The run was interrupted while shard actors were working (a cancel, or a service that stops)."""


def gather(
    refs: Sequence[Any],
    actors: Sequence[Any],
    *,
    what: str,
    deadline: float | None,
    interrupt: Callable[[], bool] | None = None,
    label: str | None = None,
) -> list[Any]:
    """The results of `refs` (one per actor of `actors`, in order), within `deadline` seconds.

    Parameters
    ----------
    refs : sequence of ray.ObjectRef
    actors : sequence of actor handles
        ``actors[i]`` computes ``refs[i]``.
    what : str
        The call, for errors and logs (``"code"``).
    deadline : float or None
        Seconds; None: no deadline.
    interrupt : callable, optional
        Asked every 0.2 s while waiting.
    label : str, optional
        What timed out, for the error (default: ``shard actor call '<what>'``).

    Raises
    ------
    CallTimeoutError
        Past the deadline; the actors that did not answer are killed first.
    Interrupted
        When `interrupt` turned true; the actors were told to stop their calls.
    """
    refs = list(refs)
    end = None if deadline is None else time.monotonic() + deadline
    pending = refs
    while pending:
        # asked before every wait: a run of many short calls sees it at its next call, not only in a long one
        if interrupt is not None and interrupt():
            _stop_calls(actors, pending, what)
        left = None if end is None else max(end - time.monotonic(), 0.0)
        wait = left if interrupt is None else (_POLL_S if left is None else min(_POLL_S, left))
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=wait)
        if pending and end is not None and time.monotonic() >= end:
            waiting = set(pending)
            late = [i for i, ref in enumerate(refs) if ref in waiting]
            for i in late:
                ray.kill(actors[i], no_restart=True)
            _wait_killed([actors[i] for i in late])
            raise CallTimeoutError(
                f"{label or f'shard actor call {what!r}'} of shard(s) {late} did not answer within its deadline "
                f"of {deadline:.3g} s (estimated from the work); the actor(s) were stopped"
            )
    return ray.get(refs)


def _wait_killed(actors: Sequence[Any], timeout_s: float = _KILL_WAIT_S) -> None:
    """Return once every actor in `actors` (just killed) fails a ping, or after `timeout_s`. ``ray.kill`` returns
    before the actor is gone, and an actor with a call slot to spare answers a ping meanwhile: the fleet's probe
    at the next attempt would then keep it, and the attempt fail on its death instead of on its own merits."""
    end = time.monotonic() + timeout_s
    for actor in actors:
        while (left := end - time.monotonic()) > 0:
            try:
                ray.get(actor.ping.remote(), timeout=left)
            except ray_errors.RayError:  # dead (RayActorError), or stuck past the wait (GetTimeoutError)
                break
            time.sleep(0.05)


def _stop_calls(actors: Sequence[Any], pending: list[Any], what: str) -> None:
    """Tell every actor to stop its call, give the calls a moment to end, and raise :class:`Interrupted`."""
    for actor in actors:
        actor.cancel.remote()
    _, left = ray.wait(pending, num_returns=len(pending), timeout=_STOP_WAIT_S)
    logger.info(
        "interrupted during %r: %d of %d shard call(s) stopped within %.1f s",
        what,
        len(pending) - len(left),
        len(pending),
        _STOP_WAIT_S,
    )
    raise Interrupted(f"interrupted while the shard actors ran {what!r}")


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
    gathers all results (:func:`gather`) within the call's deadline from `deadlines` (None: no deadline), asking
    `interrupt` while it waits.
    """

    def __init__(
        self,
        actors: Sequence[Any],
        *,
        deadlines: CallDeadlines | None,
        traffic: Traffic | None = None,
        interrupt: Callable[[], bool] | None = None,
    ):
        if not actors:
            raise ValueError("a pool needs at least one shard actor")
        self.actors = list(actors)
        self.deadlines = deadlines
        self.traffic = Traffic() if traffic is None else traffic
        self.interrupt = interrupt

    def gather(self, refs: Sequence[Any], what: str) -> list[Any]:
        """The results of one call `what` of every actor (`refs`, in shard order), within its deadline."""
        deadline = None if self.deadlines is None else self.deadlines.of(what)
        return gather(refs, self.actors, what=what, deadline=deadline, interrupt=self.interrupt)

    def _broadcast(self, method: str, *args: Any, counted: bool = False) -> list[Any]:
        shared = [ray.put(a) if isinstance(a, np.ndarray) else a for a in args]
        refs = [getattr(actor, method).remote(*shared) for actor in self.actors]
        results = self.gather(refs, method)
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

    def peak(self) -> list[float]:
        return self._broadcast("peak")

    def set_lam(self, lam: float) -> None:
        self._broadcast("set_lam", lam)

    def states(self) -> list[dict[str, Any]]:
        return self._broadcast("state")

    def load_states(self, states: Sequence[dict[str, Any]]) -> None:
        if len(states) != len(self.actors):
            raise ValueError(f"states must hold one state per shard ({len(self.actors)}), got {len(states)}")
        self.gather([actor.load_state.remote(s) for actor, s in zip(self.actors, states, strict=True)], "load_state")

    def reset(self) -> None:
        self._broadcast("reset")

    def save_states(self, folder: Any) -> list[Any]:
        """Every actor writes its part of a checkpoint into `folder`; returns the parts (sha256, size), in order."""
        refs = [actor.save_state.remote(folder, index) for index, actor in enumerate(self.actors)]
        return self.gather(refs, "save_state")

    def restore(self, parts: Sequence[Any]) -> None:
        """Every actor reads its own part of a checkpoint from the store."""
        if len(parts) != len(self.actors):
            raise ValueError(f"a checkpoint must hold one part per shard ({len(self.actors)}), got {len(parts)}")
        self.gather([actor.restore.remote(p) for actor, p in zip(self.actors, parts, strict=True)], "restore")

    def write_outputs(self, outputs: Any, firsts: Sequence[int]) -> list[Any]:
        """Every actor writes its part of the layer's results; returns their keys, in shard order."""
        refs = [
            a.write_outputs.remote(outputs, i, first)
            for i, (a, first) in enumerate(zip(self.actors, firsts, strict=True))
        ]
        return self.gather(refs, "write_outputs")
