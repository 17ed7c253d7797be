"""Layer stacks (solver.models.stack): per-layer configs, a 2-layer learn on the sample images (both objectives
decrease, the layer-2 maps project to pixels of the images' shape, PSNR recorded), encoding and projection, pixel-space
filters, the model's round trip through arrays and JSON, and the zeiler2010 preset."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
import scipy.signal
from PIL import Image

from configs import sample_paths
from solver import (
    INTER_LAYER_PREPROCESS,
    LayerModel,
    LearnConfig,
    StackModel,
    encode_layers,
    layer_config,
    learn_layer,
    learn_stack,
    load_config,
    pixel_filters,
    project_down,
    psnr,
    reconstruct,
)
from solver.images.pictures import filter_montage
from solver.images.preprocess import FittedPreprocess, PreprocessConfig, PreprocessStats
from solver.models.stack.learning import check_stack
from solver.models.stack.projection import reconstruct_from, top_projections
from solver.operators.connectivity import connectivity_table
from solver.operators.convolution import map_shape
from solver.operators.pixel_path import LowerLayer, input_geometry

logger = logging.getLogger(__name__)


def _two_layers(boundary="valid", method="zeiler", filter_update="fista", n_iter=6, **extra) -> LearnConfig:
    inference = {"method": method} if method == "zeiler" else {"method": method, "max_iter": 10}
    return LearnConfig.model_validate(
        {
            "layers": [
                {"n_filters": 3, "filter_size": 5, "lam": 0.1, "p": 1.0},
                {"n_filters": 6, "filter_size": 5, "lam": 0.1, "p": 1.0, "connectivity": "singles-and-doubles"},
            ],
            "inference": inference,
            "filter_update": {"method": filter_update, "max_iter": 5},
            "n_iter": n_iter,
            "boundary": boundary,
            "preprocess": {"contrast_normalise": True, "cn_floor": "one"},
            **extra,
        }
    )


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    """Four 28×28 float32 crops of the bundled sample images, (4, 1, 28, 28) in [0, 1]."""
    paths = sample_paths()[:4]
    images = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in paths])
    return np.ascontiguousarray(images[:, None, 40:68, 40:68])


@pytest.fixture(
    scope="module", params=[("valid", "zeiler"), ("circular", "fista")], ids=["valid-zeiler", "circular-fista"]
)
def learned(request, crops):
    boundary, method = request.param
    return learn_stack(crops, _two_layers(boundary, method), backend="numpy")


# --- per-layer configs -----------------------------------------------------------------------------------------


def test_layer_config_gives_one_layer_with_the_stack_settings():
    config = _two_layers()
    first, second = layer_config(config, 0), layer_config(config, 1)
    assert first.layers == [config.layers[0]] and second.layers == [config.layers[1]]
    assert first.preprocess == config.preprocess
    assert second.preprocess == INTER_LAYER_PREPROCESS
    for one in (first, second):
        assert (one.inference, one.filter_update, one.n_iter, one.boundary, one.seed, one.dtype) == (
            config.inference,
            config.filter_update,
            config.n_iter,
            config.boundary,
            config.seed,
            config.dtype,
        )


def test_a_layer_may_run_its_own_number_of_outer_iterations():
    config = _two_layers()
    layers = [config.layers[0], config.layers[1].model_copy(update={"n_iter": config.n_iter + 3})]
    config = config.model_copy(update={"layers": layers})
    first, second = layer_config(config, 0), layer_config(config, 1)
    assert (first.n_iter, second.n_iter) == (config.n_iter, config.n_iter + 3)
    assert second.layers[0].n_iter is None  # the one-layer config counts on its own n_iter


def test_inter_layer_preprocess_is_the_toolbox_rescale_only():
    assert INTER_LAYER_PREPROCESS == PreprocessConfig(
        grey=False, zero_mean=False, contrast_normalise=False, rescale=True
    )


@pytest.mark.parametrize("index", [-1, 2, 1.0, True])
def test_layer_config_rejects_an_index_outside_the_stack(index):
    with pytest.raises(ValueError, match="index"):
        layer_config(_two_layers(), index)


def test_learn_layer_refuses_a_config_of_several_layers(crops):
    with pytest.raises(ValueError, match="learn_stack"):
        learn_layer(crops, _two_layers())


def test_a_stack_that_does_not_fit_is_refused_before_learning(crops):
    config = _two_layers().model_copy(
        update={"layers": [_two_layers().layers[0], _two_layers().layers[1].model_copy(update={"n_filters": 5})]}
    )
    with pytest.raises(ValueError, match=r"layers\.1\.connectivity.*singles-and-doubles"):
        learn_stack(crops, config)
    with pytest.raises(ValueError, match=r"layers\.0\.filter_size"):
        check_stack(_two_layers("circular"), 1, (4, 4))
    check_stack(_two_layers("circular"), 1, (5, 5))


# --- a 2-layer learn on the sample images ----------------------------------------------------------------------


def test_both_layers_objectives_decrease(learned):
    for history in learned.histories:
        h = np.asarray(history)
        assert len(h) == learned.config.n_iter
        assert np.all(np.diff(h) <= 1e-6 * np.abs(h[:-1]))  # projected-FISTA filter updates are monotone
        assert h[-1] < 0.95 * h[0]


def test_layer_two_learns_on_the_rescaled_layer_one_maps(learned):
    one, two = learned.layers
    assert two.preprocess.config == INTER_LAYER_PREPROCESS
    rescaled = two.preprocess.apply(one.maps)
    assert float(rescaled.max() - rescaled.min()) == pytest.approx(2.0, rel=1e-5)
    assert abs(float(rescaled.mean(dtype=np.float64))) < 1e-5
    assert two.filters.shape == (6, 3, 5, 5)
    np.testing.assert_array_equal(two.connectivity, connectivity_table("singles-and-doubles", 6, 3))
    assert np.all(two.filters[~two.connectivity] == 0)


def test_a_one_layer_run_on_the_saved_maps_reproduces_layer_two(learned):
    # what a distributed runner does: the layer's one-layer config on the maps of the layer below
    again = learn_layer(learned.layers[0].maps, layer_config(learned.config, 1), backend="numpy")
    np.testing.assert_array_equal(again.filters, learned.layers[1].filters)
    assert again.history == learned.layers[1].history


def test_layer_two_projects_to_the_images_shape_with_a_reported_psnr(learned, crops, record_property):
    model = learned.model
    preprocessed = model.layers[0].preprocess.apply(crops)
    projected = project_down(model, learned.layers[1].maps, 2)
    assert projected.shape == crops.shape
    assert projected.dtype == np.float32
    layer_two = psnr(preprocessed, projected)
    layer_one = psnr(preprocessed, project_down(model, learned.layers[0].maps, 1))
    logger.info(
        "%s: PSNR of the projection to pixels, layer 2 %.2f dB, layer 1 %.2f dB",
        learned.config.boundary,
        layer_two,
        layer_one,
    )
    record_property("psnr_layer2_db", round(layer_two, 2))
    record_property("psnr_layer1_db", round(layer_one, 2))
    assert layer_two > 15.0
    assert layer_one > layer_two - 3.0


def test_the_callback_receives_the_layer_number_and_the_stats(crops):
    seen = []
    learn_stack(
        crops[:2],
        _two_layers("circular", "fista", n_iter=2),
        backend="numpy",
        callback=lambda layer, stats: seen.append((layer, stats.iteration)),
    )
    assert seen == [(1, 1), (1, 2), (2, 1), (2, 2)]


def test_learn_stack_keeps_float64(crops):
    result = learn_stack(crops[:2].astype(np.float64), _two_layers("circular", "fista", n_iter=1), backend="numpy")
    assert all(r.filters.dtype == np.float64 and r.maps.dtype == np.float64 for r in result.layers)


# --- encoding and projection -----------------------------------------------------------------------------------


def test_encode_layers_then_project_down_approximates_the_preprocessed_input(learned, crops):
    model = learned.model
    maps = encode_layers(model, crops, method="fista", max_iter=50).maps
    grid_one = map_shape(crops.shape[-2:], 5, model.boundary)
    assert [m.shape for m in maps] == [(4, 3) + grid_one, (4, 6) + map_shape(grid_one, 5, model.boundary)]
    assert all(m.dtype == np.float32 for m in maps)
    preprocessed = model.layers[0].preprocess.apply(crops)
    assert psnr(preprocessed, project_down(model, maps[0], 1)) > 20.0
    assert psnr(preprocessed, project_down(model, maps[1], 2)) > 15.0
    # the layer-2 maps reconstruct the rescaled layer-1 maps they coded
    rescaled = model.layers[1].preprocess.apply(maps[0])
    recon = reconstruct(
        maps[1], model.layers[1].filters, boundary=model.boundary, connectivity=model.layers[1].connectivity
    )
    assert psnr(rescaled, recon) > 15.0


def test_encode_layers_stops_at_the_requested_layer(learned, crops):
    assert len(encode_layers(learned.model, crops[:1], layer=1, method="fista", max_iter=3).maps) == 1
    with pytest.raises(ValueError, match="layer"):
        encode_layers(learned.model, crops[:1], layer=3)


def _random_model(rng, boundary="valid", shift=0.3, mean=-0.2, scale=1.7, n_channels=1) -> StackModel:
    table = connectivity_table("singles-and-doubles", 6, 3)
    f1 = rng.standard_normal((3, n_channels, 4, 4)).astype(np.float32)
    f2 = (rng.standard_normal((6, 3, 3, 3)) * table[:, :, None, None]).astype(np.float32)
    rescale = FittedPreprocess(INTER_LAYER_PREPROCESS, PreprocessStats(shift=shift, scale=scale, mean=mean))
    return StackModel(
        (LayerModel(f1, np.ones((3, n_channels), bool), None, 0.1, 1.0), LayerModel(f2, table, rescale, 0.2, 0.8)),
        boundary,
    )


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_project_down_undoes_the_rescale_between_layers(rng, boundary):
    model = _random_model(rng, boundary)
    grid = map_shape(map_shape((9, 8), 4, boundary), 3, boundary)
    maps = rng.standard_normal((2, 6) + grid).astype(np.float32)
    f1, f2 = model.layers[0].filters, model.layers[1].filters
    g2 = model.layers[1].connectivity
    layer_one = (reconstruct(maps, f2, boundary=boundary, connectivity=g2) + (-0.2)) * 1.7 + 0.3
    expected = reconstruct(layer_one, f1, boundary=boundary)
    out = project_down(model, maps, 2)
    assert out.shape == (2, 1, 9, 8) and out.dtype == np.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())
    linear = reconstruct(reconstruct(maps, f2, boundary=boundary, connectivity=g2) * 1.7, f1, boundary=boundary)
    np.testing.assert_allclose(
        project_down(model, maps, 2, offset=False), linear, rtol=1e-5, atol=1e-5 * np.abs(linear).max()
    )


def test_project_down_rejects_maps_of_another_layer(rng):
    model = _random_model(rng)
    with pytest.raises(ValueError, match="layer 2"):
        project_down(model, np.zeros((1, 3, 10, 10), np.float32), 2)


# --- pixel-space filters ---------------------------------------------------------------------------------------


def test_pixel_filters_of_layer_one_are_its_filters(rng):
    model = _random_model(rng)
    np.testing.assert_allclose(pixel_filters(model, 1), model.layers[0].filters, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n_channels", [1, 3])
def test_pixel_filters_of_layer_two_are_the_composite_kernels(rng, n_channels):
    model = _random_model(rng, n_channels=n_channels)
    out = pixel_filters(model, 2)
    assert out.shape == (6, n_channels, 4 + 3 - 1, 4 + 3 - 1) and out.dtype == np.float32
    f1, f2, g2 = model.layers[0].filters, model.layers[1].filters, model.layers[1].connectivity
    expected = np.array(
        [
            [
                sum(1.7 * scipy.signal.convolve2d(f2[k, c], f1[c, c0]) for c in range(3) if g2[k, c])
                for c0 in range(n_channels)
            ]
            for k in range(6)
        ]
    )
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5 * np.abs(expected).max())


def test_pixel_filters_leave_out_the_rescale_offset(rng):
    a = pixel_filters(_random_model(rng, shift=0.0, mean=0.0), 2)
    b = pixel_filters(_random_model(np.random.default_rng(1234), shift=5.0, mean=-3.0), 2)
    c = pixel_filters(_random_model(np.random.default_rng(1234), shift=0.0, mean=0.0), 2)
    np.testing.assert_array_equal(b, c)
    assert a.shape == b.shape


def test_pixel_filters_of_a_learned_stack_make_a_montage(learned):
    filters = pixel_filters(learned.model, 2)
    assert filters.shape == (6, 1, 9, 9)
    picture = filter_montage(filters, scale=2)
    assert picture.ndim == 2 and 0.0 <= picture.min() and picture.max() <= 1.0
    assert picture.shape == ((2 * (9 + 1) + 1) * 2, (3 * (9 + 1) + 1) * 2)  # 6 tiles: 2 rows of 3


def test_montage_shows_colour_pixel_filters_in_colour(rng):
    picture = filter_montage(pixel_filters(_random_model(rng, n_channels=3), 2))
    assert picture.ndim == 3 and picture.shape[-1] == 3


# --- the model as arrays and JSON ------------------------------------------------------------------------------


def _through_files(arrays: dict, metadata: dict) -> tuple[dict, dict]:
    """What the job service does: each array through .npy bytes, the metadata through JSON text."""
    loaded = {}
    for name, a in arrays.items():
        buffer = io.BytesIO()
        np.save(buffer, a, allow_pickle=False)
        loaded[name] = np.load(io.BytesIO(buffer.getvalue()), allow_pickle=False)
    return loaded, json.loads(json.dumps(metadata))


def test_model_round_trips_through_arrays_and_json(learned, crops):
    model = learned.model
    arrays, metadata = model.to_arrays()
    assert set(arrays) == {"filters-L1", "connectivity-L1", "filters-L2", "connectivity-L2"}
    again = StackModel.from_arrays(*_through_files(arrays, metadata))
    assert again.boundary == model.boundary and again.n_layers == 2
    for a, b in zip(again.layers, model.layers, strict=True):
        np.testing.assert_array_equal(a.filters, b.filters)
        np.testing.assert_array_equal(a.connectivity, b.connectivity)
        assert (a.preprocess, a.lam, a.p) == (b.preprocess, b.lam, b.p)
    maps = encode_layers(model, crops[:1], method="fista", max_iter=5).maps
    np.testing.assert_array_equal(encode_layers(again, crops[:1], method="fista", max_iter=5).maps[1], maps[1])


def test_model_from_arrays_names_what_is_missing(learned):
    arrays, metadata = learned.model.to_arrays()
    del arrays["connectivity-L2"]
    with pytest.raises(ValueError, match="connectivity-L2"):
        StackModel.from_arrays(arrays, metadata)
    with pytest.raises(ValueError, match="layers"):
        StackModel.from_arrays(arrays, {"boundary": "valid"})


def test_model_refuses_layers_that_do_not_chain(rng):
    model = _random_model(rng)
    with pytest.raises(ValueError, match="layer 2 reads 3 channels but layer 1 gives 4 maps"):
        StackModel(
            (
                model.layers[0].__class__(np.zeros((4, 1, 3, 3), np.float32), np.ones((4, 1), bool), None, 0.1),
                model.layers[1],
            )
        )
    with pytest.raises(ValueError, match="connectivity"):
        LayerModel(np.zeros((2, 1, 3, 3), np.float32), np.ones((2, 1)), None, 0.1)


# --- the zeiler2010 preset -------------------------------------------------------------------------------------


def test_zeiler2010_preset_holds_the_toolbox_defaults():
    config = load_config("zeiler2010")
    first, second = config.layers
    assert (first.n_filters, first.filter_size, first.connectivity, first.p, first.lam) == (9, 7, "full", 0.8, 1.0)
    assert (second.n_filters, second.filter_size, second.connectivity, second.p, second.lam) == (
        45,
        7,
        "singles-and-doubles",
        0.8,
        1.0,
    )
    assert config.boundary == "valid" and config.inference.method == "zeiler"
    assert config.preprocess.contrast_normalise and config.preprocess.cn_size == 5
    assert config.preprocess.cn_floor == "one" and config.preprocess.rescale
    check_stack(config, 3, (100, 100))  # 9 RGB-reading maps, then 9 + 36 = 45 maps on 106x106 maps
    assert layer_config(config, 1).preprocess == INTER_LAYER_PREPROCESS


@pytest.mark.slow
def test_zeiler2010_preset_learns_two_layers_on_the_samples(record_property):
    # The toolbox's λ = 1 is tuned for 100×100 RGB images; on grey 64×64 crops it codes nothing, so λ = 0.1 here.
    config = load_config("zeiler2010")
    config = config.model_copy(
        update={"n_iter": 2, "layers": [s.model_copy(update={"lam": 0.1}) for s in config.layers]}
    )
    paths = sample_paths()[:4]
    images = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in paths])[:, None]
    images = np.ascontiguousarray(images[:, :, 32:96, 32:96])
    result = learn_stack(images, config, backend="numpy")
    assert [r.filters.shape for r in result.layers] == [(9, 1, 7, 7), (45, 9, 7, 7)]
    assert [r.maps.shape[-1] for r in result.layers] == [70, 76]
    assert all(h[-1] < h[0] for h in result.histories)
    model = result.model
    preprocessed = model.layers[0].preprocess.apply(images)
    projected = project_down(model, result.layers[1].maps, 2)
    assert projected.shape == images.shape
    value = psnr(preprocessed, projected)
    record_property("psnr_layer2_db", round(value, 2))
    logger.info("zeiler2010 preset: layer-2 projection PSNR %.2f dB", value)
    assert value > psnr(preprocessed, np.zeros_like(preprocessed)) + 1.0
    assert pixel_filters(model, 2).shape == (45, 1, 13, 13)


# --- the zeiler2011 preset -------------------------------------------------------------------------------------


def test_zeiler2011_preset_holds_the_2011_sizes():
    config = load_config("zeiler2011")
    first, second = config.layers
    assert config.reconstruct_to == "pixels" and config.inference.method == "fista" and config.boundary == "valid"
    assert (first.n_filters, first.filter_size, first.pool) == (15, 7, (1, 3, 3))
    assert (second.n_filters, second.filter_size, second.pool) == (50, 7, (1, 3, 3))
    assert (config.preprocess.cn_size, config.preprocess.cn_sigma, config.preprocess.cn_floor) == (13, 4.77, "median")
    check_stack(config, 1, (150, 150))  # 150 -> 156 -> 52 -> 58 -> 20, the toolbox's test sizes
    assert input_geometry([LowerLayer(np.zeros((15, 1, 7, 7)), None, (1, 3, 3))], 1, (150, 150), "valid") == (
        15,
        (52, 52),
    )
    assert layer_config(config, 1).preprocess is None  # layer 2 reads the preprocessed pixels of layer 1


@pytest.mark.slow
def test_zeiler2011_preset_learns_two_layers_on_the_samples(record_property):
    config = load_config("zeiler2011")
    config = config.model_copy(
        update={
            "n_iter": 3,
            "layers": [s.model_copy(update={"n_filters": n}) for s, n in zip(config.layers, (8, 12), strict=True)],
        }
    )
    paths = sample_paths()[:4]
    images = np.stack([np.asarray(Image.open(p).convert("L"), dtype=np.float32) / 255 for p in paths])[:, None]
    images = np.ascontiguousarray(images[:, :, 16:112, 16:112])
    result = learn_stack(images, config, backend="numpy")
    assert [r.maps.shape[-1] for r in result.layers] == [102, 40]  # 96 -> 102 -> 34 -> 40
    assert all(np.all(np.diff(h) <= 1e-5 * np.abs(h[:-1])) and h[-1] < h[0] for h in result.histories)
    model = result.model
    y = model.layers[0].preprocess.apply(images)
    values = [psnr(y, reconstruct_from(model, result.code, layer)) for layer in (1, 2)]
    record_property("psnr_db", [round(v, 2) for v in values])
    logger.info("zeiler2011 preset: PSNR of the reconstruction from layer 1 %.2f dB, from layer 2 %.2f dB", *values)
    assert min(values) > psnr(y, np.zeros_like(y)) + 3.0
    assert top_projections(model, result.code, 2).shape == (12, 1, 27, 27)  # 7·3 + 7 − 1


@pytest.mark.parametrize("side", [14, 16, 20, 40])
def test_a_top_projection_on_a_small_circular_grid_is_the_pixel_filter_whole(side):
    """On images narrower than twice the footprint the window wrapped around and held pixels twice: the tile cut
    the feature. It is now the pixel filter, scaled by the activation, for every map."""
    rng = np.random.default_rng(side)
    for _ in range(5):
        filters = [rng.standard_normal((2, 1, 7, 7)), rng.standard_normal((3, 2, 7, 7))]
        model = StackModel.from_layers(filters, [None, None], [None, None], [0.1, 0.1], [1.0, 1.0], boundary="circular")
        code = encode_layers(model, rng.standard_normal((1, 1, side, side)), method="fista", max_iter=5)
        tiles, kernels = top_projections(model, code, 2), pixel_filters(model, 2)
        for tile, kernel in zip(tiles, kernels, strict=True):
            if np.abs(tile).max() == 0:
                continue
            scale = np.vdot(tile, kernel) / np.vdot(kernel, kernel)
            np.testing.assert_allclose(tile, scale * kernel, atol=1e-9 * np.abs(tile).max())


@pytest.mark.parametrize(("side", "pool"), [(16, 3), (21, 5)])
def test_a_pooled_top_projection_holds_the_whole_projection_once(side, pool):
    from solver import StackCode, pool3d  # noqa: PLC0415

    ones = np.ones((1, 1, 3, 3))
    model = StackModel.from_layers(
        [ones, ones],
        [None, None],
        [None, None],
        [0.1, 0.1],
        [1.0, 1.0],
        boundary="circular",
        pool=[[1, pool, pool], None],
    )
    z1 = np.random.default_rng(0).standard_normal((1, 1, side, side))
    pooled, switches = pool3d(z1, (1, pool, pool))
    z2 = np.zeros((1, 1) + pooled.shape[2:])
    z2[0, 0, 1, 1] = 1.0
    code = StackCode([z1, z2], [switches, None])
    whole = reconstruct_from(model, code, 2, offset=False)
    tile = top_projections(model, code, 2)
    assert tile.sum() == pytest.approx(whole.sum()) and np.abs(tile).sum() == pytest.approx(np.abs(whole).sum())


def test_an_input_too_small_for_a_higher_layer_names_that_layer():
    model = StackModel.from_layers(
        [np.ones((2, 1, 3, 3)) / 3, np.ones((3, 2, 3, 3)) / 3],
        [None, None],
        [None, None],
        [0.1, 0.1],
        [1.0, 1.0],
        pool=[[1, 4, 4], None],
    )
    image = np.random.default_rng(0).standard_normal((1, 1, 8, 8))
    with pytest.raises(
        ValueError, match=r"^layer 2, whose input is layer 1's pooled maps of shape \(1, 2, 2, 2\): filters"
    ):
        encode_layers(model, image, method="fista", max_iter=3)


def test_a_footprint_smaller_than_its_tile_sits_alike_on_either_boundary():
    """A 2×2 footprint in a 5×5 tile: 2 rows before it and 1 after, for the circular crop as for the valid one."""
    from solver import StackCode  # noqa: PLC0415

    f = np.zeros((1, 1, 5, 5))
    f[0, 0, 1:3, 1:3] = 1.0
    tiles = []
    for boundary, side in (("circular", 20), ("valid", 24)):
        model = StackModel.from_layers([f], [None], [None], [0.1], [1.0], boundary=boundary)
        z = np.zeros((1, 1, side, side))
        z[0, 0, 10, 10] = 1.0
        tiles.append(top_projections(model, StackCode([z], [None]), 1)[0, 0])
    np.testing.assert_allclose(tiles[0], tiles[1], atol=1e-12)
    assert np.argwhere(np.abs(tiles[0]) > 0.5).tolist() == [[2, 2], [2, 3], [3, 2], [3, 3]]
