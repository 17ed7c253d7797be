"""The shard worker without Ray: the rescale fitted part by part equals fit_preprocess, and workers in one process
give the single-process learning run."""

from __future__ import annotations

import numpy as np
import pytest

from solver.images.preprocess import (
    PreprocessConfig,
    apply_rescale,
    combine_rescale_means,
    combine_rescale_ranges,
    fit_preprocess,
    prepare_images,
    rescale_partial_mean,
    rescale_partial_range,
)
from solver.models.learn import alternate, initial_filters
from solver.models.shard import LocalPool
from workers.distributed.actors import ShardWorker
from workers.distributed.images import inspect_images
from workers.distributed.shards import split_into_shards

PREPROCESS = {
    "rescale only": PreprocessConfig(zero_mean=False),
    "toolbox 2010": PreprocessConfig(grey=True, contrast_normalise=True, cn_floor="one"),
    "toolbox 2011": PreprocessConfig(grey=True, contrast_normalise=True, cn_size=7, cn_sigma=2.0),
}


def _fit_in_parts(images, config, n_parts):
    prepared = [prepare_images(part, config) for part in np.array_split(images, n_parts)]
    shifted = combine_rescale_ranges([rescale_partial_range(p) for p in prepared])
    stats = combine_rescale_means(shifted, [rescale_partial_mean(p, shifted) for p in prepared])
    return np.concatenate([apply_rescale(p, stats) for p in prepared]), stats


@pytest.mark.parametrize("n_parts", [1, 2, 3, 7])
@pytest.mark.parametrize("preset", sorted(PREPROCESS))
def test_rescale_fitted_in_parts_equals_fit_preprocess(rng, preset, n_parts):
    images = rng.integers(0, 256, (7, 3, 12, 11), dtype=np.uint8)
    expected_images, expected = fit_preprocess(images, PREPROCESS[preset])
    images_out, stats = _fit_in_parts(images, PREPROCESS[preset], n_parts)
    assert (stats.shift, stats.scale) == (expected.shift, expected.scale)
    assert stats.mean == pytest.approx(expected.mean, rel=1e-13, abs=1e-15)
    assert images_out.dtype == expected_images.dtype
    np.testing.assert_allclose(images_out, expected_images, rtol=0, atol=1e-6)


@pytest.mark.parametrize("n_parts", [1, 3])
def test_rescale_fitted_in_parts_equals_fit_preprocess_in_float64(rng, n_parts):
    images = rng.standard_normal((6, 1, 9, 9))
    expected_images, expected = fit_preprocess(images, PreprocessConfig())
    images_out, stats = _fit_in_parts(images, PreprocessConfig(), n_parts)
    assert stats.mean == pytest.approx(expected.mean, rel=1e-14, abs=1e-15)
    np.testing.assert_allclose(images_out, expected_images, rtol=1e-14, atol=1e-14)


def test_a_constant_dataset_fitted_in_parts_has_unit_scale():
    _, stats = _fit_in_parts(np.full((4, 1, 5, 5), 0.25), PreprocessConfig(zero_mean=False), 2)
    assert (stats.shift, stats.scale, stats.mean) == (0.25, 1.0, 0.0)


def test_combining_no_parts_is_refused():
    with pytest.raises(ValueError, match="ranges"):
        combine_rescale_ranges([])


def _workers(paths, config, n_shards):
    info = inspect_images(paths)
    workers = [ShardWorker() for _ in range(n_shards)]
    list(map(lambda w, part: w.load(part, config, info), workers, split_into_shards(paths, n_shards)))
    shifted = combine_rescale_ranges([w.rescale_range() for w in workers])
    stats = combine_rescale_means(shifted, [w.rescale_sum(shifted) for w in workers])
    dtypes = {w.build(stats, None, "numpy") for w in workers}
    return workers, dtypes


@pytest.mark.parametrize("n_shards", [1, 3])
def test_shard_workers_in_one_process_give_the_single_process_run(dataset, learn_config, reference, n_shards):
    workers, dtypes = _workers(dataset, learn_config, n_shards)
    f0 = initial_filters(3, 1, 3, seed=learn_config.seed, norm="filter", dtype=np.float64)
    pool = LocalPool(workers)
    filters, history, _ = alternate(pool, learn_config, f0)
    assert dtypes == {"float64"}
    np.testing.assert_allclose(filters, reference.filters, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(history, reference.history, rtol=1e-10)
    np.testing.assert_allclose(np.concatenate(pool.maps()), reference.maps, rtol=1e-8, atol=1e-10)


def test_a_shard_worker_resets_to_a_fresh_shard(dataset, learn_config):
    workers, _ = _workers(dataset[:2], learn_config, 1)
    worker = workers[0]
    worker.code(initial_filters(3, 1, 3, seed=0, norm="filter", dtype=np.float64))
    worker.reset()
    assert worker.state() == {"maps": None, "warm": None, "consensus": None, "rounds": 0}


def test_a_shard_worker_refuses_work_before_it_is_built(dataset, learn_config):
    worker = ShardWorker()
    worker.load(dataset[:2], learn_config, inspect_images(dataset))
    with pytest.raises(ValueError, match="build"):
        worker.code(np.zeros((3, 1, 3, 3)))


def test_a_shard_worker_needs_the_rescale_statistics_when_rescaling(dataset, learn_config):
    worker = ShardWorker()
    worker.load(dataset[:2], learn_config, inspect_images(dataset))
    with pytest.raises(ValueError, match="stats"):
        worker.build(None, None, "numpy")


def test_a_shard_worker_says_where_it_computes_once_built(dataset, learn_config):
    worker = ShardWorker()
    worker.load(dataset[:2], learn_config.model_copy(update={"preprocess": None}), inspect_images(dataset))
    with pytest.raises(ValueError, match="build"):
        worker.device()
    worker.build(None, None, "numpy")
    assert worker.device().startswith("numpy on the CPU (")
