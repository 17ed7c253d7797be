"""What a backend says of where it computes (the line a job's log shows for each shard actor)."""

from __future__ import annotations

import pytest

from solver.backend import get_backend


@pytest.mark.parametrize(("workers", "said"), [(1, "numpy on the CPU (1 thread)"), (3, "numpy on the CPU (3 threads)")])
def test_the_cpu_backend_names_its_threads(workers, said):
    assert get_backend("numpy", workers=workers).describe() == said


@pytest.mark.gpu
def test_the_gpu_backend_names_its_device_as_cuda_does(monkeypatch):
    import cupy  # noqa: PLC0415

    device = cupy.cuda.Device().id
    name = cupy.cuda.runtime.getDeviceProperties(device)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert get_backend("cupy").describe() == f"cupy on {name} (CUDA device {device})"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")  # what Ray sets in an actor given one GPU
    assert get_backend("cupy").describe() == f"cupy on {name} (CUDA device {device} of CUDA_VISIBLE_DEVICES=0)"
