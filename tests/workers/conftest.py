"""Fixtures of the workers tests: one local Ray cluster for the whole session, and a tiny dataset on disk with its
single-process reference run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from solver import LayerSpec, LearnConfig, PreprocessConfig, learn_layer
from solver.config import AdmmConfig, FilterUpdateConfig
from solver.models.learn import LearnResult


def _test_cluster_config():
    from workers.distributed.cluster import ClusterConfig  # noqa: PLC0415

    if os.environ.get("RAY_ADDRESS"):  # a head started for the test run (saves a cluster start per session)
        return ClusterConfig()
    return ClusterConfig(address="local", num_cpus=2, object_store_memory=200 * 2**20)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster (2 CPUs, 200 MiB object store, no dashboard) shared by every Ray test."""
    pytest.importorskip("ray")
    from workers.distributed.cluster import connect, shutdown  # noqa: PLC0415

    context = connect(_test_cluster_config())
    yield context
    shutdown()


@pytest.fixture
def ray_session(ray_cluster):
    """The session cluster, connected again if a test (the multi-node one) had to shut it down."""
    from workers.distributed.cluster import connect  # noqa: PLC0415

    return connect(_test_cluster_config())


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> list[Path]:
    """Six 16x16 float64 images, one .npy file each, named in order."""
    folder = tmp_path_factory.mktemp("images")
    images = np.random.default_rng(7).standard_normal((6, 16, 16))
    paths = [folder / f"image-{i}.npy" for i in range(len(images))]
    list(map(np.save, paths, images))
    return paths


@pytest.fixture(scope="session")
def learn_config() -> LearnConfig:
    """Tiny, float64, with every preprocessing step that matters for sharding (per image, and dataset-wide)."""
    return LearnConfig(
        layers=[LayerSpec(n_filters=3, filter_size=3, lam=0.1)],
        inference=AdmmConfig(max_iter=5),
        filter_update=FilterUpdateConfig(max_iter=5),
        n_iter=4,
        preprocess=PreprocessConfig(contrast_normalise=True, cn_size=3, rescale=True),
        seed=3,
        dtype="float64",
    )


@pytest.fixture(scope="session")
def reference(dataset, learn_config) -> LearnResult:
    """The single-process run on the stacked images: what every distributed run must give."""
    return learn_layer(np.stack([np.load(p) for p in dataset]), learn_config, backend="numpy")
