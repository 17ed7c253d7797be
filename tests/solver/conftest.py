"""Fixtures of the solver tests: the host build of the CUDA kernels (see :mod:`tests.solver.cuda_host`)."""

from __future__ import annotations

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
