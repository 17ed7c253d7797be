"""An online job run by :func:`workers.jobs.learning.execute`: killed after a checkpoint, run again, it resumes and
ends with the filters of an uninterrupted run."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest

from workers.jobs.learning import execute
from workers.jobs.spec import JobSpec, progress_steps
from workers.jobs.store import JobStore

SPEC = {
    "layers": [{"n_filters": 3, "filter_size": 3, "lam": 0.2}],
    "inference": {"method": "admm", "max_iter": 5},
    "filter_update": {"max_iter": 20},
    "seed": 3,
    "workers": 1,
    "learning": {"mode": "online", "batch_size": 2, "n_epochs": 2, "held_out": 1, "checkpoint_every": 2},
}


class Killed(RuntimeError):
    """What the service's death looks like to the run: an exception out of the middle of it."""


def _submit(store: JobStore, dataset_id: str):
    spec = {**SPEC, "dataset_id": dataset_id}
    store.submit(spec, n_layers=1, n_iter=progress_steps(JobSpec.model_validate(spec), 7))
    return store.claim_next()


def _filters(store: JobStore, job_id: str) -> np.ndarray:
    return np.load(io.BytesIO(store.read_artifact(job_id, "filters-L1.npy")))


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_a_killed_online_job_resumes_from_its_checkpoint_to_the_same_filters(ray_session, tmp_path):
    store = JobStore(tmp_path / "data")
    rng = np.random.default_rng(0)
    dataset = store.add_dataset([(f"im{i}", rng.integers(0, 255, (1, 12, 12), dtype=np.uint8)) for i in range(7)])
    whole = _submit(store, dataset.id)
    execute(store, whole)
    killed = _submit(store, dataset.id)
    update = store.update_progress

    def dies_at_the_fifth_batch(job_id, **progress):
        if progress["iteration"] == 10:  # images read after batch 5: the newest checkpoint is of batch 4
            raise Killed
        update(job_id, **progress)

    store.update_progress = dies_at_the_fifth_batch
    with pytest.raises(Killed):
        execute(store, killed)
    checkpoints = store.job_work(killed.id).child("layers/L1/checkpoints").list()
    assert checkpoints == ["ckpt-000002", "ckpt-000004"]
    store.update_progress = update
    seen = []
    store.update_progress = lambda job_id, **progress: (seen.append(progress["iteration"]), update(job_id, **progress))
    execute(store, killed)
    assert seen == [10, 12]  # batches 5 and 6 only: 2 passes over 6 training images
    np.testing.assert_array_equal(_filters(store, killed.id), _filters(store, whole.id))
    objectives = [
        [h["objective"] for h in json.loads(store.read_artifact(j.id, "history.json"))] for j in (killed, whole)
    ]
    assert objectives[0] == objectives[1] and len(objectives[0]) == 6
    assert not store.job_work(killed.id).list()  # the work folder goes once the artifacts are stored
