r"""Deep Deconvolutional Networks: layers learned one after another, encoding through all of them, and projection
of any layer's maps down to pixels (Zeiler, Krishnan, Taylor & Fergus, CVPR 2010; ``notes/zeiler.md`` section 4).

Layer 1 learns on the (preprocessed) images. Layer l+1 learns on the final maps of layer l, rescaled as the 2010
toolbox does (``rescale_all_n1_1.m``): shift the minimum to 0, divide by half the range, subtract the mean,

.. math:: y^{(l+1)} = \big(z^{(l)} - \text{shift}\big) / \text{scale} - \text{mean},

fitted once on the training maps (:data:`INTER_LAYER_PREPROCESS`) and recorded with the model, so that encoding
new images repeats it. Each layer reconstructs only the layer beneath it:

.. math:: \min_{z^{(l)}, f^{(l)}} \tfrac12 \sum_{n,c} \Big\| P \sum_k g^{(l)}_{kc}\, z^{(l)}_{nk} \circledast
          f^{(l)}_{kc} - y^{(l)}_{nc} \Big\|^2 + \lambda_l \sum_{n,k} \|z^{(l)}_{nk}\|_p^p

Shapes: layer l reads ``(N, C_l, H_l, W_l)`` (C_1 = the image channels, C_{l+1} = K_l) and codes it with maps
``(N, K_l, H_l', W_l')``; with the valid boundary ``H_{l+1} = H_l' = H_l + s_l − 1``, so the reconstruction of
layer-(l+1) maps has exactly the shape of the layer-l maps, and a projection to pixels has the images' shape.

Pooling and the 2011 model. A layer with ``pool`` (:class:`~solver.config.LayerSpec`) max-pools its maps in 3-D
with switches (:mod:`solver.operators.pooling`) before the layer above reads them, so layer l+1 reads ``⌈K_l/pk⌉``
channels of ``⌈H_l'/ph⌉ × ⌈W_l'/pw⌉``, and every projection down unpools at the switches of the images being
projected (:class:`StackCode` carries them). With ``reconstruct_to="pixels"`` (Zeiler, Taylor & Fergus 2011,
:mod:`solver.models.adaptive`) every layer instead reconstructs the preprocessed pixels through the frozen layers below,
there is no rescale between layers, and inference is the 2011 ISTA with the pooling of each layer.

Layer *numbers* are 1-based (layer 1 reads the pixels), as in the papers and the job service; an ``index`` is a
0-based position in ``config.layers``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

from ..backend import Array, backend_of, get_backend
from ..config import LearnConfig
from ..images.preprocess import FittedPreprocess, PreprocessConfig
from ..operators.connectivity import connectivity_table
from ..operators.convolution import BOUNDARIES, map_shape
from ..operators.pooling import pooled_shape, unpool3d
from ..validation import as_images
from .adaptive import LowerLayer, PixelPath, code_pixels, pool_maps
from .coding import Method, encode, reconstruct
from .learn import IterStats, LearnResult, learn_layer

logger = logging.getLogger(__name__)

#: The rescale of a layer's maps before the next layer learns on them (2010 toolbox: shift the minimum to 0,
#: scale to span 2, subtract the mean), fitted on all the training maps of the layer below. A distributed runner
#: reproduces :func:`learn_stack` by passing this config to a one-layer run on the saved maps.
INTER_LAYER_PREPROCESS = PreprocessConfig(grey=False, zero_mean=False, contrast_normalise=False, rescale=True)

MODEL_FORMAT = 1


def layer_config(config: LearnConfig, index: int) -> LearnConfig:
    """The one-layer config that learns ``config.layers[index]`` (0-based) on the input of that layer.

    The same inference, filter update, boundary, seed, dtype and ``reconstruct_to``; ``n_iter`` is the layer's
    own when it has one, else the config's; the preprocessing is ``config.preprocess`` for layer 1, and above it
    :data:`INTER_LAYER_PREPROCESS` (2010) or none (2011: the layer reads the preprocessed pixels of layer 1).
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(config.layers):
        raise ValueError(f"index must be an integer in [0, {len(config.layers)}), got {index!r}")
    if index == 0:
        preprocess = config.preprocess
    else:  # the 2011 model reads the pixels of layer 1 at every layer, already preprocessed
        preprocess = INTER_LAYER_PREPROCESS if config.reconstruct_to == "below" else None
    layer = config.layers[index]
    data = config.model_dump(exclude={"layers", "preprocess"})
    return LearnConfig.model_validate({**data, "n_iter": layer.n_iter or config.n_iter,
                                       "layers": [layer.model_dump(exclude={"n_iter"})],
                                       "preprocess": None if preprocess is None else preprocess.model_dump()})


def check_stack(config: LearnConfig, n_channels: int, image_shape: tuple[int, int]) -> None:
    """Raise ``ValueError`` when a layer of `config` cannot run on the input it will get (checked before any
    learning): its filters larger than its input, or a connectivity table that does not fit (K, C). Layer l+1
    reads the pooled maps of layer l when layer l pools."""
    C, (H, W) = int(n_channels), image_shape
    for index, layer in enumerate(config.layers):
        if layer.filter_size > min(H, W):
            raise ValueError(f"layers.{index}.filter_size: filters of {layer.filter_size}x{layer.filter_size} are "
                             f"larger than the layer's input of {H}x{W}")
        try:
            connectivity_table(layer.connectivity, layer.n_filters, C, seed=config.seed)
        except ValueError as exc:
            raise ValueError(f"layers.{index}.connectivity: {exc}") from None
        C, (H, W) = layer.n_filters, map_shape((H, W), layer.filter_size, config.boundary)
        if layer.pool is not None:
            _, C, H, W = pooled_shape((1, C, H, W), layer.pool)


@dataclass(frozen=True)
class LayerModel:
    """What encoding and projection need of one layer.

    Attributes
    ----------
    filters : ndarray of shape (K, C, s, s)
    connectivity : bool ndarray of shape (K, C)
        g (all True for a full table).
    preprocess : FittedPreprocess or None
        The transformation of this layer's input: the job's preprocessing for layer 1, the fitted
        :data:`INTER_LAYER_PREPROCESS` rescale above it.
    lam : float
        λ > 0, the weight of the sparsity term.
    p : float
        Sparsity exponent in (0, 1].
    pool : (int, int, int) or None
        3-D max pooling (maps, rows, columns) of this layer's maps for the layer above; None: none.
    """

    filters: np.ndarray
    connectivity: np.ndarray
    preprocess: FittedPreprocess | None
    lam: float
    p: float = 1.0
    pool: tuple[int, int, int] | None = None

    def __post_init__(self) -> None:
        f, g = np.asarray(self.filters), np.asarray(self.connectivity)
        if f.ndim != 4 or f.shape[-1] != f.shape[-2] or f.dtype.kind != "f":
            raise ValueError(f"filters must be a real (K, C, s, s) array, got shape {f.shape} and dtype {f.dtype}")
        if g.dtype != bool or g.shape != f.shape[:2]:
            raise ValueError(f"connectivity must be a boolean array of shape (K, C) = {f.shape[:2]}, got dtype "
                             f"{g.dtype} and shape {g.shape}")
        if not (math.isfinite(self.lam) and self.lam > 0):
            raise ValueError(f"lam must be a positive number, got {self.lam!r}")
        if not 0 < self.p <= 1:
            raise ValueError(f"p must be in (0, 1], got {self.p!r}")
        if self.pool is not None:
            pooled_shape((1, 1, 1, 1), self.pool)  # raises ValueError naming the size
            object.__setattr__(self, "pool", tuple(int(d) for d in self.pool))
        object.__setattr__(self, "filters", f)
        object.__setattr__(self, "connectivity", g)

    @property
    def n_filters(self) -> int:
        return int(self.filters.shape[0])

    @property
    def n_outputs(self) -> int:
        """The channels the layer above reads: K, or ⌈K/pk⌉ after pooling."""
        return self.n_filters if self.pool is None else -(-self.n_filters // self.pool[0])

    def lower(self) -> LowerLayer:
        """This layer as a frozen layer below another one (:mod:`solver.models.adaptive`)."""
        return LowerLayer(self.filters, self.connectivity, self.pool)

    @property
    def n_channels(self) -> int:
        return int(self.filters.shape[1])

    @property
    def filter_size(self) -> int:
        return int(self.filters.shape[-1])


@dataclass(frozen=True)
class StackModel:
    """A learned stack: per layer its filters, connectivity, input preprocessing, λ and p; and the boundary.

    Built from a :class:`StackResult` (``result.model``), from per-layer sequences (:meth:`from_layers`), or from
    plain arrays and a JSON-able dict (:meth:`from_arrays`, the inverse of :meth:`to_arrays`).
    """

    layers: tuple[LayerModel, ...]
    boundary: Literal["circular", "valid"] = "circular"
    reconstruct_to: Literal["below", "pixels"] = "below"

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
                raise ValueError(f"layer {number} reads {above.n_channels} channels but layer {number - 1} gives "
                                 f"{below.n_outputs} maps{pooled}")
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
    def from_layers(cls, filters: Sequence[Array], connectivity: Sequence[Array | None],
                    preprocess: Sequence[FittedPreprocess | Mapping | None], lam: Sequence[float],
                    p: Sequence[float], boundary: Literal["circular", "valid"] = "circular",
                    pool: Sequence[Sequence[int] | None] | None = None,
                    reconstruct_to: Literal["below", "pixels"] = "below") -> StackModel:
        """From per-layer sequences (bottom layer first). A connectivity of None is the full table; a preprocess
        may be a :class:`FittedPreprocess` or its ``to_dict()``; `pool` defaults to no pooling anywhere."""
        pool = [None] * len(filters) if pool is None else list(pool)
        lengths = [len(filters), len(connectivity), len(preprocess), len(lam), len(p), len(pool)]
        if len(set(lengths)) != 1:
            raise ValueError("filters, connectivity, preprocess, lam, p and pool must have one entry per layer, "
                             f"got lengths {lengths}")
        layers = []
        for f, g, pre, lam_l, p_l, pool_l in zip(filters, connectivity, preprocess, lam, p, pool, strict=True):
            f = np.asarray(f)
            table = np.ones(f.shape[:2], dtype=bool) if g is None else np.asarray(g)
            fitted = FittedPreprocess.from_dict(dict(pre)) if isinstance(pre, Mapping) else pre
            size = None if pool_l is None else tuple(pool_l)
            layers.append(LayerModel(f, table, fitted, float(lam_l), float(p_l), size))
        return cls(tuple(layers), boundary, reconstruct_to)

    @classmethod
    def from_results(cls, results: Sequence[LearnResult]) -> StackModel:
        """From the one-layer results of a stack (each with its config, as :func:`learn_layer` returns them)."""
        if any(r.config is None for r in results):
            raise ValueError("every LearnResult needs its config (λ, p, boundary); use StackModel.from_layers")
        specs = [r.config.layers[0] for r in results]
        return cls.from_layers([r.filters for r in results], [r.connectivity for r in results],
                               [r.preprocess for r in results], [s.lam for s in specs], [s.p for s in specs],
                               results[0].config.boundary, [s.pool for s in specs],
                               results[0].config.reconstruct_to)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, metadata): ``filters-L<l>`` (K, C, s, s) and ``connectivity-L<l>`` (K, C) bool per layer, and
        a JSON-able dict with the boundary and, per layer, λ, p and the fitted preprocessing (or None)."""
        arrays: dict[str, np.ndarray] = {}
        entries = []
        for number, layer in enumerate(self.layers, start=1):
            arrays[f"filters-L{number}"] = layer.filters
            arrays[f"connectivity-L{number}"] = layer.connectivity
            entries.append({"lam": layer.lam, "p": layer.p,
                            "preprocess": None if layer.preprocess is None else layer.preprocess.to_dict(),
                            "pool": None if layer.pool is None else list(layer.pool)})
        return arrays, {"format": MODEL_FORMAT, "boundary": self.boundary, "reconstruct_to": self.reconstruct_to,
                        "layers": entries}

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, Array], metadata: Mapping[str, Any]) -> StackModel:
        """Inverse of :meth:`to_arrays`; raises ``ValueError`` naming a missing array or field."""
        try:
            entries = list(metadata["layers"])
            boundary = metadata["boundary"]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"metadata must hold 'boundary' and 'layers', missing {exc}") from None
        if metadata.get("format", MODEL_FORMAT) != MODEL_FORMAT:
            raise ValueError(f"metadata format {metadata.get('format')!r} is not {MODEL_FORMAT}")
        names = [(f"filters-L{n}", f"connectivity-L{n}") for n in range(1, len(entries) + 1)]
        missing = [name for pair in names for name in pair if name not in arrays]
        if missing:
            raise ValueError(f"arrays is missing {missing}")
        try:
            lam, p = [float(e["lam"]) for e in entries], [float(e.get("p", 1.0)) for e in entries]
            pre = [e.get("preprocess") for e in entries]
            pool = [None if e.get("pool") is None else [int(d) for d in e["pool"]] for e in entries]
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"every layer entry needs a numeric 'lam' (and 'p', 'pool'): {exc}") from None
        return cls.from_layers([np.asarray(arrays[f]) for f, _ in names],
                               [np.asarray(arrays[g]).astype(bool) for _, g in names], pre, lam, p, boundary,
                               pool, metadata.get("reconstruct_to", "below"))


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


def learn_stack(
    images: Array,
    config: LearnConfig,
    *,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
    callback: Callable[[int, IterStats], None] | None = None,
) -> StackResult:
    """Learn every layer of `config`, bottom first; lower layers stay frozen.

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        Layer 1's images, preprocessed by ``config.preprocess`` (when set).
    config : LearnConfig
        One :class:`~solver.config.LayerSpec` per layer; layer ``index`` runs ``layer_config(config, index)``.
        2010 (``reconstruct_to="below"``): on the final maps of the layer below, pooled when that layer pools,
        and rescaled by :data:`INTER_LAYER_PREPROCESS` fitted on them. 2011 (``"pixels"``): on the preprocessed
        images, through the frozen layers below at the switches of their final training maps.
    backend : {"auto", "numpy", "cupy"}
    callback : callable, optional
        ``callback(layer, stats)`` after every outer iteration, with the 1-based layer number and the
        :class:`~solver.models.learn.IterStats` of that layer's run.

    Returns
    -------
    StackResult
        Its ``model`` encodes new images (:func:`encode_layers`) and projects maps down (:func:`project_down`).

    Raises
    ------
    ValueError
        Before any learning, when a layer does not fit the input it will get (:func:`check_stack`).
    """
    shape = np.shape(images)
    if len(shape) not in (2, 3, 4):
        raise ValueError(f"images must have shape (N, C, H, W), (N, H, W) or (H, W), got shape {shape}")
    channels = shape[1] if len(shape) == 4 else 1
    if config.preprocess is not None and config.preprocess.grey and channels == 3:
        channels = 1
    check_stack(config, channels, (shape[-2], shape[-1]))
    pixels = config.reconstruct_to == "pixels"
    fitted = None
    if pixels and config.preprocess is not None:  # once: every layer reconstructs these preprocessed pixels
        images, fitted = FittedPreprocess.fit(np.asarray(images), config.preprocess)
    results: list[LearnResult] = []
    switches: list[np.ndarray | None] = []
    x: Array = images
    for index in range(len(config.layers)):
        step = None if callback is None else functools.partial(callback, index + 1)
        layer_cfg = layer_config(config, index)
        if pixels:
            lower = [LowerLayer(r.filters, r.connectivity, r.config.layers[0].pool) for r in results]
            result = learn_layer(images, layer_cfg.model_copy(update={"preprocess": None}), backend=backend,
                                 callback=step, lower=lower, switches=list(switches))
            if index == 0:
                result = replace(result, preprocess=fitted)
        else:
            result = learn_layer(x, layer_cfg, backend=backend, callback=step)
        logger.info("layer %d: %d maps, E %.6g after %d outer iterations", index + 1, result.filters.shape[0],
                    result.history[-1], len(result.history))
        results.append(result)
        x, sw = pool_maps(result.maps, config.layers[index].pool)
        switches.append(sw)
    return StackResult(results, config, switches)


def encode_layers(
    model: StackModel,
    images: Array,
    *,
    layers: int | None = None,
    method: Method | Any | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
) -> StackCode:
    """Maps and switches of every layer up to `layers` (default: the top one) for new images.

    Layer 1's preprocessing is applied to `images`. In the 2010 model each higher layer codes the (pooled) maps
    of the layer below, transformed by its recorded rescale, as in learning; `method` (default ``"admm"``),
    `max_iter`, `tol` and `backend` go to :func:`~solver.models.coding.encode` for every layer. In the 2011 model
    (``model.reconstruct_to == "pixels"``) each layer codes the preprocessed images through the layers below at
    the switches just found for them (the bottom-up pass), by :func:`solver.models.adaptive.code_pixels`; `method` must
    then be ``"fista"`` (or None), with at most `max_iter` iterations (default 200) stopped at relative change
    `tol` (default 1e-5).

    Returns
    -------
    StackCode
        ``maps[l - 1]`` of shape (N, K_l, H_l', W_l'), in the images' dtype (float32 in, float32 out).
    """
    top = model.check_layer(layers)
    if model.reconstruct_to == "pixels":
        return _encode_pixels(model, images, top, method, max_iter, tol, backend)
    x, maps, switches = images, [], []
    for spec in model.layers[:top]:
        result = encode(x, spec.filters, spec.lam, p=spec.p, boundary=model.boundary,
                        connectivity=spec.connectivity, preprocess=spec.preprocess,
                        method="admm" if method is None else method, max_iter=max_iter, tol=tol, backend=backend)
        maps.append(result.maps)
        x, sw = pool_maps(result.maps, spec.pool)
        switches.append(sw)
    return StackCode(maps, switches)


def _encode_pixels(model: StackModel, images: Array, top: int, method: Any, max_iter: int | None,
                   tol: float | None, backend: str) -> StackCode:
    name = method if method is None or isinstance(method, str) else getattr(method, "method", method)
    if name not in (None, "fista"):
        raise ValueError(f"method must be 'fista' for a model with reconstruct_to 'pixels' (the 2011 ISTA), "
                         f"got {method!r}")
    if not isinstance(method, str) and method is not None:
        max_iter = method.max_iter if max_iter is None else max_iter
        tol = method.tol if tol is None else tol
    first = model.layers[0]
    host = isinstance(images, np.ndarray) or not hasattr(images, "__cuda_array_interface__")
    if first.preprocess is not None:  # on the images as given (integers are scaled as in learning)
        images = first.preprocess.apply(np.asarray(images))
    y = as_images(images)
    bk = get_backend(backend)
    y = bk.asarray(y)
    maps: list[Array] = []
    switches: list[Array | None] = []
    for index, spec in enumerate(model.layers[:top]):
        lower = [m.lower() for m in model.layers[:index]]
        path = PixelPath(lower, switches, y.shape[-2:], y.shape[0], model.boundary, bk, y.dtype)
        if spec.n_channels != (y.shape[1] if path.identity else path.input_channels):
            raise ValueError(f"layer {index + 1} reads {spec.n_channels} channels, but its input has "
                             f"{y.shape[1] if path.identity else path.input_channels}")
        result = code_pixels(y, spec.filters, spec.lam, p=spec.p, pool=spec.pool, connectivity=spec.connectivity,
                             path=path, boundary=model.boundary, max_iter=200 if max_iter is None else max_iter,
                             tol=1e-5 if tol is None else tol)
        maps.append(result.maps)
        switches.append(pool_maps(result.maps, spec.pool)[1])
    if host:  # numpy in, numpy out (the arrays stay on the GPU for cupy input)
        maps, switches = [bk.to_host(m) for m in maps], [None if s is None else bk.to_host(s) for s in switches]
    return StackCode(maps, switches)


def encode_stack(
    model: StackModel,
    images: Array,
    *,
    layers: int | None = None,
    method: Method | Any | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
) -> list[Array]:
    """The maps of :func:`encode_layers` (every layer up to `layers`), without the switches."""
    return encode_layers(model, images, layers=layers, method=method, max_iter=max_iter, tol=tol,
                         backend=backend).maps


def _undo_rescale(x: Array, preprocess: FittedPreprocess | None, *, offset: bool) -> Array:
    """The inverse of the recorded rescale ``y = (x − shift)/scale − mean``: ``(y + mean)·scale + shift``, or its
    linear part ``y·scale`` (``offset=False``). The identity without a rescale."""
    if preprocess is None or not preprocess.config.rescale:
        return x
    st = preprocess.stats
    return (x + st.mean) * st.scale + st.shift if offset else x * st.scale


def project_down(model: StackModel, maps: Array, from_layer: int | None = None, *,
                 switches: Sequence[Array | None] | None = None,
                 map_shapes: Sequence[Sequence[int]] | None = None, offset: bool = True) -> Array:
    r"""Reconstruct maps of layer `from_layer` through every layer below, down to pixels.

    .. math:: y^{(l-1)} = U_{s_{l-1}} R_{l-1}^{-1}\Big(\sum_k g^{(l)}_{kc}\, z^{(l)}_k \circledast
              f^{(l)}_{kc}\Big), \quad \dots, \quad \hat y = \sum_k g^{(1)}_{kc}\, z^{(1)}_k \circledast f^{(1)}_{kc}

    with :math:`R_l^{-1}` the inverse of the rescale of layer l+1's input, ``(y + mean)·scale + shift`` (2010
    model; none in the 2011 one), and :math:`U_{s_l}` the unpooling at layer l's switches where it pools.

    Parameters
    ----------
    model : StackModel
    maps : array of shape (N, K_l, H_l', W_l')
        Maps of layer l (e.g. from :func:`encode_layers`, or one-hot maps).
    from_layer : int, optional
        l (1-based); the top layer by default.
    switches, map_shapes : sequences, optional
        Needed when a layer below l pools: ``switches[j - 1]`` and ``map_shapes[j - 1]`` are layer j's switches
        for these N images and the shape (N, K_j, H_j', W_j') of its maps, for j = 1 … l−1 (a
        :class:`StackCode` has both: :func:`reconstruct_from`). Longer sequences are cut.
    offset : bool
        Undo the rescales in full (default), or only their linear part ``y·scale``, which leaves out the constant
        that the shift and mean add (what :func:`pixel_filters` shows).

    Returns
    -------
    array of shape (N, C_1, H, W)
        In the space of layer 1's *preprocessed* input (what layer 1 learned to reconstruct), not raw pixels;
        the maps' backend and dtype.
    """
    top = model.check_layer(from_layer)
    K = model.layers[top - 1].n_filters
    if np.ndim(maps) != 4 or maps.shape[1] != K:
        raise ValueError(f"maps of layer {top} must have shape (N, {K}, H', W'), got shape {np.shape(maps)}")
    between = None
    if model.pools_below(top):
        if switches is None or map_shapes is None or len(switches) < top - 1 or len(map_shapes) < top - 1:
            raise ValueError(f"switches and map_shapes need an entry for each of layers 1 … {top - 1}: a layer "
                             "below pools, and projecting down unpools at the switches of these images")
        for j in range(top - 1):
            if (switches[j] is None) != (model.layers[j].pool is None):
                raise ValueError(f"switches[{j}] must be given exactly when layer {j + 1} pools")

        def between(index: int, x: Array) -> Array:
            sw = switches[index]
            return x if sw is None else unpool3d(x, sw, map_shapes[index])

    return project_through(model, maps, top, offset=offset, between=between)


def reconstruct_from(model: StackModel, code: StackCode, layer: int | None = None, *, offset: bool = True) -> Array:
    """:func:`project_down` of ``code.maps[layer - 1]`` with the code's own switches: the images seen from `layer`."""
    top = model.check_layer(layer)
    if len(code.maps) < top:
        raise ValueError(f"the code holds maps of {len(code.maps)} layers, not of layer {top}")
    return project_down(model, code.maps[top - 1], top, switches=code.switches,
                        map_shapes=[tuple(m.shape) for m in code.maps], offset=offset)


def project_through(model: StackModel, maps: Array, top: int, *, offset: bool = True,
                    between: Callable[[int, Array], Array] | None = None) -> Array:
    """The loop of :func:`project_down` for checked arguments: reconstruct layer `top`'s maps through every layer
    below, undoing each rescale; ``between(index, x)``, when given, transforms the maps of layer ``index``
    (0-based) once they are rebuilt (the unpooling)."""
    x = maps
    for index in range(top - 1, -1, -1):
        spec = model.layers[index]
        x = reconstruct(x, spec.filters, boundary=model.boundary, connectivity=spec.connectivity)
        if index > 0:
            x = _undo_rescale(x, spec.preprocess, offset=offset)
            if between is not None:
                x = between(index - 1, x)
    return x


def pixel_filters(model: StackModel, layer: int) -> np.ndarray:
    """Each map of `layer` seen in pixel space: a one-hot map projected down through every layer below.

    The impulse sits at the origin of a circular grid exactly as large as the composite support
    ``S = 1 + Σ_{i ≤ l} (s_i − 1)`` (13×13 for two 7×7 layers), so nothing wraps around and the result is the
    full composite kernel, in the orientation of layer-1 filters (for layer 1, the filters themselves). This is
    the same picture as a one-hot at the centre of a larger map, projected and cropped to its support, and it does
    not depend on the model's boundary. The rescales between layers are undone by their linear part only
    (``y·scale``): their offsets would add a constant to every projection, not a feature.

    A layer above a pooling layer has no image-independent pixel view (the unpooling depends on the switches of
    an image): :func:`top_projections` shows it.

    Returns
    -------
    ndarray of shape (K_l, C_1, S, S)
        In the filters' dtype; ready for :func:`~solver.images.pictures.filter_montage`.
    """
    top = model.check_layer(layer)
    if model.pools_below(top):
        raise ValueError(f"layer {top} sits above a pooling layer, so its pixel view depends on an image's "
                         "switches: use solver.models.stack.top_projections with encoded images")
    K = model.layers[top - 1].n_filters
    S = 1 + sum(m.filter_size - 1 for m in model.layers[:top])
    dtype = model.layers[top - 1].filters.dtype
    x = np.zeros((K, K, S, S), dtype=dtype)
    x[np.arange(K), np.arange(K), 0, 0] = 1
    for index in range(top - 1, -1, -1):
        spec = model.layers[index]
        x = reconstruct(x, spec.filters.astype(dtype, copy=False), boundary="circular",
                        connectivity=spec.connectivity)
        if index > 0:
            x = _undo_rescale(x, spec.preprocess, offset=False)
    return x


def footprint(model: StackModel, layer: int) -> tuple[int, int]:
    """(rows, columns) of pixels that one entry of a layer-`layer` map can reach through the layers below:
    ``s_l``, then ×ph_j + s_j − 1 down through each layer j below (pooling spreads a pooled cell over ph rows)."""
    top = model.check_layer(layer)
    rows = cols = model.layers[top - 1].filter_size
    for spec in reversed(model.layers[: top - 1]):
        ph, pw = (1, 1) if spec.pool is None else spec.pool[1:]
        rows, cols = rows * ph + spec.filter_size - 1, cols * pw + spec.filter_size - 1
    return rows, cols


def top_projections(model: StackModel, code: StackCode, layer: int) -> np.ndarray:
    """Each map of `layer` seen in pixel space through its strongest activation in `code` (Zeiler et al. 2011's
    visualisation): the entry of largest magnitude of map k over all the coded images, alone in an otherwise
    zero map, projected down with that image's switches, and cropped to the footprint around it.

    Parameters
    ----------
    model : StackModel
    code : StackCode
        Maps and switches of some images up to `layer` (:func:`encode_layers`, or ``StackResult.code``).
    layer : int
        1-based.

    Returns
    -------
    ndarray of shape (K_l, C_1, S, S)
        S the larger side of :func:`footprint`; all zeros for a map that is zero on every image. The rescales are
        undone by their linear part only, as in :func:`pixel_filters`.
    """
    top = model.check_layer(layer)
    if len(code.maps) < top:
        raise ValueError(f"the code holds maps of {len(code.maps)} layers, not of layer {top}")
    K = model.layers[top - 1].n_filters
    S = max(footprint(model, top))
    C1 = model.layers[0].n_channels
    host = StackCode([backend_of(m).to_host(m) for m in code.maps[:top]],
                     [None if s is None else backend_of(s).to_host(s) for s in code.switches[:top]])
    maps = host.maps[top - 1]
    out = np.zeros((K, C1, S, S), dtype=maps.dtype)
    for k in range(K):
        flat = int(np.argmax(np.abs(maps[:, k])))
        n, i, j = np.unravel_index(flat, maps[:, k].shape)
        if maps[n, k, i, j] == 0:
            continue
        one = np.zeros((1,) + maps.shape[1:], dtype=maps.dtype)
        one[0, k, i, j] = maps[n, k, i, j]
        image = host.select(slice(n, n + 1))
        pixels = project_down(model, one, top, switches=image.switches,
                              map_shapes=[(1,) + tuple(m.shape[1:]) for m in image.maps], offset=False)[0]
        out[k] = _crop_around(pixels, S, model.boundary == "circular")
    return out


def _crop_around(x: np.ndarray, S: int, circular: bool) -> np.ndarray:
    """An S×S window of `x` (C, H, W) holding its non-zero footprint (extent ≤ S), centred on it; wraps
    around for a circular grid, pads with zeros otherwise."""
    C, H, W = x.shape
    energy = np.abs(x).sum(axis=0)
    ci, cj = np.unravel_index(int(np.argmax(energy)), energy.shape)
    # a (2S−1)-window centred on the strongest pixel holds the whole footprint
    rows, cols = np.arange(ci - S + 1, ci + S), np.arange(cj - S + 1, cj + S)
    if circular:
        window = x[:, rows[:, None] % H, cols[None, :] % W]
    else:
        padded = np.pad(x, ((0, 0), (S, S), (S, S)))
        window = padded[:, rows[:, None] + S, cols[None, :] + S]
    # the projection comes out of FFTs: entries outside the footprint are round-off, not zero
    strength = np.abs(window).sum(axis=0)
    nz_r, nz_c = np.nonzero(strength > 100 * np.finfo(window.dtype).eps * strength.max())
    r0 = (int(nz_r.min()) + int(nz_r.max()) + 1 - S) // 2
    c0 = (int(nz_c.min()) + int(nz_c.max()) + 1 - S) // 2
    r0, c0 = min(max(r0, 0), 2 * S - 1 - S), min(max(c0, 0), 2 * S - 1 - S)
    return window[:, r0:r0 + S, c0:c0 + S]


def psnr(reference: Array, estimate: Array, *, peak: float | None = None) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak² / MSE)``, computed in float64.

    `peak` defaults to the range of `reference` (2 for inputs rescaled to about [−1, 1]); inf for a perfect
    estimate.
    """
    ref = np.asarray(reference, dtype=np.float64)
    est = np.asarray(estimate, dtype=np.float64)
    if ref.shape != est.shape:
        raise ValueError(f"reference has shape {ref.shape} but estimate has shape {est.shape}")
    mse = float(np.mean((ref - est) ** 2))
    peak = float(ref.max() - ref.min()) if peak is None else float(peak)
    if mse == 0.0:
        return math.inf
    return 10.0 * math.log10(peak * peak / mse)
