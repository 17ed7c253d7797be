"""Checkpoints, resume and failure counting of a :class:`~workers.distributed.coordinator.Coordinator`: when to
checkpoint, the run's identity in the manifest, where a run starts (fresh or resumed) and where a failure rolls back to.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from solver.images.preprocess import PreprocessStats

from .checkpoint import Checkpoint, begin_checkpoint, clear_checkpoints, latest_checkpoint, write_checkpoint

logger = logging.getLogger("workers.distributed.coordinator")


class JobFailedError(Exception):
    """The shard actors failed more often than the run allows (``max_failures``)."""


class Rollback:
    """The checkpoint half of :class:`~workers.distributed.coordinator.Coordinator` (a mixin: the state lives
    there)."""

    def _due(self, iteration: int) -> bool:
        return self.checkpoint_dir is not None and self.checkpoint_every > 0 and iteration % self.checkpoint_every == 0

    def _checkpoint(self, iteration: int) -> None:
        if self._pending is None or self._pending[0] != iteration:
            raise ValueError(f"no filters recorded for outer iteration {iteration}")
        _, filters, vector = self._pending
        folder = begin_checkpoint(self.checkpoint_dir, iteration)
        parts = self._pool.save_states(folder)  # each shard writes its own part: no maps pass through here
        write_checkpoint(self.checkpoint_dir, iteration, filters, vector, parts, self._history, self._meta())
        self._last_checkpoint = iteration

    def _meta(self) -> dict[str, Any]:
        """The identity of the run, in the manifest: a checkpoint resumes only the same run (n_iter aside)."""
        meta = {
            "config": self.config.model_dump(mode="json", exclude={"n_iter"}),
            "images": self.paths,
            "n_shards": self.n_shards,
            "rescale": None if self._rescale is None else self._rescale.to_dict(),
        }
        return json.loads(json.dumps(meta))

    def _initial_checkpoint(self, resume: bool) -> Checkpoint | None:
        if self.checkpoint_dir is None:
            if resume:
                raise ValueError("resume needs a checkpoint_dir, got None")
            return None
        if not resume:
            removed = clear_checkpoints(self.checkpoint_dir)
            if removed:
                logger.info("fresh run: removed %d old checkpoint(s) from %s", removed, self.checkpoint_dir.url)
            return None
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        if checkpoint is None:
            logger.warning("no valid checkpoint in %s: starting from scratch", self.checkpoint_dir.url)
            return None
        self._check_same_run(checkpoint)
        logger.info("resuming from %s (outer iteration %d)", checkpoint.path, checkpoint.iteration)
        return checkpoint

    def _check_same_run(self, checkpoint: Checkpoint) -> None:
        expected, found = self._meta(), checkpoint.meta
        for key in ("config", "images", "n_shards"):
            if found.get(key) != expected[key]:
                raise ValueError(
                    f"checkpoint {checkpoint.path!r} belongs to another run: its {key} differs "
                    f"(checkpoint: {found.get(key)!r}, this run: {expected[key]!r})"
                )
        if found.get("rescale") is not None:
            self._rescale = PreprocessStats.from_dict(found["rescale"])

    def _rollback_point(self) -> Checkpoint | None:
        if self.checkpoint_dir is None:
            return None
        checkpoint = latest_checkpoint(self.checkpoint_dir)
        if checkpoint is not None:
            self._check_same_run(checkpoint)
        logger.warning(
            "rolling every shard back to %s",
            "the start" if checkpoint is None else f"outer iteration {checkpoint.iteration}",
        )
        return checkpoint

    def _count_failure(self, exc: BaseException) -> None:
        self.failures += 1
        reason = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        if self.failures > self.max_failures:
            raise JobFailedError(
                f"shard actors failed {self.failures} times, more than max_failures="
                f"{self.max_failures}; last failure: {reason}"
            ) from exc
        logger.warning("shard failure %d (max_failures=%d): %s", self.failures, self.max_failures, reason)
