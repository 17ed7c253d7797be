"""Learning a stack: every layer of a config, bottom first, each on the input the layers below give it."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Literal

import numpy as np

from ...backend import Array
from ...config import LearnConfig
from ...images.preprocess import FittedPreprocess, PreprocessConfig
from ...operators.connectivity import connectivity_table
from ...operators.convolution import map_shape
from ...operators.pixel_path import LowerLayer
from ...operators.pooling import pool_maps, pooled_shape
from ..learn import IterStats, LearnResult, learn_layer
from .model import StackResult

logger = logging.getLogger(__name__)

#: The rescale of a layer's maps before the next layer learns on them (2010 toolbox: shift the minimum to 0,
#: scale to span 2, subtract the mean), fitted on all the training maps of the layer below. A distributed runner
#: reproduces :func:`learn_stack` by passing this config to a one-layer run on the saved maps.
INTER_LAYER_PREPROCESS = PreprocessConfig(grey=False, zero_mean=False, contrast_normalise=False, rescale=True)


def layer_config(config: LearnConfig, index: int) -> LearnConfig:
    """The one-layer config that learns ``config.layers[index]`` (0-based) on the input of that layer.

    The same inference, filter update, boundary, seed, dtype and ``reconstruct_to``; ``n_iter`` is the layer's
    own when it has one, else the config's; the preprocessing is ``config.preprocess`` for layer 1, and above it
    :data:`INTER_LAYER_PREPROCESS` (2010) or none (2011: the layer reads the preprocessed pixels of layer 1).

    Parameters
    ----------
    config : LearnConfig
    index : int
        0-based position in ``config.layers``.

    Returns
    -------
    LearnConfig
        Of one layer.

    Examples
    --------
    >>> from solver import LearnConfig, layer_config
    >>> config = LearnConfig.model_validate({"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1},
    ...                                                 {"n_filters": 4, "filter_size": 3, "lam": 0.2}]})
    >>> second = layer_config(config, 1)
    >>> second.layers[0].n_filters, second.preprocess.rescale
    (4, True)
    """
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(config.layers):
        raise ValueError(f"index must be an integer in [0, {len(config.layers)}), got {index!r}")
    if index == 0:
        preprocess = config.preprocess
    else:  # the 2011 model reads the pixels of layer 1 at every layer, already preprocessed
        preprocess = INTER_LAYER_PREPROCESS if config.reconstruct_to == "below" else None
    layer = config.layers[index]
    data = config.model_dump(exclude={"layers", "preprocess"})
    return LearnConfig.model_validate(
        {
            **data,
            "n_iter": layer.n_iter or config.n_iter,
            "layers": [layer.model_dump(exclude={"n_iter"})],
            "preprocess": None if preprocess is None else preprocess.model_dump(),
        }
    )


def check_stack(config: LearnConfig, n_channels: int, image_shape: tuple[int, int]) -> None:
    """Raise ``ValueError`` when a layer of `config` cannot run on the input it will get (checked before any
    learning): its filters larger than its input, or a connectivity table that does not fit (K, C). Layer l+1
    reads the pooled maps of layer l when layer l pools."""
    C, (H, W) = int(n_channels), image_shape
    for index, layer in enumerate(config.layers):
        if layer.filter_size > min(H, W):
            raise ValueError(
                f"layers.{index}.filter_size: filters of {layer.filter_size}x{layer.filter_size} are "
                f"larger than the layer's input of {H}x{W}"
            )
        try:
            connectivity_table(layer.connectivity, layer.n_filters, C, seed=config.seed)
        except ValueError as exc:
            raise ValueError(f"layers.{index}.connectivity: {exc}") from None
        C, (H, W) = layer.n_filters, map_shape((H, W), layer.filter_size, config.boundary)
        if layer.pool is not None:
            _, C, H, W = pooled_shape((1, C, H, W), layer.pool)


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

    Examples
    --------
    >>> import numpy as np
    >>> from solver import LearnConfig, learn_stack
    >>> config = LearnConfig.model_validate({"layers": [{"n_filters": 2, "filter_size": 3, "lam": 0.1},
    ...                                                 {"n_filters": 3, "filter_size": 3, "lam": 0.1}],
    ...                                      "n_iter": 1, "boundary": "valid",
    ...                                      "inference": {"method": "fista", "max_iter": 10}})
    >>> result = learn_stack(np.random.default_rng(0).standard_normal((2, 1, 8, 8)), config)
    >>> [r.filters.shape for r in result.layers]
    [(2, 1, 3, 3), (3, 2, 3, 3)]
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
            result = learn_layer(
                images,
                layer_cfg.model_copy(update={"preprocess": None}),
                backend=backend,
                callback=step,
                lower=lower,
                switches=list(switches),
            )
            if index == 0:
                result = replace(result, preprocess=fitted)
        else:
            result = learn_layer(x, layer_cfg, backend=backend, callback=step)
        logger.info(
            "layer %d: %d maps, E %.6g after %d outer iterations",
            index + 1,
            result.filters.shape[0],
            result.history[-1],
            len(result.history),
        )
        results.append(result)
        x, sw = pool_maps(result.maps, config.layers[index].pool)
        switches.append(sw)
    return StackResult(results, config, switches)
