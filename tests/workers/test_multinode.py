"""A simulated 3-node cluster (ray.cluster_utils.Cluster, all on this machine): a node removed mid-run loses
nothing. Slow (a cluster of its own, a node death to detect): excluded from the default run."""

from __future__ import annotations

import numpy as np
import pytest

from workers.distributed.cluster import ClusterConfig, connect, shutdown
from workers.distributed.coordinator import Coordinator

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(300)]

_NODE = {"num_cpus": 2, "object_store_memory": 100 * 2**20}


@pytest.fixture
def three_node_cluster():
    """A head and two worker nodes, 2 CPUs each; this process connected to it (the session cluster shut down)."""
    cluster_utils = pytest.importorskip("ray.cluster_utils")
    shutdown()  # one Ray connection per process: the session cluster is reconnected by the next test needing it
    cluster = None
    try:
        cluster = cluster_utils.Cluster(
            initialize_head=True, connect=False, head_node_args={**_NODE, "include_dashboard": False}
        )
        cluster.add_node(**_NODE)
        cluster.add_node(**_NODE)
        connect(ClusterConfig(address=cluster.address))
        cluster.wait_for_nodes()
    except Exception as exc:  # noqa: BLE001  (any failure to start means: cannot simulate here)
        if cluster is not None:
            cluster.shutdown()
        pytest.skip(f"cannot start a 3-node Ray cluster here: {type(exc).__name__}: {exc}")
    yield cluster
    shutdown()
    cluster.shutdown()


def test_removing_a_node_mid_run_loses_nothing(three_node_cluster, tmp_path, dataset, learn_config, reference):
    cluster = three_node_cluster
    worker_nodes = {node.node_id: node for node in cluster.worker_nodes}
    # one CPU per shard and SPREAD: the three shards sit on the three nodes, and the survivors have room for one more
    coordinator = Coordinator(
        dataset,
        learn_config,
        workers=3,
        checkpoint_dir=tmp_path,
        checkpoint_every=2,
        max_failures=3,
        actor_cpus=1.0,
        call_timeout=120.0,
    )
    removed = []

    def remove_a_shard_node_at_iteration_3(stats):
        if stats.iteration == 3 and not removed:
            removed.append(next(n for n in coordinator.shard_nodes() if n in worker_nodes))
            cluster.remove_node(worker_nodes[removed[0]], allow_graceful=False)

    result = coordinator.run(callback=remove_a_shard_node_at_iteration_3)
    assert len(removed) == 1
    assert coordinator.failures >= 1
    assert result.history[-1] == pytest.approx(reference.history[-1], rel=1e-6)
    np.testing.assert_allclose(result.filters, reference.filters, rtol=1e-5, atol=1e-9)
    assert [s.iteration for s in result.stats] == [1, 2, 3, 4]
