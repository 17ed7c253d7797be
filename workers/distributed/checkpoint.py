"""Checkpoints of a distributed learning run: filters, power vector, every shard's state, history; manifest last.

A checkpoint is a folder ``ckpt-<iteration>`` under the run's checkpoint store (a local folder or any fsspec URL,
see :class:`~workers.jobs.objects.ObjectStore`)::

    shard-000.pkl ...   each shard's ``state()`` (maps and inference state, host arrays), pickled: written by the
                        shard actor itself, so the maps never pass through the coordinator
    filters.npy         (K, C, s, s) filters after that outer iteration
    power_vector.npy    warm start of the power iteration of the filter step size
    history.json        the IterStats of the iterations done so far
    manifest.json       iteration, file names with their sha256 and size, and the run's identity

Every file is written atomically (:meth:`ObjectStore.write`), and the manifest is written last, by the
coordinator, once every shard's part is there: a folder without a manifest is an incomplete checkpoint and is
ignored. The small files are verified against the manifest's sha256 when the checkpoint is read; a shard's part
is verified by size there and by sha256 where it is loaded (:func:`read_shard_state`, in the shard actor), so
that the coordinator never reads the shards' maps. :func:`latest_checkpoint` returns the newest valid checkpoint;
the last :data:`KEEP` complete ones are kept. The pickles are our own files, read only after their checksums match.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import logging
import pickle
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from solver.models.learn import IterStats

from ..jobs.objects import Location, ObjectStore, atomic_write_with, npy_bytes

logger = logging.getLogger(__name__)

FORMAT = 2
MANIFEST = "manifest.json"
KEEP = 2
_PREFIX = "ckpt-"

__all__ = ["atomic_write_bytes", "npy_bytes"]


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: incomplete, corrupted, or of another run."""


@dataclass(frozen=True)
class ShardPart:
    """One shard's part of a checkpoint: where it is, and what the manifest says of it."""

    location: Location
    sha256: str
    size: int


@dataclass(frozen=True)
class Checkpoint:
    """A verified checkpoint, loaded but for the shards' parts.

    Attributes
    ----------
    iteration : int
        Outer iterations done.
    filters : ndarray of shape (K, C, s, s)
    power_vector : ndarray of shape (K, C, s, s)
    shard_parts : list of ShardPart
        Every shard's state, in shard order (each shard actor reads its own).
    history : list of IterStats
        One record per outer iteration 1..iteration.
    meta : dict
        What the writer passed as ``meta`` (the run's identity), from the manifest.
    path : str
        The checkpoint folder (a path or URL).
    """

    iteration: int
    filters: np.ndarray
    power_vector: np.ndarray
    shard_parts: list[ShardPart]
    history: list[IterStats]
    meta: dict[str, Any]
    path: str

    @property
    def shard_states(self) -> list[dict[str, Any]]:
        """Every shard's state, read here and verified (for a run in one process; the actors read their own)."""
        return [read_shard_state(part) for part in self.shard_parts]


def atomic_write_bytes(path: str | Path, data: bytes) -> str:
    """Write `data` to the local file `path` atomically (temporary file in the same folder, fsync,
    ``os.replace``).

    Returns
    -------
    str
        The sha256 of `data`, hex.
    """
    return atomic_write_with(Path(path), lambda fh: fh.write(data))[0]


def as_store(root: str | Path | ObjectStore) -> ObjectStore:
    return root if isinstance(root, ObjectStore) else ObjectStore(str(root))


def folder_name(iteration: int) -> str:
    return f"{_PREFIX}{iteration:06d}"


def checkpoint_folders(root: str | Path | ObjectStore) -> list[tuple[int, ObjectStore]]:
    """(iteration, folder) of every checkpoint folder under `root`, complete or not, oldest first."""
    root = as_store(root)
    found = []
    for name in root.list():
        suffix = name[len(_PREFIX) :]
        if name.startswith(_PREFIX) and suffix.isdigit():
            found.append((int(suffix), root.child(name)))
    return sorted(found, key=lambda item: item[0])


def begin_checkpoint(root: str | Path | ObjectStore, iteration: int) -> ObjectStore:
    """The folder of the checkpoint of `iteration`, without a manifest (incomplete) until :func:`write_checkpoint`
    ends it: a rewrite after a rollback is never taken for the old, complete one."""
    if iteration < 0:
        raise ValueError(f"iteration must be non-negative, got {iteration}")
    folder = as_store(root).child(folder_name(iteration))
    folder.remove(MANIFEST)
    return folder


def write_shard_state(folder: ObjectStore, index: int, state: dict[str, Any]) -> ShardPart:
    """Write one shard's state into a checkpoint folder (by the shard itself), streamed: the arrays go to the
    store as pickle protocol 5 writes them, without a pickled copy in memory."""
    key = f"shard-{index:03d}.pkl"
    digest, size = folder.write_with(key, lambda fh: pickle.dump(state, fh, protocol=5))
    return ShardPart(folder.at(key), digest, size)


def read_shard_state(part: ShardPart) -> dict[str, Any]:
    """A shard's state from its part of a checkpoint, after its sha256 matched the manifest's.

    Raises
    ------
    CheckpointError
        When the part is missing, or its bytes are not those the manifest names.
    """
    try:
        data = part.location.read()
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {str(part.location)!r} is missing or unreadable: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != part.sha256:
        raise CheckpointError(
            f"checkpoint file {str(part.location)!r} is corrupted: sha256 {actual}, manifest says {part.sha256}"
        )
    return pickle.loads(data)  # noqa: S301  (our own file, its checksum verified)


def write_checkpoint(
    root: str | Path | ObjectStore,
    iteration: int,
    filters: np.ndarray,
    power_vector: np.ndarray,
    shards: Sequence[dict[str, Any] | ShardPart],
    history: Sequence[IterStats],
    meta: dict[str, Any],
    *,
    keep: int = KEEP,
) -> ObjectStore:
    """Write a checkpoint of `iteration` under `root`, manifest last, and prune old ones.

    Parameters
    ----------
    root : path, URL or ObjectStore
        The run's checkpoint store.
    iteration : int
        Outer iterations done (≥ 0).
    filters, power_vector : ndarray
    shards : sequence of ShardPart or dict
        Every shard's part, in shard order: written by the shards into :func:`begin_checkpoint`'s folder
        (:func:`write_shard_state`), or their states, written here.
    history : sequence of IterStats
    meta : dict
        JSON-serialisable identity of the run (config, image files, shard count...), stored in the manifest.
    keep : int
        How many complete checkpoints to keep (≥ 1); older folders, and any folder of a later iteration (left by
        a run that was rolled back), are removed.

    Returns
    -------
    ObjectStore
        The checkpoint folder.
    """
    if keep < 1:
        raise ValueError(f"keep must be at least 1, got {keep}")
    root = as_store(root)
    folder = root.child(folder_name(iteration))
    if not all(isinstance(s, ShardPart) for s in shards):
        folder = begin_checkpoint(root, iteration)
        shards = [write_shard_state(folder, i, s) for i, s in enumerate(shards)]
    files = {
        "filters.npy": npy_bytes(filters),
        "power_vector.npy": npy_bytes(power_vector),
        "history.json": json.dumps([dataclasses.asdict(h) for h in history], indent=1).encode(),
    }
    checksums = {name: folder.write(name, data) for name, data in files.items()}
    sizes = {name: len(data) for name, data in files.items()}
    for part in shards:
        checksums[part.location.name], sizes[part.location.name] = part.sha256, part.size
    manifest = {
        "format": FORMAT,
        "iteration": iteration,
        "n_shards": len(shards),
        "files": checksums,
        "sizes": sizes,
        "meta": meta,
    }
    folder.write(MANIFEST, json.dumps(manifest, indent=1).encode())
    _prune(root, iteration, keep)
    logger.info("checkpoint of iteration %d written to %s", iteration, folder.url)
    return folder


def _prune(root: ObjectStore, newest: int, keep: int) -> None:
    folders = checkpoint_folders(root)
    complete = [it for it, f in folders if it <= newest and f.exists(MANIFEST)]
    oldest_kept = complete[-keep] if len(complete) >= keep else complete[0]
    for it, f in folders:
        if it < oldest_kept or it > newest:
            f.remove_all()


def read_checkpoint(folder: str | Path | ObjectStore) -> Checkpoint:
    """Load a checkpoint folder after checking its manifest, the sha256 of its small files and the size of every
    shard's part.

    Raises
    ------
    CheckpointError
        If the manifest is missing or unreadable, a file is missing or its checksum or size differs, or a file
        does not load.
    """
    folder = as_store(folder)
    try:
        manifest = json.loads(folder.read(MANIFEST))
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {folder.url!r} is incomplete: it has no {MANIFEST}") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {folder.url!r}: unreadable {MANIFEST}: {exc}") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise CheckpointError(f"checkpoint {folder.url!r}: manifest format must be {FORMAT}")
    try:
        files, sizes = manifest["files"], manifest["sizes"]
        blobs = {
            name: _verified(folder, name, files[name]) for name in ("filters.npy", "power_vector.npy", "history.json")
        }
        n_shards = int(manifest["n_shards"])
        parts = []
        for index in range(n_shards):
            name = f"shard-{index:03d}.pkl"
            _check_size(folder, name, int(sizes[name]))
            parts.append(ShardPart(folder.at(name), files[name], int(sizes[name])))
        return Checkpoint(
            iteration=int(manifest["iteration"]),
            filters=np.load(io.BytesIO(blobs["filters.npy"]), allow_pickle=False),
            power_vector=np.load(io.BytesIO(blobs["power_vector.npy"]), allow_pickle=False),
            shard_parts=parts,
            history=[IterStats(**h) for h in json.loads(blobs["history.json"])],
            meta=manifest.get("meta", {}),
            path=folder.url,
        )
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, OSError) as exc:
        raise CheckpointError(f"checkpoint {folder.url!r} does not load: {type(exc).__name__}: {exc}") from None


def _verified(folder: ObjectStore, name: str, digest: str) -> bytes:
    try:
        data = folder.read(name)
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {str(folder.at(name))!r} is missing or unreadable: {exc}") from None
    actual = hashlib.sha256(data).hexdigest()
    if actual != digest:
        raise CheckpointError(
            f"checkpoint file {str(folder.at(name))!r} is corrupted: sha256 {actual}, manifest says {digest}"
        )
    return data


def _check_size(folder: ObjectStore, name: str, size: int) -> None:
    try:
        actual = folder.size(name)
    except OSError as exc:
        raise CheckpointError(f"checkpoint file {str(folder.at(name))!r} is missing or unreadable: {exc}") from None
    if actual != size:
        raise CheckpointError(
            f"checkpoint file {str(folder.at(name))!r} is corrupted: {actual} bytes, manifest says {size}"
        )


def latest_checkpoint(root: str | Path | ObjectStore) -> Checkpoint | None:
    """The newest valid checkpoint under `root`, or None; invalid ones are logged and skipped."""
    for _, folder in reversed(checkpoint_folders(root)):
        try:
            return read_checkpoint(folder)
        except CheckpointError as exc:
            logger.warning("skipping checkpoint: %s", exc)
    return None


def clear_checkpoints(root: str | Path | ObjectStore) -> int:
    """Remove every checkpoint folder under `root` (a fresh run); returns how many there were."""
    folders = checkpoint_folders(root)
    for _, f in folders:
        f.remove_all()
    return len(folders)
