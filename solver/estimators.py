"""scikit-learn style estimators: :class:`ConvolutionalDictionaryLearning` (one layer) and
:class:`DeconvolutionalNetwork` (a layer stack), for pipelines, ``clone`` and model selection.

scikit-learn is an optional dependency (``pip install "deconv[sklearn]"``): ``import solver`` does not import
this module; ``from solver.estimators import DeconvolutionalNetwork`` (or ``solver.DeconvolutionalNetwork``,
resolved on first use) does.

``ConvolutionalDictionaryLearning.partial_fit`` learns online (:func:`~solver.learn_online`): each call is one batch
(or several of ``batch_size``), and the statistics of the images seen are kept between calls, so a stream of calls
learns from more images than fit in memory.

Input layout. ``X`` is a batch of images: (N, C, H, W), (N, H, W) for grey ones, or 2-D (N, F) of flattened
images, of shape ``image_shape`` ((H, W) or (C, H, W), one size of which may be -1 as in ``numpy.reshape``) or,
when that is None, square and grey (F = H·W with H = W). The output follows the input: image batches give maps
(N, K, H', W'); 2-D input gives flattened maps (N, K·H'·W'), so that a classifier can follow in a
:class:`~sklearn.pipeline.Pipeline`. Convolutional models encode images of any size, so 4-D and 3-D batches need
not have the training images' height and width.

scikit-learn's checks (``check_estimator``) all generate 2-D X of a few features (1, 2, 3, 5, 10), mostly not a
square number. With the default ``image_shape=None`` those are refused (a ValueError naming ``image_shape``), by
design: a flattened image has a shape. Read as images one pixel high (``image_shape=(1, -1)``) with 1×1 filters,
both estimators pass every check of scikit-learn 1.9 (``tests/solver/test_estimators.py``); none is skipped but
``check_array_api_input``, which scikit-learn itself skips unless ``SCIPY_ARRAY_API`` is set.
"""

from __future__ import annotations

import math
from dataclasses import replace
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, check_random_state

from .config import FilterUpdateConfig, LayerSpec, LearnConfig, OnlineConfig
from .images.preprocess import FittedPreprocess, PreprocessConfig
from .models.coding import encode, inference_config
from .models.lam import absolute_config, lambda_max
from .models.online import OnlineLearner, rebatch
from .models.stack.encoding import encode_layers
from .models.stack.files import ModelSource, read_model, save_model
from .models.stack.learning import learn_stack
from .models.stack.model import StackModel
from .models.stack.projection import project_down
from .operators.pooling import pool_maps

_SEED_RANGE = 2**31 - 1


class _ImageEstimator(TransformerMixin, BaseEstimator):
    """What both estimators share: the input layout, fitting a :class:`~solver.LearnConfig`, encoding with the
    fitted model, and saving and loading through the model file."""

    # -- subclasses ---------------------------------------------------------------------------------------------

    def _learn_config(self, seed: int) -> LearnConfig:
        raise NotImplementedError

    @classmethod
    def _params_of(cls, model: StackModel) -> dict[str, Any]:
        raise NotImplementedError

    # -- input layout ---------------------------------------------------------------------------------------------

    def _images(self, X: Any, *, reset: bool) -> tuple[np.ndarray, bool]:
        """(images (N, C, H, W), whether X was 2-D) from X, checked; `reset` records the 2-D layout (fit)."""
        X = check_array(X, allow_nd=True, dtype=[np.float32, np.float64], input_name="X")
        if X.ndim == 4:
            return X, False
        if X.ndim == 3:
            return X[:, None], False
        if X.ndim != 2:
            raise ValueError(
                f"X must have shape (N, C, H, W), (N, H, W) or (N, F) of flattened images, got shape {X.shape}"
            )
        n_features = X.shape[1]
        if reset:
            self.n_features_in_ = n_features
            self.input_shape_ = _flat_shape(self.image_shape, n_features)
        else:
            flat = getattr(self, "input_shape_", None)
            expected = getattr(self, "n_features_in_", None)
            if flat is None or expected is None:
                raise ValueError(
                    "X is 2-D (flattened images) but the estimator was fitted on image batches: pass "
                    "(N, C, H, W) images"
                )
            if n_features != expected:
                raise ValueError(
                    f"X has {n_features} features, but {type(self).__name__} is expecting {expected} features as input"
                )
        return X.reshape((X.shape[0], *self.input_shape_)), True

    def _seed(self) -> int:
        if isinstance(self.random_state, int | np.integer) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(_SEED_RANGE))

    # -- fitting ----------------------------------------------------------------------------------------------

    def fit(self, X: Any, y: Any = None) -> _ImageEstimator:
        """Learn the filters from the images `X` (`y` is ignored).

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, F)
        y : ignored

        Returns
        -------
        self
        """
        # a refit forgets an earlier 2-D layout and the statistics of partial_fit
        for name in ("n_features_in_", "input_shape_", "online_", "preprocess_"):
            self.__dict__.pop(name, None)
        images, _ = self._images(X, reset=True)
        config = self._learn_config(self._seed())
        result = learn_stack(images, config, backend=self.backend)
        self._set_fitted(result.model, result.histories)
        return self

    def _set_fitted(self, model: StackModel, histories: list[list[float]]) -> None:
        self.model_ = model
        self.history_ = histories[0] if self._one_layer else histories
        self.n_iter_ = len(histories[0]) if self._one_layer else [len(h) for h in histories]
        filters = [layer.filters for layer in model.layers]
        self.filters_ = filters[0] if self._one_layer else filters
        lams = [layer.lam for layer in model.layers]
        self.lam_ = lams[0] if self._one_layer else lams
        lam_max = [layer.lam_max for layer in model.layers]
        self.lam_max_ = lam_max[0] if self._one_layer else lam_max

    _one_layer = False

    # -- encoding ---------------------------------------------------------------------------------------------

    def _code(self, X: Any, layer: int | None):
        check_is_fitted(self, "model_")
        images, flat = self._images(X, reset=False)
        return encode_layers(self.model_, images, layer=layer, max_iter=self.encode_iter, backend=self.backend), flat

    # -- model files ------------------------------------------------------------------------------------------

    def save(self, path: str | PathLike[str]) -> Path:
        """Write the fitted model to a model file (:func:`~solver.load_model` reads it too), with the estimator's
        parameters and learning history, atomically.

        Parameters
        ----------
        path : str or path-like

        Returns
        -------
        Path
        """
        check_is_fitted(self, "model_")
        extra = {"estimator": type(self).__name__, "params": _json_params(self.get_params()), "history": self.history_}
        if hasattr(self, "input_shape_"):
            extra["input_shape"] = list(self.input_shape_)
        return save_model(self.model_, path, extra=extra)

    @classmethod
    def load(cls, source: ModelSource):
        """A fitted estimator from a model file, its bytes or a binary file object.

        A file saved by :meth:`save` restores the parameters and the history; any other model file (one saved by
        :meth:`StackModel.save`, or a job's model downloaded from the service) gives parameters read off the
        model and an empty history.

        Parameters
        ----------
        source : path, bytes or binary file object

        Returns
        -------
        estimator
            Fitted: ``transform`` encodes as the saved estimator did.
        """
        model, extra = read_model(source)
        params = cls._params_of(model)
        if extra.get("estimator") == cls.__name__:
            saved = {k: v for k, v in extra.get("params", {}).items() if k in cls._get_param_names()}
            if saved.get("image_shape") is not None:  # a tuple, a list in JSON
                saved["image_shape"] = tuple(saved["image_shape"])
            params.update(saved)
        estimator = cls(**params)
        if "input_shape" in extra:
            estimator.input_shape_ = tuple(extra["input_shape"])
            estimator.n_features_in_ = math.prod(estimator.input_shape_)
        history = extra.get("history")
        if history is None:
            history = [[] for _ in model.layers]
        elif estimator._one_layer:
            history = [history]
        estimator._set_fitted(model, history)
        return estimator


class ConvolutionalDictionaryLearning(_ImageEstimator):
    r"""Convolutional dictionary learning of one layer, scikit-learn style.

    .. math:: \min_{z, f} \tfrac12 \sum_{n,c} \| \sum_k g_{kc}\, z_{nk} \circledast f_{kc} - y_{nc} \|^2
              + \lambda \sum_{n,k} \|z_{nk}\|_p^p \quad \text{s.t.} \quad \|f\|_2 \le 1

    Parameters
    ----------
    n_filters : int
        K.
    filter_size : int
        s (filters are s×s).
    lam : float
        λ > 0; with ``lam_scale="relative"`` the fraction of λ_max (in (0, 1)), see :func:`~solver.lambda_max`.
    lam_scale : {"absolute", "relative"}
    p : float
        Sparsity exponent in (0, 1].
    n_iter : int
        Outer iterations (coding step, filter step).
    method : {"admm", "fista", "zeiler"}
        Inference for learning and encoding.
    inner_iter : int, optional
        Inference iterations per outer iteration (default 10).
    boundary : {"circular", "valid"}
        ``valid`` gives maps of (H+s−1)×(W+s−1).
    connectivity : str or bool array of shape (K, C)
    filter_iter : int, optional
        Filter-update iterations per outer iteration (default 10), or per batch for ``partial_fit``.
    preprocess : PreprocessConfig or dict, optional
        Fitted on the training images and repeated on new ones; None: the images as given. ``partial_fit`` fits
        it on its first batch.
    image_shape : (H, W) or (C, H, W), optional
        The shape of the flattened images of a 2-D `X`, one size of which may be -1 (inferred, as in
        ``numpy.reshape``: ``(1, -1)`` reads every row as an image one pixel high); None: square grey images.
    encode_iter : int, optional
        Inference iterations of ``transform`` and ``score`` (default: the method's own, 200).
    batch_size : int, optional
        ``partial_fit``: the images of each call are cut into batches of this size (default: each call's X is one
        batch).
    forget : float
        ``partial_fit``: ρ of the forgetting schedule β_t = (1 − 1/t)^ρ of the online learner
        (:func:`~solver.learn_online`).
    random_state : int, RandomState or None
        Seeds the initial filters.
    backend : {"auto", "numpy", "cupy"}

    Attributes
    ----------
    filters_ : ndarray of shape (K, C, s, s)
    history_ : list of float
        The objective E after every outer iteration (``fit``), or of every batch (``partial_fit``).
    n_iter_ : int
        Outer iterations run (``fit``), or batches seen (``partial_fit``).
    online_ : OnlineLearner
        Only after ``partial_fit``: the online learner, with its running statistics (kept between calls).
    lam_ : float
        The absolute λ used.
    lam_max_ : float or None
        λ_max of the training images with the initial filters when ``lam_scale="relative"``.
    model_ : StackModel
        The fitted model (one layer); ``save`` writes it.
    n_features_in_ : int
        Only after fitting on 2-D `X`: the number of pixels of a flattened image.
    input_shape_ : (C, H, W)
        Only after fitting on 2-D `X`: the shape of a flattened image.

    Notes
    -----
    scikit-learn's ``check_estimator`` passes with ``image_shape=(1, -1)`` and 1×1 filters (its checks draw 2-D
    X with any number of features); see the module's docstring.

    Examples
    --------
    >>> import numpy as np
    >>> from solver.estimators import ConvolutionalDictionaryLearning
    >>> images = np.random.default_rng(0).standard_normal((4, 1, 12, 12)).astype(np.float32)
    >>> cdl = ConvolutionalDictionaryLearning(n_filters=3, filter_size=3, lam=0.1, n_iter=2, random_state=0)
    >>> cdl.fit(images).transform(images).shape
    (4, 3, 12, 12)
    >>> cdl.inverse_transform(cdl.transform(images)).shape
    (4, 1, 12, 12)
    """

    _one_layer = True

    def __init__(
        self,
        *,
        n_filters: int = 8,
        filter_size: int = 7,
        lam: float = 0.1,
        lam_scale: str = "absolute",
        p: float = 1.0,
        n_iter: int = 20,
        method: str = "admm",
        inner_iter: int | None = None,
        boundary: str = "circular",
        connectivity: Any = "full",
        filter_iter: int | None = None,
        preprocess: PreprocessConfig | dict | None = None,
        image_shape: tuple[int, ...] | None = None,
        encode_iter: int | None = None,
        batch_size: int | None = None,
        forget: float = 10.0,
        random_state: Any = None,
        backend: str = "auto",
    ):
        self.n_filters = n_filters
        self.filter_size = filter_size
        self.lam = lam
        self.lam_scale = lam_scale
        self.p = p
        self.n_iter = n_iter
        self.method = method
        self.inner_iter = inner_iter
        self.boundary = boundary
        self.connectivity = connectivity
        self.filter_iter = filter_iter
        self.preprocess = preprocess
        self.image_shape = image_shape
        self.encode_iter = encode_iter
        self.batch_size = batch_size
        self.forget = forget
        self.random_state = random_state
        self.backend = backend

    def partial_fit(self, X: Any, y: Any = None) -> ConvolutionalDictionaryLearning:
        """Update the filters from the images `X` by online learning (:func:`~solver.learn_online`).

        The sufficient statistics of the images seen so far are kept between calls (``online_``), so a stream of
        calls learns from more images than fit in memory. The first call starts from the fitted filters when
        ``fit`` ran before, else from the seeded ones; it also fixes the input layout, the preprocessing (fitted
        on its images) and, with ``lam_scale="relative"``, λ (from λ_max of its images).

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, F)
            One batch, or several of ``batch_size`` images.
        y : ignored

        Returns
        -------
        self
        """
        first = not hasattr(self, "online_")
        images, _ = self._images(X, reset=first and not hasattr(self, "model_"))
        if first:
            images = self._start_online(images)
        elif self.preprocess_ is not None:
            images = self.preprocess_.apply(images)
        learner = self.online_
        for batch in rebatch(images, self.batch_size or images.shape[0]):
            learner.update_from_batch(batch)
        result = replace(learner.result(), preprocess=self.preprocess_, lam_max=self.lam_max_)
        self._set_fitted(result.model, [result.history])
        return self

    def _start_online(self, images: np.ndarray) -> np.ndarray:
        """The online learner of the first ``partial_fit`` call; returns its images, preprocessed."""
        config = self._learn_config(self._seed())
        online = OnlineConfig(
            forget=self.forget, **({} if self.batch_size is None else {"batch_size": self.batch_size})
        )
        if hasattr(self, "model_"):  # continue from fit: its filters, preprocessing and absolute λ
            layer = self.model_.layers[0]
            init, lam_max, self.preprocess_ = layer.filters, layer.lam_max, layer.preprocess
            if self.preprocess_ is not None:
                images = self.preprocess_.apply(images)
        else:
            init, lam_max, self.preprocess_ = None, None, None
            if config.preprocess is not None:
                images, self.preprocess_ = FittedPreprocess.fit(images, config.preprocess)
        config = config.model_copy(update={"preprocess": None})
        if init is None and config.layers[0].lam_scale == "relative":  # λ from this batch with the start filters
            start = OnlineLearner(config, online, images.shape[1], dtype=images.dtype)
            init = start.filters
            lam_max = lambda_max(images, init, boundary=config.boundary, connectivity=start.table, backend=self.backend)
        if lam_max is not None:
            config = absolute_config(config, lam_max)
        self.online_ = OnlineLearner(
            config, online, images.shape[1], backend=self.backend, init_filters=init, dtype=images.dtype
        )
        self.lam_max_ = lam_max
        return images

    def _learn_config(self, seed: int) -> LearnConfig:
        table = self.connectivity if isinstance(self.connectivity, str) else np.asarray(self.connectivity).tolist()
        layer = LayerSpec(
            n_filters=self.n_filters,
            filter_size=self.filter_size,
            lam=self.lam,
            lam_scale=self.lam_scale,
            p=self.p,
            connectivity=table,
        )
        return _config([layer], self, seed, "below")

    @classmethod
    def _params_of(cls, model: StackModel) -> dict[str, Any]:
        if model.n_layers != 1:
            raise ValueError(
                f"a ConvolutionalDictionaryLearning model has one layer, the file holds "
                f"{model.n_layers}: load it with DeconvolutionalNetwork.load"
            )
        layer = model.layers[0]
        relative = layer.lam_scale == "relative"
        return {
            "n_filters": layer.n_filters,
            "filter_size": layer.filter_size,
            "lam": layer.lam / layer.lam_max if relative else layer.lam,
            "lam_scale": layer.lam_scale,
            "p": layer.p,
            "boundary": model.boundary,
            "connectivity": layer.connectivity.tolist(),
            "method": "admm" if model.inference is None else model.inference.method,
            "preprocess": None if layer.preprocess is None else layer.preprocess.config,
        }

    def transform(self, X: Any) -> np.ndarray:
        """The feature maps of `X` with the learned filters.

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, F)

        Returns
        -------
        ndarray of shape (N, K, H', W'), or (N, K·H'·W') for 2-D `X`
            In `X`'s float dtype.
        """
        code, flat = self._code(X, 1)
        maps = code.maps[0]
        return maps.reshape(maps.shape[0], -1) if flat else maps

    def inverse_transform(self, X: Any) -> np.ndarray:
        """Images from feature maps: ``Σ_k g[k, c] · (maps[n, k] ⊛ filters[k, c])``.

        Parameters
        ----------
        X : array of shape (N, K, H', W'), or (N, K·H'·W') after fitting on 2-D input

        Returns
        -------
        ndarray of shape (N, C, H, W), or (N, F) for 2-D `X`
            In the preprocessed space (the preprocessing is not undone).
        """
        check_is_fitted(self, "model_")
        maps, flat = _maps_input(self, X)
        images = project_down(self.model_, maps, 1)
        return images.reshape(images.shape[0], -1) if flat else images

    def score(self, X: Any, y: Any = None) -> float:
        """−E: the negative objective of `X` encoded with the learned filters (summed over the images, as
        scikit-learn's ``KMeans.score`` is); higher is better.

        Parameters
        ----------
        X : array of shape (N, C, H, W), (N, H, W) or (N, F)
        y : ignored

        Returns
        -------
        float
        """
        check_is_fitted(self, "model_")
        images, _ = self._images(X, reset=False)
        layer = self.model_.layers[0]
        method = "admm" if self.model_.inference is None else self.model_.inference.method
        result = encode(
            images,
            layer.filters,
            layer.lam,
            p=layer.p,
            boundary=self.model_.boundary,
            connectivity=layer.connectivity,
            preprocess=layer.preprocess,
            method=method,
            max_iter=self.encode_iter,
            backend=self.backend,
        )
        return -float(result.objective)

    def __sklearn_tags__(self):
        return _tags(super().__sklearn_tags__())


class DeconvolutionalNetwork(_ImageEstimator):
    r"""A Deconvolutional Network (Zeiler et al. 2010, 2011): layers learned one after another, scikit-learn style.

    Parameters
    ----------
    layers : list of dict or LayerSpec, optional
        One entry per layer, bottom first, with the fields of :class:`~solver.LayerSpec` (``n_filters``,
        ``filter_size``, ``lam``, ``lam_scale``, ``p``, ``connectivity``, ``pool``, ``n_iter``). Default: 8 then
        16 filters of 5×5, λ = 0.1, the second layer reading singles and doubles of the first's maps.
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
        use :func:`solver.encode_layers` and :func:`solver.reconstruct_from` for those).

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
        maps, flat = _maps_input(self, X, top)
        images = project_down(self.model_, maps, top)
        return images.reshape(images.shape[0], -1) if flat else images

    def __sklearn_tags__(self):
        return _tags(super().__sklearn_tags__())


_DEFAULT_LAYERS = (
    {"n_filters": 8, "filter_size": 5, "lam": 0.1},
    {"n_filters": 16, "filter_size": 5, "lam": 0.1, "connectivity": "singles-and-doubles"},
)


def _config(layers: list[LayerSpec], est: Any, seed: int, reconstruct_to: str) -> LearnConfig:
    method = est.method if est.method is not None else ("fista" if reconstruct_to == "pixels" else "admm")
    inference = inference_config(method, 10 if est.inner_iter is None else est.inner_iter, None)
    filter_update = FilterUpdateConfig(**({} if est.filter_iter is None else {"max_iter": est.filter_iter}))
    preprocess = est.preprocess
    if isinstance(preprocess, dict):
        preprocess = PreprocessConfig.model_validate(preprocess)
    return LearnConfig(
        layers=layers,
        inference=inference,
        filter_update=filter_update,
        n_iter=est.n_iter,
        boundary=est.boundary,
        preprocess=preprocess,
        seed=seed,
        reconstruct_to=reconstruct_to,
    )


def _flat_shape(image_shape: Any, n_features: int) -> tuple[int, int, int]:
    """(C, H, W) of the flattened images of a 2-D X."""
    if image_shape is None:
        side = math.isqrt(n_features)
        if side * side != n_features:
            raise ValueError(
                f"X is 2-D with {n_features} features, not a square number: set image_shape to the "
                "(H, W) or (C, H, W) of the flattened images"
            )
        return (1, side, side)
    shape = tuple(int(d) for d in image_shape)
    if len(shape) == 2:
        shape = (1, *shape)
    known = math.prod(d for d in shape if d != -1)
    if shape.count(-1) == 1 and known > 0 and n_features % known == 0:  # one size inferred, as numpy's reshape
        shape = tuple(n_features // known if d == -1 else d for d in shape)
    if len(shape) != 3 or min(shape) < 1 or math.prod(shape) != n_features:
        raise ValueError(
            f"image_shape {tuple(image_shape)} must be (H, W) or (C, H, W), one size of them -1 at "
            f"most, with {n_features} pixels in all (the features of X)"
        )
    return shape  # type: ignore[return-value]


def _maps_input(est: _ImageEstimator, X: Any, layer: int = 1) -> tuple[np.ndarray, bool]:
    """(maps (N, K, H', W'), whether X was 2-D) for inverse_transform."""
    X = check_array(X, allow_nd=True, dtype=[np.float32, np.float64], input_name="X")
    if X.ndim == 4:
        return X, False
    shape = getattr(est, "input_shape_", None)
    if X.ndim != 2 or shape is None:
        raise ValueError(
            f"X must be maps of shape (N, K, H', W') (or flattened maps after fitting on 2-D input), "
            f"got shape {X.shape}"
        )
    grid = _map_grid(est.model_, shape[1:], layer)
    n_filters = est.model_.layers[layer - 1].n_filters
    if X.shape[1] != n_filters * grid[0] * grid[1]:
        raise ValueError(
            f"X has {X.shape[1]} features, but the maps of layer {layer} have {n_filters}×{grid[0]}×"
            f"{grid[1]} = {n_filters * grid[0] * grid[1]}"
        )
    return X.reshape(X.shape[0], n_filters, *grid), True


def _map_grid(model: StackModel, image_hw: tuple[int, int], layer: int) -> tuple[int, int]:
    from .operators.convolution import map_shape  # noqa: PLC0415
    from .operators.pooling import pooled_shape  # noqa: PLC0415

    hw = tuple(image_hw)
    for index, spec in enumerate(model.layers[:layer]):  # each layer reads the (pooled) maps of the one below
        hw = map_shape(hw, spec.filter_size, model.boundary)
        if index < layer - 1 and spec.pool is not None:
            hw = pooled_shape((1, spec.n_filters, *hw), spec.pool)[2:]
    return hw


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that survive JSON (a RandomState does not: it is left out, the model is already fitted)."""
    out = {}
    for name, value in params.items():
        if isinstance(value, PreprocessConfig | LayerSpec):
            value = value.model_dump()
        elif isinstance(value, list | tuple):
            value = [v.model_dump() if isinstance(v, LayerSpec) else v for v in value]
        elif isinstance(value, np.ndarray):
            value = value.tolist()
        if isinstance(value, int | float | str | bool | list | dict) or value is None:
            out[name] = value
    return out


def _tags(tags: Any) -> Any:
    tags.transformer_tags.preserves_dtype = ["float64", "float32"]
    return tags


__all__ = ["ConvolutionalDictionaryLearning", "DeconvolutionalNetwork"]
