"""Pieces of work on several threads (solver.concurrent): order, errors, the caller's stop, one thread each."""

from __future__ import annotations

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


def test_results_come_in_the_order_of_the_pieces_from_threads_of_one_thread_each(budget):
    def piece(i):
        time.sleep(0.01 * (4 - i))  # the first piece ends last
        return i, threading.current_thread().name, threads_for(PARALLEL_MIN_ENTRIES, 8), fftw_threads(2**30, 8)

    out = concurrent.map_concurrently(piece, [0, 1, 2, 3])
    assert [i for i, *_ in out] == [0, 1, 2, 3]
    assert all(name.startswith("deconv-group") for _, name, *_ in out)
    assert {(t, f) for *_, t, f in out} == {(1, 1)}
    # outside the pieces the caller's budget is whole again
    assert threads_for(PARALLEL_MIN_ENTRIES, 8) == 8 and thread_budget() == 4


def test_the_first_error_is_raised_once_every_piece_has_ended(budget):
    ended = []

    def piece(i):
        if i in (1, 2):
            raise ValueError(f"piece {i}")
        time.sleep(0.05)
        ended.append(i)
        return i

    with pytest.raises(ValueError, match="piece 1"):
        concurrent.map_concurrently(piece, [0, 1, 2, 3])
    assert sorted(ended) == [0, 3]


def test_pieces_stop_when_the_caller_is_stopped(budget):
    def piece(_):
        for _ in range(1000):
            check_stop()
            time.sleep(0.001)
        return "ran to the end"

    with stop_on(lambda: True, every=0), pytest.raises(Stopped):
        concurrent.map_concurrently(piece, [0, 1, 2])


def test_one_thread_budget_or_one_piece_stays_on_the_calling_thread(monkeypatch):
    name = lambda _: threading.current_thread().name  # noqa: E731
    monkeypatch.setattr(backend, "cpu_budget", lambda: 1)
    assert concurrent.map_concurrently(name, [0, 1]) == ["MainThread"] * 2
    monkeypatch.setattr(backend, "cpu_budget", lambda: 4)
    assert concurrent.map_concurrently(name, [0]) == ["MainThread"]
    assert concurrent.threads_for_pieces(3) == 3 and concurrent.threads_for_pieces(9) == 4


def test_no_threads_where_numba_cannot_be_entered_from_several(monkeypatch, budget):
    monkeypatch.setattr(kernels, "thread_safe", lambda: False)
    assert concurrent.threads_for_pieces(4) == 1
    assert concurrent.map_concurrently(lambda _: threading.current_thread().name, [0, 1]) == ["MainThread"] * 2


@pytest.mark.skipif(not kernels.available(), reason="numba is not installed")
def test_numba_s_threading_layer_here_allows_concurrent_kernels():
    # the kernels are compiled nogil; the layer decides whether two threads may enter them at once
    assert kernels.thread_safe()
