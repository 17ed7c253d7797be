"""Tests for solver.operators.convolution: ConvOperator and FilterOperator against the loop reference, dense matrices,
scipy and numpy FFTs; contract checks (adjoint, linearity, dtype, backend, inputs untouched); shape helpers."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.signal
from hypothesis import given, settings
from hypothesis import strategies as st

from solver.backend import get_backend
from solver.models.coding import reconstruct
from solver.operators.convolution import ConvOperator, FilterOperator, image_shape_from_maps, map_shape
from tests.reference import (
    circular_convolve,
    convolve_loops,
    dense_conv_matrix,
    dense_filter_matrix,
    valid_convolve,
)
from tests.solver.contracts import LinearOperatorContract, assert_adjoint, dtype_tol

N_IMAGES, N_FILTERS, FILTER_SIZE = 2, 3, 3
IMAGE_SHAPE = (7, 8)  # H ≠ W catches transposed axes


def _connectivity(kind: str, n_filters: int, n_channels: int) -> np.ndarray | None:
    """None (full) or a sparse table: map k reads channel (k mod C), and map 0 also reads the last channel."""
    if kind == "full":
        return None
    g = np.zeros((n_filters, n_channels), dtype=bool)
    g[np.arange(n_filters), np.arange(n_filters) % n_channels] = True
    g[0, -1] = True
    return g


def _random_problem(rng, dtype, boundary, n_channels, image_shape=IMAGE_SHAPE, s=FILTER_SIZE):
    """Filters (K, C, s, s), maps (N, K, H', W') and images (N, C, H, W) of the module's small shapes."""
    grid = map_shape(image_shape, s, boundary)
    filters = rng.standard_normal((N_FILTERS, n_channels, s, s)).astype(dtype)
    maps = rng.standard_normal((N_IMAGES, N_FILTERS) + grid).astype(dtype)
    images = rng.standard_normal((N_IMAGES, n_channels) + tuple(image_shape)).astype(dtype)
    return filters, maps, images


# --- contract checks -------------------------------------------------------------------------------------------


class _OperatorCases(LinearOperatorContract):
    """Both boundaries, one and three channels, full and sparse connectivity; subclasses build `operator`."""

    @pytest.fixture(params=["circular", "valid"])
    def boundary(self, request):
        return request.param

    @pytest.fixture(params=[1, 3], ids=["C1", "C3"])
    def n_channels(self, request):
        return request.param

    @pytest.fixture(params=["full", "sparse"])
    def connectivity(self, request, n_channels):
        return _connectivity(request.param, N_FILTERS, n_channels)

    @pytest.fixture
    def op_forward(self, operator):
        return operator.forward

    @pytest.fixture
    def op_adjoint(self, operator):
        return operator.adjoint


class TestConvOperatorContract(_OperatorCases):
    @pytest.fixture
    def operator(self, rng, dtype, backend, boundary, n_channels, connectivity):
        filters = backend.asarray(rng.standard_normal((N_FILTERS, n_channels, FILTER_SIZE, FILTER_SIZE)).astype(dtype))
        g = None if connectivity is None else backend.asarray(connectivity)
        return ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=g)

    @pytest.fixture
    def in_shape(self, operator):
        return (N_IMAGES, N_FILTERS) + operator.map_shape

    @pytest.fixture
    def out_shape(self, n_channels):
        return (N_IMAGES, n_channels) + IMAGE_SHAPE


class TestFilterOperatorContract(_OperatorCases):
    @pytest.fixture
    def operator(self, rng, dtype, backend, boundary, n_channels, connectivity):
        grid = map_shape(IMAGE_SHAPE, FILTER_SIZE, boundary)
        maps = backend.asarray(rng.standard_normal((N_IMAGES, N_FILTERS) + grid).astype(dtype))
        g = None if connectivity is None else backend.asarray(connectivity)
        return FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary=boundary, connectivity=g, n_channels=n_channels)

    @pytest.fixture
    def in_shape(self, n_channels):
        return (N_FILTERS, n_channels, FILTER_SIZE, FILTER_SIZE)

    @pytest.fixture
    def out_shape(self, n_channels):
        return (N_IMAGES, n_channels) + IMAGE_SHAPE


# --- the loop reference itself ---------------------------------------------------------------------------------


def test_reference_circular_matches_numpy_fft(rng):
    filters, maps, _ = _random_problem(rng, np.float64, "circular", 2)
    padded = np.zeros(filters.shape[:2] + IMAGE_SHAPE)
    padded[..., :FILTER_SIZE, :FILTER_SIZE] = filters
    by_fft = np.fft.irfft2(np.einsum("kcuv,nkuv->ncuv", np.fft.rfft2(padded), np.fft.rfft2(maps)), s=IMAGE_SHAPE)
    np.testing.assert_allclose(circular_convolve(maps, filters), by_fft, rtol=1e-12, atol=1e-12)


def test_reference_valid_matches_scipy_convolve2d(rng):
    filters, maps, _ = _random_problem(rng, np.float64, "valid", 1)
    expected = scipy.signal.convolve2d(maps[1, 2], filters[2, 0], mode="valid")
    single = valid_convolve(maps[1:2, 2:3], filters[2:3])
    np.testing.assert_allclose(single[0, 0], expected, rtol=1e-12, atol=1e-12)


# --- forward against the references ----------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity_kind", ["full", "sparse"])
@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_conv_operator_forward_matches_loop_reference(rng, dtype, boundary, n_channels, connectivity_kind):
    filters, maps, _ = _random_problem(rng, dtype, boundary, n_channels)
    g = _connectivity(connectivity_kind, N_FILTERS, n_channels)
    out = ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=g).forward(maps)
    expected = convolve_loops(maps, filters, IMAGE_SHAPE, boundary, g)
    np.testing.assert_allclose(out, expected, rtol=dtype_tol(dtype), atol=dtype_tol(dtype) * np.abs(expected).max())


@pytest.mark.parametrize("n_channels", [1, 3])
def test_conv_operator_circular_forward_matches_numpy_fft(rng, dtype, n_channels):
    filters, maps, _ = _random_problem(rng, dtype, "circular", n_channels)
    padded = np.zeros(filters.shape[:2] + IMAGE_SHAPE)
    padded[..., :FILTER_SIZE, :FILTER_SIZE] = filters
    expected = np.fft.irfft2(
        np.einsum("kcuv,nkuv->ncuv", np.fft.rfft2(padded), np.fft.rfft2(maps.astype(np.float64))), s=IMAGE_SHAPE
    )
    out = ConvOperator(filters, IMAGE_SHAPE, boundary="circular").forward(maps)
    np.testing.assert_allclose(out, expected, rtol=dtype_tol(dtype), atol=dtype_tol(dtype) * np.abs(expected).max())


def _scipy_valid(maps: np.ndarray, filters: np.ndarray) -> np.ndarray:
    """The valid reconstruction as docs/design.md section 1 defines it, plane by plane with scipy.signal.convolve2d."""
    N, K = maps.shape[:2]
    C = filters.shape[1]
    return np.array(
        [
            [sum(scipy.signal.convolve2d(maps[n, k], filters[k, c], mode="valid") for k in range(K)) for c in range(C)]
            for n in range(N)
        ]
    )


@pytest.mark.parametrize("n_channels", [1, 3])
def test_conv_operator_valid_forward_matches_scipy_convolve2d(rng, dtype, n_channels):
    filters, maps, _ = _random_problem(rng, dtype, "valid", n_channels)
    expected = _scipy_valid(maps.astype(np.float64), filters.astype(np.float64))
    out = ConvOperator(filters, IMAGE_SHAPE, boundary="valid").forward(maps)
    np.testing.assert_allclose(out, expected, rtol=dtype_tol(dtype), atol=dtype_tol(dtype) * np.abs(expected).max())


def test_conv_operator_forward_of_a_unit_impulse_is_the_filter():
    filters = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    maps = np.zeros((1, 1, 6, 6))
    maps[0, 0, 2, 1] = 1.0
    expected = np.zeros((6, 6))
    expected[2:5, 1:4] = filters[0, 0]
    out = ConvOperator(filters, (6, 6), boundary="circular").forward(maps)
    np.testing.assert_allclose(out[0, 0], expected, atol=1e-12)


def test_conv_operator_circular_wraps_around():
    filters = np.arange(1.0, 10.0).reshape(1, 1, 3, 3)
    maps = np.zeros((1, 1, 5, 5))
    maps[0, 0, 4, 4] = 1.0  # the filter's [a, b] lands on ((4 + a) % 5, (4 + b) % 5)
    out = ConvOperator(filters, (5, 5), boundary="circular").forward(maps)[0, 0]
    assert out[4, 4] == pytest.approx(1.0)
    assert out[0, 0] == pytest.approx(5.0)
    assert out[1, 1] == pytest.approx(9.0)


# --- adjoint and dense matrices --------------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity_kind", ["full", "sparse"])
@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_conv_operator_matches_dense_matrix(rng, dtype, boundary, n_channels, connectivity_kind):
    filters, maps, images = _random_problem(rng, dtype, boundary, n_channels)
    g = _connectivity(connectivity_kind, N_FILTERS, n_channels)
    op = ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=g)
    D = dense_conv_matrix(filters, IMAGE_SHAPE, boundary, g)
    fwd = D @ maps[1].ravel().astype(np.float64)
    adj = D.T @ images[1].ravel().astype(np.float64)
    tol = dtype_tol(dtype)
    np.testing.assert_allclose(op.forward(maps)[1].ravel(), fwd, rtol=tol, atol=tol * np.abs(fwd).max())
    np.testing.assert_allclose(op.adjoint(images)[1].ravel(), adj, rtol=tol, atol=tol * np.abs(adj).max())


@pytest.mark.parametrize("connectivity_kind", ["full", "sparse"])
@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_filter_operator_matches_dense_matrix(rng, dtype, boundary, n_channels, connectivity_kind):
    filters, maps, images = _random_problem(rng, dtype, boundary, n_channels)
    g = _connectivity(connectivity_kind, N_FILTERS, n_channels)
    op = FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary=boundary, connectivity=g, n_channels=n_channels)
    Z = dense_filter_matrix(maps, IMAGE_SHAPE, FILTER_SIZE, boundary, g, n_channels=n_channels)
    fwd = Z @ filters.ravel().astype(np.float64)
    adj = Z.T @ images.ravel().astype(np.float64)
    tol = dtype_tol(dtype)
    np.testing.assert_allclose(op.forward(filters).ravel(), fwd, rtol=tol, atol=tol * np.abs(fwd).max())
    np.testing.assert_allclose(op.adjoint(images).ravel(), adj, rtol=tol, atol=tol * np.abs(adj).max())


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_filter_operator_and_conv_operator_synthesise_the_same_images(rng, dtype, boundary):
    filters, maps, _ = _random_problem(rng, dtype, boundary, 3)
    by_maps = ConvOperator(filters, IMAGE_SHAPE, boundary=boundary).forward(maps)
    by_filters = FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary=boundary, n_channels=3).forward(filters)
    tol = dtype_tol(dtype)
    np.testing.assert_allclose(by_filters, by_maps, rtol=tol, atol=tol * np.abs(by_maps).max())


@pytest.mark.parametrize("n_channels", [1, 3])
def test_conv_operator_fourier_adjoint_identity_for_complex_inputs(rng, dtype, n_channels):
    filters, _, _ = _random_problem(rng, dtype, "circular", n_channels)
    op = ConvOperator(filters, IMAGE_SHAPE, boundary="circular")
    U, V = op.filters_hat.shape[-2:]
    cdtype = op.filters_hat.dtype
    x_hat = rng.standard_normal((N_IMAGES, N_FILTERS, U, V)) + 1j * rng.standard_normal((N_IMAGES, N_FILTERS, U, V))
    y_hat = rng.standard_normal((N_IMAGES, n_channels, U, V)) + 1j * rng.standard_normal((N_IMAGES, n_channels, U, V))
    x_hat, y_hat = x_hat.astype(cdtype), y_hat.astype(cdtype)
    Ax, Aty = assert_adjoint(op.forward_hat, op.adjoint_hat, x_hat, y_hat, dtype_tol(dtype))
    assert Ax.dtype == cdtype and Aty.dtype == cdtype


def test_filter_operator_fourier_adjoint_identity_for_complex_inputs(rng, dtype):
    _, maps, _ = _random_problem(rng, dtype, "circular", 2)
    op = FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary="circular", n_channels=2)
    U, V = op.maps_hat.shape[-2:]
    cdtype = op.maps_hat.dtype
    f_hat = rng.standard_normal((N_FILTERS, 2, U, V)) + 1j * rng.standard_normal((N_FILTERS, 2, U, V))
    s_hat = rng.standard_normal((N_IMAGES, 2, U, V)) + 1j * rng.standard_normal((N_IMAGES, 2, U, V))
    f_hat, s_hat = f_hat.astype(cdtype), s_hat.astype(cdtype)
    assert_adjoint(op.forward_hat, op.adjoint_hat, f_hat, s_hat, dtype_tol(dtype))


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_filters=st.integers(1, 4),
    n_channels=st.integers(1, 3),
    height=st.integers(3, 6),
    width=st.integers(3, 6),
    filter_size=st.integers(1, 3),
    boundary=st.sampled_from(["circular", "valid"]),
)
def test_conv_operator_adjoint_identity_over_random_shapes(
    seed, n_filters, n_channels, height, width, filter_size, boundary
):
    rng = np.random.default_rng(seed)
    filters = rng.standard_normal((n_filters, n_channels, filter_size, filter_size))
    op = ConvOperator(filters, (height, width), boundary=boundary)
    x = rng.standard_normal((2, n_filters) + op.map_shape)
    y = rng.standard_normal((2, n_channels, height, width))
    assert_adjoint(op.forward, op.adjoint, x, y, 1e-12)


# --- connectivity ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_conv_operator_ignores_disconnected_filter_planes(rng, boundary):
    filters, maps, _ = _random_problem(rng, np.float64, boundary, 3)
    g = _connectivity("sparse", N_FILTERS, 3)
    changed = filters.copy()
    changed[~g] = rng.standard_normal(changed[~g].shape)
    a = ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=g).forward(maps)
    b = ConvOperator(changed, IMAGE_SHAPE, boundary=boundary, connectivity=g).forward(maps)
    np.testing.assert_array_equal(a, b)


def test_filter_operator_adjoint_is_zero_on_disconnected_planes(rng):
    _, maps, images = _random_problem(rng, np.float64, "circular", 3)
    g = _connectivity("sparse", N_FILTERS, 3)
    grad = FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, connectivity=g).adjoint(images)
    assert np.all(grad[~g] == 0)
    assert np.all(np.abs(grad[g]).sum(axis=(-2, -1)) > 0)


# --- operators are immutable -----------------------------------------------------------------------------------


def test_conv_operator_does_not_modify_its_filters(rng):
    filters, maps, images = _random_problem(rng, np.float64, "valid", 3)
    before = filters.copy()
    g = _connectivity("sparse", N_FILTERS, 3)
    op = ConvOperator(filters, IMAGE_SHAPE, boundary="valid", connectivity=g)
    op.forward(maps)
    op.adjoint(images)
    np.testing.assert_array_equal(filters, before)


def test_conv_operator_forward_is_repeatable(rng):
    filters, maps, _ = _random_problem(rng, np.float64, "circular", 1)
    op = ConvOperator(filters, IMAGE_SHAPE)
    np.testing.assert_array_equal(op.forward(maps), op.forward(maps))


# --- public reconstruct ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("connectivity_kind", ["full", "sparse"])
@pytest.mark.parametrize("n_channels", [1, 3])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_reconstruct_equals_conv_operator_forward(rng, dtype, boundary, n_channels, connectivity_kind):
    filters, maps, _ = _random_problem(rng, dtype, boundary, n_channels)
    g = _connectivity(connectivity_kind, N_FILTERS, n_channels)
    out = reconstruct(maps, filters, boundary=boundary, connectivity=g)
    expected = ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=g).forward(maps)
    assert out.dtype == dtype
    assert out.shape == (N_IMAGES, n_channels) + IMAGE_SHAPE
    np.testing.assert_allclose(out, expected, rtol=dtype_tol(dtype), atol=dtype_tol(dtype) * np.abs(expected).max())


def test_reconstruct_promotes_unbatched_maps_and_grey_filters(rng):
    filters, maps, _ = _random_problem(rng, np.float64, "circular", 1)
    out = reconstruct(maps[0], filters[:, 0])
    np.testing.assert_allclose(out, reconstruct(maps[:1], filters), rtol=1e-12, atol=1e-12)
    assert out.shape == (1, 1) + IMAGE_SHAPE


def test_reconstruct_keeps_the_maps_dtype(rng):
    filters, maps, _ = _random_problem(rng, np.float64, "circular", 1)
    assert reconstruct(maps.astype(np.float32), filters).dtype == np.float32
    assert reconstruct(maps, filters.astype(np.float32)).dtype == np.float64


def test_reconstruct_docstring_example():
    maps = np.zeros((1, 1, 4, 4))
    maps[0, 0, 1, 1] = 1.0
    expected = np.zeros((4, 4))
    expected[1:3, 1:3] = 1.0
    np.testing.assert_allclose(reconstruct(maps, np.ones((1, 1, 2, 2)))[0, 0], expected, atol=1e-12)


# --- shapes ----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("boundary", "image_shape", "filter_size", "expected"),
    [
        ("circular", (7, 8), 3, (7, 8)),
        ("valid", (7, 8), 3, (9, 10)),
        ("valid", (7, 8), 1, (7, 8)),
        ("valid", (4, 4), 5, (8, 8)),
    ],
)
def test_map_shape(boundary, image_shape, filter_size, expected):
    assert map_shape(image_shape, filter_size, boundary) == expected
    assert image_shape_from_maps(expected, filter_size, boundary) == image_shape


@pytest.mark.parametrize("function", [map_shape, image_shape_from_maps])
def test_shape_helpers_reject_unknown_boundary(function):
    with pytest.raises(ValueError, match="boundary"):
        function((8, 8), 3, "same")


@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_conv_operator_reports_its_shapes(boundary):
    op = ConvOperator(np.ones((2, 1, 3, 3)), IMAGE_SHAPE, boundary=boundary)
    assert op.image_shape == IMAGE_SHAPE
    assert op.map_shape == map_shape(IMAGE_SHAPE, 3, boundary)
    assert op.boundary == boundary


def test_filter_operator_rejects_maps_of_the_wrong_grid(rng):
    maps = rng.standard_normal((N_IMAGES, N_FILTERS) + IMAGE_SHAPE)
    with pytest.raises(ValueError, match="maps"):
        FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary="valid")


@pytest.mark.parametrize(
    ("shape", "size", "dtype"),
    [((256, 256), 8, np.float32), ((31, 20), 7, np.float64), ((9, 12), 9, np.float32), ((6, 6), 8, np.float64)],
)
def test_irfft2_corner_is_the_corner_of_the_whole_inverse(rng, shape, size, dtype):
    bk = get_backend("numpy")
    planes = rng.standard_normal((3, 2) + shape).astype(dtype)
    a_hat = bk.rfft2(planes)
    out = bk.irfft2_corner(a_hat, shape, size)
    expected = planes[..., :size, :size]  # the inverse of the transform, by definition
    assert out.shape == expected.shape and out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=0, atol=50 * np.finfo(dtype).eps * np.abs(planes).max())


@pytest.mark.parametrize(("shape", "dtype"), [((32, 24), np.float32), ((15, 9), np.float64)])
def test_irfft2_rows_stacked_are_the_rows_of_the_whole_inverse(rng, shape, dtype):
    """The spectrum-first layout (U, V, *batch), negative rows counted from the end, against irfft2 per plane."""
    bk = get_backend("numpy")
    planes = rng.standard_normal((3, 2) + shape).astype(dtype)
    a_hat = bk.rfft2(planes)
    stacked = np.ascontiguousarray(np.moveaxis(a_hat, (0, 1), (2, 3)))  # (U, V, 3, 2)
    rows = [0, 2, -1, -3]
    out = bk.irfft2_rows_stacked(stacked, shape, rows)
    expected = planes[:, :, rows, :]
    assert out.shape == expected.shape and out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=0, atol=50 * np.finfo(dtype).eps * np.abs(planes).max())
