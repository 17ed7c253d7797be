"""deconv's presets (``*.yaml`` learning configs) and sample images (``samples/*.png``), shipped as package data.

Everything that needs a preset or a sample image finds it here, through :mod:`importlib.resources`, so the same
code serves a clone (``PYTHONPATH=.`` or an editable install) and an installed wheel, from any working folder::

    >>> from configs import find_preset, preset_names, sample_paths
    >>> preset_names()
    ['demo', 'online', 'quick', 'zeiler2010', 'zeiler2010-layer1', 'zeiler2011']
    >>> find_preset("quick").name
    'quick.yaml'
    >>> len(sample_paths())
    8

The files are read where the package is installed: a wheel installed by pip is unpacked on the file system, and
the images are given to Ray actors by path, so this package is not meant to be imported from a zip archive.
"""

from __future__ import annotations

import importlib.resources
import os
from pathlib import Path

PRESET_SUFFIX = ".yaml"
_SAMPLES = "samples"


def _root() -> Path:
    """The package's folder on the file system."""
    root = importlib.resources.files(__name__)
    if not isinstance(root, Path):
        raise ValueError(f"deconv's presets and sample images must be installed on the file system, found {root!r}")
    return root


def preset_names() -> list[str]:
    """The names of the bundled presets (file names without ``.yaml``), sorted."""
    return sorted(
        p.name.removesuffix(PRESET_SUFFIX) for p in _root().iterdir() if p.name.endswith(PRESET_SUFFIX) and p.is_file()
    )


def find_preset(name_or_path: str | os.PathLike[str]) -> Path:
    """A config file given by path, or a bundled preset given by name.

    Parameters
    ----------
    name_or_path : str or path-like
        An existing file (taken as it is: a file in the working folder wins over the preset of that name); or a
        preset name such as ``"zeiler2010"`` or ``"zeiler2010.yaml"``. A path with a folder in it is never taken
        for a name, so a missing ``configs/quick.yaml`` stays a missing file for the reader to report.

    Returns
    -------
    Path
        The file to read.

    Raises
    ------
    ValueError
        For a bare name that is neither a file nor a preset; the message lists the presets.
    """
    path = Path(name_or_path)
    if path.exists() or len(path.parts) != 1:
        return path
    name = path.name.removesuffix(PRESET_SUFFIX)
    if name in preset_names():
        return _root() / f"{name}{PRESET_SUFFIX}"
    raise ValueError(
        f"unknown preset {str(name_or_path)!r} (and no such file); the presets are: {', '.join(preset_names())}"
    )


def samples_dir() -> Path:
    """The folder of the bundled sample images."""
    return _root() / _SAMPLES


def sample_paths() -> list[Path]:
    """The bundled sample images: eight 128x128 grey PNGs (see ``samples/README.md`` for their origin), sorted."""
    folder = samples_dir()
    return sorted(folder.glob("*.png")) if folder.is_dir() else []


__all__ = ["PRESET_SUFFIX", "find_preset", "preset_names", "sample_paths", "samples_dir"]
