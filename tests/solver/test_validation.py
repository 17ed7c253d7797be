"""Tests for input validation of the public functions (solver.models.coding), the config models (solver.config) and the
connectivity tables (solver.operators.connectivity)."""

from __future__ import annotations

import re
import warnings
from itertools import combinations

import numpy as np
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from configs import preset_names
from solver import OnlineConfig, OnlineLearner, learn_online, objective, psnr
from solver.config import (
    AdmmConfig,
    FilterUpdateConfig,
    FistaConfig,
    LayerSpec,
    LearnConfig,
    ZeilerConfig,
    load_config,
)
from solver.models.coding import encode, reconstruct
from solver.models.learn import learn
from solver.operators.connectivity import connectivity_table, parse_table_name, singles_and_doubles_count
from solver.operators.linalg import stable_norm
from solver.validation import magnitude_limit

SHAPE = (8, 8)


@pytest.fixture
def images(rng) -> np.ndarray:
    return rng.standard_normal((2, 1) + SHAPE)


@pytest.fixture
def filters(rng) -> np.ndarray:
    return rng.standard_normal((3, 1, 3, 3))


@pytest.fixture
def maps(rng) -> np.ndarray:
    return rng.standard_normal((2, 3) + SHAPE)


def _with(a: np.ndarray, value: float) -> np.ndarray:
    out = a.copy()
    out.flat[1] = value
    return out


# --- encode ----------------------------------------------------------------------------------------------------
# Each case maps (images, filters, rng) to the arguments of encode(images, filters, lam, **kwargs).

ENCODE_CASES = {
    "nan in images": (lambda y, f, r: ((_with(y, np.nan), f, 0.1), {}), r"images.*NaN"),
    "inf in images": (lambda y, f, r: ((_with(y, np.inf), f, 0.1), {}), r"images.*inf"),
    "inf in filters": (lambda y, f, r: ((y, _with(f, np.inf), 0.1), {}), r"filters.*inf"),
    "nan in filters": (lambda y, f, r: ((y, _with(f, np.nan), 0.1), {}), r"filters.*NaN"),
    "images of rank 5": (lambda y, f, r: ((y[None], f, 0.1), {}), r"images.*shape"),
    "images of rank 1": (lambda y, f, r: ((y.ravel(), f, 0.1), {}), r"images.*shape"),
    "empty images": (lambda y, f, r: ((y[:0], f, 0.1), {}), r"images.*empty"),
    "complex images": (lambda y, f, r: ((y + 1j, f, 0.1), {}), r"images.*real"),
    "filters of rank 2": (lambda y, f, r: ((y, f[0, 0], 0.1), {}), r"filters.*shape"),
    "lam = 0": (lambda y, f, r: ((y, f, 0.0), {}), r"lam.*0"),
    "lam = -1": (lambda y, f, r: ((y, f, -1), {}), r"lam.*-1"),
    "lam = nan": (lambda y, f, r: ((y, f, np.nan), {}), r"lam.*nan"),
    "lam = inf": (lambda y, f, r: ((y, f, np.inf), {}), r"lam.*inf"),
    "lam a string": (lambda y, f, r: ((y, f, "big"), {}), r"lam.*big"),
    "p = 0": (lambda y, f, r: ((y, f, 0.1), {"p": 0.0}), r"p must.*0"),
    "p = 1.5": (lambda y, f, r: ((y, f, 0.1), {"p": 1.5}), r"p must.*1\.5"),
    "p = nan": (lambda y, f, r: ((y, f, 0.1), {"p": np.nan}), r"p must.*nan"),
    "filters larger than the image": (
        lambda y, f, r: ((y, r.standard_normal((3, 1, 9, 9)), 0.1), {}),
        r"filters.*9x9.*larger",
    ),
    "channel mismatch": (lambda y, f, r: ((r.standard_normal((2, 3) + SHAPE), f, 0.1), {}), r"filters.*channels.*3"),
    "non-square filters": (lambda y, f, r: ((y, r.standard_normal((3, 1, 3, 2)), 0.1), {}), r"filters.*square"),
    "unknown method": (lambda y, f, r: ((y, f, 0.1), {"method": "ista"}), r"method.*ista"),
    "unknown boundary": (lambda y, f, r: ((y, f, 0.1), {"boundary": "same"}), r"boundary.*same"),
    "unknown backend": (lambda y, f, r: ((y, f, 0.1), {"backend": "tpu"}), r"backend.*tpu"),
    "connectivity of the wrong shape": (
        lambda y, f, r: ((y, f, 0.1), {"connectivity": np.ones((3, 2), dtype=bool)}),
        r"connectivity.*\(3, 2\)",
    ),
    "connectivity not boolean": (
        lambda y, f, r: ((y, f, 0.1), {"connectivity": np.ones((3, 1))}),
        r"connectivity.*float64",
    ),
    "max_iter = 0": (lambda y, f, r: ((y, f, 0.1), {"max_iter": 0}), r"max_iter.*0"),
    "max_iter = -3": (lambda y, f, r: ((y, f, 0.1), {"max_iter": -3}), r"max_iter.*-3"),
    "max_iter not an integer": (lambda y, f, r: ((y, f, 0.1), {"max_iter": 2.5}), r"max_iter.*2\.5"),
    "tol = -1": (lambda y, f, r: ((y, f, 0.1), {"tol": -1}), r"tol.*-1"),
    "init of the wrong shape": (
        lambda y, f, r: ((y, f, 0.1), {"init": np.zeros((2, 3, 7, 7))}),
        r"init.*\(2, 3, 7, 7\)",
    ),
    "nan in init": (lambda y, f, r: ((y, f, 0.1), {"init": np.full((2, 3) + SHAPE, np.nan)}), r"init.*NaN"),
    "init of another rank and shape": (
        lambda y, f, r: ((y, f, 0.1), {"init": np.zeros((3,) + SHAPE)}),
        r"init must have shape \(2, 3, 8, 8\), got shape \(3, 8, 8\)",
    ),
    "tol = True": (lambda y, f, r: ((y, f, 0.1), {"tol": True}), r"tol.*True"),
    "tol with zeiler": (lambda y, f, r: ((y, f, 0.1), {"method": "zeiler", "tol": 1e-4}), r"tol.*zeiler.*0\.0001"),
    "float32 images past what their squares take": (
        lambda y, f, r: ((_with(y, 1e17).astype(np.float32), f, 0.1), {}),
        r"images holds values up to 1e\+17.*float32.*8x8.*compute in float64",
    ),
    "float32 init past what its squares take": (
        lambda y, f, r: ((y.astype(np.float32), f, 0.1), {"init": np.full((2, 3) + SHAPE, -1e17, np.float32)}),
        r"init holds values up to 1e\+17",
    ),
}


@pytest.mark.parametrize("case", list(ENCODE_CASES))
def test_encode_rejects_bad_input_naming_the_argument(rng, images, filters, case):
    build, match = ENCODE_CASES[case]
    args, kwargs = build(images, filters, rng)
    with pytest.raises(ValueError, match=match):
        encode(*args, **kwargs)


# --- reconstruct -----------------------------------------------------------------------------------------------
# Each case maps (maps, filters, rng) to the arguments of reconstruct(maps, filters, **kwargs).

RECONSTRUCT_CASES = {
    "nan in maps": (lambda z, f, r: ((_with(z, np.nan), f), {}), r"maps.*NaN"),
    "inf in filters": (lambda z, f, r: ((z, _with(f, np.inf)), {}), r"filters.*inf"),
    "maps of rank 5": (lambda z, f, r: ((z[None], f), {}), r"maps.*shape"),
    "maps of rank 2": (lambda z, f, r: ((z[0, 0], f), {}), r"maps.*shape"),
    "K mismatch": (lambda z, f, r: ((z, f[:2]), {}), r"K = 2.*K = 3"),
    "unknown boundary": (lambda z, f, r: ((z, f), {"boundary": "same"}), r"boundary.*same"),
    "non-square filters": (lambda z, f, r: ((z, r.standard_normal((3, 1, 3, 2))), {}), r"filters.*square"),
    "non-square grey filters": (
        lambda z, f, r: ((z, r.standard_normal((3, 1, 5))), {}),
        r"filters must be square .*got shape \(3, 1, 5\)",
    ),
    "connectivity of the wrong shape": (
        lambda z, f, r: ((z, f), {"connectivity": np.ones((2, 1), dtype=bool)}),
        r"connectivity.*\(2, 1\)",
    ),
    "filters larger than the maps (circular)": (
        lambda z, f, r: ((z, r.standard_normal((3, 1, 9, 9))), {}),
        r"filters.*larger",
    ),
    "maps smaller than the filters (valid)": (
        lambda z, f, r: ((z[..., :2, :2], f), {"boundary": "valid"}),
        r"maps.*smaller",
    ),
    "filters of Python objects": (
        lambda z, f, r: ((z, f.astype(object)), {}),
        r"filters must hold real numbers.*object",
    ),
    "ragged filters": (lambda z, f, r: ((z, [[[[1.0]]], [[[1.0, 2.0]]]]), {}), r"filters must be an array"),
    "float32 maps past what their squares take": (
        lambda z, f, r: ((_with(z, 1e17).astype(np.float32), f), {}),
        r"maps holds values up to 1e\+17.*float32",
    ),
}


@pytest.mark.parametrize("case", list(RECONSTRUCT_CASES))
def test_reconstruct_rejects_bad_input_naming_the_argument(rng, maps, filters, case):
    build, match = RECONSTRUCT_CASES[case]
    args, kwargs = build(maps, filters, rng)
    with pytest.raises(ValueError, match=match):
        reconstruct(*args, **kwargs)


# --- config models ---------------------------------------------------------------------------------------------

LAYER = {"n_filters": 8, "filter_size": 7, "lam": 0.1}
MODELS = {
    "ZeilerConfig": (ZeilerConfig, {}),
    "FistaConfig": (FistaConfig, {}),
    "AdmmConfig": (AdmmConfig, {}),
    "FilterUpdateConfig": (FilterUpdateConfig, {}),
    "LayerSpec": (LayerSpec, LAYER),
    "LearnConfig": (LearnConfig, {"layers": [LAYER]}),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_config_models_reject_extra_fields(name):
    model, base = MODELS[name]
    with pytest.raises(pydantic.ValidationError, match="surprise"):
        model(**base, surprise=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_config_models_are_frozen(name):
    model, base = MODELS[name]
    config = model(**base)
    field = next(iter(type(config).model_fields))
    with pytest.raises(pydantic.ValidationError):
        setattr(config, field, getattr(config, field))


@pytest.mark.parametrize("name", list(MODELS))
def test_config_models_round_trip_through_json(name):
    model, base = MODELS[name]
    config = model(**base)
    assert model.model_validate_json(config.model_dump_json()) == config


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (ZeilerConfig, {"beta0": 0.0}),
        (ZeilerConfig, {"beta0": -1.0}),
        (ZeilerConfig, {"beta_factor": 1.0}),
        (ZeilerConfig, {"n_beta": 0}),
        (ZeilerConfig, {"inner_iter": 0}),
        (ZeilerConfig, {"z_solver": "lu"}),
        (ZeilerConfig, {"cg_iter": 0}),
        (ZeilerConfig, {"method": "fista"}),
        (FistaConfig, {"max_iter": 0}),
        (FistaConfig, {"tol": -1e-3}),
        (FistaConfig, {"max_iter": 2.5}),
        (AdmmConfig, {"rho": 0.0}),
        (AdmmConfig, {"relax": 2.0}),
        (AdmmConfig, {"relax": 0.0}),
        (AdmmConfig, {"rho_period": 0}),
        (AdmmConfig, {"rho_ratio": 1.0}),
        (AdmmConfig, {"rho_scale": 0.5}),
        (AdmmConfig, {"max_iter": "many"}),
        (FilterUpdateConfig, {"method": "sgd"}),
        (FilterUpdateConfig, {"norm": "column"}),
        (LayerSpec, {**LAYER, "lam": 0.0}),
        (LayerSpec, {**LAYER, "lam": -0.1}),
        (LayerSpec, {**LAYER, "p": 0.0}),
        (LayerSpec, {**LAYER, "p": 1.5}),
        (LayerSpec, {**LAYER, "n_filters": 0}),
        (LayerSpec, {**LAYER, "filter_size": 0}),
        (LayerSpec, {**LAYER, "connectivity": "halves"}),
        (LayerSpec, {**LAYER, "connectivity": "random-doubles:x"}),
        (LearnConfig, {"layers": []}),
        (LearnConfig, {"layers": [LAYER], "n_iter": 0}),
        (LearnConfig, {"layers": [LAYER], "boundary": "same"}),
        (LearnConfig, {"layers": [LAYER], "inference": {"method": "ista"}}),
        (LearnConfig, {"layers": [LAYER], "inference": {"method": "fista", "beta0": 1.0}}),
        (LearnConfig, {"layers": [LAYER], "dtype": "float16"}),
        (LearnConfig, {"layers": [LAYER], "seed": -1}),
    ],
    ids=lambda x: x.__name__ if isinstance(x, type) else "-".join(f"{k}={v}" for k, v in x.items() if k != "layers"),
)
def test_config_models_reject_bad_values(model, values):
    with pytest.raises(pydantic.ValidationError):
        model(**values)


@pytest.mark.parametrize(
    ("model", "values"),
    [
        (LayerSpec, {**LAYER, "lam": float("inf")}),
        (ZeilerConfig, {"beta0": float("inf")}),
        (FistaConfig, {"tol": float("inf")}),
        (AdmmConfig, {"rho": float("inf")}),
    ],
    ids=["LayerSpec.lam", "ZeilerConfig.beta0", "FistaConfig.tol", "AdmmConfig.rho"],
)
def test_config_models_reject_infinite_numbers(model, values):
    with pytest.raises(pydantic.ValidationError):
        model(**values)


def test_learn_config_selects_the_inference_model_by_method():
    config = LearnConfig(layers=[LAYER], inference={"method": "zeiler", "n_beta": 3})
    assert isinstance(config.inference, ZeilerConfig)
    assert config.inference.n_beta == 3


def test_zeiler_config_max_iter_is_stages_times_inner_iterations():
    assert ZeilerConfig(n_beta=4, inner_iter=5).max_iter == 20


@settings(deadline=None, max_examples=25)
@given(
    config=st.one_of(
        st.builds(
            ZeilerConfig,
            beta0=st.floats(1e-3, 1e3),
            beta_factor=st.floats(1.01, 100.0),
            n_beta=st.integers(1, 20),
            inner_iter=st.integers(1, 50),
            z_solver=st.sampled_from(["exact", "cg"]),
            cg_iter=st.integers(1, 10),
        ),
        st.builds(FistaConfig, max_iter=st.integers(1, 10_000), tol=st.floats(0.0, 1.0)),
        st.builds(
            AdmmConfig,
            max_iter=st.integers(1, 10_000),
            tol=st.floats(0.0, 1.0),
            rho=st.none() | st.floats(1e-6, 1e6),
            relax=st.floats(0.01, 1.99),
            adaptive_rho=st.booleans(),
        ),
    )
)
def test_inference_configs_round_trip_through_json(config):
    assert type(config).model_validate_json(config.model_dump_json()) == config


@settings(deadline=None, max_examples=25)
@given(
    n_filters=st.integers(1, 64),
    filter_size=st.integers(1, 15),
    lam=st.floats(1e-6, 1e3),
    p=st.floats(0.05, 1.0),
    boundary=st.sampled_from(["circular", "valid"]),
    seed=st.integers(0, 2**31),
    method=st.sampled_from(["zeiler", "fista", "admm"]),
)
def test_learn_config_round_trips_through_json(n_filters, filter_size, lam, p, boundary, seed, method):
    config = LearnConfig(
        layers=[{"n_filters": n_filters, "filter_size": filter_size, "lam": lam, "p": p}],
        inference={"method": method},
        boundary=boundary,
        seed=seed,
    )
    assert LearnConfig.model_validate_json(config.model_dump_json()) == config


# --- YAML presets ----------------------------------------------------------------------------------------------

YAML_PRESET = """\
layers:
  - n_filters: 9
    filter_size: 7
    lam: 0.5
    p: 0.8
inference:
  method: zeiler
  beta0: 1.0
  n_beta: 4
n_iter: 3
boundary: valid
seed: 7
"""


def test_load_config_reads_a_yaml_file(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(YAML_PRESET, encoding="utf-8")
    config = load_config(path)
    assert isinstance(config, LearnConfig)
    assert config.layers[0].n_filters == 9
    assert config.layers[0].p == 0.8
    assert config.inference == ZeilerConfig(beta0=1.0, n_beta=4)
    assert config.boundary == "valid"
    assert config.seed == 7
    assert load_config(str(path)) == config


def test_load_config_rejects_a_yaml_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n", encoding="utf-8")
    with pytest.raises(ValueError, match="mapping"):
        load_config(path)


@pytest.mark.parametrize(
    ("text", "match"),
    [("layers: [\n", "not valid YAML"), ("layers:\n\t- n_filters: 3\n", "not valid YAML"), (b"\xff\xfe", "UTF-8")],
    ids=["unclosed list", "tab", "not utf-8"],
)
def test_load_config_names_a_file_that_is_not_yaml(tmp_path, text, match):
    path = tmp_path / "broken.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(ValueError, match=match) as err:
        load_config(path)
    assert "broken.yaml" in str(err.value)


def test_load_config_refuses_a_folder_and_an_empty_name(tmp_path):
    with pytest.raises(ValueError, match="cannot read the config file"):
        load_config(tmp_path)
    with pytest.raises(ValueError, match="empty name"):
        load_config("")


@pytest.mark.parametrize(
    "bad",
    [
        YAML_PRESET + "surprise: 1\n",
        YAML_PRESET.replace("lam: 0.5", "lam: -0.5"),
        YAML_PRESET.replace("method: zeiler", "method: ista"),
    ],
    ids=["extra field", "negative lam", "unknown method"],
)
def test_load_config_rejects_invalid_presets(tmp_path, bad):
    path = tmp_path / "bad.yaml"
    path.write_text(bad, encoding="utf-8")
    with pytest.raises(pydantic.ValidationError):
        load_config(path)


@pytest.mark.parametrize("preset", preset_names())
def test_shipped_presets_validate(preset):
    assert isinstance(load_config(preset), LearnConfig)


# --- connectivity tables ---------------------------------------------------------------------------------------


def test_singles_and_doubles_over_nine_inputs():
    table = connectivity_table("singles-and-doubles", 45, 9)
    assert singles_and_doubles_count(9) == 45
    assert table.shape == (45, 9)
    assert table.dtype == bool
    reads = table.sum(axis=1)
    np.testing.assert_array_equal(reads[:9], 1)
    np.testing.assert_array_equal(reads[9:], 2)
    np.testing.assert_array_equal(table[:9], np.eye(9, dtype=bool))
    pairs = [tuple(np.flatnonzero(row)) for row in table[9:]]
    assert pairs == list(combinations(range(9), 2))  # all 36 pairs, distinct, in lexicographic order


def test_singles_and_doubles_needs_the_matching_number_of_maps():
    with pytest.raises(ValueError, match="45"):
        connectivity_table("singles-and-doubles", 40, 9)


def test_full_connectivity_is_no_table():
    assert connectivity_table("full", 5, 3) is None


@pytest.mark.parametrize("k", [1, 2, 3])
def test_random_doubles_reads_exactly_k_inputs_per_map(k):
    table = connectivity_table(f"random-doubles:{k}", 20, 6, seed=3)
    assert table.shape == (20, 6)
    np.testing.assert_array_equal(table.sum(axis=1), k)


def test_random_doubles_is_reproducible_with_the_seed():
    a = connectivity_table("random-doubles:2", 30, 8, seed=11)
    np.testing.assert_array_equal(a, connectivity_table("random-doubles:2", 30, 8, seed=11))
    assert not np.array_equal(a, connectivity_table("random-doubles:2", 30, 8, seed=12))


def test_random_doubles_defaults_to_two_inputs():
    assert parse_table_name("random-doubles") == ("random-doubles", 2)
    np.testing.assert_array_equal(connectivity_table("random-doubles", 10, 5).sum(axis=1), 2)


@pytest.mark.parametrize(
    "name", ["halves", "Full", "random-doubles:x", "random-doubles:0", "random-doubles:-1", "singles", ""]
)
def test_bad_connectivity_names_raise(name):
    with pytest.raises(ValueError, match="connectivity"):
        connectivity_table(name, 4, 3)


def test_random_doubles_with_more_inputs_than_channels_raises():
    with pytest.raises(ValueError, match="k = 4"):
        connectivity_table("random-doubles:4", 5, 3)


def test_explicit_connectivity_matrix_is_checked():
    good = np.array([[True, False], [True, True], [False, True]])
    np.testing.assert_array_equal(connectivity_table(good, 3, 2), good)
    np.testing.assert_array_equal(connectivity_table(good.tolist(), 3, 2), good)
    with pytest.raises(ValueError, match="shape"):
        connectivity_table(good, 2, 3)
    np.testing.assert_array_equal(connectivity_table(good.astype(int), 3, 2), good)  # 0/1 read as booleans
    with pytest.raises(ValueError, match="boolean"):
        connectivity_table(good.astype(float), 3, 2)
    with pytest.raises(ValueError, match="read no input"):
        connectivity_table(np.array([[True, False], [False, False], [False, True]]), 3, 2)


# --- the objective and the metrics ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("maps_shape", "filters_shape", "boundary", "match"),
    [
        ((2, 3, 11, 11), (3, 1, 4, 4), "circular", r"maps must have shape \(2, 3, 8, 8\)"),
        ((2, 3, 8, 8), (3, 1, 4, 4), "valid", r"maps must have shape \(2, 3, 11, 11\)"),
        ((2, 3, 8, 8), (3, 2, 4, 4), "circular", "filters have 2 channels"),
        ((3, 8, 8), (3, 1, 4, 4), "circular", r"maps must have shape \(N, K, H', W'\)"),
    ],
    ids=["valid maps, circular", "circular maps, valid", "channels", "rank"],
)
def test_objective_refuses_arrays_that_do_not_fit(rng, images, maps_shape, filters_shape, boundary, match):
    with pytest.raises(ValueError, match=match):
        objective(images, rng.standard_normal(maps_shape), rng.standard_normal(filters_shape), 0.1, boundary=boundary)


def test_objective_takes_grey_images_as_encode_does(rng, filters):
    image = rng.standard_normal(SHAPE)
    maps = rng.standard_normal((1, 3) + SHAPE)
    assert objective(image, maps, filters, 0.1) == objective(image[None, None], maps, filters, 0.1)


@pytest.mark.parametrize(
    ("reference", "kwargs", "match"),
    [
        (np.zeros((1, 1, 4, 4)), {}, "constant"),
        (np.linspace(0, 1, 16), {"peak": -2.0}, "peak must be a positive number"),
        (np.array([0.0, np.nan]), {}, "finite"),
        (np.zeros(0), {}, "empty"),
    ],
    ids=["constant reference", "negative peak", "NaN", "empty"],
)
def test_psnr_refuses_what_has_no_psnr(reference, kwargs, match):
    with pytest.raises(ValueError, match=match):
        psnr(reference, np.ones_like(reference), **kwargs)


def test_a_table_of_zeros_and_ones_reads_as_its_booleans_in_encode_and_learn():
    rng = np.random.default_rng(3)
    y = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    f = rng.standard_normal((3, 2, 3, 3)).astype(np.float32)
    ints = np.array([[1, 0], [0, 1], [1, 1]])
    for run in (
        lambda g: encode(y, f, 0.1, connectivity=g, max_iter=5).maps,
        lambda g: learn(y, 3, 3, 0.1, n_iter=1, connectivity=g).filters,
    ):
        np.testing.assert_array_equal(run(ints), run(ints.astype(bool)))


@pytest.mark.parametrize("call", ["encode", "learn"])
def test_a_table_with_other_integers_is_refused_naming_them(call):
    rng = np.random.default_rng(3)
    y = rng.standard_normal((2, 2, 16, 16)).astype(np.float32)
    table = np.array([[1, 0], [0, 2], [1, 1]])
    with pytest.raises(ValueError, match=r"connectivity must hold booleans or 0/1, got the values \[2\]"):
        if call == "encode":
            encode(y, rng.standard_normal((3, 2, 3, 3)).astype(np.float32), 0.1, connectivity=table)
        else:
            learn(y, 3, 3, 0.1, n_iter=1, connectivity=table)


@pytest.mark.parametrize(
    ("table", "said"),
    [([[1.0, 0.0]], "[0.0, 1.0]"), ([["yes", "no"]], "['no', 'yes']"), ([[2, 1]], "[2]"), ([[True, 0.5]], "[0.5]")],
)
def test_a_layer_config_takes_the_solvers_rule_for_a_connectivity_matrix(table, said):
    with pytest.raises(
        pydantic.ValidationError, match=rf"connectivity must hold booleans or 0/1, got the values {re.escape(said)}"
    ):
        LayerSpec(n_filters=1, filter_size=3, lam=0.1, connectivity=table)
    spec = LayerSpec(n_filters=2, filter_size=3, lam=0.1, connectivity=[[1, 0], [True, False]])
    assert spec.connectivity == [[True, False], [True, False]]


# --- what float32 can square ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["admm", "fista", "zeiler"])
def test_images_up_to_the_float32_limit_code_as_their_unit_multiple(rng, images, filters, method):
    """y → cy and λ → cλ give the maps cz: up to the limit that check refuses past, float32 keeps that (the objective
    stays finite), so the limit is not looser than the arithmetic."""
    f = (filters / np.linalg.norm(filters.reshape(3, -1), axis=1)[:, None, None, None]).astype(np.float32)
    y = images.astype(np.float32)
    c = 0.9 * magnitude_limit(np.float32, SHAPE) / float(np.abs(y).max())
    unit = encode(y, f, 0.1, method=method, max_iter=30)
    scaled = encode(y * np.float32(c), f, 0.1 * c, method=method, max_iter=30)
    assert np.isfinite(scaled.objective)
    assert scaled.objective / c**2 == pytest.approx(unit.objective, rel=1e-3)
    np.testing.assert_allclose(scaled.maps / c, unit.maps, atol=1e-3 * float(np.abs(unit.maps).max()))


def test_float64_takes_the_values_float32_refuses(rng, images, filters):
    y = images * 1e18
    with pytest.raises(ValueError, match="compute in float64"):
        encode(y.astype(np.float32), filters, 1e17, method="fista", max_iter=10)
    scaled = encode(y, filters, 1e17, method="fista", max_iter=10, tol=0)
    unit = encode(images, filters, 0.1, method="fista", max_iter=10, tol=0)
    np.testing.assert_allclose(scaled.maps / 1e18, unit.maps, rtol=1e-9, atol=1e-12)


def test_the_limit_falls_with_the_pixels_of_an_image():
    assert magnitude_limit(np.float32, (128, 128)) == pytest.approx(np.sqrt(np.finfo(np.float32).max) / (4 * 128**2))
    assert magnitude_limit(np.float32, (16, 16)) == 64 * magnitude_limit(np.float32, (128, 128))
    assert magnitude_limit(np.float64, (128, 128)) > 1e149


# --- learning's own arguments -----------------------------------------------------------------------------------


def _unit(filters: np.ndarray) -> np.ndarray:
    return filters / np.linalg.norm(filters.reshape(filters.shape[0], -1), axis=1)[:, None, None, None]


@pytest.mark.parametrize("call", ["learn", "learn_online"])
def test_a_start_filter_of_zero_norm_is_refused_naming_it(rng, call):
    y = rng.standard_normal((2, 2, 8, 8))
    f0 = _unit(rng.standard_normal((3, 2, 3, 3)))
    f0[1] = 0.0
    run = learn if call == "learn" else (lambda *a, **k: learn_online(*a, batch_size=1, **k))
    with pytest.raises(ValueError, match=r"init_filters has 1 filter\(s\) of zero norm.*\(index 1\)"):
        run(y, 3, 3, 0.1, n_iter=1, init_filters=f0) if call == "learn" else run(y, 3, 3, 0.1, init_filters=f0)


@pytest.mark.parametrize("call", ["learn", "learn_online"])
def test_a_start_filter_zero_only_where_it_connects_is_refused(rng, call):
    y = rng.standard_normal((2, 2, 8, 8))
    table = np.array([[True, False], [True, True], [False, True]])
    f0 = _unit(rng.standard_normal((3, 2, 3, 3)))
    f0[2, 1] = 0.0  # filter 2 reads channel 1 only; its plane for channel 0 is never used
    kwargs = {"init_filters": f0, "connectivity": table}
    with pytest.raises(ValueError, match=r"zero norm on their connected channels \(index 2\)"):
        learn(y, 3, 3, 0.1, n_iter=1, **kwargs) if call == "learn" else learn_online(
            y, 3, 3, 0.1, batch_size=1, **kwargs
        )
    f0[1, 0] = 0.0  # a zero plane of a filter with another connected plane still learns
    f0[2, 1] = 1.0 / 3.0
    f0[2, 0] = 0.0
    result = (
        learn(y, 3, 3, 0.1, n_iter=2, **kwargs)
        if call == "learn"
        else learn_online(y, 3, 3, 0.1, batch_size=1, **kwargs)
    )
    assert np.abs(result.filters[1, 0]).max() > 0


@pytest.mark.parametrize("call", ["learn", "learn_online"])
def test_inner_iter_is_named_as_the_caller_wrote_it(rng, call):
    y = rng.standard_normal((2, 1, 8, 8))
    with pytest.raises(ValueError, match="inner_iter must be a positive integer, got 0"):
        learn(y, 2, 3, 0.1, inner_iter=0) if call == "learn" else learn_online(y, 2, 3, 0.1, inner_iter=0)


@pytest.mark.parametrize("call", ["encode", "learn", "learn_online"])
def test_a_ragged_connectivity_is_refused_naming_it(rng, call):
    y = rng.standard_normal((2, 2, 8, 8))
    ragged = [[1, 0], [1], [0, 1]]
    with pytest.raises(ValueError, match=r"connectivity must be a \(K, C\) matrix, got rows of different lengths"):
        if call == "encode":
            encode(y, rng.standard_normal((3, 2, 3, 3)), 0.1, connectivity=ragged)
        elif call == "learn":
            learn(y, 3, 3, 0.1, n_iter=1, connectivity=ragged)
        else:
            learn_online(y, 3, 3, 0.1, batch_size=1, connectivity=ragged)


def test_an_online_learner_checks_a_batch_in_the_dtype_it_computes_in(rng):
    config = LearnConfig.model_validate({"layers": [{"n_filters": 2, "filter_size": 3, "lam": 1e16}]})
    y = rng.standard_normal((2, 1, 8, 8)) * 1e17  # float64 takes it, float32 does not
    with pytest.raises(ValueError, match=r"images holds values up to .*float32"):
        OnlineLearner(config, OnlineConfig(), 1, backend="numpy", dtype=np.float32).update_from_batch(y)
    wide = OnlineLearner(config, OnlineConfig(), 1, backend="numpy", dtype=np.float64)
    assert np.isfinite(wide.update_from_batch(y).objective)


def test_a_norm_of_entries_whose_squares_overflow_is_finite():
    for dtype, big in ((np.float32, 1e30), (np.float64, 1e200)):
        a = np.array([3.0, -4.0, 0.0], dtype=dtype) * dtype(big)
        assert stable_norm(a) == pytest.approx(5.0 * big, rel=1e-6)
    assert stable_norm(np.zeros(3, np.float32)) == 0.0


@pytest.mark.parametrize(
    ("dtype", "scale"), [(np.float32, 1e10), (np.float64, 1e100)], ids=["float32 1e10", "float64 1e100"]
)
@pytest.mark.parametrize("filter_update", ["fista", "cg"])
def test_learning_images_of_large_values_gives_the_filters_of_their_unit_multiple(rng, dtype, scale, filter_update):
    """y → cy and λ → cλ leave the filters as they are: the filter steps' power iteration and CG, whose vectors are
    of the order of the data's energy (c²), no longer overflow where the images are far inside the input limit."""
    y = rng.standard_normal((2, 1, 16, 16)).astype(dtype)
    assert 4 * scale < magnitude_limit(dtype, (16, 16))
    kwargs = {"n_iter": 3, "seed": 1, "filter_update": filter_update, "schedule": "alternate"}
    unit = learn(y, 4, 5, 0.1, **kwargs)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an overflow anywhere is a failure, not a warning
        scaled = learn(y * dtype(scale), 4, 5, 0.1 * scale, **kwargs)
    np.testing.assert_allclose(scaled.filters, unit.filters, atol=100 * float(np.finfo(dtype).eps) ** 0.5)
    assert scaled.history[-1] / scale**2 == pytest.approx(unit.history[-1], rel=1e-3)


def test_the_consensus_filter_step_takes_images_up_to_its_own_limit(rng):
    y = rng.random((2, 1, 32, 32)).astype(np.float32)
    limit = magnitude_limit(np.float32, (32, 32), power=3)
    assert limit < magnitude_limit(np.float32, (32, 32))
    with pytest.raises(ValueError, match=r"images holds values up to .*consensus filter step.*compute in float64"):
        learn(y * np.float32(2 * limit / y.max()), 4, 5, 0.1, n_iter=1)
    c = float(0.9 * limit / y.max())
    unit = learn(y, 4, 5, 0.1, n_iter=2, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = learn(y * np.float32(c), 4, 5, 0.1 * c, n_iter=2, seed=1)
    np.testing.assert_allclose(scaled.filters, unit.filters, atol=1e-2)
    assert scaled.history[-1] / c**2 == pytest.approx(unit.history[-1], rel=1e-2)


def test_images_are_checked_in_the_dtype_a_layer_learns_in(rng):
    from solver import LayerSpec, learn_layer  # noqa: PLC0415

    config = LearnConfig(
        layers=[LayerSpec(n_filters=2, filter_size=3, lam=0.1)],
        n_iter=1,
        dtype="float32",
        filter_update={"method": "fista"},
    )
    y = rng.standard_normal((2, 1, 16, 16)) * 1e30  # float64 takes it, float32 does not
    with pytest.raises(ValueError, match=r"images holds values up to .* that float32 takes for 16x16"):
        learn_layer(y, config)


def test_a_wide_init_is_checked_in_the_images_dtype(rng, images, filters):
    init = np.full((2, 3) + SHAPE, 1e39)  # finite in float64, inf once cast to the images' float32
    with pytest.raises(ValueError, match=r"init holds values up to 1e\+39, past .* float32"):
        encode(images.astype(np.float32), filters, 0.1, method="fista", init=init)
