"""The job system: Ray shard actors, the coordinator of the alternating optimisation, checkpoints and
the job store. Not built yet (issue #3 and #4); only the package exists so that the layout is fixed."""
