"""The job store: datasets, jobs and their artifacts in SQLite (WAL), the bytes in an artifact store.

One data directory holds everything of the embedded default::

    deconv.sqlite3        datasets, jobs (the state machine, progress), job_artifacts (name -> key)
    artifacts/ab/ab....   content-addressed bytes (see :mod:`workers.jobs.artifacts`), or any fsspec URL instead
    jobs/<id>/            per-job work folders: checkpoints, finished layers' manifests, the shards' parts

The work folders are a store too (:class:`~workers.jobs.objects.ObjectStore`): ``data_dir/jobs`` beside a local
artifact folder, ``<artifacts URL>/jobs`` beside an fsspec one, or any URL given as ``work``; the shard actors of a
running job write there themselves, from whatever node they run on. A job's parts (maps, switches, pooled maps,
reconstructions) stay there until it succeeds, when they are adopted into the artifact store: the work folder of a
failed or cancelled job is removed with everything it wrote, and nothing it might share with another job (content
addressing stores identical bytes once) is ever in it.

A job moves ``queued -> running -> succeeded | failed | cancelled``; ``queued -> cancelled`` directly. Every
transition is one short transaction (``BEGIN IMMEDIATE``), so concurrent submitters, the runner and the HTTP
handlers never see a half-done change. Artifacts are written to the artifact store first and recorded in the
database second: a crash in between leaves an orphan file, never a record pointing at missing bytes.

Connections are per thread (sqlite3 objects must not cross threads); WAL with ``synchronous=NORMAL`` and a busy
timeout lets readers and the one writer process run together. Only one process should write a data directory
(the service); readers may be many.
"""

from __future__ import annotations

import json
import logging
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .artifacts import ArtifactStore, LocalArtifactStore, open_artifact_store
from .objects import ObjectStore, is_url
from .records import (
    _SCHEMA,
    ID_PATTERN,
    ArtifactRecord,
    DatasetRecord,
    JobRecord,
    Progress,
    StoredImage,
    _job,
    check_id,
    decode_cursor,
    encode_cursor,
    new_id,
)
from .status import STATUSES, TERMINAL
from .store_tables import ArtifactTable, DatasetTable

__all__ = [
    "ID_PATTERN",
    "SCHEMA_VERSION",
    "ArtifactRecord",
    "DatasetRecord",
    "JobRecord",
    "JobStore",
    "Progress",
    "StoredImage",
    "check_id",
    "decode_cursor",
    "encode_cursor",
    "new_id",
]

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1


TRANSIENT_SQLITE = ("database or disk is full", "database is locked", "disk i/o error", "unable to open database")
"""How SQLite words the errors a store may recover from by itself (space freed, a lock released, a disk back)."""


def transient(exc: BaseException) -> bool:
    """Whether `exc` is a store error that may pass by itself: an OSError, or a SQLite error of
    :data:`TRANSIENT_SQLITE` (not a programming error such as a missing column)."""
    if isinstance(exc, OSError):
        return True
    return isinstance(exc, sqlite3.OperationalError) and any(t in str(exc).lower() for t in TRANSIENT_SQLITE)


class QueueFull(Exception):
    """The queue holds its most waiting jobs (`queued` of them): a new job is refused."""

    def __init__(self, queued: int):
        super().__init__(f"{queued} jobs are waiting to run")
        self.queued = queued


class JobStore(DatasetTable, ArtifactTable):
    """Datasets, jobs and artifacts under one data directory.

    Parameters
    ----------
    data_dir : path
        Created if missing.
    artifacts : str or ArtifactStore, optional
        Default: a local store in ``data_dir/artifacts``; a URL (``s3://bucket/prefix``) opens an fsspec store.
    work : str, optional
        Folder or URL of the jobs' work folders. Default: ``<artifacts URL>/jobs`` when the artifacts are on an
        fsspec URL (every node of a cluster reaches it), else ``data_dir/jobs``.
    """

    def __init__(
        self, data_dir: str | Path, artifacts: str | ArtifactStore | None = None, work: str | Path | None = None
    ):
        self.data_dir = Path(data_dir).resolve()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if artifacts is None:
            self.artifacts: ArtifactStore = LocalArtifactStore(self.data_dir / "artifacts")
        elif isinstance(artifacts, str | Path):
            self.artifacts = open_artifact_store(artifacts)
        else:
            self.artifacts = artifacts
        if work is None:
            url = self.artifacts.url if hasattr(self.artifacts, "url") else ""
            work = f"{url.rstrip('/')}/jobs" if is_url(url) else self.data_dir / "jobs"
        self.work = ObjectStore(str(work))
        self.db_path = self.data_dir / "deconv.sqlite3"
        self._local = threading.local()
        db = self._connection()
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise ValueError(
                f"data_dir {str(self.data_dir)!r} holds a newer store (schema {version}, "
                f"this deconv knows {SCHEMA_VERSION})"
            )
        # executescript commits on its own: the schema and its version go in one explicit transaction of its own
        db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")

    # -- connections ---------------------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        db = getattr(self._local, "db", None)
        if db is None:
            db = sqlite3.connect(self.db_path, timeout=30.0, isolation_level=None, check_same_thread=True)
            db.row_factory = sqlite3.Row
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=30000")
            db.execute("PRAGMA foreign_keys=ON")
            self._local.db = db
        return db

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._connection()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close this thread's connection (others close when their threads end)."""
        db = getattr(self._local, "db", None)
        if db is not None:
            db.close()
            self._local.db = None

    def job_dir(self, job_id: str) -> Path:
        """The local work folder of a job (checkpoints, intermediate files) with the default work store."""
        return self.data_dir / "jobs" / check_id(job_id, "job id")

    def job_work(self, job_id: str) -> ObjectStore:
        """The work store of a job: checkpoints, finished layers, pooled maps (written by the shard actors)."""
        return self.work.child(check_id(job_id, "job id"))

    # -- jobs ----------------------------------------------------------------------------------------------------

    def submit(
        self,
        spec: dict[str, Any],
        *,
        n_layers: int,
        n_iter: int | Sequence[int],
        idempotency_key: str | None = None,
        max_queued: int | None = None,
    ) -> tuple[JobRecord, bool]:
        """Queue a job of `n_layers` layers of `n_iter` outer iterations (one count, or one per layer); returns
        (the job, created). With an `idempotency_key` seen before, the earlier job is returned (and created is
        False) when its spec is the same; a different spec is a ValueError. Past `max_queued` waiting jobs a new
        one is :class:`QueueFull`: a retry whose key names a job already queued is answered first."""
        spec_json = json.dumps(spec, sort_keys=True)
        layer_iters = [int(n_iter)] * n_layers if isinstance(n_iter, int) else [int(n) for n in n_iter]
        if len(layer_iters) != n_layers or min(layer_iters) < 1:
            raise ValueError(f"n_iter must be a positive count or one per layer ({n_layers}), got {n_iter!r}")
        with self._transaction() as db:
            if idempotency_key is not None:
                row = db.execute("SELECT * FROM jobs WHERE idempotency_key = ?", (idempotency_key,)).fetchone()
                if row is not None:
                    if row["spec_json"] != spec_json:
                        raise ValueError(
                            f"Idempotency-Key {idempotency_key!r} was used for another job spec (job {row['id']})"
                        )
                    return _job(row), False
            if max_queued is not None:
                queued = db.execute("SELECT COUNT(*) FROM jobs WHERE status = 'queued'").fetchone()[0]
                if queued >= max_queued:
                    raise QueueFull(queued)
            job_id = new_id()
            db.execute(
                "INSERT INTO jobs (id, status, spec_json, created_at, n_layers, layer_iters, idempotency_key) "
                "VALUES (?, 'queued', ?, ?, ?, ?, ?)",
                (job_id, spec_json, time.time(), n_layers, json.dumps(layer_iters), idempotency_key),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        logger.info("job %s queued", job_id)
        return _job(row), True

    def get_job(self, job_id: str) -> JobRecord | None:
        row = self._connection().execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def list_jobs(
        self, *, limit: int = 20, cursor: str | None = None, status: str | None = None
    ) -> tuple[list[JobRecord], str | None]:
        """Newest first, `limit` at a time; returns the page and the cursor of the next one (None at the end)."""
        if not 1 <= limit <= 1000:
            raise ValueError(f"limit must be between 1 and 1000, got {limit}")
        if status is not None and status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
        clauses, args = [], []
        if cursor is not None:
            clauses.append("seq < ?")
            args.append(decode_cursor(cursor))
        if status is not None:
            clauses.append("status = ?")
            args.append(status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        rows = (
            self._connection()
            .execute(
                f"SELECT * FROM jobs {where} ORDER BY seq DESC LIMIT ?",  # noqa: S608
                (*args, limit + 1),
            )
            .fetchall()
        )
        jobs = [_job(r) for r in rows[:limit]]
        more = len(rows) > limit
        return jobs, (encode_cursor(jobs[-1].seq) if more else None)

    def count_jobs(self, status: str) -> int:
        """How many jobs are in `status`."""
        return int(self._connection().execute("SELECT COUNT(*) FROM jobs WHERE status = ?", (status,)).fetchone()[0])

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Cancel: a queued job at once (with what an earlier attempt left in its work store); a running one when
        the runner next looks; a finished one stays as is."""
        now = time.time()
        with self._transaction() as db:
            queued = db.execute(
                "UPDATE jobs SET status = 'cancelled', finished_at = ?, cancel_requested = 1 "
                "WHERE id = ? AND status = 'queued'",
                (now, job_id),
            ).rowcount
            db.execute("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = 'running'", (job_id,))
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if queued:
            self.discard_work(job_id)
        return None if row is None else _job(row)

    def discard_work(self, job_id: str) -> None:
        """Remove the work store of a job that will not run again (failed or cancelled): its checkpoints, its
        finished layers' manifests and every part its shards wrote. Nothing there is shared with another job:
        parts reach the content-addressed artifact store only when their job succeeds."""
        try:
            self.job_work(job_id).remove_all()
        except OSError:
            logger.warning("job %s: its work folder could not be removed", job_id, exc_info=True)

    def sweep_work(self) -> list[str]:
        """Remove the work stores of finished jobs that a service killed at the wrong moment left behind (between
        a job's end and the removal); returns their ids. Folders of jobs this store does not know are left."""
        names = [n for n in self.work.list() if re.fullmatch(ID_PATTERN, n)]
        swept = []
        for name in names:
            job = self.get_job(name)
            if job is not None and job.status in TERMINAL:
                self.discard_work(name)
                swept.append(name)
        if swept:
            logger.info("removed the work folders of %d finished job(s): %s", len(swept), swept)
        return swept

    def cancel_requested(self, job_id: str) -> bool:
        row = self._connection().execute("SELECT cancel_requested FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return bool(row and row[0])

    def claim_next(self) -> JobRecord | None:
        """The oldest queued job, now running (one transaction: two runners never take the same job)."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
            return None if row is None else self._start(db, row["id"])

    def next_queued(self) -> JobRecord | None:
        """The oldest queued job, left queued (the runner reserves its resources before it claims it)."""
        row = self._connection().execute("SELECT * FROM jobs WHERE status = 'queued' ORDER BY seq LIMIT 1").fetchone()
        return None if row is None else _job(row)

    def claim(self, job_id: str) -> JobRecord | None:
        """Job `job_id`, now running, if it was still queued; None when it is not (cancelled meanwhile, or taken).

        One transaction: of two claims of one job, one gets it and the other None."""
        with self._transaction() as db:
            row = db.execute("SELECT id FROM jobs WHERE id = ? AND status = 'queued'", (job_id,)).fetchone()
            return None if row is None else self._start(db, job_id)

    @staticmethod
    def _start(db: sqlite3.Connection, job_id: str) -> JobRecord:
        db.execute(
            "UPDATE jobs SET status = 'running', started_at = COALESCE(started_at, ?), "
            "attempts = attempts + 1, error = NULL WHERE id = ? AND status = 'queued'",
            (time.time(), job_id),
        )
        return _job(db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone())

    def update_progress(
        self,
        job_id: str,
        *,
        layer: int,
        iteration: int,
        objective: float | None,
        sparsity: float | None,
        elapsed: float | None,
    ) -> None:
        """Record one outer iteration: the job's current progress, and a row of its history (an iteration run
        again after a rollback replaces its row).

        Raises
        ------
        ValueError
            For a non-finite objective: the computation overflowed, and a history of it would be neither valid
            JSON nor worth finishing (the job fails with this message instead).
        """
        if objective is not None and not math.isfinite(objective):
            raise ValueError(
                f"the objective became {objective} at layer {layer}, outer iteration {iteration}: the computation "
                "overflowed its dtype (the images' values are too large for it: scale them, preprocess them, or ask "
                "for dtype float64)"
            )
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET layer = ?, iteration = ?, objective = ?, sparsity = ?, elapsed = ? "
                "WHERE id = ? AND status = 'running'",
                (layer, iteration, objective, sparsity, elapsed, job_id),
            )
            if objective is not None:
                db.execute(
                    "INSERT OR REPLACE INTO progress (job_id, layer, iteration, objective, sparsity, elapsed) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (job_id, layer, iteration, objective, sparsity, elapsed),
                )

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """Every recorded outer iteration of the job, by layer and iteration."""
        rows = (
            self._connection()
            .execute(
                "SELECT layer, iteration, objective, sparsity, elapsed FROM progress WHERE job_id = ? "
                "ORDER BY layer, iteration",
                (job_id,),
            )
            .fetchall()
        )
        return [dict(r) for r in rows]

    def finish(self, job_id: str, status: str, error: str | None = None) -> JobRecord:
        """End a running job as succeeded, failed or cancelled."""
        if status not in TERMINAL:
            raise ValueError(f"status must be one of {sorted(TERMINAL)}, got {status!r}")
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = ?, finished_at = ?, error = ? WHERE id = ? AND status = 'running'",
                (status, time.time(), error, job_id),
            )
            row = db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        logger.info("job %s %s%s", job_id, status, f": {error}" if error else "")
        return _job(row)

    def release(self, job_id: str) -> None:
        """Put a running job back in the queue (the service is stopping); this start does not count as an
        attempt."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET status = 'queued', attempts = MAX(attempts - 1, 0) "
                "WHERE id = ? AND status = 'running'",
                (job_id,),
            )

    def requeue_running(self, *, max_attempts: int) -> list[str]:
        """After a restart: jobs left ``running`` go back to the queue (they resume from their checkpoint), or
        fail when they were already started `max_attempts` times; a cancel requested before the stop wins."""
        requeued, ended = [], []
        with self._transaction() as db:
            rows = db.execute("SELECT id, attempts, cancel_requested FROM jobs WHERE status = 'running'").fetchall()
            now = time.time()
            for row in rows:
                if row["cancel_requested"]:
                    db.execute("UPDATE jobs SET status = 'cancelled', finished_at = ? WHERE id = ?", (now, row["id"]))
                    ended.append(row["id"])
                elif row["attempts"] >= max_attempts:
                    ended.append(row["id"])
                    db.execute(
                        "UPDATE jobs SET status = 'failed', finished_at = ?, error = ? WHERE id = ?",
                        (
                            now,
                            f"the service stopped while the job ran, {row['attempts']} times "
                            f"(max_attempts={max_attempts})",
                            row["id"],
                        ),
                    )
                else:
                    db.execute("UPDATE jobs SET status = 'queued' WHERE id = ?", (row["id"],))
                    requeued.append(row["id"])
        for job_id in ended:  # they will not resume
            self.discard_work(job_id)
        if requeued:
            logger.info("requeued %d job(s) left running: %s", len(requeued), requeued)
        return requeued
