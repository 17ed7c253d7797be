"""Frozen, validated configuration models (pydantic, extra fields forbidden).

Validation happens once, at the boundary (a YAML file, an API request, a keyword of :func:`solver.learn`); the
numerics trust these models. λ multiplies the sparsity term everywhere (SPORCO's convention). Zeiler's toolbox
puts λ_Z on the data term and κ on the sparsity term: its (λ_Z, κ) is our ``lam = κ / λ_Z``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import Field, field_validator, model_validator

from configs import find_preset

from .images.preprocess import PreprocessConfig
from .inference_config import (
    INFERENCE_MODELS,
    AdmmConfig,
    Boundary,
    DType,
    FistaConfig,
    InferenceConfig,
    ZeilerConfig,
    _Frozen,
)


class FilterUpdateConfig(_Frozen):
    """Filter update with the maps fixed: projected FISTA (default), Zeiler's CG then normalisation, or consensus
    ADMM over the images (Garcia-Cardona & Wohlberg 2018; circular boundary only).

    Attributes
    ----------
    method : {"fista", "cg", "consensus"}
    max_iter : int
        Steps per outer iteration.
    norm : {"plane", "filter"}
        Unit norm per (k, c) plane (Zeiler) or per filter (SPORCO).
    relax : float
        Consensus over-relaxation α.
    recentre : bool
        Remove the shift ambiguity by re-centring filters with their maps (circular boundary).

    Examples
    --------
    >>> from solver import FilterUpdateConfig
    >>> FilterUpdateConfig(method="cg").norm
    'filter'
    """

    method: Literal["fista", "cg", "consensus"] = "fista"
    max_iter: int = Field(10, ge=1, description="FISTA steps, CG steps, or consensus iterations per outer iteration")
    norm: Literal["plane", "filter"] = Field(
        "filter", description="unit norm per plane f[k, c] (Zeiler) or per whole filter f[k] (SPORCO)"
    )
    rho: float | None = Field(
        None, gt=0, description="consensus penalty ρ; default 2 whatever the number of images (consensus.DEFAULT_RHO)"
    )
    relax: float = Field(1.8, gt=0, lt=2, description="consensus over-relaxation α")
    recentre: bool = Field(
        False,
        description="learn on an (s+2)×(s+2) support, shift every filter (and its maps) so that its energy "
        "centroid is at the centre after each filter step, and keep each filter's s×s window of largest energy "
        "for the last iteration (circular boundary; see solver.algorithms.recentre)",
    )


class LayerSpec(_Frozen):
    """One layer of filters.

    Attributes
    ----------
    n_filters, filter_size : int
        K and s.
    lam : float
        λ > 0, the weight of the sparsity term.
    p : float
        Sparsity exponent in (0, 1].
    connectivity : str or list of lists of bool
        ``"full"``, ``"singles-and-doubles"``, ``"random-doubles:k"`` or a (K, C) table.
    pool : (int, int, int) or None
        3-D max pooling (maps, rows, columns) of this layer's maps for the layer above.
    n_iter : int or None
        Outer iterations of this layer (default: the config's).

    Examples
    --------
    >>> from solver import LayerSpec
    >>> LayerSpec(n_filters=9, filter_size=7, lam=0.1, pool=(1, 2, 2)).pool
    (1, 2, 2)
    """

    n_filters: int = Field(..., ge=1)
    filter_size: int = Field(..., ge=1)
    lam: float = Field(
        ...,
        gt=0,
        description="weight of the sparsity term (λ = κ/λ_Z in Zeiler's terms); with "
        "lam_scale 'relative', the fraction of λ_max",
    )
    lam_scale: Literal["absolute", "relative"] = Field(
        "absolute",
        description="'absolute': lam is λ; 'relative': λ = lam × λ_max, λ_max = max |Dᴴy| of the layer's "
        "training input with its initial (seeded) filters, the smallest λ that gives all-zero maps for p = 1 "
        "(solver.lambda_max); lam must then be below 1. The learned model records the absolute λ and λ_max",
    )
    p: float = Field(1.0, gt=0, le=1)
    connectivity: str | list[list[bool]] = Field(
        "full", description="'full', 'singles-and-doubles', 'random-doubles:k', or an explicit (K, C) matrix"
    )
    n_iter: int | None = Field(
        None, ge=1, le=1_000_000, description="outer iterations of this layer; default: the config's n_iter"
    )
    pool: tuple[int, int, int] | None = Field(
        None,
        description="3-D max pooling (maps, rows, columns) of this layer's maps, with switches (Zeiler et al. "
        "2011): the layer above reads the pooled maps, projections unpool them; with reconstruct_to 'pixels' "
        "the layer's own inference also keeps one non-zero per pooling block. None: no pooling (2010)",
    )

    @model_validator(mode="after")
    def _relative_below_one(self) -> LayerSpec:
        if self.lam_scale == "relative" and self.lam >= 1:
            raise ValueError(
                f"lam with lam_scale 'relative' is a fraction of λ_max and must be below 1 (λ ≥ λ_max "
                f"gives all-zero maps, and the filters then never move), got {self.lam!r}"
            )
        return self

    @field_validator("pool")
    @classmethod
    def _positive_pool(cls, v: tuple[int, int, int] | None) -> tuple[int, int, int] | None:
        if v is not None and any(d < 1 for d in v):
            raise ValueError(f"pool sizes must be positive integers (maps, rows, columns), got {list(v)}")
        return v

    @field_validator("connectivity", mode="before")
    @classmethod
    def _table_of_booleans(cls, v: object) -> object:
        """A matrix holds booleans or 0/1 only, as in solver.encode and solver.learn: pydantic alone would read
        1.0, "yes" or "on" as True."""
        if isinstance(v, str) or v is None:
            return v
        rows = v.tolist() if hasattr(v, "tolist") else v
        if not isinstance(rows, list | tuple) or not all(isinstance(row, list | tuple) for row in rows):
            raise ValueError("connectivity must be a table name or a (K, C) matrix given as a list of rows")
        odd = sorted(
            {repr(x) for row in rows for x in row if not (isinstance(x, bool) or (type(x) is int and x in (0, 1)))}
        )
        if odd:
            raise ValueError(f"connectivity must hold booleans or 0/1, got the values [{', '.join(odd[:5])}]")
        return [[bool(x) for x in row] for row in rows]

    @field_validator("connectivity")
    @classmethod
    def _known_table(cls, v: str | list[list[bool]]) -> str | list[list[bool]]:
        if isinstance(v, str):
            from .operators.connectivity import parse_table_name  # noqa: PLC0415

            parse_table_name(v)
        return v


class LearnConfig(_Frozen):
    """A learning run: one layer (:func:`~solver.models.learn.learn_layer`), or a stack of layers learned one after
    another (:func:`~solver.learn_stack`).

    ``reconstruct_to`` picks the model of a stack:

    * ``"below"`` (Zeiler et al. 2010): layer l+1 learns to reconstruct the (pooled, when ``pool`` is set)
      maps of layer l, rescaled by :data:`~solver.INTER_LAYER_PREPROCESS`;
    * ``"pixels"`` (Zeiler, Taylor & Fergus 2011, :class:`~solver.algorithms.problem.PixelCodingProblem`): every
      layer reconstructs the preprocessed images through the frozen layers below it and their unpooling
      switches; inference is the 2011 ISTA (accelerated: ``inference.method`` must be ``fista``, the default
      then) with the pooling of the layer.

    Every layer shares the inference, filter update, ``n_iter``, boundary, seed and dtype; ``preprocess`` is
    applied to the images of layer 1.

    Attributes
    ----------
    layers : list of LayerSpec
        One per layer, bottom first.
    inference : ZeilerConfig, FistaConfig or AdmmConfig
    filter_update : FilterUpdateConfig
    n_iter : int
        Outer iterations (per layer, unless the layer sets its own).
    boundary : {"circular", "valid"}
    preprocess : PreprocessConfig or None
    seed : int
    dtype : {"float32", "float64"} or None
    reconstruct_to : {"below", "pixels"}
    schedule : {"alternate", "interleaved"}
        ``"interleaved"``: ``inference.max_iter`` rounds of one ADMM step and one consensus filter step per outer
        iteration (circular boundary); ``filter_update.max_iter`` is then not used.

    Examples
    --------
    >>> from solver import LearnConfig
    >>> config = LearnConfig.model_validate({"layers": [{"n_filters": 4, "filter_size": 3, "lam": 0.1}]})
    >>> config.inference.method, config.n_iter
    ('admm', 50)
    """

    layers: list[LayerSpec] = Field(..., min_length=1)
    inference: InferenceConfig = Field(
        default_factory=lambda: AdmmConfig(max_iter=10),
        description="inference per outer iteration: exactly max_iter iterations (tol is not used in learning)",
    )
    filter_update: FilterUpdateConfig = Field(default_factory=FilterUpdateConfig)
    n_iter: int = Field(50, ge=1, description="outer iterations")
    boundary: Boundary = "circular"
    preprocess: PreprocessConfig | None = None
    seed: int = Field(0, ge=0, description="seed of the random initial filters and connectivity tables")
    dtype: DType | None = Field(None, description="computation dtype; default: the images' (float32 for integers)")
    reconstruct_to: Literal["below", "pixels"] = Field(
        "below",
        description="what each layer reconstructs: the layer below (2010), or the pixels through the frozen "
        "layers below (2011, with fista inference)",
    )
    schedule: Literal["alternate", "interleaved"] = Field(
        "alternate",
        description="'alternate': each outer iteration runs inference.max_iter inference steps, then "
        "filter_update.max_iter filter steps; 'interleaved' (ADMM inference, consensus filter update, circular "
        "boundary): inference.max_iter rounds of one step of each, every variable warm-started "
        "(Garcia-Cardona & Wohlberg 2018); the same steps per outer iteration, each filter step on fresh maps",
    )

    @model_validator(mode="before")
    @classmethod
    def _pixels_infer_with_ista(cls, data: object) -> object:
        """The 2011 model's inference is ISTA: with ``reconstruct_to`` 'pixels' and no ``inference`` given, FISTA
        with 10 iterations per outer iteration (the 2011 paper's count, recalled)."""
        if isinstance(data, dict) and data.get("reconstruct_to") == "pixels" and data.get("inference") is None:
            data = {**data, "inference": {"method": "fista", "max_iter": 10}}
        return data

    @model_validator(mode="after")
    def _consensus_is_circular(self) -> LearnConfig:
        if self.filter_update.method == "consensus" and self.boundary != "circular":
            raise ValueError(f"filter_update.method 'consensus' needs boundary 'circular', got {self.boundary!r}")
        if self.filter_update.recentre and self.boundary != "circular":
            raise ValueError(f"filter_update.recentre needs boundary 'circular', got {self.boundary!r}")
        if self.schedule == "interleaved":
            _check_interleaved(self)
        if self.reconstruct_to == "pixels":
            if self.inference.method != "fista":
                raise ValueError(
                    "reconstruct_to 'pixels' runs the 2011 ISTA inference: inference.method must be "
                    f"'fista', got {self.inference.method!r}"
                )
            if self.filter_update.method == "consensus" or self.filter_update.recentre:
                raise ValueError(
                    "reconstruct_to 'pixels' supports filter_update.method 'fista' or 'cg' without "
                    f"recentre, got method {self.filter_update.method!r}, recentre "
                    f"{self.filter_update.recentre}"
                )
        return self


def _check_interleaved(config: LearnConfig) -> None:
    """The interleaved schedule's requirements: every variable it carries from round to round must exist."""
    wrong = {
        "inference.method": (config.inference.method, "admm"),
        "filter_update.method": (config.filter_update.method, "consensus"),
        "boundary": (config.boundary, "circular"),
        "reconstruct_to": (config.reconstruct_to, "below"),
        "filter_update.recentre": (config.filter_update.recentre, False),
    }
    for name, (got, needed) in wrong.items():
        if got != needed:
            raise ValueError(f"schedule 'interleaved' needs {name} {needed!r}, got {got!r}")


class OnlineConfig(_Frozen):
    r"""What online learning (:func:`~solver.learn_online`) adds to a one-layer :class:`LearnConfig`.

    After batch t the running statistics become ``β_t · A + A_batch`` with ``β_t = (1 − 1/t)^ρ`` (Mairal et al.,
    JMLR 2010; ρ = `forget`), or a fixed ``β_t = forget_factor`` when that is given. The first batch's β is 0.

    Attributes
    ----------
    batch_size : int
        Images per batch (the stream is re-batched to this size; the last batch may be smaller).
    forget : float
        ρ ≥ 0: larger forgets the statistics of old filters faster (the weight of batch j after batch t is
        about (j/t)^ρ); 0 keeps the plain sum. The default 10 keeps about the last tenth of the batches: the
        statistics of early batches were gathered with poor filters.
    forget_factor : float or None
        A fixed β in [0, 1] instead of the schedule.
    n_epochs : int
        Passes over a re-iterable collection (a list or an array); a one-shot iterator allows one.
    held_out_every : int
        With held-out images, their objective is recorded after every `held_out_every` batches.
    held_out_iter : int
        Inference iterations for the held-out objective (the configured method, its tolerance).

    Examples
    --------
    >>> from solver import OnlineConfig
    >>> OnlineConfig().beta(1), OnlineConfig(forget=1.0).beta(4)
    (0.0, 0.75)
    """

    batch_size: int = Field(16, ge=1)
    forget: float = Field(10.0, ge=0, le=1000, description="ρ of the forgetting schedule β_t = (1 − 1/t)^ρ")
    forget_factor: float | None = Field(None, ge=0, le=1, description="a fixed forgetting factor β instead")
    n_epochs: int = Field(1, ge=1)
    held_out_every: int = Field(1, ge=1)
    held_out_iter: int = Field(100, ge=1)

    def beta(self, t: int) -> float:
        """β_t, the weight of the running statistics before batch t (1-based)."""
        if t <= 1:
            return 0.0
        if self.forget_factor is not None:
            return float(self.forget_factor)
        return float((1.0 - 1.0 / t) ** self.forget)


def load_config(path: str | Path) -> LearnConfig:
    """Read and validate a YAML config: a file, or a bundled preset by name (``"zeiler2010"``, see :mod:`configs`).

    A job file's ``learning`` section (how deconv's jobs learn: in batch, or online from a stream of batches) is
    not part of the learning config and is left out; online settings for :func:`~solver.learn_online` are an
    :class:`OnlineConfig`.

    Raises
    ------
    ValueError
        For a name that is neither a file nor a preset (the message lists the presets), or a file that does not
        hold a valid config.

    Parameters
    ----------
    path : str or Path
        A YAML file, or the name of a preset in ``configs/``.

    Returns
    -------
    LearnConfig

    Examples
    --------
    >>> from solver import load_config
    >>> [layer.n_filters for layer in load_config("zeiler2010").layers]
    [9, 45]
    """
    if not str(path).strip():
        raise ValueError("config: give a preset name or a YAML file, got an empty name")
    path = find_preset(path)
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except OSError as exc:  # missing, a folder, unreadable: the caller asked for a config that is not there
        raise ValueError(f"cannot read the config file {str(path)!r}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ValueError(f"config file {str(path)!r} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"config file {str(path)!r} is not UTF-8 text: {exc}") from None
    if not isinstance(data, dict):
        raise ValueError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    data.pop("learning", None)
    return LearnConfig.model_validate(data)


__all__ = [
    "INFERENCE_MODELS",
    "AdmmConfig",
    "Boundary",
    "FilterUpdateConfig",
    "FistaConfig",
    "InferenceConfig",
    "LayerSpec",
    "LearnConfig",
    "OnlineConfig",
    "PreprocessConfig",
    "ZeilerConfig",
    "load_config",
]
