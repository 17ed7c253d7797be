"""Encoding a stored collection block by block on a pool of coding actors (Ray Data ``map_batches``).

The images of a dataset are cut into blocks of a bounded number of images (:func:`blocks_of`). Each block is one
row of a Ray Data dataset: its index, its first image and its images' artifact keys, a few hundred bytes. A pool
of :class:`BlockEncoder` actors (``ActorPoolStrategy``, one per worker, in the job's reserved bundles) maps the
rows: an actor reads the block's images from the artifact store by key, encodes them through the model's layers
(:func:`solver.encode_layers`, as ``POST /models/{id}/encode`` does) and writes each layer's maps, and the
switches of the layers that pool, to the artifact store itself. Only the parts' keys come back to the driver, as
the rows of the mapped dataset (:class:`BlockResult`), which :func:`encode_blocks` yields as they finish.

Memory: the driver holds keys only; an actor holds one block being encoded (the pool sends an actor one block at
a time, ``max_tasks_in_flight_per_actor=1``), so a node's memory is set by the block size, which the service
bounds with its cost model. Stopping the iteration (a cancel) shuts the pool down; blocks already encoded stay in
the store.

An error while encoding a block comes back as the block's ``error`` (the exception's type and message) rather than
as Ray Data's wrapped exception, so the job's error names the block and the cause.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver import StackModel, encode_layers

from ..jobs.artifacts import open_artifact_store
from ..jobs.objects import read_array
from .outputs import Written

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Block:
    """Images ``first .. first + len(keys)`` of a dataset, by artifact key."""

    index: int
    first: int
    keys: tuple[str, ...]

    @property
    def count(self) -> int:
        return len(self.keys)


@dataclass(frozen=True)
class BlockResult:
    """What an actor wrote for one block: per encoded layer its maps, and its switches where it pools."""

    index: int
    first: int
    count: int
    maps: tuple[Written, ...]
    switches: tuple[Written | None, ...]


class BlockError(RuntimeError):
    """Encoding a block failed; the message names the block, its images and the cause."""


def blocks_of(keys: Sequence[str], block_size: int) -> list[Block]:
    """The dataset's image keys cut into blocks of `block_size` images (the last one may be smaller)."""
    if block_size < 1:
        raise ValueError(f"block_size must be positive, got {block_size}")
    return [
        Block(index, first, tuple(keys[first : first + block_size]))
        for index, first in enumerate(range(0, len(keys), block_size))
    ]


class BlockEncoder:
    """The body of a coding actor: encodes one block of images per call and writes its maps to the store.

    Parameters
    ----------
    artifacts : str
        URL or folder of the artifact store (:func:`~workers.jobs.artifacts.open_artifact_store`).
    model : StackModel
    layer : int
        The top layer to encode (1-based); the maps of every layer up to it are written.
    method : str or inference config
        As :func:`solver.encode_layers` takes it.
    max_iter : int, optional
        Iterations per layer (with a method name).
    backend : {"numpy", "cupy", "auto"}
    """

    def __init__(
        self,
        artifacts: str,
        model: StackModel,
        layer: int,
        method: Any,
        max_iter: int | None = None,
        backend: str = "numpy",
    ):
        self._store = open_artifact_store(artifacts)
        self._model = model
        self._layer = layer
        self._method = method
        self._max_iter = max_iter
        self._backend = backend

    def encode(self, block: Block) -> BlockResult:
        """Encode `block`'s images and write their maps; raises what reading or encoding raises."""
        images = np.stack([read_array(self._store.location(key)) for key in block.keys])
        code = encode_layers(
            self._model, images, layer=self._layer, method=self._method, max_iter=self._max_iter, backend=self._backend
        )
        del images
        maps, switches = [], []
        for number, (layer_maps, layer_switches) in enumerate(zip(code.maps, code.switches, strict=True), start=1):
            out = np.asarray(layer_maps, dtype=np.float32)  # as POST /models/{id}/encode answers them
            if not np.isfinite(out).all():
                raise ValueError(
                    f"the maps of layer {number} overflow float32 (inf or NaN): the images' values are too large "
                    "to encode; scale them down"
                )
            maps.append(self._put(out))
            switches.append(None if layer_switches is None else self._put(np.asarray(layer_switches)))
        return BlockResult(block.index, block.first, block.count, tuple(maps), tuple(switches))

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        """Ray Data's call: a batch of block rows in, one result row per block out (``result`` or ``error``)."""
        results, errors = [], []
        for index, first, keys in zip(batch["index"], batch["first"], batch["keys"], strict=True):
            block = Block(int(index), int(first), tuple(str(k) for k in keys))
            try:
                results.append(result_json(self.encode(block)))
                errors.append("")
            except Exception as exc:  # reported per block, named, instead of Ray Data's wrapped traceback
                logger.exception("block %d failed", block.index)
                results.append("")
                errors.append(f"{type(exc).__name__}: {exc}")
        return {"index": batch["index"], "result": results, "error": errors}

    def _put(self, array: np.ndarray) -> Written:
        key, size = self._store.put_array(array)
        return Written(key, size, tuple(int(d) for d in array.shape), str(array.dtype))


def result_json(result: BlockResult) -> str:
    """A result as one JSON string (a Ray Data column of nested records would need a schema)."""

    def written(w: Written | None) -> dict | None:
        return None if w is None else {"key": w.key, "size": w.size, "shape": list(w.shape), "dtype": w.dtype}

    return json.dumps(
        {
            "index": result.index,
            "first": result.first,
            "count": result.count,
            "maps": [written(w) for w in result.maps],
            "switches": [written(w) for w in result.switches],
        }
    )


def result_of_row(text: str) -> BlockResult:
    """The :class:`BlockResult` that :func:`result_json` wrote."""
    data = json.loads(text)

    def written(entry: dict | None) -> Written | None:
        return None if entry is None else Written(entry["key"], entry["size"], tuple(entry["shape"]), entry["dtype"])

    return BlockResult(
        data["index"],
        data["first"],
        data["count"],
        tuple(written(w) for w in data["maps"]),
        tuple(written(w) for w in data["switches"]),
    )


def encode_blocks(
    blocks: Sequence[Block],
    encoder: dict[str, Any],
    *,
    actors: int,
    actor_options: dict[str, Any],
    should_stop: Callable[[], bool] = lambda: False,
) -> Iterator[BlockResult]:
    """Encode `blocks` on a pool of `actors` :class:`BlockEncoder` actors; yield each block's result as it finishes
    (in no fixed order). The caller stops the run by closing the generator (the pool is shut down).

    Parameters
    ----------
    blocks : sequence of Block
    encoder : dict
        The keyword arguments of :class:`BlockEncoder`.
    actors : int
        The pool's size.
    actor_options : dict
        ``num_cpus``, ``num_gpus``, ``resources`` and ``scheduling_strategy`` of every actor.
    should_stop : callable
        Looked at before each block's result is handed on; True ends the run there.

    Raises
    ------
    BlockError
        When a block could not be encoded (the first such block in the order the results come).
    """
    import ray.data  # noqa: PLC0415  (Ray loads only for a job)

    if not blocks:
        return
    rows = [{"index": b.index, "first": b.first, "keys": list(b.keys)} for b in blocks]
    options = dict(actor_options)
    named = {name: options.pop(name) for name in ("num_cpus", "num_gpus", "resources") if name in options}
    dataset = ray.data.from_items(rows, override_num_blocks=len(rows))
    mapped = dataset.map_batches(
        BlockEncoder,
        fn_constructor_kwargs=encoder,
        batch_size=1,
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=actors, max_tasks_in_flight_per_actor=1),
        **named,
        **options,  # the placement group's scheduling strategy
    )
    by_index = {b.index: b for b in blocks}
    iterator = mapped.iter_rows()
    try:
        for row in iterator:
            if row["error"]:
                block = by_index[int(row["index"])]
                raise BlockError(
                    f"block {block.index} (images {block.first}..{block.first + block.count - 1}): {row['error']}"
                )
            yield result_of_row(row["result"])
            if should_stop():
                return
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:
            close()  # ends the streaming executor and its actor pool now, not when garbage collected
