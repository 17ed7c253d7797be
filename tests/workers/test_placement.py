"""What a job's shard actors reserve: the spec's resources with the service's defaults, Ray's rules on amounts,
and when a request can never fit a cluster. Ray-free (the placement group itself is tested in
test_scheduling.py)."""

from __future__ import annotations

import pydantic
import pytest

from workers.distributed.placement import ActorResources, Placement, gpu_share, resolve_resources, unplaceable


def test_by_default_each_actor_reserves_the_service_cpus_and_no_gpu_on_a_cpu_cluster():
    placement = resolve_resources(ActorResources(), n_shards=3, backend="auto", cluster_gpus=0.0, default_cpus=1.0)
    assert (placement.n_shards, placement.cpus, placement.gpus, placement.backend) == (3, 1.0, 0.0, "numpy")
    assert placement.bundle == {"CPU": 1.0}
    assert placement.strategy == "SPREAD"


def test_on_a_gpu_cluster_auto_takes_a_fair_gpu_share_per_actor():
    placement = resolve_resources(ActorResources(), n_shards=3, backend="auto", cluster_gpus=2.0)
    assert placement.backend == "cupy"
    assert placement.gpus == pytest.approx(0.6666)  # 2/3 rounded down to Ray's 0.0001
    assert placement.gpus * 3 <= 2.0
    assert gpu_share(8.0, 2) == 1.0  # at most one GPU per actor


def test_the_spec_overrides_the_defaults_and_pins_custom_resources():
    asked = ActorResources(cpus=2, gpus=0.5, custom={"highmem": 1}, strategy="PACK")
    placement = resolve_resources(asked, n_shards=2, backend="auto", cluster_gpus=0.0, default_cpus=1.0)
    assert placement.bundle == {"CPU": 2.0, "GPU": 0.5, "highmem": 1.0}
    assert placement.backend == "cupy"
    options = placement.actor_options(1)
    assert options == {"num_cpus": 2.0, "num_gpus": 0.5, "resources": {"highmem": 1.0}}  # no group yet


def test_cupy_without_gpus_and_gpus_with_numpy_are_refused():
    with pytest.raises(ValueError, match="needs GPUs"):
        resolve_resources(ActorResources(), n_shards=1, backend="cupy", cluster_gpus=0.0)
    with pytest.raises(ValueError, match="resources.gpus"):
        resolve_resources(ActorResources(gpus=1), n_shards=1, backend="numpy", cluster_gpus=1.0)


@pytest.mark.parametrize(
    ("fields", "field"),
    [
        ({"cpus": -1}, "cpus"),
        ({"cpus": 1.5}, "cpus"),
        ({"cpus": 0.00005}, "cpus"),
        ({"gpus": 2.5}, "gpus"),
        ({"custom": {"GPU": 1}}, "custom"),
        ({"custom": {"bad name": 1}}, "custom"),
        ({"custom": {"highmem": -1}}, "custom"),
        ({"strategy": "RANDOM"}, "strategy"),
    ],
)
def test_amounts_ray_cannot_reserve_are_refused_naming_the_field(fields, field):
    with pytest.raises(pydantic.ValidationError, match=field):
        ActorResources(**fields)


def test_a_request_no_node_can_hold_says_what_it_asked_and_what_the_nodes_offer():
    nodes = [{"CPU": 0.0, "memory": 1e9}, {"CPU": 2.0, "memory": 1e9}]
    assert unplaceable(Placement(2, 1.0, 0.0), nodes) is None
    too_many = unplaceable(Placement(3, 1.0, 0.0), nodes)
    assert too_many == "3 shard actor(s) × {CPU: 1}: the cluster has 2 CPU in all"
    too_big = unplaceable(Placement(1, 4.0, 0.0), nodes)
    assert too_big.startswith("1 shard actor(s) × {CPU: 4}: no node has room for one shard actor")
    assert "CPU: 0; CPU: 2" in too_big
    assert unplaceable(Placement(1, 1.0, 0.0, {"highmem": 1}), nodes).startswith("1 shard actor(s) × {CPU: 1, highmem")
    assert unplaceable(Placement(5, 0.0, 0.0), nodes) is None  # nothing asked: fits anywhere
