"""The tables of the job store (:mod:`workers.jobs.store`) and their records: datasets, jobs with their progress,
artifacts; the ids and list cursors the store hands out, and the rows of its tables read back as records.
"""

from __future__ import annotations

import base64
import json
import re
import sqlite3
import uuid
from dataclasses import dataclass, field
from typing import Any

from .status import TERMINAL

ID_PATTERN = r"^[0-9a-f]{32}$"
_ID_RE = re.compile(ID_PATTERN)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS datasets (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    created_at REAL NOT NULL,
    n_images INTEGER NOT NULL,
    images_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')),
    spec_json TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    finished_at REAL,
    layer INTEGER NOT NULL DEFAULT 0,
    n_layers INTEGER NOT NULL,
    iteration INTEGER NOT NULL DEFAULT 0,
    layer_iters TEXT NOT NULL,
    objective REAL,
    sparsity REAL,
    elapsed REAL,
    error TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    idempotency_key TEXT UNIQUE
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs (status, seq);
CREATE TABLE IF NOT EXISTS progress (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    layer INTEGER NOT NULL,
    iteration INTEGER NOT NULL,
    objective REAL NOT NULL,
    sparsity REAL,
    elapsed REAL,
    PRIMARY KEY (job_id, layer, iteration)
);
CREATE TABLE IF NOT EXISTS job_artifacts (
    job_id TEXT NOT NULL REFERENCES jobs (id),
    name TEXT NOT NULL,
    key TEXT NOT NULL,
    media_type TEXT NOT NULL,
    size INTEGER NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (job_id, name)
);
"""


def check_id(value: Any, what: str = "id") -> str:
    """`value` if it is a well-formed dataset or job id (32 lowercase hex digits); ValueError otherwise."""
    if not isinstance(value, str) or not _ID_RE.match(value):
        raise ValueError(f"{what} must be 32 lowercase hex digits, got {value!r}")
    return value


def new_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class StoredImage:
    """One image of a dataset: its artifact key (an ``.npy`` of shape (C, H, W)), shape and dtype."""

    name: str
    key: str
    shape: tuple[int, int, int]
    dtype: str


@dataclass(frozen=True)
class DatasetRecord:
    id: str
    created_at: float
    images: list[StoredImage]

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def shapes(self) -> list[list[int]]:
        return [list(im.shape) for im in self.images]


@dataclass(frozen=True)
class Progress:
    layer: int  # 1-based layer being learned (0 before the first outer iteration)
    n_layers: int
    iteration: int  # outer iterations done in that layer
    layer_iters: tuple[int, ...]  # outer iterations of every layer
    objective: float | None
    sparsity: float | None
    elapsed: float | None

    @property
    def n_iter(self) -> int:
        """Outer iterations of the current layer (of layer 1 before the start)."""
        return self.layer_iters[max(self.layer, 1) - 1]

    @property
    def step(self) -> int:
        """Outer iterations done over all layers."""
        return sum(self.layer_iters[: max(self.layer, 1) - 1]) + self.iteration

    @property
    def total_steps(self) -> int:
        return sum(self.layer_iters)

    @property
    def fraction(self) -> float:
        return self.step / self.total_steps


@dataclass(frozen=True)
class JobRecord:
    id: str
    seq: int
    status: str
    spec: dict[str, Any]
    created_at: float
    started_at: float | None
    finished_at: float | None
    progress: Progress
    error: str | None
    cancel_requested: bool
    attempts: int

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


@dataclass(frozen=True)
class ArtifactRecord:
    name: str
    key: str
    media_type: str
    size: int
    created_at: float = field(default=0.0)


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    try:
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        seq = int(text.removeprefix("seq:")) if text.startswith("seq:") else -1
        if not 0 <= seq < 2**63:  # SQLite's integers are 64-bit: a larger one is an OverflowError in the query
            raise ValueError
        return seq
    except (ValueError, UnicodeDecodeError):
        raise ValueError(f"cursor is not one this service returned, got {cursor!r}") from None


def _job(row: sqlite3.Row) -> JobRecord:
    progress = Progress(
        row["layer"],
        row["n_layers"],
        row["iteration"],
        tuple(json.loads(row["layer_iters"])),
        row["objective"],
        row["sparsity"],
        row["elapsed"],
    )
    return JobRecord(
        row["id"],
        row["seq"],
        row["status"],
        json.loads(row["spec_json"]),
        row["created_at"],
        row["started_at"],
        row["finished_at"],
        progress,
        row["error"],
        bool(row["cancel_requested"]),
        row["attempts"],
    )


def _artifact(row: sqlite3.Row) -> ArtifactRecord:
    return ArtifactRecord(row["name"], row["key"], row["media_type"], row["size"], row["created_at"])
