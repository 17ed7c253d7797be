"""Distributed learning on Ray: data-parallel over shards of the images.

* :mod:`workers.distributed.cluster`: ``connect(ClusterConfig)``, the one place that calls ``ray.init``;
* :mod:`workers.distributed.address`: the Ray addresses accepted (``local``, ``auto``, ``host:port``);
* :mod:`workers.distributed.placement`: what a job's shard actors reserve (CPUs, GPUs, custom resources) and the
  placement group that holds it for the whole job;
* :mod:`workers.distributed.images`: listing, checking and loading image files;
* :mod:`workers.distributed.shards`: the deterministic split of the images into contiguous shards;
* :mod:`workers.distributed.actors`: ``ShardWorker``, one shard's images, maps and inference state (a Ray actor);
* :mod:`workers.distributed.pool`: ``RayPool``, the learning loop's pool protocol over the actors (one
  ``ray.put``, one ``ray.get`` per call), and the bytes it moves;
* :mod:`workers.distributed.coordinator`: ``Coordinator`` / ``run_distributed``, the alternating loop over the
  shard actors, with checkpoints, fault tolerance and cooperative cancel; its parts:
  :mod:`workers.distributed.fleet` (bringing the shard actors up, replacing dead ones, releasing them),
  :mod:`workers.distributed.rollback` (when to checkpoint, resume, where a failure rolls back to) and
  :mod:`workers.distributed.run_inputs` (checks of the images, switches and options);
* :mod:`workers.distributed.checkpoint`: checkpoints in a store, each shard's part written by its actor, the
  manifest last, verified by sha256;
* :mod:`workers.distributed.outputs`: what each shard writes to the store at the end of a layer (its part of the
  maps, pooled maps, switches, reconstructions).

Nothing is imported here, so importing a Ray-free module (``workers.distributed.shards``,
``workers.distributed.checkpoint``) does not import Ray.
"""
