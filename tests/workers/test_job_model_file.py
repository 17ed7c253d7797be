"""A finished job's stored model as one model file: loaded in a fresh process, it encodes and reconstructs as the
service does."""

from __future__ import annotations

import numpy as np
import pytest

from solver import LayerSpec, LearnConfig, learn_stack
from solver.config import AdmmConfig
from tests.solver.test_model_file import in_fresh_process
from workers.distributed.checkpoint import npy_bytes
from workers.jobs.models import JobModel, ModelNotReadyError, model_file
from workers.jobs.models import load_model as load_job_model
from workers.jobs.store import JobStore


@pytest.fixture
def images() -> np.ndarray:
    return np.random.default_rng(3).standard_normal((3, 1, 14, 14)).astype(np.float32)


def test_job_model_file_encodes_as_the_service_does_in_a_fresh_process(tmp_path, images):
    # a job's model as the runner stores it: filters-L<l>.npy, connectivity-L<l>.npy and model.json
    result = learn_stack(
        images,
        LearnConfig(
            layers=[LayerSpec(n_filters=4, filter_size=3, lam=0.1), LayerSpec(n_filters=3, filter_size=3, lam=0.2)],
            inference=AdmmConfig(max_iter=5),
            n_iter=2,
            boundary="valid",
        ),
    )
    store = JobStore(tmp_path / "data")
    job, _ = store.submit({"test": True}, n_layers=2, n_iter=2)
    arrays, model_json = JobModel(result.model, AdmmConfig(max_iter=5)).artifacts()
    for name, array in arrays.items():
        store.put_artifact(job.id, f"{name}.npy", npy_bytes(array), "application/x-npy")
    store.put_artifact(job.id, "model.json", model_json, "application/json")
    (tmp_path / "job.deconv").write_bytes(model_file(store, job.id))
    fresh = in_fresh_process(tmp_path, tmp_path / "job.deconv", images)
    served = load_job_model(store, job.id)  # what POST /models/{id}/encode and POST /reconstruct run
    code = served.encode(images)
    np.testing.assert_array_equal(fresh["L1"], code.maps[0])
    np.testing.assert_array_equal(fresh["L2"], code.maps[1])
    np.testing.assert_array_equal(fresh["recon"], served.project(code.maps[1], layer=2))


def test_a_job_without_a_model_has_no_model_file(tmp_path):
    store = JobStore(tmp_path / "data")
    job, _ = store.submit({"test": True}, n_layers=1, n_iter=1)
    with pytest.raises(ModelNotReadyError, match="has not succeeded"):
        model_file(store, job.id)
