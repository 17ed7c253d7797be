"""Service settings: defaults, overridden by ``DECONV_*`` environment variables, validated once at start-up.

=============================  ==========================  =================================================
setting                        environment variable        default
=============================  ==========================  =================================================
data_dir                       ``DECONV_DATA_DIR``         ``./deconv-data``
artifacts                      ``DECONV_ARTIFACTS``        ``DATA_DIR/artifacts`` (or an fsspec URL, s3://...)
api_key                        ``DECONV_API_KEY``          none: no key needed
ray_address                    ``DECONV_RAY_ADDRESS``      ``RAY_ADDRESS``, else a private local cluster
max_upload_bytes               ``DECONV_MAX_UPLOAD_BYTES`` 256 MiB
max_json_bytes                 ``DECONV_MAX_JSON_BYTES``   1 MiB
max_image_pixels               ``DECONV_MAX_IMAGE_PIXELS`` 4096·4096
max_images_per_dataset         ``DECONV_MAX_IMAGES``       10000
max_filters_per_layer          ``DECONV_MAX_FILTERS``      1024
max_encode_images              ``DECONV_MAX_ENCODE_IMAGES`` 64
max_job_maps_bytes             ``DECONV_MAX_JOB_MAPS_BYTES`` 4 GiB: the feature maps of a job's layers together
checkpoint_every               ``DECONV_CHECKPOINT_EVERY`` 5
run_jobs                       ``DECONV_RUN_JOBS``         true (false: accept jobs, run none)
=============================  ==========================  =================================================
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from workers.jobs.datasets import UploadLimits

_ENV = {
    "data_dir": "DECONV_DATA_DIR",
    "artifacts": "DECONV_ARTIFACTS",
    "api_key": "DECONV_API_KEY",
    "ray_address": "DECONV_RAY_ADDRESS",
    "max_upload_bytes": "DECONV_MAX_UPLOAD_BYTES",
    "max_json_bytes": "DECONV_MAX_JSON_BYTES",
    "max_image_pixels": "DECONV_MAX_IMAGE_PIXELS",
    "max_images_per_dataset": "DECONV_MAX_IMAGES",
    "max_filters_per_layer": "DECONV_MAX_FILTERS",
    "max_encode_images": "DECONV_MAX_ENCODE_IMAGES",
    "max_job_maps_bytes": "DECONV_MAX_JOB_MAPS_BYTES",
    "checkpoint_every": "DECONV_CHECKPOINT_EVERY",
    "run_jobs": "DECONV_RUN_JOBS",
}


class Settings(BaseModel):
    """See the module docstring."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    data_dir: Path = Path("deconv-data")
    artifacts: str | None = None
    api_key: str | None = Field(None, min_length=1)
    ray_address: str | None = None
    max_upload_bytes: int = Field(256 * 2**20, ge=1024)
    max_json_bytes: int = Field(2**20, ge=1024)
    max_image_pixels: int = Field(4096 * 4096, ge=1)
    max_images_per_dataset: int = Field(10_000, ge=1)
    max_filters_per_layer: int = Field(1024, ge=1)
    max_encode_images: int = Field(64, ge=1)
    max_job_maps_bytes: int = Field(
        4 * 2**30, ge=1, description="bytes of feature maps a job may hold, all its layers together: the shard "
        "actors hold them while learning and the runner gathers them for the artifacts, so a job over this is "
        "refused at submission instead of running out of memory")
    checkpoint_every: int = Field(5, ge=0)
    run_jobs: bool = True
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the private local Ray cluster (default: all)")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides) -> Settings:
        """Defaults, then the environment, then `overrides` (None values are ignored).

        Raises
        ------
        ValueError
            Naming the environment variable and its value when one does not validate.
        """
        environ = os.environ if environ is None else environ
        values = {name: environ[var] for name, var in _ENV.items() if environ.get(var, "") != ""}
        values.update({k: v for k, v in overrides.items() if v is not None})
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else "?"
            source = _ENV.get(name, name) if name not in overrides else name
            raise ValueError(f"{source}: {error['msg']} (got {error.get('input')!r})") from None

    def upload_limits(self) -> UploadLimits:
        return UploadLimits(max_pixels=self.max_image_pixels, max_images=self.max_images_per_dataset,
                            max_bytes=self.max_upload_bytes)
