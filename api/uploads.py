"""Reading the files a request uploads: images for a dataset or an encode, arrays for a reconstruction.

Every check names the form field (``files``, ``maps``, ``filters``, ``switches``) and answers a 422 before numpy
allocates what a header declares.
"""

from __future__ import annotations

import io
import math
import zipfile

import numpy as np
from fastapi import UploadFile

from workers.datasets import ZIP_MAGIC, DecodedImage, UploadError, decode_upload, npy_header

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
    list of workers.datasets.DecodedImage
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
        Real, finite, float32 or float64.
    """
    data = upload.file.read()
    if data.startswith(ZIP_MAGIC):  # an npz of one array: that array's npy bytes, bounded like uploads
        data = _only_member(data, field, settings)
    array = _npy_array(data, field, settings)
    return array.astype(np.float64 if array.dtype == np.float64 else np.float32, copy=False)


def read_members(upload: UploadFile, field: str, settings: Settings, max_members: int = 64) -> dict[str, np.ndarray]:
    """The arrays of an uploaded npz (no pickles), each checked like :func:`read_array`'s.

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
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) > max_members:
                raise field_error(["body", field], f"the npz holds {len(members)} arrays, more than {max_members}")
            total = sum(m.file_size for m in members)
            if total > settings.max_upload_bytes:
                raise field_error(["body", field], f"the npz unpacks to {total} bytes, more than the limit "
                                  f"{settings.max_upload_bytes} (max_upload_bytes)", total)
            raw = {m.filename.removesuffix(".npy"): archive.read(m) for m in members}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise field_error(["body", field], f"not a readable .npz file: {exc}") from None
    return {name: _npy_array(body, field, settings) for name, body in raw.items()}


def _only_member(data: bytes, field: str, settings: Settings) -> bytes:
    """The bytes of the single member of an npz, after checking what it declares to unpack to."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            members = archive.infolist()
            if len(members) != 1:
                raise field_error(["body", field], f"an npz must hold exactly one array, got "
                                  f"{[m.filename for m in members]}")
            if members[0].file_size > settings.max_upload_bytes:
                raise field_error(["body", field], f"the npz unpacks to {members[0].file_size} bytes, more than "
                                  f"the limit {settings.max_upload_bytes} (max_upload_bytes)", members[0].file_size)
            return archive.read(members[0])
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        raise field_error(["body", field], f"not a readable .npz file: {exc}") from None


def _npy_array(data: bytes, field: str, settings: Settings) -> np.ndarray:
    """An npy's array, its header checked before numpy allocates anything; real numbers only, finite."""
    try:
        shape, dtype = npy_header(field, data)
    except UploadError as exc:
        raise field_error(["body", field], str(exc)) from None
    if dtype.hasobject or dtype.kind not in "fiu" or dtype.itemsize > 8:
        raise field_error(["body", field], f"dtype {dtype} is not a real number type", str(dtype))
    declared = math.prod(shape) * dtype.itemsize
    if declared > len(data):  # numpy would allocate the declared shape before finding the data short
        raise field_error(["body", field], f"the header declares {shape} {dtype} ({declared} bytes), more than "
                          f"the {len(data)} bytes sent", list(shape))
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise field_error(["body", field], f"not a readable .npy file: {exc}") from None
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise field_error(["body", field], "the array holds NaN or inf")
    if array.ndim >= 2 and array.shape[-1] * array.shape[-2] > settings.max_image_pixels:
        raise field_error(["body", field], f"spatial size {array.shape[-2:]} is over the limit of "
                          f"{settings.max_image_pixels} pixels", list(array.shape))
    return array
