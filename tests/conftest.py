"""Shared fixtures of the test suite: a seeded generator, the two real dtypes, the array backends."""

from __future__ import annotations

import numpy as np
import pytest

from solver.backend import Backend, get_backend, gpu_available


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with a visible reason, every test marked ``gpu`` when cupy or a CUDA device is missing."""
    if gpu_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs cupy and a CUDA device (solver.backend.gpu_available() is False)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request: pytest.FixtureRequest) -> type:
    return request.param


@pytest.fixture(params=["numpy", pytest.param("cupy", marks=pytest.mark.gpu)])
def backend_name(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def backend(backend_name: str) -> Backend:
    return get_backend(backend_name)
