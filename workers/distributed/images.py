"""Image files of a learning job: listing a folder, checking the files agree, loading a shard's images.

A file is named by a path or URL, or by a :class:`~workers.jobs.objects.Location` (a store and a key): every
read goes through the store, so an image on S3 is read by the shard actor that needs it, on whatever node it runs.
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

from ..jobs.datasets import png_depth_pillow_drops
from ..jobs.objects import Location, ObjectStore, array_header, as_location, is_url, read_array

#: An image file: a local path, an fsspec URL, or a location in a store.
ImageSource = str | Path | Location

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


def list_images(folder: str | Path) -> list[Path] | list[Location]:
    """The image files (PNG, JPEG, NPY) directly in `folder`, sorted by name: paths for a local folder, locations
    for an fsspec URL (``s3://bucket/images/``).

    Raises
    ------
    ValueError
        If `folder` is not a directory or holds no image file.
    """
    if is_url(folder):
        return _list_url(str(folder))
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"images must be a folder of image files, got {str(folder)!r} (not a directory)")
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not paths:
        raise ValueError(f"images folder {str(folder)!r} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    return paths


def _list_url(url: str) -> list[Location]:
    store = ObjectStore(url)
    try:
        names = store.list()
    except OSError as exc:
        raise ValueError(f"images: cannot list {url!r}: {type(exc).__name__}: {exc}") from None
    found = [store.at(n) for n in names if Path(n).suffix.lower() in IMAGE_SUFFIXES and store.exists(n)]
    if not found:
        raise ValueError(f"images {url!r} holds no {'/'.join(IMAGE_SUFFIXES)} file")
    return found


def image_paths(items: Sequence[str | Path]) -> list[Path] | list[Location]:
    """Image files given one by one or as folders (a folder's image files sorted by name, as :func:`list_images`),
    in the order given.

    Raises
    ------
    ValueError
        Naming a path that is neither a file nor a folder, or a folder without images.
    """
    paths: list = []
    for raw in items:
        if is_url(raw):
            location = as_location(raw)
            paths += [location] if location.store.exists(location.key) else list_images(raw)
            continue
        item = Path(raw)
        if item.is_dir():
            paths += list_images(item)
        elif item.is_file():
            paths.append(item)
        else:
            raise ValueError(f"no such image file or folder: {str(item)!r}")
    return paths


def _picture_header(source: Location) -> tuple[tuple[int, int, int], str]:
    with source.open() as fh:
        dropped = png_depth_pillow_drops(fh.read(26))
        fh.seek(0)
        if dropped:
            raise ValueError(f"image {_name(source)!r} is {dropped}")
        with Image.open(fh) as im:  # the same read: one request per image on an object store
            width, height = im.size
            if im.mode in _GREY_8BIT_MODES:
                return (1, height, width), "uint8"
            if im.mode in _GREY_16BIT_MODES:
                return (1, height, width), "uint16"
            if im.mode in _COLOUR_8BIT_MODES:
                return (3, height, width), "uint8"
    raise ValueError(
        f"image {_name(source)!r} has Pillow mode {im.mode!r}; 8-bit grey or colour, or 16-bit grey expected"
    )


def _array_header(source: Location) -> tuple[tuple[int, int, int], str]:
    shape, dtype = array_header(source)
    if len(shape) == 2:
        return (1, *shape), str(dtype)
    if len(shape) == 3:
        return tuple(shape), str(dtype)
    raise ValueError(
        f"array file {_name(source)!r} must hold one image of shape (H, W) or (C, H, W), got shape {shape}"
    )


def _name(source: Location) -> str:
    """How a message names an image: its path for a local file, else its URL."""
    return str(Path(source.store.url) / source.key) if source.store.local else str(source)


def _suffix(source: Location) -> str:
    return Path(source.key).suffix.lower()


def _header(source: Location) -> tuple[tuple[int, int, int], str]:
    suffix = _suffix(source)
    if suffix not in IMAGE_SUFFIXES:
        raise ValueError(f"image file {_name(source)!r} must be one of {IMAGE_SUFFIXES}, got suffix {suffix!r}")
    try:
        return _array_header(source) if suffix in ARRAY_SUFFIXES else _picture_header(source)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ValueError) and _name(source) in str(exc):
            raise
        raise ValueError(f"cannot read image file {_name(source)!r}: {type(exc).__name__}: {exc}") from None


def inspect_images(paths: Sequence[ImageSource]) -> ImageInfo:
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
    headers = [(source, *_header(source)) for source in map(as_location, paths)]
    pictures_only = all(_suffix(source) in PICTURE_SUFFIXES for source, _, _ in headers)
    first, (c0, h0, w0), dtype0 = headers[0]
    for path, (c, h, w), dtype in headers[1:]:
        if (h, w) != (h0, w0) or dtype != dtype0 or (c != c0 and not pictures_only):
            raise ValueError(
                f"image {_name(path)!r} is {c}x{h}x{w} {dtype}, unlike {_name(first)!r} which is "
                f"{c0}x{h0}x{w0} {dtype0}: all images of a job must share size, channels and dtype"
            )
    channels = max(shape[0] for _, shape, _ in headers)
    return ImageInfo((channels, h0, w0), dtype0)


def load_images(paths: Sequence[ImageSource], info: ImageInfo) -> np.ndarray:
    """Load image files as one array of shape (n, C, H, W) and dtype ``info.dtype``.

    Parameters
    ----------
    paths : sequence of path, URL or Location
        The files, in order (a shard's files).
    info : ImageInfo
        From :func:`inspect_images` on the whole dataset (it fixes C for pictures).

    Raises
    ------
    ValueError
        If a file does not match `info` (it changed since it was inspected, say), or holds NaN or infinite
        values.
    """
    arrays = [_load_one(as_location(p), info) for p in paths]
    bad = [
        (_name(as_location(p)), a.shape, str(a.dtype))
        for p, a in zip(paths, arrays, strict=True)
        if a.shape != info.shape or str(a.dtype) != info.dtype
    ]
    if bad:
        raise ValueError(f"images {bad} do not match the dataset's shape {info.shape} and dtype {info.dtype}")
    # by name: a NaN found later in a stacked batch could not say which of a collection's files holds it
    not_finite = [
        _name(as_location(p))
        for p, a in zip(paths, arrays, strict=True)
        if a.dtype.kind == "f" and not np.isfinite(a).all()
    ]
    if not_finite:
        raise ValueError(f"image files {not_finite} hold NaN or infinite values")
    return np.stack(arrays)


def _load_one(source: Location, info: ImageInfo) -> np.ndarray:
    """One file's pixels; a file its header promised but whose data cannot be decoded (truncated, say) is a
    ValueError naming it."""
    try:
        return _decode(source, info)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        if isinstance(exc, ValueError) and _name(source) in str(exc):
            raise
        raise ValueError(f"cannot read image file {_name(source)!r}: {type(exc).__name__}: {exc}") from None


def _decode(source: Location, info: ImageInfo) -> np.ndarray:
    if _suffix(source) in ARRAY_SUFFIXES:
        a = read_array(source)
        return a[None] if a.ndim == 2 else a
    with source.open() as fh, Image.open(fh) as im:
        if info.dtype == "uint16":
            return np.asarray(im, dtype=np.uint16)[None]
        if info.n_channels == 3:
            return np.moveaxis(np.asarray(im.convert("RGB")), -1, 0)
        return np.asarray(im.convert("L"))[None]
