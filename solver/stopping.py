"""Stopping a long computation from outside: the iteration loops call :func:`check_stop` once per iteration.

A caller that may have to end a run early (a cancelled job, a service shutting down, a shard actor told to stop)
runs it inside :func:`stop_on`, with a cheap callable that turns true when the run must end. Every iteration of
the inference loops, the filter updates, the power and conjugate-gradient iterations calls :func:`check_stop`,
which raises :class:`Stopped` once that callable says so. Outside :func:`stop_on` the check is one thread-local
read, and inside it one clock read per iteration, with the callable asked at most every `every` seconds: an
iteration takes microseconds at least, so the check costs nothing measurable.

The stop is per thread: a Ray actor running calls in a thread pool stops the call of the thread that checks.
A run stopped this way leaves its state half-updated (ADMM writes its iterates in place): a caller resumes from
its last checkpoint, never from that state.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["Stopped", "check_stop", "stop_on", "under_this_stop"]


class Stopped(Exception):  # noqa: N818  (control flow, not an error)
    """A run was asked to stop (:func:`stop_on`) before it finished; its state is not a consistent one."""


class _Watch:
    __slots__ = ("every", "next_look", "should_stop")

    def __init__(self, should_stop: Callable[[], bool], every: float):
        self.should_stop = should_stop
        self.every = every
        self.next_look = 0.0


class _Local(threading.local):
    watch: _Watch | None = None  # a class default: a thread that never set one reads None without a miss


_local = _Local()


def check_stop() -> None:
    """Raise :class:`Stopped` when the :func:`stop_on` of this thread says so (a no-op outside one)."""
    watch = _local.watch
    if watch is None:
        return
    now = time.monotonic()
    if now < watch.next_look:
        return
    watch.next_look = now + watch.every
    if watch.should_stop():
        raise Stopped("the run was asked to stop")


@contextmanager
def stop_on(should_stop: Callable[[], bool] | None, *, every: float = 0.05) -> Iterator[None]:
    """Within this block, the loops of this thread raise :class:`Stopped` once `should_stop()` is true.

    Parameters
    ----------
    should_stop : callable or None
        Asked at most every `every` seconds of work (None: nothing to watch; the block changes nothing).
    every : float
        Seconds between two looks; 0 asks at every iteration (for a flag as cheap as ``Event.is_set``).

    Examples
    --------
    >>> import numpy as np
    >>> from solver import encode
    >>> images = np.random.default_rng(0).standard_normal((1, 1, 16, 16))
    >>> with stop_on(lambda: True):
    ...     encode(images, np.ones((2, 1, 3, 3)) / 3, 0.1, method="fista", max_iter=1000)
    Traceback (most recent call last):
    ...
    solver.stopping.Stopped: the run was asked to stop
    """
    if should_stop is None:
        yield
        return
    if every < 0:
        raise ValueError(f"every must be a number of seconds >= 0, got {every!r}")
    outer = _local.watch
    if outer is not None:  # a stop already watched stops this block too
        inner = should_stop

        def should_stop() -> bool:
            return bool(inner()) or bool(outer.should_stop())

    _local.watch = _Watch(should_stop, every)
    try:
        yield
    finally:
        _local.watch = outer


def under_this_stop(fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, run under the calling thread's :func:`stop_on` wherever it is called: for work this thread hands to
    other threads, which must stop when it would."""
    watch = _local.watch
    if watch is None:
        return fn

    def watched(*args: Any, **kwargs: Any) -> Any:
        outer = _local.watch
        _local.watch = watch
        try:
            return fn(*args, **kwargs)
        finally:
            _local.watch = outer

    return watched
