"""Online learning on Ray: the stream plan, and the distributed driver against ``solver.learn_online``."""

from __future__ import annotations

import numpy as np
import pytest

from solver import LearnConfig, OnlineConfig, learn_online
from workers.distributed.stream import StreamPlan, held_out_split, split

K, S, LAM, B = 3, 3, 0.1, 4


# -- the plan (no Ray) -----------------------------------------------------------------------------------------------


def test_plan_reads_a_permutation_per_epoch_in_batches():
    plan = StreamPlan(n_train=10, batch_size=4, n_epochs=2, seed=5)
    assert plan.n_steps == 6 and plan.total_images == 20
    for epoch in range(2):
        batches = [plan.batch(epoch * 3 + b) for b in range(3)]
        assert [len(b) for b in batches] == [4, 4, 2]
        seen = np.concatenate(batches)
        assert sorted(seen.tolist()) == list(range(10))  # every image once per epoch
    assert not np.array_equal(np.concatenate([plan.batch(b) for b in range(3)]), np.arange(10))
    assert not np.array_equal(plan.batch(0), plan.batch(3))  # a new permutation each epoch
    assert np.array_equal(plan.batch(4), StreamPlan(10, 4, 2, seed=5).batch(4))  # a function of the seed alone


def test_plan_with_n_images_stops_there():
    plan = StreamPlan(n_train=10, batch_size=4, n_epochs=None, n_images=13, seed=0)
    sizes = [len(plan.batch(t)) for t in range(plan.n_steps)]
    assert sizes == [4, 4, 2, 3] and plan.total_images == 13
    assert [plan.images_before(t) for t in range(5)] == [0, 4, 8, 10, 13]
    assert plan.position(3) == (1, 0)
    with pytest.raises(ValueError, match="step must lie"):
        plan.batch(4)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"n_train": 0, "batch_size": 2}, "n_train"),
        ({"n_train": 4, "batch_size": 0}, "batch_size"),
        ({"n_train": 4, "batch_size": 2, "n_epochs": None}, "n_epochs"),
        ({"n_train": 4, "batch_size": 2, "n_images": 0}, "n_images"),
    ],
)
def test_plan_refuses_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        StreamPlan(**kwargs)


def test_split_is_contiguous_and_in_order():
    parts = split(np.arange(7), 3)
    assert [p.tolist() for p in parts] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [p.tolist() for p in split(np.arange(2), 5)] == [[0], [1]]


def test_held_out_split_is_fixed_and_disjoint():
    train, held = held_out_split(20, 3, seed=1)
    assert len(held) == 3 and len(train) == 17
    assert not set(train) & set(held) and sorted([*train, *held]) == list(range(20))
    again, held_again = held_out_split(20, 3, seed=1)
    assert np.array_equal(held, held_again) and np.array_equal(train, again)
    with pytest.raises(ValueError, match="held-out"):
        held_out_split(3, 3, seed=0)


# -- the driver on Ray -----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Ten float32 16x16 images, one .npy each."""
    folder = tmp_path_factory.mktemp("online-images")
    data = np.random.default_rng(3).standard_normal((10, 1, 16, 16)).astype(np.float32)
    paths = [folder / f"im-{i:02d}.npy" for i in range(len(data))]
    for path, image in zip(paths, data, strict=True):
        np.save(path, image)
    return paths, data


def _config(**extra) -> LearnConfig:
    return LearnConfig.model_validate(
        {
            "layers": [{"n_filters": K, "filter_size": S, "lam": LAM}],
            "inference": {"method": "admm", "max_iter": 5},
            "filter_update": {"max_iter": 20, "norm": "filter"},
            "seed": 2,
            **extra,
        }
    )


def _run(paths, plan, workers, **kwargs):
    from workers.distributed.online import OnlineRun  # noqa: PLC0415

    online = OnlineConfig(batch_size=plan.batch_size, forget=2.0)
    return OnlineRun(paths, _config(), online, plan, workers=workers, backend="numpy", **kwargs)


@pytest.mark.ray
def test_one_worker_equals_learn_online_and_two_workers_agree(ray_session, images):
    paths, data = images[0][:8], images[1][:8]  # full batches: learn_online re-batches a stream to B images
    plan = StreamPlan(n_train=len(paths), batch_size=B, n_epochs=2, seed=4)
    one = _run(paths, plan, 1).run()
    two = _run(paths, plan, 2).run()
    batches = [data[plan.batch(t)] for t in range(plan.n_steps)]
    reference = learn_online(
        batches, K, S, LAM, batch_size=B, forget=2.0, inner_iter=5, filter_iter=20, seed=2, backend="numpy"
    )
    assert one.finished and one.images_seen == 16 and len(one.result.history) == plan.n_steps
    np.testing.assert_array_equal(one.result.filters, reference.filters)
    np.testing.assert_array_equal(one.result.history, reference.history)
    eps = np.finfo(np.float32).eps
    # parts summed in a fixed order: only the round-off of splitting a batch's sums differs
    np.testing.assert_allclose(two.result.filters, one.result.filters, rtol=0, atol=1e3 * eps)
    np.testing.assert_allclose(two.result.history, one.result.history, rtol=1e3 * eps)
    assert not np.array_equal(one.result.filters, _run(paths, StreamPlan(8, B, 2, seed=5), 1).run().result.filters)


@pytest.mark.ray
def test_resume_from_a_checkpoint_gives_the_uninterrupted_filters(ray_session, images, tmp_path):
    paths, _ = images
    plan = StreamPlan(n_train=len(paths), batch_size=B, n_epochs=2, seed=4)
    held = paths[:2]
    whole = _run(paths, plan, 1, held_out=held).run()
    steps = []
    first = _run(paths, plan, 1, held_out=held, checkpoint_dir=tmp_path, checkpoint_every=2)
    stopped = first.run(callback=lambda stats, seen: steps.append(seen), should_stop=lambda: len(steps) >= 3)
    assert not stopped.finished and stopped.images_seen == 10  # 4 + 4 + 2: stopped before step 4, checkpointed
    second = _run(paths, plan, 1, held_out=held, checkpoint_dir=tmp_path, checkpoint_every=2)
    resumed = second.run(resume=True)
    assert resumed.finished and resumed.images_seen == 20
    np.testing.assert_array_equal(resumed.result.filters, whole.result.filters)
    np.testing.assert_array_equal(resumed.result.history, whole.result.history)
    assert resumed.result.held_out_history == whole.result.held_out_history
    assert len(whole.result.held_out_history) == plan.n_steps
