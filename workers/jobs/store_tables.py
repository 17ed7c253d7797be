"""The dataset and artifact halves of :class:`~workers.jobs.store.JobStore`: datasets' images stored in the artifact
store and recorded in SQLite, and a job's artifacts (bytes in the artifact store, names in ``job_artifacts``).
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .objects import npy_bytes
from .records import ArtifactRecord, DatasetRecord, StoredImage, _artifact, new_id

logger = logging.getLogger("workers.jobs.store")


class DatasetTable:
    """The ``datasets`` table of :class:`~workers.jobs.store.JobStore` (a mixin: the connection lives there)."""

    def add_dataset(self, images: Sequence[tuple[str, np.ndarray]]) -> DatasetRecord:
        """Store decoded images ((C, H, W) arrays, in order) as a new dataset."""
        stored = []
        for name, array in images:
            key = self.artifacts.put(npy_bytes(np.ascontiguousarray(array)), ".npy")
            stored.append(StoredImage(name, key, tuple(int(d) for d in array.shape), str(array.dtype)))
        record = DatasetRecord(new_id(), time.time(), stored)
        payload = json.dumps([{"name": s.name, "key": s.key, "shape": list(s.shape), "dtype": s.dtype} for s in stored])
        with self._transaction() as db:
            db.execute(
                "INSERT INTO datasets (id, created_at, n_images, images_json) VALUES (?, ?, ?, ?)",
                (record.id, record.created_at, len(stored), payload),
            )
        logger.info("dataset %s: %d images", record.id, len(stored))
        return record

    def get_dataset(self, dataset_id: str) -> DatasetRecord | None:
        row = self._connection().execute("SELECT * FROM datasets WHERE id = ?", (dataset_id,)).fetchone()
        if row is None:
            return None
        images = [
            StoredImage(d["name"], d["key"], tuple(d["shape"]), d["dtype"]) for d in json.loads(row["images_json"])
        ]
        return DatasetRecord(row["id"], row["created_at"], images)


class ArtifactTable:
    """The ``job_artifacts`` table of :class:`~workers.jobs.store.JobStore` (a mixin: the connection lives there)."""

    def put_artifact(self, job_id: str, name: str, data: bytes, media_type: str) -> ArtifactRecord:
        """Store `data` and record it as the job's artifact `name` (replacing an earlier one of that name)."""
        suffix = Path(name).suffix.lower()
        key = self.artifacts.put(data, suffix if re.fullmatch(r"\.[a-z0-9]{1,8}", suffix) else "")
        record = ArtifactRecord(name, key, media_type, len(data), time.time())
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO job_artifacts (job_id, name, key, media_type, size, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, name, key, media_type, len(data), record.created_at),
            )
        return record

    def record_artifact(self, job_id: str, name: str, key: str, media_type: str, size: int) -> ArtifactRecord:
        """Record bytes already in the artifact store (a shard actor wrote them) as the job's artifact `name`."""
        if not self.artifacts.exists(key):
            raise ValueError(f"artifact {key} of {name!r} is not in the artifact store")
        record = ArtifactRecord(name, key, media_type, size, time.time())
        with self._transaction() as db:
            db.execute(
                "INSERT OR REPLACE INTO job_artifacts (job_id, name, key, media_type, size, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, name, key, media_type, size, record.created_at),
            )
        return record

    def artifact(self, job_id: str, name: str) -> ArtifactRecord | None:
        row = (
            self._connection()
            .execute("SELECT * FROM job_artifacts WHERE job_id = ? AND name = ?", (job_id, name))
            .fetchone()
        )
        return None if row is None else _artifact(row)

    def list_artifacts(self, job_id: str) -> list[ArtifactRecord]:
        rows = (
            self._connection()
            .execute("SELECT * FROM job_artifacts WHERE job_id = ? ORDER BY name", (job_id,))
            .fetchall()
        )
        return [_artifact(r) for r in rows]

    def read_artifact(self, job_id: str, name: str) -> bytes | None:
        record = self.artifact(job_id, name)
        return None if record is None else self.artifacts.get(record.key)
