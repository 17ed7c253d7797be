"""The connection to a Ray cluster: the one place in deconv that calls ``ray.init``.

A job either joins an existing cluster (an address in the config, or the ``RAY_ADDRESS`` environment variable:
``auto`` or a head's ``host:port``, see :mod:`workers.distributed.address`) or starts a private local one
(``address="local"``, the default): a bounded object store, no dashboard, no usage statistics, worker logs kept out
of the driver's output.

Worker processes import ``solver`` and ``workers`` by name: on a local cluster they inherit the driver's working
directory, so running from a checkout works; on a real cluster deconv (with its ``cluster`` extra, and ``s3`` for
an S3 store) must be installed on every node. No filesystem needs to be shared: the actors read and write through
the store (a folder on one machine, an fsspec URL such as ``s3://`` on a cluster, see :mod:`workers.jobs.objects`).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import ray
from pydantic import BaseModel, ConfigDict, Field, field_validator

from ..jobs.objects import tcp_unreachable
from .address import AUTO, LOCAL, check_address

logger = logging.getLogger(__name__)

_MIN_OBJECT_STORE = 78_643_200  # the smallest object store Ray accepts (75 MiB)


class ClusterConfig(BaseModel):
    """Where the shard actors run.

    Attributes
    ----------
    address : str, optional
        ``"local"`` starts a private cluster on this machine; ``"auto"`` joins the cluster this machine is a node
        of; ``"host:port"`` joins the cluster of that head. None: the ``RAY_ADDRESS`` environment variable if
        set, else ``"local"``. ``ray://`` addresses are refused (see :mod:`workers.distributed.address`).
    num_cpus, num_gpus : int, optional
        Resources of a local cluster (None: what Ray detects). Refused for a remote cluster.
    object_store_memory : int
        Bytes of shared memory for the object store of a local cluster (Ray's default, 30 % of RAM, is far more
        than the filters and small statistics that travel here need).
    include_dashboard, log_to_driver : bool
        Off by default: no web server, and the actors' logs stay in Ray's session folder.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    address: str | None = None
    num_cpus: int | None = Field(None, ge=1)
    num_gpus: int | None = Field(None, ge=0)
    object_store_memory: int = Field(200 * 2**20, ge=_MIN_OBJECT_STORE)
    include_dashboard: bool = False
    log_to_driver: bool = False

    @field_validator("address")
    @classmethod
    def _known_address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value)

    def resolved_address(self) -> str:
        """The address to use: this config's, else ``RAY_ADDRESS``, else ``"local"``.

        Raises
        ------
        ValueError
            When ``RAY_ADDRESS`` holds an address deconv does not accept (naming the variable).
        """
        if self.address is not None:
            return self.address
        from_env = os.environ.get("RAY_ADDRESS", "").strip()
        return check_address(from_env, "RAY_ADDRESS") if from_env else LOCAL


@dataclass(frozen=True)
class ClusterContext:
    """The cluster this process is connected to.

    Attributes
    ----------
    address : str
        The GCS address of the cluster.
    started : bool
        True when :func:`connect` started Ray in this call (the caller then owns the shutdown).
    resources : dict of str to float
        Total resources of the cluster at connection time (``CPU``, ``GPU``, ...).
    """

    address: str
    started: bool
    resources: dict[str, float]

    @property
    def n_gpus(self) -> float:
        return float(self.resources.get("GPU", 0.0))


def connect(config: ClusterConfig | None = None) -> ClusterContext:
    """Connect this process to a Ray cluster, starting a local one if so configured; idempotent.

    Parameters
    ----------
    config : ClusterConfig, optional
        Default: ``ClusterConfig()`` (``RAY_ADDRESS``, or a local cluster).

    Returns
    -------
    ClusterContext
        ``started`` is False when Ray was already initialised in this process: that connection is reused as
        it is, whatever `config` says.

    Raises
    ------
    ValueError
        When local-cluster resources (``num_cpus``, ``num_gpus``) are given for a remote address.
    ConnectionError
        When nothing answers at a ``host:port`` address within :data:`CONNECT_TIMEOUT_S`.
    """
    config = ClusterConfig() if config is None else config
    address = config.resolved_address()
    local_only = {k: v for k, v in (("num_cpus", config.num_cpus), ("num_gpus", config.num_gpus)) if v is not None}
    if address != LOCAL and local_only:
        raise ValueError(
            f"{', '.join(local_only)} only apply to a local cluster, got {local_only} with address={address!r}"
        )
    if ray.is_initialized():
        return ClusterContext(_gcs_address(), False, dict(ray.cluster_resources()))
    if address == LOCAL:
        # Usage statistics would try to phone home on every local start; off before Ray reads the variable.
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
        ray.init(
            address=LOCAL,
            num_cpus=config.num_cpus,
            num_gpus=config.num_gpus,
            object_store_memory=config.object_store_memory,
            include_dashboard=config.include_dashboard,
            log_to_driver=config.log_to_driver,
            configure_logging=False,
        )
    else:
        if address != AUTO:
            _check_reachable(address, CONNECT_TIMEOUT_S)
        ray.init(address=address, log_to_driver=config.log_to_driver, configure_logging=False)
    context = ClusterContext(_gcs_address(), True, dict(ray.cluster_resources()))
    logger.info("connected to Ray at %s (%s)", context.address, _describe(context.resources))
    return context


CONNECT_TIMEOUT_S = 10.0
"""How long :func:`connect` waits for a TCP connection to a cluster's GCS address before it gives up."""


def _check_reachable(address: str, timeout: float) -> None:
    """A TCP connection to the GCS at ``host:port``, or ConnectionError naming it.

    ``ray.init`` on an address nobody listens on retries for minutes (logging GCS timeouts) and ignores Ctrl-C
    meanwhile; a refused or unanswered connection is known within `timeout` seconds.
    """
    host, _, port = address.rpartition(":")
    reason = tcp_unreachable(host.strip("[]"), int(port), timeout)
    if reason is not None:
        raise ConnectionError(
            f"cannot reach the Ray cluster at {address} ({reason}): start its head there "
            "(ray start --head) or give the head's GCS address host:port"
        )


def shutdown() -> None:
    """Disconnect from the cluster (and stop it if this process started it); a no-op when not connected."""
    if ray.is_initialized():
        ray.shutdown()


def _gcs_address() -> str:
    return str(ray.get_runtime_context().gcs_address)


def _describe(resources: dict[str, float]) -> str:
    return ", ".join(f"{k}={resources[k]:g}" for k in ("CPU", "GPU") if k in resources) or "no CPU/GPU resources"
