"""Connecting to Ray: the config, address resolution, idempotent connect."""

from __future__ import annotations

import pydantic
import pytest

from workers.distributed.cluster import ClusterConfig, connect


def test_the_address_defaults_to_a_local_cluster(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert ClusterConfig().resolved_address() == "local"


def test_the_address_comes_from_ray_address_when_not_given(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")
    assert ClusterConfig().resolved_address() == "10.0.0.1:6379"
    assert ClusterConfig(address="local").resolved_address() == "local"


@pytest.mark.parametrize(("field", "value"), [("object_store_memory", 1024), ("num_cpus", 0), ("adress", "x")])
def test_cluster_config_refuses_bad_fields(field, value):
    with pytest.raises(pydantic.ValidationError, match=field):
        ClusterConfig(**{field: value})


def test_local_resources_are_refused_for_a_remote_cluster():
    with pytest.raises(ValueError, match="num_cpus"):
        connect(ClusterConfig(address="10.0.0.1:6379", num_cpus=2))


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_connect_reuses_the_running_cluster(ray_session):
    again = connect(ClusterConfig(address="local", num_cpus=2))
    assert not again.started
    assert again.address == ray_session.address
    assert again.resources["CPU"] >= 1
