"""Independent pieces of work (groups of images coded with the same filters) on several threads of this process.

An image's coding is a problem of its own, so a shard codes its images in groups (:mod:`solver.models.shard`).
On small groups a pass over one group's arrays is too short for the thread pools of numba, FFTW or scipy.fft to
pay off (:data:`solver.backend.PARALLEL_MIN_ENTRIES`): such a shard used one core whatever its budget. Coding
several groups at once, each on one thread, uses the budget instead: the fused kernels release the GIL (they are
compiled ``nogil``), as do FFTW's and scipy.fft's transforms, so the threads run side by side except for the
Python between passes. Each group's arithmetic is unchanged (the same transforms on the same arrays), so the
result does not depend on how many threads coded it.

The calling thread codes pieces too, beside helper threads started for the call and ended with it (daemon
threads: a process that exits does not wait for them, and they keep nothing, such as FFTW plans, past the call).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from .backend import thread_budget, threads_capped
from .operators import kernels
from .stopping import stop_on, under_this_stop

T = TypeVar("T")
R = TypeVar("R")


def threads_for_pieces(n_pieces: int) -> int:
    """How many threads :func:`map_concurrently` would use for `n_pieces` pieces: the calling thread's budget
    (:func:`solver.backend.thread_budget`), at most one per piece, 1 where numba's threading layer cannot be
    entered from several threads at once."""
    threads = min(n_pieces, thread_budget())
    if threads > 1 and not kernels.thread_safe():
        return 1
    return max(1, threads)


class _Run:
    """The pieces of one call, taken in order by its threads; the first error stops the rest."""

    def __init__(self, fn: Callable[[Any], Any], pieces: Sequence[Any]):
        self.fn, self.pieces = fn, pieces
        self.results: list[Any] = [None] * len(pieces)
        self.error: BaseException | None = None
        self.failed = threading.Event()
        self._next = 0
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._running = 0  # helper threads started and not yet ended

    def fail(self, exc: BaseException) -> None:
        """Record `exc` and stop the others. The first error is kept, but an interrupt (Ctrl-C, SystemExit) wins
        over an ordinary error, which it carries as its context: a caller catching Exception must not swallow it."""
        with self._lock:
            first = self.error
            if first is None:
                self.error = exc
            elif isinstance(exc, (KeyboardInterrupt, SystemExit)) and isinstance(first, Exception):
                exc.__context__ = first
                self.error = exc
            self.failed.set()

    def work(self) -> None:
        # the running pieces stop at their next check_stop once a piece failed (or the caller's stop says so)
        try:
            with threads_capped(1), stop_on(self.failed.is_set):
                while True:
                    with self._lock:
                        if self.failed.is_set() or self._next == len(self.pieces):
                            return
                        i, self._next = self._next, self._next + 1
                    self.results[i] = self.fn(self.pieces[i])
        except BaseException as exc:  # noqa: BLE001  (re-raised by the caller, wherever it arrived)
            self.fail(exc)

    def helper(self) -> Callable[[], None]:
        """The body of a helper thread: the caller's stop, :meth:`work`, then the count of running helpers."""
        work = under_this_stop(self.work)
        with self._lock:
            self._running += 1

        def body() -> None:
            try:
                work()
            finally:
                with self._lock:
                    self._running -= 1
                    self._done.notify_all()

        return body

    def not_started(self) -> None:
        """A helper made by :meth:`helper` whose thread did not start."""
        with self._lock:
            self._running -= 1
            self._done.notify_all()

    def wait_for_helpers(self) -> None:
        """Until every helper has ended its work; an interrupt meanwhile stops them and is raised afterwards.
        (A piece that never calls check_stop keeps this waiting until it ends.)"""
        while True:
            try:
                with self._lock:
                    while self._running > 0:
                        self._done.wait()
                return
            except BaseException as exc:  # noqa: BLE001  (an interrupt of the waiting caller: stop, wait, raise)
                self.fail(exc)


def map_concurrently(fn: Callable[[T], R], pieces: Sequence[T], *, at_most: int | None = None) -> list[R]:
    """``[fn(p) for p in pieces]``, on up to :func:`threads_for_pieces` threads (and `at_most`) at once, the calling
    thread among them, each running its passes on one thread (:func:`solver.backend.threads_capped`) under the
    caller's stop (:func:`solver.stopping.stop_on`).

    The first exception stops the pieces still running at their next :func:`~solver.stopping.check_stop`, skips
    those not started, and is raised once every thread has ended its work (an interrupt, a ``KeyboardInterrupt`` of
    the caller included, is raised rather than an earlier error): no piece still writes into the caller's arrays
    when this returns or raises. A piece that never calls check_stop is waited for."""
    threads = threads_for_pieces(len(pieces))
    if at_most is not None:
        threads = max(1, min(threads, at_most))
    if threads <= 1:
        return [fn(p) for p in pieces]
    run = _Run(fn, pieces)
    try:
        for i in range(threads - 1):
            body = run.helper()
            try:
                threading.Thread(target=body, name=f"deconv-group-{i}", daemon=True).start()
            except BaseException:
                run.not_started()
                raise
        run.work()
    except BaseException as exc:  # noqa: BLE001  (a helper that could not start, or an interrupt between pieces)
        run.fail(exc)
    run.wait_for_helpers()
    if run.error is not None:
        raise run.error
    return run.results
