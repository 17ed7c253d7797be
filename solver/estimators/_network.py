""":class:`DeconvolutionalNetwork`: a layer stack, learned one layer after another."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..config import LayerSpec, LearnConfig
from ..images.preprocess import PreprocessConfig
from ..models.stack.model import StackModel
from ..models.stack.projection import project_down
from ..operators.pooling import pool_maps
from ._base import _config, _ImageEstimator, _maps_input, _tags


class DeconvolutionalNetwork(_ImageEstimator):
    r"""A Deconvolutional Network (Zeiler et al. 2010, 2011): layers learned one after another, scikit-learn style.

    Parameters
    ----------
    layers : list of dict or LayerSpec, optional
        One entry per layer, bottom first, with the fields of :class:`~solver.LayerSpec` (``n_filters``,
        ``filter_size``, ``lam``, ``lam_scale``, ``p``, ``connectivity``, ``pool``, ``n_iter``). Default: 8 then
        36 filters of 5×5, λ = 0.1, the second layer's maps reading each of the first's 8 maps alone and each
        of their 28 pairs (singles and doubles, as Zeiler et al. 2010's second layer).
    n_iter : int
        Outer iterations per layer (a layer's own ``n_iter`` wins).
    method : {"admm", "fista", "zeiler"}
        Inference (``fista`` is required, and the default, with ``reconstruct_to="pixels"``).
    inner_iter : int, optional
        Inference iterations per outer iteration (default 10).
    boundary : {"circular", "valid"}
    reconstruct_to : {"below", "pixels"}
        The 2010 model (each layer reconstructs the layer below) or the 2011 one (every layer the pixels).
    filter_iter : int, optional
    preprocess : PreprocessConfig or dict, optional
        Of layer 1's images.
    image_shape : (H, W) or (C, H, W), optional
        The shape of the flattened images of a 2-D `X`, one size of which may be -1 (inferred); None: square grey
        images.
    pooled : bool
        ``transform`` returns the layer's maps max-pooled by its ``pool`` (the maps the layer above reads; a
        layer without ``pool`` is returned as is).
    encode_iter : int, optional
        Inference iterations of ``transform`` (default: the method's own).
    random_state : int, RandomState or None
    backend : {"auto", "numpy", "cupy"}

    Attributes
    ----------
    filters_ : list of ndarray of shape (K_l, C_l, s_l, s_l)
    history_ : list of list of float
        Per layer, E after every outer iteration.
    n_iter_ : list of int
    lam_, lam_max_ : list
        Per layer, the absolute λ used and λ_max (None where λ was absolute).
    model_ : StackModel
    n_features_in_, input_shape_
        As in :class:`ConvolutionalDictionaryLearning`.

    Notes
    -----
    scikit-learn's ``check_estimator`` passes with ``image_shape=(1, -1)`` and 1×1 filters (its checks draw 2-D
    X with any number of features); see the module's docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from solver.estimators import DeconvolutionalNetwork
    >>> images = np.random.default_rng(0).standard_normal((4, 1, 12, 12)).astype(np.float32)
    >>> net = DeconvolutionalNetwork(layers=[{"n_filters": 3, "filter_size": 3, "lam": 0.1, "pool": [1, 2, 2]},
    ...                                      {"n_filters": 4, "filter_size": 3, "lam": 0.1}],
    ...                              n_iter=2, random_state=0).fit(images)
    >>> net.transform(images, layer=1).shape, net.transform(images).shape
    ((4, 3, 12, 12), (4, 4, 6, 6))
    """

    def __init__(
        self,
        *,
        layers: list[dict | LayerSpec] | None = None,
        n_iter: int = 20,
        method: str | None = None,
        inner_iter: int | None = None,
        boundary: str = "circular",
        reconstruct_to: str = "below",
        filter_iter: int | None = None,
        preprocess: PreprocessConfig | dict | None = None,
        image_shape: tuple[int, ...] | None = None,
        pooled: bool = False,
        encode_iter: int | None = None,
        random_state: Any = None,
        backend: str = "auto",
    ):
        self.layers = layers
        self.n_iter = n_iter
        self.method = method
        self.inner_iter = inner_iter
        self.boundary = boundary
        self.reconstruct_to = reconstruct_to
        self.filter_iter = filter_iter
        self.preprocess = preprocess
        self.image_shape = image_shape
        self.pooled = pooled
        self.encode_iter = encode_iter
        self.random_state = random_state
        self.backend = backend

    def _learn_config(self, seed: int) -> LearnConfig:
        layers = _DEFAULT_LAYERS if self.layers is None else self.layers
        if isinstance(layers, dict | LayerSpec) or not len(layers):
            raise ValueError(f"layers must be a non-empty list of layer specs (dicts), got {layers!r}")
        specs = [spec if isinstance(spec, LayerSpec) else LayerSpec.model_validate(spec) for spec in layers]
        return _config(specs, self, seed, self.reconstruct_to)

    @classmethod
    def _params_of(cls, model: StackModel) -> dict[str, Any]:
        layers = []
        for layer in model.layers:
            relative = layer.lam_scale == "relative"
            layers.append(
                {
                    "n_filters": layer.n_filters,
                    "filter_size": layer.filter_size,
                    "lam": layer.lam / layer.lam_max if relative else layer.lam,
                    "lam_scale": layer.lam_scale,
                    "p": layer.p,
                    "connectivity": layer.connectivity.tolist(),
                    "pool": None if layer.pool is None else list(layer.pool),
                }
            )
        first = model.layers[0].preprocess
        return {
            "layers": layers,
            "boundary": model.boundary,
            "reconstruct_to": model.reconstruct_to,
            "method": None if model.inference is None else model.inference.method,
            "preprocess": None if first is None else first.config,
        }

    def transform(self, X: Any, layer: int | None = None) -> np.ndarray:
        """The maps of layer `layer` (default: the top one) for the images `X`, through every layer below.

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, F)
        layer : int, optional
            1-based.

        Returns
        -------
        ndarray of shape (N, K_l, H_l', W_l') (pooled when ``pooled``), or flattened (N, ·) for 2-D `X`
        """
        code, flat = self._code(X, layer)
        maps = code.maps[-1]
        if self.pooled:
            maps = pool_maps(maps, self.model_.layers[len(code.maps) - 1].pool)[0]
        return maps.reshape(maps.shape[0], -1) if flat else maps

    def fit_transform(self, X: Any, y: Any = None, **params: Any) -> np.ndarray:
        """:meth:`fit` then :meth:`transform` of the top layer.

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, F)
        y : ignored

        Returns
        -------
        ndarray
        """
        return self.fit(X, y).transform(X)

    def inverse_transform(self, X: Any, layer: int | None = None) -> np.ndarray:
        """Images from maps of layer `layer` (default: the top one), projected down through every layer below.

        Needs a model in which no layer below `layer` pools (projection would need the switches of the images:
        use :func:`solver.encode_layers` and :func:`solver.reconstruct_from` for those), nor, with ``pooled``,
        `layer` itself (its pooled maps, which :meth:`transform` returns, need their switches to unpool).

        Parameters
        ----------
        X : array of shape (N, K_l, H_l', W_l'), or flattened after fitting on 2-D input
        layer : int, optional

        Returns
        -------
        ndarray of shape (N, C, H, W), or (N, F) for 2-D `X`
        """
        check_is_fitted(self, "model_")
        top = self.model_.check_layer(layer)
        if self.model_.pools_below(top):
            raise ValueError(
                f"layer {top} sits above a layer that pools: projecting its maps down needs the "
                "switches of the images; use solver.encode_layers and solver.reconstruct_from"
            )
        if self.pooled and self.model_.layers[top - 1].pool is not None:
            raise ValueError(
                f"layer {top} pools and the estimator is pooled: its maps from transform are pooled, and unpooling "
                "them needs the switches of the images; use solver.encode_layers and solver.reconstruct_from"
            )
        maps, flat = _maps_input(self, X, top)
        images = project_down(self.model_, maps, top)
        return images.reshape(images.shape[0], -1) if flat else images

    def __sklearn_tags__(self):
        return _tags(super().__sklearn_tags__())


_DEFAULT_LAYERS = (
    {"n_filters": 8, "filter_size": 5, "lam": 0.1},
    {"n_filters": 36, "filter_size": 5, "lam": 0.1, "connectivity": "singles-and-doubles"},
)
