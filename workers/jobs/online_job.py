"""One online learning job (``learning: {mode: online, ...}``): the dataset streamed in batches through coding
actors (:class:`~workers.distributed.online.OnlineRun`), checkpointed in the job's work store, and its artifacts.

The dataset's images are split once, by the job's seed, into training images and a held-out sample
(``learning.held_out`` images, :func:`~workers.distributed.stream.held_out_split`); the training images are read
in batches of a seeded permutation per epoch. The service holds only keys, the filters and the statistics: the
actors read the images from the artifact store. Progress is counted in images read (the job's ``iteration`` and
``n_iter``), one history row per batch. Checkpoints go to ``layers/L1/checkpoints`` every
``learning.checkpoint_every`` batches, where the live filters route finds them, and a restarted job resumes from the
newest one. A cancel is seen before the next batch.

Artifacts: those of a one-layer batch job (:func:`workers.jobs.publish._store_artifacts`: the filters and their
montage, ``model.json``, ``history.json``/``history.png`` with E of every batch, ``config.json``), with the maps and
reconstructions of a bounded sample only, the first :data:`~workers.jobs.publish.SAMPLE_IMAGES` images of the
dataset, coded with the final filters (``shards.json`` counts those images); and ``held_out.json`` /
``held_out.png``, the held-out objective after every batch.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from solver import IterStats
from solver.images.pictures import history_plot

from ..distributed.cluster import ClusterConfig, connect
from ..distributed.outputs import LayerOutputs, Reconstruction
from ..distributed.placement import Placement
from ..distributed.stream import StreamPlan, held_out_split
from .integrity import verify_dataset
from .models import JobModel
from .publish import SAMPLE_IMAGES, _store_artifacts
from .spec import JobSpec
from .store import JobRecord, JobStore

logger = logging.getLogger(__name__)

DEFAULT_CHECKPOINT_EVERY = 20
"""Batches between checkpoints when the spec does not say."""
HELD_OUT_POINTS = 50
"""Points of the held-out curve, about (its objective is computed every n_batches // 50 batches, and at the end):
encoding the held-out images to their objective costs more than coding a batch."""


def execute_online(
    store: JobStore,
    job: JobRecord,
    spec: JobSpec,
    *,
    cluster: ClusterConfig | None = None,
    max_failures: int = 3,
    actor_cpus: float = 0.0,
    placement: Placement | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    interrupt: Callable[[], bool] | None = None,
) -> JobModel:
    """Learn `job` online, resuming from its newest checkpoint, and store its artifacts.

    Raises
    ------
    JobStopped
        When `should_stop` turned true before the last batch (a checkpoint of the last batch was written), or
        `interrupt` while the actors coded (the run resumes from its last checkpoint).
    """
    from ..distributed.online import OnlineRun  # noqa: PLC0415  (imports Ray)
    from ..distributed.pool import Interrupted  # noqa: PLC0415
    from .learning import FinishedLayer, JobStopped, _dataset_info, _job_model  # noqa: PLC0415

    dataset = store.get_dataset(spec.dataset_id)
    if dataset is None:
        raise ValueError(f"dataset {spec.dataset_id} is gone")
    verify_dataset(store, dataset)
    learning = spec.learning
    images = [store.artifacts.location(image.key) for image in dataset.images]
    train, held = held_out_split(len(images), learning.held_out_count(len(images)), spec.seed)
    plan = StreamPlan(len(train), learning.batch_size or 16, learning.n_epochs or 1, learning.n_images, spec.seed)
    layer_store = store.job_work(job.id).child("layers/L1")
    connect(cluster)
    run = OnlineRun(
        [images[i] for i in train],
        spec.learn_config(),
        learning.online_config(held_out_every=max(1, plan.n_steps // HELD_OUT_POINTS)),
        plan,
        workers=spec.workers,
        backend=spec.backend,
        placement=placement,
        actor_cpus=actor_cpus,
        held_out=[images[i] for i in held],
        info=_dataset_info(dataset),
        checkpoint_dir=layer_store.child("checkpoints"),
        checkpoint_every=learning.checkpoint_every or DEFAULT_CHECKPOINT_EVERY,
        max_failures=max_failures,
    )

    def progress(stats: IterStats, seen: int) -> None:
        store.update_progress(
            job.id, layer=1, iteration=seen, objective=stats.objective, sparsity=stats.sparsity, elapsed=stats.elapsed
        )

    resume = bool(layer_store.list("checkpoints"))  # an earlier attempt left checkpoints
    try:
        try:
            outcome = run.run(
                callback=progress, should_stop=should_stop, resume=resume, keep_actors=True, interrupt=interrupt
            )
        except Interrupted:
            raise JobStopped from None
        if not outcome.finished:
            raise JobStopped
        result = outcome.result
        model = _job_model(spec, [FinishedLayer(result, [], store.artifacts.location, layer_store)])
        sample = images[: min(SAMPLE_IMAGES, len(images))]
        outputs = LayerOutputs(store.artifacts.url, None, None, Reconstruction(model.stack, [], []))
        written = run.write_sample(sample, result.filters, outputs)
    finally:
        run.close()
    curve = [
        {"layer": 1, "iteration": min((n + 1) * run.online.held_out_every, plan.n_steps), "objective": value}
        for n, value in enumerate(result.held_out_history)
    ]
    if curve:
        store.put_artifact(job.id, "held_out.json", json.dumps(curve, indent=1).encode(), "application/json")
        picture = history_plot(curve, xlabel="batch", title="held-out objective")
        store.put_artifact(job.id, "held_out.png", picture, "image/png")
    layers = [FinishedLayer(result, [written], store.artifacts.location, layer_store)]
    _store_artifacts(store, job.id, spec, model, layers, sample)  # model.json last
    store.job_work(job.id).remove_all()
    logger.info("job %s: learned online from %d images", job.id, outcome.images_seen)
    return model
