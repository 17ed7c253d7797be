"""What a shard writes to the store at the end of a layer: its part of the layer's maps, pooled maps and switches,
and, at the top layer, of the reconstructions.

A learning run that writes outputs never gathers the maps: each shard actor writes its own part, and only the
parts' keys come back (:class:`ShardOutput`, a few hundred bytes). The maps, switches and reconstructions become
artifacts (the content-addressed artifact store, :mod:`workers.jobs.artifacts`); the pooled maps are the next
layer's input only, so they go to the job's work store. Layer l+1 reads layer l's parts by key
(:class:`~workers.jobs.objects.Part`), each shard its own rows.

A job's shards write their parts into the job's own work store (``LayerOutputs.parts``), each under its artifact
key (the sha256 of its bytes, computed as they are written), and the job adopts them into the artifact store only
when it succeeds: what a failed or cancelled job wrote goes with its work store, and nothing in the shared,
content-addressed store (where other jobs' identical bytes may live under the same key) is ever deleted for it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from solver import StackModel, project_down
from solver.operators.pooling import pool3d

from ..jobs.artifacts import open_artifact_store
from ..jobs.objects import ObjectStore, Part, rows_of_parts, write_array


@dataclass(frozen=True)
class Reconstruction:
    """How the top layer's shards reconstruct their images: the model of every layer, and for each layer below
    the top its switches (parts over every image; None where it does not pool) and one image's map shape."""

    model: StackModel
    switches: Sequence[Sequence[Part] | None]
    map_shapes: Sequence[tuple[int, int, int]]


@dataclass(frozen=True)
class LayerOutputs:
    """What the shards of a layer write when it is learned.

    Attributes
    ----------
    artifacts : str
        URL (or folder) of the artifact store: maps, switches and reconstructions go there.
    work : ObjectStore, optional
        Where the pooled maps go (``pooled-<shard>.npy``) when the layer pools and a layer above reads them.
    pool : tuple of 3 int, optional
        The layer's pooling (``pool3d`` block); None when it does not pool.
    reconstruction : Reconstruction, optional
        Given for the top layer of a job: each shard writes its images' reconstructions too.
    parts : ObjectStore, optional
        Where the maps, switches and reconstructions wait until the job succeeds (``parts/<what>-<shard>.npy``
        in the layer's work store); None: straight into the artifact store.
    """

    artifacts: str
    work: ObjectStore | None = None
    pool: tuple[int, int, int] | None = None
    reconstruction: Reconstruction | None = None
    parts: ObjectStore | None = None


@dataclass(frozen=True)
class Written:
    """One array a shard wrote: its artifact key (or work-store key), size in bytes and shape; ``stored`` is its
    key in the job's work store while it waits there (``LayerOutputs.parts``), None once in the artifact store."""

    key: str
    size: int
    shape: tuple[int, ...]
    dtype: str
    stored: str | None = None


@dataclass(frozen=True)
class ShardOutput:
    """The parts one shard wrote for images ``first .. first + count``."""

    first: int
    count: int
    maps: Written
    pooled: Written | None = None
    switches: Written | None = None
    reconstructions: Written | None = None


def write_shard_outputs(maps: np.ndarray, outputs: LayerOutputs, index: int, first: int) -> ShardOutput:
    """Write the parts of shard `index`, whose images start at `first`, from its final `maps` (N_s, K, H', W')."""
    store = open_artifact_store(outputs.artifacts) if outputs.parts is None else _Parts(outputs.parts, index)
    written = {"maps": _put(store, maps, "maps")}
    if outputs.pool is not None:
        pooled, switches = pool3d(maps, outputs.pool)
        written["switches"] = _put(store, switches, "switches")
        if outputs.work is not None:
            key = f"pooled-{index:03d}.npy"
            _, size = write_array(outputs.work.at(key), pooled)
            written["pooled"] = Written(key, size, tuple(pooled.shape), str(pooled.dtype))
        del pooled
    if outputs.reconstruction is not None:
        written["reconstructions"] = _put(
            store, reconstruct_shard(maps, outputs.reconstruction, first), "reconstructions"
        )
    return ShardOutput(first, int(maps.shape[0]), **written)


def reconstruct_shard(maps: np.ndarray, recon: Reconstruction, first: int) -> np.ndarray:
    """(N_s, C, H, W) float32: the top layer's `maps` of images ``first ..`` projected down to pixels, unpooled at
    the switches of the layers below (read for these images only)."""
    n = int(maps.shape[0])
    switches = [None if parts is None else rows_of_parts(parts, first, first + n) for parts in recon.switches]
    shapes = [(n, *shape) for shape in recon.map_shapes]
    top = len(recon.model.layers)
    return np.asarray(project_down(recon.model, maps, top, switches=switches, map_shapes=shapes), dtype=np.float32)


def _put(store, array: np.ndarray, what: str) -> Written:
    shape, dtype = tuple(int(d) for d in array.shape), str(array.dtype)
    if isinstance(store, _Parts):
        stored = f"parts/{what}-{store.index:03d}.npy"
        digest, size = write_array(store.folder.at(stored), array)  # hashed as written: the artifact key
        return Written(f"{digest}.npy", size, shape, dtype, stored)
    key, size = store.put_array(array)
    return Written(key, size, shape, dtype)


@dataclass(frozen=True)
class _Parts:
    """Shard `index`'s parts in a job's work store (``LayerOutputs.parts``)."""

    folder: ObjectStore
    index: int
