"""The job store without HTTP: SQLite in WAL mode, the job state machine, claims under contention, requeue after a
crash, keyset pagination, idempotency keys; the content-addressed artifact stores (local folder and fsspec)."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from pathlib import Path

import pytest

import workers.jobs.objects as objects_module
from workers.jobs.artifacts import (
    KEY_PATTERN,
    ArtifactCorruptError,
    FsspecArtifactStore,
    LocalArtifactStore,
    open_artifact_store,
)
from workers.jobs.store import JobStore, decode_cursor, encode_cursor

SPEC = {"dataset_id": "0" * 32, "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}], "n_iter": 3}


def _spec(**changes) -> dict:
    return {**SPEC, **changes}


@pytest.fixture
def store(tmp_path) -> JobStore:
    store = JobStore(tmp_path / "data")
    yield store
    store.close()


def _in_threads(store: JobStore, target, n: int) -> None:
    """Run `target(i)` in `n` threads that start together; each closes its own store connection at the end."""
    barrier = threading.Barrier(n)

    def run(i: int) -> None:
        barrier.wait()
        try:
            target(i)
        finally:
            store.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)


def _submit(store: JobStore, n: int = 1, **kwargs) -> list[str]:
    return [store.submit(_spec(seed=i), n_layers=1, n_iter=3, **kwargs)[0].id for i in range(n)]


# -- SQLite ----------------------------------------------------------------------------------------------------------


def test_the_database_is_in_wal_mode(store):
    with sqlite3.connect(store.db_path) as db:  # a fresh connection reads the mode persisted in the file
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_a_store_opened_again_sees_the_same_jobs(store):
    ids = _submit(store, 3)
    again = JobStore(store.data_dir)
    assert [j.id for j in again.list_jobs()[0]] == ids[::-1]
    again.close()


# -- the state machine ----------------------------------------------------------------------------------------------


def test_a_job_goes_queued_running_succeeded(store):
    queued, created = store.submit(SPEC, n_layers=1, n_iter=3)
    running = store.claim_next()
    store.update_progress(queued.id, layer=1, iteration=1, objective=2.5, sparsity=0.1, elapsed=0.2)
    done = store.finish(queued.id, "succeeded")
    assert created
    assert (queued.status, queued.attempts, queued.started_at) == ("queued", 0, None)
    assert (running.id, running.status, running.attempts) == (queued.id, "running", 1)
    assert running.started_at is not None and running.finished_at is None
    assert (done.status, done.progress.iteration, done.progress.objective) == ("succeeded", 1, 2.5)
    assert done.finished_at >= running.started_at
    assert store.history(queued.id) == [{"layer": 1, "iteration": 1, "objective": 2.5, "sparsity": 0.1, "elapsed": 0.2}]


@pytest.mark.parametrize("objective", [float("inf"), float("nan")])
def test_a_non_finite_objective_is_refused_and_not_recorded(store, objective):
    queued, _ = store.submit(SPEC, n_layers=1, n_iter=3)
    store.claim_next()
    store.update_progress(queued.id, layer=1, iteration=1, objective=2.5, sparsity=0.1, elapsed=0.2)
    with pytest.raises(ValueError, match=rf"the objective became {objective} at layer 1, outer iteration 2.*dtype"):
        store.update_progress(queued.id, layer=1, iteration=2, objective=objective, sparsity=1.0, elapsed=0.3)
    assert [row["iteration"] for row in store.history(queued.id)] == [1]
    assert store.get_job(queued.id).progress.iteration == 1


def test_cancelling_a_queued_job_ends_it_at_once(store):
    (job_id,) = _submit(store)
    job = store.request_cancel(job_id)
    assert (job.status, job.cancel_requested, job.finished_at is not None) == ("cancelled", True, True)
    assert store.claim_next() is None  # never runs


def test_cancelling_a_running_job_only_asks_the_runner(store):
    (job_id,) = _submit(store)
    store.claim_next()
    job = store.request_cancel(job_id)
    assert (job.status, job.cancel_requested, job.finished_at) == ("running", True, None)
    assert store.cancel_requested(job_id)
    assert store.finish(job_id, "cancelled").status == "cancelled"


@pytest.mark.parametrize("end", ["succeeded", "failed", "cancelled"])
def test_a_finished_job_is_left_as_it_is(store, end):
    (job_id,) = _submit(store)
    store.claim_next()
    before = store.finish(job_id, end, "boom" if end == "failed" else None)
    after_cancel = store.request_cancel(job_id)
    after_finish = store.finish(job_id, "succeeded")
    store.update_progress(job_id, layer=1, iteration=9, objective=1.0, sparsity=None, elapsed=None)
    assert after_cancel.status == after_finish.status == end
    assert store.get_job(job_id) == before  # not even progress or the cancel flag changed


def test_finish_refuses_a_status_that_is_not_an_end(store):
    (job_id,) = _submit(store)
    with pytest.raises(ValueError, match="status"):
        store.finish(job_id, "queued")


def test_a_queued_job_cannot_be_finished_without_running(store):
    (job_id,) = _submit(store)
    assert store.finish(job_id, "succeeded").status == "queued"


def test_unknown_jobs_are_none(store):
    assert store.get_job("f" * 32) is None
    assert store.request_cancel("f" * 32) is None
    assert not store.cancel_requested("f" * 32)


def test_claims_take_the_oldest_job_first(store):
    ids = _submit(store, 3)
    assert [store.claim_next().id for _ in ids] == ids
    assert store.claim_next() is None


def test_no_job_is_claimed_by_two_threads(store):
    ids = _submit(store, 60)
    claimed: list[list[str]] = [[] for _ in range(8)]

    def claim_all(i: int) -> None:
        while (job := store.claim_next()) is not None:
            claimed[i].append(job.id)
            time.sleep(0.002)  # a runner works between claims: lets the other threads in

    _in_threads(store, claim_all, len(claimed))
    everything = [job_id for mine in claimed for job_id in mine]
    assert sorted(everything) == sorted(ids)  # each job exactly once: none lost, none claimed twice
    assert {store.get_job(j).attempts for j in ids} == {1}
    assert sum(1 for mine in claimed if mine) > 1  # the threads really competed


# -- restart -----------------------------------------------------------------------------------------------------------


def test_jobs_left_running_by_a_crash_are_queued_again(store):
    ids = _submit(store, 2)
    store.claim_next()
    store.claim_next()
    restarted = JobStore(store.data_dir)  # the next service on the same data dir; the old one never finished
    requeued = restarted.requeue_running(max_attempts=3)
    second = restarted.claim_next()
    assert sorted(requeued) == sorted(ids)
    assert (second.id, second.status, second.attempts) == (ids[0], "running", 2)
    restarted.close()


def test_a_job_that_crashed_max_attempts_times_fails(store):
    (job_id,) = _submit(store)
    store.claim_next()
    first = store.requeue_running(max_attempts=2)
    store.claim_next()
    second = store.requeue_running(max_attempts=2)
    job = store.get_job(job_id)
    assert (first, second) == ([job_id], [])
    assert (job.status, job.attempts, job.finished_at is not None) == ("failed", 2, True)
    assert "max_attempts=2" in job.error
    assert store.claim_next() is None


def test_a_cancel_asked_before_the_crash_wins_over_the_requeue(store):
    (job_id,) = _submit(store)
    store.claim_next()
    store.request_cancel(job_id)
    assert store.requeue_running(max_attempts=3) == []
    assert store.get_job(job_id).status == "cancelled"


def test_a_release_does_not_count_as_an_attempt(store):
    (job_id,) = _submit(store)
    store.claim_next()
    store.release(job_id)
    job = store.get_job(job_id)
    assert (job.status, job.attempts) == ("queued", 0)


# -- pagination -----------------------------------------------------------------------------------------------------


def _all_pages(store: JobStore, limit: int, **kwargs) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        jobs, cursor = store.list_jobs(limit=limit, cursor=cursor, **kwargs)
        pages.append([j.id for j in jobs])
        if cursor is None:
            return pages


@pytest.mark.parametrize("limit", [1, 7, 50, 101])
def test_pages_cover_every_job_once_newest_first(store, limit):
    ids = _submit(store, 101)
    pages = _all_pages(store, limit)
    assert [j for page in pages for j in page] == ids[::-1]
    assert [len(p) for p in pages[:-1]] == [limit] * (len(pages) - 1)


def test_jobs_submitted_while_paging_neither_repeat_nor_hide_older_ones(store):
    ids = _submit(store, 30)
    seen, cursor = [], None
    while True:
        jobs, cursor = store.list_jobs(limit=4, cursor=cursor)
        seen += [j.id for j in jobs]
        _submit(store, 2)  # newer than everything listed so far: they belong before the first page
        if cursor is None:
            break
    assert seen == ids[::-1]


def test_pages_filter_by_status(store):
    ids = _submit(store, 9)
    [store.request_cancel(j) for j in ids[::3]]
    pages = _all_pages(store, 2, status="cancelled")
    assert [j for page in pages for j in page] == ids[::3][::-1]


def test_a_cursor_round_trips_and_a_forged_one_is_refused(store):
    assert decode_cursor(encode_cursor(12345)) == 12345
    for forged in ("nonsense", "c2VxOnh5eg", "!!!", encode_cursor(1)[:-2] + "@@", encode_cursor(2**63)):
        with pytest.raises(ValueError, match="cursor"):
            store.list_jobs(cursor=forged)


@pytest.mark.parametrize("kwargs", [{"limit": 0}, {"limit": 1001}, {"status": "sleeping"}])
def test_bad_listing_arguments_are_refused(store, kwargs):
    with pytest.raises(ValueError, match=next(iter(kwargs))):
        store.list_jobs(**kwargs)


# -- idempotency ----------------------------------------------------------------------------------------------------


def test_an_idempotency_key_with_the_same_spec_gives_the_same_job(store):
    first, created_first = store.submit(SPEC, n_layers=1, n_iter=3, idempotency_key="k-1")
    reordered = dict(reversed(list(SPEC.items())))  # the same spec, its keys in another order
    again, created_again = store.submit(reordered, n_layers=1, n_iter=3, idempotency_key="k-1")
    assert (created_first, created_again) == (True, False)
    assert again.id == first.id
    assert len(store.list_jobs()[0]) == 1


def test_an_idempotency_key_with_another_spec_is_an_error(store):
    first, _ = store.submit(SPEC, n_layers=1, n_iter=3, idempotency_key="k-1")
    with pytest.raises(ValueError, match=f"k-1.*{first.id}"):
        store.submit(_spec(n_iter=4), n_layers=1, n_iter=4, idempotency_key="k-1")
    assert len(store.list_jobs()[0]) == 1


def test_distinct_keys_and_no_key_give_distinct_jobs(store):
    jobs = [store.submit(SPEC, n_layers=1, n_iter=3, idempotency_key=key)[0].id for key in ("a", "b", None, None)]
    assert len(set(jobs)) == 4


def test_one_idempotency_key_from_many_threads_makes_one_job(store):
    results: list[str] = []
    _in_threads(
        store, lambda i: results.append(store.submit(SPEC, n_layers=1, n_iter=3, idempotency_key="shared")[0].id), 10
    )
    assert len(results) == 10
    assert len(set(results)) == 1
    assert len(store.list_jobs()[0]) == 1


# -- job artifacts through the store --------------------------------------------------------------------------------


def test_job_artifacts_are_recorded_by_name_and_replaced(store):
    (job_id,) = _submit(store)
    store.put_artifact(job_id, "history.json", b"[1]", "application/json")
    record = store.put_artifact(job_id, "history.json", b"[1, 2]", "application/json")
    assert [a.name for a in store.list_artifacts(job_id)] == ["history.json"]
    assert store.read_artifact(job_id, "history.json") == b"[1, 2]"
    assert (record.size, record.key.endswith(".json")) == (6, True)
    assert store.read_artifact(job_id, "nothing.npy") is None


def test_the_job_folder_refuses_a_traversal(store):
    with pytest.raises(ValueError, match="job id"):
        store.job_dir("../../etc")


# -- artifact stores ------------------------------------------------------------------------------------------------


@pytest.fixture(params=["local", "memory"])
def artifacts(request, tmp_path):
    if request.param == "local":
        return LocalArtifactStore(tmp_path / "artifacts")
    pytest.importorskip("fsspec")
    return FsspecArtifactStore(f"memory://deconv-test-{uuid.uuid4().hex}")


def _overwrite(store, key: str, data: bytes) -> None:
    if isinstance(store, LocalArtifactStore):
        store.local_path(key).write_bytes(data)
    else:
        store.fs.pipe(store._path(key), data)


def test_identical_bytes_are_stored_once(artifacts):
    a = artifacts.put(b"filters", ".npy")
    b = artifacts.put(b"filters", ".npy")
    c = artifacts.put(b"other", ".npy")
    assert a == b != c
    assert KEY_PATTERN.match(a) and a.endswith(".npy")
    assert artifacts.get(a) == b"filters"
    assert artifacts.exists(a) and not artifacts.exists("0" * 64)


def test_local_dedupe_keeps_one_file(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    keys = {store.put(b"same bytes", ".png") for _ in range(5)}
    files = [p for p in (tmp_path / "a").rglob("*") if p.is_file()]
    assert len(keys) == 1
    assert [p.name for p in files] == list(keys)


@pytest.mark.parametrize(
    "damage", [lambda b: b[:-1], lambda b: b"X" + b[1:], lambda b: b + b"\0"], ids=["truncated", "flipped", "extended"]
)
def test_a_damaged_artifact_is_detected_on_read(artifacts, damage):
    key = artifacts.put(b"maps of six images", ".npz")
    _overwrite(artifacts, key, damage(b"maps of six images"))
    with pytest.raises(ArtifactCorruptError, match=key):
        artifacts.get(key)


def test_a_missing_artifact_is_reported_as_corrupt(artifacts):
    with pytest.raises(ArtifactCorruptError, match="missing"):
        artifacts.get("a" * 64 + ".npy")


@pytest.mark.parametrize("key", ["../../etc/passwd", "ab/../../x", "A" * 64, "a" * 64 + ".NPY", "a" * 63])
def test_a_malformed_key_never_reaches_a_path(artifacts, key):
    with pytest.raises(ValueError, match="artifact key"):
        artifacts.get(key)


def test_a_bad_suffix_is_refused(artifacts):
    with pytest.raises(ValueError, match="suffix"):
        artifacts.put(b"x", "/../x")


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    keys = [store.put(f"artifact {i}".encode() * 1000, ".npy") for i in range(20)]
    names = sorted(p.name for p in (tmp_path / "a").rglob("*") if p.is_file())
    assert names == sorted(keys)


def test_a_write_that_fails_halfway_leaves_nothing(tmp_path, monkeypatch):
    store = LocalArtifactStore(tmp_path / "a")

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(objects_module.os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        store.put(b"half written", ".npy")
    assert [p for p in (tmp_path / "a").rglob("*") if p.is_file()] == []


def test_local_files_are_readable_by_others(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    key = store.put(b"x", ".npy")
    assert store.local_path(key).stat().st_mode & 0o777 == 0o644


def test_the_fsspec_store_has_no_local_path():
    pytest.importorskip("fsspec")
    store = FsspecArtifactStore(f"memory://deconv-test-{uuid.uuid4().hex}")
    assert store.local_path(store.put(b"x")) is None


@pytest.mark.parametrize(
    ("location", "kind"),
    [
        ("memory://deconv-x", FsspecArtifactStore),
        ("file://{tmp}/a", LocalArtifactStore),
        ("{tmp}/a", LocalArtifactStore),
    ],
)
def test_open_artifact_store_picks_the_store_by_url(tmp_path, location, kind):
    assert isinstance(open_artifact_store(location.format(tmp=tmp_path)), kind)


def test_a_job_store_over_an_fsspec_url_works_like_the_local_one(tmp_path):
    pytest.importorskip("fsspec")
    store = JobStore(tmp_path / "data", f"memory://deconv-test-{uuid.uuid4().hex}")
    (job_id,) = _submit(store)
    store.put_artifact(job_id, "filters-L1.npy", b"\x93NUMPY fake", "application/x-npy")
    assert store.read_artifact(job_id, "filters-L1.npy") == b"\x93NUMPY fake"
    assert not Path(tmp_path / "data" / "artifacts").exists()
    store.close()


def test_a_damaged_local_artifact_is_repaired_by_a_put_of_its_bytes(tmp_path):
    store = LocalArtifactStore(tmp_path / "a")
    key = store.put(b"filters of job 1", ".npy")
    store.local_path(key).write_bytes(b"filters of job X")  # same size, other bytes
    assert store.put(b"filters of job 1", ".npy") == key  # job 2 computes the same filters
    assert store.get(key) == b"filters of job 1"
