"""A job's end state when the job store cannot take it for a while (a full disk): the runner writes it again
until it can, so the job never stays "running" for ever; and a request the store cannot serve is a 503."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import workers.jobs.runner as runner_module
from workers.jobs.runner import JobRunner
from workers.jobs.store import JobStore

SPEC = {"dataset_id": "0" * 32, "layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1}], "n_iter": 1}


@pytest.fixture
def store(tmp_path):
    store = JobStore(tmp_path)
    yield store
    store.close()


def _full_disk_for(store: JobStore, monkeypatch, times: int) -> list:
    """store.finish raises as SQLite does on a full disk, `times` times, then works; returns the calls."""
    calls: list = []
    finish = store.finish

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) <= times:
            raise sqlite3.OperationalError("database or disk is full")
        return finish(*args, **kwargs)

    monkeypatch.setattr(store, "finish", flaky)
    return calls


def _failing_run(*args, **kwargs):
    raise ValueError("the job's own failure")


def test_a_failure_recorded_once_the_store_takes_it_again(store, monkeypatch):
    monkeypatch.setattr(runner_module, "execute", _failing_run)
    monkeypatch.setattr(runner_module, "RECORD_RETRY_S", 0.01)
    job, _ = store.submit(SPEC, n_layers=1, n_iter=1)
    calls = _full_disk_for(store, monkeypatch, times=3)
    JobRunner(store).run_job(store.claim_next())
    done = store.get_job(job.id)
    assert len(calls) == 4
    assert done.status == "failed" and done.error == "ValueError: the job's own failure"


def test_a_stopping_service_stops_retrying_and_leaves_the_job_to_its_successor(store, monkeypatch):
    monkeypatch.setattr(runner_module, "execute", _failing_run)
    monkeypatch.setattr(runner_module, "RECORD_RETRY_S", 0.05)
    job, _ = store.submit(SPEC, n_layers=1, n_iter=1)
    calls = _full_disk_for(store, monkeypatch, times=10**6)
    runner = JobRunner(store)
    claimed = store.claim_next()
    worker = threading.Thread(target=runner.run_job, args=(claimed,))
    worker.start()
    while len(calls) < 3:  # retrying
        worker.join(0.01)
    runner._stopping.set()
    worker.join(5)
    assert not worker.is_alive()
    assert store.get_job(job.id).status == "running"  # a restart queues it again


def test_an_error_writing_again_would_not_mend_is_not_retried(store, monkeypatch):
    monkeypatch.setattr(runner_module, "execute", _failing_run)
    monkeypatch.setattr(runner_module, "RECORD_RETRY_S", 0.01)
    store.submit(SPEC, n_layers=1, n_iter=1)
    calls: list = []

    def broken(*args, **kwargs):
        calls.append(args)
        raise sqlite3.OperationalError("no such column: nothing")

    monkeypatch.setattr(store, "finish", broken)
    JobRunner(store).run_job(store.claim_next())
    assert len(calls) == 1


@pytest.mark.parametrize(
    ("message", "status"), [("database or disk is full", 503), ("database is locked", 503), ("no such table: x", 500)]
)
def test_a_request_the_store_cannot_serve_is_a_503_only_when_it_may_pass(tmp_path, monkeypatch, message, status):
    httpx2 = pytest.importorskip("httpx2")
    from tests.api.conftest import start_service, stop_service  # noqa: PLC0415

    service = start_service(tmp_path, run_jobs=False)
    try:
        with httpx2.Client(base_url=service.url) as client:
            job, _ = JobStore(tmp_path).submit(SPEC, n_layers=1, n_iter=1)

            def failing(self, job_id):
                raise sqlite3.OperationalError(message)

            monkeypatch.setattr(JobStore, "request_cancel", failing)
            response = client.delete(f"/jobs/{job.id}")
    finally:
        stop_service(service)
    assert response.status_code == status
    detail = response.json()["detail"]
    assert message not in detail  # the database's own words stay in the log
    if status == 503:
        assert int(response.headers["retry-after"]) > 0 and "a full disk or a busy database" in detail
    else:
        assert detail == "internal error: OperationalError"
