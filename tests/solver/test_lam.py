"""λ_max (the smallest λ whose p = 1 solution is all zero) against dense references and against encode itself, and
λ given relative to it in learning."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from solver import LayerSpec, LearnConfig, encode, lambda_max, learn, learn_stack, load_model
from solver.config import FistaConfig
from solver.images.preprocess import FittedPreprocess, PreprocessConfig
from solver.models.learn import initial_filters
from solver.models.shard import LocalPool, Shard
from solver.operators.pooling import pool_maps
from tests.reference import dense_conv_matrix, dense_path_matrices

TABLE = np.array([[True, False], [False, True], [True, True]])


@pytest.fixture
def problem(rng):
    """Two 2-channel 7x6 images and three 3x3 filters with a connectivity table, float64."""
    return rng.standard_normal((2, 2, 7, 6)), rng.standard_normal((3, 2, 3, 3))


@pytest.mark.parametrize("boundary", ["circular", "valid"])
@pytest.mark.parametrize("connectivity", [None, TABLE], ids=["full", "table"])
def test_lambda_max_is_the_largest_entry_of_the_dense_adjoint(problem, boundary, connectivity):
    images, filters = problem
    D = dense_conv_matrix(filters, (7, 6), boundary, connectivity)  # columns: maps of (H+s−1)(W+s−1) for valid
    expected = max(np.abs(D.T @ y.ravel()).max() for y in images)
    assert D.shape[1] == 3 * (9 * 8 if boundary == "valid" else 7 * 6)
    assert lambda_max(images, filters, boundary=boundary, connectivity=connectivity) == pytest.approx(
        expected, rel=1e-12
    )


@pytest.mark.parametrize("boundary", ["circular", "valid"])
@pytest.mark.parametrize(("factor", "zero"), [(1.001, True), (0.999, False)], ids=["above", "below"])
def test_encode_gives_all_zero_maps_exactly_above_lambda_max(problem, boundary, factor, zero):
    images, filters = problem
    lam = factor * lambda_max(images, filters, boundary=boundary, connectivity=TABLE)
    maps = encode(images, filters, lam, method="fista", boundary=boundary, connectivity=TABLE, max_iter=100).maps
    assert (np.count_nonzero(maps) == 0) == zero


def test_lambda_max_through_the_layers_below_matches_the_dense_path(rng):
    images = rng.standard_normal((2, 1, 8, 8))
    f1, f2 = rng.standard_normal((4, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))
    maps1 = encode(images, f1, 0.05, method="fista", max_iter=20).maps
    _, switches = pool_maps(maps1, (2, 2, 2))
    from solver.operators.pixel_path import LowerLayer  # noqa: PLC0415

    lower = [LowerLayer(f1, np.ones((4, 1), bool), (2, 2, 2))]
    got = lambda_max(images, f2, lower=lower, switches=[switches])
    R = dense_path_matrices([(f1, None, (2, 2, 2)), (f2, None, None)], [switches], (8, 8), "circular", 2)
    assert got == pytest.approx(max(np.abs(R[n].T @ images[n].ravel()).max() for n in range(2)), rel=1e-12)


def test_shards_give_the_same_lambda_max_as_all_the_images(problem):
    images, filters = problem
    config = LearnConfig(layers=[LayerSpec(n_filters=3, filter_size=3, lam=0.5, lam_scale="relative")])
    pool = LocalPool([Shard(images[:1], config, TABLE, "numpy"), Shard(images[1:], config, TABLE, "numpy")])
    assert max(pool.lambda_max(filters)) == lambda_max(images, filters, connectivity=TABLE)
    pool.set_lam(0.25)
    assert [s.penalty.lam for s in pool.shards] == [0.25, 0.25]
    assert pool.shards[0].layer.lam_scale == "absolute"


def test_lambda_max_keeps_float32(problem):
    images, filters = problem
    assert lambda_max(images.astype(np.float32), filters) == pytest.approx(lambda_max(images, filters), rel=1e-5)


def test_relative_lam_is_a_fraction_of_lambda_max_with_the_initial_filters(rng, tmp_path):
    images = rng.standard_normal((3, 1, 12, 12))
    pre = PreprocessConfig(contrast_normalise=False)
    result = learn(images, n_filters=3, filter_size=3, lam=0.2, lam_scale="relative", n_iter=2, seed=4, preprocess=pre)
    start = initial_filters(3, 1, 3, seed=4, norm="filter", dtype=np.float64)
    expected = lambda_max(FittedPreprocess.fit(images, pre)[0], start)
    assert result.lam_max == pytest.approx(expected, rel=1e-12)
    assert result.config.layers[0].lam == pytest.approx(0.2 * expected, rel=1e-12)
    assert result.config.layers[0].lam_scale == "absolute"  # what the shards and encode_with used
    layer = load_model(result.model.save(tmp_path / "m.deconv")).layers[0]
    assert (layer.lam_scale, layer.lam_max, layer.lam) == ("relative", result.lam_max, result.config.layers[0].lam)


def test_relative_lam_in_a_stack_is_resolved_per_layer(rng):
    config = LearnConfig(
        layers=[
            LayerSpec(n_filters=3, filter_size=3, lam=0.1),
            LayerSpec(n_filters=2, filter_size=3, lam=0.3, lam_scale="relative"),
        ],
        inference=FistaConfig(max_iter=5),
        n_iter=2,
    )
    model = learn_stack(rng.standard_normal((2, 1, 10, 10)), config).model
    first, second = model.layers
    assert (first.lam, first.lam_scale, first.lam_max) == (0.1, "absolute", None)
    assert second.lam_scale == "relative" and second.lam == pytest.approx(0.3 * second.lam_max, rel=1e-12)


@pytest.mark.parametrize("lam", [1.0, 2.5])
def test_a_relative_lam_of_one_or_more_is_refused(lam):
    with pytest.raises(ValidationError, match="must be below 1"):
        LayerSpec(n_filters=2, filter_size=3, lam=lam, lam_scale="relative")


def test_an_unknown_lam_scale_is_refused():
    with pytest.raises(ValidationError, match="lam_scale"):
        LayerSpec(n_filters=2, filter_size=3, lam=0.1, lam_scale="fraction")


def test_zero_images_have_no_relative_lam():
    with pytest.raises(ValueError, match="λ_max of the training input is 0"):
        learn(np.zeros((2, 1, 8, 8)), n_filters=2, filter_size=3, lam=0.5, lam_scale="relative", n_iter=1)
