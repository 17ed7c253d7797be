"""What a job that does not succeed leaves in the stores: nothing. Its shards' parts (maps, switches, pooled maps,
reconstructions) and its checkpoints live in its work store until it succeeds, so a failed or cancelled job's go
with that folder, and an object of the content-addressed artifact store that another job shares is never deleted
for it. On a local folder and on S3 (a local moto server; slow, as is the cancelled job: each is a Ray job)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.s3server import s3_server  # noqa: F401  (the session's S3 server)
from tests.workers.conftest import _test_cluster_config
from workers.jobs import learning as learning_module
from workers.jobs.artifacts import ArtifactCorruptError, open_artifact_store
from workers.jobs.objects import ObjectStore, write_array
from workers.jobs.runner import JobRunner
from workers.jobs.store import JobStore

# two layers, the first pooling: every kind of part is written (maps, switches and pooled maps of layer 1)
SPEC = {
    "layers": [
        {"n_filters": 3, "filter_size": 3, "lam": 0.1, "pool": [1, 2, 2]},
        {"n_filters": 3, "filter_size": 3, "lam": 0.1},
    ],
    "inference": {"method": "admm", "max_iter": 3},
    "n_iter": 2,
    "workers": 2,
    "backend": "numpy",
}


def _keys(store: ObjectStore) -> set[str]:
    """Every object's key in `store`, recursively."""
    if store.local:
        root = Path(store.url)
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()} if root.is_dir() else set()
    fs, root = store.remote("x")[0], store.url.split("://", 1)[1]
    fs.invalidate_cache()
    return {path[len(root) + 1 :] for path in fs.find(root)}


def _images() -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(5)
    return [(f"{i}.png", rng.integers(0, 255, (1, 16, 16), dtype=np.uint8)) for i in range(4)]


@pytest.fixture(params=["local", pytest.param("s3", marks=pytest.mark.slow)])
def store(request, tmp_path):
    artifacts = None if request.param == "local" else request.getfixturevalue("s3_server").url("artifacts")
    store = JobStore(tmp_path / "data", artifacts)
    yield store
    store.close()


def _stop_after_layer_1(monkeypatch, store: JobStore, how: str) -> list:
    """After layer 1 is saved: fail the job (``fail``) or cancel it (``cancel``, seen before layer 2). Returns
    the list that gets the work store's keys at that moment and what the shards wrote."""
    seen: list = []
    save = learning_module._save_layer

    def save_then_stop(folder, result, written, *args, **kwargs):
        done = save(folder, result, written, *args, **kwargs)
        seen.append((_keys(store.work), written))
        if how == "fail":
            raise RuntimeError("stopped after layer 1")
        store.request_cancel(folder.url.rstrip("/").split("/")[-3])  # <work>/<job id>/layers/L1
        return done

    monkeypatch.setattr(learning_module, "_save_layer", save_then_stop)
    return seen


def _run(store: JobStore, dataset_id: str) -> str:
    job, _ = store.submit({**SPEC, "dataset_id": dataset_id}, n_layers=2, n_iter=2)
    JobRunner(store, cluster=_test_cluster_config(), checkpoint_every=1).run_job(store.claim_next())
    return job.id


@pytest.mark.ray
@pytest.mark.parametrize("how", ["fail", pytest.param("cancel", marks=pytest.mark.slow)])
def test_a_failed_or_cancelled_job_leaves_nothing_in_the_stores(store, ray_session, monkeypatch, how):
    dataset = store.add_dataset(_images())
    artifacts = ObjectStore(store.artifacts.url)
    before = _keys(artifacts), _keys(store.work)
    seen = _stop_after_layer_1(monkeypatch, store, how)
    job_id = _run(store, dataset.id)
    assert store.get_job(job_id).status == ("failed" if how == "fail" else "cancelled")
    work = seen[0][0]
    parts = {k.rsplit("/", 1)[-1] for k in work if k.startswith(f"{job_id}/layers/L1/parts/")}
    assert parts == {f"{what}-{i:03d}.npy" for what in ("maps", "switches") for i in range(2)}  # it wrote them
    assert any(k.startswith(f"{job_id}/layers/L1/pooled-") for k in work)
    assert any(k.startswith(f"{job_id}/layers/L1/checkpoints/") for k in work)
    assert _keys(artifacts) == before[0]  # the dataset's images, nothing else
    assert _keys(store.work) == before[1] == set()


@pytest.mark.ray
def test_a_shared_part_survives_the_failure_of_a_job_that_wrote_it_too(store, ray_session, monkeypatch):
    """Two jobs of one spec on one dataset write identical parts, under one artifact key: the first succeeds, the
    second fails after its first layer; every artifact of the first is still there, intact."""
    dataset = store.add_dataset(_images())
    first = _run(store, dataset.id)
    assert store.get_job(first).status == "succeeded"
    records = store.list_artifacts(first)
    stored = _keys(ObjectStore(store.artifacts.url))
    seen = _stop_after_layer_1(monkeypatch, store, "fail")
    second = _run(store, dataset.id)
    assert store.get_job(second).status == "failed"
    shared = {r.key for r in records if r.name.startswith(("maps-L1.part-", "switches-L1.part-"))}
    assert {k for w in seen[0][1] for k in (w.maps.key, w.switches.key)} == shared and len(shared) == 4
    for record in records:
        assert store.artifacts.get(record.key)  # there, and its bytes still hash to its key
    assert _keys(ObjectStore(store.artifacts.url)) == stored


def _work_of(store: JobStore, job_id: str) -> None:
    work = store.job_work(job_id)
    work.write("layers/L1/checkpoints/000002/manifest.json", b"{}")
    work.write("layers/L1/parts/maps-000.npy", b"x" * 10)


def _submit(store: JobStore, dataset_id: str) -> str:
    return store.submit({**SPEC, "dataset_id": dataset_id}, n_layers=2, n_iter=2)[0].id


def test_restarts_and_cancels_in_the_queue_leave_no_work(store):
    """Without Ray: a job a restart ends (too many attempts, or cancelled while the service was down) and a job
    cancelled in the queue after an earlier attempt lose their work store; a start sweeps the work a killed
    service left of finished jobs, and keeps that of jobs that will run again and of folders it does not know."""
    dataset = store.add_dataset(_images())
    ended, cancelled_down, requeued = (_submit(store, dataset.id) for _ in range(3))
    for job_id in (ended, cancelled_down, requeued):
        assert store.claim(job_id) is not None
        _work_of(store, job_id)
    store.request_cancel(cancelled_down)  # seen by nobody: the service died
    store._connection().execute("UPDATE jobs SET attempts = 3 WHERE id = ?", (ended,))
    assert store.requeue_running(max_attempts=3) == [requeued]
    assert [store.get_job(j).status for j in (ended, cancelled_down)] == ["failed", "cancelled"]
    left = {k.split("/", 1)[0] for k in _keys(store.work)}
    assert left == {requeued}  # kept: it resumes from its checkpoint
    store.request_cancel(requeued)  # cancelled in the queue
    assert store.get_job(requeued).status == "cancelled" and _keys(store.work) == set()

    finished, running = _submit(store, dataset.id), _submit(store, dataset.id)
    for job_id in (finished, running):
        store.claim(job_id)
        _work_of(store, job_id)
    store.finish(finished, "succeeded")  # and killed before its work folder was removed
    store.work.write("not-a-job/x.bin", b"x")
    assert store.sweep_work() == [finished]
    assert {k.split("/", 1)[0] for k in _keys(store.work)} == {running, "not-a-job"}


def test_adopting_a_part_links_or_copies_it_under_its_key_once(tmp_path):
    """A part left in a work store becomes the artifact of its key: a hard link in one local filesystem (no byte
    copied), streamed into another kind of store; once there it is not written again, and a part that is nowhere
    is an error."""
    work = ObjectStore(str(tmp_path / "work"))
    array = np.arange(12, dtype=np.float32).reshape(3, 4)
    digest, size = write_array(work.at("parts/maps-000.npy"), array)
    key = f"{digest}.npy"
    local = open_artifact_store(tmp_path / "artifacts")
    local.adopt(work.at("parts/maps-000.npy"), key, size)
    source, adopted = tmp_path / "work" / "parts" / "maps-000.npy", local.local_path(key)
    assert adopted.stat().st_ino == source.stat().st_ino  # linked, not copied
    assert local.get(key) == source.read_bytes()
    work.remove_all()
    local.adopt(work.at("parts/maps-000.npy"), key, size)  # there already: the missing source is not read
    assert local.get(key) and not source.exists()
    memory = open_artifact_store(f"memory://adopt-{tmp_path.name}")
    with pytest.raises(ArtifactCorruptError, match="neither"):
        memory.adopt(work.at("parts/maps-000.npy"), key, size)
    write_array(work.at("parts/maps-000.npy"), array)
    memory.adopt(work.at("parts/maps-000.npy"), key, size)  # streamed from a folder into another store
    assert memory.get(key) == local.get(key)
