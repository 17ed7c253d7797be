"""Fixtures of the solver tests: the host build of the CUDA kernels (see :mod:`tests.solver.cuda_host`), the
threads a shard codes its groups on."""

from __future__ import annotations

import threading
from collections.abc import Callable

import pytest

from solver.operators import gpu_kernels
from tests.solver.cuda_host import COMPILERS, Libraries, use_host_build


@pytest.fixture(scope="session")
def host_libraries(tmp_path_factory: pytest.TempPathFactory) -> Libraries:
    return Libraries(tmp_path_factory.mktemp("cuda-host"))


@pytest.fixture(params=COMPILERS)
def host_gpu_kernels(request: pytest.FixtureRequest, host_libraries: Libraries, monkeypatch: pytest.MonkeyPatch):
    """solver.operators.gpu_kernels on the host build of each compiler found (g++, nvcc)."""
    yield use_host_build(host_libraries[request.param], monkeypatch)
    gpu_kernels._module.cache_clear()


class GroupThreads:
    """Sets the thread budget of the coding groups (:mod:`solver.concurrent`) and watches them: the names of the
    threads that coded each group (``MainThread``, ``deconv-group``), and, with a budget above one, the first two
    groups of each call wait for each other (a call that coded them one after the other fails with a broken
    barrier)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch):
        import solver.backend as backend  # noqa: PLC0415
        import solver.models.shard_base as shard_base  # noqa: PLC0415

        self.budget = 1
        self.names: list[str] = []
        self.pieces: list[int] = []  # pieces of each call
        real = shard_base.map_concurrently

        def watched(fn: Callable, pieces: list, **kwargs) -> list:
            self.pieces.append(len(pieces))
            barrier = threading.Barrier(2, timeout=20) if self.budget > 1 and len(pieces) > 1 else None

            def one(piece):
                self.names.append(threading.current_thread().name.rstrip("0123456789").rstrip("-"))
                if barrier is not None and pieces.index(piece) < 2:
                    barrier.wait()
                return fn(piece)

            return real(one, pieces, **kwargs)

        monkeypatch.setattr(shard_base, "map_concurrently", watched)
        monkeypatch.setattr(backend, "cpu_budget", lambda: self.budget)

    def set(self, budget: int) -> None:
        self.budget = budget
        self.names.clear()
        self.pieces.clear()


@pytest.fixture
def group_threads(monkeypatch: pytest.MonkeyPatch) -> GroupThreads:
    return GroupThreads(monkeypatch)
