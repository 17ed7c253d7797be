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

Layer *numbers* are 1-based (layer 1 reads the pixels), as in the papers and the job service; an ``index`` is a
0-based position in ``config.layers``.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from .backend import Array
from .coding import Method, encode, reconstruct
from .config import LearnConfig
from .connectivity import connectivity_table
from .learn import IterStats, LearnResult, learn_layer
from .operators import BOUNDARIES, map_shape
from .preprocess import FittedPreprocess, PreprocessConfig

logger = logging.getLogger(__name__)

#: The rescale of a layer's maps before the next layer learns on them (2010 toolbox: shift the minimum to 0,
#: scale to span 2, subtract the mean), fitted on all the training maps of the layer below. A distributed runner
#: reproduces :func:`learn_stack` by passing this config to a one-layer run on the saved maps.
INTER_LAYER_PREPROCESS = PreprocessConfig(grey=False, zero_mean=False, contrast_normalise=False, rescale=True)

MODEL_FORMAT = 1


def layer_config(config: LearnConfig, index: int) -> LearnConfig:
    """The one-layer config that learns ``config.layers[index]`` (0-based) on the input of that layer.

    The same inference, filter update, boundary, seed and dtype; ``n_iter`` is the layer's own when it has one,
    else the config's; the preprocessing is ``config.preprocess`` for layer 1 and :data:`INTER_LAYER_PREPROCESS`
    above it.
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(config.layers):
        raise ValueError(f"index must be an integer in [0, {len(config.layers)}), got {index!r}")
    preprocess = config.preprocess if index == 0 else INTER_LAYER_PREPROCESS
    layer = config.layers[index]
    data = config.model_dump(exclude={"layers", "preprocess"})
    return LearnConfig.model_validate({**data, "n_iter": layer.n_iter or config.n_iter,
                                       "layers": [layer.model_dump(exclude={"n_iter"})],
                                       "preprocess": None if preprocess is None else preprocess.model_dump()})


def check_stack(config: LearnConfig, n_channels: int, image_shape: tuple[int, int]) -> None:
    """Raise ``ValueError`` when a layer of `config` cannot run on the input it will get (checked before any
    learning): its filters larger than its input, or a connectivity table that does not fit (K, C)."""
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
    """

    filters: np.ndarray
    connectivity: np.ndarray
    preprocess: FittedPreprocess | None
    lam: float
    p: float = 1.0

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
        object.__setattr__(self, "filters", f)
        object.__setattr__(self, "connectivity", g)

    @property
    def n_filters(self) -> int:
        return int(self.filters.shape[0])

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

    def __post_init__(self) -> None:
        layers = tuple(self.layers)
        if not layers:
            raise ValueError("a stack model needs at least one layer")
        if self.boundary not in BOUNDARIES:
            raise ValueError(f"boundary must be one of {BOUNDARIES}, got {self.boundary!r}")
        for number, (below, above) in enumerate(zip(layers, layers[1:], strict=False), start=2):
            if above.n_channels != below.n_filters:
                raise ValueError(f"layer {number} reads {above.n_channels} channels but layer {number - 1} has "
                                 f"{below.n_filters} maps")
        object.__setattr__(self, "layers", layers)

    @property
    def n_layers(self) -> int:
        return len(self.layers)

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
                    p: Sequence[float], boundary: Literal["circular", "valid"] = "circular") -> StackModel:
        """From per-layer sequences (bottom layer first). A connectivity of None is the full table; a preprocess
        may be a :class:`FittedPreprocess` or its ``to_dict()``."""
        counts = {len(filters), len(connectivity), len(preprocess), len(lam), len(p)}
        if len(counts) != 1:
            raise ValueError("filters, connectivity, preprocess, lam and p must have one entry per layer, got "
                             f"lengths {[len(filters), len(connectivity), len(preprocess), len(lam), len(p)]}")
        layers = []
        for f, g, pre, lam_l, p_l in zip(filters, connectivity, preprocess, lam, p, strict=True):
            f = np.asarray(f)
            table = np.ones(f.shape[:2], dtype=bool) if g is None else np.asarray(g)
            fitted = FittedPreprocess.from_dict(dict(pre)) if isinstance(pre, Mapping) else pre
            layers.append(LayerModel(f, table, fitted, float(lam_l), float(p_l)))
        return cls(tuple(layers), boundary)

    @classmethod
    def from_results(cls, results: Sequence[LearnResult]) -> StackModel:
        """From the one-layer results of a stack (each with its config, as :func:`learn_layer` returns them)."""
        if any(r.config is None for r in results):
            raise ValueError("every LearnResult needs its config (λ, p, boundary); use StackModel.from_layers")
        specs = [r.config.layers[0] for r in results]
        return cls.from_layers([r.filters for r in results], [r.connectivity for r in results],
                               [r.preprocess for r in results], [s.lam for s in specs], [s.p for s in specs],
                               results[0].config.boundary)

    def to_arrays(self) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
        """(arrays, metadata): ``filters-L<l>`` (K, C, s, s) and ``connectivity-L<l>`` (K, C) bool per layer, and
        a JSON-able dict with the boundary and, per layer, λ, p and the fitted preprocessing (or None)."""
        arrays: dict[str, np.ndarray] = {}
        entries = []
        for number, layer in enumerate(self.layers, start=1):
            arrays[f"filters-L{number}"] = layer.filters
            arrays[f"connectivity-L{number}"] = layer.connectivity
            entries.append({"lam": layer.lam, "p": layer.p,
                            "preprocess": None if layer.preprocess is None else layer.preprocess.to_dict()})
        return arrays, {"format": MODEL_FORMAT, "boundary": self.boundary, "layers": entries}

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
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"every layer entry needs a numeric 'lam' (and 'p'): {exc}") from None
        return cls.from_layers([np.asarray(arrays[f]) for f, _ in names],
                               [np.asarray(arrays[g]).astype(bool) for _, g in names], pre, lam, p, boundary)


@dataclass(frozen=True)
class StackResult:
    """Learned layers, bottom first.

    Attributes
    ----------
    layers : list of LearnResult
        Layer l's filters (K_l, C_l, s_l, s_l), final maps, history, connectivity and the fitted preprocessing of
        its input (``preprocess``: the images' for layer 1, the :data:`INTER_LAYER_PREPROCESS` rescale above).
    config : LearnConfig
    """

    layers: list[LearnResult]
    config: LearnConfig

    @property
    def model(self) -> StackModel:
        return StackModel.from_results(self.layers)

    @property
    def histories(self) -> list[list[float]]:
        """E after every outer iteration, per layer."""
        return [r.history for r in self.layers]


def learn_stack(
    images: Array,
    config: LearnConfig,
    *,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
    callback: Callable[[int, IterStats], None] | None = None,
) -> StackResult:
    """Learn every layer of `config`, bottom first (the 2010 layer-wise scheme; lower layers stay frozen).

    Parameters
    ----------
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
        Layer 1's images, preprocessed by ``config.preprocess`` (when set) inside :func:`learn_layer`.
    config : LearnConfig
        One :class:`~solver.config.LayerSpec` per layer; layer ``index`` runs ``layer_config(config, index)`` on
        the final maps of the layer below (rescaled by :data:`INTER_LAYER_PREPROCESS`, fitted on those maps).
    backend : {"auto", "numpy", "cupy"}
    callback : callable, optional
        ``callback(layer, stats)`` after every outer iteration, with the 1-based layer number and the
        :class:`~solver.learn.IterStats` of that layer's run.

    Returns
    -------
    StackResult
        Its ``model`` encodes new images (:func:`encode_stack`) and projects maps down (:func:`project_down`).

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
    results: list[LearnResult] = []
    x: Array = images
    for index in range(len(config.layers)):
        step = None if callback is None else functools.partial(callback, index + 1)
        result = learn_layer(x, layer_config(config, index), backend=backend, callback=step)
        logger.info("layer %d: %d maps, E %.6g after %d outer iterations", index + 1, result.filters.shape[0],
                    result.history[-1], len(result.history))
        results.append(result)
        x = result.maps
    return StackResult(results, config)


def encode_stack(
    model: StackModel,
    images: Array,
    *,
    layers: int | None = None,
    method: Method | Any = "admm",
    max_iter: int | None = None,
    tol: float | None = None,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
) -> list[Array]:
    """Maps of every layer up to `layers` (default: the top one) for new images.

    Layer 1's preprocessing is applied to `images`; each higher layer codes the maps of the layer below,
    transformed by its recorded rescale, as in learning. `method`, `max_iter`, `tol` and `backend` go to
    :func:`~solver.coding.encode` for every layer.

    Returns
    -------
    list of arrays
        ``maps[l - 1]`` of shape (N, K_l, H_l', W_l'), in the images' dtype (float32 in, float32 out).
    """
    top = model.check_layer(layers)
    x, out = images, []
    for spec in model.layers[:top]:
        result = encode(x, spec.filters, spec.lam, p=spec.p, boundary=model.boundary,
                        connectivity=spec.connectivity, preprocess=spec.preprocess, method=method,
                        max_iter=max_iter, tol=tol, backend=backend)
        out.append(result.maps)
        x = result.maps
    return out


def _undo_rescale(x: Array, preprocess: FittedPreprocess | None, *, offset: bool) -> Array:
    """The inverse of the recorded rescale ``y = (x − shift)/scale − mean``: ``(y + mean)·scale + shift``, or its
    linear part ``y·scale`` (``offset=False``). The identity without a rescale."""
    if preprocess is None or not preprocess.config.rescale:
        return x
    st = preprocess.stats
    return (x + st.mean) * st.scale + st.shift if offset else x * st.scale


def project_down(model: StackModel, maps: Array, from_layer: int | None = None, *, offset: bool = True) -> Array:
    r"""Reconstruct maps of layer `from_layer` through every layer below, down to pixels.

    .. math:: y^{(l-1)} = R_{l-1}^{-1}\Big(\sum_k g^{(l)}_{kc}\, z^{(l)}_k \circledast f^{(l)}_{kc}\Big),
              \quad \dots, \quad \hat y = \sum_k g^{(1)}_{kc}\, z^{(1)}_k \circledast f^{(1)}_{kc}

    with :math:`R_l^{-1}` the inverse of the rescale of layer l+1's input, ``(y + mean)·scale + shift``.

    Parameters
    ----------
    model : StackModel
    maps : array of shape (N, K_l, H_l', W_l')
        Maps of layer l (e.g. from :func:`encode_stack`, or one-hot maps).
    from_layer : int, optional
        l (1-based); the top layer by default.
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
    return project_through(model, maps, top, offset=offset)


def project_through(model: StackModel, maps: Array, top: int, *, offset: bool = True,
                    between: Callable[[int, Array], Array] | None = None) -> Array:
    """The loop of :func:`project_down` for checked arguments: reconstruct layer `top`'s maps through every layer
    below, undoing each rescale; ``between(index, x)``, when given, transforms the maps of layer ``index``
    (0-based) once they are rebuilt (unpooling, in :func:`solver.pooling.pooled_project_down`)."""
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

    Returns
    -------
    ndarray of shape (K_l, C_1, S, S)
        In the filters' dtype; ready for :func:`~solver.montage.filter_montage`.
    """
    top = model.check_layer(layer)
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
