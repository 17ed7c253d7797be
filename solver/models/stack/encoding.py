"""Encoding new images through every layer of a learned stack: maps and switches, bottom-up."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ...backend import Array, get_backend
from ...operators.pixel_path import PixelPath
from ...operators.pooling import pool_maps
from ...validation import as_images
from ..coding import Method, code_pixels, encode
from .model import StackCode, StackModel


def encode_layers(
    model: StackModel,
    images: Array,
    *,
    layer: int | None = None,
    method: Method | Any | None = None,
    max_iter: int | None = None,
    tol: float | None = None,
    backend: Literal["auto", "numpy", "cupy"] = "auto",
) -> StackCode:
    """Maps and switches of every layer up to `layer` (1-based; default: the top one) for new images.

    Layer 1's preprocessing is applied to `images`. In the 2010 model each higher layer codes the (pooled) maps
    of the layer below, transformed by its recorded rescale, as in learning; `method` (default: the method of
    ``model.inference``, the one the model learned with, else ``"admm"``),
    `max_iter`, `tol` and `backend` go to :func:`~solver.models.coding.encode` for every layer. In the 2011 model
    (``model.reconstruct_to == "pixels"``) each layer codes the preprocessed images through the layers below at
    the switches just found for them (the bottom-up pass), by :func:`solver.models.coding.code_pixels`; `method` must
    then be ``"fista"`` (or None), with at most `max_iter` iterations (default 200) stopped at relative change
    `tol` (default 1e-5).

    Returns
    -------
    StackCode
        ``maps[l - 1]`` of shape (N, K_l, H_l', W_l'), in the images' dtype (float32 in, float32 out).

    Parameters
    ----------
    model : StackModel
    images : array of shape (N, C, H, W), (N, H, W) or (H, W)
    layer : int, optional
        The top layer to encode (1-based).
    method : {"admm", "fista", "zeiler"} or an inference config, optional
    max_iter, tol : optional
    backend : {"auto", "numpy", "cupy"}

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel, encode_layers
    >>> rng = np.random.default_rng(0)
    >>> model = StackModel.from_layers([rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))],
    ...                                [None, None], [None, None], [0.1, 0.1], [1.0, 1.0])
    >>> code = encode_layers(model, rng.standard_normal((1, 1, 8, 8)), method="fista", max_iter=5)
    >>> [m.shape for m in code.maps]
    [(1, 2, 8, 8), (1, 3, 8, 8)]
    """
    top = model.check_layer(layer)
    if method is None and model.inference is not None:  # as the job service encodes with a job's model
        method = model.inference.method
    if model.reconstruct_to == "pixels":
        return _encode_pixels(model, images, top, method, max_iter, tol, backend)
    x, maps, switches = images, [], []
    for number, spec in enumerate(model.layers[:top], start=1):
        try:
            result = encode(
                x,
                spec.filters,
                spec.lam,
                p=spec.p,
                boundary=model.boundary,
                connectivity=spec.connectivity,
                preprocess=spec.preprocess,
                method="admm" if method is None else method,
                max_iter=max_iter,
                tol=tol,
                backend=backend,
            )
        except ValueError as exc:
            if number == 1:
                raise
            # the "images" of a higher layer are the maps below it: say so, or a size error names no layer
            pooled = "pooled " if model.layers[number - 2].pool is not None else ""
            raise ValueError(
                f"layer {number}, whose input is layer {number - 1}'s {pooled}maps of shape {tuple(x.shape)}: {exc}"
            ) from None
        maps.append(result.maps)
        x, sw = pool_maps(result.maps, spec.pool)
        switches.append(sw)
    return StackCode(maps, switches)


def _encode_pixels(
    model: StackModel, images: Array, top: int, method: Any, max_iter: int | None, tol: float | None, backend: str
) -> StackCode:
    name = method if method is None or isinstance(method, str) else getattr(method, "method", method)
    if name not in (None, "fista"):
        raise ValueError(
            f"method must be 'fista' for a model with reconstruct_to 'pixels' (the 2011 ISTA), got {method!r}"
        )
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
            raise ValueError(
                f"layer {index + 1} reads {spec.n_channels} channels, but its input has "
                f"{y.shape[1] if path.identity else path.input_channels}"
            )
        result = code_pixels(
            y,
            spec.filters,
            spec.lam,
            p=spec.p,
            pool=spec.pool,
            connectivity=spec.connectivity,
            path=path,
            boundary=model.boundary,
            max_iter=200 if max_iter is None else max_iter,
            tol=1e-5 if tol is None else tol,
        )
        maps.append(result.maps)
        switches.append(pool_maps(result.maps, spec.pool)[1])
    if host:  # numpy in, numpy out (the arrays stay on the GPU for cupy input)
        maps, switches = [bk.to_host(m) for m in maps], [None if s is None else bk.to_host(s) for s in switches]
    return StackCode(maps, switches)
