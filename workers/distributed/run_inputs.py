"""Checks and descriptions of a :class:`~workers.distributed.coordinator.Coordinator`'s inputs: the images (files
or parts) and how a shard's rows are named, the switches of lower layers, the dtype and the run's options.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from solver.config import LearnConfig

from ..jobs.objects import Part, array_header, as_location
from .actors import PartRows, ShardInput
from .images import ImageInfo, ImageSource, inspect_images


def _describe_images(
    images: Sequence[ImageSource] | Sequence[Part], info: ImageInfo | None
) -> tuple[int, list[str], ImageInfo, Callable[[range], ShardInput]]:
    """(image count, their names for a checkpoint's identity, what they share, a shard's input by its range)."""
    if not images:
        raise ValueError("image_paths must name at least one image file, got none")
    if all(isinstance(p, Part) for p in images):
        parts = tuple(sorted(images, key=lambda p: p.first))
        if info is None:
            shape, dtype = array_header(parts[0].location)
            info = ImageInfo(tuple(int(d) for d in shape[1:]), str(dtype))
        n = sum(p.count for p in parts)
        names = [f"{p.location}[{p.first}:{p.stop}]" for p in parts]
        return n, names, info, lambda r: PartRows(parts, r.start, r.stop)
    sources = [as_location(p) for p in images]
    info = inspect_images(sources) if info is None else info
    return len(sources), [str(s) for s in sources], info, lambda r: sources[r.start : r.stop]


def _count(files: Sequence[Any]) -> int:
    return sum(p.count for p in files) if files and isinstance(files[0], Part) else len(files)


def _rows_of(files: Sequence[Any] | None, r: range) -> ShardInput | None:
    if files is None:
        return None
    if files and isinstance(files[0], Part):
        return PartRows(tuple(files), r.start, r.stop)
    return [as_location(files[i]) for i in r]


def _computation_dtype(image_dtype: str, config: LearnConfig) -> str:
    """The dtype learn_layer computes in: config.dtype, else float64 images stay float64, everything else float32."""
    if config.dtype is not None:
        return config.dtype
    return "float64" if image_dtype == "float64" else "float32"


def _check_options(
    workers: Any,
    checkpoint_dir: Any,
    checkpoint_every: Any,
    max_failures: Any,
    call_timeout: Any,
    backend: Any,
    actor_cpus: Any,
) -> None:
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be a positive integer, got {workers!r}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, int) or checkpoint_every < 0:
        raise ValueError(f"checkpoint_every must be a non-negative integer, got {checkpoint_every!r}")
    if checkpoint_every > 0 and checkpoint_dir is None:
        raise ValueError(f"checkpoint_every={checkpoint_every} needs a checkpoint_dir, got None")
    if isinstance(max_failures, bool) or not isinstance(max_failures, int) or max_failures < 0:
        raise ValueError(f"max_failures must be a non-negative integer, got {max_failures!r}")
    if call_timeout is not None and not (isinstance(call_timeout, int | float) and call_timeout > 0):
        raise ValueError(f"call_timeout must be a positive number of seconds or None, got {call_timeout!r}")
    if backend not in ("auto", "numpy", "cupy"):
        raise ValueError(f"backend must be 'auto', 'numpy' or 'cupy', got {backend!r}")
    if not (isinstance(actor_cpus, int | float) and actor_cpus >= 0):
        raise ValueError(f"actor_cpus must be a non-negative number, got {actor_cpus!r}")
