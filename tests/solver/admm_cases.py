"""The coding problems the fused ADMM kernels serve (one channel, p = 1), shared by the kernel tests."""

from __future__ import annotations

import numpy as np

from solver.algorithms.problem import CSCProblem
from solver.backend import get_backend
from solver.operators.convolution import ConvOperator
from solver.operators.linalg import factor_shifted_normal
from solver.operators.prox import LpPenalty


def problem_for(rng, dtype, xp_backend=None, shape=(13, 16), n_images=3, n_filters=5, size=4) -> CSCProblem:
    """A one-channel coding problem with p = 1 (the case the fused kernels serve), on `xp_backend`."""
    filters = rng.standard_normal((n_filters, 1, size, size))
    filters /= np.sqrt((filters**2).sum(axis=(1, 2, 3), keepdims=True))
    images = rng.standard_normal((n_images, 1) + shape)
    bk = xp_backend or get_backend("numpy")
    op = ConvOperator(bk.asarray(filters, dtype=dtype), shape)
    return CSCProblem(bk.asarray(images, dtype=dtype), op, LpPenalty(0.1))


def fourier_inputs(rng, dtype, n_images=3, n_filters=5, shape=(13, 16)):
    """(problem, factor, the arguments of admm_fourier) at random ẑ and t̂ and per-image ρ and dual scales."""
    problem = problem_for(rng, dtype, shape=shape, n_images=n_images, n_filters=n_filters)
    op = problem.op
    z_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    t_hat = op.rfft(rng.standard_normal(problem.maps_shape).astype(dtype))
    rho, scale = np.linspace(0.5, 7.0, n_images), np.linspace(1.0, 0.25, n_images)
    factor = factor_shifted_normal(op.filters_hat, rho)
    N, K, U, V = z_hat.shape
    flat = (N, K, U * V)
    args = (
        z_hat.reshape(flat),
        t_hat.reshape(flat),
        scale,
        op.filters_hat[:, 0].reshape(K, U * V),
        problem.images_hat[:, 0].reshape(N, U * V),
        np.broadcast_to(problem._weights, (U, V)).reshape(-1),
        factor.inverse.reshape(N, U * V),
        1.8,
    )
    return problem, factor, args
