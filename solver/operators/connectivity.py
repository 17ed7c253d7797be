"""Connectivity tables g (K, C): which input channels each feature map reconstructs (Zeiler's 'conmats').

* ``full``: every map reads every input channel (layer 1);
* ``singles-and-doubles``: C inputs -> C + C(C−1)/2 maps, map k < C reads input k alone, the others read one
  pair each, in lexicographic order (2010 toolbox default for layer 2: 9 inputs -> 45 maps);
* ``random-doubles:k``: each map reads k input channels drawn without replacement with the job's seed;
* an explicit boolean (K, C) matrix.
"""

from __future__ import annotations

from itertools import combinations

import numpy as np


def parse_table_name(name: str) -> tuple[str, int | None]:
    """('full' | 'singles-and-doubles' | 'random-doubles', k or None); ValueError on anything else."""
    if name in ("full", "singles-and-doubles"):
        return name, None
    if name.startswith("random-doubles"):
        _, _, arg = name.partition(":")
        try:
            k = int(arg) if arg else 2
        except ValueError:
            raise ValueError(f"connectivity {name!r}: expected 'random-doubles:k' with an integer k") from None
        if k < 1:
            raise ValueError(f"connectivity {name!r}: k must be at least 1")
        return "random-doubles", k
    raise ValueError(
        f"connectivity must be 'full', 'singles-and-doubles', 'random-doubles:k' or a boolean matrix, got {name!r}"
    )


def singles_and_doubles_count(n_inputs: int) -> int:
    """Number of maps of the singles-and-doubles table over `n_inputs` channels."""
    return n_inputs + n_inputs * (n_inputs - 1) // 2


def boolean_table(value: object) -> np.ndarray:
    """`value` as a boolean array: booleans as they are, integers only where every entry is 0 or 1 (a table read
    from a file or written by hand); anything else is a ValueError naming what was found."""
    try:
        table = np.asarray(value)
    except ValueError:  # ragged rows
        raise ValueError(f"connectivity must be a (K, C) matrix, got rows of different lengths: {value!r}") from None
    if table.dtype == bool:
        return table
    if table.dtype.kind in "iu" and table.size:
        odd = sorted({int(v) for v in np.unique(table)} - {0, 1})
        if not odd:
            return table.astype(bool)
        raise ValueError(f"connectivity must hold booleans or 0/1, got the values {odd[:5]}")
    raise ValueError(f"connectivity must be a boolean (or 0/1) matrix, got dtype {table.dtype}")


def connectivity_table(
    spec: str | list[list[bool]] | np.ndarray, n_filters: int, n_channels: int, *, seed: int = 0
) -> np.ndarray | None:
    """Build the (K, C) boolean table; None for ``full`` (no masking needed).

    Raises
    ------
    ValueError
        When the table does not fit (K, C), or a map reads no channel.
    """
    if isinstance(spec, str):
        kind, k = parse_table_name(spec)
        if kind == "full":
            return None
        if kind == "singles-and-doubles":
            expected = singles_and_doubles_count(n_channels)
            if n_filters != expected:
                raise ValueError(
                    f"connectivity 'singles-and-doubles' over {n_channels} channels needs n_filters = "
                    f"{expected}, got {n_filters}"
                )
            pairs = list(combinations(range(n_channels), 2))
            table = np.zeros((n_filters, n_channels), dtype=bool)
            table[np.arange(n_channels), np.arange(n_channels)] = True
            for row, (a, b) in enumerate(pairs, start=n_channels):
                table[row, [a, b]] = True
            return table
        assert k is not None
        if k > n_channels:
            raise ValueError(f"connectivity {spec!r}: k = {k} exceeds the {n_channels} input channels")
        rng = np.random.default_rng(seed)
        table = np.zeros((n_filters, n_channels), dtype=bool)
        for row in range(n_filters):
            table[row, rng.choice(n_channels, size=k, replace=False)] = True
        return table
    table = boolean_table(spec)
    if table.shape != (n_filters, n_channels):
        raise ValueError(
            f"connectivity has shape {table.shape}, expected (n_filters, n_channels) = {(n_filters, n_channels)}"
        )
    empty = np.flatnonzero(~table.any(axis=1))
    if empty.size:
        raise ValueError(f"connectivity: maps {empty.tolist()} read no input channel")
    return table
