"""Where a job's bytes live: a store (a local folder or any fsspec URL) and keys under it.

Every node of a cluster reaches the same bytes through the same :class:`Location`: a store URL and a key, never a
host path. A local folder suits one machine (the embedded default); an fsspec URL such as ``s3://bucket/prefix``
suits a cluster, whose nodes then need only the store's credentials (for S3 the usual ``AWS_*`` variables,
``AWS_ENDPOINT_URL`` for an S3-compatible server).

Writes are atomic: on a local folder a temporary file in the destination folder, fsync, ``os.replace``; on an
object store one PUT (a multipart upload appears whole when it completes). A reader therefore sees either nothing
or the whole object, and a writer that publishes several objects writes its index (a manifest) last.

Stores are small frozen values (their URL): they pickle into Ray calls, and each process opens the filesystem
once per URL. Arrays are read and written in ``.npy`` format; :func:`read_rows` reads some rows of one without
reading the rest (a ranged read on an object store), which is how a shard reads its part of a layer's maps and how
the service serves one image of a result without holding the others.
"""

from __future__ import annotations

import functools
import hashlib
import io
import os
import posixpath
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np

_FILE_MODE = 0o644
_CHUNK = 1 << 22  # bytes per write of a streamed array, and per hash update


def is_url(location: str | Path) -> bool:
    """Whether `location` is an fsspec URL other than ``file://`` (an object store), not a local folder."""
    text = str(location)
    return "://" in text and not text.startswith("file://")


#: seconds an S3 store has to accept a connection, and to send each answer
STORE_CONNECT_TIMEOUT_S = 10.0
STORE_READ_TIMEOUT_S = 30.0
#: tries of one S3 request, by the client and by s3fs around it: a store that stops answering fails a call within
#: about STORE_ATTEMPTS² × STORE_READ_TIMEOUT_S (2 minutes), where the defaults (no read deadline past botocore's
#: 60 s, 5 × 5 tries) held a job and its cancel for a quarter of an hour and more
STORE_ATTEMPTS = 2


@functools.cache
def _filesystem(url: str) -> tuple[Any, str]:
    return filesystem_for(url)


def filesystem_for(url: str, **storage_options: Any) -> tuple[Any, str]:
    """(fsspec filesystem, root path) of `url`, with the store's deadlines on S3 (:data:`STORE_READ_TIMEOUT_S`,
    :data:`STORE_ATTEMPTS`) under any `storage_options` given; every store of the service is made here."""
    import fsspec  # noqa: PLC0415  (only a store on an fsspec URL needs it: the 's3' extra)

    s3 = url.split("://", 1)[0] in ("s3", "s3a")
    options: dict[str, Any] = dict(storage_options)
    if s3:
        options["config_kwargs"] = {
            "connect_timeout": STORE_CONNECT_TIMEOUT_S,
            "read_timeout": STORE_READ_TIMEOUT_S,
            "retries": {"max_attempts": STORE_ATTEMPTS, "mode": "standard"},
            **options.get("config_kwargs", {}),
        }
    fs, root = fsspec.core.url_to_fs(url, **options)
    if s3 and hasattr(fs, "retries"):  # s3fs's own loop around the client's
        fs.retries = STORE_ATTEMPTS
    return fs, root.rstrip("/")


class StoreUnreachable(ConnectionError):
    """The object store of a URL did not answer (a wrong or unreachable ``AWS_ENDPOINT_URL``, a network down)."""


#: seconds a store has to answer :func:`check_store` (its client's own retries can take minutes)
STORE_CHECK_TIMEOUT_S = 15.0


def check_store(url: str | Path | None, setting: str, *, timeout: float = STORE_CHECK_TIMEOUT_S) -> None:
    """Check that the object store of `url` answers and that its bucket exists, before any work relies on it.

    A local folder, and a filesystem without buckets (``memory://``), pass as they are: a folder is created when
    it is written. A bucket is never created here or later: a typo in a setting must not send a job's bytes to a
    new bucket.

    Parameters
    ----------
    url : str, Path or None
        The location; None passes.
    setting : str
        What the user set it with (``DECONV_ARTIFACTS``, ``--out``), named in the error.
    timeout : float
        Seconds to wait for the store's answer.

    Raises
    ------
    ValueError
        When `url` names no bucket, or its bucket does not exist.
    StoreUnreachable
        When the store does not answer within `timeout`, or its client fails the request (no network, a server
        that is not S3, credentials it refuses).
    """
    if url is None or not is_url(url):
        return
    text = str(url)
    try:
        fs, root = _filesystem(text)
    except (ImportError, ValueError) as exc:
        raise ValueError(f"{setting}: cannot open {text!r}: {exc}") from None
    if not has_buckets(fs):  # memory://: nothing to find missing
        return
    bucket = fs.split_path(root)[0]
    if not bucket:  # s3:// alone would become the local folder 's3:' further on
        raise ValueError(f"{setting}: {text!r} names no bucket (a URL such as s3://BUCKET/PREFIX)")
    endpoint = os.environ.get("AWS_ENDPOINT_URL") if text.startswith(("s3://", "s3a://")) else None
    at = f" at {endpoint} (AWS_ENDPOINT_URL)" if endpoint else ""
    if endpoint:  # a refused connection is known at once; the client would retry it for minutes
        _check_endpoint(endpoint, min(timeout, 10.0), f"{setting}: cannot reach the store of {text}{at}")
    answer: dict[str, Any] = {}

    def probe() -> None:
        try:
            answer["exists"] = _bucket_exists(fs, bucket)
        except Exception as exc:  # noqa: BLE001  (reported below, in one line, whatever the client raised)
            answer["error"] = exc

    # the client's retries against an endpoint that does not answer take minutes: the probe runs aside and is
    # abandoned (a daemon thread) when it has not answered in time
    thread = threading.Thread(target=probe, name="store-check", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise StoreUnreachable(f"{setting}: the store of {text}{at} did not answer within {timeout:g} s")
    if "error" in answer:
        exc = answer["error"]
        first = (str(exc).strip().splitlines() or [""])[0]
        hint = " (is it an S3 server?)" if _error_code(exc) == "404" else ""
        raise StoreUnreachable(f"{setting}: cannot use the store of {text}{at}: {type(exc).__name__}: {first}{hint}")
    if not answer["exists"]:
        raise ValueError(
            f"{setting}: the bucket {bucket!r} of {text} does not exist{at}: create it first (deconv creates no "
            "bucket, so that a misspelt name fails here)"
        )


def has_buckets(fs: Any) -> bool:
    """Whether an fsspec filesystem is an object store of buckets (S3, GCS, Azure: their paths start with one),
    which has no folders to make and whose ``makedirs`` would create a missing bucket."""
    return hasattr(fs, "split_path")


def _bucket_exists(fs: Any, bucket: str) -> bool:
    """Whether `bucket` exists; any other failure of the client is raised.

    fsspec's ``exists`` answers False for every error (a server that is not S3, no network, bad credentials),
    which would read as a missing bucket. On S3 a listing of one key tells them apart: only S3's own
    ``NoSuchBucket`` is a missing bucket (a plain HTTP server answers a bare 404 to the same request).
    """
    if hasattr(fs, "call_s3"):  # s3fs
        try:
            fs.call_s3("list_objects_v2", Bucket=bucket, MaxKeys=1)
        except FileNotFoundError as exc:
            if _error_code(exc) == "NoSuchBucket":
                return False
            raise
        return True
    try:
        fs.info(bucket)
    except FileNotFoundError:
        return False
    return True


def _error_code(exc: BaseException) -> str | None:
    """The S3 error code behind an error s3fs translated (``NoSuchBucket``, ``404``), when there is one."""
    response = getattr(exc.__cause__, "response", None)
    return response.get("Error", {}).get("Code") if isinstance(response, dict) else None


def _check_endpoint(endpoint: str, timeout: float, failure: str) -> None:
    """A TCP connection to the host and port of the URL `endpoint`, or StoreUnreachable saying `failure` and why."""
    from urllib.parse import urlsplit  # noqa: PLC0415

    parts = urlsplit(endpoint)
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise ValueError(f"AWS_ENDPOINT_URL must be a URL such as http://host:9000, got {endpoint!r}") from None
    if not parts.hostname:
        raise ValueError(f"AWS_ENDPOINT_URL must be a URL such as http://host:9000, got {endpoint!r}")
    reason = tcp_unreachable(parts.hostname, port, timeout)
    if reason is not None:
        raise StoreUnreachable(f"{failure}: {reason}")


def tcp_unreachable(host: str, port: int, timeout: float) -> str | None:
    """Why a TCP connection to `host`:`port` does not open within `timeout` seconds (``connection refused``, ``no
    answer within 10 s``), or None when it opens: the first check of an address whose client (Ray's, S3's) would
    retry for minutes before it says anything."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as exc:
        reason = f"no answer within {timeout:g} s" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        return reason.lower()
    return None


def check_object_key(key: str) -> str:
    """`key` if it is a relative key without ``..`` or empty parts; ValueError otherwise (keys reach paths)."""
    parts = key.split("/") if isinstance(key, str) else []
    if not parts or any(p in ("", ".", "..") for p in parts) or "\\" in key:
        raise ValueError(f"an object key must be a relative path of named parts, got {key!r}")
    return key


def atomic_write_with(path: Path, produce: Callable[[IO[bytes]], Any]) -> tuple[str, int]:
    """Write what `produce` writes to the local file `path` atomically (a temporary file in the same folder,
    fsync, ``os.replace``), hashing it on the way; returns (sha256 hex, size)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as raw:
            fh = _HashingWriter(raw)
            produce(fh)
            raw.flush()
            os.fsync(raw.fileno())
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600; results are meant to be read by others too
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return fh.digest.hexdigest(), fh.size


@dataclass(frozen=True)
class ObjectStore:
    """A store of bytes by key: a local folder, or any fsspec URL (``s3://bucket/prefix``, ``memory://x``).

    Parameters
    ----------
    url : str
        A folder path (``file://`` allowed) or an fsspec URL; trailing slashes are dropped.
    """

    url: str

    def __post_init__(self) -> None:
        url = str(self.url)
        if not is_url(url):
            url = str(Path(url.removeprefix("file://")).resolve())
        object.__setattr__(self, "url", url.rstrip("/") or "/")

    @property
    def local(self) -> bool:
        """True for a local folder."""
        return not is_url(self.url)

    def child(self, prefix: str) -> ObjectStore:
        """The store of the keys under `prefix`."""
        return ObjectStore(f"{self.url}/{check_object_key(prefix)}")

    def at(self, key: str) -> Location:
        """The location of `key` in this store."""
        return Location(self, check_object_key(key))

    def _local(self, key: str) -> Path:
        return Path(self.url) / check_object_key(key)

    def _remote(self, key: str) -> tuple[Any, str]:
        fs, root = _filesystem(self.url)
        return fs, f"{root}/{check_object_key(key)}"

    def remote(self, key: str) -> tuple[Any, str]:
        """(fsspec filesystem, path) of `key` in a store on an fsspec URL (for copies inside one filesystem)."""
        if self.local:
            raise ValueError(f"{self.url} is a local folder, not an fsspec URL")
        return self._remote(key)

    # -- reading -------------------------------------------------------------------------------------------------

    def open(self, key: str) -> IO[bytes]:
        """A binary file to read `key` (seekable: reads of a part of it are ranged reads on an object store).

        Raises
        ------
        FileNotFoundError
            When there is no such key.
        """
        if self.local:
            return open(self._local(key), "rb")  # noqa: SIM115  (the caller closes it)
        fs, path = self._remote(key)
        return fs.open(path, "rb")

    def read(self, key: str) -> bytes:
        """The bytes of `key` (FileNotFoundError when missing)."""
        if self.local:
            return self._local(key).read_bytes()
        fs, path = self._remote(key)
        return fs.cat_file(path)

    def exists(self, key: str) -> bool:
        if self.local:
            return self._local(key).is_file()
        fs, path = self._remote(key)
        return bool(fs.isfile(path))

    def size(self, key: str) -> int:
        """Bytes of `key` (FileNotFoundError when missing)."""
        if self.local:
            return self._local(key).stat().st_size
        fs, path = self._remote(key)
        return int(fs.size(path))

    def list(self, prefix: str = "") -> list[str]:
        """The names directly under `prefix` (files and folders), sorted; empty when there is none."""
        if self.local:
            folder = Path(self.url) / check_object_key(prefix) if prefix else Path(self.url)
            return sorted(p.name for p in folder.iterdir()) if folder.is_dir() else []
        fs, path = self._remote(prefix) if prefix else _filesystem(self.url)
        try:
            entries = fs.ls(path, detail=False, refresh=True)
        except FileNotFoundError:
            return []
        return sorted({posixpath.basename(e.rstrip("/")) for e in entries} - {""})

    # -- writing -------------------------------------------------------------------------------------------------

    def write(self, key: str, data: bytes) -> str:
        """Write `data` under `key` atomically; returns its sha256 (hex)."""
        return self.write_with(key, lambda fh: fh.write(data))[0]

    def write_with(self, key: str, produce: Callable[[IO[bytes]], Any]) -> tuple[str, int]:
        """Write what `produce` writes to the file it is given under `key`, atomically, without holding it all
        in memory; returns (sha256 hex, size)."""
        if self.local:
            path = self._local(key)
            path.parent.mkdir(parents=True, exist_ok=True)
            return atomic_write_with(path, produce)
        fs, path = self._remote(key)
        with fs.open(path, "wb") as raw:  # an object appears when its upload completes, whole
            fh = _HashingWriter(raw)
            produce(fh)
        return fh.digest.hexdigest(), fh.size

    def remove(self, prefix: str) -> None:
        """Remove `prefix` and everything under it (nothing when it is not there)."""
        if self.local:
            import shutil  # noqa: PLC0415

            target = self._local(prefix)
            if target.is_dir():
                shutil.rmtree(target, ignore_errors=True)
            else:
                target.unlink(missing_ok=True)
            return
        fs, path = self._remote(prefix)
        try:
            fs.rm(path, recursive=True)
        except FileNotFoundError:
            pass

    def remove_all(self) -> None:
        """Remove everything in this store (a job's work folder at its end)."""
        if self.local:
            import shutil  # noqa: PLC0415

            shutil.rmtree(self.url, ignore_errors=True)
            return
        fs, root = _filesystem(self.url)
        try:
            fs.rm(root, recursive=True)
        except FileNotFoundError:
            pass


@dataclass(frozen=True)
class Location:
    """One object: a store and a key in it. What crosses process and node boundaries instead of a host path."""

    store: ObjectStore
    key: str

    def __str__(self) -> str:
        return f"{self.store.url}/{self.key}"

    @property
    def name(self) -> str:
        return posixpath.basename(self.key)

    def open(self) -> IO[bytes]:
        return self.store.open(self.key)

    def read(self) -> bytes:
        return self.store.read(self.key)


class _HashingWriter:
    """A write-only file that hashes and counts what passes through it to `raw`."""

    def __init__(self, raw: IO[bytes]):
        self.raw, self.digest, self.size = raw, hashlib.sha256(), 0

    def write(self, data: Any) -> int:
        view = memoryview(data)  # bytes, a memoryview, or the PickleBuffer of an array that pickle writes as is
        self.digest.update(view)
        self.size += view.nbytes
        self.raw.write(view)
        return view.nbytes


def as_location(source: str | Path | Location) -> Location:
    """A location for a file path or URL (its folder as the store), or `source` itself."""
    if isinstance(source, Location):
        return source
    text = str(source)
    if is_url(text):
        head, _, name = text.rstrip("/").rpartition("/")
        return ObjectStore(head).at(name)
    path = Path(text.removeprefix("file://"))
    return ObjectStore(str(path.parent)).at(path.name)


# -- arrays in .npy format ----------------------------------------------------------------------------------------


def npy_bytes(array: np.ndarray) -> bytes:
    """`array` in ``.npy`` format, in memory."""
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npy_header(array: np.ndarray) -> bytes:
    """The ``.npy`` header of `array` (what precedes its C-order data in the file :func:`npy_bytes` gives)."""
    a = np.asarray(array)
    return npy_header_for(a.shape, a.dtype)


def npy_header_for(shape: Sequence[int], dtype: np.dtype | str) -> bytes:
    """The ``.npy`` header of a C-order array of this shape and dtype."""
    buffer = io.BytesIO()
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(dtype)), "fortran_order": False, "shape": tuple(shape)}
    np.lib.format.write_array_header_1_0(buffer, header)
    return buffer.getvalue()


def npy_chunks(array: np.ndarray) -> Iterator[memoryview | bytes]:
    """The ``.npy`` file of `array` in pieces of at most a few MiB, without a copy of the whole array."""
    a = np.ascontiguousarray(array)
    yield npy_header(a)
    flat = memoryview(a.reshape(-1).view(np.uint8)) if a.size else memoryview(b"")
    for start in range(0, len(flat), _CHUNK):
        yield flat[start : start + _CHUNK]


def write_array(location: Location, array: np.ndarray) -> tuple[str, int]:
    """Write `array` as ``.npy`` at `location`, streamed (no second copy in memory); returns (sha256, size)."""

    def produce(fh: IO[bytes]) -> None:
        for chunk in npy_chunks(array):
            fh.write(chunk)

    return location.store.write_with(location.key, produce)


def read_array(location: Location) -> np.ndarray:
    """The array of the ``.npy`` object at `location`."""
    with location.open() as fh:
        return np.lib.format.read_array(fh, allow_pickle=False)


def read_header(fh: IO[bytes]) -> tuple[tuple[int, ...], np.dtype, bool, int]:
    fmt = np.lib.format
    version = fmt.read_magic(fh)
    read = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
    shape, fortran, dtype = read(fh)
    return tuple(shape), np.dtype(dtype), bool(fortran), fh.tell()


def array_header(location: Location) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the ``.npy`` object at `location`, from its header only."""
    with location.open() as fh:
        shape, dtype, _, _ = read_header(fh)
    return shape, dtype


def read_rows(location: Location, start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the first axis of the ``.npy`` object at `location`, read without the others."""
    with location.open() as fh:
        shape, dtype, fortran, offset = read_header(fh)
        if fortran or dtype.hasobject:
            raise ValueError(f"{location} is not a C-order array of plain numbers")
        if not 0 <= start <= stop <= shape[0]:
            raise ValueError(f"rows {start}:{stop} are outside the {shape[0]} rows of {location}")
        row = int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize
        fh.seek(offset + start * row)
        data = fh.read((stop - start) * row)
    if len(data) != (stop - start) * row:
        raise ValueError(f"{location} is truncated: rows {start}:{stop} are not all there")
    return np.frombuffer(data, dtype=dtype).reshape((stop - start, *shape[1:])).copy()


@dataclass(frozen=True)
class Part:
    """Rows ``first .. first + count`` of a collection of images, stored as one ``.npy`` object of ``count`` rows.

    The per-shard outputs of a learning run (maps, pooled maps, switches, reconstructions) are parts; together,
    in order, the parts of one output cover every image once.
    """

    location: Location
    first: int
    count: int
    sha256: str | None = None  # the object's content hash where it is known (an artifact): reads may verify it

    @property
    def stop(self) -> int:
        return self.first + self.count


def rows_of_parts(parts: Sequence[Part], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the images that `parts` cover, reading only the rows needed.

    Raises
    ------
    ValueError
        When the parts do not cover ``start:stop``.
    """
    pieces, at = [], start
    for part in sorted(parts, key=lambda p: p.first):
        lo, hi = max(at, part.first), min(stop, part.stop)
        if lo < hi:
            if lo != at:
                break
            pieces.append(read_rows(part.location, lo - part.first, hi - part.first))
            at = hi
    if at != stop or not pieces:
        raise ValueError(f"the parts do not cover images {start}:{stop}")
    return pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
