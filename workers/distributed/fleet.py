"""The shard actors of a :class:`~workers.distributed.coordinator.Coordinator`: bringing them up (and replacing
dead ones), fitting a dataset-wide rescale across them, their resources and placement, probing and releasing them.
"""

from __future__ import annotations

import logging
from typing import Any

import ray
from ray import exceptions as ray_errors

from solver.images.preprocess import combine_rescale_means, combine_rescale_ranges

from .actors import new_shard_actor
from .placement import Placement, gpu_share
from .pool import gather
from .threads import share_nodes

logger = logging.getLogger("workers.distributed.coordinator")

_PROBE_TIMEOUT_S = 30.0  # how long a live actor may take to answer a ping after a failure


class ShardFleet:
    """The shard-actor half of :class:`~workers.distributed.coordinator.Coordinator` (a mixin: the state lives
    there)."""

    def _bring_up(self) -> None:
        """Replace dead actors (all of them at the start) and make every shard ready on its images."""
        alive = self._probe()
        placement = self._resources()
        fresh = []
        for index in range(self.n_shards):
            if index < len(alive) and alive[index]:
                continue
            if index < len(self._actors):
                ray.kill(self._actors[index], no_restart=True)
                self._actors[index] = new_shard_actor(**self._actor_options(index))
            else:
                self._actors.append(new_shard_actor(**self._actor_options(index)))
            fresh.append(index)
        if not fresh:
            return
        logger.info(
            "starting %d shard actor(s) %s (num_cpus=%g, num_gpus=%g, backend=%s%s)",
            len(fresh),
            fresh,
            placement.cpus,
            placement.gpus,
            placement.backend,
            "" if placement.group is None else ", in the job's placement group",
        )
        # an actor whose process, runtime environment or resources never come fails the attempt here, in minutes
        started = [self._actors[i] for i in fresh]
        gather(
            [a.ping.remote() for a in started],
            started,
            what="ping",
            deadline=self._deadlines.startup,
            interrupt=self._interrupt,
            label=f"the start-up of {placement.describe()}",
        )
        share_nodes(self._actors)  # every actor: a replaced one may have moved to another node
        if self._needs_rescale_fit():
            self._fit_rescale_and_build(placement.backend)
        else:
            self._setup(fresh, placement.backend)
        # Said by each actor, not assumed from the request: an actor given a GPU share still reports its device.
        devices = self._gather([self._actors[i].device.remote() for i in fresh], started, "ping")
        for index, device in zip(fresh, devices, strict=True):
            logger.info("shard actor %d computes with %s", index, device)

    def _setup(self, fresh: list[int], backend: str) -> None:
        """Load, preprocess and build the shards of the `fresh` actors with the dataset statistics already fitted."""
        refs = [
            self._actors[i].setup.remote(
                self.shard_paths[i],
                self.config,
                self.info,
                self._rescale,
                self.connectivity,
                backend,
                self.lower,
                self.shard_switches[i],
            )
            for i in fresh
        ]
        self._check_dtypes(self._gather(refs, [self._actors[i] for i in fresh], "setup"))

    def _needs_rescale_fit(self) -> bool:
        pre = self.config.preprocess
        return pre is not None and pre.rescale and self._rescale is None

    def _fit_rescale_and_build(self, backend: str) -> None:
        """Fit the dataset-wide rescale from every shard's partial statistics, in shard order, then build."""
        actors = self._actors
        self._gather(
            [a.load.remote(p, self.config, self.info) for a, p in zip(actors, self.shard_paths, strict=True)],
            actors,
            "load",
        )
        shifted = combine_rescale_ranges(self._gather([a.rescale_range.remote() for a in actors], actors, "load"))
        sums = self._gather([a.rescale_sum.remote(shifted) for a in actors], actors, "load")
        self._rescale = combine_rescale_means(shifted, sums)
        logger.info("rescale statistics: %s", self._rescale)
        self._check_dtypes(
            self._gather(
                [
                    a.build.remote(self._rescale, self.connectivity, backend, self.lower, sw)
                    for a, sw in zip(actors, self.shard_switches, strict=True)
                ],
                actors,
                "build",
            )
        )

    def _gather(self, refs: list[Any], actors: list[Any], what: str) -> list[Any]:
        """The results of the call `what` of `actors`, within its deadline (see :func:`~.pool.gather`)."""
        return gather(refs, actors, what=what, deadline=self._deadlines.of(what), interrupt=self._interrupt)

    def _check_dtypes(self, dtypes: list[str]) -> None:
        if any(d != self.dtype for d in dtypes):
            raise ValueError(f"shards computed in dtypes {dtypes}, expected {self.dtype}")

    def _probe(self) -> list[bool]:
        """Which actors answer a ping: a dead actor's reply is an error, a stuck one's does not come."""
        if not self._actors:
            return []
        pings = [a.ping.remote() for a in self._actors]
        ready, _ = ray.wait(pings, num_returns=len(pings), timeout=_PROBE_TIMEOUT_S)
        answered = set(ready)
        # Each ready reference is already resolved: this get only reads the value or the error, never waits.
        return [ref in answered and _resolved_ok(ref) for ref in pings]

    def _resources(self) -> Placement:
        """The resources and backend of every shard actor, decided once per run (given by the job runner)."""
        if self._placement is None:
            gpus = float(ray.cluster_resources().get("GPU", 0.0))
            use_gpu = self.backend == "cupy" or (self.backend == "auto" and gpus > 0)
            if use_gpu and gpus <= 0:
                raise ValueError("backend 'cupy' needs GPUs in the cluster, got none")
            share = gpu_share(gpus, self.n_shards) if use_gpu else 0.0
            self._placement = Placement(self.n_shards, self.actor_cpus, share, backend="cupy" if use_gpu else "numpy")
        return self._placement

    def _actor_options(self, index: int) -> dict[str, Any]:
        options = self._resources().actor_options(index)
        options.setdefault("scheduling_strategy", "SPREAD")  # no group: the shards on as many nodes as it can
        return options

    def _release(self) -> None:
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors = []


def _resolved_ok(ref: Any) -> bool:
    try:
        ray.get(ref, timeout=0)
    except ray_errors.RayError:
        return False
    return True
