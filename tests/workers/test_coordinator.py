"""Distributed learning on a local Ray cluster: equal to the single-process run on 1, 2 or 3 shards; a killed
shard actor is replaced and the run ends as an uninterrupted one; resume; cancel; failures past the limit."""

from __future__ import annotations

import os
import signal

import numpy as np
import pytest
from PIL import Image

from solver import learn_layer
from solver.config import FilterUpdateConfig
from workers.distributed.checkpoint import checkpoint_folders
from workers.distributed.coordinator import Coordinator, JobFailedError, run_distributed

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]


def _assert_same_run(result, reference):
    np.testing.assert_allclose(result.filters, reference.filters, rtol=1e-5, atol=1e-9)
    np.testing.assert_allclose(result.history, reference.history, rtol=1e-9)
    assert [s.iteration for s in result.stats] == list(range(1, len(reference.history) + 1))


@pytest.mark.parametrize("workers", [1, 2, 3])
def test_shards_give_the_single_process_filters_and_history(ray_session, dataset, learn_config, reference, workers):
    coordinator = Coordinator(dataset, learn_config, workers=workers)
    result = coordinator.run()
    _assert_same_run(result, reference)
    np.testing.assert_allclose(result.maps, reference.maps, rtol=1e-5, atol=1e-8)
    assert result.preprocess.stats.shift == reference.preprocess.stats.shift
    assert result.preprocess.stats.mean == pytest.approx(reference.preprocess.stats.mean, rel=1e-12)
    assert coordinator.failures == 0
    # only small statistics travel: per call and shard, the K*C*s*s filters out, at most a K*C*s*s array and a
    # few scalars back (never images or maps)
    bound = coordinator.traffic.calls * workers * (reference.filters.nbytes + 64)
    assert 0 < coordinator.traffic.bytes_out <= bound
    assert 0 < coordinator.traffic.bytes_in <= bound


@pytest.mark.parametrize("checkpoint_every", [2, 0], ids=["from-checkpoint", "from-scratch"])
def test_a_killed_shard_actor_is_replaced_and_the_run_ends_as_an_uninterrupted_one(
    ray_session, tmp_path, dataset, learn_config, reference, checkpoint_every
):
    coordinator = Coordinator(
        dataset, learn_config, workers=2, checkpoint_dir=tmp_path, checkpoint_every=checkpoint_every, max_failures=1
    )
    killed = []

    def kill_second_shard_at_iteration_3(stats):
        if stats.iteration == 3 and not killed:
            killed.append(coordinator.shard_pids()[1])
            os.kill(killed[0], signal.SIGKILL)

    result = coordinator.run(callback=kill_second_shard_at_iteration_3)
    assert len(killed) == 1
    assert coordinator.failures == 1
    assert result.history[-1] == pytest.approx(reference.history[-1], rel=1e-6)
    _assert_same_run(result, reference)


def test_failures_past_max_failures_fail_the_run_with_a_clear_error(ray_session, dataset, learn_config):
    coordinator = Coordinator(dataset[:2], learn_config, workers=1, max_failures=0)

    def kill_the_shard(stats):
        os.kill(coordinator.shard_pids()[0], signal.SIGKILL)

    with pytest.raises(JobFailedError, match=r"failed 1 times, more than max_failures=0; last failure: .*Actor"):
        coordinator.run(callback=kill_the_shard)


def test_a_stopped_run_resumes_from_its_checkpoint_on_the_same_trajectory(
    ray_session, tmp_path, dataset, learn_config, reference
):
    done = []
    first = run_distributed(
        dataset,
        learn_config,
        workers=2,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        callback=done.append,
        should_stop=lambda: len(done) >= 2,
    )
    assert [it for it, _ in checkpoint_folders(tmp_path)] == [2]
    resumed = run_distributed(
        dataset, learn_config, workers=2, checkpoint_dir=tmp_path, checkpoint_every=2, resume=True
    )
    np.testing.assert_allclose(first.history, reference.history[:2], rtol=1e-9)
    _assert_same_run(resumed, reference)


def test_a_stop_between_checkpoints_writes_one_of_the_last_iteration(ray_session, tmp_path, dataset, learn_config):
    done = []
    result = run_distributed(
        dataset[:3],
        learn_config,
        workers=1,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        callback=done.append,
        should_stop=lambda: len(done) >= 3,
    )
    assert len(result.history) == 3
    assert [it for it, _ in checkpoint_folders(tmp_path)] == [2, 3]


def test_resuming_with_another_config_is_refused(ray_session, tmp_path, dataset, learn_config):
    run_distributed(
        dataset[:2],
        learn_config.model_copy(update={"n_iter": 1}),
        workers=1,
        checkpoint_dir=tmp_path,
        checkpoint_every=1,
    )
    other = learn_config.model_copy(update={"seed": 99})
    with pytest.raises(ValueError, match="another run: its config differs"):
        run_distributed(dataset[:2], other, workers=1, checkpoint_dir=tmp_path, checkpoint_every=1, resume=True)


@pytest.mark.parametrize(
    ("option", "value"),
    [("workers", 0), ("checkpoint_every", -1), ("max_failures", -1), ("call_timeout", 0), ("backend", "tpu")],
)
def test_bad_options_are_refused_naming_them(dataset, learn_config, option, value):
    with pytest.raises(ValueError, match=option):
        Coordinator(dataset, learn_config, **{option: value})


def test_checkpoints_need_a_folder(dataset, learn_config):
    with pytest.raises(ValueError, match="checkpoint_dir"):
        Coordinator(dataset, learn_config, checkpoint_every=2)


def test_png_files_without_preprocessing_learn_in_float32_as_in_one_process(ray_session, tmp_path, learn_config):
    pictures = np.random.default_rng(5).integers(0, 256, (4, 16, 16), dtype=np.uint8)
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    [Image.fromarray(p).save(path) for p, path in zip(pictures, paths, strict=True)]
    config = learn_config.model_copy(update={"preprocess": None, "dtype": None, "n_iter": 2})
    reference = learn_layer(pictures[:, None], config, backend="numpy")
    result = run_distributed(paths, config, workers=2)
    assert result.filters.dtype == np.float32
    assert result.preprocess is None
    np.testing.assert_allclose(result.filters, reference.filters, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(result.history, reference.history, rtol=1e-5)


def test_the_consensus_filter_update_runs_distributed_as_in_one_process(ray_session, dataset, learn_config):
    config = learn_config.model_copy(update={"filter_update": FilterUpdateConfig(method="consensus", max_iter=5)})
    reference = learn_layer(np.stack([np.load(p) for p in dataset]), config, backend="numpy")
    result = run_distributed(dataset, config, workers=3)
    _assert_same_run(result, reference)


def test_the_interleaved_schedule_runs_distributed_as_in_one_process(ray_session, dataset, learn_config):
    update = {"filter_update": FilterUpdateConfig(method="consensus"), "schedule": "interleaved"}
    config = learn_config.model_copy(update=update)
    config = type(config).model_validate(config.model_dump())  # validated as a job's config is
    reference = learn_layer(np.stack([np.load(p) for p in dataset]), config, backend="numpy")
    result = run_distributed(dataset, config, workers=3)
    _assert_same_run(result, reference)


def test_a_run_stopped_before_its_first_iteration_returns_the_initial_filters(
    ray_session, tmp_path, dataset, learn_config
):
    coordinator = Coordinator(dataset[:2], learn_config, workers=1, checkpoint_dir=tmp_path, checkpoint_every=1)
    result = coordinator.run(should_stop=lambda: True)
    assert result.history == []
    np.testing.assert_array_equal(result.filters, coordinator.initial_filters)
    assert result.maps.shape == (2, 3, 16, 16)
    assert not result.maps.any()
    assert checkpoint_folders(tmp_path) == []


@pytest.mark.parametrize("workers", [1, 3])
def test_a_2011_layer_runs_distributed_as_in_one_process(ray_session, tmp_path, dataset, learn_config, workers):
    """Layer 2 of the 2011 model on the pixels through a frozen pooling layer 1: each actor reads the switches of
    its own images from their files, and the run equals learn_layer with the same lower layer and switches."""
    from solver.config import FistaConfig, LayerSpec  # noqa: PLC0415
    from solver.operators.pixel_path import LowerLayer  # noqa: PLC0415
    from solver.operators.pooling import pool_maps  # noqa: PLC0415

    pixels = learn_config.model_copy(update={"reconstruct_to": "pixels", "inference": FistaConfig(max_iter=5)})
    first = pixels.model_copy(update={"layers": [LayerSpec(n_filters=4, filter_size=3, lam=0.1, pool=(2, 2, 2))]})
    images = np.stack([np.load(p) for p in dataset])
    layer1 = learn_layer(images, first, backend="numpy")
    _, switches = pool_maps(layer1.maps, (2, 2, 2))
    files = []
    for n, sw in enumerate(switches):
        files.append(tmp_path / f"switches-{n}.npy")
        np.save(files[-1], sw)
    lower = [LowerLayer(layer1.filters, None, (2, 2, 2))]
    second = pixels.model_copy(
        update={"layers": [LayerSpec(n_filters=3, filter_size=3, lam=0.05, connectivity="random-doubles:1")]}
    )
    reference = learn_layer(images, second, backend="numpy", lower=lower, switches=[switches])
    assert reference.filters.shape == (3, 2, 3, 3)  # 4 maps pooled by 2: layer 2 reads 2 channels of 8x8
    result = Coordinator(dataset, second, workers=workers, lower=lower, switch_paths=[files]).run()
    _assert_same_run(result, reference)
    np.testing.assert_allclose(result.maps, reference.maps, rtol=1e-5, atol=1e-8)
    assert np.all(np.diff(result.history) <= 1e-9 * np.abs(result.history[:-1]))
    # stopped after 2 outer iterations and resumed from the checkpoint: the same trajectory (the shards' state
    # holds the warm power vectors of the step sizes too)
    done = []
    options = {
        "workers": workers,
        "lower": lower,
        "switch_paths": [files],
        "checkpoint_dir": tmp_path / "ckpt",
        "checkpoint_every": 2,
    }
    Coordinator(dataset, second, **options).run(callback=done.append, should_stop=lambda: len(done) >= 2)
    resumed = Coordinator(dataset, second, **options).run(resume=True)
    _assert_same_run(resumed, reference)


def test_lower_layers_are_refused_for_the_2010_model_and_must_match_the_switches(dataset, learn_config, tmp_path):
    from solver.operators.pixel_path import LowerLayer  # noqa: PLC0415

    lower = [LowerLayer(np.zeros((4, 1, 3, 3)), None, (2, 2, 2))]
    with pytest.raises(ValueError, match="reconstruct_to 'pixels'"):
        Coordinator(dataset, learn_config, lower=lower, switch_paths=[[tmp_path / "s.npy"] * len(dataset)])
    from solver.config import FistaConfig  # noqa: PLC0415

    pixels = learn_config.model_copy(update={"reconstruct_to": "pixels", "inference": FistaConfig(max_iter=5)})
    with pytest.raises(ValueError, match="switch_paths needs one entry per lower layer"):
        Coordinator(dataset, pixels, lower=lower, switch_paths=[])
    with pytest.raises(ValueError, match="has 1 files for 6 images"):
        Coordinator(dataset, pixels, lower=lower, switch_paths=[[tmp_path / "s.npy"]])
