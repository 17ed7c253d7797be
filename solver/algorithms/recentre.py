r"""Re-centring of filters by whole pixels: removes the shift ambiguity of convolutional dictionary learning.

A filter and its maps can be shifted against each other, :math:`z(\cdot + d) \circledast f(\cdot - d) = z
\circledast f`, so a learner whose filter has drifted off-centre holds a truncated, shifted copy of the feature
it found and can never regain the taps that fell off its support: the local minima of "shifted copies" of
planted-recovery problems. Re-centring moves every filter so that its energy centroid is at the centre of its
support, and rolls its maps the opposite way, which leaves E unchanged under the circular boundary when no
energy falls off the support; learning on a support one pixel wider on each side (see
:func:`~solver.models.learn.learn_layer`) makes that the rule, and the s×s window of largest energy is kept at the end.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np


def centring_shifts(filters: np.ndarray) -> np.ndarray:
    """(K, 2) integer shifts (rows, columns) that bring each filter's energy centroid nearest the centre."""
    energy = (np.asarray(filters, dtype=np.float64) ** 2).sum(axis=1)  # (K, s, s)
    s = energy.shape[-1]
    total = energy.sum(axis=(1, 2))
    idx = np.arange(s, dtype=np.float64)
    safe = np.where(total > 0, total, 1.0)
    rows = (energy.sum(axis=2) @ idx) / safe
    cols = (energy.sum(axis=1) @ idx) / safe
    shifts = np.rint((s - 1) / 2 - np.stack([rows, cols], axis=1)).astype(int)
    shifts[total == 0] = 0
    return shifts


def shift_filters(filters: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """f_k(· − d_k) on the same support: taps shifted off the support are dropped, the vacated ones are zero."""
    out = np.zeros_like(filters)
    s = filters.shape[-1]
    for k, (dy, dx) in enumerate(shifts):
        src_r, dst_r = slice(max(0, -dy), s - max(0, dy)), slice(max(0, dy), s - max(0, -dy))
        src_c, dst_c = slice(max(0, -dx), s - max(0, dx)), slice(max(0, dx), s - max(0, -dx))
        out[k, :, dst_r, dst_c] = filters[k, :, src_r, src_c]
    return out


def roll_state(state: dict[str, Any], shifts: np.ndarray) -> dict[str, Any]:
    """A shard state (see :meth:`~solver.models.shard.Shard.state`) with map k and its ADMM duals rolled by −d_k
    (circular boundary), to match filters shifted by d_k. Consensus duals, which are filters, are dropped."""

    def roll(a: np.ndarray | None) -> np.ndarray | None:
        if a is None:
            return None
        a = np.array(a)
        for k, (dy, dx) in enumerate(shifts):
            if dy or dx:
                a[:, k] = np.roll(a[:, k], (-dy, -dx), axis=(-2, -1))
        return a

    warm = state.get("warm")
    if warm is not None:
        warm = replace(warm, dual=roll(warm.dual), aux_dual=roll(getattr(warm, "aux_dual", None)))
    return {**state, "maps": roll(state.get("maps")), "warm": warm, "consensus": None}


def recentre(pool: Any, filters: np.ndarray) -> np.ndarray:
    """Re-centre `filters` (host) and roll the maps of every shard of `pool` to match; the re-centred filters."""
    shifts = centring_shifts(filters)
    if not shifts.any():
        return filters
    shards = getattr(pool, "shards", None)
    states = [s.state() for s in shards] if shards is not None else pool.states()
    states = [roll_state(st, shifts) for st in states]
    if shards is not None:
        for shard, st in zip(shards, states, strict=True):
            shard.load_state(st)
    else:
        pool.load_states(states)
    return shift_filters(filters, shifts)


def crop_to_energy(filters: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Each filter's `size`×`size` window of largest energy, and the (K, 2) offsets of those windows."""
    energy = (np.asarray(filters, dtype=np.float64) ** 2).sum(axis=1)
    S = energy.shape[-1]
    n = S - size + 1
    sums = np.array([[energy[:, u : u + size, v : v + size].sum(axis=(1, 2)) for v in range(n)] for u in range(n)])
    best = sums.reshape(n * n, -1).argmax(axis=0)
    offsets = np.stack([best // n, best % n], axis=1)
    cropped = np.stack([f[:, u : u + size, v : v + size] for f, (u, v) in zip(filters, offsets, strict=True)])
    return cropped.astype(filters.dtype, copy=False), offsets
