"""Contract tests (Pyxu style): a concrete operator's or prox's test class subclasses one of these and supplies
the fixtures; the checks are inherited.

``LinearOperatorContract`` needs ``op_forward``, ``op_adjoint`` (callables), ``in_shape``, ``out_shape`` and
uses ``rng``, ``dtype``, ``backend`` and ``tol`` (the default: ``1e3 * eps(dtype)``).

``ProxContract`` needs ``prox_map(v, step)`` (the prox of ``step · g``), ``prox_value(x) -> float`` (g, possibly
inf), ``step`` and ``in_shape``. ``ConvexProxContract`` adds non-expansiveness and the Moreau identity, for
which it needs ``moreau_complement(v, step)``, the term ``step · prox_{g*/step}(v / step)`` computed
independently of ``prox_map``. ``ProjectionContract`` adds idempotence and feasibility.
"""

from __future__ import annotations

import numpy as np
import pytest

from solver.backend import backend_of


def dtype_tol(dtype, factor: float = 1e3) -> float:
    """`factor` machine epsilons of `dtype`: the tolerance of a result computed in that dtype (the default,
    1000 ε, covers the FFTs and sums of the operators; pass a smaller factor for a few roundings)."""
    return factor * float(np.finfo(dtype).eps)


def assert_adjoint(forward, adjoint, x, y, tol: float):
    """Assert the adjoint identity ⟨A x, y⟩ = ⟨x, Aᴴ y⟩ within ``tol · ‖A x‖ ‖y‖``, computed on the host in
    complex128 (real or complex arrays of any backend). Returns (A x, Aᴴ y) for further checks."""
    Ax, Aty = forward(x), adjoint(y)
    Ax_h, Aty_h, x_h, y_h = (backend_of(a).to_host(a).astype(np.complex128).ravel() for a in (Ax, Aty, x, y))
    lhs, rhs = np.vdot(Ax_h, y_h), np.vdot(x_h, Aty_h)
    bound = tol * np.linalg.norm(Ax_h) * np.linalg.norm(y_h)
    assert abs(lhs - rhs) <= bound, f"<Ax, y> = {lhs} but <x, A^H y> = {rhs} (allowed difference {bound:.3g})"
    return Ax, Aty


def _norm(a) -> float:
    return float(np.linalg.norm(np.asarray(a, dtype=np.float64).ravel()))


def _dot(a, b) -> float:
    return float(np.vdot(np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()))


class LinearOperatorContract:
    """Adjoint identity, linearity, backend and dtype of the output, inputs left untouched."""

    @pytest.fixture
    def tol(self, dtype) -> float:
        return dtype_tol(dtype)

    @pytest.fixture
    def x(self, rng, dtype, backend, in_shape):
        return backend.asarray(rng.standard_normal(in_shape).astype(dtype))

    @pytest.fixture
    def y(self, rng, dtype, backend, out_shape):
        return backend.asarray(rng.standard_normal(out_shape).astype(dtype))

    def test_forward_output_shape(self, op_forward, x, out_shape):
        assert tuple(op_forward(x).shape) == tuple(out_shape)

    def test_adjoint_output_shape(self, op_adjoint, y, in_shape):
        assert tuple(op_adjoint(y).shape) == tuple(in_shape)

    def test_adjoint_identity(self, op_forward, op_adjoint, x, y, tol):
        assert_adjoint(op_forward, op_adjoint, x, y, tol)

    def test_linearity(self, op_forward, x, rng, dtype, backend, in_shape, tol):
        x2 = backend.asarray(rng.standard_normal(in_shape).astype(dtype))
        a, b = 0.7, -2.5
        lhs = backend.to_host(op_forward(a * x + b * x2))
        Ax, Ax2 = backend.to_host(op_forward(x)), backend.to_host(op_forward(x2))
        rhs = a * Ax.astype(np.float64) + b * Ax2.astype(np.float64)
        assert _norm(lhs - rhs) <= tol * (abs(a) * _norm(Ax) + abs(b) * _norm(Ax2))

    def test_adjoint_linearity(self, op_adjoint, y, rng, dtype, backend, out_shape, tol):
        y2 = backend.asarray(rng.standard_normal(out_shape).astype(dtype))
        a, b = -1.25, 3.0
        lhs = backend.to_host(op_adjoint(a * y + b * y2))
        Ay, Ay2 = backend.to_host(op_adjoint(y)), backend.to_host(op_adjoint(y2))
        rhs = a * Ay.astype(np.float64) + b * Ay2.astype(np.float64)
        assert _norm(lhs - rhs) <= tol * (abs(a) * _norm(Ay) + abs(b) * _norm(Ay2))

    def test_forward_keeps_backend_and_dtype(self, op_forward, x, dtype, backend):
        out = op_forward(x)
        assert out.dtype == dtype
        assert backend_of(out).name == backend.name

    def test_adjoint_keeps_backend_and_dtype(self, op_adjoint, y, dtype, backend):
        out = op_adjoint(y)
        assert out.dtype == dtype
        assert backend_of(out).name == backend.name

    def test_forward_leaves_input_unchanged(self, op_forward, x, backend):
        before = backend.to_host(x).copy()
        op_forward(x)
        np.testing.assert_array_equal(backend.to_host(x), before)

    def test_adjoint_leaves_input_unchanged(self, op_adjoint, y, backend):
        before = backend.to_host(y).copy()
        op_adjoint(y)
        np.testing.assert_array_equal(backend.to_host(y), before)


def _prox_objective(prox_value, v, x, step) -> float:
    """½‖x − v‖² + step · g(x), accumulated in float64."""
    d = np.asarray(x, dtype=np.float64) - np.asarray(v, dtype=np.float64)
    return 0.5 * float(np.sum(d * d)) + step * prox_value(x)


def _perturbations(rng, point: np.ndarray) -> list[np.ndarray]:
    """Random perturbations of `point` at several scales, plus the two trivial candidates 0 and `point`·0.5."""
    scales = (1e-4, 1e-2, 1e-1, 1.0)
    out = [point + s * rng.standard_normal(point.shape) for s in scales for _ in range(4)]
    # single-entry moves: the prox is separable for shrinkage, so these probe each coordinate's choice
    for s in scales:
        q = point.copy()
        q.flat[rng.integers(point.size)] += s * rng.choice([-1.0, 1.0])
        out.append(q)
    out += [np.zeros_like(point), 0.5 * point]
    return out


class ProxContract:
    """Optimality of the prox against perturbations; output shape and dtype; input left untouched."""

    @pytest.fixture
    def tol(self, dtype) -> float:
        return dtype_tol(dtype)

    @pytest.fixture
    def v(self, rng, dtype, in_shape) -> np.ndarray:
        return (2.0 * rng.standard_normal(in_shape)).astype(dtype)

    def test_prox_keeps_shape_and_dtype(self, prox_map, v, step, dtype):
        out = prox_map(v, step)
        assert out.shape == v.shape
        assert out.dtype == dtype

    def test_prox_leaves_input_unchanged(self, prox_map, v, step):
        before = v.copy()
        prox_map(v, step)
        np.testing.assert_array_equal(v, before)

    def test_prox_is_no_worse_than_perturbations(self, prox_map, prox_value, v, step, rng, tol):
        p = np.asarray(prox_map(v, step), dtype=np.float64)
        best = _prox_objective(prox_value, v, p, step)
        others = np.array([_prox_objective(prox_value, v, q, step) for q in _perturbations(rng, p)])
        assert np.all(best <= others + tol * (1.0 + abs(best)))


class ConvexProxContract(ProxContract):
    """For convex g: the prox is non-expansive and satisfies the Moreau identity."""

    def test_prox_is_nonexpansive(self, prox_map, v, step, rng, dtype, tol):
        u = v + rng.standard_normal(v.shape).astype(dtype)
        pu = np.asarray(prox_map(u, step), dtype=np.float64)
        pv = np.asarray(prox_map(v, step), dtype=np.float64)
        assert _norm(pu - pv) <= _norm(u.astype(np.float64) - v) * (1.0 + tol)

    def test_moreau_identity(self, prox_map, moreau_complement, v, step, tol):
        total = np.asarray(prox_map(v, step), dtype=np.float64) + np.asarray(
            moreau_complement(v, step), dtype=np.float64
        )
        np.testing.assert_allclose(total, v, rtol=tol, atol=tol * float(np.max(np.abs(v))))


class ProjectionContract(ConvexProxContract):
    """For an indicator g: the prox is a projection, so its output is feasible and a fixed point."""

    def test_projection_is_feasible(self, prox_map, prox_value, v, step):
        assert prox_value(prox_map(v, step)) == 0.0

    def test_projection_is_idempotent(self, prox_map, v, step, tol):
        once = prox_map(v, step)
        np.testing.assert_allclose(prox_map(once, step), once, rtol=tol, atol=tol)
