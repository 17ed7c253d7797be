"""Tests for solver.images.preprocess: grey, zero mean, local contrast normalisation, rescale, validation."""

import itertools
import json

import numpy as np
import pydantic
import pytest

from solver.images.preprocess import PreprocessConfig, PreprocessStats, apply_preprocess, fit_preprocess
from tests.solver.contracts import dtype_tol

ONLY_LCN = {"zero_mean": False, "rescale": False, "contrast_normalise": True}
NOTHING = {"zero_mean": False, "rescale": False}


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20100613)


@pytest.fixture(params=[np.float32, np.float64], ids=["float32", "float64"])
def dtype(request) -> type:
    return request.param


def _reference_lcn(images: np.ndarray, size: int, sigma: float, floor: str, divisive: bool) -> np.ndarray:
    """Direct LCN of (N, C, H, W) float64 images with explicit loops over pixels and window taps.

    The window is a Gaussian normalised to sum 1; the padding is numpy.pad mode 'symmetric' (edge pixel
    repeated), which is scipy.ndimage mode 'reflect' as used by solver.images.preprocess.
    """
    r = size // 2
    offsets = np.arange(size) - r
    window = np.exp(-(offsets[:, None] ** 2 + offsets[None, :] ** 2) / (2.0 * sigma**2))
    window /= window.sum()

    def local_mean(a: np.ndarray) -> np.ndarray:
        padded = np.pad(a, ((0, 0), (0, 0), (r, r), (r, r)), mode="symmetric")
        out = np.zeros_like(a)
        for n, c, y, x in itertools.product(*map(range, a.shape)):
            out[n, c, y, x] = sum(
                window[u, v] * padded[n, c, y + u, x + v] for u, v in itertools.product(range(size), repeat=2)
            )
        return out

    centred = images - local_mean(images)
    if not divisive:
        return centred
    local_std = np.sqrt(local_mean(centred**2))
    if floor == "one":
        divisor = np.maximum(local_std, 1.0)
    else:
        medians = np.array([max(np.median(local_std[n]), 1e-4) for n in range(images.shape[0])])
        divisor = np.maximum(local_std, medians[:, None, None, None])
    return centred / divisor


def test_grey_matches_luma_weighted_sum(rng, dtype):
    images = rng.uniform(size=(2, 3, 4, 5)).astype(dtype)
    out, _ = fit_preprocess(images, PreprocessConfig(grey=True, **NOTHING))
    expected = 0.299 * images[:, 0] + 0.587 * images[:, 1] + 0.114 * images[:, 2]
    assert out.shape == (2, 1, 4, 5)
    assert out.dtype == dtype
    np.testing.assert_allclose(out[:, 0], expected, rtol=dtype_tol(dtype))


def test_grey_of_single_channel_is_identity(rng, dtype):
    images = rng.uniform(size=(2, 1, 4, 5)).astype(dtype)
    out, _ = fit_preprocess(images, PreprocessConfig(grey=True, **NOTHING))
    np.testing.assert_array_equal(out, images)


@pytest.mark.parametrize(("shape", "expected"), [((4, 5), (1, 1, 4, 5)), ((3, 4, 5), (3, 1, 4, 5))])
def test_grey_shapes_are_promoted_to_one_channel(rng, shape, expected):
    images = rng.uniform(size=shape)
    out, _ = fit_preprocess(images, PreprocessConfig(**NOTHING))
    assert out.shape == expected
    np.testing.assert_array_equal(out.reshape(shape), images)


def test_zero_mean_gives_zero_per_image_channel_means(rng, dtype):
    images = (rng.uniform(size=(3, 2, 6, 7)) + np.arange(6).reshape(3, 2, 1, 1)).astype(dtype)
    out, _ = fit_preprocess(images, PreprocessConfig(zero_mean=True, rescale=False))
    np.testing.assert_allclose(out.mean(axis=(2, 3)), 0.0, atol=dtype_tol(dtype))
    np.testing.assert_allclose(out, images - images.mean(axis=(2, 3), keepdims=True), atol=dtype_tol(dtype))


@pytest.mark.parametrize(("cn_size", "cn_sigma"), [(3, 0.8), (5, 1.591), (7, 2.5)])
@pytest.mark.parametrize("cn_floor", ["one", "median"])
@pytest.mark.parametrize("cn_divisive", [True, False])
def test_contrast_normalise_matches_direct_reference(rng, cn_size, cn_sigma, cn_floor, cn_divisive):
    images = rng.normal(scale=2.0, size=(2, 2, 9, 9))
    config = PreprocessConfig(
        cn_size=cn_size, cn_sigma=cn_sigma, cn_floor=cn_floor, cn_divisive=cn_divisive, **ONLY_LCN
    )
    out, _ = fit_preprocess(images, config)
    expected = _reference_lcn(images, cn_size, cn_sigma, cn_floor, cn_divisive)
    np.testing.assert_allclose(out, expected, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("cn_floor", ["one", "median"])
@pytest.mark.parametrize("cn_divisive", [True, False])
def test_contrast_normalise_constant_image_becomes_zero(dtype, cn_floor, cn_divisive):
    images = np.full((2, 3, 8, 8), 0.7, dtype=dtype)
    config = PreprocessConfig(cn_floor=cn_floor, cn_divisive=cn_divisive, **ONLY_LCN)
    out, _ = fit_preprocess(images, config)
    # Rounding in the local mean (~1e-16) is divided by the 1e-4 floor of the flat image's median std.
    np.testing.assert_allclose(out, 0.0, atol=1e-9)


@pytest.mark.parametrize("shape", [(5, 5), (2, 7, 11), (3, 3, 13, 6)])
def test_contrast_normalise_keeps_image_shape(rng, dtype, shape):
    images = rng.uniform(size=shape).astype(dtype)
    out, _ = fit_preprocess(images, PreprocessConfig(contrast_normalise=True, cn_size=5))
    assert out.shape[-2:] == shape[-2:]
    assert out.dtype == dtype


@pytest.mark.parametrize("shape", [(1, 1, 4, 9), (1, 1, 9, 4)])
def test_contrast_normalise_rejects_images_smaller_than_window(shape):
    with pytest.raises(ValueError, match="cn_size=5"):
        fit_preprocess(np.zeros(shape), PreprocessConfig(contrast_normalise=True, cn_size=5))


def test_rescale_output_spans_two_with_zero_mean(rng, dtype):
    images = rng.gamma(2.0, size=(4, 3, 6, 6)).astype(dtype)
    out, stats = fit_preprocess(images, PreprocessConfig(zero_mean=False, rescale=True))
    np.testing.assert_allclose(out.max() - out.min(), 2.0, rtol=dtype_tol(dtype))
    np.testing.assert_allclose(out.mean(dtype=np.float64), 0.0, atol=dtype_tol(dtype))
    assert stats.scale == pytest.approx((float(images.max()) - float(images.min())) / 2)


def test_rescale_symmetric_dataset_lies_in_unit_interval(rng, dtype):
    half = rng.normal(size=(3, 2, 5, 5)).astype(dtype)
    images = np.concatenate([half, -half])
    out, _ = fit_preprocess(images, PreprocessConfig(contrast_normalise=True, cn_size=3))
    assert out.min() >= -1 - dtype_tol(dtype)
    assert out.max() <= 1 + dtype_tol(dtype)
    np.testing.assert_allclose([out.min(), out.max()], [-1.0, 1.0], atol=dtype_tol(dtype))
    np.testing.assert_allclose(out.mean(dtype=np.float64), 0.0, atol=dtype_tol(dtype))


def test_constant_dataset_rescales_to_zeros(dtype):
    images = np.full((2, 1, 4, 4), 3.0, dtype=dtype)
    out, stats = fit_preprocess(images, PreprocessConfig(zero_mean=False, rescale=True))
    assert stats == PreprocessStats(shift=3.0, scale=1.0, mean=0.0)
    np.testing.assert_array_equal(out, np.zeros_like(images))


def test_stats_are_identity_when_rescale_disabled(rng):
    _, stats = fit_preprocess(rng.uniform(size=(2, 4, 4)), PreprocessConfig(rescale=False))
    assert stats == PreprocessStats.identity()
    assert stats.to_dict() == {"shift": 0.0, "scale": 1.0, "mean": 0.0}


@pytest.mark.parametrize(
    "options",
    [
        {},
        {"grey": True},
        {"contrast_normalise": True, "cn_floor": "one"},
        {"contrast_normalise": True, "cn_floor": "median", "cn_size": 3},
        {"contrast_normalise": True, "cn_divisive": False, "zero_mean": False},
    ],
)
def test_apply_with_fitted_stats_reproduces_fit_exactly(rng, dtype, options):
    images = rng.uniform(size=(3, 3, 7, 7)).astype(dtype)
    config = PreprocessConfig(**options)
    out, stats = fit_preprocess(images, config)
    np.testing.assert_array_equal(apply_preprocess(images, config, stats), out)
    np.testing.assert_array_equal(apply_preprocess(images, config, PreprocessStats.from_dict(stats.to_dict())), out)


def test_apply_uses_fitted_stats_on_new_images(rng, dtype):
    config = PreprocessConfig(zero_mean=False, rescale=True)
    images = rng.uniform(size=(3, 1, 5, 5)).astype(dtype)
    _, stats = fit_preprocess(images, config)
    new_images = 3 * images + 5
    out = apply_preprocess(new_images, config, stats)
    refit, _ = fit_preprocess(new_images, config)
    np.testing.assert_array_equal(out, (new_images - stats.shift) / stats.scale - stats.mean)
    assert out.max() > 5.0
    assert not np.allclose(out, refit)


def test_stats_dict_round_trip_is_json_able():
    stats = PreprocessStats(shift=-0.25, scale=1.5, mean=0.125)
    data = json.loads(json.dumps(stats.to_dict()))
    assert PreprocessStats.from_dict(data) == stats


@pytest.mark.parametrize(
    ("data", "name"),
    [
        ({"shift": 0.0, "scale": 0.0, "mean": 0.0}, "scale"),
        ({"shift": float("nan"), "scale": 1.0, "mean": 0.0}, "shift"),
        ({"shift": 0.0, "scale": 1.0}, "keys"),
        ({"shift": 0.0, "scale": 1.0, "mean": 0.0, "extra": 1.0}, "keys"),
    ],
)
def test_stats_reject_invalid_values(data, name):
    with pytest.raises(ValueError, match=name):
        PreprocessStats.from_dict(data)


@pytest.mark.parametrize("options", [{}, {"grey": True}, {"contrast_normalise": True}, NOTHING])
def test_output_dtype_follows_float_input(rng, dtype, options):
    images = rng.uniform(size=(2, 3, 6, 6)).astype(dtype)
    out, _ = fit_preprocess(images, PreprocessConfig(**options))
    assert out.dtype == dtype


@pytest.mark.parametrize("int_dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("zero_mean", [False, True])
def test_integer_input_becomes_float32_in_unit_interval_first(rng, int_dtype, zero_mean):
    top = np.iinfo(int_dtype).max
    images = rng.integers(0, top, size=(2, 1, 4, 4), endpoint=True).astype(int_dtype)
    out, _ = fit_preprocess(images, PreprocessConfig(zero_mean=zero_mean, rescale=False))
    unit = images.astype(np.float64) / top
    expected = unit - unit.mean(axis=(2, 3), keepdims=True) if zero_mean else unit
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, expected, atol=dtype_tol(np.float32))


@pytest.mark.parametrize("wide", [np.int32, np.int64, np.uint32, np.uint64])
def test_wide_integer_input_is_taken_as_its_values_as_floats_are(rng, wide):
    """np.save of Python integers writes int64: 8-bit pixels in it are 0..255, not 0..255/9.2e18 (zeros)."""
    pixels = rng.integers(0, 256, size=(2, 1, 8, 8))
    config = PreprocessConfig(contrast_normalise=True, rescale=False)
    out, _ = fit_preprocess(pixels.astype(wide), config)
    expected, _ = fit_preprocess(pixels.astype(np.float32), config)
    assert out.dtype == np.float32 and np.abs(out).max() > 0.1
    np.testing.assert_array_equal(out, expected)


def test_input_array_is_not_modified(rng):
    images = rng.uniform(size=(2, 3, 6, 6))
    original = images.copy()
    fit_preprocess(images, PreprocessConfig(grey=True, contrast_normalise=True))
    np.testing.assert_array_equal(images, original)


def test_config_is_frozen():
    config = PreprocessConfig()
    with pytest.raises(pydantic.ValidationError):
        config.grey = True


def test_config_forbids_extra_fields():
    with pytest.raises(pydantic.ValidationError, match="colour"):
        PreprocessConfig(colour=True)


@pytest.mark.parametrize(
    ("options", "name"),
    [
        ({"cn_size": 4}, "cn_size"),
        ({"cn_size": 1}, "cn_size"),
        ({"cn_size": 0}, "cn_size"),
        ({"cn_sigma": 0.0}, "cn_sigma"),
        ({"cn_sigma": -1.0}, "cn_sigma"),
        ({"cn_sigma": float("nan")}, "cn_sigma"),
        ({"cn_floor": "mean"}, "cn_floor"),
    ],
)
def test_config_rejects_invalid_window(options, name):
    with pytest.raises(pydantic.ValidationError, match=name):
        PreprocessConfig(**options)


@pytest.mark.parametrize(
    "config",
    [
        PreprocessConfig(),
        PreprocessConfig(grey=True, contrast_normalise=True, cn_size=13, cn_sigma=4.77, cn_floor="median"),
        PreprocessConfig(contrast_normalise=True, cn_floor="one", cn_divisive=False, rescale=False),
    ],
)
def test_config_json_round_trip(config):
    assert PreprocessConfig.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    ("images", "options"),
    [
        (np.array([[[[0.0, np.nan], [1.0, 2.0]]]]), {}),
        (np.array([[[[0.0, np.inf], [1.0, 2.0]]]]), {}),
        (np.zeros((1, 1, 1, 2, 2)), {}),
        (np.zeros(4), {}),
        (np.zeros((0, 1, 4, 4)), {}),
        (np.zeros((1, 1, 4, 4), dtype=np.complex64), {}),
        (np.zeros((1, 2, 4, 4)), {"grey": True}),
    ],
    ids=["nan", "inf", "rank5", "rank1", "empty", "complex", "grey-two-channels"],
)
def test_bad_images_raise_value_error_naming_argument(images, options):
    with pytest.raises(ValueError, match="images"):
        fit_preprocess(images, PreprocessConfig(**options))
