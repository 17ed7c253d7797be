"""Service settings: defaults, overridden by ``DECONV_*`` environment variables, validated once at start-up.

Each setting is declared once, as a field of :class:`Settings`; its variable is ``DECONV_`` and the field's name
in capitals unless the field names another (``validation_alias``). ``python -m api.settings`` prints the table
of variables that README.md carries (a test keeps the two equal).

The settings are read when :func:`api.app.create_app` is called, never at import; routes receive them through
the :func:`api.deps.get_settings` dependency.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from workers.distributed.address import check_address
from workers.distributed.deadlines import Deadlines
from workers.distributed.placement import check_amount
from workers.jobs.datasets import UploadLimits

_PREFIX = "DECONV_"


class Settings(BaseSettings):
    """The service's settings: keyword arguments, else ``DECONV_*`` environment variables, else the defaults.

    Parameters
    ----------
    data_dir : Path
        The job store's folder (SQLite database, uploaded images, checkpoints).
    artifacts : str or None
        Where artifacts go: a folder or an fsspec URL; None: ``data_dir/artifacts``.
    work_url : str or None
        Where running jobs keep their work (checkpoints, pooled maps), written by the shard actors on any node:
        a folder or an fsspec URL (``DECONV_WORK_URL``); None: ``<artifacts URL>/jobs`` for an fsspec artifact
        store, else ``data_dir/jobs``.
    api_key : str or None
        The key every route but ``/health`` asks for in ``X-API-Key``; None: no key.
    ray_address : str or None
        The Ray cluster to join (``auto`` or a head's ``host:port``); None: ``RAY_ADDRESS``, else a private local
        cluster.
    max_upload_bytes, max_json_bytes, max_image_pixels, max_images_per_dataset, max_filters_per_layer, \
max_encode_images, max_job_maps_bytes, max_job_filter_bytes, max_queued_jobs, max_request_bytes, \
max_request_work, max_decoded_values : int
        Limits on requests; a request over one is refused with a 4xx naming the limit.
    allowed_hosts : str or None
        The names the ``Host`` header may carry, comma-separated; None: localhost and the address connected to.
    checkpoint_every : int
        Outer iterations between a running job's checkpoints; 0: none.
    run_jobs : bool
        False: accept jobs and run none (a service that only serves results).
    num_cpus : int or None
        CPUs of the private local Ray cluster; None: all.
    max_running_jobs : int
        Jobs that run at the same time, oldest first.
    actor_cpus : float
        CPUs each shard actor reserves unless its job says otherwise.
    max_actor_cpus, max_actor_gpus : float
        The most CPUs and GPUs per shard actor a job may ask (``resources``).
    actor_start_timeout, call_timeout_floor : float
        Seconds a shard actor has to start, and the least any of its calls gets (a call's deadline grows with
        its work); past them the attempt fails and is retried.

    Raises
    ------
    pydantic.ValidationError
        When a value does not validate; :meth:`from_env` names the variable instead.

    Examples
    --------
    >>> Settings(data_dir="/srv/deconv", run_jobs=False).upload_limits().max_pixels
    16777216
    """

    model_config = SettingsConfigDict(
        env_prefix=_PREFIX, env_ignore_empty=True, frozen=True, extra="forbid", populate_by_name=True
    )

    data_dir: Path = Field(Path("deconv-data"), description="the job store's folder")
    artifacts: str | None = Field(
        None, description="a folder or an fsspec URL (s3://...) for the artifacts; default: DATA_DIR/artifacts"
    )
    work_url: str | None = Field(
        None,
        description="a folder or an fsspec URL for the running jobs' work folders (checkpoints, the shards' maps, "
        "switches and pooled maps until their job succeeds; removed when a job fails or is cancelled), which the "
        "shard actors write on any node; default: ARTIFACTS/jobs for an fsspec URL, else DATA_DIR/jobs",
    )
    api_key: str | None = Field(
        None,
        min_length=1,
        description="the X-API-Key every route that holds data needs (not /health, the page, its static files, "
        "/openapi.json, /docs, /redoc); default: no key",
    )
    ray_address: str | None = Field(
        None,
        description="the Ray cluster to join: auto (this node's) or a head's host:port; default: RAY_ADDRESS, else "
        "a private local cluster",
    )
    max_upload_bytes: int = Field(256 * 2**20, ge=1024, description="bytes of one upload")
    max_json_bytes: int = Field(2**20, ge=1024, description="bytes of a JSON request")
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="pixels (H·W) of one image")
    max_images_per_dataset: int = Field(
        10_000,
        ge=1,
        validation_alias=AliasChoices("max_images_per_dataset", f"{_PREFIX}MAX_IMAGES"),
        description="images of one dataset",
    )
    max_filters_per_layer: int = Field(
        1024,
        ge=1,
        validation_alias=AliasChoices("max_filters_per_layer", f"{_PREFIX}MAX_FILTERS"),
        description="filters of one layer of a job",
    )
    max_encode_images: int = Field(64, ge=1, description="images of one encode request")
    max_job_maps_bytes: int = Field(
        4 * 2**30,
        ge=1,
        description="bytes of feature maps a job may hold, all its layers together: the shard "
        "actors hold them while learning and write them to the store, so a job over this is "
        "refused at submission instead of running the cluster out of memory or space",
    )
    max_job_filter_bytes: int = Field(
        2**30,
        ge=1,
        description="bytes of one layer's filters a job may hold, with their Fourier transforms at the size of "
        "the layer's maps (what the inference keeps per layer), so a job over this is refused at submission",
    )
    max_queued_jobs: int = Field(
        100, ge=1, description="jobs waiting to run; a submission past this is refused with a 429 and Retry-After"
    )
    max_request_bytes: int = Field(
        512 * 2**20,
        ge=2**20,
        description="bytes an encode or reconstruct request may cost, estimated before it runs: the decoded "
        "images, the maps, the filters' transforms, the method's intermediate arrays and the response",
    )
    max_request_work: int = Field(
        2 * 10**11,
        ge=10**6,
        description="work an encode or reconstruct request may cost, estimated before it runs: iterations "
        "times the FFT sizes (about the floating-point operations)",
    )
    max_decoded_values: int = Field(
        512 * 2**20,
        ge=2**20,
        description="values (pixels × channels) the images of one upload may decode to, checked from each "
        "image's header before its pixels are decoded",
    )
    allowed_hosts: str | None = Field(
        None,
        description="comma-separated names the Host header may carry ('*': any); default: localhost, the "
        "loopback addresses and the address the client connected to",
    )
    checkpoint_every: int = Field(5, ge=0, description="outer iterations between checkpoints; 0: none")
    run_jobs: bool = Field(True, description="false: accept jobs, run none")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of the private local Ray cluster; default: all")
    max_running_jobs: int = Field(
        2,
        ge=1,
        le=64,
        description="jobs that run at the same time, oldest first; each starts once its shard actors' "
        "resources are all reserved on the cluster",
    )
    actor_cpus: float = Field(
        1.0, ge=0, le=1024, description="CPUs each shard actor reserves unless its job asks other (resources.cpus)"
    )
    max_actor_cpus: float = Field(16.0, ge=0, le=1024, description="the most CPUs per shard actor a job may ask")
    max_actor_gpus: float = Field(1.0, ge=0, le=64, description="the most GPUs per shard actor a job may ask")
    actor_start_timeout: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="seconds a shard actor has to start (its process, runtime environment and resources); past "
        "them the job's attempt fails and is retried",
    )
    call_timeout_floor: float = Field(
        60.0,
        gt=0,
        le=86400,
        description="the least seconds a shard actor's call gets: each call's deadline is this plus its work "
        "(iterations × FFT sizes × images) at a conservative throughput; past it the attempt fails and is retried",
    )

    @field_validator("ray_address")
    @classmethod
    def _ray_address(cls, value: str | None) -> str | None:
        return None if value is None else check_address(value, "the Ray address")

    @field_validator("actor_cpus", "max_actor_cpus", "max_actor_gpus")
    @classmethod
    def _ray_amount(cls, value: float) -> float:
        return check_amount(value)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Where settings come from, first wins: the arguments, then the environment.

        No ``.env`` file or secrets folder is read: what configures the service is what its operator set.

        Parameters
        ----------
        settings_cls : type
        init_settings, env_settings, dotenv_settings, file_secret_settings : PydanticBaseSettingsSource
            pydantic-settings' sources.

        Returns
        -------
        tuple of PydanticBaseSettingsSource
        """
        return init_settings, env_settings

    @classmethod
    def from_env(cls, **overrides: Any) -> Settings:
        """The settings from the environment, with `overrides` on top (None values are ignored).

        Parameters
        ----------
        **overrides
            Field values, for example ``data_dir`` from a command-line option.

        Returns
        -------
        Settings

        Raises
        ------
        ValueError
            Naming the environment variable (or the override) and its value when one does not validate.
        """
        given = {k: v for k, v in overrides.items() if v is not None}
        try:
            return cls(**given)
        except ValidationError as exc:
            error = exc.errors()[0]
            name = str(error["loc"][0]) if error["loc"] else "?"
            source = name if name in given else env_name(name)
            raise ValueError(f"{source}: {error['msg']} (got {error.get('input')!r})") from None

    def deadlines(self) -> Deadlines:
        """The shard actors' start-up and call deadlines that these settings give.

        Returns
        -------
        workers.distributed.deadlines.Deadlines
        """
        return Deadlines(startup=self.actor_start_timeout, floor=self.call_timeout_floor)

    def upload_limits(self) -> UploadLimits:
        """The limits on one upload that these settings give.

        Returns
        -------
        workers.jobs.datasets.UploadLimits
        """
        return UploadLimits(
            max_pixels=self.max_image_pixels,
            max_images=self.max_images_per_dataset,
            max_bytes=self.max_upload_bytes,
            max_values=self.max_decoded_values,
            names=tuple(
                (limit, env_name(field))
                for limit, field in (
                    ("max_pixels", "max_image_pixels"),
                    ("max_images", "max_images_per_dataset"),
                    ("max_bytes", "max_upload_bytes"),
                    ("max_values", "max_decoded_values"),
                )
            ),
        )


def env_name(field: str) -> str:
    """The environment variable of the setting `field`.

    Parameters
    ----------
    field : str
        A field of :class:`Settings`.

    Returns
    -------
    str

    Examples
    --------
    >>> env_name("max_upload_bytes"), env_name("max_images_per_dataset")
    ('DECONV_MAX_UPLOAD_BYTES', 'DECONV_MAX_IMAGES')
    """
    alias = Settings.model_fields[field].validation_alias
    if isinstance(alias, AliasChoices):
        return next(str(choice) for choice in alias.choices if str(choice).startswith(_PREFIX))
    return f"{_PREFIX}{field.upper()}"


def settings_table() -> str:
    """The Markdown table of every setting: variable, default, meaning (README.md carries it).

    Returns
    -------
    str
        One row per field of :class:`Settings`, in declaration order.
    """
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        rows.append(f"| `{env_name(name)}` | {_shown(name, field.default)} | {field.description} |")
    return "\n".join(rows)


def _shown(name: str, default: Any) -> str:
    if default is None:
        return "—"
    if isinstance(default, bool):
        return f"`{str(default).lower()}`"
    if name.endswith("_bytes") and default % 2**20 == 0:
        return f"{default // 2**30} GiB" if default % 2**30 == 0 else f"{default // 2**20} MiB"
    return f"`{default}`"


if __name__ == "__main__":
    sys.stdout.write(settings_table() + "\n")
