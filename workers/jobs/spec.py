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

import json
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from solver.config import (
    AdmmConfig,
    FilterUpdateConfig,
    FistaConfig,
    LayerSpec,
    LearnConfig,
    ZeilerConfig,
)
from solver.images.preprocess import PreprocessConfig
from solver.operators.connectivity import connectivity_table
from solver.operators.convolution import map_shape
from solver.operators.pooling import pooled_shape

from ..distributed.placement import ActorResources
from .learning_mode import JobLearning
from .store import ID_PATTERN, DatasetRecord


class SpecError(ValueError):
    """A spec that does not fit its dataset; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, message: str, value: object = None):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.value = value


# Caps that a job adds to the learning config's own checks: every count bounded, so that no spec holds the runner
# for ever, and every scale bounded, so that the numerics stay finite in float32 (ρ = 50·λ + 1, β0·factor^stages).
MAX_ITER = 10_000
"""Most iterations of one inference or filter update (per outer iteration)."""
MAX_LAYERS = 16
MAX_SCALE = 1e6
"""Largest λ, ρ and β0."""
MAX_BETA = 1e15
"""Largest β of Zeiler's continuation (β0 · beta_factor^(n_beta − 1))."""

_Count = Annotated[int, Field(ge=1, le=MAX_ITER)]


class _Capped:
    """A capped config is equal to the solver's config it caps when their values are (``learn_config()`` gives
    the solver's classes back), and hashes as a value."""

    def __eq__(self, other: object) -> bool:
        base = type(self).__bases__[-1]
        if isinstance(other, base):
            return self.model_dump() == other.model_dump()  # type: ignore[attr-defined]
        return NotImplemented

    def __hash__(self) -> int:
        return hash(json.dumps(self.model_dump(mode="json"), sort_keys=True))  # type: ignore[attr-defined]


class JobZeilerConfig(_Capped, ZeilerConfig):
    """:class:`~solver.config.ZeilerConfig` with its counts and its β continuation bounded."""

    beta0: float = Field(1.0, gt=0, le=MAX_SCALE)
    beta_factor: float = Field(10.0, gt=1, le=1000)
    n_beta: int = Field(6, ge=1, le=50)
    inner_iter: int = Field(1, ge=1, le=MAX_ITER, description="x/z iterations per β stage")
    total_iter: int | None = Field(
        None, ge=1, le=MAX_ITER, description="iterations in all, spread evenly over the β stages (inner_iter unused)"
    )
    cg_iter: int = Field(2, ge=1, le=1000, description="CG steps per z-step (valid boundary, or z_solver='cg')")

    @model_validator(mode="after")
    def _finite_beta(self) -> JobZeilerConfig:
        last = self.beta0 * self.beta_factor ** (self.n_beta - 1)
        if last > MAX_BETA:
            raise ValueError(
                f"the last β, beta0 · beta_factor^(n_beta − 1) = {last:.3g}, is over {MAX_BETA:.0e}: lower "
                "beta0, beta_factor or n_beta"
            )
        return self


class JobFistaConfig(_Capped, FistaConfig):
    """:class:`~solver.config.FistaConfig` with its iterations bounded."""

    max_iter: _Count = 200


class JobAdmmConfig(_Capped, AdmmConfig):
    """:class:`~solver.config.AdmmConfig` with its iterations and ρ bounded."""

    max_iter: _Count = 200
    rho: float | None = Field(None, gt=0, le=MAX_SCALE, description="initial penalty; default 50·λ + 1")


class JobFilterUpdateConfig(_Capped, FilterUpdateConfig):
    """:class:`~solver.config.FilterUpdateConfig` with its steps and ρ bounded."""

    max_iter: _Count = Field(10, description="FISTA steps, CG steps, or consensus iterations per outer iteration")
    rho: float | None = Field(None, gt=0, le=MAX_SCALE, description="consensus penalty ρ; default: the images")


class JobLayerSpec(_Capped, LayerSpec):
    """:class:`~solver.config.LayerSpec` with λ, the filter size and the pooling bounded."""

    filter_size: int = Field(..., ge=1, le=512)
    lam: float = Field(
        ...,
        gt=0,
        le=MAX_SCALE,
        description="weight of the sparsity term (λ = κ/λ_Z in Zeiler's terms); with lam_scale 'relative', "
        "the fraction of λ_max",
    )
    pool: (
        tuple[
            Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=64)], Annotated[int, Field(ge=1, le=64)]
        ]
        | None
    ) = Field(
        None,
        description="3-D max pooling (maps, rows, columns) of this layer's maps, each between 1 and 64 and at "
        "most the maps' size; None: no pooling",
    )


JobInference = Annotated[JobZeilerConfig | JobFistaConfig | JobAdmmConfig, Field(discriminator="method")]


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
    layers: list[JobLayerSpec] = Field(..., min_length=1, max_length=MAX_LAYERS)
    inference: JobInference = Field(
        default_factory=lambda: JobAdmmConfig(max_iter=10),
        description="inference per outer iteration: exactly max_iter iterations (tol is not used in learning)",
    )
    filter_update: JobFilterUpdateConfig = Field(default_factory=JobFilterUpdateConfig)
    # numpy refuses a negative seed (the job would fail only once it ran); int64 is what integers are stored as
    seed: int = Field(0, ge=0, le=2**63 - 1, description="seeds the initial filters and the random connectivity")
    preprocess: PreprocessConfig | None = Field(default_factory=PreprocessConfig)
    resources: ActorResources = Field(default_factory=ActorResources)
    learning: JobLearning = Field(
        default_factory=JobLearning,
        description="'batch' (default) or 'online' learning with its batch size, length and forgetting",
    )

    @field_validator("filter_update")
    @classmethod
    def _distributed_update(cls, value: FilterUpdateConfig) -> FilterUpdateConfig:
        if value.recentre:
            raise ValueError("recentre is not available in distributed learning (jobs) yet; leave it off")
        return value

    def learn_config(self) -> LearnConfig:
        """The learning config alone."""
        return LearnConfig.model_validate(
            self.model_dump(exclude={"dataset_id", "workers", "backend", "resources", "learning"})
        )


def check_against_dataset(
    spec: JobSpec,
    dataset: DatasetRecord,
    *,
    max_filters: int | None = None,
    max_maps_bytes: int | None = None,
    max_filter_bytes: int | None = None,
) -> None:
    """Raise :class:`SpecError` when `spec` cannot run on `dataset` (see the module docstring), when the feature
    maps of its layers together (N images × K_l × H_l' × W_l' in the computation dtype, summed over the layers)
    would take more than `max_maps_bytes`, or when one layer's filters with their transforms (K × C × s² real
    and K × C × H' × (W'/2 + 1) complex values) would take more than `max_filter_bytes`."""
    first = dataset.images[0]
    for index, image in enumerate(dataset.images[1:], start=1):
        if image.shape != first.shape or image.dtype != first.dtype:
            raise SpecError(
                "dataset_id",
                f"dataset {dataset.id} mixes image shapes or dtypes (image 0 is "
                f"{first.shape} {first.dtype}, image {index} is {image.shape} {image.dtype}); a job "
                "needs images of one shape and dtype",
                spec.dataset_id,
            )
    channels, height, width = first.shape
    check_online(spec, len(dataset.images))
    _check_preprocess(spec, (height, width))
    if spec.preprocess is not None and spec.preprocess.grey and channels == 3:
        channels = 1
    itemsize = 8 if (spec.dtype or ("float64" if first.dtype == "float64" else "float32")) == "float64" else 4
    total = 0
    for index, layer in enumerate(spec.layers):
        _check_layer(index, layer, channels, (height, width), spec.seed, max_filters)
        height, width = map_shape((height, width), layer.filter_size, spec.boundary)
        _check_filter_bytes(index, layer, channels, (height, width), itemsize, max_filter_bytes)
        _check_pool(index, layer, (layer.n_filters, height, width))
        channels = layer.n_filters
        total += maps_images(spec, len(dataset.images)) * layer.n_filters * height * width * itemsize
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


def maps_images(spec: JobSpec, n_images: int) -> int:
    """Images whose maps a job holds at once: every image in batch learning, one batch in online learning."""
    return min(spec.learning.batch_size or 16, n_images) if spec.learning.online else n_images


def progress_steps(spec: JobSpec, n_images: int) -> list[int]:
    """The job's progress units per layer, for a dataset of `n_images`: outer iterations in batch learning, images
    read (held-out images excluded) in online learning."""
    if spec.learning.online:
        return [spec.learning.total_images(n_images - spec.learning.held_out_count(n_images))]
    return [layer.n_iter or spec.n_iter for layer in spec.layers]


def check_online(spec: LearnConfig, n_images: int | None, learning: JobLearning | None = None) -> None:
    """Raise :class:`SpecError` when an online job cannot run (nothing for a batch job): more than one layer,
    pooling, a relative λ, a filter update other than FISTA, ``reconstruct_to`` 'pixels', an ``n_iter`` given, or
    (with the dataset's `n_images`) a batch larger than its training images.

    Parameters
    ----------
    spec : JobSpec or a job file
        With a ``learning`` field, or `learning` given.
    n_images : int or None
        The dataset's images (None: not known yet, the size checks are left out).
    """
    learning = learning if learning is not None else spec.learning
    if not learning.online:
        return
    if len(spec.layers) != 1:
        raise SpecError(
            "layers",
            f"online learning learns one layer, got {len(spec.layers)} layers; learn one layer (or use "
            "learning.mode 'batch')",
            len(spec.layers),
        )
    layer = spec.layers[0]
    if layer.pool is not None:
        raise SpecError("layers.0.pool", "online learning learns one layer without pooling", list(layer.pool))
    if layer.lam_scale != "absolute":
        raise SpecError("layers.0.lam_scale", "online learning needs an absolute λ", layer.lam_scale)
    if spec.filter_update.method != "fista":
        raise SpecError(
            "filter_update.method",
            "online learning updates the filters by FISTA on its statistics",
            spec.filter_update.method,
        )
    if spec.reconstruct_to != "below":
        raise SpecError("reconstruct_to", "online learning reconstructs its input ('below')", spec.reconstruct_to)
    if "n_iter" in getattr(spec, "model_fields_set", ()):
        raise SpecError(
            "n_iter",
            "an online job reads learning.n_epochs passes or learning.n_images images, not outer iterations",
            spec.n_iter,
        )
    if n_images is None:
        return
    held = learning.held_out_count(n_images)
    if held >= n_images:
        raise SpecError(
            "learning.held_out",
            f"{held} held-out images leave none of the dataset's {n_images} images to learn from",
            held,
        )
    train, batch = n_images - held, learning.batch_size or 16
    if batch > train:
        raise SpecError(
            "learning.batch_size",
            f"batches of {batch} images are larger than the {train} training images of the dataset "
            f"({n_images} images, {held} held out)",
            batch,
        )


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


def _check_preprocess(spec: JobSpec, shape: tuple[int, int]) -> None:
    pre = spec.preprocess
    if pre is not None and pre.contrast_normalise and pre.cn_size > min(shape):
        raise SpecError(
            "preprocess.cn_size",
            f"a contrast window of {pre.cn_size}x{pre.cn_size} is larger than the images of {shape[0]}x{shape[1]}",
            pre.cn_size,
        )


def _check_pool(index: int, layer: LayerSpec, maps: tuple[int, int, int]) -> None:
    if layer.pool is None:
        return
    names = ("maps", "rows", "columns")
    for size, extent, name in zip(layer.pool, maps, names, strict=True):
        if size > extent:
            raise SpecError(
                f"layers.{index}.pool",
                f"a pooling block of {size} {name} is larger than the layer's {extent} {name} "
                f"(its maps are {maps[0]}x{maps[1]}x{maps[2]})",
                list(layer.pool),
            )


def _check_filter_bytes(
    index: int, layer: LayerSpec, channels: int, grid: tuple[int, int], itemsize: int, limit: int | None
) -> None:
    if limit is None:
        return
    planes = layer.n_filters * channels
    total = planes * (layer.filter_size**2 + grid[0] * (grid[1] // 2 + 1) * 2) * itemsize
    if total > limit:
        raise SpecError(
            f"layers.{index}.n_filters",
            f"the {layer.n_filters}x{channels} filters of layer {index + 1} with their transforms on the "
            f"{grid[0]}x{grid[1]} maps take {total / 2**30:.2f} GiB, more than the service's limit of "
            f"{limit / 2**30:.2f} GiB (DECONV_MAX_JOB_FILTER_BYTES): use fewer filters or a sparser connectivity",
            layer.n_filters,
        )
