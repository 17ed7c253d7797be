"""3-D max pooling with switches (solver.operators.pooling): against an explicit-loop reference, unpool ∘ pool keeps
the block maxima, the adjoint identity of selection and unpooling at fixed switches, dtypes, padded edges, argument
errors, and the 2011 projection to pixels (equal to project_down for 1×1×1 pooling)."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import LayerModel, StackModel, pool3d, project_down, reconstruct, unpool3d
from solver.backend import Backend
from solver.operators.pooling import identity_switches, pooled_shape, select3d
from tests.reference import pool_loops
from tests.solver.contracts import assert_adjoint, dtype_tol

SHAPES_AND_SIZES = [
    ((2, 4, 6, 6), (2, 2, 2)),  # divisible
    ((1, 6, 6, 9), (3, 3, 3)),  # divisible, the 2011 spatial 3×3
    ((2, 5, 7, 8), (2, 3, 3)),  # padded on every axis
    ((1, 3, 4, 5), (1, 2, 2)),  # spatial only, padded columns
    ((2, 3, 4, 4), (1, 1, 1)),  # identity
    ((1, 2, 3, 3), (4, 5, 5)),  # one block larger than the stack
]


def _keep_maxima_loops(maps: np.ndarray, size: tuple[int, int, int]) -> np.ndarray:
    """Zero every entry of `maps` but each block's winner (loops, from :func:`_pool_loops`)."""
    N, K, H, W = maps.shape
    _, switches = pool_loops(maps, size)
    out = np.zeros(N * K * H * W, dtype=maps.dtype)
    flat = (switches + np.arange(N).reshape(N, 1, 1, 1) * (K * H * W)).ravel()
    out[flat] = maps.reshape(-1)[flat]
    return out.reshape(maps.shape)


@pytest.mark.parametrize(("shape", "size"), SHAPES_AND_SIZES)
def test_pool3d_matches_loops(backend: Backend, dtype: type, rng: np.random.Generator, shape, size) -> None:
    maps = rng.standard_normal(shape).astype(dtype)
    pooled, switches = pool3d(backend.asarray(maps), size)
    expected_pooled, expected_switches = pool_loops(maps, size)
    np.testing.assert_array_equal(backend.to_host(pooled), expected_pooled)
    np.testing.assert_array_equal(backend.to_host(switches), expected_switches)


@settings(deadline=None, max_examples=30)
@given(
    shape=st.tuples(*(st.integers(1, 5) for _ in range(4))),
    size=st.tuples(*(st.integers(1, 4) for _ in range(3))),
    seed=st.integers(0, 2**16),
)
def test_pool3d_matches_loops_on_random_shapes(shape, size, seed) -> None:
    maps = np.random.default_rng(seed).standard_normal(shape)
    pooled, switches = pool3d(maps, size)
    expected_pooled, expected_switches = pool_loops(maps, size)
    np.testing.assert_array_equal(pooled, expected_pooled)
    np.testing.assert_array_equal(switches, expected_switches)


def test_pool3d_keeps_the_sign_of_the_largest_magnitude() -> None:
    maps = np.array([[[[1.0, -3.0], [2.0, 0.5]], [[-0.5, 2.5], [0.0, -2.9]]]])
    pooled, switches = pool3d(maps, (2, 2, 2))
    np.testing.assert_array_equal(pooled, [[[[-3.0]]]])
    np.testing.assert_array_equal(switches, [[[[1]]]])


def test_pool3d_ties_and_zero_blocks_pick_the_first_entry() -> None:
    maps = np.zeros((1, 2, 3, 3))
    maps[0, 1, 2, 2] = -1.0
    maps[0, 0, 0, 0] = 1.0
    pooled, switches = pool3d(maps, (2, 2, 2))
    np.testing.assert_array_equal(pooled[0, 0], [[1.0, 0.0], [0.0, -1.0]])
    # the zero blocks at the padded edges point at their first (real) entry
    np.testing.assert_array_equal(switches[0, 0], [[0, 2], [6, 9 + 8]])


@pytest.mark.parametrize(("shape", "size"), SHAPES_AND_SIZES)
def test_unpool_of_pool_keeps_exactly_the_block_maxima(backend: Backend, dtype: type, rng, shape, size) -> None:
    maps = rng.standard_normal(shape).astype(dtype)
    x = backend.asarray(maps)
    out = unpool3d(*pool3d(x, size), shape)
    np.testing.assert_array_equal(backend.to_host(out), _keep_maxima_loops(maps, size))
    assert int(np.count_nonzero(backend.to_host(out))) == int(np.prod(pooled_shape(shape, size)))


@pytest.mark.parametrize(("shape", "size"), SHAPES_AND_SIZES)
def test_select_is_pooling_at_fixed_switches(backend: Backend, dtype: type, rng, shape, size) -> None:
    x = backend.asarray(rng.standard_normal(shape).astype(dtype))
    pooled, switches = pool3d(x, size)
    np.testing.assert_array_equal(backend.to_host(select3d(x, switches)), backend.to_host(pooled))


@pytest.mark.parametrize(("shape", "size"), SHAPES_AND_SIZES)
def test_unpool_is_the_adjoint_of_select(backend: Backend, dtype: type, rng, shape, size) -> None:
    _, switches = pool3d(backend.asarray(rng.standard_normal(shape)), size)  # fixed switches from other maps
    x = backend.asarray(rng.standard_normal(shape).astype(dtype))
    y = backend.asarray(rng.standard_normal(switches.shape).astype(dtype))
    assert_adjoint(lambda v: select3d(v, switches), lambda v: unpool3d(v, switches, shape), x, y, dtype_tol(dtype))


@pytest.mark.parametrize(("shape", "size"), SHAPES_AND_SIZES)
def test_dtypes_are_kept_and_switches_are_int32(backend: Backend, dtype: type, rng, shape, size) -> None:
    x = backend.asarray(rng.standard_normal(shape).astype(dtype))
    before = backend.to_host(x).copy()
    pooled, switches = pool3d(x, size)
    assert pooled.dtype == dtype
    assert switches.dtype == np.int32
    assert pooled.shape == switches.shape == pooled_shape(shape, size)
    assert unpool3d(pooled, switches, shape).dtype == dtype
    assert select3d(x, switches).dtype == dtype
    np.testing.assert_array_equal(backend.to_host(x), before)


@pytest.mark.parametrize(
    ("shape", "size", "expected"),
    [
        ((1, 15, 156, 156), (1, 3, 3), (1, 15, 52, 52)),
        ((2, 50, 58, 58), (2, 3, 3), (2, 25, 20, 20)),
        ((1, 100, 26, 26), (3, 3, 3), (1, 34, 9, 9)),
        ((1, 1, 1, 1), (2, 2, 2), (1, 1, 1, 1)),
    ],
)
def test_pooled_shape_rounds_up_like_the_2011_sizes(shape, size, expected) -> None:
    assert pooled_shape(shape, size) == expected


@pytest.mark.parametrize("size", [(0, 2, 2), (2, 2), (1, 2, 2, 2), (1.5, 2, 2), (True, 2, 2), (1, -1, 2), 3, "abc"])
def test_bad_size_is_named(size) -> None:
    with pytest.raises(ValueError, match="size"):
        pool3d(np.zeros((1, 2, 4, 4)), size)


@pytest.mark.parametrize("maps", [np.zeros((2, 4, 4)), np.zeros((1, 2, 4, 4), dtype=np.int64), [[[[1.0]]]]])
def test_bad_maps_are_named(maps) -> None:
    with pytest.raises(ValueError, match="maps"):
        pool3d(maps, (1, 2, 2))


def test_unpool_rejects_switches_that_do_not_fit() -> None:
    pooled, switches = pool3d(np.ones((1, 2, 4, 4)), (1, 2, 2))
    with pytest.raises(ValueError, match="switches"):
        unpool3d(pooled, switches.astype(np.float32), (1, 2, 4, 4))
    with pytest.raises(ValueError, match="switches"):
        unpool3d(pooled, switches[:, :1], (1, 2, 4, 4))
    with pytest.raises(ValueError, match="switches"):
        unpool3d(pooled, switches, (1, 1, 4, 4))  # indices past K·H·W
    with pytest.raises(ValueError, match="shape"):
        unpool3d(pooled, switches, (2, 4, 4))


def _model(
    rng: np.random.Generator,
    boundary: str,
    channels: list[int],
    dtype: type = np.float64,
    pool: tuple[int, int, int] | None = None,
) -> StackModel:
    filters = [rng.standard_normal((k, c, 3, 3)).astype(dtype) for c, k in itertools.pairwise(channels)]
    layers = tuple(
        LayerModel(f, np.ones(f.shape[:2], dtype=bool), None, 0.1, pool=pool if i == 0 else None)
        for i, f in enumerate(filters)
    )
    return StackModel(layers, boundary)


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_project_down_with_unit_pooling_is_project_down_without(boundary: str, dtype: type, rng) -> None:
    model = _model(rng, boundary, [1, 3, 4], dtype, pool=(1, 1, 1))
    plain = StackModel(tuple(replace(m, pool=None) for m in model.layers), boundary)
    grid = 6 if boundary == "circular" else 10
    maps = rng.standard_normal((2, 4, grid, grid)).astype(dtype)
    below = (2, 3, grid, grid) if boundary == "circular" else (2, 3, grid - 2, grid - 2)
    out = project_down(model, maps, switches=[identity_switches(below)], map_shapes=[below])
    expected = project_down(plain, maps)
    assert out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=dtype_tol(dtype), atol=dtype_tol(dtype))


def test_project_down_unpools_between_layers(rng) -> None:
    model = _model(rng, "valid", [1, 3, 3], pool=(1, 2, 2))
    layer1 = rng.standard_normal((2, 3, 10, 10))  # layer-1 maps (images of 8×8)
    pooled, switches = pool3d(layer1, (1, 2, 2))  # layer 2 reads 5×5, its maps are 7×7
    layer2 = rng.standard_normal((2, 3, 7, 7))
    out = project_down(model, layer2, switches=[switches], map_shapes=[layer1.shape])
    spec1, spec2 = model.layers
    expected = reconstruct(
        unpool3d(reconstruct(layer2, spec2.filters, boundary="valid"), switches, layer1.shape),
        spec1.filters,
        boundary="valid",
    )
    assert out.shape == (2, 1, 8, 8)
    np.testing.assert_allclose(out, expected)


def test_project_down_needs_switches_for_every_pooling_layer_below(rng) -> None:
    model = _model(rng, "circular", [1, 3, 4], pool=(1, 2, 2))
    with pytest.raises(ValueError, match="switches"):
        project_down(model, np.zeros((1, 4, 3, 3)))
    with pytest.raises(ValueError, match="switches"):
        project_down(model, np.zeros((1, 4, 3, 3)), switches=[None], map_shapes=[(1, 3, 6, 6)])
