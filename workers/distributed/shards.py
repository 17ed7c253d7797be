"""The deterministic split of a job's images into shards.

Shards are contiguous runs of the images in their given (file) order, sized as :func:`numpy.array_split` sizes
them: the first ``N mod n`` shards hold one image more. Concatenating the shards in order gives back the images in
order, which is what makes a distributed run equal to the single-process one: the learning loop sums the shards'
statistics in shard order, and the maps come back in image order.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def shard_ranges(n_items: int, n_shards: int) -> list[range]:
    """Index ranges of `n_shards` contiguous shards of `n_items` items.

    Parameters
    ----------
    n_items : int
        N ≥ 1.
    n_shards : int
        1 ≤ n ≤ N.

    Returns
    -------
    list of range
        ``n_shards`` non-empty ranges covering ``range(n_items)`` in order; their lengths differ by at most one,
        the longer ones first.

    Raises
    ------
    ValueError
        If `n_items` < 1, or `n_shards` is not between 1 and `n_items`.

    Examples
    --------
    >>> shard_ranges(7, 3)
    [range(0, 3), range(3, 5), range(5, 7)]
    """
    if n_items < 1:
        raise ValueError(f"n_items must be at least 1, got {n_items}")
    if not 1 <= n_shards <= n_items:
        raise ValueError(f"n_shards must be between 1 and the number of items ({n_items}), got {n_shards}")
    base, extra = divmod(n_items, n_shards)
    bounds = [0]
    for index in range(n_shards):
        bounds.append(bounds[-1] + base + (1 if index < extra else 0))
    return [range(lo, hi) for lo, hi in zip(bounds[:-1], bounds[1:], strict=True)]


def split_into_shards(items: Sequence[T], n_shards: int) -> list[list[T]]:
    """`items` cut into `n_shards` contiguous shards (see :func:`shard_ranges`).

    Examples
    --------
    >>> split_into_shards(["a.png", "b.png", "c.png"], 2)
    [['a.png', 'b.png'], ['c.png']]
    """
    return [[items[i] for i in r] for r in shard_ranges(len(items), n_shards)]
