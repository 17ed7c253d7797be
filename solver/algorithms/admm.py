r"""ADMM for convolutional sparse coding in the Fourier domain (Wohlberg, IEEE TIP 2016).

Circular boundary (split z = x, scaled dual u, over-relaxation α):

.. math::

    \hat x &= (\hat D^H \hat D + \rho I)^{-1} (\hat D^H \hat y + \rho(\hat z - \hat u)) \\
    z &= \operatorname{shrink}_p(\alpha x + (1-\alpha) z + u, \lambda/\rho) \\
    u &\leftarrow u + \alpha x + (1-\alpha) z_{\text{old}} - z

The per-frequency solve is Sherman–Morrison/Woodbury with a factor cached until ρ changes. ρ is balanced
against the normalised primal and dual residuals every other iteration for the first ``rho_early`` iterations of a
cold start, whose initial ρ is furthest from balance, then every ``rho_period`` (Wohlberg 2017); a warm start's ρ is
balanced already, and each change of ρ costs a new factor (for several channels, eigendecompositions per frequency).
The residuals are computed on those iterations only, and so is the stopping test (``tol``).
The default initial ρ and target ratio are SPORCO's rules on λ divided by the image's peak where that exceeds 1
(:func:`heuristic_lam`), so that images in pixel units are coded as the same images in [0, 1]; with p < 1 ρ is
not balanced (:meth:`Admm._rho_scale`).

The dual is kept in both domains (its update is linear), so one irfft and one rfft of the maps are done per
iteration. An iteration ends in the Fourier domain with everything the next one needs: the state carries the
next iteration's solution x̂ (``solve_hat``) and ``carry_hat`` = û + αx̂ + (1−α)ẑ, from which the next dual is
carry_hat − ẑ_next. So the dual update, the data term of E (by Parseval, from ẑ) and the next solve share one
pass over the Fourier arrays (:func:`solver.operators.kernels.admm_fourier` for one channel and p = 1, or its CUDA twin
:func:`solver.operators.gpu_kernels.admm_fourier` on the cupy backend), and the state holds two complex arrays besides z
and u.

Valid boundary: mask decoupling (Heide et al. CVPR 2015; SPORCO's ConvBPDNMaskDcpl) splits the circular
synthesis D x = y₀ on the map grid and x = y₁; the data term ½‖P y₀ − y‖² then has an element-wise prox, and
the x-step solves (DᴴD + I) x = Dᴴ(y₀ − u₀) + (y₁ − u₁) with a factor that does not depend on ρ.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from ..backend import Array, backend_of
from ..config import AdmmConfig
from ..operators import gpu_kernels, kernels
from ..operators.linalg import ShiftedNormalFactor
from .admm_state import AdmmState, AdmmWarmStart
from .base import SolverBase
from .problem import CSCProblem, sq_norm_per_item


def _norms(*arrays: Array) -> np.ndarray:
    """Per-image Euclidean norm of the concatenation of `arrays` (each (N, ...))."""
    return np.sqrt(sum(sq_norm_per_item(a) for a in arrays))


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.maximum(den, 1e-30)


def heuristic_lam(lam: float, images: Array) -> np.ndarray:
    """Per image, the λ that the default ρ rules read: λ divided by the image's peak |y| where that exceeds 1.

    SPORCO's rules (ρ₀ = 50λ + 1, ξ = 1 + 18.3^(log10 λ + 1)) were tuned on images of at most unit range, and
    λ carries the images' units (y → cy, λ → cλ gives the maps cz). Read in pixel units (0..255) they start ρ
    hundreds of times too large and aim the residual balance at the wrong ratio, so ADMM stalls far from the
    optimum. Dividing by the peak makes the rules the same for an image and any multiple of it above unit
    range, and leaves them as they were for images within it.
    """
    bk = backend_of(images)
    xp = bk.xp
    peak = bk.to_host(xp.max(xp.abs(images.reshape(images.shape[0], -1)), axis=1)).astype(np.float64)
    return lam / np.maximum(peak, 1.0)


def cold_start_rho(config: AdmmConfig, lam: float, images: Array) -> np.ndarray:
    """ρ of a cold start per image: ``config.rho``, or 50λ' + 1 with λ' from :func:`heuristic_lam`."""
    return _cold_rho(config, heuristic_lam(lam, images))


def _cold_rho(config: AdmmConfig, heuristic: np.ndarray) -> np.ndarray:
    """``config.rho`` for each image, or 50λ' + 1 from the per-image λ' of :func:`heuristic_lam`."""
    if config.rho is not None:
        return np.full(heuristic.shape, float(config.rho))
    return 50.0 * heuristic + 1.0


class Admm(SolverBase):
    """ADMM solver; see the module docstring."""

    def __init__(self, problem: CSCProblem, config: AdmmConfig | None = None):
        self.problem = problem
        self.config = config or AdmmConfig()
        self._masked = problem.op.grid.cropped
        self._early = self.config.rho_early  # the early window of ρ updates; none after a warm start (init)
        self._factor: ShiftedNormalFactor | None = None
        self._rho_of_factor: np.ndarray | None = None  # the ρ array `_factor` was last asked for
        self._flat_inverse: tuple[ShiftedNormalFactor, Array] | None = None  # the fused kernels' view of its inverse
        # per image (ξ of residual balancing; the images' units are taken out, see heuristic_lam)
        lam = heuristic_lam(problem.lam, problem.images)
        self._rho0 = _cold_rho(self.config, lam)
        self._rho_target = (
            np.full(lam.shape, float(self.config.rho_target))
            if self.config.rho_target is not None
            else 1.0 + 18.3 ** (np.log10(lam) + 1.0)
        )
        if self._masked:  # mask decoupling solves (DᴴD + I): the shift does not depend on ρ
            self._factor = problem.op.factor_shifted_normal(1.0)
        op = problem.op
        # numba on the CPU, CUDA on the GPU: the same functions with the same signatures
        self._kernels = kernels if problem.backend.name == "numpy" else gpu_kernels
        self._fused = (
            self.config.fused
            and not self._masked
            and self._kernels.available()
            and op.n_channels == 1
            and problem.p == 1.0
            and problem.images.dtype in (np.float32, np.float64)
        )
        # the CPU kernels read the inverse transform of x̂ unnormalised and apply its 1/(H·W) themselves: a pass
        # over x the FFT's own scaling would make (kernels.admm_spatial's x_scale)
        H, W = op.map_shape
        self._x_scale = 1.0 / (H * W) if self._fused and self._kernels is kernels else 1.0
        # the fused path writes an iterate into the arrays of a state given up (step's `out`): base.run then
        # recycles its states instead of allocating every iteration
        self.reuses_states = self._fused
        # circular boundary: states keep ẑ (``maps_hat``), for a caller that needs the maps' transform after the
        # run (interleaved learning: the filter step and the next warm start read it instead of an FFT)
        self.keep_maps_hat = False
        if self._fused:  # flattened views and the full Parseval weights the kernels read
            xp = problem.backend.xp
            U, V = problem.images_hat.shape[-2:]
            self._a = xp.ascontiguousarray(op.filters_hat[:, 0].reshape(op.n_filters, U * V))
            self._y_hat = xp.ascontiguousarray(problem.images_hat[:, 0].reshape(-1, U * V))
            self._w = xp.ascontiguousarray(xp.broadcast_to(problem._weights, (U, V)).reshape(U * V))

    def _factor_for(self, rho: np.ndarray) -> ShiftedNormalFactor:
        if self._masked:
            return self._factor
        # a state passes its ρ array on until ρ changes, and a change makes a new array (never one written in
        # place): most iterations need no comparison
        if rho is self._rho_of_factor:
            return self._factor
        if self._factor is None or not np.array_equal(self._factor.rho, rho):
            self._factor = self.problem.op.factor_shifted_normal(rho)
        self._rho_of_factor = rho
        return self._factor

    def _per_image(self, values: np.ndarray, like: Array) -> Array:
        """Host per-image scalars (N,) as a device array broadcasting over (N, K, ...) arrays like `like`."""
        return self.problem.backend.asarray(values.reshape(-1, 1, 1, 1), dtype=like.real.dtype)

    # ---- initial state ---------------------------------------------------------------------------------------

    def init(self, maps0: Array | None = None, warm: AdmmState | AdmmWarmStart | None = None) -> AdmmState:
        """Start from `maps0` (zeros by default); `warm` carries ρ and the dual variables of a previous run
        (its ``rho``, ``dual`` and ``aux_dual`` are read, and used when their shapes fit)."""
        pb = self.problem
        xp = pb.backend.xp
        maps = pb.zeros() if maps0 is None else maps0
        n = maps.shape[0]
        compatible = warm is not None and tuple(warm.dual.shape) == tuple(maps.shape)
        self._early = 0 if compatible else self.config.rho_early
        rho = np.array(warm.rho, dtype=np.float64) if compatible else self.initial_rho()
        dual = warm.dual if compatible else xp.zeros_like(maps)
        inf = np.full(n, np.inf)
        if self._masked:
            return self._init_masked(maps, dual, rho, warm if compatible else None)
        fourier = compatible and warm.maps_hat is not None and warm.dual_hat is not None
        if fourier:
            maps_hat = warm.maps_hat
        elif maps0 is None:  # a cold start: the transform of zeros, without an FFT
            W = maps.shape[-1]
            maps_hat = xp.zeros(maps.shape[:-1] + (W // 2 + 1,), dtype=xp.result_type(maps.dtype, xp.complex64))
        else:
            maps_hat = pb.op.rfft(maps)
        if fourier:  # carry = û + ẑ, so that û = carry − ẑ (in û's array: the run owns the warm start's arrays)
            carry_hat = warm.dual_hat
            carry_hat += maps_hat
        elif compatible:
            carry_hat = pb.op.rfft(dual)
            carry_hat += maps_hat
        else:
            carry_hat = pb.backend.xp.array(maps_hat) if self.keep_maps_hat else maps_hat
        solve_hat, carry_hat, data = self._fourier(maps_hat, carry_hat, np.ones(n), rho, t_out=carry_hat)
        sparsity, nonzero = self._start_summary(maps0, maps, warm if compatible else None)
        return AdmmState(
            maps,
            dual,
            rho,
            data + sparsity,
            inf,
            inf,
            solve_hat=solve_hat,
            carry_hat=carry_hat,
            maps_hat=maps_hat if self.keep_maps_hat else None,
            sparsity=sparsity,
            nonzero=nonzero,
        )

    def _start_summary(
        self, maps0: Array | None, maps: Array, warm: AdmmState | AdmmWarmStart | None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """λ‖z‖ₚᵖ per image of the start, and its non-zero count where known: nothing to compute for zeros or
        where the warm start carries them (:class:`AdmmWarmStart`), else one pass over the maps."""
        n = maps.shape[0]
        if maps0 is None:
            return np.zeros(n), np.zeros(n)
        known = warm.summary if isinstance(warm, AdmmWarmStart) else None
        if known is not None and (known.lam, known.p) == (self.problem.lam, self.problem.p):
            return known.sparsity, known.nonzero
        if self._fused and self._kernels is kernels:  # p = 1: λ‖z‖₁ and the count per image in one parallel pass
            l1, count = kernels.abs_and_count(maps)
            return self.problem.lam * l1, count.astype(np.float64)
        return self.problem.regulariser(maps), None

    def initial_rho(self) -> np.ndarray:
        """ρ of a cold start per image: ``config.rho``, or 50λ' + 1 (:func:`heuristic_lam`)."""
        return self._rho0.copy()

    def _init_masked(self, maps: Array, dual: Array, rho: np.ndarray, warm: AdmmWarmStart | None) -> AdmmState:
        pb = self.problem
        op = pb.op
        xp = pb.backend.xp
        n = maps.shape[0]
        maps_hat = op.rfft(maps)
        _, data = pb.residual(maps_hat)
        aux_hat = op.forward_hat(maps_hat)
        if warm is not None and warm.aux_dual is not None:
            aux_dual = warm.aux_dual
        else:
            aux_dual = xp.zeros((n, op.n_channels) + op.map_shape, dtype=maps.dtype)
        inf = np.full(n, np.inf)
        return AdmmState(
            maps,
            dual,
            rho,
            data + pb.regulariser(maps),
            inf,
            inf,
            maps_hat=maps_hat,
            dual_hat=op.rfft(dual),
            aux=op.irfft(aux_hat),
            aux_hat=aux_hat,
            aux_dual=aux_dual,
            aux_dual_hat=op.rfft(aux_dual),
        )

    # ---- one iteration ---------------------------------------------------------------------------------------

    def step(
        self, state: AdmmState, *, out: AdmmState | None = None, final: bool = False, consume: bool = False
    ) -> AdmmState:
        """One iteration from `state`.

        `out` is a state the caller gives up (it may be `state` itself): the fused path writes the new iterate
        into its arrays instead of allocating new ones; the other paths ignore it. `consume`: the caller keeps
        at most the maps of `state`, so that its other arrays may be destroyed. Without `out` or `consume` no
        array of `state` is modified.

        `final`: no iteration follows with these filters (interleaved learning changes them next), so the
        solve of the next iteration is not made where that saves work (the fused CPU path, circular boundary,
        ``keep_maps_hat``): the returned state then holds ẑ and û (``maps_hat``, ``dual_hat``) instead of x̂ and
        the carry, and can only be turned into a warm start (:meth:`fourier_warm_start`).
        """
        if self._masked:
            return self._step_masked(state)
        return self._step_circular(state, out, final, consume)

    def _residuals_due(self, iteration: int) -> bool:
        if iteration <= self._early:
            return iteration % 2 == 0
        return iteration % self.config.rho_period == 0

    def _step_circular(self, s: AdmmState, out: AdmmState | None, final: bool, consume: bool) -> AdmmState:
        pb = self.problem
        it = s.iteration + 1
        due = self._residuals_due(it)
        # x̂ is not needed after its inverse FFT where the caller gives it up
        consumed = consume or (out is not None and out.solve_hat is s.solve_hat)
        x = self._irfft(s.solve_hat, overwrite=consumed)
        maps, dual, sparsity, nonzero, residuals = self._shrink(x, s, due, out)
        del x
        maps_hat = pb.op.rfft(maps)
        rho, dual_scale = s.rho, np.ones_like(s.rho)
        primal, dual_r, at = s.primal_residual, s.dual_residual, s.residual_iteration
        if due:
            (primal, dual_r), at = residuals, it
            scale = self._rho_scale(primal, dual_r)
            if scale is not None:  # scaled duals follow ρ inversely: u = y/ρ
                rho, dual_scale = rho * scale, 1.0 / scale
                dual *= self._per_image(dual_scale, dual)  # made by this iteration, or `out`'s
        keep = self.keep_maps_hat
        if final and keep and self._fused and self._kernels is kernels:
            # û = scale·(t̂ − ẑ) (into `out`'s carry when given up) and the data term, in one pass
            dual_hat, twice_data = kernels.dual_and_data(
                maps_hat,
                s.carry_hat,
                dual_scale,
                self._a,
                self._y_hat,
                self._w,
                u_out=None if out is None else out.carry_hat,
            )
            return AdmmState(
                maps,
                dual,
                rho,
                0.5 * twice_data + sparsity,
                primal,
                dual_r,
                it,
                at,
                maps_hat=maps_hat,
                dual_hat=dual_hat,
                sparsity=sparsity,
                nonzero=nonzero,
            )
        # ẑ is needed by this pass only: without `out`, the next carry takes its place
        solve_hat, carry_hat, data = self._fourier(
            maps_hat,
            s.carry_hat,
            dual_scale,
            rho,
            x_out=None if out is None else out.solve_hat,
            t_out=(None if keep else maps_hat) if out is None else out.carry_hat,
        )
        return AdmmState(
            maps,
            dual,
            rho,
            data + sparsity,
            primal,
            dual_r,
            it,
            at,
            solve_hat=solve_hat,
            carry_hat=carry_hat,
            maps_hat=maps_hat if keep else None,
            sparsity=sparsity,
            nonzero=nonzero,
        )

    def fourier_warm_start(self, state: AdmmState) -> AdmmWarmStart:
        """The warm start of `state` with ẑ and û (circular boundary, ``keep_maps_hat``), for a run with other
        filters that then needs no FFT: û = carry − αx̂ − (1−α)ẑ, written over x̂ (`state` is given up)."""
        if self._masked or state.maps_hat is None:
            raise ValueError("a Fourier warm start needs a circular-boundary state that kept maps_hat")
        if state.solve_hat is None and state.dual_hat is not None:  # a final step's: û is there already
            return AdmmWarmStart(state.rho, state.dual, None, maps_hat=state.maps_hat, dual_hat=state.dual_hat)
        if state.solve_hat is None:
            raise ValueError("a Fourier warm start needs the state's x̂ and carry, or its û")
        a = self.config.relax
        if self._fused and self._kernels is kernels:  # one pass
            dual_hat = kernels.dual_hat(state.solve_hat, state.carry_hat, state.maps_hat, a)
            return AdmmWarmStart(state.rho, state.dual, None, maps_hat=state.maps_hat, dual_hat=dual_hat)
        dual_hat = state.solve_hat
        dual_hat *= -a
        dual_hat += state.carry_hat
        if a != 1.0:
            dual_hat -= (1 - a) * state.maps_hat
        return AdmmWarmStart(state.rho, state.dual, None, maps_hat=state.maps_hat, dual_hat=dual_hat)

    def _irfft(self, a_hat: Array, *, overwrite: bool) -> Array:
        shape, workers = self.problem.op.map_shape, self.problem.backend.workers
        if self._x_scale != 1.0:
            return kernels.irfft2(a_hat, shape, workers, overwrite=overwrite, scaled=False)
        if self._fused:
            return self._kernels.irfft2(a_hat, shape, workers, overwrite=overwrite)
        return self.problem.op.irfft(a_hat)

    def _shrink(
        self, x: Array, s: AdmmState, due: bool, out: AdmmState | None
    ) -> tuple[Array, Array, np.ndarray, np.ndarray | None, tuple[np.ndarray, np.ndarray] | None]:
        """z, u, the sparsity term λ‖z‖ₚᵖ per image, the non-zeros of z per image where the kernel counts them,
        and the relative (primal, dual) residuals when `due`."""
        pb = self.problem
        a = self.config.relax
        if self._fused:
            N, K = s.maps.shape[:2]
            flat = (N, K, -1)
            z_out = None if out is None else out.maps.reshape(flat)
            u_out = None if out is None else out.dual.reshape(flat)
            maps, dual, sums = self._kernels.admm_spatial(
                x.reshape(flat),
                s.maps.reshape(flat),
                s.dual.reshape(flat),
                a,
                pb.lam / s.rho,
                residuals=due,
                z_out=z_out,
                u_out=u_out,
                x_scale=self._x_scale,
            )
            maps, dual, sparsity = maps.reshape(s.maps.shape), dual.reshape(s.maps.shape), pb.lam * sums[:, 5]
            nonzero = sums[:, 6]
            if not due:
                return maps, dual, sparsity, nonzero, None
            primal = _ratio(np.sqrt(sums[:, 0]), np.maximum(np.sqrt(sums[:, 1]), np.sqrt(sums[:, 2])))
            return maps, dual, sparsity, nonzero, (primal, _ratio(np.sqrt(sums[:, 3]), np.sqrt(sums[:, 4])))
        xr = a * x + (1 - a) * s.maps
        maps = pb.penalty.prox(xr + s.dual, 1.0 / self._per_image(s.rho, x))
        dual = s.dual + xr - maps
        sparsity = pb.regulariser(maps)
        if not due:
            return maps, dual, sparsity, None, None
        primal = _ratio(_norms(x - maps), np.maximum(_norms(x), _norms(maps)))
        return maps, dual, sparsity, None, (primal, _ratio(_norms(maps - s.maps), _norms(dual)))

    def _fourier(
        self,
        maps_hat: Array,
        carry_hat: Array,
        dual_scale: np.ndarray,
        rho: np.ndarray,
        *,
        x_out: Array | None = None,
        t_out: Array | None = None,
    ) -> tuple[Array, Array, np.ndarray]:
        """From ẑ and û = dual_scale·(carry − ẑ): the next x̂ (penalty ρ), the next carry, and the data term.
        The fused path writes them into `x_out` and `t_out` when given (`t_out` may be `maps_hat` or
        `carry_hat`, which are then overwritten)."""
        factor = self._factor_for(rho)
        if self._fused:
            N, K, U, V = maps_hat.shape
            flat = (N, K, U * V)
            if self._flat_inverse is None or self._flat_inverse[0] is not factor:  # (N, U·V), once per factor
                xp = self.problem.backend.xp
                inv = xp.ascontiguousarray(xp.broadcast_to(factor.inverse.reshape(-1, U * V), (N, U * V)))
                self._flat_inverse = (factor, inv)
            inv = self._flat_inverse[1]
            solve_hat, carry_hat, twice_data = self._kernels.admm_fourier(
                maps_hat.reshape(flat),
                carry_hat.reshape(flat),
                dual_scale,
                self._a,
                self._y_hat,
                self._w,
                inv,
                self.config.relax,
                x_out=None if x_out is None else x_out.reshape(flat),
                t_out=None if t_out is None else t_out.reshape(flat),
            )
            return solve_hat.reshape(maps_hat.shape), carry_hat.reshape(maps_hat.shape), 0.5 * twice_data
        pb = self.problem
        a = self.config.relax
        dual_hat = (carry_hat - maps_hat) * self._per_image(dual_scale, maps_hat)
        _, data = pb.residual(maps_hat)
        rhs_hat = pb.rhs_hat + self._per_image(rho, maps_hat) * (maps_hat - dual_hat)
        solve_hat = pb.op.solve_shifted_normal(factor, rhs_hat)
        return solve_hat, dual_hat + a * solve_hat + (1 - a) * maps_hat, data

    def _step_masked(self, s: AdmmState) -> AdmmState:
        pb = self.problem
        op = pb.op
        xp = pb.backend.xp
        a = self.config.relax
        b_hat = op.adjoint_hat(s.aux_hat - s.aux_dual_hat) + (s.maps_hat - s.dual_hat)
        x_hat = op.solve_shifted_normal(self._factor_for(s.rho), b_hat)
        x = op.irfft(x_hat)
        dx_hat = op.forward_hat(x_hat)
        dx = op.irfft(dx_hat)
        dxr = a * dx + (1 - a) * s.aux
        xr = a * x + (1 - a) * s.maps
        rho = self._per_image(s.rho, x)
        aux = (op.grid.pad(pb.images) + rho * (dxr + s.aux_dual)) / (op.grid.mask(xp, x.dtype) + rho)
        maps = pb.penalty.prox(xr + s.dual, 1.0 / rho)
        aux_dual = s.aux_dual + dxr - aux
        dual = s.dual + xr - maps
        aux_hat = op.rfft(aux)
        maps_hat = op.rfft(maps)
        aux_dual_hat = s.aux_dual_hat + (a * dx_hat + (1 - a) * s.aux_hat) - aux_hat
        dual_hat = s.dual_hat + (a * x_hat + (1 - a) * s.maps_hat) - maps_hat
        _, data = pb.residual(maps_hat)
        E = data + pb.regulariser(maps)
        it = s.iteration + 1
        new = AdmmState(
            maps,
            dual,
            s.rho,
            E,
            s.primal_residual,
            s.dual_residual,
            it,
            s.residual_iteration,
            maps_hat=maps_hat,
            dual_hat=dual_hat,
            aux=aux,
            aux_hat=aux_hat,
            aux_dual=aux_dual,
            aux_dual_hat=aux_dual_hat,
        )
        if not self._residuals_due(it):
            return new
        primal = _ratio(_norms(dx - aux, x - maps), np.maximum(_norms(dx, x), _norms(aux, maps)))
        dual_r = _ratio(_norms(aux - s.aux, maps - s.maps), _norms(aux_dual, dual))
        new = replace(new, primal_residual=primal, dual_residual=dual_r, residual_iteration=it)
        scale = self._rho_scale(primal, dual_r)
        if scale is None:
            return new
        inv_dual, inv_hat = self._per_image(1.0 / scale, dual), self._per_image(1.0 / scale, dual_hat)
        return replace(
            new,
            rho=new.rho * scale,
            dual=dual * inv_dual,
            dual_hat=dual_hat * inv_hat,
            aux_dual=aux_dual * inv_dual,
            aux_dual_hat=aux_dual_hat * inv_hat,
        )

    def _rho_scale(self, r: np.ndarray, d: np.ndarray) -> np.ndarray | None:
        """Residual balancing per image (Wohlberg 2015): when the relative primal and dual residuals r and d
        drift from the target ratio ξ by more than μ, the factor √(r/(ξd)) (at most τ) by which ρ changes;
        None when no image's ρ changes.

        Only for p = 1. With p < 1 the problem is not convex, and ADMM converges there only for ρ large enough
        (Wang, Yin & Zeng, J. Sci. Comput. 2019); balancing lowered ρ until the iterates diverged (E rising from
        148 to 387 on a 32² image, p = 0.8, 4 filters 5×5, λ 0.1), while the initial ρ held fixed ends within
        1 % of FISTA's E after 500 iterations, or below it, for p = 0.8 and 0.5, both boundaries."""
        cfg = self.config
        if not cfg.adaptive_rho or self.problem.p != 1.0:
            return None
        xi, mu, tau = self._rho_target, cfg.rho_ratio, cfg.rho_scale
        up = r > xi * mu * d
        down = d > (mu / xi) * r
        if not (up.any() or down.any()):
            return None
        if cfg.rho_autoscale:
            with np.errstate(divide="ignore", invalid="ignore"):
                ratio = np.where(up, r / (xi * d), (xi * d) / r)
            step = np.where(np.isfinite(ratio) & (ratio > 0), np.minimum(np.sqrt(ratio), tau), tau)
        else:
            step = np.full_like(r, tau)
        return np.where(up, step, np.where(down, 1.0 / step, 1.0))

    # ---- what the iteration loop reads -----------------------------------------------------------------------

    def map_summary(self, state: AdmmState) -> tuple[np.ndarray, np.ndarray] | None:
        """The sparsity term λ‖z‖ₚᵖ and the number of non-zeros of the maps, per image, where the step that
        made `state` counted them (the fused kernels, CPU or GPU) or the start knew them (:meth:`init`);
        otherwise None."""
        if state.sparsity is None or state.nonzero is None:
            return None
        return state.sparsity, state.nonzero

    def converged(self, state: AdmmState, previous: AdmmState) -> np.ndarray:
        """Per image: both relative residuals ≤ tol, tested on the iterations that compute them."""
        tol = self.config.tol
        if state.residual_iteration != state.iteration:
            return np.zeros(np.shape(state.primal_residual), dtype=bool)
        return (state.primal_residual <= tol) & (state.dual_residual <= tol)
