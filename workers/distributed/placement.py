"""What a job's shard actors reserve on the cluster, and the Ray placement group that holds it for the whole job.

Every shard actor of a job asks the same resources: CPUs (1 by default, so a cluster is not oversubscribed), GPUs
(a fair share of the cluster's when the backend is cupy or ``auto`` on a cluster with GPUs) and any custom Ray
resources (``{"big-memory": 1}`` pins the actors to the nodes started with ``ray start --resources``). The job
runner reserves one bundle of these per shard, together, in one placement group (``SPREAD`` by default: the shards
on as many nodes as have room), before it starts the job: a job either gets all its actors' room or stays queued,
never half-started while another job holds the rest. The actors of every layer, and those that replace a dead one,
go into the same bundles; the group is removed when the job ends.

:class:`ActorResources` is what a job spec may ask (``resources``); :func:`resolve_resources` turns it and the
service's defaults into a :class:`Placement` request; :func:`reserve` creates the group. Importing this module does
not import Ray.
"""

from __future__ import annotations

import logging
import math
import re
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

logger = logging.getLogger(__name__)

RESOURCE_QUANTUM = 1e-4  # Ray's granularity of fractional resources
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:-]{0,99}$")
_BUILT_IN = {"CPU", "GPU", "memory", "object_store_memory"}


class ActorResources(BaseModel):
    """The resources each shard actor of a job reserves (the job spec's ``resources``).

    Attributes
    ----------
    cpus : float, optional
        CPUs per shard actor; None: the service's default (``DECONV_ACTOR_CPUS``, 1).
    gpus : float, optional
        GPUs per shard actor; None: with backend cupy, or auto on a cluster with GPUs, a fair share of the
        cluster's GPUs (at most 1); else none.
    custom : dict of str to float
        Custom Ray resources per shard actor, e.g. ``{"highmem": 1}`` for nodes started with
        ``ray start --resources='{"highmem": 4}'``.
    strategy : {"SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"}
        How the placement group spreads the shards over the nodes.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    cpus: float | None = Field(None, ge=0, le=1024, description="CPUs per shard actor; default: the service's")
    gpus: float | None = Field(None, ge=0, le=64, description="GPUs per shard actor; default: by the backend")
    custom: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per shard actor (name -> amount)"
    )
    strategy: Literal["SPREAD", "PACK", "STRICT_SPREAD", "STRICT_PACK"] = Field(
        "SPREAD", description="how the shards spread over the nodes"
    )

    @field_validator("cpus", "gpus")
    @classmethod
    def _ray_amount(cls, value: float | None) -> float | None:
        return None if value is None else check_amount(value)

    @field_validator("custom")
    @classmethod
    def _custom_names(cls, value: dict[str, float]) -> dict[str, float]:
        for name, amount in value.items():
            if name in _BUILT_IN or not _NAME.match(name):
                raise ValueError(
                    f"custom resource names are Ray resource names (letters, digits, '_', '.', ':', '-'; "
                    f"not {sorted(_BUILT_IN)}: use cpus and gpus), got {name!r}"
                )
            if not (isinstance(amount, int | float) and 0 < amount <= 10_000):
                raise ValueError(f"custom resource {name!r}: the amount must be in (0, 10000], got {amount!r}")
            check_amount(float(amount))
        return value


def check_amount(value: float) -> float:
    """`value` when Ray can reserve it: a multiple of 0.0001, and a whole number above 1; ValueError otherwise."""
    if value > 1 and value != int(value):
        raise ValueError(f"an amount above 1 must be a whole number (Ray reserves whole units there), got {value}")
    if abs(value / RESOURCE_QUANTUM - round(value / RESOURCE_QUANTUM)) > 1e-6:
        raise ValueError(f"an amount must be a multiple of {RESOURCE_QUANTUM} (Ray's granularity), got {value}")
    return float(value)


@dataclass(frozen=True)
class Placement:
    """What every shard actor of a job reserves, and, once :func:`reserve` made it, the group holding it.

    Attributes
    ----------
    n_shards : int
    cpus, gpus : float
    custom : dict of str to float
    backend : {"numpy", "cupy"}
    strategy : str
    group : ray.util.placement_group.PlacementGroup, optional
        None until reserved, and for a request of nothing at all (no CPU, GPU or custom resource).
    """

    n_shards: int
    cpus: float
    gpus: float
    custom: dict[str, float] = field(default_factory=dict)
    backend: str = "numpy"
    strategy: str = "SPREAD"
    group: Any = None

    @property
    def bundle(self) -> dict[str, float]:
        """One shard's resources, as a placement-group bundle (zero amounts left out)."""
        amounts = {"CPU": self.cpus, "GPU": self.gpus, **self.custom}
        return {name: float(amount) for name, amount in amounts.items() if amount > 0}

    def actor_options(self, index: int) -> dict[str, Any]:
        """The Ray options of shard `index`'s actor: its resources, and its bundle when the group is reserved."""
        options: dict[str, Any] = {"num_cpus": self.cpus, "num_gpus": self.gpus}
        if self.custom:
            options["resources"] = dict(self.custom)
        if self.group is not None:
            from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: PLC0415

            options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
                self.group, placement_group_bundle_index=index
            )
        return options

    def describe(self) -> str:
        """``2 × {CPU: 1}``: the request, for logs and errors."""
        bundle = ", ".join(f"{k}: {v:g}" for k, v in self.bundle.items()) or "nothing"
        return f"{self.n_shards} shard actor(s) × {{{bundle}}}"


def gpu_share(cluster_gpus: float, n_shards: int) -> float:
    """Each of `n_shards` actors' share of `cluster_gpus` GPUs: at most 1, rounded down to Ray's granularity."""
    return min(1.0, math.floor(cluster_gpus / n_shards / RESOURCE_QUANTUM) * RESOURCE_QUANTUM)


def resolve_resources(
    asked: ActorResources,
    *,
    n_shards: int,
    backend: str,
    cluster_gpus: float,
    default_cpus: float = 1.0,
) -> Placement:
    """The placement request of a job of `n_shards` shards: `asked` with the service's defaults filled in.

    Parameters
    ----------
    asked : ActorResources
        The job spec's ``resources``.
    n_shards : int
    backend : {"auto", "numpy", "cupy"}
    cluster_gpus : float
        GPUs of the whole cluster (for the default share).
    default_cpus : float
        CPUs per actor when the spec does not say.

    Raises
    ------
    ValueError
        For backend cupy on a cluster without GPUs, or GPUs asked with backend numpy.
    """
    if asked.gpus is not None:
        gpus = asked.gpus
        if backend == "numpy" and gpus > 0:
            raise ValueError(f"resources.gpus: backend 'numpy' uses no GPU, got gpus={gpus:g}")
        use_gpu = gpus > 0 or backend == "cupy"
    else:
        use_gpu = backend == "cupy" or (backend == "auto" and cluster_gpus > 0)
        if use_gpu and cluster_gpus <= 0:
            raise ValueError("backend 'cupy' needs GPUs in the cluster, got none")
        gpus = gpu_share(cluster_gpus, n_shards) if use_gpu else 0.0
    cpus = default_cpus if asked.cpus is None else asked.cpus
    return Placement(n_shards, cpus, gpus, dict(asked.custom), "cupy" if use_gpu else "numpy", asked.strategy)


def unplaceable(placement: Placement, nodes: list[dict[str, float]]) -> str | None:
    """Why `placement` can never fit on nodes of these total resources (None when it can, once they are free).

    Only sums and the largest node are checked; Ray decides the rest (``STRICT_SPREAD`` needs as many nodes).
    """
    bundle = placement.bundle
    if not bundle:
        return None
    fits = [node for node in nodes if all(node.get(name, 0.0) >= amount for name, amount in bundle.items())]
    if not fits:
        offered = "; ".join(", ".join(f"{k}: {v:g}" for k, v in sorted(n.items()) if k in bundle) or "-" for n in nodes)
        return f"{placement.describe()}: no node has room for one shard actor (the nodes offer {offered or 'nothing'})"
    for name, amount in bundle.items():
        total = sum(node.get(name, 0.0) for node in nodes)
        if amount * placement.n_shards > total + 1e-9:
            return f"{placement.describe()}: the cluster has {total:g} {name} in all"
    return None


def node_resources() -> list[dict[str, float]]:
    """Total resources of every live node of the connected cluster."""
    import ray  # noqa: PLC0415

    return [dict(node["Resources"]) for node in ray.nodes() if node.get("Alive")]


def reserve(placement: Placement, *, name: str = "") -> Placement:
    """Ask Ray for `placement`'s bundles, one per shard, as one placement group; returns immediately.

    The group is pending until the cluster has room for all of it (:func:`is_ready`); a request of nothing is
    returned as it is (nothing to hold).
    """
    bundle = placement.bundle
    if not bundle:
        return placement
    from ray.util.placement_group import placement_group  # noqa: PLC0415

    group = placement_group([dict(bundle) for _ in range(placement.n_shards)], strategy=placement.strategy, name=name)
    return Placement(**{**placement.__dict__, "group": group})


def is_ready(placement: Placement, timeout: float = 0.0) -> bool:
    """True once every bundle of the group is reserved (at once for a request of nothing)."""
    if placement.group is None:
        return True
    return bool(placement.group.wait(timeout_seconds=timeout))


def release(placement: Placement | None) -> None:
    """Remove the placement group (its actors, if any are left, are killed by Ray); a no-op without one."""
    if placement is None or placement.group is None:
        return
    from ray.util.placement_group import remove_placement_group  # noqa: PLC0415

    try:
        remove_placement_group(placement.group)
    except Exception:  # a cluster that went away has nothing left to free
        logger.warning("could not remove the placement group of %s", placement.describe(), exc_info=True)


__all__ = [
    "ActorResources",
    "Placement",
    "check_amount",
    "gpu_share",
    "is_ready",
    "node_resources",
    "release",
    "reserve",
    "resolve_resources",
    "unplaceable",
]
