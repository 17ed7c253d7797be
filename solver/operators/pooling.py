r"""3-D max pooling with switches, and unpooling (Zeiler, Taylor & Fergus, ICCV 2011; ``docs/zeiler.md`` §8).

Pooling runs over non-overlapping blocks of ``pk × ph × pw`` entries of a map stack ``(N, K, H, W)``: ``pk``
adjacent maps and a ``ph × pw`` spatial window. Each block keeps the entry of largest magnitude *with its sign*
(the 2011 toolbox's ``'Max3'``, whose ``max_pool3d`` takes "the max (abs) value in region"), and records where
it was, the *switch*. Unpooling puts every pooled value back at its switch and zeros elsewhere.

.. math:: (P_s z)_b = z_{s_b}, \qquad (U_s p)_j = \sum_b [\,j = s_b\,]\, p_b, \qquad U_s = P_s^\top

For fixed switches both maps are linear and each is the other's adjoint; ``U_s P_s`` (with the switches of
``pool3d(z)``) keeps the block maxima of ``z`` and zeros the rest, step (c) of the 2011 ISTA iteration.

Edges. A size that does not divide (K, H, W) pads the stack at the *end* of each axis with zeros, so the pooled
shape is ``(N, ⌈K/pk⌉, ⌈H/ph⌉, ⌈W/pw⌉)``: the 2011 model's layer sizes 58 → 20 and 26 → 9 under 3×3 pooling
(``docs/zeiler.md`` §6) need exactly this ceiling. A zero of padding never wins a block (ties go to the first
entry in block order, k then row then column, and the block's first entry is always real), so every switch
points into the unpadded stack.

Switches. ``switches[n, kb, ib, jb]`` is the flat index ``(k·H + i)·W + j`` of the chosen entry in image n's
``(K, H, W)`` stack (int32, or int64 past 2³¹ − 1 entries), the "linear indices per image" of the 2011 code.
They carry their own positions, so unpooling needs only the unpooled shape, not the pooling size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..backend import Array, backend_of

Size3 = tuple[int, int, int]


def _check_size(size: Sequence[int]) -> Size3:
    try:
        values = tuple(size)
    except TypeError:
        raise ValueError(f"size must be a sequence of 3 positive integers (pk, ph, pw), got {size!r}") from None
    ok = len(values) == 3 and all(
        isinstance(v, int | np.integer) and not isinstance(v, bool) and v >= 1 for v in values
    )
    if not ok:
        raise ValueError(f"size must be a sequence of 3 positive integers (pk, ph, pw), got {size!r}")
    return (int(values[0]), int(values[1]), int(values[2]))


def _check_maps(maps: Array, name: str) -> None:
    if getattr(maps, "ndim", None) != 4 or maps.dtype.kind != "f":
        raise ValueError(
            f"{name} must be a real floating array of shape (N, K, H, W), got shape "
            f"{getattr(maps, 'shape', None)} and dtype {getattr(maps, 'dtype', None)}"
        )


def _index_dtype(n_entries: int) -> type:
    return np.int32 if n_entries <= np.iinfo(np.int32).max else np.int64


def pooled_shape(shape: Sequence[int], size: Sequence[int]) -> tuple[int, int, int, int]:
    """``(N, ⌈K/pk⌉, ⌈H/ph⌉, ⌈W/pw⌉)``: the shape :func:`pool3d` gives maps of `shape` (N, K, H, W)."""
    pk, ph, pw = _check_size(size)
    if len(shape) != 4 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be 4 positive integers (N, K, H, W), got {tuple(shape)!r}")
    N, K, H, W = (int(d) for d in shape)
    return (N, -(-K // pk), -(-H // ph), -(-W // pw))


def pool3d(maps: Array, size: Sequence[int] = (1, 2, 2)) -> tuple[Array, Array]:
    r"""3-D max pooling of `maps` over ``pk × ph × pw`` blocks, keeping the signed value of largest magnitude.

    Parameters
    ----------
    maps : array of shape (N, K, H, W)
        Any backend, real floating dtype.
    size : sequence of 3 ints
        ``(pk, ph, pw)``: maps per block, then rows and columns; each ≥ 1. Need not divide (K, H, W): the edges
        are padded (module docstring).

    Returns
    -------
    pooled : array of shape (N, ⌈K/pk⌉, ⌈H/ph⌉, ⌈W/pw⌉)
        ``maps`` at the switches; the backend and dtype of `maps`.
    switches : int32 (or int64) array of the same shape
        Flat index ``(k·H + i)·W + j`` of each block's winner within its image's (K, H, W) stack.

    Raises
    ------
    ValueError
        When `maps` is not a real 4-D array, or `size` is not three positive integers.

    Examples
    --------
    >>> z = np.array([[[[1.0, -3.0], [2.0, 0.5]]]], dtype=np.float32)
    >>> pooled, switches = pool3d(z, (1, 2, 2))
    >>> pooled, switches
    (array([[[[-3.]]]], dtype=float32), array([[[[1]]]], dtype=int32))
    """
    _check_maps(maps, "maps")
    pk, ph, pw = _check_size(size)
    xp = backend_of(maps).xp
    N, K, H, W = maps.shape
    _, Kb, Hb, Wb = pooled_shape(maps.shape, (pk, ph, pw))
    padded = xp.pad(maps, ((0, 0), (0, Kb * pk - K), (0, Hb * ph - H), (0, Wb * pw - W)))
    blocks = padded.reshape(N, Kb, pk, Hb, ph, Wb, pw).transpose(0, 1, 3, 5, 2, 4, 6).reshape(N, Kb, Hb, Wb, -1)
    within = xp.argmax(xp.abs(blocks), axis=-1)
    pooled = xp.take_along_axis(blocks, within[..., None], axis=-1)[..., 0]
    dk, rest = xp.divmod(within, ph * pw)
    di, dj = xp.divmod(rest, pw)
    k = xp.arange(Kb).reshape(1, Kb, 1, 1) * pk + dk
    i = xp.arange(Hb).reshape(1, 1, Hb, 1) * ph + di
    j = xp.arange(Wb).reshape(1, 1, 1, Wb) * pw + dj
    switches = ((k * H + i) * W + j).astype(_index_dtype(K * H * W))
    return pooled, switches


def _check_switches(values: Array, switches: Array, shape: Sequence[int], name: str) -> tuple[int, ...]:
    if len(shape) != 4 or any(int(d) < 1 for d in shape):
        raise ValueError(f"shape must be 4 positive integers (N, K, H, W), got {tuple(shape)!r}")
    shape = tuple(int(d) for d in shape)
    if getattr(switches, "dtype", np.dtype(float)).kind not in "iu":
        raise ValueError(f"switches must be an integer array, got dtype {getattr(switches, 'dtype', None)}")
    if switches.shape != values.shape or values.shape[0] != shape[0]:
        raise ValueError(
            f"switches of shape {switches.shape} do not fit {name} of shape {values.shape} and shape {shape}"
        )
    return shape


def unpool3d(pooled: Array, switches: Array, shape: Sequence[int]) -> Array:
    r"""Put each pooled value back at its switch, zeros elsewhere: :math:`U_s`, the adjoint of :func:`select3d`.

    Parameters
    ----------
    pooled : array of shape (N, Kb, Hb, Wb)
        Any backend, real floating dtype.
    switches : integer array of shape (N, Kb, Hb, Wb)
        From :func:`pool3d` on maps of `shape` (flat indices into each image's (K, H, W) stack). Distinct
        switches per image, as pooling gives; with repeats the last write wins.
    shape : sequence of 4 ints
        ``(N, K, H, W)``, the shape of the maps that were pooled.

    Returns
    -------
    array of shape `shape`
        The backend and dtype of `pooled`.

    Raises
    ------
    ValueError
        When the shapes disagree, the switches are not integers, or a switch lies outside (K, H, W).

    Examples
    --------
    >>> z = np.array([[[[1.0, -3.0], [2.0, 0.5]]]])
    >>> unpool3d(*pool3d(z, (1, 2, 2)), z.shape)
    array([[[[ 0., -3.],
             [ 0.,  0.]]]])
    """
    _check_maps(pooled, "pooled")
    N, K, H, W = _check_switches(pooled, switches, shape, "pooled")
    xp = backend_of(pooled).xp
    flat = switches.reshape(N, -1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= K * H * W):
        raise ValueError(
            f"switches must lie in [0, {K * H * W}) for shape {(N, K, H, W)}, got values in "
            f"[{int(flat.min())}, {int(flat.max())}]"
        )
    out = xp.zeros((N, K * H * W), dtype=pooled.dtype)
    out[xp.arange(N)[:, None], flat] = pooled.reshape(N, -1)
    return out.reshape(N, K, H, W)


def select3d(maps: Array, switches: Array) -> Array:
    r"""The entries of `maps` at `switches`: :math:`P_s`, pooling at fixed switches (the adjoint of
    :func:`unpool3d`). ``select3d(z, pool3d(z, size)[1])`` equals ``pool3d(z, size)[0]``.

    Parameters
    ----------
    maps : array of shape (N, K, H, W)
    switches : integer array of shape (N, Kb, Hb, Wb)
        Flat indices into each image's (K, H, W) stack.

    Returns
    -------
    array of shape (N, Kb, Hb, Wb)
        The backend and dtype of `maps`.
    """
    _check_maps(maps, "maps")
    if getattr(switches, "ndim", None) != 4 or switches.dtype.kind not in "iu" or switches.shape[0] != maps.shape[0]:
        raise ValueError(
            f"switches must be an integer array of shape (N={maps.shape[0]}, Kb, Hb, Wb), got "
            f"shape {getattr(switches, 'shape', None)} and dtype {getattr(switches, 'dtype', None)}"
        )
    N, K, H, W = maps.shape
    xp = backend_of(maps).xp
    flat = switches.reshape(N, -1)
    if flat.size and (int(flat.min()) < 0 or int(flat.max()) >= K * H * W):
        raise ValueError(f"switches must lie in [0, {K * H * W}) for maps of shape {maps.shape}")
    return maps.reshape(N, -1)[xp.arange(N)[:, None], flat].reshape(switches.shape)


def identity_switches(shape: Sequence[int], xp: object = np) -> Array:
    """Switches of 1×1×1 pooling on maps of `shape` (N, K, H, W): every entry its own block."""
    N, K, H, W = pooled_shape(shape, (1, 1, 1))
    index = xp.arange(K * H * W, dtype=_index_dtype(K * H * W)).reshape(1, K, H, W)
    return xp.broadcast_to(index, (N, K, H, W))


__all__ = ["identity_switches", "pool3d", "pooled_shape", "select3d", "unpool3d"]


def keep_block_maxima(maps: Array, pool: Sequence[int] | None) -> Array:
    """Zero every entry of `maps` (N, K, H', W') but the largest in magnitude of each pooling block (step (c) of
    the 2011 iteration: pool, then unpool at the new switches). The identity for ``pool`` None or (1, 1, 1)."""
    if pool is None or tuple(pool) == (1, 1, 1):
        return maps
    return unpool3d(*pool3d(maps, pool), maps.shape)


def pool_maps(maps: Array, pool: Sequence[int] | None) -> tuple[Array, Array | None]:
    """(pooled maps, switches) of `maps` for the layer above, or (maps, None) without pooling."""
    if pool is None:
        return maps, None
    return pool3d(maps, pool)
