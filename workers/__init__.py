"""Ray and the job system, in two halves.

* :mod:`workers.jobs`: the job system: the job store (SQLite records and the artifact store), uploaded datasets,
  the job spec, the runner that queues, runs, resumes and cancels jobs, the YAML job file of ``deconv learn``, and
  the finished-job model used for encoding;
* :mod:`workers.distributed`: distributed learning: connecting to Ray, the image files, the split into shards, the
  shard actors, the pool over them, the coordinator's alternating loop and its checkpoints.

Nothing is imported here, so importing a Ray-free module (``workers.distributed.shards``,
``workers.distributed.checkpoint``) does not import Ray.
"""
