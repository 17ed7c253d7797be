"""The result commands: ``filters``, ``model``, ``encode``, ``reconstruct``; each writes one file atomically."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np

from workers.jobs.datasets import NPY_MAGIC, ZIP_MAGIC

from ..client import DeconvClient
from ..client.payloads import npy_bytes, npz_bytes
from .output import UsageError, write_file


def filters(args: argparse.Namespace, client: DeconvClient) -> int:
    """Save a job's filters: ``.npy`` (K, C, s, s) float32, or the PNG montage.

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv filters --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
    fmt = args.format or _format_of(args.out, default="npy")
    if fmt == "png":
        data = client.filters_png(args.job, layer=args.layer)
        what = "filter montage"
    else:
        array = client.filters(args.job, layer=args.layer)
        data, what = npy_bytes(array), f"filters {tuple(array.shape)} {array.dtype}"
    return write_file(args.out, data, what)


def model(args: argparse.Namespace, client: DeconvClient) -> int:
    """Save a finished job's model file (a zip archive that :func:`solver.load_model` reads).

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv model --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
    return write_file(args.out, client.model_file(args.job), "model file")


def encode(args: argparse.Namespace, client: DeconvClient) -> int:
    """Encode image files (or folders of them) with a finished job's model: ``.npz`` with the maps of every layer
    up to ``--layer`` (``L1``, ``L2``, ...) and the switches of the layers that pool (``S1``, ...), which
    ``deconv reconstruct --switches`` reads; or ``.npy``, the (N, K, H', W') maps of ``--layer`` alone.

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv encode --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
    fmt = args.format or ("npy" if args.out.suffix.lower() == ".npy" else "npz")
    missing = [str(p) for p in args.images if not p.exists()]
    if missing:
        raise UsageError(f"no such image file or folder: {', '.join(missing)}")
    try:
        code = client.encode_layers(
            args.job, list(args.images), layer=args.layer, max_iter=args.max_iter, method=args.method
        )
    except (ValueError, OSError) as exc:
        raise UsageError(f"images: {exc}") from None
    top = max(int(name[1:]) for name in code if name.startswith("L"))
    if fmt == "npy":
        maps = code[f"L{top}"]
        return write_file(args.out, npy_bytes(maps), f"layer-{top} maps {tuple(maps.shape)}")
    switches = sorted(name for name in code if name.startswith("S"))
    what = f"maps of layers 1-{top}" + (f" and switches {', '.join(switches)}" if switches else "")
    return write_file(args.out, npz_bytes(code), what)


def reconstruct(args: argparse.Namespace, client: DeconvClient) -> int:
    """A job's reconstructions, or images from a maps file with a job's filters or a filters file.

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv reconstruct --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
    fmt = args.format or _format_of(args.out, default="npy")
    if args.maps is None:
        return _job_reconstructions(args, client, fmt)
    _check_maps_options(args)
    head = _head(args.maps, "--maps")
    if head.startswith(ZIP_MAGIC):  # read once: deconv encode's npz of every layer, or any npz of maps
        arrays = load_arrays(args.maps, "--maps")
        maps = _encoded_layer(arrays, args.maps, args.layer)
        if maps is None:
            maps = _stacked(arrays, args.maps, "--maps")
    else:
        maps = load_array(args.maps, "--maps", head=head)
    kwargs: dict[str, Any] = {"job_id": args.job, "layer": args.layer, "boundary": args.boundary}
    if args.switches is not None:
        kwargs["switches"] = load_arrays(args.switches, "--switches")
    if args.filters is not None:
        kwargs["filters"] = load_array(args.filters, "--filters")
    if fmt == "png":
        return write_file(args.out, client.reconstruct_png(maps, **kwargs), "reconstructed images")
    images = client.reconstruct(maps, **kwargs)
    return write_file(args.out, npy_bytes(images), f"images {tuple(images.shape)}")


def _job_reconstructions(args: argparse.Namespace, client: DeconvClient, fmt: str) -> int:
    if args.job_id is None:
        raise UsageError("give a JOB (its reconstructions) or --maps FILE with --job JOB or --filters FILE")
    if args.job is not None or args.filters is not None or args.layer is not None:
        raise UsageError("--job, --filters and --layer go with --maps; a JOB alone fetches its reconstructions")
    if fmt == "png":
        return write_file(args.out, client.reconstructions_png(args.job_id), "inputs beside reconstructions")
    array = client.reconstructions(args.job_id)
    return write_file(args.out, npy_bytes(array), f"reconstructions {tuple(array.shape)}")


def _check_maps_options(args: argparse.Namespace) -> None:
    if args.job_id is not None:
        raise UsageError(f"give the job of --maps as --job {args.job_id}, not as JOB")
    if (args.job is None) == (args.filters is None):
        raise UsageError("--maps needs exactly one of --job JOB (its filters) and --filters FILE")
    if args.filters is not None and (args.layer is not None or args.switches is not None):
        raise UsageError("--layer and --switches go with --job, not with --filters")


_LAYER_MAPS = re.compile(r"L[0-9]+")


def _encoded_layer(arrays: dict[str, np.ndarray], path: Path, layer: int | None) -> np.ndarray | None:
    """Layer `layer`'s maps (``L<layer>``, layer 1 by default) when the arrays of the ``.npz`` at `path` are what
    ``deconv encode`` writes, the maps of every layer (``L1``, ``L2``, ...) and the pooling switches (``S1``,
    ...); else None."""
    if not any(_LAYER_MAPS.fullmatch(name) for name in arrays):
        return None
    name = f"L{layer or 1}"
    if name not in arrays:
        raise UsageError(f"--maps {path}: no maps of layer {layer or 1} ({name}); the file holds {sorted(arrays)}")
    return arrays[name]


def _head(path: Path, option: str) -> bytes:
    """The first bytes of `path`, enough to tell an ``.npy`` from an ``.npz``."""
    try:
        with open(path, "rb") as fh:
            return fh.read(len(NPY_MAGIC))
    except OSError as exc:
        raise UsageError(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None


def load_arrays(path: Path, option: str) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` file (no pickles).

    Parameters
    ----------
    path : Path
    option : str
        The command-line option that named the file, for errors.

    Returns
    -------
    dict of str to ndarray
    """
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise UsageError(f"{option} {path}: not a readable .npz file: {exc}") from None


def load_array(path: Path, option: str, *, head: bytes | None = None) -> np.ndarray:
    """An ``.npy`` array, or the arrays of an ``.npz`` stacked in name order (a job's maps file).

    Parameters
    ----------
    path : Path
    option : str
        The command-line option that named the file, for errors.
    head : bytes, optional
        The file's first bytes, when the caller read them already.

    Returns
    -------
    ndarray
    """
    head = _head(path, option) if head is None else head
    if not (head.startswith(NPY_MAGIC) or head.startswith(ZIP_MAGIC)):
        raise UsageError(f"{option} {path}: not a .npy or .npz file (it starts with {head!r})")
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{option} {path}: not a readable .npy or .npz file: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    with loaded:
        return _stacked({name: loaded[name] for name in loaded.files}, path, option)


def _stacked(arrays: dict[str, np.ndarray], path: Path, option: str) -> np.ndarray:
    """The arrays of an ``.npz`` stacked in name order (one alone as it is)."""
    ordered = [arrays[name] for name in sorted(arrays)]
    if not ordered:
        raise UsageError(f"{option} {path}: the npz holds no array")
    try:
        return ordered[0] if len(ordered) == 1 else np.stack(ordered)
    except ValueError as exc:
        raise UsageError(f"{option} {path}: the npz's arrays cannot be stacked: {exc}") from None


def _format_of(path: Path, *, default: str) -> str:
    """The format `path`'s suffix names; `default` without a suffix. Another suffix is refused: an array written
    into 'filters.txt' would not be what its name says."""
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("npy", "png"):
        return suffix
    if suffix:
        raise UsageError(f"--out {str(path)!r}: name a .npy or .png file, or give --format npy or png")
    return default
