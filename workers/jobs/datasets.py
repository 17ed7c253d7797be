"""Uploaded images: decoding PNG, JPEG, TIFF and NPY files, or one zip / npz of them, within limits.

Every file is recognised by its first bytes (not its name), its dimensions are checked against the limits before
its pixels are decoded, and any failure raises :class:`UploadError` naming the file (``files[2]`` or the name
inside an archive) and what is wrong. Decoded images are arrays of shape (C, H, W):

* 8-bit pictures give uint8, grey as one channel, colour as RGB (alpha dropped); 16-bit grey gives uint16;
  when an upload mixes grey and colour pictures, the grey ones are replicated to RGB, so they share C;
* an NPY array of shape (H, W) or (C, H, W) is one image, (N, C, H, W) is N images; integer, float32 and
  float64 arrays are kept as they are (NaN, inf and magnitudes past :data:`MAX_MAGNITUDE` are refused); an npz
  holds such arrays, in name order.
"""

from __future__ import annotations

import io
import math
import re
import zipfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
JPEG_MAGIC = b"\xff\xd8\xff"
TIFF_MAGICS = (b"II*\x00", b"MM\x00*")
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
EMPTY_ZIP_MAGIC = b"PK\x05\x06"  # an archive of no file is its end record alone
MAX_MAGNITUDE = 1e18
"""The largest |value| an uploaded array may hold, but for float64 ones (:data:`MAX_MAGNITUDE_FLOAT64`). Such
arrays are computed on in float32, whose largest value is 3.4e38: local contrast normalisation (on in every preset)
squares each value's deviation from its neighbourhood, up to twice the largest value, and such a square overflows to
inf past about 1.8e19 (contrast normalisation would then turn the images into zeros without a word), while sums
over an image's pixels overflow near 1e30 (a job would fail late on an inf shift). 1e18 keeps the squares below
4e36."""
MAX_MAGNITUDE_FLOAT64 = 1e150
"""The largest |value| an uploaded float64 array may hold: it is computed on in float64 (largest value 1.8e308), and
the same squares of twice 1e150 stay below 4e300."""
_KEPT_DTYPES = frozenset("uint8 uint16 uint32 int8 int16 int32 int64 float32 float64".split())
_GREY_MODES = frozenset({"1", "L", "LA"})
_GREY16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})


def png_depth_pillow_drops(head: bytes) -> str | None:
    """What a PNG whose first 26 bytes are `head` loses in Pillow, or None: Pillow reads 16-bit colour (and grey
    with alpha) at 8 bits, without a word, so such a file must be refused rather than learned from at 1/256 of
    its precision."""
    if not head.startswith(PNG_MAGIC) or head[12:16] != b"IHDR" or len(head) < 26 or head[24] != 16:
        return None
    kinds = {2: "colour", 4: "grey with alpha", 6: "colour with alpha"}
    if head[25] not in kinds:
        return None
    return (
        f"a 16-bit {kinds[head[25]]} PNG, which Pillow would read at 8 bits: send it as a 16-bit grey PNG, "
        "or as NPY (uint16 of shape (3, H, W))"
    )


def tiff_depth_pillow_drops(im: Image.Image) -> str | None:
    """What an opened TIFF loses in Pillow, or None: 16-bit colour TIFFs open in 8-bit modes ('RGB', 'RGBA')."""
    if im.format != "TIFF" or im.mode in _GREY16_MODES:
        return None
    bits = im.tag_v2.get(258) or (8,)  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    if max(bits) <= 8 or im.mode in ("I", "F", "I;16S"):  # 32-bit and float modes are refused on their own
        return None
    return (
        f"a {max(bits)}-bit colour TIFF, which Pillow would read at 8 bits: send it as a 16-bit grey image, "
        "or as NPY (uint16 of shape (3, H, W))"
    )


class UploadError(ValueError):
    """An uploaded file that cannot be taken; the message names the file and the problem."""


class UploadTooLarge(UploadError):
    """An upload that would decode to more than its limits allow (the service answers 413)."""


@dataclass(frozen=True)
class UploadLimits:
    """Bounds on one upload.

    Attributes
    ----------
    max_pixels : int
        Largest H·W of one image.
    max_images : int
        Most images per upload (dataset).
    max_bytes : int
        Most bytes, also the most uncompressed bytes of an archive's members together.
    max_channels : int
        Most channels of one NPY image.
    max_values : int
        Most values (C × H × W, summed over the images) the upload decodes to; each image is counted from its
        header, before its pixels are decoded.
    """

    max_pixels: int = 4096 * 4096
    max_images: int = 10_000
    max_bytes: int = 512 * 2**20
    max_channels: int = 64
    max_values: int = 2**40
    names: tuple[tuple[str, str], ...] = ()
    """(attribute, what the user sets it by) pairs, for the messages: the service names its variables here."""

    def name(self, attribute: str) -> str:
        """What a message calls the limit `attribute`: the setting that sets it, else the attribute."""
        return dict(self.names).get(attribute, attribute)


class _Budget:
    """The values an upload has decoded so far, against ``limits.max_values``."""

    def __init__(self, limits: UploadLimits):
        self.limit = limits.max_values
        self.used = 0

    def take(self, label: str, values: int, what: str) -> None:
        if self.used + values > self.limit:
            raise UploadTooLarge(
                f"{label}: {what} brings the upload to {self.used + values} values (pixels × channels), more "
                f"than the limit of {self.limit} values for one request"
            )
        self.used += values

    def bytes_left(self) -> int:
        """Most bytes an archive member may unpack to: float64 values of what is left, and room for a header."""
        return (self.limit - self.used) * 8 + 2**16


@dataclass(frozen=True)
class DecodedImage:
    name: str
    array: np.ndarray  # (C, H, W)


def decode_upload(parts: Sequence[tuple[str, bytes]], limits: UploadLimits = UploadLimits()) -> list[DecodedImage]:
    """Decode the uploaded files, in order, into images of shape (C, H, W).

    Parameters
    ----------
    parts : sequence of (name, bytes)
        The uploaded files; a name is used in messages only (``files[i]`` when empty).
    limits : UploadLimits

    Raises
    ------
    UploadError
        No file, an unknown format, a corrupt or truncated file, an image over the limits, too many images.
    """
    if not parts:
        raise UploadError("files: no file uploaded; send one or more parts named 'files'")
    total = sum(len(data) for _, data in parts)
    if total > limits.max_bytes:
        raise UploadTooLarge(
            f"files: the upload holds {total} bytes, more than the limit {limits.max_bytes} "
            f"({limits.name('max_bytes')})"
        )
    images: list[DecodedImage] = []
    budget = _Budget(limits)
    for index, (name, data) in enumerate(parts):
        label = f"files[{index}]" + (f" ({name!r})" if name else "")
        images.extend(_decode_file(label, data, limits, budget, archive_ok=len(parts) == 1))
        if len(images) > limits.max_images:
            raise UploadError(
                f"files: more than {limits.max_images} images in one upload ({limits.name('max_images')})"
            )
    if not images:
        raise UploadError("files: the upload holds no image")
    return _common_channels(images)


def _decode_file(
    label: str, data: bytes, limits: UploadLimits, budget: _Budget, *, archive_ok: bool
) -> list[DecodedImage]:
    head = data[:8]
    if head.startswith(ZIP_MAGIC):
        if not archive_ok:
            raise UploadError(f"{label}: a zip or npz must be the only file of an upload")
        return _decode_archive(label, data, limits, budget)
    if head.startswith(NPY_MAGIC):
        return [
            DecodedImage(f"{label}[{i}]" if n > 1 else label, a)
            for i, a, n in _numbered(_decode_npy(label, data, limits, budget))
        ]
    if head.startswith(PNG_MAGIC) or head.startswith(JPEG_MAGIC) or head[:4] in TIFF_MAGICS:
        return [DecodedImage(label, _decode_picture(label, data, limits, budget))]
    if head.startswith(EMPTY_ZIP_MAGIC):
        raise UploadError(f"{label}: an empty zip archive (it holds no file)")
    raise UploadError(f"{label}: not a PNG, JPEG, TIFF, NPY, zip or npz file (first bytes {head[:8]!r})")


def _numbered(arrays: list[np.ndarray]):
    return [(i, a, len(arrays)) for i, a in enumerate(arrays)]


def _decode_picture(label: str, data: bytes, limits: UploadLimits, budget: _Budget) -> np.ndarray:
    dropped = png_depth_pillow_drops(data[:26])
    if dropped:
        raise UploadError(f"{label}: {dropped}")
    try:
        with Image.open(io.BytesIO(data)) as im:
            width, height = im.size
            if width * height > limits.max_pixels:
                raise UploadError(
                    f"{label}: image of {width}x{height} pixels is larger than the limit of "
                    f"{limits.max_pixels} pixels ({limits.name('max_pixels')})"
                )
            if getattr(im, "n_frames", 1) > 1:
                raise UploadError(f"{label}: multi-frame images are not supported ({im.n_frames} frames)")
            dropped = tiff_depth_pillow_drops(im)
            if dropped:
                raise UploadError(f"{label}: {dropped}")
            channels = 1 if im.mode in _GREY_MODES or im.mode in _GREY16_MODES else 3
            budget.take(label, channels * width * height, f"an image of {channels}x{height}x{width}")
            im.load()
            if im.mode in _GREY16_MODES:
                return np.asarray(im, dtype=np.uint16)[None].copy()
            if im.mode in _GREY_MODES:
                return np.asarray(im.convert("L"))[None].copy()
            if im.mode in ("I", "F", "I;16S"):
                raise UploadError(
                    f"{label}: 32-bit and float pictures (mode {im.mode!r}) are not supported; send them as NPY"
                )
            return np.ascontiguousarray(np.moveaxis(np.asarray(im.convert("RGB")), -1, 0))
    except UploadError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own bound, met in Image.open before ours
        # Pillow's message names its own limit, not the one the user sets: keep only the image's pixel count
        counted = re.search(r"\((\d+) pixels\)", str(exc))
        size = f"image of {counted.group(1)} pixels" if counted else "image"
        raise UploadError(
            f"{label}: {size} is larger than the limit of {limits.max_pixels} pixels ({limits.name('max_pixels')})"
        ) from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise UploadError(f"{label}: cannot decode the image: {type(exc).__name__}: {exc}") from None


def _npy_header(label: str, data: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """(shape, dtype, offset of the data) that the NPY bytes `data` declare, from the header alone."""
    buffer = io.BytesIO(data)
    try:
        version = np.lib.format.read_magic(buffer)
        read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read_header(buffer)
    except (ValueError, OSError, SyntaxError) as exc:
        raise UploadError(f"{label}: not a valid NPY file: {exc}") from None
    return tuple(shape), dtype, buffer.tell()


def _decode_npy(label: str, data: bytes, limits: UploadLimits, budget: _Budget) -> list[np.ndarray]:
    shape, _, _ = _npy_header(label, data)  # the image checks first, from the header alone
    if len(shape) not in (2, 3, 4):
        raise UploadError(f"{label}: NPY array must have shape (H, W), (C, H, W) or (N, C, H, W), got {shape}")
    _check_dims(label, shape, limits)
    budget.take(label, math.prod(shape), f"an array of shape {shape}")
    array = read_npy(label, data, max_pixels=limits.max_pixels, pixels_name=limits.name("max_pixels"))
    if array.ndim == 2:
        return [array[None]]
    if array.ndim == 3:
        return [array]
    return list(array)


def read_npy(label: str, data: bytes, *, max_pixels: int, pixels_name: str = "max_pixels") -> np.ndarray:
    """The array of the NPY bytes `data`, every check made on the header before numpy allocates anything.

    Parameters
    ----------
    label : str
        Names the file in messages (``files[0] ('a.npy')``, ``maps``).
    data : bytes
        An NPY file.
    max_pixels : int
        Largest product of the last two axes (an image's H·W) of an array of two axes or more.

    Returns
    -------
    ndarray
        Any shape; an integer, float32 or float64 dtype; finite.

    Raises
    ------
    UploadError
        Naming `label`: not an NPY file, another dtype (objects are never unpickled), last two axes over
        `max_pixels`, a header that declares more bytes than `data` holds, NaN or inf.

    Examples
    --------
    >>> buffer = io.BytesIO()
    >>> np.save(buffer, np.eye(2, dtype=np.float32))
    >>> read_npy("maps", buffer.getvalue(), max_pixels=16).dtype
    dtype('float32')
    >>> try:
    ...     read_npy("maps", buffer.getvalue()[:-4], max_pixels=16)
    ... except UploadError as exc:
    ...     print(exc)
    maps: the header declares (2, 2) float32 (16 bytes of data), more than the 12 sent
    """
    shape, dtype, offset = _npy_header(label, data)
    if dtype.hasobject or str(dtype.newbyteorder("=")) not in _KEPT_DTYPES:  # either byte order
        raise UploadError(f"{label}: NPY dtype {dtype} is not supported (integers, float32 or float64)")
    if len(shape) >= 2 and shape[-2] * shape[-1] > max_pixels:
        raise UploadError(
            f"{label}: image of {shape[-1]}x{shape[-2]} pixels is larger than the limit of "
            f"{max_pixels} pixels ({pixels_name})"
        )
    declared = math.prod(shape) * dtype.itemsize
    sent = len(data) - offset
    if declared > sent:  # numpy allocates the declared shape before it finds the data short
        raise UploadError(
            f"{label}: the header declares {shape} {dtype} ({declared} bytes of data), more than the {sent} sent"
        )
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise UploadError(f"{label}: cannot read the NPY data: {exc}") from None
    if not array.dtype.isnative:  # written on a big-endian machine (or asked for): the same values, our order
        array = array.astype(array.dtype.newbyteorder("="))
    if array.dtype.kind == "f" and not np.isfinite(array).all():
        raise UploadError(f"{label}: the array holds NaN or inf")
    _check_magnitude(label, array)
    return array


def _check_magnitude(label: str, array: np.ndarray) -> None:
    """Refuse values past :data:`MAX_MAGNITUDE` (:data:`MAX_MAGNITUDE_FLOAT64` for float64): float arrays, and the
    integer types that can hold such values."""
    wide = array.dtype == np.float64
    bound = MAX_MAGNITUDE_FLOAT64 if wide else MAX_MAGNITUDE
    if array.size == 0 or (array.dtype.kind in "iu" and np.iinfo(array.dtype).max <= bound):
        return
    # through float: the absolute value of int64's minimum does not fit an int64
    peak = max(abs(float(array.min())), abs(float(array.max())))
    if peak > bound:
        raise UploadError(
            f"{label}: {array.dtype} values up to {peak:.3g} in magnitude, more than the {bound:.0e} taken: the "
            f"images are computed on in {'float64' if wide else 'float32'}, where squares (contrast normalisation) "
            "and sums (over an image) of larger values overflow to inf; rescale the array"
            + ("" if wide else f", or send it as float64 (taken up to {MAX_MAGNITUDE_FLOAT64:.0e})")
        )


def _check_dims(label: str, shape: tuple[int, ...], limits: UploadLimits) -> None:
    """The checks of an image stack that :func:`read_npy` does not make (it bounds H·W)."""
    if min(shape) < 1:
        raise UploadError(f"{label}: empty array of shape {tuple(shape)}")
    if len(shape) >= 3 and shape[-3] > limits.max_channels:
        raise UploadError(
            f"{label}: {shape[-3]} channels, more than the limit {limits.max_channels} "
            f"({limits.name('max_channels')}); arrays are (H, W), (C, H, W) or (N, C, H, W)"
        )
    if len(shape) == 4 and shape[0] > limits.max_images:
        raise UploadError(
            f"{label}: {shape[0]} images, more than the limit {limits.max_images} ({limits.name('max_images')})"
        )


def _decode_archive(label: str, data: bytes, limits: UploadLimits, budget: _Budget) -> list[DecodedImage]:
    images: list[DecodedImage] = []
    members = unpack_archive(
        label, data, max_members=limits.max_images, max_bytes=limits.max_bytes, member_bytes=budget.bytes_left
    )
    for name, content in members:
        images.extend(_decode_file(f"{label}:{name}", content, limits, budget, archive_ok=False))
        if len(images) > limits.max_images:
            raise UploadError(f"{label}: more than {limits.max_images} images ({limits.name('max_images')})")
    return images


def unpack_archive(
    label: str,
    data: bytes,
    *,
    max_members: int,
    max_bytes: int,
    member_bytes: Callable[[], int] | None = None,
) -> Iterator[tuple[str, bytes]]:
    """The files of the zip (or npz) `data`, in name order, once the sizes it declares are checked.

    Folders, hidden files and macOS ``__MACOSX/`` entries are skipped. Each file is unpacked when the caller
    asks for it, so a caller that decodes as it goes holds one file's bytes at a time. A file is inflated a
    chunk at a time and refused as soon as it passes the size it declares or what is left of `max_bytes` (or
    of `member_bytes`): an archive whose sizes lie is stopped there, not after it has been inflated whole.

    Parameters
    ----------
    label : str
        Names the archive in messages.
    data : bytes
        A zip file.
    max_members : int
        Most files.
    max_bytes : int
        Most bytes the files unpack to, together; checked on the sizes the archive declares, before unpacking,
        and on the bytes inflated, while unpacking.
    member_bytes : callable, optional
        Most bytes the next file may unpack to (asked before each file): what the caller can still decode.

    Yields
    ------
    (str, bytes)
        Each file's name in the archive and its bytes.

    Raises
    ------
    UploadError
        Naming `label` (and the member at fault): not a zip, too many files, too many bytes, a member that does
        not unpack (a CRC error, a size that lies).
    """
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        members = sorted((m for m in archive.infolist() if not m.is_dir()), key=lambda m: m.filename)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UploadError(f"{label}: not a valid zip or npz archive: {exc}") from None
    members = [m for m in members if not _hidden(m.filename)]
    if len(members) > max_members:
        raise UploadError(f"{label}: {len(members)} files in the archive, more than the limit {max_members}")
    unpacked = sum(m.file_size for m in members)
    if unpacked > max_bytes:
        raise UploadError(
            f"{label}: the archive unpacks to {unpacked} bytes, more than the limit {max_bytes} (max_bytes)"
        )
    left = max_bytes
    with archive:
        for member in members:
            limit = min(left, member_bytes()) if member_bytes is not None else left
            content = _inflate(archive, member, f"{label}:{member.filename}", limit)
            left -= len(content)
            yield member.filename, content


_CHUNK = 2**20


def _inflate(archive: zipfile.ZipFile, member: zipfile.ZipInfo, label: str, limit: int) -> bytes:
    """The bytes of `member`, inflated a chunk at a time within its declared size and `limit`."""
    if member.file_size > limit:
        raise UploadTooLarge(
            f"{label}: the file unpacks to {member.file_size} bytes, more than the {limit} this request can still take"
        )
    content = bytearray()
    try:
        with archive.open(member) as stream:
            while chunk := stream.read(_CHUNK):
                content += chunk
                if len(content) > member.file_size or len(content) > limit:
                    raise UploadError(
                        f"{label}: the file inflates past the {member.file_size} bytes the archive declares"
                    )
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, zlib.error) as exc:  # CRC errors, truncation
        raise UploadError(f"{label}: cannot unpack: {exc}") from None
    return bytes(content)


def _hidden(name: str) -> bool:
    base = name.rsplit("/", 1)[-1]
    return base.startswith(".") or name.startswith("__MACOSX/")


def _common_channels(images: list[DecodedImage]) -> list[DecodedImage]:
    """Grey uint8 pictures become RGB when the upload also holds colour ones.

    As :mod:`workers.distributed.images` does.
    """
    colour = any(im.array.shape[0] == 3 and im.array.dtype == np.uint8 for im in images)
    if not colour:
        return images
    return [
        DecodedImage(im.name, np.repeat(im.array, 3, axis=0))
        if im.array.shape[0] == 1 and im.array.dtype == np.uint8
        else im
        for im in images
    ]
