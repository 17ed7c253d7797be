"""A finished job's per-image results, served without holding them: its shards' parts, streamed.

The shard actors write each result in parts, one per shard (``maps-L<l>.part-<i>.npy`` (n_i, K, H', W'),
``switches-L<l>.part-<i>.npy``, ``reconstructions.part-<i>.npy`` (n_i, C, H, W) float32), and the runner records
them with an index, ``shards.json``: the image range of each part and the parts' artifact names. From it,

* :func:`maps_zip` streams a layer's maps as one ``.npz`` (a zip of ``image-00000.npy``, ... built on the fly, a few
  images at a time);
* :func:`stacked_npy` streams the parts of one result as one ``.npy`` of every image (the header for the whole
  array, then each part's data);
* :func:`image_rows` reads some images' rows only (a ranged read where the store is remote).

Memory stays bounded by a few images whatever the dataset's size. The two streams read each part whole, in
order, and hash it on the way: a part whose bytes are not those its content hash names ends the stream short
(the zip has no central directory, the npy fewer bytes than its header says), so a client never takes damaged
maps for results. :func:`image_rows` reads a few rows of a part and cannot verify them: that would read the
whole part (up to a shard's share of the dataset) for one image.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from .artifacts import ArtifactCorruptError, check_digest, verified_chunks
from .objects import Part, array_header, npy_chunks, npy_header_for, read_header, rows_of_parts
from .store import JobStore

INDEX = "shards.json"
_CHUNK = 1 << 22
_BATCH_BYTES = 1 << 23  # rows read at once while streaming a zip


class ResultsNotStoredError(LookupError):
    """The job has no per-shard results (it has not succeeded)."""


@dataclass(frozen=True)
class ResultIndex:
    """What ``shards.json`` says: the image count, and per result the parts (artifact name, image range)."""

    n_images: int
    ranges: list[tuple[int, int]]
    layers: list[dict[str, Any]]
    reconstructions: list[str]

    @classmethod
    def load(cls, store: JobStore, job_id: str) -> ResultIndex:
        raw = store.read_artifact(job_id, INDEX)
        if raw is None:
            raise ResultsNotStoredError(f"job {job_id} has no stored results")
        data = json.loads(raw)
        ranges = [(p["first"], p["count"]) for p in data["parts"]]
        return cls(int(data["n_images"]), ranges, data["layers"], data["reconstructions"])

    def parts(self, store: JobStore, job_id: str, names: list[str]) -> list[Part]:
        """The parts named `names` (one per shard, in order) as locations in the artifact store."""
        located = []
        for name, (first, count) in zip(names, self.ranges, strict=True):
            record = store.artifact(job_id, name)
            if record is None:
                raise ResultsNotStoredError(f"job {job_id} has no artifact {name!r}")
            located.append(Part(store.artifacts.location(record.key), first, count, record.key[:64]))
        return located

    def maps(self, store: JobStore, job_id: str, layer: int) -> list[Part]:
        return self.parts(store, job_id, self.layers[layer - 1]["maps"])

    def reconstruction_parts(self, store: JobStore, job_id: str) -> list[Part]:
        return self.parts(store, job_id, self.reconstructions)


def etag(parts: list[Part], *extra: Any) -> str:
    """An ETag for a response built from `parts` (their keys are content hashes) and `extra` (the query)."""
    text = "|".join([*(p.location.key for p in parts), *map(str, extra)])
    return f'"{hashlib.sha256(text.encode()).hexdigest()}"'


def image_rows(parts: list[Part], start: int, stop: int) -> np.ndarray:
    """Rows ``start:stop`` of the images the parts cover, read alone."""
    return rows_of_parts(parts, start, stop)


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable file whose bytes are taken out as they come (zipfile writes data descriptors)."""

    def __init__(self) -> None:
        self._chunks: list[memoryview] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        view = memoryview(data)  # kept as is until take(): the image it shows is alive until the next batch
        self._chunks.append(view)
        return view.nbytes

    def take(self) -> bytes:
        out = b"".join(self._chunks)
        self._chunks.clear()
        return out


def maps_zip(parts: list[Part]) -> Iterator[bytes]:
    """The maps of every image, as the ``.npz`` that ``numpy.load`` reads (``image-00000``, ...), streamed a few
    images at a time, each part verified against its content hash (see the module docstring)."""
    pipe = _Pipe()
    with zipfile.ZipFile(pipe, "w", zipfile.ZIP_STORED) as archive:
        for part in parts:
            for start, batch in _verified_batches(part):
                for offset, image in enumerate(batch):
                    with archive.open(f"image-{start + offset:05d}.npy", "w") as entry:
                        for chunk in npy_chunks(image):
                            entry.write(chunk)
                    yield pipe.take()
    yield pipe.take()


def _verified_batches(part: Part) -> Iterator[tuple[int, np.ndarray]]:
    """(first image, rows) of `part`, a few MiB at a time, read in order and hashed: the last batch comes out
    only once the whole part has matched its hash (ArtifactCorruptError otherwise)."""
    digest = hashlib.sha256()
    with part.location.open() as fh:
        shape, dtype, fortran, offset = read_header(fh)
        if fortran or dtype.hasobject or shape[0] != part.count:
            raise ArtifactCorruptError(f"{part.location} is not a part of {part.count} C-order rows")
        fh.seek(0)
        digest.update(fh.read(offset))
        row_bytes = max(1, int(np.prod(shape[1:], dtype=np.int64)) * dtype.itemsize)
        step = max(1, _BATCH_BYTES // row_bytes)
        held = None
        for start in range(0, part.count, step):
            rows = min(step, part.count - start)
            data = fh.read(rows * row_bytes)
            if len(data) != rows * row_bytes:
                raise ArtifactCorruptError(f"{part.location} is truncated")
            digest.update(data)
            if held is not None:
                yield held
            held = (part.first + start, np.frombuffer(data, dtype=dtype).reshape((rows, *shape[1:])))
        digest.update(fh.read())  # bytes past the rows change the hash too
    check_digest(str(part.location), digest.hexdigest(), part.sha256)
    if held is not None:
        yield held


def stacked_shape(parts: list[Part]) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of the array :func:`stacked_npy` streams: every part's rows, in order."""
    headers = [array_header(p.location) for p in parts]
    return (sum(shape[0] for shape, _ in headers), *headers[0][0][1:]), headers[0][1]


def stacked_npy(parts: list[Part]) -> Iterator[bytes]:
    """One ``.npy`` of every image's rows (the header of the whole array, then each part's data), streamed."""
    shape, dtype = stacked_shape(parts)
    yield npy_header_for(shape, dtype)
    for part in parts:
        with part.location.open() as fh:
            _, _, _, offset = read_header(fh)
            fh.seek(0)  # the header is hashed with the rest, but the stream has the whole array's
            yield from verified_chunks(fh, part.sha256, str(part.location), skip=offset, chunk=_CHUNK)
