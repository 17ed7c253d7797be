"""Maps of any layer of a stack projected down to pixels, and each layer's features seen in pixel space
(:func:`pixel_filters` for a stack without pooling, :func:`top_projections` through the strongest activations
of coded images above a pooling layer)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ...backend import Array, backend_of
from ...images.preprocess import FittedPreprocess
from ...operators.pooling import unpool3d
from ..coding import reconstruct
from .model import StackCode, StackModel


def _undo_rescale(x: Array, preprocess: FittedPreprocess | None, *, offset: bool) -> Array:
    """The inverse of the recorded rescale ``y = (x − shift)/scale − mean``: ``(y + mean)·scale + shift``, or its
    linear part ``y·scale`` (``offset=False``). The identity without a rescale."""
    if preprocess is None or not preprocess.config.rescale:
        return x
    st = preprocess.stats
    return (x + st.mean) * st.scale + st.shift if offset else x * st.scale


def project_down(
    model: StackModel,
    maps: Array,
    layer: int | None = None,
    *,
    switches: Sequence[Array | None] | None = None,
    map_shapes: Sequence[Sequence[int]] | None = None,
    offset: bool = True,
) -> Array:
    r"""Reconstruct maps of layer `layer` through every layer below, down to pixels.

    .. math:: y^{(l-1)} = U_{s_{l-1}} R_{l-1}^{-1}\Big(\sum_k g^{(l)}_{kc}\, z^{(l)}_k \circledast
              f^{(l)}_{kc}\Big), \quad \dots, \quad \hat y = \sum_k g^{(1)}_{kc}\, z^{(1)}_k \circledast f^{(1)}_{kc}

    with :math:`R_l^{-1}` the inverse of the rescale of layer l+1's input, ``(y + mean)·scale + shift`` (2010
    model; none in the 2011 one), and :math:`U_{s_l}` the unpooling at layer l's switches where it pools.

    Parameters
    ----------
    model : StackModel
    maps : array of shape (N, K_l, H_l', W_l')
        Maps of layer l (e.g. from :func:`encode_layers`, or one-hot maps).
    layer : int, optional
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

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel, project_down
    >>> rng = np.random.default_rng(0)
    >>> model = StackModel.from_layers([rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))],
    ...                                [None, None], [None, None], [0.1, 0.1], [1.0, 1.0])
    >>> project_down(model, np.zeros((1, 3, 8, 8)), layer=2).shape
    (1, 1, 8, 8)
    """
    top = model.check_layer(layer)
    K = model.layers[top - 1].n_filters
    if np.ndim(maps) != 4 or maps.shape[1] != K:
        raise ValueError(f"maps of layer {top} must have shape (N, {K}, H', W'), got shape {np.shape(maps)}")
    between = None
    if model.pools_below(top):
        if switches is None or map_shapes is None or len(switches) < top - 1 or len(map_shapes) < top - 1:
            raise ValueError(
                f"switches and map_shapes need an entry for each of layers 1 … {top - 1}: a layer "
                "below pools, and projecting down unpools at the switches of these images"
            )
        for j in range(top - 1):
            if (switches[j] is None) != (model.layers[j].pool is None):
                raise ValueError(f"switches[{j}] must be given exactly when layer {j + 1} pools")

        def between(index: int, x: Array) -> Array:
            sw = switches[index]
            return x if sw is None else unpool3d(x, sw, map_shapes[index])

    return project_through(model, maps, top, offset=offset, between=between)


def reconstruct_from(model: StackModel, code: StackCode, layer: int | None = None, *, offset: bool = True) -> Array:
    """:func:`project_down` of ``code.maps[layer - 1]`` with the code's own switches: the images seen from `layer`.

    Parameters
    ----------
    model : StackModel
    code : StackCode
        Maps (and switches) of some images, e.g. from :func:`encode_layers`.
    layer : int, optional
        1-based; the top layer of the model by default.
    offset : bool
        As in :func:`project_down`.

    Returns
    -------
    array of shape (N, C_1, H, W)

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel, encode_layers, reconstruct_from
    >>> rng = np.random.default_rng(0)
    >>> model = StackModel.from_layers([rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))],
    ...                                [None, None], [None, None], [0.1, 0.1], [1.0, 1.0])
    >>> code = encode_layers(model, rng.standard_normal((1, 1, 8, 8)), method="fista", max_iter=5)
    >>> reconstruct_from(model, code, 1).shape
    (1, 1, 8, 8)
    """
    top = model.check_layer(layer)
    if len(code.maps) < top:
        raise ValueError(f"the code holds maps of {len(code.maps)} layers, not of layer {top}")
    return project_down(
        model,
        code.maps[top - 1],
        top,
        switches=code.switches,
        map_shapes=[tuple(m.shape) for m in code.maps],
        offset=offset,
    )


def project_through(
    model: StackModel,
    maps: Array,
    top: int,
    *,
    offset: bool = True,
    between: Callable[[int, Array], Array] | None = None,
) -> Array:
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

    Parameters
    ----------
    model : StackModel
    layer : int
        1-based.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel, pixel_filters
    >>> rng = np.random.default_rng(0)
    >>> model = StackModel.from_layers([rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))],
    ...                                [None, None], [None, None], [0.1, 0.1], [1.0, 1.0])
    >>> pixel_filters(model, 2).shape  # S = 1 + 2 + 2
    (3, 1, 5, 5)
    """
    top = model.check_layer(layer)
    if model.pools_below(top):
        raise ValueError(
            f"layer {top} sits above a pooling layer, so its pixel view depends on an image's "
            "switches: use solver.top_projections with encoded images"
        )
    K = model.layers[top - 1].n_filters
    S = 1 + sum(m.filter_size - 1 for m in model.layers[:top])
    dtype = model.layers[top - 1].filters.dtype
    x = np.zeros((K, K, S, S), dtype=dtype)
    x[np.arange(K), np.arange(K), 0, 0] = 1
    for index in range(top - 1, -1, -1):
        spec = model.layers[index]
        x = reconstruct(x, spec.filters.astype(dtype, copy=False), boundary="circular", connectivity=spec.connectivity)
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

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel, encode_layers, top_projections
    >>> rng = np.random.default_rng(0)
    >>> model = StackModel.from_layers([rng.standard_normal((2, 1, 3, 3)), rng.standard_normal((3, 2, 3, 3))],
    ...                                [None, None], [None, None], [0.1, 0.1], [1.0, 1.0])
    >>> code = encode_layers(model, rng.standard_normal((2, 1, 8, 8)), method="fista", max_iter=5)
    >>> top_projections(model, code, 2).shape
    (3, 1, 5, 5)
    """
    top = model.check_layer(layer)
    if len(code.maps) < top:
        raise ValueError(f"the code holds maps of {len(code.maps)} layers, not of layer {top}")
    K = model.layers[top - 1].n_filters
    S = max(footprint(model, top))
    C1 = model.layers[0].n_channels
    host = StackCode(
        [backend_of(m).to_host(m) for m in code.maps[:top]],
        [None if s is None else backend_of(s).to_host(s) for s in code.switches[:top]],
    )
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
        pixels = project_down(
            model,
            one,
            top,
            switches=image.switches,
            map_shapes=[(1,) + tuple(m.shape[1:]) for m in image.maps],
            offset=False,
        )[0]
        out[k] = _crop_around(pixels, S, model.boundary == "circular")
    return out


def _crop_around(x: np.ndarray, S: int, circular: bool) -> np.ndarray:
    """An S×S window of `x` (C, H, W) holding its non-zero footprint (extent ≤ S), centred on it; on a circular
    grid the footprint is the shortest arc of each axis holding every non-zero row (column), each pixel taken
    once (an axis shorter than S is padded with zeros); otherwise the grid is padded with zeros."""
    strength = np.abs(x).sum(axis=0)
    # the projection comes out of FFTs: entries outside the footprint are round-off, not zero
    support = strength > 100 * np.finfo(x.dtype).eps * strength.max()
    if circular:
        rows, cols = _arc(support.any(axis=1), S), _arc(support.any(axis=0), S)
        window = x[:, rows[:, None], cols[None, :]]
        pad_r, pad_c = S - len(rows), S - len(cols)
        return np.pad(window, ((0, 0), (pad_r // 2, pad_r - pad_r // 2), (pad_c // 2, pad_c - pad_c // 2)))
    nz_r, nz_c = np.nonzero(support)
    padded = np.pad(x, ((0, 0), (S, S), (S, S)))
    r0 = (int(nz_r.min()) + int(nz_r.max()) + 1 - S) // 2
    c0 = (int(nz_c.min()) + int(nz_c.max()) + 1 - S) // 2
    return padded[:, r0 + S : r0 + 2 * S, c0 + S : c0 + 2 * S]


def _arc(used: np.ndarray, S: int) -> np.ndarray:
    """min(S, n) indices of a circular axis whose entries `used` (n,) marks, each once, centred on the shortest
    arc that holds every used entry (the complement of the longest circular run of unused ones)."""
    n = len(used)
    length = min(S, n)
    if used.all():
        return np.arange(length)
    # the longest run of unused entries, read around the circle from just after a used entry
    first_used = int(np.argmax(used))
    order = (first_used + 1 + np.arange(n)) % n
    best, best_end, run = 0, first_used, 0
    for position, index in enumerate(order):
        run = 0 if used[index] else run + 1
        if run > best:
            best, best_end = run, position
    start = order[best_end] + 1  # the arc begins after the gap
    span = n - best
    return (start - (length - span + 1) // 2 + np.arange(length)) % n  # ⌈·⌉ before it, as the valid crop
