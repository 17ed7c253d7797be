"""Large arrays from the heap while solvers iterate: a freed block stays in the process for the next allocation
inside the scope, and the free heap goes back to the system when the outermost scope ends."""

from __future__ import annotations

import resource

import numpy as np
import pytest

from solver import heap

pytestmark = pytest.mark.skipif(not heap.available(), reason="glibc's malloc only")

_N = 64 << 20  # bytes per block: above glibc's own mmap threshold (32 MiB at most), so munmap'd outside a scope


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize()


def _use_and_free_a_block() -> tuple[int, int]:
    """RSS with a written block of _N bytes, and after it was freed."""
    block = np.ones(_N // 4, dtype=np.float32)
    full = _rss_bytes()
    del block
    return full, _rss_bytes()


def test_a_freed_block_stays_for_reuse_inside_the_scope_and_is_returned_after():
    with heap.large_blocks_from_heap():
        full, freed = _use_and_free_a_block()
    after = _rss_bytes()
    assert full - freed < _N // 8, f"RSS fell by {(full - freed) >> 20} MiB when the block was freed"
    assert freed - after > _N // 2, f"RSS {freed >> 20} MiB in the scope, {after >> 20} MiB after it"


def test_outside_a_scope_a_freed_block_is_returned_at_once():
    full, freed = _use_and_free_a_block()
    assert full - freed > _N // 2


def test_scopes_nest_and_only_the_outermost_returns_the_heap():
    with heap.large_blocks_from_heap():
        with heap.large_blocks_from_heap():
            full, _ = _use_and_free_a_block()
        inner_ended = _rss_bytes()
    after = _rss_bytes()
    assert full - inner_ended < _N // 8
    assert inner_ended - after > _N // 2
