"""The pictures module (solver.images.pictures): filter montages, image sheets, objective curves and their PNG
encoding, checked by decoding the PNGs again."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from solver.images.pictures import filter_montage, history_plot, image_sheet, png_bytes, side_by_side


def _decode(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)))


def test_filter_montage_has_one_tile_per_filter():
    filters = np.zeros((5, 1, 3, 3))
    filters[:, 0, 1, 1] = 1.0  # a bright centre per filter
    picture = filter_montage(filters, scale=1, pad=1, n_cols=3)
    assert picture.shape == (2 * 4 + 1, 3 * 4 + 1)
    centres = picture[2::4, 2::4]  # the centre tap of each tile position
    assert np.count_nonzero(centres == 1.0) == 5 + 1  # five tiles plus the empty (white) sixth slot


def test_png_bytes_round_trips_a_grey_and_a_colour_picture(rng):
    grey = rng.random((5, 7))
    colour = rng.random((4, 3, 3))
    np.testing.assert_array_equal(_decode(png_bytes(grey)), (grey * 255).round().astype(np.uint8))
    np.testing.assert_array_equal(_decode(png_bytes(colour)), (colour * 255).round().astype(np.uint8))


def test_png_bytes_clips_values_outside_the_unit_range():
    picture = np.array([[-0.5, 0.0], [1.0, 1.5]])
    np.testing.assert_array_equal(_decode(png_bytes(picture)), [[0, 0], [255, 255]])


def test_side_by_side_scales_each_image_to_its_own_range():
    row = side_by_side(np.array([[0.0, 2.0]]), np.array([[10.0, 30.0]]), pad=1)
    np.testing.assert_array_equal(row, [[0.0, 1.0, 1.0, 0.0, 1.0]])


def test_image_sheet_has_one_row_per_image_up_to_max_rows(rng):
    inputs, recon = rng.random((3, 2, 4, 5)), rng.random((3, 2, 4, 5))
    sheet = image_sheet(inputs, recon)
    # three rows of 4 pixels with 4-pixel white gaps; an input, a 4-pixel gap and its reconstruction per row
    assert sheet.shape == (3 * 4 + 2 * 4, 5 + 4 + 5)
    assert image_sheet(inputs, recon, max_rows=2).shape == (2 * 4 + 4, 5 + 4 + 5)
    np.testing.assert_array_equal(sheet[4:8], 1.0)  # the gap between the first two rows is white


def test_image_sheet_refuses_columns_of_different_lengths(rng):
    with pytest.raises(ValueError):
        image_sheet(rng.random((3, 1, 4, 4)), rng.random((2, 1, 4, 4)))


def test_history_plot_draws_one_panel_per_layer():
    pytest.importorskip("matplotlib")
    one = [{"layer": 1, "iteration": i, "objective": 10.0 / i} for i in range(1, 5)]
    two = one + [{"layer": 2, "iteration": i, "objective": 3.0 - 0.1 * i} for i in range(1, 5)]
    narrow, wide = _decode(history_plot(one)), _decode(history_plot(two))
    # figsize (4.5 · layers + 1.5) × 4 inches at 100 dpi
    assert narrow.shape[:2] == (400, 600) and wide.shape[:2] == (400, 1050)


def test_history_plot_writes_the_axis_label_and_title_it_is_given():
    # an online job's curves count batches or images read, not outer iterations
    pytest.importorskip("matplotlib")
    one = [{"layer": 1, "iteration": i, "objective": 10.0 / i} for i in range(1, 5)]
    plain = _decode(history_plot(one))
    for picture in (history_plot(one, xlabel="batch"), history_plot(one, title="held-out objective")):
        assert not np.array_equal(_decode(picture), plain)
