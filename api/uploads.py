"""Reading the files a request uploads: images for a dataset or an encode, arrays for a reconstruction.

The checks themselves are :mod:`workers.jobs.datasets`' (the runner reads the same files back); here their
:class:`~workers.jobs.datasets.UploadError` becomes a 422 naming the form field (``files``, ``maps``, ``filters``,
``switches``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from fastapi import UploadFile

from workers.jobs.datasets import (
    ZIP_MAGIC,
    DecodedImage,
    UploadError,
    UploadTooLarge,
    decode_upload,
    read_npy,
    unpack_archive,
)

from .errors import field_error
from .settings import Settings, env_name


def read_uploads(
    files: list[UploadFile], field: str, settings: Settings, max_values: int | None = None
) -> list[DecodedImage]:
    """Decode uploaded images (PNG, JPEG, TIFF, NPY, or one zip or npz of them) within the settings' limits.

    Parameters
    ----------
    files : list of fastapi.UploadFile
    field : str
        The form field, for errors.
    settings : Settings
        ``max_image_pixels``, ``max_images_per_dataset``, ``max_upload_bytes`` and ``max_decoded_values`` bound
        the upload.
    max_values : int, optional
        A tighter bound on the values decoded (what the request can afford to compute on).

    Returns
    -------
    list of workers.jobs.datasets.DecodedImage
        One (C, H, W) array per image, in upload order.
    """
    parts = [(upload.filename or "", upload.file.read()) for upload in files]
    limits = settings.upload_limits()
    if max_values is not None:
        limits = replace(limits, max_values=min(limits.max_values, max_values))
    try:
        return decode_upload(parts, limits)
    except UploadError as exc:
        raise _upload_error(field, exc) from None


def _upload_error(field: str, exc: UploadError) -> Exception:
    return field_error(["body", field], str(exc), status=413 if isinstance(exc, UploadTooLarge) else 422)


def _member_bytes(settings: Settings) -> int:
    """Most bytes one array of an npz may unpack to: each of its values costs the computation at least 8 bytes
    (api.costs), so a larger one could not pass the request's estimate."""
    return settings.max_request_bytes // 8 + 2**16


def read_array(upload: UploadFile, field: str, settings: Settings) -> np.ndarray:
    """The one array of an uploaded npy (or npz of one array), as float32 unless it was float64.

    Parameters
    ----------
    upload : fastapi.UploadFile
    field : str
        The form field, for errors.
    settings : Settings
        ``max_upload_bytes`` bounds what an npz unpacks to, ``max_image_pixels`` the last two axes.

    Returns
    -------
    ndarray
        Any shape, finite, float32 or float64.
    """
    data = upload.file.read()
    try:
        if data.startswith(ZIP_MAGIC):
            members = list(
                unpack_archive(
                    field,
                    data,
                    max_members=1,
                    max_bytes=settings.max_upload_bytes,
                    member_bytes=lambda: _member_bytes(settings),
                )
            )
            if len(members) != 1:
                raise UploadError(f"{field}: an npz must hold exactly one array, got {[n for n, _ in members]}")
            data = members[0][1]
        array = read_npy(field, data, max_pixels=settings.max_image_pixels, pixels_name=env_name("max_image_pixels"))
    except UploadError as exc:
        raise _upload_error(field, exc) from None
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32, copy=False)


def read_members(upload: UploadFile, field: str, settings: Settings, max_members: int = 64) -> dict[str, np.ndarray]:
    """The arrays of an uploaded npz, each checked like :func:`read_array`'s and kept in its dtype.

    Parameters
    ----------
    upload : fastapi.UploadFile
    field : str
        The form field, for errors.
    settings : Settings
        ``max_upload_bytes`` bounds what the members unpack to together.
    max_members : int, default 64

    Returns
    -------
    dict of str to ndarray
        By member name, without the ``.npy`` suffix.
    """
    data = upload.file.read()
    try:
        return {
            name.removesuffix(".npy"): read_npy(
                f"{field}:{name}", body, max_pixels=settings.max_image_pixels, pixels_name=env_name("max_image_pixels")
            )
            for name, body in unpack_archive(
                field,
                data,
                max_members=max_members,
                max_bytes=settings.max_upload_bytes,
                member_bytes=lambda: _member_bytes(settings),
            )
        }
    except UploadError as exc:
        raise _upload_error(field, exc) from None
