"""How a job learns: the ``learning`` section of a job spec or job file (:class:`JobLearning`).

``mode: batch`` (the default) is alternating minimisation over every image; ``mode: online`` streams the dataset
in batches through coding actors (:mod:`workers.distributed.online`), with its batch size, length (passes or
images), forgetting, held-out sample and checkpoint interval. The checks that need the rest of the spec and the
dataset are :func:`workers.jobs.spec.check_online`.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from solver.config import OnlineConfig

MAX_CHECKPOINT_EVERY = 10_000
MAX_BATCH_SIZE = 4096
"""Most images per batch of an online job (each coding actor holds its part of one batch, and the next)."""
MAX_EPOCHS = 10_000
MAX_STREAM_IMAGES = 10**10
"""Most images an online job reads (``n_images``, or ``n_epochs`` × the training images)."""
MAX_HELD_OUT = 64

_ONLINE_FIELDS = ("batch_size", "n_epochs", "n_images", "forget", "forget_factor", "held_out", "checkpoint_every")


class JobLearning(BaseModel):
    """How a job learns: ``batch`` (alternating over every image, ``n_iter`` outer iterations: the default) or
    ``online`` (mini-batches streamed from the store, statistics with forgetting; one layer, see
    :mod:`workers.distributed.online`). The other fields are for ``online`` only.

    Attributes
    ----------
    mode : {"batch", "online"}
    batch_size : int
        Images per batch (default 16), at most the dataset's training images.
    n_epochs, n_images : int
        Passes over the training images, or images to read in all (one of the two; default one pass).
    forget : float
        ρ of the forgetting schedule β_t = (1 − 1/t)^ρ (default 10).
    forget_factor : float, optional
        A fixed forgetting factor instead.
    held_out : int
        Images of the dataset kept out of training for the held-out objective curve (default 4, fewer for a
        small dataset: at most a quarter of it); 0 for none.
    checkpoint_every : int
        Batches between checkpoints (default 20).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    mode: Literal["batch", "online"] = "batch"
    batch_size: int | None = Field(None, ge=1, le=MAX_BATCH_SIZE, description="online: images per batch (16)")
    n_epochs: int | None = Field(None, ge=1, le=MAX_EPOCHS, description="online: passes over the images (1)")
    n_images: int | None = Field(
        None, ge=1, le=MAX_STREAM_IMAGES, description="online: images to read in all, instead of n_epochs"
    )
    forget: float | None = Field(
        None, ge=0, le=1000, allow_inf_nan=False, description="online: ρ of β_t = (1 − 1/t)^ρ (10)"
    )
    forget_factor: float | None = Field(
        None, ge=0, le=1, allow_inf_nan=False, description="online: a fixed forgetting factor β, instead of forget"
    )
    held_out: int | None = Field(
        None, ge=0, le=MAX_HELD_OUT, description="online: images kept out for the held-out objective"
    )
    checkpoint_every: int | None = Field(
        None, ge=1, le=MAX_CHECKPOINT_EVERY, description="online: batches between checkpoints"
    )

    @field_validator(*_ONLINE_FIELDS)
    @classmethod
    def _online_only(cls, value: object, info: ValidationInfo) -> object:
        if "mode" not in info.data:  # the mode itself is wrong, and its error says so: nothing to add here
            return value
        if value is not None and info.data["mode"] != "online":
            raise ValueError(f"{info.field_name} is a setting of mode 'online'; this job's mode is 'batch'")
        if info.field_name == "n_images" and value is not None and info.data.get("n_epochs") is not None:
            raise ValueError("give n_epochs or n_images, not both")
        if info.field_name == "forget_factor" and value is not None and info.data.get("forget") is not None:
            raise ValueError("give forget (the schedule's ρ) or forget_factor (a fixed β), not both")
        return value

    @property
    def online(self) -> bool:
        return self.mode == "online"

    def held_out_count(self, n_images: int) -> int:
        """Images held out of a dataset of `n_images`."""
        return self.held_out if self.held_out is not None else min(4, n_images // 4)

    def online_config(self, held_out_every: int = 1, held_out_iter: int = 100) -> OnlineConfig:
        """The solver's online settings (defaults filled in)."""
        return OnlineConfig(
            held_out_every=held_out_every,
            batch_size=self.batch_size or 16,
            forget=10.0 if self.forget is None else self.forget,
            forget_factor=self.forget_factor,
            n_epochs=self.n_epochs or 1,
            held_out_iter=held_out_iter,
        )

    def total_images(self, n_train: int) -> int:
        """Images read over the job, for a dataset of `n_train` training images."""
        return self.n_images if self.n_images is not None else (self.n_epochs or 1) * n_train
