"""Image files of a learning job: listing a folder, checking the files agree, loading a shard's images.

One file holds one image: PNG or JPEG (read with Pillow) or ``.npy`` (an ``(H, W)`` or ``(C, H, W)`` array).
:func:`inspect_images` reads only the headers, so the coordinator can check a whole dataset and learn its shape
without loading pixels; each shard actor then loads its own files with :func:`load_images`.

8-bit pictures are loaded as uint8: grey ones as one channel, colour ones as RGB. When any picture of a dataset is
in colour, every picture of it is loaded as RGB (grey ones replicated), so that all share one channel count; the
``grey`` preprocessing step turns RGB into luma in floating point. 16-bit grey PNGs are loaded as uint16.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy",)
IMAGE_SUFFIXES = PICTURE_SUFFIXES + ARRAY_SUFFIXES
_GREY_8BIT_MODES = frozenset({"1", "L", "LA"})
_GREY_16BIT_MODES = frozenset({"I;16", "I;16L", "I;16B"})
_COLOUR_8BIT_MODES = frozenset({"P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr", "LAB", "HSV"})


@dataclass(frozen=True)
class ImageInfo:
    """What every image of a dataset shares once loaded.

    Attributes
    ----------
    shape : tuple of int
        (C, H, W) of one loaded image.
    dtype : str
        numpy dtype of the loaded arrays (``uint8`` for 8-bit pictures).
    """

    shape: tuple[int, int, int]
    dtype: str

    @property
    def n_channels(self) -> int:
        return self.shape[0]


def list_images(folder: str | Path) -> list[Path]:
    """The image files (PNG, JPEG, NPY) directly in `folder`, sorted by name.

    Raises
    ------
    ValueError
        If `folder` is not a directory or holds no image file.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"images must be a folder of image files, got {str(folder)!r} (not a directory)")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"images folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    return paths


def image_paths(items: Sequence[str | Path]) -> list[Path]:
    """Image files given one by one or as folders (a folder's image files sorted by name, as :func:`list_images`),
    in the order given.

    Raises
    ------
    ValueError
        Naming a path that is neither a file nor a folder, or a folder without images.
    """
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            paths += list_images(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise ValueError(f"no such image file or folder: {str(item)!r}")
    return paths


def _picture_header(path: Path) -> tuple[tuple[int, int, int], str]:
    with Image.open(path) as im:
        width, height = im.size
        if im.mode in _GREY_8BIT_MODES:
            return (1, height, width), "uint8"
        if im.mode in _GREY_16BIT_MODES:
            return (1, height, width), "uint16"
        if im.mode in _COLOUR_8BIT_MODES:
            return (3, height, width), "uint8"
    raise ValueError(f"image {str(path)!r} has Pillow mode {im.mode!r}; 8-bit grey or colour, or 16-bit grey expected")


def _array_header(path: Path) -> tuple[tuple[int, int, int], str]:
    a = np.load(path, mmap_mode="r", allow_pickle=False)
    if a.ndim == 2:
        return (1, *a.shape), str(a.dtype)
    if a.ndim == 3:
        return tuple(a.shape), str(a.dtype)
    raise ValueError(f"array file {str(path)!r} must hold one image of shape (H, W) or (C, H, W), got shape {a.shape}")


def _header(path: Path) -> tuple[tuple[int, int, int], str]:
    suffix = path.suffix.lower()
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"image file {str(path)!r} must be one of {IMAGE_SUFFIXES}, got suffix {suffix!r}")
    try:
        return _array_header(path) if suffix in ARRAY_SUFFIXES else _picture_header(path)
    except (OSError, ValueError) as exc:
        if isinstance(exc, ValueError) and str(path) in str(exc):
            raise
        raise ValueError(f"cannot read image file {str(path)!r}: {type(exc).__name__}: {exc}") from None


def inspect_images(paths: Sequence[str | Path]) -> ImageInfo:
    """Check from their headers that the image files agree, and return what they share.

    Pictures of mixed grey and colour agree (all become RGB); otherwise sizes, channel counts and dtypes must
    match.

    Raises
    ------
    ValueError
        Naming the first file that cannot be read or differs from the first one.
    """
    if not paths:
        raise ValueError("image_paths must name at least one image file, got none")
    headers = [(Path(p), *_header(Path(p))) for p in paths]
    pictures_only = all(path.suffix.lower() in PICTURE_SUFFIXES for path, _, _ in headers)
    first, (c0, h0, w0), dtype0 = headers[0]
    for path, (c, h, w), dtype in headers[1:]:
        if (h, w) != (h0, w0) or dtype != dtype0 or (c != c0 and not pictures_only):
            raise ValueError(
                f"image {str(path)!r} is {c}x{h}x{w} {dtype}, unlike {str(first)!r} which is "
                f"{c0}x{h0}x{w0} {dtype0}: all images of a job must share size, channels and dtype"
            )
    channels = max(shape[0] for _, shape, _ in headers)
    return ImageInfo((channels, h0, w0), dtype0)


def load_images(paths: Sequence[str | Path], info: ImageInfo) -> np.ndarray:
    """Load image files as one array of shape (n, C, H, W) and dtype ``info.dtype``.

    Parameters
    ----------
    paths : sequence of path
        The files, in order (a shard's files).
    info : ImageInfo
        From :func:`inspect_images` on the whole dataset (it fixes C for pictures).

    Raises
    ------
    ValueError
        If a file does not match `info` (it changed since it was inspected, say).
    """
    arrays = [_load_one(Path(p), info) for p in paths]
    bad = [
        (str(p), a.shape, str(a.dtype))
        for p, a in zip(paths, arrays, strict=True)
        if a.shape != info.shape or str(a.dtype) != info.dtype
    ]
    if bad:
        raise ValueError(f"images {bad} do not match the dataset's shape {info.shape} and dtype {info.dtype}")
    return np.stack(arrays)


def _load_one(path: Path, info: ImageInfo) -> np.ndarray:
    if path.suffix.lower() in ARRAY_SUFFIXES:
        a = np.load(path, allow_pickle=False)
        return a[None] if a.ndim == 2 else a
    with Image.open(path) as im:
        if info.dtype == "uint16":
            return np.asarray(im, dtype=np.uint16)[None]
        if info.n_channels == 3:
            return np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)
        return np.asarray(im.convert("L"))[None]
