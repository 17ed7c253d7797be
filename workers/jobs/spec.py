"""The spec of a learning job, as clients send it, and its checks against the dataset it names.

A job spec is a :class:`~solver.config.LearnConfig` (layers, inference, filter update, n_iter, boundary,
preprocess, seed, dtype) plus ``dataset_id``, ``workers``, ``backend`` and ``resources`` (what each shard actor
reserves on the cluster). It is frozen and refuses unknown
fields, like every config. Unlike :func:`solver.learn`, a job preprocesses its images by default
(:class:`~solver.images.preprocess.PreprocessConfig`'s defaults: per-image mean removal, then a dataset-wide rescale to
about [-1, 1]); send ``"preprocess": null`` to learn on the pixel values as they are.

:func:`check_against_dataset` checks what the spec alone cannot: the images share one shape and dtype, every
layer's filters fit in its input (the pooled maps of the layer below, when it pools), explicit connectivity tables
have the right shape. Its :class:`SpecError` names
the field (``layers.0.filter_size``) and the value.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from solver.config import FilterUpdateConfig, LayerSpec, LearnConfig
from solver.images.preprocess import PreprocessConfig
from solver.operators.connectivity import connectivity_table
from solver.operators.convolution import map_shape
from solver.operators.pooling import pooled_shape

from ..distributed.placement import ActorResources
from .store import ID_PATTERN, DatasetRecord


class SpecError(ValueError):
    """A spec that does not fit its dataset; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str, value: object = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.value = value


class JobSpec(LearnConfig):
    """A learning job: the learning config, the dataset it learns on, and how to run it.

    Attributes
    ----------
    dataset_id : str
        An uploaded dataset (``POST /datasets``).
    workers : int
        Shard actors (at most one per image).
    backend : {"auto", "numpy", "cupy"}
        ``auto``: cupy on the cluster's GPUs when it has any.
    resources : ActorResources
        CPUs, GPUs and custom Ray resources each shard actor reserves, and how the shards spread over the nodes
        (see :mod:`workers.distributed.placement`); within the service's limits.
    """

    dataset_id: str = Field(..., pattern=ID_PATTERN)
    workers: int = Field(1, ge=1, le=256)
    backend: Literal["auto", "numpy", "cupy"] = "auto"
    n_iter: int = Field(50, ge=1, le=1_000_000, description="outer iterations per layer")
    # numpy refuses a negative seed (the job would fail only once it ran); int64 is what integers are stored as
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds the initial filters and the random connectivity")
    preprocess: PreprocessConfig | None = Field(default_factory=PreprocessConfig)
    resources: ActorResources = Field(default_factory=ActorResources)

    @field_validator("filter_update")
    @classmethod
    def _distributed_update(cls, value: FilterUpdateConfig) -> FilterUpdateConfig:
        if value.recentre:
            raise ValueError("recentre is not available in distributed learning (jobs) yet; leave it off")
        return value

    def learn_config(self) -> LearnConfig:
        """The learning config alone."""
        return LearnConfig.model_validate(self.model_dump(exclude={"dataset_id", "workers", "backend", "resources"}))


def check_against_dataset(
    spec: JobSpec, dataset: DatasetRecord, *, max_filters: int | None = None, max_maps_bytes: int | None = None
) -> None:
    """Raise :class:`SpecError` when `spec` cannot run on `dataset` (see the module docstring), or when the feature
    maps of its layers together (N images × K_l × H_l' × W_l' in the computation dtype, summed over the layers)
    would take more than `max_maps_bytes`."""
    first = dataset.images[0]
    for index, image in enumerate(dataset.images[1:], start=1):
        if image.shape != first.shape or image.dtype != first.dtype:
            raise SpecError(
                "dataset_id",
                f"dataset {dataset.id} mixes image shapes or dtypes (image 0 is "
                f"{first.shape} {first.dtype}, image {index} is {image.shape} {image.dtype}); a job "
                "needs images of one shape",
                spec.dataset_id,
            )
    channels, height, width = first.shape
    if spec.preprocess is not None and spec.preprocess.grey and channels == 3:
        channels = 1
    itemsize = 8 if (spec.dtype or ("float64" if first.dtype == "float64" else "float32")) == "float64" else 4
    total = 0
    for index, layer in enumerate(spec.layers):
        _check_layer(index, layer, channels, (height, width), spec.seed, max_filters)
        height, width = map_shape((height, width), layer.filter_size, spec.boundary)
        channels = layer.n_filters
        total += len(dataset.images) * layer.n_filters * height * width * itemsize
        if max_maps_bytes is not None and total > max_maps_bytes:
            raise SpecError(
                f"layers.{index}.n_filters",
                f"the feature maps of {len(dataset.images)} images up to "
                f"layer {index + 1} take {total / 2**30:.2f} GiB, more than the service's limit of "
                f"{max_maps_bytes / 2**30:.2f} GiB (DECONV_MAX_JOB_MAPS_BYTES): use fewer images, "
                "filters or layers, or smaller images",
                layer.n_filters,
            )
        if layer.pool is not None:  # the layer above reads the pooled maps
            _, channels, height, width = pooled_shape((1, channels, height, width), layer.pool)


def check_resources(spec: JobSpec, *, max_cpus: float, max_gpus: float) -> None:
    """Raise :class:`SpecError` when the spec's ``resources`` ask more per shard actor than the service allows
    (`max_cpus`, `max_gpus`), or GPUs with backend numpy."""
    asked = spec.resources
    if asked.cpus is not None and asked.cpus > max_cpus:
        raise SpecError(
            "resources.cpus",
            f"{asked.cpus:g} CPUs per shard actor, more than the service's limit of {max_cpus:g} "
            "(DECONV_MAX_ACTOR_CPUS)",
            asked.cpus,
        )
    if asked.gpus is not None and asked.gpus > max_gpus:
        raise SpecError(
            "resources.gpus",
            f"{asked.gpus:g} GPUs per shard actor, more than the service's limit of {max_gpus:g} "
            "(DECONV_MAX_ACTOR_GPUS)",
            asked.gpus,
        )
    if asked.gpus and spec.backend == "numpy":
        raise SpecError("resources.gpus", f"backend 'numpy' uses no GPU, got gpus={asked.gpus:g}", asked.gpus)


def _check_layer(
    index: int, layer: LayerSpec, channels: int, shape: tuple[int, int], seed: int, max_filters: int | None
) -> None:
    where = f"layers.{index}"
    if max_filters is not None and layer.n_filters > max_filters:
        raise SpecError(
            f"{where}.n_filters",
            f"{layer.n_filters} filters, more than the limit {max_filters} per layer",
            layer.n_filters,
        )
    if layer.filter_size > min(shape):
        raise SpecError(
            f"{where}.filter_size",
            f"filters of {layer.filter_size}x{layer.filter_size} are larger "
            f"than the layer's input of {shape[0]}x{shape[1]}",
            layer.filter_size,
        )
    try:
        connectivity_table(layer.connectivity, layer.n_filters, channels, seed=seed)
    except ValueError as exc:
        raise SpecError(f"{where}.connectivity", str(exc), layer.connectivity) from None
