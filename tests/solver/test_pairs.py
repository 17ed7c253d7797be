"""Sparse connectivity (solver.operators.pairs): the operators on the connected pairs only against the dense references
(forward, adjoint, per-frequency solve, spectral norm, Gram), the contract checks, and the work counted through
a multiplication-counting array: it scales with the number of connected pairs, not with K·C."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from solver import encode
from solver.operators.connectivity import connectivity_table
from solver.operators.convolution import ConvOperator, FilterOperator, map_shape
from solver.operators.pairs import FullConnections, SparseConnections, connections
from tests.reference import dense_conv_matrix, dense_filter_matrix, objective_reference
from tests.solver.contracts import LinearOperatorContract, assert_adjoint, dtype_tol

N_IMAGES, FILTER_SIZE = 2, 3
IMAGE_SHAPE = (6, 7)


def _table(kind: str) -> np.ndarray:
    """Sparse tables: the two toolbox kinds and a ragged one (map 2 reads nothing, channel 2 is read by nobody,
    map 1 reads two channels)."""
    if kind == "singles-and-doubles":
        return connectivity_table("singles-and-doubles", 6, 3)
    if kind == "random-doubles":
        return connectivity_table("random-doubles:2", 5, 4, seed=3)
    if kind == "ragged":
        return np.array([[1, 0, 0], [1, 1, 0], [0, 0, 0], [0, 1, 0]], dtype=bool)
    if kind == "one-channel":
        return np.array([[1], [0], [1]], dtype=bool)
    raise ValueError(kind)


TABLES = ["singles-and-doubles", "random-doubles", "ragged", "one-channel"]


def _problem(rng, dtype, table, boundary, image_shape=IMAGE_SHAPE, s=FILTER_SIZE):
    K, C = table.shape
    grid = map_shape(image_shape, s, boundary)
    filters = rng.standard_normal((K, C, s, s)).astype(dtype)
    maps = rng.standard_normal((N_IMAGES, K) + grid).astype(dtype)
    images = rng.standard_normal((N_IMAGES, C) + image_shape).astype(dtype)
    return filters, maps, images


# --- the layout ------------------------------------------------------------------------------------------------


def test_full_tables_keep_the_dense_layout():
    assert isinstance(connections(None, 4, 3), FullConnections)
    assert isinstance(connections(np.ones((4, 3), dtype=bool), 4, 3), FullConnections)
    op = ConvOperator(np.ones((4, 3, 3, 3)), IMAGE_SHAPE)
    assert op.planes_hat.shape[:2] == (4, 3)
    assert op.filters_hat is op.planes_hat


@pytest.mark.parametrize("kind", TABLES)
def test_sparse_operator_keeps_one_fourier_plane_per_connected_pair(rng, kind):
    table = _table(kind)
    filters, _, _ = _problem(rng, np.float64, table, "circular")
    op = ConvOperator(filters, IMAGE_SHAPE, connectivity=table)
    assert isinstance(op.connections, SparseConnections)
    assert op.planes_hat.shape == (int(table.sum()),) + (IMAGE_SHAPE[0], IMAGE_SHAPE[1] // 2 + 1)
    dense = op.filters_hat  # the dense layout, for code that needs it (zeros where not connected)
    assert dense.shape[:2] == table.shape
    assert np.all(dense[~table] == 0)


@pytest.mark.parametrize("kind", TABLES)
def test_gather_and_scatter_are_inverse_on_connected_planes(rng, kind):
    table = _table(kind)
    pairs = connections(table, *table.shape)
    a = rng.standard_normal(table.shape + (2, 2))
    back = pairs.scatter(pairs.gather(a))
    np.testing.assert_array_equal(back[table], a[table])
    assert np.all(back[~table] == 0)


# --- against the dense references ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", TABLES)
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_sparse_conv_operator_matches_dense_matrix(rng, dtype, boundary, kind):
    table = _table(kind)
    filters, maps, images = _problem(rng, dtype, table, boundary)
    op = ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=table)
    D = dense_conv_matrix(filters, IMAGE_SHAPE, boundary, table)
    fwd = D @ maps[1].ravel().astype(np.float64)
    adj = D.T @ images[1].ravel().astype(np.float64)
    tol = dtype_tol(dtype)
    np.testing.assert_allclose(op.forward(maps)[1].ravel(), fwd, rtol=tol, atol=tol * np.abs(fwd).max())
    np.testing.assert_allclose(op.adjoint(images)[1].ravel(), adj, rtol=tol, atol=tol * np.abs(adj).max())


@pytest.mark.parametrize("kind", TABLES)
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_sparse_filter_operator_matches_dense_matrix(rng, dtype, boundary, kind):
    table = _table(kind)
    filters, maps, images = _problem(rng, dtype, table, boundary)
    op = FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary=boundary, connectivity=table)
    Z = dense_filter_matrix(maps, IMAGE_SHAPE, FILTER_SIZE, boundary, table)
    fwd = Z @ filters.ravel().astype(np.float64)
    adj = Z.T @ images.ravel().astype(np.float64)
    tol = dtype_tol(dtype)
    np.testing.assert_allclose(op.forward(filters).ravel(), fwd, rtol=tol, atol=tol * np.abs(fwd).max())
    np.testing.assert_allclose(op.adjoint(images).ravel(), adj, rtol=tol, atol=tol * np.abs(adj).max())


@pytest.mark.parametrize("per_image", [False, True], ids=["shared-rho", "rho-per-image"])
@pytest.mark.parametrize("kind", TABLES)
def test_sparse_shifted_normal_solve_matches_dense_solve(rng, dtype, kind, per_image):
    table = _table(kind)
    filters, maps, _ = _problem(rng, dtype, table, "circular")
    op = ConvOperator(filters, IMAGE_SHAPE, connectivity=table)
    rho = np.array([0.3, 7.0]) if per_image else 0.3
    x = op.irfft(op.solve_shifted_normal(op.factor_shifted_normal(rho), op.rfft(maps)))
    D = dense_conv_matrix(filters, IMAGE_SHAPE, "circular", table)
    rhos = np.broadcast_to(rho, (N_IMAGES,))
    expected = np.stack(
        [
            np.linalg.solve(D.T @ D + r * np.eye(D.shape[1]), m.ravel()).reshape(m.shape)
            for r, m in zip(rhos, maps.astype(np.float64), strict=True)
        ]
    )
    tol = dtype_tol(dtype) * (op.lipschitz() + rhos.min()) / rhos.min()
    assert x.dtype == dtype
    np.testing.assert_allclose(x, expected, rtol=tol, atol=tol * np.abs(expected).max())


@pytest.mark.parametrize("kind", TABLES)
def test_sparse_lipschitz_is_the_dense_norm_squared(rng, kind):
    table = _table(kind)
    filters, _, _ = _problem(rng, np.float64, table, "circular")
    op = ConvOperator(filters, IMAGE_SHAPE, connectivity=table)
    D = dense_conv_matrix(filters, IMAGE_SHAPE, "circular", table)
    assert op.lipschitz() == pytest.approx(np.linalg.norm(D, 2) ** 2, rel=1e-10)


def test_sparse_lipschitz_by_power_iteration_bounds_the_norm_for_many_channels(rng):
    table = connectivity_table("random-doubles:2", 6, 17, seed=1)  # C > 16: the power-iteration branch
    filters = rng.standard_normal((6, 17, 2, 2))
    op = ConvOperator(filters, (3, 3), connectivity=table)
    exact = np.linalg.norm(dense_conv_matrix(filters, (3, 3), "circular", table), 2) ** 2
    assert exact <= op.lipschitz() <= 1.06 * exact


@pytest.mark.parametrize("kind", TABLES)
def test_sparse_gram_matches_the_dense_einsum(rng, kind):
    table = _table(kind)
    filters, _, _ = _problem(rng, np.float64, table, "circular")
    op = ConvOperator(filters, IMAGE_SHAPE, connectivity=table)
    dense = np.einsum("kcuv,kduv->uvcd", op.filters_hat, np.conj(op.filters_hat))
    np.testing.assert_allclose(op.connections.gram(op.planes_hat), dense, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kind", ["singles-and-doubles", "ragged"])
def test_sparse_fourier_adjoint_identities_for_complex_inputs(rng, dtype, kind):
    table = _table(kind)
    K, C = table.shape
    filters, maps, _ = _problem(rng, dtype, table, "circular")
    conv = ConvOperator(filters, IMAGE_SHAPE, connectivity=table)
    filt = FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, connectivity=table)
    cdtype = conv.planes_hat.dtype
    shape = conv.planes_hat.shape[1:]

    def crandn(*s):
        return (rng.standard_normal(s) + 1j * rng.standard_normal(s)).astype(cdtype)

    def check(forward, adjoint, x, y):
        Ax, Aty = assert_adjoint(forward, adjoint, x, y, dtype_tol(dtype))
        assert Ax.dtype == cdtype and Aty.dtype == cdtype

    check(conv.forward_hat, conv.adjoint_hat, crandn(N_IMAGES, K, *shape), crandn(N_IMAGES, C, *shape))
    check(filt.forward_hat, filt.adjoint_hat, crandn(int(table.sum()), *shape), crandn(N_IMAGES, C, *shape))


# --- contract checks (adjoint identity, linearity, dtype, backend, inputs untouched) ---------------------------


class _SparseCases(LinearOperatorContract):
    @pytest.fixture(params=["circular", "valid"])
    def boundary(self, request):
        return request.param

    @pytest.fixture(params=["singles-and-doubles", "ragged"])
    def table(self, request):
        return _table(request.param)

    @pytest.fixture
    def op_forward(self, operator):
        return operator.forward

    @pytest.fixture
    def op_adjoint(self, operator):
        return operator.adjoint


class TestSparseConvOperatorContract(_SparseCases):
    @pytest.fixture
    def operator(self, rng, dtype, backend, boundary, table):
        filters = backend.asarray(rng.standard_normal(table.shape + (FILTER_SIZE, FILTER_SIZE)).astype(dtype))
        return ConvOperator(filters, IMAGE_SHAPE, boundary=boundary, connectivity=backend.asarray(table))

    @pytest.fixture
    def in_shape(self, operator, table):
        return (N_IMAGES, table.shape[0]) + operator.map_shape

    @pytest.fixture
    def out_shape(self, table):
        return (N_IMAGES, table.shape[1]) + IMAGE_SHAPE


class TestSparseFilterOperatorContract(_SparseCases):
    @pytest.fixture
    def operator(self, rng, dtype, backend, boundary, table):
        grid = map_shape(IMAGE_SHAPE, FILTER_SIZE, boundary)
        maps = backend.asarray(rng.standard_normal((N_IMAGES, table.shape[0]) + grid).astype(dtype))
        return FilterOperator(maps, IMAGE_SHAPE, FILTER_SIZE, boundary=boundary, connectivity=backend.asarray(table))

    @pytest.fixture
    def in_shape(self, table):
        return table.shape + (FILTER_SIZE, FILTER_SIZE)

    @pytest.fixture
    def out_shape(self, table):
        return (N_IMAGES, table.shape[1]) + IMAGE_SHAPE


@settings(deadline=None, max_examples=25)
@given(
    seed=st.integers(0, 2**32 - 1),
    n_filters=st.integers(1, 5),
    n_channels=st.integers(1, 4),
    size=st.integers(3, 6),
    filter_size=st.integers(1, 3),
    density=st.floats(0.1, 0.9),
    boundary=st.sampled_from(["circular", "valid"]),
)
def test_sparse_adjoint_identities_over_random_tables(
    seed, n_filters, n_channels, size, filter_size, density, boundary
):
    rng = np.random.default_rng(seed)
    table = rng.random((n_filters, n_channels)) < density
    filters = rng.standard_normal((n_filters, n_channels, filter_size, filter_size))
    op = ConvOperator(filters, (size, size), boundary=boundary, connectivity=table)
    x = rng.standard_normal((2, n_filters) + op.map_shape)
    y = rng.standard_normal((2, n_channels, size, size))
    assert_adjoint(op.forward, op.adjoint, x, y, 1e-12)
    fo = FilterOperator(x, (size, size), filter_size, boundary=boundary, connectivity=table)
    Zf, _ = assert_adjoint(fo.forward, fo.adjoint, filters, y, 1e-12)
    np.testing.assert_allclose(Zf, op.forward(x), rtol=1e-10, atol=1e-10 * (1 + np.abs(Zf).max()))


# --- the work scales with the connected pairs ------------------------------------------------------------------


class _Counting(np.ndarray):
    """An ndarray that counts complex multiplications: element-wise products with a complex result (one per
    output element), and for ``einsum`` one per point of its full index space (the products it sums)."""

    counter: dict[str, int]

    def __array_finalize__(self, obj):  # views and slices share the counter of their base
        self.counter = getattr(obj, "counter", None)

    def __array_ufunc__(self, ufunc, method, *inputs, **kwargs):
        plain = [np.asarray(x) if isinstance(x, _Counting) else x for x in inputs]
        if "out" in kwargs:
            kwargs["out"] = tuple(np.asarray(o) if isinstance(o, _Counting) else o for o in kwargs["out"])
        result = getattr(ufunc, method)(*plain, **kwargs)
        if ufunc is np.multiply and method == "__call__" and np.iscomplexobj(result):
            self.counter["products"] += result.size
        return self._wrap(result)

    def __array_function__(self, func, types, args, kwargs):
        plain = [np.asarray(a) if isinstance(a, _Counting) else a for a in args]
        if func is np.einsum:
            inputs = plain[0].split("->")[0].split(",")
            sizes = {}
            for labels, operand in zip(inputs, plain[1:], strict=True):
                sizes.update(zip(labels, np.shape(operand), strict=True))
            if any(np.iscomplexobj(o) for o in plain[1:]):
                self.counter["products"] += int(np.prod(list(sizes.values())))
        return self._wrap(func(*plain, **kwargs))

    def _wrap(self, result):
        if isinstance(result, np.ndarray) and not isinstance(result, _Counting):
            result = result.view(_Counting)
            result.counter = self.counter
        return result


def _counting(a: np.ndarray, counter: dict[str, int]) -> _Counting:
    out = np.asarray(a).view(_Counting)
    out.counter = counter
    return out


def _products(call, *arrays) -> int:
    counter = {"products": 0}
    call(*[_counting(a, counter) for a in arrays])
    return counter["products"]


WORK_TABLES = {  # K = 10 maps over C = 4 channels
    "full": None,
    "singles-and-doubles": connectivity_table("singles-and-doubles", 10, 4),
    "random-doubles:2": connectivity_table("random-doubles:2", 10, 4, seed=0),
    "random-doubles:1": connectivity_table("random-doubles:1", 10, 4, seed=0),
}


@pytest.mark.parametrize("kind", list(WORK_TABLES))
def test_operator_work_scales_with_the_connected_pairs(rng, kind):
    table = WORK_TABLES[kind]
    K, C, N, shape = 10, 4, 3, (8, 9)
    n_pairs = K * C if table is None else int(table.sum())
    filters = rng.standard_normal((K, C, 3, 3)).astype(np.float32)
    maps = rng.standard_normal((N, K) + shape).astype(np.float32)
    images = rng.standard_normal((N, C) + shape).astype(np.float32)
    conv = ConvOperator(filters, shape, connectivity=table)
    filt = FilterOperator(maps, shape, 3, connectivity=table, n_channels=C)
    planes = conv.planes_hat
    UV = planes.shape[-2] * planes.shape[-1]
    assert planes.size == n_pairs * UV  # the only filter array the operator computes with
    maps_hat, images_hat = conv.rfft(maps), conv.rfft(images)
    per_apply = N * n_pairs * UV  # one complex product per image, connected pair and frequency
    assert _products(conv.forward_hat, maps_hat) == per_apply
    assert _products(conv.adjoint_hat, images_hat) == per_apply
    assert _products(filt.forward_hat, filt.filters_to_hat(filters)) == per_apply
    assert _products(filt.adjoint_hat, images_hat) == per_apply
    assert filt.filters_to_hat(filters).size == n_pairs * UV  # one FFT per connected filter plane


@pytest.mark.parametrize("kind", ["singles-and-doubles", "random-doubles:2", "random-doubles:1"])
def test_shifted_normal_solve_work_scales_with_the_connected_pairs(rng, kind):
    table = WORK_TABLES[kind]
    K, C, N, shape = 10, 4, 3, (8, 9)
    op = ConvOperator(rng.standard_normal((K, C, 3, 3)), shape, connectivity=table)
    UV = op.planes_hat.shape[-2] * op.planes_hat.shape[-1]
    n_pairs = int(table.sum())
    pairs_of_a_map = int((table.sum(axis=1) ** 2).sum())  # Σ_k deg(k)²: the products of the C×C Gram
    factor_work = _products(op.connections.factor_shifted_normal, op.planes_hat, 0.5)
    assert factor_work == pairs_of_a_map * UV < K * C * C * UV
    factor = op.factor_shifted_normal(0.5)
    b_hat = op.rfft(rng.standard_normal((N, K) + shape))
    # A b and Aᴴ t on the pairs, and the C×C inverse applied per image and frequency
    expected = (2 * N * n_pairs + N * C * C) * UV
    assert _products(lambda b: op.solve_shifted_normal(factor, b), b_hat) == expected
    assert expected < 2 * N * K * C * UV + N * C * C * UV


# --- inference with a sparse table -----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["zeiler", "fista", "admm"])
@pytest.mark.parametrize("boundary", ["circular", "valid"])
def test_encode_with_a_sparse_table_reports_the_reference_objective(rng, method, boundary):
    table = _table("singles-and-doubles")
    images = rng.standard_normal((2, 3, 8, 9))
    filters = rng.standard_normal((6, 3, 3, 3))
    filters /= np.sqrt((filters**2).sum(axis=(2, 3), keepdims=True))
    result = encode(images, filters, 0.1, method=method, boundary=boundary, connectivity=table, max_iter=30)
    direct = objective_reference(images, result.maps, filters, 0.1, boundary=boundary, connectivity=table)
    assert result.objective == pytest.approx(direct, rel=1e-10)
    assert result.objective < 0.5 * float(np.sum(images**2))


def test_zeiler_exact_z_step_with_a_sparse_table_equals_the_dense_masked_filters(rng):
    table = _table("random-doubles")
    images = rng.standard_normal((2, 4, 8, 8))
    filters = rng.standard_normal((5, 4, 3, 3))
    sparse = encode(images, filters, 0.1, method="zeiler", connectivity=table, max_iter=12)
    masked = encode(images, filters * table[:, :, None, None], 0.1, method="zeiler", max_iter=12)
    np.testing.assert_allclose(sparse.maps, masked.maps, rtol=1e-9, atol=1e-9)
