"""The shard split: contiguous, in order, sized like numpy.array_split."""

from __future__ import annotations

import numpy as np
import pytest

from workers.distributed.shards import shard_ranges, split_into_shards


@pytest.mark.parametrize(("n_items", "n_shards"), [(1, 1), (6, 1), (6, 2), (6, 3), (7, 3), (8, 4), (5, 5)])
def test_shard_sizes_follow_array_split(n_items, n_shards):
    sizes = [len(r) for r in shard_ranges(n_items, n_shards)]
    assert sizes == [len(part) for part in np.array_split(np.arange(n_items), n_shards)]


@pytest.mark.parametrize(("n_items", "n_shards"), [(6, 4), (7, 3), (100, 7)])
def test_shards_concatenate_back_to_the_items_in_order(n_items, n_shards):
    items = [f"image-{i}.png" for i in range(n_items)]
    shards = split_into_shards(items, n_shards)
    assert sum(shards, []) == items
    assert all(shards)


def test_the_split_is_deterministic():
    assert (
        split_into_shards(list("abcdefg"), 3)
        == split_into_shards(list("abcdefg"), 3)
        == [["a", "b", "c"], ["d", "e"], ["f", "g"]]
    )


@pytest.mark.parametrize(("n_items", "n_shards", "field"), [(3, 4, "n_shards"), (3, 0, "n_shards"), (0, 1, "n_items")])
def test_impossible_splits_are_refused_naming_the_argument(n_items, n_shards, field):
    with pytest.raises(ValueError, match=field):
        shard_ranges(n_items, n_shards)
