"""The job system: distributed learning on Ray.

* :mod:`workers.cluster`: ``connect(ClusterConfig)``, the one place that calls ``ray.init``;
* :mod:`workers.images`: listing, checking and loading image files (PNG, JPEG, NPY);
* :mod:`workers.shards`: the deterministic split of the images into contiguous shards;
* :mod:`workers.actors`: ``ShardWorker``, one shard's images, maps and inference state (a Ray actor);
* :mod:`workers.pool`: ``RayPool``, the learning loop's pool protocol over the actors (one ``ray.put``, one
  ``ray.get`` per call), and the bytes it moves;
* :mod:`workers.coordinator`: ``Coordinator`` / ``run_distributed``, the alternating loop over the shard actors,
  with checkpoints, fault tolerance and cooperative cancel;
* :mod:`workers.checkpoint`: atomic checkpoint folders, manifest last, verified by sha256;
* :mod:`workers.jobfile`: the YAML job file of ``deconv learn``.

Nothing is imported here, so importing a Ray-free module (``workers.shards``, ``workers.checkpoint``) does not
import Ray. (The job store and runner of issue #4 come later.)
"""
