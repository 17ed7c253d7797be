"""Encode jobs: a finished model and a stored dataset in, the maps of every image out, written block by block.

This is how a client gets the codes of a collection too large for ``POST /models/{id}/encode`` (one request, held in
the service's memory). The request (:class:`EncodeRequest`, sent to ``POST /datasets/{id}/encode``) names the model
(a succeeded learning job), the top layer, the inference (default: the model's method, 200 iterations, as ``POST
/models/{id}/encode``), the block size and the workers. The service checks it against the model and the dataset
(:func:`check_encode`: one image shape, the model's channels, filters that fit) and bounds the block size with its
cost model before it queues the job; the stored spec (:class:`EncodeSpec`) adds the dataset and holds the resolved
layer and block size.

The job (:func:`execute_encode`, called by the runner in place of learning) cuts the dataset into blocks and maps
them on a pool of coding actors (:mod:`workers.distributed.encode`, plain actors that pull blocks): each actor reads its
block's images from the artifact store by key, encodes them through every layer up to the top one and writes the
maps (and the switches of the layers that pool) into the job's work store itself (``parts/``); this process records
keys only. After each block its result goes to the work store too (``blocks/<index>.json``), so a job the service
had to stop resumes with the blocks not yet done; a cancel is seen between blocks. The parts join the artifact store
(adopted: a hard link or a copy inside the object store) only when every block is done; a failed or cancelled job's
work store goes with all it wrote. Progress counts the images encoded (``iteration`` of
``n_iter`` = the dataset's images).

Artifacts of a succeeded encode job: per block i and layer l, ``maps-L<l>.part-<i>.npy`` (n_i, K_l, H_l', W_l')
float32 and, for a layer that pools, ``switches-L<l>.part-<i>.npy``; their index ``shards.json``, as for learning
jobs, so ``GET /jobs/{id}/maps`` (the whole zip, or ``?image=i``) serves them the same way; ``config.json`` (the
resolved spec).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from solver import StackModel
from solver.operators.convolution import map_shape
from solver.operators.pooling import pooled_shape

from ..distributed.cluster import ClusterConfig, connect
from ..distributed.placement import ActorResources, Placement
from .learning import JobStopped
from .models import JobModel, load_model
from .objects import ObjectStore
from .publish import part_name
from .spec import MAX_LAYERS, JobInference, JobSpec, SpecError
from .store import ID_PATTERN, DatasetRecord, JobRecord, JobStore

logger = logging.getLogger("workers.jobs.runner")

KIND = "encode"
MAX_BLOCK_SIZE = 4096
"""Most images of one block (the cost model usually allows fewer)."""
_BLOCK_NAME = re.compile(r"^[0-9]{6,}\.json$")


class EncodeRequest(BaseModel):
    """What a client asks of an encode job (``POST /datasets/{id}/encode``): the model and how to encode.

    Attributes
    ----------
    model_id : str
        A succeeded learning job.
    layer : int, optional
        The top layer to encode (1-based); the maps of every layer up to it are stored. Default: the model's top.
    inference : JobInference, optional
        Default: the model's method with 200 iterations per layer, as ``POST /models/{id}/encode`` encodes.
    block_size : int, optional
        Images per block; default: as many as the service's cost model allows per block (at most 64).
    workers : int
        Coding actors (at most one per block).
    backend, resources
        As for learning jobs.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_id: str = Field(..., pattern=ID_PATTERN, description="a succeeded learning job, whose model encodes")
    layer: int | None = Field(
        None, ge=1, le=MAX_LAYERS, description="top layer to encode; the maps of every layer up to it are stored"
    )
    inference: JobInference | None = Field(
        None,
        description="default: the model's method with 200 iterations per layer (as POST /models/{id}/encode)",
    )
    block_size: int | None = Field(
        None,
        ge=1,
        le=MAX_BLOCK_SIZE,
        description="images per block (what one actor encodes at once); default: the most the service's cost "
        "model allows, at most 64",
    )
    workers: int = Field(1, ge=1, le=256, description="coding actors (at most one per block)")
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    resources: ActorResources = Field(default_factory=ActorResources)


class EncodeSpec(EncodeRequest):
    """An encode job as stored: the request, the dataset it encodes, and ``kind`` 'encode' (which tells it from a
    learning job's spec)."""

    kind: Literal["encode"] = KIND
    dataset_id: str = Field(..., pattern=ID_PATTERN)

    def method(self, model: JobModel) -> tuple[Any, int | None]:
        """(method, max_iter) for :func:`solver.encode_layers`: the spec's inference, else the model's method with
        200 iterations."""
        if self.inference is None:
            return model.inference.method, 200
        return self.inference, None

    def n_actors(self, n_images: int) -> int:
        """Coding actors of the run: the workers asked, at most one per block."""
        size = self.block_size or 1
        return max(1, min(self.workers, math.ceil(n_images / size)))


def is_encode_job(spec: dict[str, Any]) -> bool:
    """Whether a stored job spec is an encode job's (a learning job's has no ``kind``)."""
    return spec.get("kind") == KIND


def job_spec(spec: dict[str, Any]) -> JobSpec | EncodeSpec:
    """The stored spec, validated as what it is."""
    return EncodeSpec.model_validate(spec) if is_encode_job(spec) else JobSpec.model_validate(spec)


def actors_of(spec: JobSpec | EncodeSpec, n_images: int) -> int:
    """The actors a job's placement reserves: shards of a batch learning job, coding actors of an online or an
    encode job."""
    if isinstance(spec, EncodeSpec):
        return spec.n_actors(n_images)
    if spec.learning.online:  # coding actors share each batch: no more of them than the batch has images
        return min(spec.workers, n_images, spec.learning.batch_size or 16)
    return min(spec.workers, n_images)


def check_encode(spec: EncodeSpec, model: StackModel, dataset: DatasetRecord) -> int:
    """Raise :class:`SpecError` when `model` cannot encode `dataset`'s images: more than one image shape, a channel
    count the model does not read, a filter larger than its layer's input, a layer the model does not have.

    Returns
    -------
    int
        The top layer to encode (the spec's, or the model's top).
    """
    if spec.layer is not None and spec.layer > model.n_layers:
        raise SpecError("layer", f"layer must be between 1 and {model.n_layers} for model {spec.model_id}", spec.layer)
    top = spec.layer or model.n_layers
    first = dataset.images[0]
    for index, image in enumerate(dataset.images[1:], start=1):
        if image.shape != first.shape:
            raise SpecError(
                "dataset_id",
                f"dataset {dataset.id} mixes image shapes (image 0 is {list(first.shape)}, image {index} is "
                f"{list(image.shape)}); an encode job needs images of one shape",
                spec.dataset_id,
            )
    channels, height, width = first.shape
    bottom = model.layers[0]
    grey = bottom.preprocess is not None and bottom.preprocess.config.grey
    if channels != bottom.n_channels and not (grey and channels == 3 and bottom.n_channels == 1):
        raise SpecError(
            "dataset_id",
            f"dataset {dataset.id} has images of {channels} channel(s) but the filters of model {spec.model_id} "
            f"read {bottom.n_channels}",
            spec.dataset_id,
        )
    pixels = model.reconstruct_to == "pixels"  # every layer of the 2011 model codes the pixels
    for number, layer in enumerate(model.layers[:top], start=1):
        size = layer.filters.shape[-1]
        if size > min(height, width):
            what = "images" if number == 1 or pixels else f"layer {number}'s input (the maps below)"
            raise SpecError(
                "dataset_id",
                f"the filters of layer {number} of model {spec.model_id} are {size}x{size}, larger than the "
                f"{what} of {height}x{width} in dataset {dataset.id}",
                spec.dataset_id,
            )
        if not pixels:
            height, width = map_shape((height, width), size, model.boundary)
            if layer.pool is not None:
                _, _, height, width = pooled_shape((1, layer.n_filters, height, width), layer.pool)
    return top


# -- the run -----------------------------------------------------------------------------------------------------


def execute_encode(
    store: JobStore,
    job: JobRecord,
    *,
    cluster: ClusterConfig | None = None,
    placement: Placement | None = None,
    actor_cpus: float = 0.0,
    should_stop: Callable[[], bool] = lambda: False,
    interrupt: Callable[[], bool] | None = None,
    **_: Any,
) -> None:
    """Encode every block of `job`'s dataset not done by an earlier attempt, then store the index of the parts.

    Takes the runner's keyword arguments of :func:`workers.jobs.learning.execute` (checkpoint and failure counts
    do not apply: a block is the unit of work, and one that fails fails the job, naming it).

    Raises
    ------
    JobStopped
        When `should_stop` turned true before the last block, or `interrupt` while the actors worked (the blocks
        in flight are encoded again on resume).
    """
    from ..distributed.encode import blocks_of, encode_blocks  # noqa: PLC0415  (imports Ray when it runs)

    if store.artifact(job.id, "shards.json") is not None:  # finished before the service died
        return
    spec = EncodeSpec.model_validate(job.spec)
    model = load_model(store, spec.model_id)
    dataset = store.get_dataset(spec.dataset_id)
    if dataset is None:
        raise ValueError(f"dataset {spec.dataset_id} is gone")
    top = spec.layer or model.stack.n_layers
    blocks = blocks_of([image.key for image in dataset.images], spec.block_size or 1)
    work = store.job_work(job.id)
    done = _done_blocks(work)
    images_done = sum(result.count for result in done.values())
    start = time.perf_counter()
    store.update_progress(job.id, layer=1, iteration=images_done, objective=None, sparsity=None, elapsed=0.0)
    todo = [block for block in blocks if block.index not in done]
    if todo:
        if should_stop():
            raise JobStopped
        connect(cluster)
        options = _actor_options(spec, placement, actor_cpus)
        method, max_iter = spec.method(model)
        encoder = {
            "artifacts": store.artifacts.url,
            "parts": work.url,
            "model": model.stack,
            "layer": top,
            "method": method,
            "max_iter": max_iter,
            "backend": options.pop("backend"),
        }
        n_actors = min(spec.n_actors(dataset.n_images), len(todo))
        logger.info("job %s: encoding %d block(s) on %d actor(s)", job.id, len(todo), n_actors)
        for result in encode_blocks(
            todo,
            encoder,
            actors=n_actors,
            actor_options=options,
            should_stop=should_stop,
            interrupt=interrupt or (lambda: False),
        ):
            work.write(f"blocks/{result.index:06d}.json", _block_json(result))
            done[result.index] = result
            images_done += result.count
            store.update_progress(
                job.id,
                layer=1,
                iteration=images_done,
                objective=None,
                sparsity=None,
                elapsed=time.perf_counter() - start,
            )
        if len(done) < len(blocks):
            raise JobStopped
    _store_index(store, job.id, spec, top, [done[block.index] for block in blocks], dataset.n_images, work)
    work.remove_all()


def _actor_options(spec: EncodeSpec, placement: Placement | None, actor_cpus: float) -> dict[str, Any]:
    """Every coding actor's Ray options, in any bundle of the job's reservation when it has one, and its backend
    (``backend``)."""
    if placement is None:  # run outside the runner (no reservation): CPUs only, unless the spec says cupy
        cpus = actor_cpus if spec.resources.cpus is None else spec.resources.cpus
        return {"num_cpus": cpus, "backend": "cupy" if spec.backend == "cupy" else "numpy"}
    options = placement.actor_options(0)
    if placement.group is not None:  # the pool's actors are not numbered: any bundle of the group
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy  # noqa: PLC0415

        options["scheduling_strategy"] = PlacementGroupSchedulingStrategy(
            placement.group, placement_group_bundle_index=-1
        )
    options["backend"] = placement.backend
    return options


def _block_json(result: Any) -> bytes:
    from ..distributed.encode import result_json  # noqa: PLC0415

    return result_json(result).encode()


def _done_blocks(work: ObjectStore) -> dict[int, Any]:
    """The blocks an earlier attempt finished (their parts are in the artifact store), by index."""
    from ..distributed.encode import result_of_row  # noqa: PLC0415

    done = {}
    for name in work.list("blocks"):
        if not _BLOCK_NAME.match(name):  # a temporary file a killed write left
            continue
        result = result_of_row(work.read(f"blocks/{name}").decode())
        done[result.index] = result
    return done


def _store_index(
    store: JobStore, job_id: str, spec: EncodeSpec, top: int, results: Sequence[Any], n_images: int, work: ObjectStore
) -> None:
    """Adopt every block's parts from the job's work store into the artifact store and record them as the job's
    artifacts, with their index ``shards.json`` (stored last)."""
    index: dict[str, Any] = {
        "n_images": n_images,
        "parts": [{"first": r.first, "count": r.count} for r in results],
        "layers": [],
        "reconstructions": [],
    }
    for number in range(1, top + 1):
        entry: dict[str, Any] = {"maps": [], "switches": None if results[0].switches[number - 1] is None else []}
        for i, result in enumerate(results):
            maps = result.maps[number - 1]
            entry["maps"].append(_record(store, job_id, part_name("maps", number, i), maps, work))
            switches = result.switches[number - 1]
            if switches is not None:
                entry["switches"].append(_record(store, job_id, part_name("switches", number, i), switches, work))
        index["layers"].append(entry)
    store.put_artifact(job_id, "config.json", spec.model_dump_json(indent=1).encode(), "application/json")
    store.put_artifact(job_id, "shards.json", json.dumps(index, indent=1).encode(), "application/json")


def _record(store: JobStore, job_id: str, name: str, written: Any, work: ObjectStore) -> str:
    if written.stored is not None:  # the job has succeeded: its parts join the content-addressed store now
        store.artifacts.adopt(work.at(written.stored), written.key, written.size)
    store.record_artifact(job_id, name, written.key, "application/x-npy", written.size)
    return name
