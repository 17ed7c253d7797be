"""The pieces of an encode job: blocks of a dataset, the coding actor's body (without Ray), and a job that stops
between blocks and resumes with the blocks it had not done (on the session's Ray cluster)."""

from __future__ import annotations

import numpy as np
import pytest

from solver import StackModel, encode_layers
from solver.config import AdmmConfig
from workers.distributed.encode import Block, BlockEncoder, blocks_of, result_json, result_of_row
from workers.jobs.artifacts import LocalArtifactStore
from workers.jobs.objects import read_array


def _model() -> StackModel:
    rng = np.random.default_rng(3)
    filters = [rng.standard_normal((3, 1, 3, 3)), rng.standard_normal((2, 3, 3, 3))]
    return StackModel.from_layers(
        [f.astype(np.float32) for f in filters], [None, None], [None, None], [0.1, 0.05], [1.0, 1.0],
        pool=[(1, 2, 2), None],
    )  # fmt: skip


def test_blocks_cover_every_image_once_in_order():
    keys = [f"k{i}" for i in range(7)]
    blocks = blocks_of(keys, 3)
    assert [(b.index, b.first, b.keys) for b in blocks] == [
        (0, 0, ("k0", "k1", "k2")),
        (1, 3, ("k3", "k4", "k5")),
        (2, 6, ("k6",)),
    ]
    with pytest.raises(ValueError, match="block_size must be positive, got 0"):
        blocks_of(keys, 0)


def test_an_actor_writes_every_layer_of_its_block(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    images = np.random.default_rng(4).standard_normal((3, 1, 10, 10)).astype(np.float32)
    keys = [store.put_array(image)[0] for image in images]
    model = _model()
    method = AdmmConfig(max_iter=6)
    encoder = BlockEncoder(store.url, model, 2, method)
    result = encoder.encode(Block(4, 7, tuple(keys[1:])))
    assert (result.index, result.first, result.count) == (4, 7, 2)
    expected = encode_layers(model, images[1:], method=method)
    for number in (1, 2):
        maps = read_array(store.location(result.maps[number - 1].key))
        assert maps.dtype == np.float32 and result.maps[number - 1].shape == maps.shape
        np.testing.assert_array_equal(maps, expected.maps[number - 1].astype(np.float32))
    np.testing.assert_array_equal(read_array(store.location(result.switches[0].key)), expected.switches[0])
    assert result.switches[1] is None  # the top layer does not pool
    assert result_of_row(result_json(result)) == result


def test_a_block_that_fails_comes_back_as_its_error(tmp_path):
    store = LocalArtifactStore(tmp_path / "artifacts")
    key = store.put_array(np.zeros((2, 10, 10), np.float32))[0]  # two channels: the model reads one
    encoder = BlockEncoder(store.url, _model(), 1, "fista", max_iter=2)
    row = {"index": np.array([5]), "first": np.array([10]), "keys": np.array([np.array([key])], dtype=object)}
    out = encoder(row)
    assert out["result"] == [""]
    assert out["error"][0].startswith("ValueError: ") and "channel" in out["error"][0]


@pytest.mark.ray
def test_a_stopped_job_resumes_with_the_blocks_it_had_not_done(tmp_path, ray_session, monkeypatch):
    import workers.distributed.encode as encode_module  # noqa: PLC0415
    from tests.api.conftest import finished_job  # noqa: PLC0415
    from workers.jobs.encoding import EncodeSpec, execute_encode  # noqa: PLC0415
    from workers.jobs.learning import JobStopped  # noqa: PLC0415
    from workers.jobs.results import ResultIndex, image_rows  # noqa: PLC0415
    from workers.jobs.store import JobStore  # noqa: PLC0415

    model_id = finished_job(tmp_path, np.random.default_rng(1).standard_normal((2, 1, 3, 3)).astype(np.float32))
    store = JobStore(tmp_path)
    images = np.random.default_rng(2).standard_normal((5, 1, 8, 8)).astype(np.float32)
    dataset = store.add_dataset([(f"i{n}", image) for n, image in enumerate(images)])
    spec = EncodeSpec(
        model_id=model_id, dataset_id=dataset.id, layer=1, block_size=2, inference={"method": "fista", "max_iter": 3}
    )
    job, _ = store.submit(spec.model_dump(mode="json"), n_layers=1, n_iter=5)
    job = store.claim(job.id)
    handed: list[list[int]] = []
    real = encode_module.encode_blocks

    def recording(blocks, *args, **kwargs):
        handed.append([b.index for b in blocks])
        return real(blocks, *args, **kwargs)

    monkeypatch.setattr(encode_module, "encode_blocks", recording)
    with pytest.raises(JobStopped):  # asked to stop once the first block is in
        execute_encode(store, job, should_stop=lambda: bool(store.job_work(job.id).list("blocks")))
    done = {int(name.removesuffix(".json")) for name in store.job_work(job.id).list("blocks")}
    assert len(done) == 1  # the run stops at the first block's result
    assert store.get_job(job.id).progress.iteration == 2
    execute_encode(store, job)
    assert handed == [[0, 1, 2], sorted({0, 1, 2} - done)]
    assert store.get_job(job.id).progress.iteration == 5
    index = ResultIndex.load(store, job.id)
    assert index.ranges == [(0, 2), (2, 2), (4, 1)]
    maps = image_rows(index.maps(store, job.id, 1), 0, 5)
    expected = np.concatenate(
        [
            encode_layers(_one_layer(store, model_id), images[i : i + 2], method=spec.inference).maps[0]
            for i in (0, 2, 4)
        ]
    )
    np.testing.assert_allclose(maps, expected, rtol=0, atol=1e-5 * float(np.abs(expected).max()))
    assert not store.job_work(job.id).list()  # the work folder is gone
    store.close()


def _one_layer(store, model_id: str) -> StackModel:
    from workers.jobs.models import load_model  # noqa: PLC0415

    return load_model(store, model_id).stack
