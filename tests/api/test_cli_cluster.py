"""``deconv learn`` on a cluster: the addresses it takes, and the CPUs each shard actor reserves there."""

from __future__ import annotations

import argparse
import re

import pytest

from api.cli import main
from api.learn import _actor_cpus


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ray://head:10001", r"Ray Client address.*ray\[client\], which is not installed"),
        ("head", r"'local', 'auto' or 'host:port'"),
        ("head:99999", "the port must be between 1 and 65535"),
    ],
)
def test_a_bad_address_exits_2_before_anything_runs(tmp_path, capsys, address, message):
    assert main(["learn", "quick", "--out", str(tmp_path / "out"), "--address", address]) == 2
    err = capsys.readouterr().err
    assert "argument --address" in err
    assert re.search(message, err), err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(("text", "message"), [("-1", "non-negative"), ("1.5", "whole number"), ("x", "not a number")])
def test_a_bad_cpus_per_worker_exits_2_naming_it(tmp_path, capsys, text, message):
    assert main(["learn", "quick", "--out", str(tmp_path / "out"), "--cpus-per-worker", text]) == 2
    err = capsys.readouterr().err
    assert "argument --cpus-per-worker" in err and message in err


def test_each_actor_reserves_a_cpu_on_a_joined_cluster_and_none_on_the_private_one(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert _actor_cpus(argparse.Namespace(address=None, cpus_per_worker=None)) == 0.0
    assert _actor_cpus(argparse.Namespace(address="10.0.0.5:6379", cpus_per_worker=None)) == 1.0
    assert _actor_cpus(argparse.Namespace(address="auto", cpus_per_worker=None)) == 1.0
    assert _actor_cpus(argparse.Namespace(address="auto", cpus_per_worker=0.5)) == 0.5
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert _actor_cpus(argparse.Namespace(address=None, cpus_per_worker=None)) == 1.0
