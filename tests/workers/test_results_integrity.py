"""A job's streamed results verify each part against its content hash: a damaged part ends the stream short of
a valid file (no zip directory, fewer npy bytes than the header says), never passes as maps."""

from __future__ import annotations

import hashlib
import io
import zipfile

import numpy as np
import pytest

from workers.jobs.artifacts import ArtifactCorruptError
from workers.jobs.objects import Part, as_location, write_array
from workers.jobs.results import maps_zip, stacked_npy


def _parts(tmp_path, arrays: list[np.ndarray]) -> list[Part]:
    parts, first = [], 0
    for i, array in enumerate(arrays):
        location = as_location(tmp_path / f"part-{i}.npy")
        sha, _ = write_array(location, array)
        parts.append(Part(location, first, len(array), sha))
        first += len(array)
    return parts


@pytest.fixture
def arrays() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.standard_normal((3, 2, 5, 5)).astype(np.float32), rng.standard_normal((2, 2, 5, 5)).astype(np.float32)]


def _damage(part: Part) -> None:
    path = part.location.store.url + "/" + part.location.key
    data = bytearray(open(path, "rb").read())
    data[-40:-24] = np.full(4, np.inf, np.float32).tobytes()  # the same size, other values: only the hash knows
    open(path, "wb").write(bytes(data))


def test_intact_parts_stream_as_every_image(tmp_path, arrays):
    parts = _parts(tmp_path, arrays)
    with np.load(io.BytesIO(b"".join(maps_zip(parts)))) as archive:
        np.testing.assert_array_equal(np.stack([archive[f"image-{i:05d}"] for i in range(5)]), np.concatenate(arrays))
    np.testing.assert_array_equal(np.load(io.BytesIO(b"".join(stacked_npy(parts)))), np.concatenate(arrays))


def _sent_before_the_error(stream, parts: list[Part], damaged: int) -> bytes:
    """What `stream` of `parts` sends before it stops on part `damaged`, damaged first."""
    _damage(parts[damaged])
    sent = []
    with pytest.raises(ArtifactCorruptError, match="damaged in the store"):
        for chunk in stream(parts):
            sent.append(chunk)
    return b"".join(sent)


@pytest.mark.parametrize("damaged", [0, 1])
def test_a_damaged_part_ends_the_zip_short(tmp_path, arrays, damaged):
    data = _sent_before_the_error(maps_zip, _parts(tmp_path, arrays), damaged)
    with pytest.raises(zipfile.BadZipFile):
        zipfile.ZipFile(io.BytesIO(data))
    images_sent = data.count(b"image-")
    assert images_sent < sum(len(a) for a in arrays[: damaged + 1])  # the damaged part's last batch never went


@pytest.mark.parametrize("damaged", [0, 1])
def test_a_damaged_part_ends_the_npy_short(tmp_path, arrays, damaged):
    data = _sent_before_the_error(stacked_npy, _parts(tmp_path, arrays), damaged)
    assert inf_free(data) and len(data) < len(b"".join(stacked_npy(_parts(tmp_path / "again", arrays))))


def inf_free(data: bytes) -> bool:
    return np.full(4, np.inf, np.float32).tobytes() not in data


@pytest.fixture(autouse=True)
def _again(tmp_path):
    (tmp_path / "again").mkdir()


def test_write_array_returns_the_hash_of_the_files_bytes(tmp_path, arrays):
    (part,) = _parts(tmp_path, arrays[:1])
    path = part.location.store.url + "/" + part.location.key
    assert hashlib.sha256(open(path, "rb").read()).hexdigest() == part.sha256


def test_the_index_hands_each_part_its_artifact_hash(tmp_path, arrays):
    """The parts the routes stream come with the hash their artifact key names: without it nothing is verified."""
    import json  # noqa: PLC0415

    from workers.jobs.results import INDEX, ResultIndex  # noqa: PLC0415
    from workers.jobs.store import JobStore  # noqa: PLC0415

    store = JobStore(tmp_path / "data")
    try:
        job, _ = store.submit({"dataset_id": "0" * 32, "layers": []}, n_layers=1, n_iter=1)
        names = []
        for i, array in enumerate(arrays):
            buffer = io.BytesIO()
            np.save(buffer, array)
            names.append(f"maps-L1.part-{i:03d}.npy")
            store.put_artifact(job.id, names[-1], buffer.getvalue(), "application/x-npy")
        index = {
            "n_images": 5,
            "parts": [{"first": 0, "count": 3}, {"first": 3, "count": 2}],
            "layers": [{"maps": names, "switches": None}],
            "reconstructions": [],
        }
        store.put_artifact(job.id, INDEX, json.dumps(index).encode(), "application/json")
        parts = ResultIndex.load(store, job.id).maps(store, job.id, 1)
        assert [p.sha256 for p in parts] == [store.artifact(job.id, n).key[:64] for n in names]
        _damage(parts[1])
        with pytest.raises(ArtifactCorruptError, match="damaged in the store"):
            b"".join(maps_zip(parts))
    finally:
        store.close()


def test_a_large_artifact_is_streamed_whole_when_intact_and_short_when_damaged(tmp_path, arrays):
    """The artifact route's stream (above its size for a single read) shares the parts' verification."""
    from types import SimpleNamespace  # noqa: PLC0415

    from api.routes.results import _verified_chunks  # noqa: PLC0415

    (part,) = _parts(tmp_path, arrays[:1])
    path = part.location.store.url + "/" + part.location.key
    whole = open(path, "rb").read()
    record = SimpleNamespace(key=part.sha256 + ".npy")
    assert b"".join(_verified_chunks(open(path, "rb"), record)) == whole
    _damage(part)
    sent = []
    with pytest.raises(ArtifactCorruptError, match="damaged in the store"):
        for chunk in _verified_chunks(open(path, "rb"), record):
            sent.append(chunk)
    assert len(b"".join(sent)) < len(whole)
