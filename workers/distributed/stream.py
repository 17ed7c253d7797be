"""The order in which online learning reads a collection of images: batches of a seeded permutation per epoch.

Batch ``b`` of epoch ``e`` is images ``[b·B, (b+1)·B)`` of ``permutation_e`` (a permutation of the training
images drawn from ``(seed, e)``); the last batch of an epoch may be smaller, and with ``n_images`` the stream ends
once that many images were read (the last batch cut to reach it exactly). The plan depends on neither the worker
count nor the run's history, so a run resumed at step ``t`` reads what an uninterrupted one would, and each batch
is split into the same parts whatever the number of workers (:func:`split`).

Ray-free: the distributed driver (:mod:`workers.distributed.online`) and the job spec's checks use it.
"""

from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass

import numpy as np


@dataclass(frozen=True)
class StreamPlan:
    """Which images each step of online learning reads.

    Attributes
    ----------
    n_train : int
        Training images (indices ``0 .. n_train − 1`` of the training list).
    batch_size : int
    n_epochs : int or None
        Passes over the training images (when `n_images` is None).
    n_images : int or None
        Images to read in all (passes as needed); wins over `n_epochs`.
    seed : int
        Seeds the permutation of every epoch.
    """

    n_train: int
    batch_size: int
    n_epochs: int | None = 1
    n_images: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("n_train", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.n_images is None and (self.n_epochs is None or self.n_epochs < 1):
            raise ValueError(f"n_epochs must be a positive integer when n_images is not given, got {self.n_epochs!r}")
        if self.n_images is not None and self.n_images < 1:
            raise ValueError(f"n_images must be a positive integer, got {self.n_images!r}")

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(self.n_train / self.batch_size)

    @property
    def total_images(self) -> int:
        """Images read over the whole stream (repeats counted)."""
        return self.n_images if self.n_images is not None else self.n_epochs * self.n_train

    @property
    def n_steps(self) -> int:
        full, rest = divmod(self.total_images, self.n_train)
        return full * self.steps_per_epoch + math.ceil(rest / self.batch_size)

    def position(self, step: int) -> tuple[int, int]:
        """(epoch, batch index in the epoch) of `step` (0-based)."""
        return divmod(step, self.steps_per_epoch)

    def images_before(self, step: int) -> int:
        """Images read by steps ``0 .. step − 1``."""
        epoch, batch = self.position(step)
        return min(epoch * self.n_train + batch * self.batch_size, self.total_images)

    def batch(self, step: int) -> np.ndarray:
        """The training indices read at `step` (0-based), in the order they are coded."""
        if not 0 <= step < self.n_steps:
            raise ValueError(f"step must lie in [0, {self.n_steps}), got {step}")
        epoch, index = self.position(step)
        order = _permutation(self.n_train, self.seed, epoch)
        chosen = order[index * self.batch_size : (index + 1) * self.batch_size]
        return chosen[: self.total_images - self.images_before(step)]

    def to_dict(self) -> dict:
        return asdict(self)


@functools.lru_cache(maxsize=4)
def _permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def split(indices: np.ndarray, n_parts: int) -> list[np.ndarray]:
    """`indices` cut into at most `n_parts` contiguous, non-empty parts of nearly equal sizes, in order."""
    n_parts = max(1, min(int(n_parts), len(indices)))
    return [part for part in np.array_split(np.asarray(indices), n_parts) if len(part)]


def held_out_split(n_images: int, n_held: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training indices, held-out indices) of a dataset of `n_images`: the held-out images are `n_held` images
    drawn once from `seed` (the same for every run of a job), the others train, both in dataset order."""
    if not 0 <= n_held < n_images:
        raise ValueError(f"held-out images must number in [0, {n_images}), got {n_held}")
    rng = np.random.default_rng([seed, 2**31 - 1])  # a stream of its own: not an epoch's permutation
    held = np.sort(rng.choice(n_images, size=n_held, replace=False)) if n_held else np.zeros(0, dtype=np.int64)
    train = np.setdiff1d(np.arange(n_images), held)
    return train, held
