"""Image files of a job: listing, header checks and loading (PNG grey and colour, NPY)."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from workers.distributed.images import ImageInfo, image_paths, inspect_images, list_images, load_images


def _png(path, array):
    Image.fromarray(array).save(path)
    return path


@pytest.fixture
def grey_and_colour(tmp_path, rng):
    grey = rng.integers(0, 256, (12, 10), dtype=np.uint8)
    colour = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    return [_png(tmp_path / "a.png", grey), _png(tmp_path / "b.png", colour)], grey, colour


def test_list_images_keeps_image_files_sorted_by_name(tmp_path):
    (tmp_path / "notes.txt").write_text("not an image")
    names = ["c.npy", "a.png", "b.JPG"]
    [(tmp_path / n).write_bytes(b"") for n in names]
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.npy"]


def test_list_images_refuses_a_folder_without_images(tmp_path):
    with pytest.raises(ValueError, match="no .png"):
        list_images(tmp_path)


def test_list_images_refuses_a_missing_folder(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        list_images(tmp_path / "missing")


def test_image_paths_keeps_files_in_order_and_expands_folders(tmp_path):
    (tmp_path / "folder").mkdir()
    [(tmp_path / "folder" / n).write_bytes(b"") for n in ["b.png", "a.png"]]
    (tmp_path / "z.png").write_bytes(b"")
    paths = image_paths([tmp_path / "z.png", tmp_path / "folder"])
    assert paths == [tmp_path / "z.png", tmp_path / "folder" / "a.png", tmp_path / "folder" / "b.png"]


def test_image_paths_names_a_missing_file(tmp_path):
    with pytest.raises(ValueError, match="no such image file or folder: '.*missing.png'"):
        image_paths([tmp_path / "missing.png"])


def test_grey_pictures_load_as_one_channel_uint8(tmp_path, rng):
    grey = rng.integers(0, 256, (2, 12, 10), dtype=np.uint8)
    paths = [_png(tmp_path / "a.png", grey[0]), _png(tmp_path / "b.png", grey[1])]
    info = inspect_images(paths)
    assert info == ImageInfo((1, 12, 10), "uint8")
    np.testing.assert_array_equal(load_images(paths, info), grey[:, None])


def test_a_colour_picture_makes_every_picture_rgb(grey_and_colour):
    paths, grey, colour = grey_and_colour
    info = inspect_images(paths)
    assert info == ImageInfo((3, 12, 10), "uint8")
    loaded = load_images(paths, info)
    np.testing.assert_array_equal(loaded[0], np.stack([grey] * 3))
    np.testing.assert_array_equal(loaded[1], np.moveaxis(colour, -1, 0))


def test_npy_images_load_with_their_dtype(tmp_path, rng):
    images = rng.standard_normal((3, 2, 8, 9))
    paths = [tmp_path / f"{i}.npy" for i in range(3)]
    list(map(np.save, paths, images))
    info = inspect_images(paths)
    assert info == ImageInfo((2, 8, 9), "float64")
    np.testing.assert_array_equal(load_images(paths[1:], info), images[1:])


def test_images_of_different_sizes_are_refused_naming_the_file(tmp_path, rng):
    paths = [_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8)), _png(tmp_path / "b.png", np.zeros((8, 9), np.uint8))]
    with pytest.raises(ValueError, match="b.png"):
        inspect_images(paths)


def test_an_unreadable_image_is_refused_naming_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        inspect_images([bad])


def _header_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width × height grey pixels (its data holds far fewer)."""
    import struct  # noqa: PLC0415
    import zlib  # noqa: PLC0415

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    data = chunk(b"IDAT", zlib.compress(b"\0" * 100))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + data + chunk(b"IEND", b"")


def test_a_header_past_pillows_bomb_limit_is_refused_naming_the_file(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(_header_claiming(100_000, 100_000))
    with pytest.raises(ValueError, match=r"cannot read image file .*bomb\.png.*DecompressionBombError"):
        inspect_images([_png(tmp_path / "a.png", np.zeros((8, 8), np.uint8)), bomb])


def test_a_truncated_picture_is_refused_when_loaded_naming_the_file(tmp_path, rng):
    whole = _png(tmp_path / "whole.png", rng.integers(0, 256, (32, 32), dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(whole.read_bytes()[:-60])  # the header is intact, the pixels are not
    info = inspect_images([whole, cut])
    with pytest.raises(ValueError, match=r"cannot read image file .*cut\.png.*OSError: image file is truncated"):
        load_images([whole, cut], info)


def test_load_images_names_the_files_that_hold_nan_or_inf(tmp_path):
    images = np.random.default_rng(0).standard_normal((4, 1, 8, 8)).astype(np.float32)
    images[1, 0, 2, 3], images[3, 0, 0, 0] = np.nan, np.inf
    paths = []
    for i, image in enumerate(images):
        np.save(tmp_path / f"x{i}.npy", image)
        paths.append(tmp_path / f"x{i}.npy")
    info = inspect_images(paths)
    np.testing.assert_array_equal(load_images([paths[0], paths[2]], info), images[[0, 2]])
    with pytest.raises(ValueError, match=r"x1\.npy', '[^']*x3\.npy'\] hold NaN or infinite values"):
        load_images(paths, info)


def test_a_16_bit_colour_png_is_refused_naming_it(tmp_path):
    from tests.workers.test_datasets import _png16  # noqa: PLC0415

    colour = tmp_path / "colour16.png"
    colour.write_bytes(_png16(2, 3))
    with pytest.raises(ValueError, match=r"colour16\.png' is a 16-bit colour PNG, which Pillow would read at 8 bits"):
        inspect_images([colour])
    grey = tmp_path / "grey16.png"
    grey.write_bytes(_png16(0, 1))
    assert inspect_images([grey]) == ImageInfo((1, 4, 5), "uint16")
