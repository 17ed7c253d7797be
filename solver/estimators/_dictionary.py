""":class:`ConvolutionalDictionaryLearning`: one layer, learned in batch (``fit``) or online (``partial_fit``)."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np
from sklearn.utils.validation import check_is_fitted

from ..config import LayerSpec, LearnConfig, OnlineConfig
from ..images.preprocess import FittedPreprocess, PreprocessConfig
from ..models.coding import encode
from ..models.lam import absolute_config, lambda_max
from ..models.online import DEFAULT_FILTER_ITER, OnlineLearner, rebatch
from ..models.stack.model import StackModel
from ..models.stack.projection import project_down
from ._base import _config, _ImageEstimator, _maps_input, _tags


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
        Filter-update iterations per outer iteration (default 10), or per batch for ``partial_fit`` (default 100).
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
        steps = DEFAULT_FILTER_ITER if self.filter_iter is None else self.filter_iter
        config = config.model_copy(
            update={"preprocess": None, "filter_update": config.filter_update.model_copy(update={"max_iter": steps})}
        )
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
