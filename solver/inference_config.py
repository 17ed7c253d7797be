"""Frozen, validated inference configuration models: one per sparse-coding method (Zeiler, FISTA, ADMM).

Split from :mod:`solver.config`, which re-exports every name here; see it for the λ convention.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

Boundary = Literal["circular", "valid"]
DType = Literal["float32", "float64"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class ZeilerConfig(_Frozen):
    """Zeiler et al. 2010: auxiliary variable x, penalty β/2‖z − x‖², β continued by a factor per stage.

    Toolbox defaults: β0 = 1, ×10, 6 stages, one x-step and one z-step per stage, 2 CG steps.

    Attributes
    ----------
    beta0, beta_factor, n_beta : float, float, int
        The β continuation: β0, its factor per stage and the number of stages (toolbox: 1, ×10, 6).
    inner_iter : int
        x/z iterations per β stage.
    total_iter : int, optional
        Iterations in all, spread as evenly as they go over the stages (a stage takes ⌊total/n_beta⌋ z-steps or one
        more; fewer iterations than stages visit stages spread over the whole continuation, the last one last);
        when given, `inner_iter` is not used. This is how ``max_iter`` of ``encode`` reaches this method.
    z_solver : {"exact", "cg"}
        The z-step per frequency (circular boundary) or by `cg_iter` CG steps.
    max_iter : int
        Iterations in all: `total_iter`, or ``n_beta · inner_iter``.

    Examples
    --------
    >>> from solver import ZeilerConfig
    >>> ZeilerConfig(n_beta=4).max_iter, ZeilerConfig(n_beta=4, total_iter=10).max_iter
    (4, 10)
    """

    method: Literal["zeiler"] = "zeiler"
    beta0: float = Field(1.0, gt=0)
    beta_factor: float = Field(10.0, gt=1)
    n_beta: int = Field(6, ge=1)
    inner_iter: int = Field(1, ge=1, description="x/z iterations per β stage")
    total_iter: int | None = Field(
        None, ge=1, description="iterations in all, spread evenly over the β stages (inner_iter is then not used)"
    )
    z_solver: Literal["exact", "cg"] = Field(
        "exact", description="'exact': per-frequency Woodbury solve (circular only); 'cg': the toolbox's CG"
    )
    cg_iter: int = Field(2, ge=1, description="CG steps per z-step (valid boundary, or z_solver='cg')")

    @property
    def max_iter(self) -> int:
        return self.n_beta * self.inner_iter if self.total_iter is None else self.total_iter

    def stage_of(self, iteration: int) -> int:
        """The β stage of the x-step that ends `iteration` (0: the initial x; the last ends in the last stage)."""
        if self.total_iter is None:
            return min(iteration // self.inner_iter, self.n_beta - 1)
        return min(iteration * self.n_beta // self.total_iter, self.n_beta - 1)


class FistaConfig(_Frozen):
    """FISTA (Beck & Teboulle 2009) with step 1/L and a function-value restart that keeps it monotone.

    Attributes
    ----------
    max_iter : int
        At most this many iterations.
    tol : float
        Stop when the change of E is at most ``tol · E``.

    Examples
    --------
    >>> from solver import FistaConfig
    >>> FistaConfig(max_iter=50).tol
    1e-05
    """

    method: Literal["fista"] = "fista"
    max_iter: int = Field(200, ge=1)
    tol: float = Field(1e-5, ge=0, description="stop when |ΔE| ≤ tol·E")


class AdmmConfig(_Frozen):
    """ADMM for CSC in the Fourier domain (Wohlberg 2016); mask decoupling for the valid boundary.

    ρ follows residual balancing with a target ratio and adaptive scaling (Wohlberg, "ADMM penalty parameter
    selection by residual balancing", 2015), per image.

    Attributes
    ----------
    max_iter, tol : int, float
        At most `max_iter` iterations; stop when both relative residuals are at most `tol`.
    relax : float
        Over-relaxation α in (0, 2).
    adaptive_rho, rho_period, rho_early, rho_ratio, rho_scale, rho_autoscale
        The per-image penalty ρ and how it adapts to the residuals.
    fused : bool
        Use the fused kernels where they apply.

    Examples
    --------
    >>> from solver import AdmmConfig
    >>> AdmmConfig(max_iter=20).relax
    1.8
    """

    method: Literal["admm"] = "admm"
    max_iter: int = Field(200, ge=1)
    tol: float = Field(
        1e-4,
        ge=0,
        description="stop when both relative residuals are ≤ tol (tested every rho_period iterations, "
        "when the residuals are computed)",
    )
    rho: float | None = Field(
        None,
        gt=0,
        description="initial penalty; default 50·λ' + 1 (SPORCO's rule), λ' = λ / max(1, peak |y| of the image)",
    )
    relax: float = Field(1.8, gt=0, lt=2, description="over-relaxation α")
    adaptive_rho: bool = Field(
        True, description="balance ρ against the residuals (p = 1 only: with p < 1 ρ stays at its initial value)"
    )
    rho_period: int = Field(10, ge=1, description="iterations between updates of ρ (every iteration can oscillate)")
    rho_early: int = Field(
        10,
        ge=0,
        description="ρ is updated every other iteration during the first rho_early iterations of a cold start, "
        "whose initial ρ is furthest from balance (not after a warm start's ρ; updating that often throughout "
        "can keep ρ from settling)",
    )
    rho_ratio: float = Field(1.2, gt=1, description="tolerance μ on the residual ratio before ρ changes")
    rho_scale: float = Field(1000.0, gt=1, description="largest factor τ by which ρ changes at once")
    rho_target: float | None = Field(
        None,
        gt=0,
        description="target ratio ξ of the relative residuals; default 1 + 18.3^(log10 λ' + 1), λ' as for rho",
    )
    rho_autoscale: bool = Field(True, description="change ρ by √(r/(ξs)) (capped at τ) instead of by τ")
    fused: bool = Field(
        True,
        description="use the fused kernels where they apply (numba on the CPU, CUDA on cupy; one "
        "channel, p = 1, circular)",
    )


InferenceConfig = Annotated[ZeilerConfig | FistaConfig | AdmmConfig, Field(discriminator="method")]
INFERENCE_MODELS: dict[str, type[_Frozen]] = {"zeiler": ZeilerConfig, "fista": FistaConfig, "admm": AdmmConfig}

__all__ = ["INFERENCE_MODELS", "AdmmConfig", "Boundary", "DType", "FistaConfig", "InferenceConfig", "ZeilerConfig"]
