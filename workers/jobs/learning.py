"""One job's run (:func:`execute`): every layer learned by a distributed
:class:`~workers.distributed.coordinator.Coordinator`, resumed from what an earlier attempt left, and the finished
layers kept in the job's work store (``layers/L<l>/done.json``) until the artifacts are stored. The job runner
(:mod:`workers.jobs.runner`) calls it from its threads.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np

from solver import FittedPreprocess, IterStats, LearnResult, StackModel, layer_config
from solver.operators.pixel_path import LowerLayer

from ..distributed.cluster import ClusterConfig, connect
from ..distributed.deadlines import Deadlines
from ..distributed.images import ImageInfo
from ..distributed.outputs import LayerOutputs, Reconstruction, ShardOutput, Written
from ..distributed.placement import Placement
from .integrity import verify_dataset
from .models import JobModel, load_model
from .objects import Location, ObjectStore, Part, npy_bytes
from .publish import _store_artifacts
from .spec import JobSpec
from .store import JobRecord, JobStore

logger = logging.getLogger("workers.jobs.runner")


class JobStopped(Exception):  # noqa: N818  (control flow, not an error)
    """The job was asked to stop (a cancel, or the service shutting down) before it finished."""


def execute(
    store: JobStore,
    job: JobRecord,
    *,
    cluster: ClusterConfig | None = None,
    checkpoint_every: int = 5,
    max_failures: int = 3,
    actor_cpus: float = 0.0,
    placement: Placement | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    interrupt: Callable[[], bool] | None = None,
    deadlines: Deadlines | None = None,
) -> JobModel:
    """Learn every layer of `job`, resuming what an earlier attempt left, and store the artifacts.

    Nothing the size of the dataset passes through this process: the shard actors read the images from the
    artifact store and write their parts of every result; this function records their keys. With a `placement`,
    every layer's shard actors run in its reserved bundles. `should_stop` is asked between outer iterations (the
    run stops with a checkpoint of the last one), `interrupt` while the shard actors work (their calls stop at
    once; the run resumes from its last checkpoint); `deadlines` bound the actors' start-up and calls.

    Raises
    ------
    JobStopped
        When `should_stop` or `interrupt` turned true before the end.
    """
    from ..distributed.coordinator import Coordinator, Interrupted  # noqa: PLC0415  (imports Ray)

    if store.artifact(job.id, "model.json") is not None:  # finished before the service died: nothing to redo
        store.job_work(job.id).remove_all()  # unless it died before removing this
        return load_model(store, job.id)
    spec = JobSpec.model_validate(job.spec)
    if spec.learning.online:  # one layer, streamed in batches: its own run
        from .online_job import execute_online  # noqa: PLC0415

        return execute_online(
            store,
            job,
            spec,
            cluster=cluster,
            max_failures=max_failures,
            actor_cpus=actor_cpus,
            placement=placement,
            should_stop=should_stop,
        )
    config = spec.learn_config()
    dataset = store.get_dataset(spec.dataset_id)
    if dataset is None:
        raise ValueError(f"dataset {spec.dataset_id} is gone")
    verify_dataset(store, dataset)
    work = store.job_work(job.id)
    images = [store.artifacts.location(image.key) for image in dataset.images]
    inputs: list = images
    info = _dataset_info(dataset)
    connect(cluster)
    pixels = config.reconstruct_to == "pixels"
    layers: list[FinishedLayer] = []
    n_layers = len(spec.layers)
    for index in range(n_layers):
        layer_store = work.child(f"layers/L{index + 1}")
        pool = spec.layers[index].pool
        done = _load_layer(layer_store, store.artifacts.location)
        if done is None:
            if should_stop():
                raise JobStopped
            cfg = layer_config(config, index)
            lower: list[LowerLayer] = []
            if pixels:  # every layer reads the pixels, preprocessed as for layer 1 (the same fit, repeated)
                cfg = cfg.model_copy(update={"preprocess": config.preprocess})
                lower = [
                    LowerLayer(d.result.filters, _table(d.result), spec.layers[j].pool) for j, d in enumerate(layers)
                ]
            top = index == n_layers - 1
            outputs = LayerOutputs(
                store.artifacts.url,
                layer_store if pool is not None and not pixels and not top else None,
                pool,
                parts=layer_store,  # adopted into the artifact store when the job succeeds
            )

            def finish(result: LearnResult, outputs: LayerOutputs = outputs, top: bool = top) -> LayerOutputs:
                if not top:
                    return outputs
                return replace(outputs, reconstruction=_reconstruction(spec, [*layers, FinishedLayer(result, [])]))

            coordinator = Coordinator(
                inputs,
                cfg,
                workers=spec.workers,
                checkpoint_dir=layer_store.child("checkpoints"),
                checkpoint_every=checkpoint_every,
                max_failures=max_failures,
                backend=spec.backend,
                actor_cpus=actor_cpus,
                lower=lower,
                switch_paths=[d.parts("switches") for d in layers] if pixels else [],
                info=info if inputs is images else None,
                outputs=finish,
                placement=placement,
                deadlines=deadlines,
            )

            def progress(stats: IterStats, layer: int = index + 1) -> None:
                store.update_progress(
                    job.id,
                    layer=layer,
                    iteration=stats.iteration,
                    objective=stats.objective,
                    sparsity=stats.sparsity,
                    elapsed=stats.elapsed,
                )

            resume = bool(layer_store.list("checkpoints"))  # an earlier attempt left checkpoints
            try:
                result = coordinator.run(callback=progress, should_stop=should_stop, resume=resume, interrupt=interrupt)
            except Interrupted:
                raise JobStopped from None
            if len(result.history) < cfg.n_iter:
                raise JobStopped
            done = _save_layer(layer_store, result, coordinator.written, store.artifacts.location)
        layers.append(done)
        if not pixels:  # the 2010 model: the next layer reads this one's (pooled) maps
            inputs = done.parts("maps" if pool is None else "pooled")
    model = _job_model(spec, layers)
    _store_artifacts(store, job.id, spec, model, layers, images)
    work.remove_all()  # everything of value is in the artifacts now
    return model


def _dataset_info(dataset) -> ImageInfo | None:
    """What every image of `dataset` shares, from its record; None when they differ (the coordinator then reads
    the headers, and names the first image that differs)."""
    shapes = {tuple(image.shape) for image in dataset.images}
    dtypes = {image.dtype for image in dataset.images}
    if len(shapes) != 1 or len(dtypes) != 1:
        return None
    return ImageInfo(shapes.pop(), dtypes.pop())


def _job_model(spec: JobSpec, layers: list[FinishedLayer]) -> JobModel:
    pixels = spec.reconstruct_to == "pixels"
    results = [d.result for d in layers]
    preprocess = [r.preprocess if index == 0 or not pixels else None for index, r in enumerate(results)]
    lam_max = [r.lam_max for r in results]  # a relative λ is recorded as the absolute λ used, with λ_max
    lams = [layer.lam if top is None else layer.lam * top for layer, top in zip(spec.layers, lam_max, strict=False)]
    stack = StackModel.from_layers(
        [r.filters for r in results],
        [_table(r) for r in results],
        preprocess,
        lams,
        [layer.p for layer in spec.layers[: len(results)]],
        spec.boundary,
        [layer.pool for layer in spec.layers[: len(results)]],
        spec.reconstruct_to,
        lam_max=lam_max,
    )
    return JobModel(stack, spec.inference)


def _reconstruction(spec: JobSpec, layers: list[FinishedLayer]) -> Reconstruction:
    """How the top layer's shards reconstruct their images: the whole model, the switches and map shapes below."""
    below = layers[:-1]
    return Reconstruction(
        _job_model(spec, layers).stack,
        [d.parts("switches") if spec.layers[j].pool is not None else None for j, d in enumerate(below)],
        [d.map_shape for d in below],
    )


def _table(result: LearnResult) -> np.ndarray:
    if result.connectivity is not None:
        return np.asarray(result.connectivity, dtype=bool)
    return np.ones(result.filters.shape[:2], dtype=bool)


# -- finished layers in the work store -----------------------------------------------------------------------------


@dataclass(frozen=True)
class FinishedLayer:
    """A learned layer: its result (without maps) and the parts its shards wrote, in shard order."""

    result: LearnResult
    written: list[ShardOutput]
    locate: Callable[[str], Location] | None = None
    work: ObjectStore | None = None

    def parts(self, what: str) -> list[Part] | None:
        """The parts of output `what` (``maps``, ``pooled``, ``switches``, ``reconstructions``) over every image,
        or None when the shards did not write it."""
        entries = [(getattr(w, what), w) for w in self.written]
        if not entries or any(e is None for e, _ in entries):
            return None
        return [Part(self._location(e, what), w.first, w.count) for e, w in entries]

    def _location(self, entry: Written, what: str) -> Location:
        if what == "pooled":
            return self.work.at(entry.key)
        return self.locate(entry.key) if entry.stored is None else self.work.at(entry.stored)

    @property
    def map_shape(self) -> tuple[int, int, int]:
        """(K, H', W') of one image's maps."""
        return tuple(self.written[0].maps.shape[1:])


def _save_layer(
    folder: ObjectStore, result: LearnResult, written: list[ShardOutput], locate: Callable[[str], Location]
) -> FinishedLayer:
    """The layer's filters, stats and the keys of its shards' parts, in ``done.json``, written last (the shards
    wrote the parts themselves)."""
    done = {
        "filters": result.filters.tolist(),
        "filters_dtype": str(result.filters.dtype),
        "connectivity": _table(result).tolist(),
        "stats": [asdict(s) for s in result.stats],
        "preprocess": None if result.preprocess is None else result.preprocess.to_dict(),
        "lam_max": result.lam_max,
        "written": [asdict(w) for w in written],
    }
    folder.write("filters.npy", npy_bytes(result.filters))  # beside done.json: what a live view reads
    folder.write("done.json", json.dumps(done).encode())
    return FinishedLayer(result, written, locate, folder)


def _load_layer(folder: ObjectStore, locate: Callable[[str], Location] | None = None) -> FinishedLayer | None:
    try:
        done = json.loads(folder.read("done.json"))
    except FileNotFoundError:
        return None
    stats = [IterStats(**s) for s in done["stats"]]
    pre = None if done["preprocess"] is None else FittedPreprocess.from_dict(done["preprocess"])
    logger.info("layer %s: finished earlier, reusing it", folder.url)
    result = LearnResult(
        np.asarray(done["filters"], dtype=done["filters_dtype"]),
        None,
        [s.objective for s in stats],
        stats,
        None,
        np.asarray(done["connectivity"], dtype=bool),
        pre,
        done.get("lam_max"),
    )
    return FinishedLayer(result, [_shard_output(w) for w in done["written"]], locate, folder)


def _shard_output(data: dict[str, Any]) -> ShardOutput:
    def written(entry: dict[str, Any] | None) -> Written | None:
        if entry is None:
            return None
        return Written(entry["key"], entry["size"], tuple(entry["shape"]), entry["dtype"], entry.get("stored"))

    return ShardOutput(
        data["first"],
        data["count"],
        written(data["maps"]),
        written(data.get("pooled")),
        written(data.get("switches")),
        written(data.get("reconstructions")),
    )
