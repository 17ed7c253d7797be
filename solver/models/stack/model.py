"""The learned stack and what comes out of it: per-layer models, the model of a stack and its array form, the
maps (and switches) of some images at every layer, and the result of learning a stack."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any, Literal

import numpy as np

from ...backend import Array
from ...config import InferenceConfig, LearnConfig
from ...images.preprocess import FittedPreprocess
from ...operators.connectivity import boolean_table
from ...operators.convolution import BOUNDARIES
from ..learn import LearnResult
from .layer import LamScale, LayerModel

#: The version of a model's JSON description (and of the model file that holds it). Readers accept every version up
#: to theirs and refuse a newer one: a field added later must be optional, so that older files stay readable.
MODEL_FORMAT = 1


@dataclass(frozen=True)
class StackModel:
    """A learned stack: per layer its filters, connectivity, input preprocessing, λ and p; the boundary; and the
    inference it learned with.

    Built from a :class:`StackResult` or a :class:`~solver.LearnResult` (``result.model``), from per-layer
    sequences (:meth:`from_layers`), from plain arrays and a JSON-able dict (:meth:`from_arrays`, the inverse of
    :meth:`to_arrays`), or from a model file (:func:`~solver.load_model`, the inverse of :meth:`save`).

    Attributes
    ----------
    layers : tuple of LayerModel
        Bottom layer first.
    boundary : {"circular", "valid"}
    reconstruct_to : {"below", "pixels"}
        The 2010 model (each layer reconstructs the layer below) or the 2011 one (every layer the pixels).
    inference : ZeilerConfig, FistaConfig, AdmmConfig or None
        The inference the model learned with; :func:`~solver.encode_layers` encodes with its method by default
        (``"admm"`` when None), as the job service does.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel
    >>> rng = np.random.default_rng(0)
    >>> model = StackModel.from_layers([rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))],
    ...                                [None, None], [None, None], [0.1, 0.1], [1.0, 1.0])
    >>> model.n_layers, [m.n_filters for m in model.layers]
    (2, [2, 3])
    >>> arrays, metadata = model.to_arrays()
    >>> StackModel.from_arrays(arrays, metadata).n_layers
    2
    """

    layers: tuple[LayerModel, ...]
    boundary: Literal["circular", "valid"] = "circular"
    reconstruct_to: Literal["below", "pixels"] = "below"
    inference: InferenceConfig | None = None

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("a stack model needs at least one layer")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        if self.reconstruct_to not in ("below", "pixels"):
            raise ValueError(f"reconstruct_to must be 'below' or 'pixels', got {self.reconstruct_to!r}")
        for number, (below, above) in enumerate(zip(layers, layers[1:], strict=False), start=2):
            if above.n_channels != below.n_outputs:
                pooled = "" if below.pool is None else f" (pooled {below.pool[0]} maps to one)"
                raise ValueError(
                    f"layer {number} reads {above.n_channels} channels but layer {number - 1} gives "
                    f"{below.n_outputs} maps{pooled}"
                )
        object.__setattr__(self, "layers", layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

    def pools_below(self, layer: int) -> bool:
        """Whether any layer under `layer` (1-based) pools, so that projecting its maps down needs switches."""
        return any(m.pool is not None for m in self.layers[: layer - 1])

    def check_layer(self, layer: int | None) -> int:
        """`layer` (1-based) when the model has it; the top layer for None."""
        if layer is None:
            return self.n_layers
        if isinstance(layer, bool) or not isinstance(layer, int | np.integer) or not 1 <= layer <= self.n_layers:
            raise ValueError(f"layer must be between 1 and {self.n_layers}, got {layer!r}")
        return int(layer)

    @classmethod
    def from_layers(
        cls,
        filters: Sequence[Array],
        connectivity: Sequence[Array | None],
        preprocess: Sequence[FittedPreprocess | Mapping | None],
        lam: Sequence[float],
        p: Sequence[float],
        boundary: Literal["circular", "valid"] = "circular",
        pool: Sequence[Sequence[int] | None] | None = None,
        reconstruct_to: Literal["below", "pixels"] = "below",
        *,
        lam_max: Sequence[float | None] | None = None,
        inference: InferenceConfig | None = None,
    ) -> StackModel:
        """From per-layer sequences (bottom layer first). A connectivity of None is the full table; a preprocess
        may be a :class:`FittedPreprocess` or its ``to_dict()``; `pool` defaults to no pooling anywhere; a layer
        with a `lam_max` (not None) had its λ given relative to it (``lam_scale="relative"``)."""
        pool = [None] * len(filters) if pool is None else list(pool)
        lam_max = [None] * len(filters) if lam_max is None else list(lam_max)
        lengths = [len(filters), len(connectivity), len(preprocess), len(lam), len(p), len(pool), len(lam_max)]
        if len(set(lengths)) != 1:
            raise ValueError(
                "filters, connectivity, preprocess, lam, p, pool and lam_max must have one entry per "
                f"layer, got lengths {lengths}"
            )
        layers = []
        for f, g, pre, lam_l, p_l, pool_l, top in zip(
            filters, connectivity, preprocess, lam, p, pool, lam_max, strict=True
        ):
            f = np.asarray(f)
            table = np.ones(f.shape[:2], dtype=bool) if g is None else np.asarray(g)
            fitted = FittedPreprocess.from_dict(dict(pre)) if isinstance(pre, Mapping) else pre
            size = None if pool_l is None else tuple(pool_l)
            scale: LamScale = "absolute" if top is None else "relative"
            layers.append(
                LayerModel(f, table, fitted, float(lam_l), float(p_l), size, scale, None if top is None else float(top))
            )
        return cls(tuple(layers), boundary, reconstruct_to, inference)

    @classmethod
    def from_results(cls, results: Sequence[LearnResult]) -> StackModel:
        """From the one-layer results of a stack (each with its config, as :func:`learn_layer` returns them)."""
        if any(r.config is None for r in results):
            raise ValueError("every LearnResult needs its config (λ, p, boundary); use StackModel.from_layers")
        specs = [r.config.layers[0] for r in results]
        first = results[0].config
        return cls.from_layers(
            [r.filters for r in results],
            [r.connectivity for r in results],
            [r.preprocess for r in results],
            [s.lam for s in specs],
            [s.p for s in specs],
            first.boundary,
            [s.pool for s in specs],
            first.reconstruct_to,
            lam_max=[r.lam_max for r in results],
            inference=first.inference,
        )

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, metadata): ``filters-L<l>`` (K, C, s, s) and ``connectivity-L<l>`` (K, C) bool per layer, and
        a JSON-able dict with the format version, the boundary, ``reconstruct_to``, the inference (when known)
        and, per layer, λ (absolute), p, pooling, the λ scale (with λ_max when relative) and the fitted
        preprocessing (or None)."""
        arrays: dict[str, np.ndarray] = {}
        entries = []
        for number, layer in enumerate(self.layers, start=1):
            arrays[f"filters-L{number}"] = layer.filters
            arrays[f"connectivity-L{number}"] = layer.connectivity
            entry = {
                "lam": layer.lam,
                "p": layer.p,
                "preprocess": None if layer.preprocess is None else layer.preprocess.to_dict(),
                "pool": None if layer.pool is None else list(layer.pool),
                "lam_scale": layer.lam_scale,
            }
            if layer.lam_max is not None:
                entry["lam_max"] = layer.lam_max
            entries.append(entry)
        metadata: dict[str, Any] = {
            "format": MODEL_FORMAT,
            "boundary": self.boundary,
            "reconstruct_to": self.reconstruct_to,
            "layers": entries,
        }
        if self.inference is not None:
            metadata["inference"] = self.inference.model_dump()
        return arrays, metadata

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Array], metadata: Mapping[str, Any]) -> StackModel:
        """Inverse of :meth:`to_arrays`; raises ``ValueError`` naming a missing array or field, or a format
        version newer than :data:`MODEL_FORMAT`."""
        check_format(metadata.get("format", MODEL_FORMAT) if isinstance(metadata, Mapping) else None)
        try:
            entries = list(metadata["layers"])
            boundary = metadata["boundary"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"metadata must hold 'boundary' and 'layers', missing {exc}") from None
        names = [(f"filters-L{n}", f"connectivity-L{n}") for n in range(1, len(entries) + 1)]
        missing = [name for pair in names for name in pair if name not in arrays]
        if missing:
            raise ValueError(f"arrays is missing {missing}")
        try:
            lam, p = [float(e["lam"]) for e in entries], [float(e.get("p", 1.0)) for e in entries]
            pre = [e.get("preprocess") for e in entries]
            pool = [None if e.get("pool") is None else [_whole(d, "pool") for d in e["pool"]] for e in entries]
            lam_max = [None if e.get("lam_max") is None else float(e["lam_max"]) for e in entries]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"every layer entry needs a numeric 'lam' (and 'p', 'pool'): {exc}") from None
        for number, entry in enumerate(pre, start=1):
            if entry is not None and not isinstance(entry, Mapping):
                raise ValueError(f"layers.{number - 1}: preprocess must be a mapping or null, got {entry!r}")
        scales = [e.get("lam_scale", "absolute") for e in entries]
        for number, scale in enumerate(scales, start=1):
            if scale not in ("absolute", "relative"):
                raise ValueError(f"layers.{number - 1}: lam_scale must be 'absolute' or 'relative', got {scale!r}")
        for number, (scale, top) in enumerate(zip(scales, lam_max, strict=True), start=1):
            if (scale == "relative") != (top is not None):
                raise ValueError(
                    f"layers.{number - 1}: lam_scale {scale!r} needs lam_max exactly when relative, got lam_max {top!r}"
                )
        inference = metadata.get("inference")
        if inference is not None:
            from pydantic import TypeAdapter, ValidationError  # noqa: PLC0415

            try:
                inference = TypeAdapter(InferenceConfig).validate_python(inference)
            except ValidationError as exc:
                raise ValueError(f"metadata 'inference' is not a valid inference config: {exc}") from None
        return cls.from_layers(
            [np.asarray(arrays[f]) for f, _ in names],
            [boolean_table(np.asarray(arrays[g])) for _, g in names],
            pre,
            lam,
            p,
            boundary,
            pool,
            metadata.get("reconstruct_to", "below"),
            lam_max=lam_max,
            inference=inference,
        )

    def to_bytes(self) -> bytes:
        """The model file (:func:`~solver.models.stack.files.write_model`) as bytes, for serving it.

        Returns
        -------
        bytes
            A zip archive that :func:`~solver.load_model` reads.

        Examples
        --------
        >>> import numpy as np
        >>> from solver import StackModel, load_model
        >>> model = StackModel.from_layers([np.ones((2, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
        >>> load_model(model.to_bytes()).layers[0].lam
        0.1
        """
        from .files import model_bytes  # noqa: PLC0415

        return model_bytes(self)

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the model file at `path`, atomically (a crash leaves the old file or the whole new one).

        Parameters
        ----------
        path : str or path-like
            Where to write; the folder must exist. Conventionally ``*.deconv``.

        Returns
        -------
        Path
            `path`.

        Examples
        --------
        >>> import numpy as np, tempfile, pathlib
        >>> from solver import StackModel, load_model
        >>> model = StackModel.from_layers([np.ones((2, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
        >>> path = model.save(pathlib.Path(tempfile.mkdtemp()) / "model.deconv")
        >>> load_model(path).layers[0].filters.shape
        (2, 1, 3, 3)
        """
        from .files import save_model  # noqa: PLC0415

        return save_model(self, path)


def check_format(version: Any) -> int:
    """`version` when this deconv reads it (an integer from 1 to :data:`MODEL_FORMAT`); ``ValueError`` otherwise,
    saying to upgrade for a newer one."""
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ValueError(f"model format must be a positive integer, got {version!r}")
    if version > MODEL_FORMAT:
        raise ValueError(
            f"model format {version} is newer than this deconv reads (up to {MODEL_FORMAT}): upgrade deconv to load it"
        )
    return version


@dataclass(frozen=True)
class StackCode:
    """The maps of some images at every layer up to one, with the switches of the layers that pool.

    Attributes
    ----------
    maps : list of arrays
        ``maps[l - 1]``: layer l's maps (N, K_l, H_l', W_l'), unpooled.
    switches : list of integer arrays or None
        ``switches[l - 1]``: the switches of ``pool3d(maps[l - 1], pool_l)``, (N, ⌈K_l/pk⌉, ⌈H_l'/ph⌉,
        ⌈W_l'/pw⌉); None for a layer that does not pool.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackCode
    >>> code = StackCode([np.zeros((4, 2, 8, 8))], [None])
    >>> code.select(slice(0, 2)).maps[0].shape
    (2, 2, 8, 8)
    """

    maps: list[Array]
    switches: list[Array | None]

    def select(self, index: Array | slice) -> StackCode:
        """The code of some of the images (the same `index` on the first axis of every array)."""
        return StackCode([m[index] for m in self.maps], [None if s is None else s[index] for s in self.switches])


@dataclass(frozen=True)
class StackResult:
    """Learned layers, bottom first.

    Attributes
    ----------
    layers : list of LearnResult
        Layer l's filters (K_l, C_l, s_l, s_l), final maps, history, connectivity and the fitted preprocessing of
        its input (``preprocess``: the images' for layer 1; the :data:`INTER_LAYER_PREPROCESS` rescale above it
        in the 2010 model, None in the 2011 one).
    config : LearnConfig
    switches : list of integer arrays or None
        Per layer, the switches of its final training maps (None where it does not pool).

    Examples
    --------
    >>> import numpy as np
    >>> from solver import LearnConfig, learn_stack
    >>> config = LearnConfig.model_validate({"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1},
    ...                                                 {"n_filters": 2, "filter_size": 3, "lam": 0.1}],
    ...                                      "n_iter": 1, "boundary": "valid",
    ...                                      "inference": {"method": "fista", "max_iter": 10}})
    >>> result = learn_stack(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), config)
    >>> result.model.n_layers, [len(h) for h in result.histories]
    (2, [1, 1])
    """

    layers: list[LearnResult]
    config: LearnConfig
    switches: list[np.ndarray | None] = field(default_factory=list)

    @property
    def model(self) -> StackModel:
        return StackModel.from_results(self.layers)

    @property
    def histories(self) -> list[list[float]]:
        """E after every outer iteration, per layer."""
        return [r.history for r in self.layers]

    @property
    def code(self) -> StackCode:
        """The final training maps of every layer with their switches."""
        switches = self.switches or [None] * len(self.layers)
        return StackCode([r.maps for r in self.layers], list(switches))


def _whole(value: Any, name: str) -> int:
    """`value` as an int when it is a whole number (a pool size read from JSON), else a ValueError."""
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value != int(value):
        raise ValueError(f"{name} sizes must be whole numbers, got {value!r}")
    return int(value)
