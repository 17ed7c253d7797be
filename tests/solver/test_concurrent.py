"""Pieces of work on several threads (solver.concurrent): order, errors and interrupts, the caller's stop, one
thread each, nothing left behind."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time

import pytest

import solver.backend as backend
from solver import concurrent
from solver.backend import PARALLEL_MIN_ENTRIES, fftw_threads, thread_budget, threads_for
from solver.operators import kernels
from solver.stopping import Stopped, check_stop, stop_on


@pytest.fixture
def budget(monkeypatch):
    monkeypatch.setattr(backend, "cpu_budget", lambda: 4)


def _helpers_alive() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("deconv-group")]


def _busy(seconds: float) -> str:
    """A piece that checks the stop as the solvers' loops do."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        check_stop()
        time.sleep(0.001)
    return "ran to the end"


def test_results_come_in_the_order_of_the_pieces_from_threads_of_one_thread_each(budget):
    seen = threading.Barrier(4, timeout=20)  # fails unless four pieces run at the same time

    def piece(i):
        seen.wait()
        time.sleep(0.01 * (4 - i))  # the first piece ends last
        return i, threading.current_thread().name, threads_for(PARALLEL_MIN_ENTRIES, 8), fftw_threads(2**30, 8)

    out = concurrent.map_concurrently(piece, [0, 1, 2, 3])
    assert [i for i, *_ in out] == [0, 1, 2, 3]
    assert {name.rstrip("0123456789") for _, name, *_ in out} == {"MainThread", "deconv-group-"}
    assert {(t, f) for *_, t, f in out} == {(1, 1)}
    # outside the pieces the caller's budget is whole again, and no helper thread is left
    assert threads_for(PARALLEL_MIN_ENTRIES, 8) == 8 and thread_budget() == 4
    assert _helpers_alive() == []


def test_at_most_bounds_the_pieces_in_flight(budget):
    lock, running, peak = threading.Lock(), [0], [0]

    def piece(_):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    concurrent.map_concurrently(piece, range(8), at_most=2)
    assert peak[0] == 2


@pytest.mark.parametrize("error", [ValueError("piece 1"), KeyboardInterrupt()])
def test_the_first_error_stops_the_other_pieces_and_is_raised_when_they_have_ended(budget, error):
    started = []

    def piece(i):
        started.append(i)
        if i == 1:
            time.sleep(0.1)
            raise error
        return _busy(30)

    t0 = time.monotonic()
    with pytest.raises(type(error)):
        concurrent.map_concurrently(piece, list(range(12)))
    assert time.monotonic() - t0 < 10  # the busy pieces stopped at their next check, not after 30 s
    assert sorted(started) == [0, 1, 2, 3]  # the pieces not started were skipped
    assert _helpers_alive() == []


def test_pieces_stop_when_the_caller_is_stopped(budget):
    with stop_on(lambda: True, every=0), pytest.raises(Stopped):
        concurrent.map_concurrently(lambda _: _busy(30), [0, 1, 2])
    assert _helpers_alive() == []


def test_one_thread_budget_or_one_piece_stays_on_the_calling_thread(monkeypatch):
    name = lambda _: threading.current_thread().name  # noqa: E731
    monkeypatch.setattr(backend, "cpu_budget", lambda: 1)
    assert concurrent.map_concurrently(name, [0, 1]) == ["MainThread"] * 2
    monkeypatch.setattr(backend, "cpu_budget", lambda: 4)
    assert concurrent.map_concurrently(name, [0]) == ["MainThread"]
    assert concurrent.map_concurrently(name, [0, 1], at_most=1) == ["MainThread"] * 2
    assert concurrent.threads_for_pieces(3) == 3 and concurrent.threads_for_pieces(9) == 4


def test_no_threads_where_numba_cannot_be_entered_from_several(monkeypatch, budget):
    monkeypatch.setattr(kernels, "thread_safe", lambda: False)
    assert concurrent.threads_for_pieces(4) == 1
    assert concurrent.map_concurrently(lambda _: threading.current_thread().name, [0, 1]) == ["MainThread"] * 2


def _python(code: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120, env=env or None
    )


@pytest.mark.skipif(not kernels.available(), reason="numba is not installed")
def test_asking_whether_numba_is_thread_safe_starts_no_thread():
    # a process whose OpenMP threads have started cannot fork: the answer must not start them
    out = _python(
        """
        from numba.np.ufunc import parallel
        from solver.operators import kernels
        print(kernels.thread_safe(), parallel._is_initialized)
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["True", "False"]


def test_a_thread_that_outlives_the_main_thread_still_codes_concurrently():
    # non-daemon work after the main thread has returned (what a service's job thread may be at exit)
    out = _python(
        """
        import threading, time
        import solver.backend as backend
        from solver import concurrent
        backend.cpu_budget = lambda: 2

        both = threading.Barrier(2, timeout=20)

        def piece(i):
            if i < 2:
                both.wait()  # two pieces at the same time, or a broken barrier
            return threading.current_thread().name[:6]

        def late():
            time.sleep(0.3)
            print(sorted(set(concurrent.map_concurrently(piece, [0, 1, 2, 3]))))

        threading.Thread(target=late).start()
        """
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['Thread', 'deconv']"


@pytest.mark.skipif(not kernels.available(), reason="numba is not installed")
def test_numba_s_threading_layer_here_allows_concurrent_kernels():
    # the kernels are compiled nogil; the layer decides whether two threads may enter them at once
    assert kernels.thread_safe()


def _interrupt_main_in(seconds: float) -> threading.Timer:
    """A Ctrl-C in `seconds`: a real SIGINT, which, unlike _thread.interrupt_main, wakes a blocked wait."""
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415

    timer = threading.Timer(seconds, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    return timer


def test_a_ctrl_c_of_the_waiting_caller_returns_only_once_the_helpers_have_ended(budget):
    # Python 3.11's join gives up on a thread whose wait was interrupted: the call then returned with a piece
    # still running (still writing into the caller's arrays)
    started, ended = [], []

    def piece(i):
        started.append(i)
        try:
            time.sleep(0.05 if threading.current_thread() is threading.main_thread() else 1.0)  # no check_stop
        finally:
            ended.append(i)

    timer = _interrupt_main_in(0.3)
    try:
        with pytest.raises(KeyboardInterrupt):
            concurrent.map_concurrently(piece, [0, 1], at_most=2)
    finally:
        timer.cancel()
        timer.join()
    assert sorted(ended) == sorted(started) == [0, 1]
    assert _helpers_alive() == []


def test_an_interrupt_wins_over_an_earlier_error_and_carries_it(budget):
    def piece(_):
        if threading.current_thread() is threading.main_thread():
            time.sleep(1.0)  # interrupted at 0.3 s
        else:
            time.sleep(0.1)  # the caller has its piece by then
            raise ValueError("a group failed")

    timer = _interrupt_main_in(0.3)
    try:
        with pytest.raises(KeyboardInterrupt) as caught:
            concurrent.map_concurrently(piece, [0, 1], at_most=2)
    finally:
        timer.cancel()
        timer.join()
    assert isinstance(caught.value.__context__, ValueError)


def test_a_helper_that_cannot_start_stops_the_others(budget, monkeypatch):
    starts = []

    class Thread(threading.Thread):
        def start(self):
            starts.append(self.name)
            if len(starts) == 2:
                raise RuntimeError("can't start new thread")
            super().start()

    monkeypatch.setattr(concurrent.threading, "Thread", Thread)
    ran = []

    def piece(i):
        _busy(0.1)
        ran.append(i)

    with pytest.raises(RuntimeError, match="can't start"):
        concurrent.map_concurrently(piece, list(range(12)))
    done = len(ran)
    time.sleep(0.3)
    assert len(ran) == done < 12  # nothing ran after the raise, and the helper that started stopped early
    assert _helpers_alive() == []


def test_a_ctrl_c_between_two_pieces_stops_the_helpers(budget, monkeypatch):
    class Interrupting:
        """The run's lock, with a Ctrl-C landing in the calling thread as it takes its second piece."""

        def __init__(self, lock):
            self.lock, self.entries = lock, 0

        def __enter__(self):
            if threading.current_thread() is threading.main_thread():
                self.entries += 1
                if self.entries == 2:
                    raise KeyboardInterrupt
            return self.lock.__enter__()

        def __exit__(self, *exc):
            return self.lock.__exit__(*exc)

    real_init = concurrent._Run.__init__

    def init(run, *args):
        real_init(run, *args)
        run._lock = Interrupting(run._lock)

    monkeypatch.setattr(concurrent._Run, "__init__", init)
    ran = []

    def piece(i):
        _busy(0.1)
        ran.append(i)

    with pytest.raises(KeyboardInterrupt):
        concurrent.map_concurrently(piece, list(range(12)), at_most=2)
    assert len(ran) < 12


@pytest.mark.skipif(not kernels.available(), reason="numba is not installed")
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("NUMBA_THREADING_LAYER", "workqueue"),
        ("NUMBA_THREADING_LAYER", "OMP"),
        ("NUMBA_THREADING_LAYER", "threadsafe"),
        ("NUMBA_THREADING_LAYER", "forksafe"),
        ("NUMBA_THREADING_LAYER_PRIORITY", "workqueue omp tbb"),
        ("NUMBA_THREADING_LAYER_PRIORITY", "tbb workqueue omp"),
        ("NUMBA_THREADING_LAYER_PRIORITY", "omp tbb workqueue"),
    ],
)
def test_the_thread_safety_answer_is_that_of_the_layer_numba_then_picks(variable, value):
    # a wrong True lets two threads enter numba's workqueue layer, which aborts the process
    import os  # noqa: PLC0415

    out = _python(
        """
        import numba, numpy as np
        from solver.operators import kernels
        answer = kernels.thread_safe()

        @numba.njit(parallel=True)
        def touch(a):
            for i in numba.prange(a.size):
                a[i] = 1.0

        touch(np.zeros(4))
        print(answer, numba.threading_layer() in ("omp", "tbb"))
        """,
        **{**os.environ, variable: value},
    )
    assert out.returncode == 0, out.stderr
    answer, picked = out.stdout.split()
    assert answer == picked
