"""What the client sends and reads besides JSON: image files as multipart parts, arrays as ``.npy`` / ``.npz``
(``allow_pickle=False`` both ways)."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".npy")

ImageParts = Sequence[str | os.PathLike[str] | tuple[str, bytes]]
"""What :meth:`~api.client.DeconvClient.upload_dataset` and :meth:`~api.client.DeconvClient.encode` take: paths
(files, or folders of image files) or (name, bytes) parts."""


def image_files(folder: str | os.PathLike[str]) -> list[Path]:
    """The image files directly in `folder` (PNG, JPEG, TIFF, NPY), sorted by name.

    Parameters
    ----------
    folder : path

    Returns
    -------
    list of Path

    Raises
    ------
    ValueError
        When `folder` holds none.
    """
    folder = Path(folder)
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    return paths


def file_parts(field: str, images: ImageParts) -> list[tuple[str, tuple[str, bytes, str]]]:
    """Multipart parts named `field`, one per image file (a folder gives its image files).

    Parameters
    ----------
    field : str
        The form field.
    images : sequence of path or (name, bytes)

    Returns
    -------
    list of (field, (name, bytes, media type))
    """
    if isinstance(images, str | os.PathLike | tuple):
        raise TypeError(
            "images must be a sequence of paths or (name, bytes) parts, got a single "
            f"{type(images).__name__}; wrap it in a list"
        )
    parts = []
    for item in images:
        if isinstance(item, tuple):
            name, data = item
            parts.append((field, (name, bytes(data), "application/octet-stream")))
            continue
        path = Path(item)
        for file in image_files(path) if path.is_dir() else [path]:
            parts.append((field, (file.name, file.read_bytes(), "application/octet-stream")))
    if not parts:
        raise ValueError("no image to send")
    return parts


def npy_bytes(array: Any) -> bytes:
    """`array` as the bytes of an ``.npy`` file, no pickles.

    Parameters
    ----------
    array : array_like

    Returns
    -------
    bytes

    Examples
    --------
    >>> load_npy(npy_bytes(np.arange(3)))
    array([0, 1, 2])
    """
    buffer = io.BytesIO()
    np.save(buffer, np.asarray(array), allow_pickle=False)
    return buffer.getvalue()


def npz_bytes(arrays: dict[str, Any]) -> bytes:
    """`arrays` as the bytes of an ``.npz`` file, one member per name.

    Parameters
    ----------
    arrays : dict of str to array_like

    Returns
    -------
    bytes
    """
    buffer = io.BytesIO()
    np.savez(buffer, **{name: np.asarray(a) for name, a in arrays.items()})
    return buffer.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    """The array of ``.npy`` bytes; a pickle is refused.

    Parameters
    ----------
    data : bytes

    Returns
    -------
    ndarray
    """
    return np.load(io.BytesIO(data), allow_pickle=False)


def load_npz(data: bytes) -> dict[str, np.ndarray]:
    """The arrays of ``.npz`` bytes, by name; pickles are refused.

    Parameters
    ----------
    data : bytes

    Returns
    -------
    dict of str to ndarray

    Examples
    --------
    >>> {name: a.shape for name, a in load_npz(npz_bytes({"L1": np.zeros((1, 2, 3, 3))})).items()}
    {'L1': (1, 2, 3, 3)}
    """
    with np.load(io.BytesIO(data), allow_pickle=False) as archive:
        return {name: archive[name] for name in archive.files}


def params(**values: Any) -> dict[str, Any]:
    """The query or form fields to send: `values` without those that are None.

    Parameters
    ----------
    **values
        Field values.

    Returns
    -------
    dict
    """
    return {k: v for k, v in values.items() if v is not None}
