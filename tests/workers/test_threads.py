"""An actor's thread budget: its node's CPUs shared among the job's actors there, never below its reservation."""

from __future__ import annotations

import os

import pytest

from solver.backend import cpu_budget, visible_cpus
from workers.distributed import threads

CPUS = visible_cpus()


@pytest.fixture
def fresh(monkeypatch):
    monkeypatch.setattr(threads, "_reserved", None)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # what Ray sets for an actor of one CPU
    yield
    monkeypatch.setattr(threads, "_reserved", None)


@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs to share")
def test_a_lone_actor_takes_the_node_and_two_take_half_each(fresh):
    assert threads.take_node_share(1) == CPUS and cpu_budget() == CPUS
    assert threads.take_node_share(2) == CPUS // 2 and cpu_budget() == CPUS // 2
    # more actors than cores: still the one CPU reserved, not zero
    assert threads.take_node_share(4 * CPUS) == 1 and os.environ["OMP_NUM_THREADS"] == "1"


def test_a_share_never_falls_below_the_reservation(fresh, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", str(CPUS))  # reserved the whole node
    assert threads.take_node_share(CPUS + 1) == CPUS


def test_a_share_needs_an_actor(fresh):
    with pytest.raises(ValueError, match="actors_on_node"):
        threads.take_node_share(0)


@pytest.mark.ray
@pytest.mark.skipif(CPUS < 2, reason="needs 2 CPUs to share")
def test_actors_on_one_node_split_its_cpus(ray_session):
    import ray  # noqa: PLC0415

    from workers.distributed.online_coder import remote_coder  # noqa: PLC0415

    one = [remote_coder(num_cpus=0)]
    two = [remote_coder(num_cpus=0) for _ in range(2)]
    try:
        assert threads.share_nodes(one) == [CPUS]
        assert threads.share_nodes(two) == [CPUS // 2] * 2
    finally:
        for actor in one + two:
            ray.kill(actor)
