"""The base of the scikit-learn estimators (:class:`_ImageEstimator`: the input layout, fitting, encoding, saving
and loading) and the private helpers both estimators use."""

from __future__ import annotations

import math
from os import PathLike
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_array, check_is_fitted, check_random_state

from ..config import FilterUpdateConfig, LayerSpec, LearnConfig
from ..images.preprocess import PreprocessConfig
from ..models.coding import inference_config
from ..models.stack.encoding import encode_layers
from ..models.stack.files import ModelSource, read_model, save_model
from ..models.stack.learning import learn_stack
from ..models.stack.model import StackModel
from ..validation import check_positive_int

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
        """(images (N, C, H, W), whether X was 2-D) from X, checked; `reset` records the 2-D layout (fit).

        Integer images keep their dtype: preprocessing reads uint8 as 0..255/255 (as the model file's
        preprocessing does wherever it is loaded), which a cast to float here would have taken as 0..255."""
        integer = np.asarray(X).dtype.kind in "iu" if hasattr(X, "dtype") else False
        X = check_array(X, allow_nd=True, dtype=None if integer else [np.float32, np.float64], input_name="X")
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
        # another estimator's history has that estimator's layout: as for any other model file, none
        history = extra.get("history") if extra.get("estimator") == cls.__name__ else None
        if history is None:
            history = [[] for _ in model.layers]
        elif estimator._one_layer:
            history = [history]
        estimator._set_fitted(model, history)
        return estimator


def _config(layers: list[LayerSpec], est: Any, seed: int, reconstruct_to: str) -> LearnConfig:
    method = est.method if est.method is not None else ("fista" if reconstruct_to == "pixels" else "admm")
    inner = 10 if est.inner_iter is None else check_positive_int(est.inner_iter, "inner_iter")
    inference = inference_config(method, inner, None)
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
    from ..operators.convolution import map_shape  # noqa: PLC0415
    from ..operators.pooling import pooled_shape  # noqa: PLC0415

    hw = tuple(image_hw)
    for index, spec in enumerate(model.layers[:layer]):  # each layer reads the (pooled) maps of the one below
        hw = map_shape(hw, spec.filter_size, model.boundary)
        if index < layer - 1 and spec.pool is not None:
            hw = pooled_shape((1, spec.n_filters, *hw), spec.pool)[2:]
    return hw


def _json_params(params: dict[str, Any]) -> dict[str, Any]:
    """The parameters that survive JSON (a RandomState does not: it is left out, the model is already fitted).

    numpy scalars and arrays, at any depth (a grid search hands np.int64 counts, a layer dict a numpy table),
    become their Python values: dropped, a count would load as its default."""
    out = {}
    for name, value in params.items():
        value = _plain(value)
        if isinstance(value, int | float | str | bool | list | dict) or value is None:
            out[name] = value
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, PreprocessConfig | LayerSpec):
        return _plain(value.model_dump())
    if isinstance(value, np.ndarray | np.generic):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _tags(tags: Any) -> Any:
    tags.transformer_tags.preserves_dtype = ["float64", "float32"]
    return tags
