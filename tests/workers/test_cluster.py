"""Connecting to Ray: the config, address resolution, idempotent connect."""

from __future__ import annotations

import pydantic
import pytest

from workers.distributed.address import check_address
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


@pytest.mark.parametrize("address", ["auto", "AUTO", "local", "10.0.0.1:6379", "head.example.org:6379", "[fd00::5]:1"])
def test_the_addresses_ray_takes_are_accepted(address):
    assert ClusterConfig(address=address).resolved_address() == (
        address.lower() if address.lower() in ("auto", "local") else address
    )


def test_a_ray_client_address_is_refused_saying_why():
    with pytest.raises(ValueError, match=r"ray\[client\], which is not installed"):
        ClusterConfig(address="ray://10.0.0.1:10001")


@pytest.mark.parametrize("address", ["10.0.0.1", "10.0.0.1:0", "10.0.0.1:70000", "http://10.0.0.1:6379", ":6379", ""])
def test_a_malformed_address_is_refused_naming_it(address):
    with pytest.raises(ValueError, match="host:port|port"):
        check_address(address, "--address")


def test_a_bad_ray_address_variable_is_named(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://head:10001")
    with pytest.raises(ValueError, match="RAY_ADDRESS: 'ray://head:10001' is a Ray Client address"):
        ClusterConfig().resolved_address()
