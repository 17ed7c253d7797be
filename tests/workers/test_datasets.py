"""Decoding of uploads (workers.jobs.datasets): every accepted format to (C, H, W) arrays, and every refusal naming the
file and what is wrong."""

from __future__ import annotations

import io
import re
import struct
import zipfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from workers.jobs.datasets import UploadError, UploadLimits, decode_upload

DEFAULT_LIMITS = UploadLimits()


def _picture(array: np.ndarray, format: str = "PNG", **save) -> bytes:  # noqa: A002
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=format, **save)
    return buffer.getvalue()


def _npy(array: np.ndarray, allow_pickle: bool = False) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=allow_pickle)
    return buffer.getvalue()


def _zip(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims `width` x `height` grey pixels and holds none: the signature, IHDR and IEND only."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b"")


@pytest.fixture
def grey(rng) -> np.ndarray:
    return rng.integers(0, 256, (12, 10), dtype=np.uint8)


@pytest.fixture
def colour(rng) -> np.ndarray:
    return rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)


def _only(parts: list[tuple[str, bytes]], limits: UploadLimits = DEFAULT_LIMITS) -> np.ndarray:
    (image,) = decode_upload(parts, limits)
    return image.array


# -- accepted formats -------------------------------------------------------------------------------------------------


def test_a_grey_png_is_one_uint8_channel(grey):
    array = _only([("g.png", _picture(grey))])
    assert (array.shape, array.dtype) == ((1, 12, 10), np.uint8)
    np.testing.assert_array_equal(array[0], grey)


def test_a_colour_png_is_rgb_channels_first(colour):
    array = _only([("c.png", _picture(colour))])
    assert (array.shape, array.dtype) == ((3, 12, 10), np.uint8)
    np.testing.assert_array_equal(array, colour.transpose(2, 0, 1))


def test_the_alpha_channel_is_dropped(colour):
    rgba = np.concatenate([colour, np.full((12, 10, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(_only([("a.png", _picture(rgba))]), colour.transpose(2, 0, 1))


def test_a_16_bit_png_keeps_its_values(rng):
    deep = rng.integers(0, 2**16, (12, 10), dtype=np.uint16)
    array = _only([("d.png", _picture(deep))])
    assert (array.shape, array.dtype) == ((1, 12, 10), np.uint16)
    np.testing.assert_array_equal(array[0], deep)


def test_a_jpeg_decodes_close_to_its_pixels():
    smooth = np.add.outer(np.arange(16), np.arange(16)).astype(np.uint8) * 8
    array = _only([("j.jpg", _picture(smooth, "JPEG", quality=95))])
    assert (array.shape, array.dtype) == ((1, 16, 16), np.uint8)
    assert np.abs(array[0].astype(int) - smooth).max() <= 8  # lossy


@pytest.mark.parametrize("mode", ["grey", "colour"])
def test_a_tiff_decodes_exactly(grey, colour, mode):
    picture = grey if mode == "grey" else colour
    array = _only([("t.tif", _picture(picture, "TIFF"))])
    np.testing.assert_array_equal(array, picture[None] if mode == "grey" else picture.transpose(2, 0, 1))


@pytest.mark.parametrize(
    ("shape", "expected"),
    [((12, 10), [(1, 12, 10)]), ((2, 12, 10), [(2, 12, 10)]), ((3, 2, 12, 10), [(2, 12, 10)] * 3)],
    ids=["2-D", "3-D", "4-D"],
)
def test_npy_arrays_are_one_image_or_a_stack(rng, shape, expected):
    stack = rng.standard_normal(shape).astype(np.float32)
    images = decode_upload([("x.npy", _npy(stack))])
    assert [im.array.shape for im in images] == expected
    assert {im.array.dtype for im in images} == {np.dtype(np.float32)}
    np.testing.assert_array_equal(np.stack([im.array for im in images]).reshape(stack.shape), stack)


@pytest.mark.parametrize("dtype", [">f4", ">f8", ">i4", ">u2"])
def test_a_big_endian_npy_decodes_to_its_values_in_native_order(rng, dtype):
    values = rng.integers(0, 1000, (2, 6, 5)).astype(dtype)
    (image,) = decode_upload([("be.npy", _npy(values))])
    assert image.array.dtype == np.dtype(dtype).newbyteorder("=") and image.array.dtype.isnative
    np.testing.assert_array_equal(image.array, values)


def _png16(colour_type: int, samples: int) -> bytes:
    """A 4x5 PNG of 16-bit samples (colour type 2: RGB, 4: grey with alpha, 6: RGBA, 0: grey), written by hand:
    Pillow writes 16-bit grey only."""
    rows = b"".join(b"\x00" + np.full((5, samples), 40000, ">u2").tobytes() for _ in range(4))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", 5, 4, 16, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    ("colour_type", "samples", "kind"), [(2, 3, "colour"), (4, 2, "grey with alpha"), (6, 4, "colour with alpha")]
)
def test_a_16_bit_picture_pillow_would_read_at_8_bits_is_refused(colour_type, samples, kind):
    with pytest.raises(UploadError, match=rf"rgb16.png'\): a 16-bit {kind} PNG, which Pillow would read at 8 bits"):
        decode_upload([("rgb16.png", _png16(colour_type, samples))])
    (grey,) = decode_upload([("grey16.png", _png16(0, 1))])  # 16-bit grey keeps its 16 bits
    assert grey.array.dtype == np.uint16 and int(grey.array.max()) == 40000


@pytest.mark.parametrize(("channels", "mode"), [(3, "rgb"), (4, "rgb")], ids=["RGB", "RGBA"])
def test_a_16_bit_colour_tiff_is_refused(channels, mode):
    tifffile = pytest.importorskip("tifffile")
    buffer = io.BytesIO()
    tifffile.imwrite(buffer, np.full((4, 5, channels), 40000, np.uint16), photometric=mode)
    with pytest.raises(UploadError, match=r"rgb16.tif'\): a 16-bit colour TIFF, which Pillow would read at 8 bits"):
        decode_upload([("rgb16.tif", buffer.getvalue())])
    grey = io.BytesIO()
    tifffile.imwrite(grey, np.full((4, 5), 40000, np.uint16))
    (image,) = decode_upload([("grey16.tif", grey.getvalue())])
    assert image.array.dtype == np.uint16 and int(image.array.max()) == 40000


def test_a_stack_names_each_image(rng):
    images = decode_upload([("stack.npy", _npy(rng.standard_normal((2, 1, 4, 4))))])
    assert [im.name for im in images] == ["files[0] ('stack.npy')[0]", "files[0] ('stack.npy')[1]"]


def test_a_zip_of_pngs_gives_its_images_in_name_order(grey, colour):
    archive = _zip(
        {"b/2.png": _picture(grey), "a.png": _picture(grey[::-1]), ".DS_Store": b"junk", "__MACOSX/._a.png": b"junk"}
    )
    images = decode_upload([("set.zip", archive)])
    assert [im.name.split(":")[-1] for im in images] == ["a.png", "b/2.png"]
    np.testing.assert_array_equal(images[0].array[0], grey[::-1])
    np.testing.assert_array_equal(images[1].array[0], grey)


def test_an_npz_gives_its_arrays_in_name_order(rng):
    a, b = rng.standard_normal((2, 4, 5)), rng.standard_normal((2, 4, 5))
    buffer = io.BytesIO()
    np.savez(buffer, b=b, a=a)
    images = decode_upload([("set.npz", buffer.getvalue())])
    assert [im.array.dtype for im in images] == [np.float64, np.float64]
    np.testing.assert_array_equal(np.stack([im.array for im in images]), np.stack([a, b]))


def test_grey_and_colour_together_become_rgb(grey, colour):
    images = decode_upload([("g.png", _picture(grey)), ("c.png", _picture(colour))])
    assert [im.array.shape for im in images] == [(3, 12, 10), (3, 12, 10)]
    np.testing.assert_array_equal(images[0].array, np.repeat(grey[None], 3, axis=0))


def test_formats_are_recognised_by_content_not_name(grey):
    assert _only([("really-a-png.jpg", _picture(grey))]).shape == (1, 12, 10)


# -- refusals that name the file ------------------------------------------------------------------------------------


def _refusal(parts: list[tuple[str, bytes]], limits: UploadLimits = DEFAULT_LIMITS) -> str:
    with pytest.raises(UploadError) as info:
        decode_upload(parts, limits)
    return str(info.value)


def test_non_image_bytes_are_refused(grey):
    message = _refusal([("ok.png", _picture(grey)), ("notes.txt", b"hello, this is not a picture")])
    assert "files[1] ('notes.txt')" in message
    assert "not a PNG" in message


@pytest.mark.parametrize("format", ["PNG", "JPEG", "TIFF"])
@pytest.mark.parametrize("keep", [0.5, 0.98], ids=["half", "all-but-the-end"])
def test_a_truncated_picture_is_refused(rng, format, keep):  # noqa: A002
    data = _picture(rng.integers(0, 256, (64, 64), dtype=np.uint8), format)
    message = _refusal([("cut.img", data[: int(len(data) * keep)])])
    assert "files[0] ('cut.img')" in message
    assert "cannot decode" in message


def test_an_archive_of_hidden_files_only_holds_no_image():
    assert "no image" in _refusal([("empty.zip", _zip({".DS_Store": b"junk", "__MACOSX/._a.png": b"junk"}))])


def test_a_corrupt_zip_is_refused():
    assert "not a valid zip" in _refusal([("broken.zip", b"PK\x03\x04" + b"\0" * 100)])


@pytest.mark.parametrize("side", [100_000, 5_000], ids=["beyond-pillow-bomb-limit", "beyond-our-limit"])
def test_a_png_claiming_huge_dimensions_is_refused_before_decoding(side):
    data = _png_header_only(side, side)
    assert len(data) < 100  # nothing to decode: the refusal comes from the header
    message = _refusal([("huge.png", data)], UploadLimits(max_pixels=4096 * 4096))
    assert "files[0] ('huge.png')" in message
    assert "pixels" in message


def test_a_huge_npy_header_is_refused_before_reading_data():
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f4", "fortran_order": False, "shape": (50_000, 50_000)})
    message = _refusal([("big.npy", np.lib.format.magic(1, 0) + header.getvalue()[8:])])
    assert "files[0] ('big.npy')" in message
    assert "larger than the limit" in message


def test_nan_in_an_npy_is_refused():
    image = np.zeros((4, 4))
    image[2, 1] = np.nan
    message = _refusal([("nan.npy", _npy(image))])
    assert "files[0] ('nan.npy')" in message
    assert "NaN" in message


class _Tripwire:
    """Unpickling it creates a file: the proof that a pickle was run."""

    def __init__(self, path: Path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_an_object_npy_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    data = _npy(np.array([[_Tripwire(marker)] * 2] * 2, dtype=object), allow_pickle=True)
    message = _refusal([("evil.npy", data)])
    assert "files[0] ('evil.npy')" in message
    assert "dtype object" in message
    assert not marker.exists()


def test_an_object_array_inside_an_npz_is_refused_without_unpickling(tmp_path):
    marker = tmp_path / "unpickled"
    data = _zip({"x.npy": _npy(np.array([[_Tripwire(marker)] * 2] * 2, dtype=object), allow_pickle=True)})
    assert "x.npy" in _refusal([("evil.npz", data)])
    assert not marker.exists()


def test_a_zip_bomb_is_refused_by_its_declared_size():
    bomb = _zip({"zeros.npy": b"\0" * (8 * 2**20)})
    assert len(bomb) < 20_000
    message = _refusal([("bomb.zip", bomb)], UploadLimits(max_bytes=2**20))
    assert "files[0] ('bomb.zip')" in message
    assert "unpacks to" in message


def test_a_zip_that_lies_about_its_size_is_refused_when_unpacked(grey):
    data = bytearray(_zip({"a.png": _picture(grey)}))
    entry = data.index(b"PK\x01\x02")  # the central directory entry: its uncompressed size is at offset 24
    data[entry + 24 : entry + 28] = struct.pack("<I", 100)
    message = _refusal([("liar.zip", bytes(data))])
    assert "a.png" in message
    assert "cannot unpack" in message


@pytest.mark.parametrize("how", ["files", "npy-stack", "zip"])
def test_too_many_images_are_refused(grey, rng, how):
    png = _picture(grey)
    parts = {
        "files": [(f"{i}.png", png) for i in range(3)],
        "npy-stack": [("s.npy", _npy(rng.standard_normal((3, 1, 4, 4))))],
        "zip": [("z.zip", _zip({f"{i}.png": png for i in range(3)}))],
    }[how]
    assert re.search(r"more than (the limit )?2\b", _refusal(parts, UploadLimits(max_images=2)))


def test_an_archive_must_come_alone(grey):
    message = _refusal([("a.png", _picture(grey)), ("more.zip", _zip({"b.png": _picture(grey)}))])
    assert "files[1] ('more.zip')" in message
    assert "only file" in message


def test_an_archive_inside_an_archive_is_refused(grey):
    message = _refusal([("outer.zip", _zip({"inner.zip": _zip({"b.png": _picture(grey)})}))])
    assert "inner.zip" in message


def test_an_empty_upload_is_refused():
    assert "no file" in _refusal([])


def test_an_upload_over_the_byte_limit_is_refused(rng):
    noise = _picture(rng.integers(0, 256, (64, 64), dtype=np.uint8))
    assert "more than the limit" in _refusal([("n.png", noise)] * 2, UploadLimits(max_bytes=len(noise) + 10))


@pytest.mark.parametrize(
    ("array", "words"),
    [
        (np.zeros(5), "shape"),
        (np.zeros((1, 1, 1, 2, 2)), "shape"),
        (np.zeros((0, 4)), "empty"),
        (np.zeros((65, 4, 4)), "channels"),
        (np.zeros((2, 2), dtype=np.complex64), "dtype complex64"),
        (np.zeros((2, 2), dtype=np.float16), "dtype float16"),
    ],
    ids=["1-D", "5-D", "empty", "channels", "complex", "float16"],
)
def test_unsupported_npy_arrays_are_refused(array, words):
    message = _refusal([("bad.npy", _npy(array))])
    assert "files[0] ('bad.npy')" in message
    assert words in message


def test_a_corrupt_npy_header_is_refused():
    assert "files[0] ('x.npy')" in _refusal([("x.npy", b"\x93NUMPY\x01\x00garbage")])


def test_a_multi_frame_tiff_is_refused(grey):
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="TIFF", save_all=True, append_images=[Image.fromarray(grey)])
    assert "multi-frame" in _refusal([("frames.tif", buffer.getvalue())])


def test_a_float_tiff_is_refused_with_a_hint(grey):
    assert "send them as NPY" in _refusal([("f.tif", _picture(grey.astype(np.float32), "TIFF"))])


def test_an_npy_header_declaring_more_than_was_sent_is_refused_before_allocating():
    # within every image limit (10000 images of 3x4096x4096), 503 GB declared and none sent: numpy would try to
    # allocate the declared array before finding the data short
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        header, {"descr": "|u1", "fortran_order": False, "shape": (10_000, 3, 4096, 4096)}
    )
    message = _refusal([("lie.npy", np.lib.format.magic(1, 0) + header.getvalue()[8:])])
    assert "files[0] ('lie.npy')" in message
    assert "declares" in message
