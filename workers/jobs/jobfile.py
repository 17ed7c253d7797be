"""A learning job described in a YAML file: the fields of :class:`solver.config.LearnConfig`, plus ``images``.

::

    images: pictures            # a folder of PNG/JPEG/NPY files; relative to the YAML file's folder
    workers: 2                  # optional: shard actors (the command line's --workers wins)
    layers:
      - {n_filters: 16, filter_size: 7, lam: 1.0}
    n_iter: 40
    preprocess: {grey: true, contrast_normalise: true}

A job file may leave ``images`` out when the command line gives the images (``deconv learn quick --images
a.png b.png``): a bundled preset (:mod:`configs`) is a job file without images, found by its name.

Like a job sent to the service, a job file preprocesses its images by default (mean removal and a dataset-wide
rescale, :class:`~solver.images.preprocess.PreprocessConfig`'s defaults; ``preprocess: null`` turns that off), unlike
:func:`solver.learn`, which takes images as given. Unknown fields are refused, like everywhere in the configs;
:func:`describe_validation_error` turns pydantic's errors into one line that names the field and the value.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml
from pydantic import Field, ValidationError

from configs import find_preset
from solver.config import LearnConfig
from solver.images.preprocess import PreprocessConfig

from ..distributed.images import image_paths, list_images
from .objects import Location, is_url
from .spec import JobLearning


class JobFileError(ValueError):
    """A job file that cannot be read or does not validate; the message names the file and the field."""


class LearnJobFile(LearnConfig):
    """A learning job: a :class:`~solver.config.LearnConfig` and where its images are.

    Attributes
    ----------
    images : str, optional
        Folder of image files (absolute once loaded by :func:`load_job_file`), or an fsspec URL of one
        (``s3://bucket/images/``, read by each shard actor from any node); None when the command line gives the
        images.
    workers : int, optional
        Shard actors to use (coding actors in online learning).
    learning : JobLearning
        ``batch`` (default) or ``online`` learning, as in a job spec (:class:`workers.jobs.spec.JobLearning`).
    """

    images: str | None = None
    workers: int | None = Field(None, ge=1)
    preprocess: PreprocessConfig | None = Field(default_factory=PreprocessConfig)
    learning: JobLearning = Field(default_factory=JobLearning)

    def learn_config(self, *, n_iter: int | None = None) -> LearnConfig:
        """The learning config alone (without ``images``, ``workers`` and ``learning``), with `n_iter` outer
        iterations instead of the file's when given (the command line's ``--n-iter``)."""
        changes = {} if n_iter is None else {"n_iter": n_iter}
        return LearnConfig.model_validate(self.model_dump(exclude={"images", "workers", "learning"}) | changes)

    def image_paths(self, given: Sequence[str | Path] | None = None) -> list[Path] | list[Location]:
        """The image files to learn on: `given` (files or folders, the command line's ``--images``) when not
        empty, else those of the file's ``images`` folder.

        Raises
        ------
        ValueError
            When neither names images, or a file or folder is missing or holds no image.
        """
        if given:
            return image_paths(given)
        if self.images is None:
            raise JobFileError(
                "images: the config names no images; give 'images: FOLDER' in the job file or "
                "image files or folders on the command line (--images)"
            )
        return list_images(self.images)


def describe_validation_error(exc: ValidationError) -> str:
    """One line per pydantic error, joined: ``field.path: message (got value)``."""
    parts = []
    for error in exc.errors():
        field = ".".join(str(part) for part in error["loc"]) or "(top level)"
        value = error.get("input")
        got = "" if error["type"] == "missing" or isinstance(value, dict) else f" (got {value!r})"
        parts.append(f"{field}: {error['msg']}{got}")
    return "; ".join(parts)


def read_job_mapping(path: str | Path) -> dict:
    """The fields of a YAML (or JSON) job file, or of a bundled preset given by name, not yet validated.

    Raises
    ------
    JobFileError
        When the file cannot be read or does not hold a mapping (the message names the file), or for a name that
        is neither a file nor a preset (the message lists the presets).
    """
    path = _job_file_path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise JobFileError(f"{path}: cannot read the job file: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise JobFileError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None
    if not isinstance(data, dict):
        raise JobFileError(f"{path}: a job file must hold a mapping of fields, got {type(data).__name__}")
    return data


def _job_file_path(path: str | Path) -> Path:
    try:
        return find_preset(path)
    except ValueError as exc:
        raise JobFileError(str(exc)) from None


def load_job_file(path: str | Path) -> LearnJobFile:
    """Read and validate a job file (or a bundled preset, by name); ``images`` is resolved against the file's
    folder.

    Raises
    ------
    JobFileError
        When the file cannot be read, is not a YAML mapping, or does not validate (the message names the
        field and the value).
    """
    path = _job_file_path(path)
    data = read_job_mapping(path)
    try:
        job = LearnJobFile.model_validate(data)
    except ValidationError as exc:
        raise JobFileError(f"{path}: {describe_validation_error(exc)}") from None
    if job.images is None or is_url(job.images):
        return job
    images = Path(job.images).expanduser()
    images = images if images.is_absolute() else (path.resolve().parent / images)
    return job.model_copy(update={"images": str(images.resolve())})
