"""Independent pieces of work (groups of images coded with the same filters) on several threads of this process.

An image's coding is a problem of its own, so a shard codes its images in groups (:mod:`solver.models.shard`).
On small groups a pass over one group's arrays is too short for the thread pools of numba, FFTW or scipy.fft to
pay off (:data:`solver.backend.PARALLEL_MIN_ENTRIES`): such a shard used one core whatever its budget. Coding
several groups at once, each on one thread, uses the budget instead: the fused kernels release the GIL (they are
compiled ``nogil``), as do FFTW's and scipy.fft's transforms, so the threads run side by side except for the
Python between passes. Each group's arithmetic is unchanged (the same transforms on the same arrays), so the
result does not depend on how many threads coded it.

The threads stay alive between calls, so that FFTW's plans, which are cached per thread (:mod:`solver.fftw`),
are made once.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from .backend import thread_budget, threads_capped
from .operators import kernels
from .stopping import under_this_stop

T = TypeVar("T")
R = TypeVar("R")


@functools.cache
def _pool(pid: int, threads: int) -> ThreadPoolExecutor:
    """The pool of `threads` threads of process `pid` (a forked child makes its own: threads do not fork)."""
    return ThreadPoolExecutor(max_workers=threads, thread_name_prefix="deconv-group")


def threads_for_pieces(n_pieces: int) -> int:
    """How many threads :func:`map_concurrently` would use for `n_pieces` pieces: the calling thread's budget
    (:func:`solver.backend.thread_budget`), at most one per piece, 1 where numba's threading layer cannot be
    entered from several threads at once."""
    threads = min(n_pieces, thread_budget())
    if threads > 1 and not kernels.thread_safe():
        return 1
    return max(1, threads)


def map_concurrently(fn: Callable[[T], R], pieces: Sequence[T]) -> list[R]:
    """``[fn(p) for p in pieces]``, on up to :func:`threads_for_pieces` threads at once, each running its passes on
    one thread (:func:`solver.backend.threads_capped`) under the caller's stop (:func:`solver.stopping.stop_on`).
    The first exception is raised once every piece has ended."""
    threads = threads_for_pieces(len(pieces))
    if threads <= 1:
        return [fn(p) for p in pieces]
    watched = under_this_stop(fn)

    def one(piece: T) -> R:
        with threads_capped(1):
            return watched(piece)

    futures = [_pool(os.getpid(), threads).submit(one, p) for p in pieces]
    errors: list[BaseException] = []
    results: list[Any] = []
    for f in futures:  # every piece ends before this returns: none still writes into the caller's arrays
        try:
            results.append(f.result())
        except BaseException as exc:  # noqa: BLE001  (re-raised below, the first one)
            errors.append(exc)
    if errors:
        raise errors[0]
    return results
