"""Reading the files a request uploads: images for a dataset or an encode, arrays for a reconstruction.

The checks themselves are :mod:`workers.jobs.datasets`' (the runner reads the same files back); here their
:class:`~workers.jobs.datasets.UploadError` becomes a 422 naming the form field (``files``, ``maps``, ``filters``,
``switches``).
"""

from __future__ import annotations

import numpy as np
from fastapi import UploadFile

from workers.jobs.datasets import ZIP_MAGIC, DecodedImage, UploadError, decode_upload, read_npy, unpack_archive

from .errors import field_error
from .settings import Settings


def read_uploads(files: list[UploadFile], field: str, settings: Settings) -> list[DecodedImage]:
    """Decode uploaded images (PNG, JPEG, TIFF, NPY, or one zip or npz of them) within the settings' limits.

    Parameters
    ----------
    files : list of fastapi.UploadFile
    field : str
        The form field, for errors.
    settings : Settings
        ``max_image_pixels``, ``max_images_per_dataset`` and ``max_upload_bytes`` bound the upload.

    Returns
    -------
    list of workers.jobs.datasets.DecodedImage
        One (C, H, W) array per image, in upload order.
    """
    parts = [(upload.filename or "", upload.file.read()) for upload in files]
    try:
        return decode_upload(parts, settings.upload_limits())
    except UploadError as exc:
        raise field_error(["body", field], str(exc)) from None


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
            members = list(unpack_archive(field, data, max_members=1, max_bytes=settings.max_upload_bytes))
            if len(members) != 1:
                raise UploadError(f"{field}: an npz must hold exactly one array, got {[n for n, _ in members]}")
            data = members[0][1]
        array = read_npy(field, data, max_pixels=settings.max_image_pixels)
    except UploadError as exc:
        raise field_error(["body", field], str(exc)) from None
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
            name.removesuffix(".npy"): read_npy(f"{field}:{name}", body, max_pixels=settings.max_image_pixels)
            for name, body in unpack_archive(field, data, max_members=max_members, max_bytes=settings.max_upload_bytes)
        }
    except UploadError as exc:
        raise field_error(["body", field], str(exc)) from None
