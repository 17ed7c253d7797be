"""Content-addressed artifact stores: a local folder (the embedded default) and any fsspec URL (``s3://``, ...).

An artifact is a byte string named by its sha256 and a suffix (``<sha256>.npy``); identical results are stored
once, a key says what its bytes are, and a reader can check them. Both stores have the same interface:
:meth:`~ArtifactStore.put` returns the key, :meth:`~ArtifactStore.get` returns the bytes after checking their
sha256 (:class:`ArtifactCorruptError` otherwise), :meth:`~ArtifactStore.local_path` gives a file path where the
store has one (Ray workers on the same host read dataset images from there).

Local writes are atomic: a temporary file in the destination folder, fsync, ``os.replace``, so a crash leaves either
nothing or the whole artifact (never a truncated one under its final name). An S3 PUT is atomic per object.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Protocol

import numpy as np

from ..distributed.checkpoint import atomic_write_bytes
from .objects import Location, ObjectStore, filesystem_for, has_buckets, npy_chunks, write_array

_COPY_CHUNK = 1 << 22

KEY_PATTERN = re.compile(r"^[0-9a-f]{64}(\.[a-z0-9]{1,8})?$")


class ArtifactCorruptError(RuntimeError):
    """An artifact whose bytes no longer hash to its key (or that is missing)."""


def artifact_key(data: bytes, suffix: str = "") -> str:
    """The key of `data`: its sha256 in hex, plus `suffix` (``".npy"``, ``".png"``, ...)."""
    _check_suffix(suffix)
    return hashlib.sha256(data).hexdigest() + suffix


def check_key(key: str) -> str:
    """`key` if it is a well-formed artifact key; ValueError otherwise (keys reach paths: no traversal)."""
    if not isinstance(key, str) or not KEY_PATTERN.match(key):
        raise ValueError(f"artifact key must be a sha256 hex digest with an optional suffix, got {key!r}")
    return key


def _check_suffix(suffix: str) -> None:
    if suffix and not re.fullmatch(r"\.[a-z0-9]{1,8}", suffix):
        raise ValueError(f"artifact suffix must look like '.npy', got {suffix!r}")


class ArtifactStore(Protocol):
    """Where job artifacts live; see the module docstring."""

    def put(self, data: bytes, suffix: str = "") -> str: ...

    def get(self, key: str) -> bytes: ...

    def exists(self, key: str) -> bool: ...

    def local_path(self, key: str) -> Path | None: ...

    @property
    def url(self) -> str: ...

    def location(self, key: str) -> Location: ...

    def put_array(self, array: np.ndarray) -> tuple[str, int]: ...

    def adopt(self, source: Location, key: str, size: int) -> None: ...


class _ObjectsMixin:
    """What both stores share through :class:`~workers.jobs.objects.ObjectStore`: a location per key, and arrays
    stored without a copy in memory (what shard actors write their parts with)."""

    objects: ObjectStore

    @property
    def url(self) -> str:
        """The store's folder or URL: :func:`open_artifact_store` of it opens the same store on another node."""
        return self.objects.url

    def location(self, key: str) -> Location:
        """Where the bytes of `key` are, for a reader on any node."""
        check_key(key)
        return self.objects.at(f"{key[:2]}/{key}")

    def put_array(self, array: np.ndarray) -> tuple[str, int]:
        """Store `array` as ``.npy``, hashed then written in pieces (never a second copy of it in memory).

        Returns
        -------
        (str, int)
            The key and the size in bytes.
        """
        digest, size = hashlib.sha256(), 0
        for chunk in npy_chunks(array):
            digest.update(chunk)
            size += len(chunk)
        key = digest.hexdigest() + ".npy"
        location = self.location(key)
        if not (self.objects.exists(location.key) and self.objects.size(location.key) == size):
            write_array(location, array)
        return key, size

    def adopt(self, source: Location, key: str, size: int) -> None:
        """Make the object at `source`, whose bytes hash to `key` (`size` bytes), the artifact `key`, without
        passing its bytes through this process where the stores allow: a hard link when both are in one local
        filesystem, a copy inside the object store otherwise (S3's server-side copy), else streamed. Nothing when
        the artifact is there already. The source stays, for its owner to remove (a job's work store).

        Raises
        ------
        ArtifactCorruptError
            When neither the artifact nor the source is there.
        """
        target = self.location(key)
        if self.objects.exists(target.key) and self.objects.size(target.key) == size:
            return
        if not source.store.exists(source.key):
            raise ArtifactCorruptError(f"artifact {key} is neither in {self.objects.url} nor at {source}")
        if self.objects.local and source.store.local and _link(Path(source.store.url) / source.key, target):
            return
        if not self.objects.local and not source.store.local:
            fs, src = source.store.remote(source.key)
            fs_target, dst = self.objects.remote(target.key)
            if type(fs) is type(fs_target):  # one copy that appears whole, as a PUT does
                fs.copy(src, dst)
                return
        with source.open() as fh:
            self.objects.write_with(target.key, lambda out: shutil.copyfileobj(fh, out, _COPY_CHUNK))


def _link(source: Path, target: Location) -> bool:
    """Hard-link `source` (written atomically: complete, fsynced) as `target` in a local store, through a temporary
    name replaced atomically; False where the filesystem cannot (another device, no hard links)."""
    path = Path(target.store.url) / target.key
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.link")
    try:
        tmp.unlink(missing_ok=True)
        os.link(source, tmp)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)
        return False
    return True


class LocalArtifactStore(_ObjectsMixin):
    """Artifacts as files ``root/ab/abcdef....npy``.

    Parameters
    ----------
    root : path
        Created if missing.
    """

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.objects = ObjectStore(str(self.root))

    def _path(self, key: str) -> Path:
        check_key(key)
        return self.root / key[:2] / key

    def put(self, data: bytes, suffix: str = "") -> str:
        key = artifact_key(data, suffix)
        path = self._path(key)
        if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
            return key  # already there, intact (a damaged file of the same size is written again)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
        return key

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise ArtifactCorruptError(f"artifact {key} is missing from {self.root}") from None
        _verify(key, data)
        return data

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def local_path(self, key: str) -> Path | None:
        return self._path(key)


class FsspecArtifactStore(_ObjectsMixin):
    """Artifacts under an fsspec URL (``s3://bucket/prefix``, ``memory://x``, ``file:///...``).

    Needs the ``s3`` extra (fsspec, s3fs) for S3. Writes go through ``pipe`` (one PUT on object stores).
    """

    def __init__(self, url: str, **storage_options):
        self.objects = ObjectStore(url)
        self.fs, self.root = filesystem_for(url, **storage_options)  # with the store's deadlines

    def _path(self, key: str) -> str:
        check_key(key)
        return f"{self.root}/{key[:2]}/{key}"

    def put(self, data: bytes, suffix: str = "") -> str:
        key = artifact_key(data, suffix)
        path = self._path(key)
        if not self.fs.exists(path):
            if not has_buckets(self.fs):
                self.fs.makedirs(path.rsplit("/", 1)[0], exist_ok=True)
            self.fs.pipe(path, data)
        return key

    def get(self, key: str) -> bytes:
        try:
            data = self.fs.cat(self._path(key))
        except FileNotFoundError:
            raise ArtifactCorruptError(f"artifact {key} is missing from {self.objects.url}") from None
        _verify(key, data)
        return data

    def exists(self, key: str) -> bool:
        return bool(self.fs.exists(self._path(key)))

    def local_path(self, key: str) -> Path | None:
        return None


def open_artifact_store(location: str | Path) -> ArtifactStore:
    """A local store for a path (or ``file://`` with no scheme options), an fsspec store for another URL."""
    text = str(location)
    if "://" in text and not text.startswith("file://"):
        return FsspecArtifactStore(text)
    return LocalArtifactStore(text.removeprefix("file://"))


def _verify(key: str, data: bytes) -> None:
    check_digest(f"artifact {key}", hashlib.sha256(data).hexdigest(), key[:64])


def check_digest(name: str, digest: str, expected: str | None) -> None:
    """ArtifactCorruptError naming `name` when its bytes' sha256 `digest` is not the `expected` one (None: not
    known, nothing to check)."""
    if expected is not None and digest != expected:
        raise ArtifactCorruptError(f"{name} is damaged in the store: its bytes hash to {digest}")


def verified_chunks(
    fh: IO[bytes], expected: str | None, name: str, *, skip: int = 0, chunk: int = 1 << 22
) -> Iterator[bytes]:
    """The bytes of `fh` past its first `skip` (read from the start), a chunk at a time, every byte hashed on the
    way: the last chunk goes out only once the whole has matched `expected` (:func:`check_digest`), so a stream
    of damaged bytes ends short of its length."""
    digest, held = hashlib.sha256(fh.read(skip) if skip else b""), b""
    while data := fh.read(chunk):
        digest.update(data)
        if held:
            yield held
        held = data
    check_digest(name, digest.hexdigest(), expected)
    if held:
        yield held
