"""Checkpoint folders: atomic files, manifest last, checksums verified, fallback to the previous complete one."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from solver.models.learn import IterStats
from workers.distributed.checkpoint import (
    MANIFEST,
    CheckpointError,
    atomic_write_bytes,
    checkpoint_folders,
    clear_checkpoints,
    latest_checkpoint,
    read_checkpoint,
    write_checkpoint,
)
from workers.jobs.objects import ObjectStore

META = {"config": {"n_filters": 3}, "images": ["a.npy", "b.npy"], "n_shards": 2}


def _history(n):
    return [IterStats(i, 10.0 / i, 5.0 / i, 0.25, 0.1 * i, 5) for i in range(1, n + 1)]


def _write(root, iteration, **kwargs):
    filters = np.full((3, 1, 3, 3), float(iteration))
    states = [{"maps": np.full((1, 3, 4, 4), iteration + s), "warm": None} for s in range(2)]
    return write_checkpoint(root, iteration, filters, filters + 1, states, _history(iteration), META, **kwargs)


def test_a_checkpoint_reads_back_what_was_written(tmp_path):
    folder = _write(tmp_path, 4)
    loaded = read_checkpoint(folder)
    assert (loaded.iteration, loaded.meta, loaded.history) == (4, META, _history(4))
    np.testing.assert_array_equal(loaded.filters, np.full((3, 1, 3, 3), 4.0))
    np.testing.assert_array_equal(loaded.power_vector, np.full((3, 1, 3, 3), 5.0))
    np.testing.assert_array_equal(loaded.shard_states[1]["maps"], np.full((1, 3, 4, 4), 5))


def _local(folder):
    return Path(folder.url)


def test_the_manifest_is_written_last_with_a_checksum_of_every_file(tmp_path, monkeypatch):
    written = []
    real = ObjectStore.write_with
    monkeypatch.setattr(ObjectStore, "write_with", lambda self, k, f: written.append(k) or real(self, k, f))
    folder = _local(_write(tmp_path, 2))
    manifest = json.loads((folder / MANIFEST).read_text())
    assert written[-1] == MANIFEST
    assert sorted(manifest["files"]) == sorted(written[:-1])
    assert sorted(written[:-1]) == ["filters.npy", "history.json", "power_vector.npy", "shard-000.pkl", "shard-001.pkl"]


def test_a_checkpoint_interrupted_before_its_manifest_is_ignored(tmp_path, monkeypatch):
    _write(tmp_path, 2)
    real = ObjectStore.write_with

    def crash_on_second_shard(self, key, produce):
        if key == "shard-001.pkl":
            raise OSError("disk full")
        return real(self, key, produce)

    monkeypatch.setattr(ObjectStore, "write_with", crash_on_second_shard)
    with pytest.raises(OSError, match="disk full"):
        _write(tmp_path, 4)
    assert [it for it, _ in checkpoint_folders(tmp_path)] == [2, 4]
    assert latest_checkpoint(tmp_path).iteration == 2


def test_a_corrupted_file_makes_the_newest_checkpoint_fall_back_to_the_previous(tmp_path, caplog):
    _write(tmp_path, 2)
    newest = _local(_write(tmp_path, 4))
    (newest / "shard-001.pkl").write_bytes(b"garbage")
    with caplog.at_level(logging.WARNING, logger="workers.distributed.checkpoint"):
        assert latest_checkpoint(tmp_path).iteration == 2
    assert "corrupted" in caplog.text


def test_reading_a_corrupted_checkpoint_names_the_file(tmp_path):
    folder = _local(_write(tmp_path, 2))
    (folder / "filters.npy").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="filters.npy"):
        read_checkpoint(folder)


def test_a_checkpoint_without_manifest_falls_back_to_the_previous(tmp_path):
    _write(tmp_path, 2)
    (_local(_write(tmp_path, 4)) / MANIFEST).unlink()
    assert latest_checkpoint(tmp_path).iteration == 2


def test_no_valid_checkpoint_gives_none(tmp_path):
    (_local(_write(tmp_path, 2)) / MANIFEST).unlink()
    assert latest_checkpoint(tmp_path) is None
    assert latest_checkpoint(tmp_path / "missing") is None


def test_only_the_last_two_complete_checkpoints_are_kept(tmp_path):
    [_write(tmp_path, it) for it in [2, 4, 6, 8]]
    assert [it for it, _ in checkpoint_folders(tmp_path)] == [6, 8]


def test_checkpoints_of_later_iterations_go_when_a_run_is_rolled_back(tmp_path):
    [_write(tmp_path, it) for it in [2, 4]]
    _write(tmp_path, 3)
    assert [it for it, _ in checkpoint_folders(tmp_path)] == [2, 3]


def test_atomic_writes_leave_no_temporary_files(tmp_path):
    digest = atomic_write_bytes(tmp_path / "x.bin", b"abc")
    assert [p.name for p in tmp_path.iterdir()] == ["x.bin"]
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_clear_checkpoints_removes_every_checkpoint_folder(tmp_path):
    [_write(tmp_path, it) for it in [2, 4]]
    (tmp_path / "other").mkdir()
    assert clear_checkpoints(tmp_path) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["other"]


def test_a_negative_iteration_is_refused(tmp_path):
    with pytest.raises(ValueError, match="iteration"):
        _write(tmp_path, -1)


def test_a_shard_part_of_the_same_size_but_other_bytes_is_refused_where_it_is_read(tmp_path):
    folder = _local(_write(tmp_path, 2))
    data = bytearray((folder / "shard-000.pkl").read_bytes())
    data[-2] ^= 0xFF
    (folder / "shard-000.pkl").write_bytes(bytes(data))
    loaded = latest_checkpoint(tmp_path)  # the size matches: the coordinator does not read the maps
    with pytest.raises(CheckpointError, match="shard-000.pkl.*corrupted"):
        loaded.shard_states


def test_checkpoints_live_in_any_fsspec_store():
    store = ObjectStore("memory://deconv-ckpt-test")
    [_write(store, it) for it in [2, 4, 6]]
    assert [it for it, _ in checkpoint_folders(store)] == [4, 6]
    loaded = latest_checkpoint(store)
    assert loaded.iteration == 6 and loaded.path == "memory://deconv-ckpt-test/ckpt-000006"
    np.testing.assert_array_equal(loaded.shard_states[0]["maps"], np.full((1, 3, 4, 4), 6))
    assert clear_checkpoints(store) == 2 and checkpoint_folders(store) == []
