"""The job system: what a job is, where it is kept, and how it runs.

* :mod:`workers.jobs.store`: ``JobStore``, SQLite (WAL) job and dataset records beside the artifact store;
  its parts: :mod:`workers.jobs.records` (the tables, the records, ids and cursors) and
  :mod:`workers.jobs.store_tables` (the dataset and artifact tables);
* :mod:`workers.jobs.status`: the states of a job (``JobStatus``, ``TERMINAL``), for the store, service and client;
* :mod:`workers.jobs.objects`: stores of bytes by key (a local folder or any fsspec URL), the data plane every
  node reads and writes: atomic and streamed writes, ranged reads of ``.npy`` rows;
* :mod:`workers.jobs.artifacts`: the content-addressed artifact store (a local folder or any fsspec URL);
* :mod:`workers.jobs.results`: a finished job's per-shard results, streamed as one array or zip;
* :mod:`workers.jobs.live`: the newest filters of a running job, read through its work store;
* :mod:`workers.jobs.datasets`: uploaded datasets (images, zip or npz archives) into the artifact store;
* :mod:`workers.jobs.spec`: ``JobSpec``, the validated job a client submits;
* :mod:`workers.jobs.runner`: ``JobRunner``, the queue (up to ``max_running`` jobs at once, each once its actors
  have room), the run, resume after a restart, cancel; :mod:`workers.jobs.learning`: ``execute``, one job's
  layers on Ray, resumed from its finished layers; :mod:`workers.jobs.publish`: a finished job's artifacts;
* :mod:`workers.jobs.jobfile`: the YAML job file of ``deconv learn``;
* :mod:`workers.jobs.models`: a finished job's filters and preprocessing, for encoding new images.

Nothing is imported here, so importing one module does not import Ray.
"""
