"""Dictionary learning: planted recovery, monotone objective, determinism, dtypes, presets, the demo."""

from __future__ import annotations

import numpy as np
import pytest

from solver import (
    FilterUpdateConfig,
    PreprocessConfig,
    encode_layers,
    encode_with,
    learn,
    learn_layer,
    load_config,
    objective,
    reconstruct,
)
from solver.algorithms.recentre import centring_shifts, roll_state, shift_filters
from solver.config import AdmmConfig, ZeilerConfig
from solver.models.learn import initial_filters


def planted(seed: int, *, n_images=16, n_filters=4, size=5, side=32, density=0.01):
    """Images synthesised from random unit-norm filters and sparse maps with amplitudes ±[1, 2].

    The stream is keyed [seed, 2026] so that it never coincides with learn()'s initial filters, which are the
    first draw of ``default_rng(seed)``: with a shared stream, learning would start at the true filters.
    """
    rng = np.random.default_rng([seed, 2026])
    D = rng.standard_normal((n_filters, 1, size, size))
    D /= np.sqrt((D**2).sum(axis=(1, 2, 3), keepdims=True))
    shape = (n_images, n_filters, side, side)
    amplitude = rng.choice([-1.0, 1.0], size=shape) * rng.uniform(1, 2, size=shape)
    Z = amplitude * (rng.random(shape) < density)
    return D, reconstruct(Z, D)


def best_correlations(learned: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """For each true filter, the best |normalised correlation| with a learned one (sign and order free)."""
    a = learned.reshape(len(learned), -1)
    b = truth.reshape(len(truth), -1)
    c = np.abs(a @ b.T) / np.outer(np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1))
    return c.max(axis=0)


@pytest.fixture(scope="module")
def small_images():
    rng = np.random.default_rng(7)
    D, y = planted(3, n_images=3, side=16, density=0.03)
    return (y + 0.01 * rng.standard_normal(y.shape)).astype(np.float64)


def perturbed(truth: np.ndarray, seed: int, noise: float) -> np.ndarray:
    """Unit-norm filters `truth` + `noise`·(their RMS)·N(0, 1), from an independent stream."""
    rng = np.random.default_rng([seed, 7])
    f = truth + noise * np.sqrt((truth**2).mean()) * rng.standard_normal(truth.shape)
    return f / np.sqrt((f**2).sum(axis=(1, 2, 3), keepdims=True))


# From random initial filters, plain learning rarely recovers every planted filter on these problems (0 of 8
# instances on four configurations, for SPORCO's ConvBPDNDictLearn too on the instances tried): the learners
# end in local minima of truncated, shifted copies of the planted filters. Here learning converges to them from
# a start well inside their basin but far from them (correlations about 0.5 to 0.8); with
# FilterUpdateConfig(recentre=True) it does from its own random start (the tests below).
@pytest.mark.parametrize("data_seed", [0, 1])
@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_learn_recovers_planted_filters_from_a_perturbed_start(method, data_seed):
    D, y = planted(data_seed)
    start = perturbed(D, data_seed, 1.2)
    assert best_correlations(start, D).min() < 0.85  # learning has work to do
    result = learn(y, 4, 5, 0.1, n_iter=40, method=method, init_filters=start)
    assert best_correlations(result.filters, D).min() >= 0.9


# Measured with recentre=True, 4 planted 5x5 filters: admm n_iter=40 and fista n_iter=80 recover all four on
# 16 of 16 instances (data seeds 0-7, two learn seeds each), zeiler n_iter=80 on 8 of 8 (data seeds 0-3); at
# n_iter=40 fista and zeiler are not yet converged (7 and 6 of 8). Without re-centring, the wide support alone
# gave 2 of 8, re-centring on the s×s support alone 0 of 8.
@pytest.mark.parametrize(("data_seed", "seed"), [(0, 1), (1, 0), (3, 1)])
def test_recentred_learning_recovers_planted_filters_from_its_random_start(data_seed, seed):
    D, y = planted(data_seed)
    assert best_correlations(initial_filters(4, 1, 5, seed=seed, norm="filter"), D).min() < 0.5
    result = learn(y, 4, 5, 0.1, n_iter=80, method="fista", seed=seed, filter_update=FilterUpdateConfig(recentre=True))
    assert result.filters.shape == (4, 1, 5, 5)
    assert best_correlations(result.filters, D).min() >= 0.9
    E = objective(y, result.maps, result.filters, 0.1)
    assert E == pytest.approx(result.history[-1], rel=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("data_seed", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize(("method", "n_iter"), [("admm", 40), ("zeiler", 80)])
def test_recentred_learning_recovers_planted_filters_with_every_method(method, n_iter, data_seed, seed):
    D, y = planted(data_seed)
    result = learn(
        y, 4, 5, 0.1, n_iter=n_iter, method=method, seed=seed, filter_update=FilterUpdateConfig(recentre=True)
    )
    assert best_correlations(result.filters, D).min() >= 0.9


def test_recentring_keeps_the_model_when_no_energy_leaves_the_support():
    rng = np.random.default_rng(4)
    filters = np.zeros((3, 2, 7, 7))
    filters[:, :, :4, 2:6] = rng.standard_normal((3, 2, 4, 4))  # off-centre by about (1.5, 0.5)
    maps = rng.standard_normal((2, 3, 16, 16)) * (rng.random((2, 3, 16, 16)) < 0.1)
    shifts = centring_shifts(filters)
    assert shifts.any()
    moved = shift_filters(filters, shifts)
    np.testing.assert_allclose(np.sort(np.abs(moved).ravel()), np.sort(np.abs(filters).ravel()))
    rolled = roll_state({"maps": maps, "warm": None}, shifts)["maps"]
    np.testing.assert_allclose(reconstruct(rolled, moved), reconstruct(maps, filters), atol=1e-12)
    assert not centring_shifts(moved).any()


def test_recentring_needs_the_circular_boundary():
    with pytest.raises(ValueError, match="recentre"):
        learn(
            np.ones((2, 16, 16)), 2, 3, 0.1, n_iter=1, boundary="valid", filter_update=FilterUpdateConfig(recentre=True)
        )


@pytest.mark.parametrize("boundary", ["circular", "valid"])
@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_learn_objective_never_increases(small_images, method, boundary):
    result = learn(small_images, 4, 5, 0.1, n_iter=8, method=method, boundary=boundary)
    h = np.array(result.history)
    assert np.all(np.diff(h) <= 1e-10 * np.abs(h[:-1]))
    assert h[-1] < h[0]


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_learn_result_is_consistent(small_images, boundary):
    result = learn(small_images, 4, 5, 0.1, n_iter=4, boundary=boundary)
    E = objective(small_images, result.maps, result.filters, 0.1, boundary=boundary)
    assert E == pytest.approx(result.history[-1], rel=1e-10)
    expected_side = 16 if boundary == "circular" else 20
    assert result.maps.shape == (3, 4, expected_side, expected_side)


@pytest.mark.parametrize("norm", ["plane", "filter"])
def test_learned_filters_are_feasible(norm):
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 3, 12, 12))
    result = learn(y, 3, 3, 0.2, n_iter=3, filter_norm=norm)
    axes = (2, 3) if norm == "plane" else (1, 2, 3)
    norms = np.sqrt((result.filters.astype(np.float64) ** 2).sum(axis=axes))
    assert np.all(norms <= 1 + 1e-5)


def test_zeiler_cg_update_normalises_every_plane_to_one():
    rng = np.random.default_rng(0)
    y = rng.standard_normal((2, 3, 12, 12))
    cg = FilterUpdateConfig(method="cg", max_iter=2, norm="plane")
    result = learn(y, 3, 3, 0.5, n_iter=2, method=ZeilerConfig(z_solver="cg"), filter_update=cg)
    norms = np.sqrt((result.filters.astype(np.float64) ** 2).sum(axis=(2, 3)))
    np.testing.assert_allclose(norms, 1.0, rtol=1e-5)


def test_learn_is_deterministic_for_a_seed(small_images):
    a = learn(small_images, 4, 5, 0.1, n_iter=3, seed=5)
    b = learn(small_images, 4, 5, 0.1, n_iter=3, seed=5)
    c = learn(small_images, 4, 5, 0.1, n_iter=3, seed=6)
    np.testing.assert_array_equal(a.filters, b.filters)
    assert a.history == b.history
    assert not np.allclose(a.filters, c.filters)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_learn_keeps_the_dtype(small_images, dtype):
    result = learn(small_images.astype(dtype), 4, 5, 0.1, n_iter=2)
    assert result.filters.dtype == dtype
    assert result.maps.dtype == dtype


def test_learn_float32_and_float64_agree_on_the_objective(small_images):
    h32 = learn(small_images.astype(np.float32), 4, 5, 0.1, n_iter=3).history
    h64 = learn(small_images, 4, 5, 0.1, n_iter=3).history
    np.testing.assert_allclose(h32, h64, rtol=1e-3)


def test_learn_calls_back_every_outer_iteration(small_images):
    seen = []
    result = learn(small_images, 4, 5, 0.1, n_iter=4, callback=seen.append)
    assert [s.iteration for s in seen] == [1, 2, 3, 4]
    assert [s.objective for s in seen] == result.history
    assert all(0 <= s.sparsity <= 1 and s.elapsed >= 0 for s in seen)


def test_learn_with_connectivity_leaves_disconnected_planes_zero():
    rng = np.random.default_rng(1)
    y = rng.standard_normal((2, 3, 12, 12)).astype(np.float32)
    result = learn(y, 6, 3, 0.2, n_iter=3, connectivity="singles-and-doubles")
    assert result.connectivity.shape == (6, 3)
    assert np.all(result.filters[~result.connectivity] == 0)
    assert np.all(np.abs(result.filters[result.connectivity]).sum(axis=(1, 2)) > 0)


def test_preprocessing_is_kept_and_repeated_by_encode_with():
    rng = np.random.default_rng(2)
    images = rng.integers(0, 256, size=(3, 1, 20, 20)).astype(np.uint8)
    config = PreprocessConfig(contrast_normalise=True)
    result = learn(images, 4, 5, 0.2, n_iter=2, preprocess=config)
    assert result.preprocess is not None
    new = rng.integers(0, 256, size=(2, 1, 20, 20)).astype(np.uint8)
    encoded = encode_with(result, new, max_iter=20)
    expected = result.preprocess.apply(new)
    assert encoded.objective == pytest.approx(objective(expected, encoded.maps, result.filters, 0.2), rel=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"n_filters": 0}, "n_filters"),
        ({"filter_size": 40}, "filter_size"),
        ({"lam": 0.0}, "lam"),
        ({"p": 2.0}, "p"),
        ({"n_iter": 0}, "n_iter"),
        ({"init_filters": np.zeros((2, 1, 3, 3))}, "init_filters"),
        ({"connectivity": "sideways"}, "connectivity"),
    ],
)
def test_learn_rejects_bad_input_naming_it(kwargs, name):
    args = {"n_filters": 4, "filter_size": 3, "lam": 0.1, "n_iter": 1} | kwargs
    with pytest.raises(ValueError, match=name):
        learn(np.ones((2, 16, 16)), **args)


@pytest.mark.parametrize("preset", ["quick.yaml", "zeiler2010-layer1.yaml"])
def test_presets_validate_and_run(preset):
    config = load_config(preset)
    short = config.model_copy(update={"n_iter": 2})
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(2, 3, 24, 24)).astype(np.uint8)
    result = learn_layer(images, short)
    layer = config.layers[0]
    assert result.filters.shape[::2] == (layer.n_filters, layer.filter_size)
    assert len(result.history) == 2


def test_zeiler_preset_has_the_toolbox_defaults():
    config = load_config("zeiler2010-layer1")
    layer = config.layers[0]
    assert (layer.n_filters, layer.filter_size, layer.p) == (9, 7, 0.8)
    assert config.inference.method == "zeiler"
    assert (config.inference.beta0, config.inference.beta_factor, config.inference.n_beta) == (1.0, 10.0, 6)
    assert config.preprocess.contrast_normalise and config.filter_update.norm == "plane"


def test_an_explicit_inference_config_keeps_its_iteration_count(small_images):
    result = learn(small_images, 4, 5, 0.1, n_iter=1, method=AdmmConfig(max_iter=7))
    assert result.stats[0].inner_iter == 7
    assert result.config.inference.max_iter == 7
    assert learn(small_images, 4, 5, 0.1, n_iter=1, method="admm").stats[0].inner_iter == 10


def test_a_learn_result_is_a_one_layer_model(small_images):
    result = learn(small_images, 4, 5, 0.1, n_iter=2)
    model = result.model
    assert model.n_layers == 1 and model.boundary == "circular"
    np.testing.assert_array_equal(model.layers[0].filters, result.filters)
    by_model = encode_layers(model, small_images, method="fista", max_iter=5).maps[0]
    np.testing.assert_array_equal(by_model, encode_with(result, small_images, method="fista", max_iter=5).maps)


@pytest.mark.parametrize(("boundary", "schedule"), [("circular", "auto"), ("circular", "alternate"), ("valid", "auto")])
def test_learning_in_any_units_above_unit_range_gives_the_same_filters(boundary, schedule):
    # images in pixel units (0..255) with λ in the same units are the same problem as in [0, 1]: the default
    # penalties of the coding and of the consensus filter steps must not read the units
    rng = np.random.default_rng(2)
    images = rng.standard_normal((3, 1, 20, 20))
    images /= np.abs(images).max(axis=(1, 2, 3), keepdims=True)
    kwargs = {"n_iter": 4, "boundary": boundary, "schedule": schedule, "seed": 1}
    if schedule == "alternate":
        kwargs["filter_update"] = "consensus"
    ref = learn(images, 4, 5, 0.1, **kwargs)
    big = learn(255.0 * images, 4, 5, 25.5, **kwargs)
    np.testing.assert_allclose(big.filters, ref.filters, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(np.array(big.history) / 255.0**2, ref.history, rtol=1e-7)
