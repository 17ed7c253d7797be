"""Checkpoints of a distributed learning run: filters, power vector, every shard's state, history; manifest last.

A checkpoint is a folder ``ckpt-<iteration>`` under the job's checkpoint folder::

    filters.npy         (K, C, s, s) filters after that outer iteration
    power_vector.npy    warm start of the power iteration of the filter step size
    shard-000.pkl ...   each shard's ``state()`` (maps and inference state, host arrays), pickled
    history.json        the IterStats of the iterations done so far
    manifest.json       iteration, file names with their sha256, and the run's identity (config, images, shards)

Every file is written atomically (a temporary file in the same folder, flushed and fsynced, then ``os.replace``),
and the manifest is written last: a folder without a manifest is an incomplete checkpoint and is ignored, and a
file whose checksum does not match makes the whole checkpoint invalid. :func:`latest_checkpoint` returns the newest
valid one. The last :data:`KEEP` complete checkpoints are kept. The pickles are our own files, read only after
their checksums match the manifest.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import os
import pickle
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from solver.models.learn import IterStats

logger = logging.getLogger(__name__)

FORMAT = 1
MANIFEST = "manifest.json"
KEEP = 2
_PREFIX = "ckpt-"


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used: incomplete, corrupted, or of another run."""


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint, loaded.

    Attributes
    ----------
    iteration : int
        Outer iterations done.
    filters : ndarray of shape (K, C, s, s)
    power_vector : ndarray of shape (K, C, s, s)
    shard_states : list of dict
        ``Shard.state()`` of every shard, in shard order.
    history : list of IterStats
        One record per outer iteration 1..iteration.
    meta : dict
        What the writer passed as ``meta`` (the run's identity), from the manifest.
    path : Path
    """

    iteration: int
    filters: np.ndarray
    power_vector: np.ndarray
    shard_states: list[dict[str, Any]]
    history: list[IterStats]
    meta: dict[str, Any]
    path: Path


_FILE_MODE = 0o644


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` to `path` atomically (temporary file in the same folder, fsync, ``os.replace``).

    Returns
    -------
    str
        The sha256 of `data`, hex.
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; results are meant to be read by others too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return hashlib.sha256(data).hexdigest()


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` in ``.npy`` format, in memory."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def _fsync_dir(folder: Path) -> None:
    """Make the renames in `folder` durable (no-op where directories cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_folders(root: str | Path) -> list[tuple[int, Path]]:
    """(iteration, folder) of every checkpoint folder under `root`, complete or not, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        suffix = p.name[len(_PREFIX) :]
        if p.is_dir() and p.name.startswith(_PREFIX) and suffix.isdigit():
            found.append((int(suffix), p))
    return sorted(found)


def write_checkpoint(
    root: str | Path,
    iteration: int,
    filters: np.ndarray,
    power_vector: np.ndarray,
    shard_states: Sequence[dict[str, Any]],
    history: Sequence[IterStats],
    meta: dict[str, Any],
    *,
    keep: int = KEEP,
) -> Path:
    """Write a checkpoint of `iteration` under `root`, manifest last, and prune old ones.

    Parameters
    ----------
    root : path
        The run's checkpoint folder (created if missing).
    iteration : int
        Outer iterations done (≥ 0).
    filters, power_vector : ndarray
    shard_states : sequence of dict
        Every shard's state, in shard order.
    history : sequence of IterStats
    meta : dict
        JSON-serialisable identity of the run (config, image files, shard count...), stored in the manifest.
    keep : int
        How many complete checkpoints to keep (≥ 1); older folders, and any folder of a later iteration (left by
        a run that was rolled back), are removed.

    Returns
    -------
    Path
        The checkpoint folder.
    """
    if iteration < 0:
        raise ValueError(f"iteration must be non-negative, got {iteration}")
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    folder = Path(root) / f"{_PREFIX}{iteration:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / MANIFEST).unlink(missing_ok=True)  # rewriting: incomplete until the new manifest lands
    files = {
        "filters.npy": npy_bytes(filters),
        "power_vector.npy": npy_bytes(power_vector),
        **{f"shard-{i:03d}.pkl": pickle.dumps(s, protocol=pickle.HIGHEST_PROTOCOL) for i, s in enumerate(shard_states)},
        "history.json": json.dumps([dataclasses.asdict(h) for h in history], indent=1).encode(),
    }
    checksums = {name: atomic_write_bytes(folder / name, data) for name, data in files.items()}
    _fsync_dir(folder)
    manifest = {
        "format": FORMAT,
        "iteration": iteration,
        "n_shards": len(shard_states),
        "files": checksums,
        "meta": meta,
    }
    atomic_write_bytes(folder / MANIFEST, json.dumps(manifest, indent=1).encode())
    _fsync_dir(folder)
    _prune(Path(root), iteration, keep)
    logger.info("checkpoint of iteration %d written to %s", iteration, folder)
    return folder


def _prune(root: Path, newest: int, keep: int) -> None:
    folders = checkpoint_folders(root)
    complete = [it for it, p in folders if it <= newest and (p / MANIFEST).is_file()]
    oldest_kept = complete[-keep] if len(complete) >= keep else complete[0]
    for it, p in folders:
        if it < oldest_kept or it > newest:
            shutil.rmtree(p, ignore_errors=True)


def read_checkpoint(folder: str | Path) -> Checkpoint:
    """Load a checkpoint folder after checking its manifest and every file's sha256.

    Raises
    ------
    CheckpointError
        If the manifest is missing or unreadable, a file is missing or its checksum differs, or a file does not
        load.
    """
    folder = Path(folder)
    try:
        manifest = json.loads((folder / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {str(folder)!r} is incomplete: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {str(folder)!r}: unreadable {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {str(folder)!r}: manifest format must be {FORMAT}")
    try:
        blobs = {name: _verified(folder / name, digest) for name, digest in manifest["files"].items()}
        n_shards = int(manifest["n_shards"])
        return Checkpoint(
            iteration=int(manifest["iteration"]),
            filters=np.load(io.BytesIO(blobs["filters.npy"]), allow_pickle=False),
            power_vector=np.load(io.BytesIO(blobs["power_vector.npy"]), allow_pickle=False),
            shard_states=[pickle.loads(blobs[f"shard-{i:03d}.pkl"]) for i in range(n_shards)],
            history=[IterStats(**h) for h in json.loads(blobs["history.json"])],
            meta=manifest.get("meta", {}),
            path=folder,
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, OSError, pickle.UnpicklingError, EOFError) as exc:
        raise CheckpointError(f"checkpoint {str(folder)!r} does not load: {type(exc).__name__}: {exc}") from None


def _verified(path: Path, digest: str) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {str(path)!r} is missing or unreadable: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CheckpointError(f"checkpoint file {str(path)!r} is corrupted: sha256 {actual}, manifest says {digest}")
    return data


def latest_checkpoint(root: str | Path) -> Checkpoint | None:
    """The newest valid checkpoint under `root`, or None; invalid ones are logged and skipped."""
    for _, folder in reversed(checkpoint_folders(root)):
        try:
            return read_checkpoint(folder)
        except CheckpointError as exc:
            logger.warning("skipping checkpoint: %s", exc)
    return None


def clear_checkpoints(root: str | Path) -> int:
    """Remove every checkpoint folder under `root` (a fresh run); returns how many there were."""
    folders = checkpoint_folders(root)
    for _, p in folders:
        shutil.rmtree(p)
    return len(folders)
