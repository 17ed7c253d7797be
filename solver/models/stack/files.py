"""Model files: one file per learned model, to save, serve, download and load offline.

A model file is a zip archive (deflated) of

* ``model.json``: ``{"kind": "deconv-model", "format": MODEL_FORMAT, ...}`` with the boundary,
  ``reconstruct_to``, the inference and, per layer, λ (absolute), p, pooling, the λ scale and the fitted
  preprocessing (:meth:`StackModel.to_arrays` writes it), plus an optional ``"extra"`` object (an estimator's
  parameters and history, for instance) that loading a model ignores;
* ``filters-L<l>.npy`` (K, C, s, s) and ``connectivity-L<l>.npy`` (K, C) bool per layer: the arrays in ``.npy``
  form, read back with ``allow_pickle=False``.

These are the names of the artifacts the job service stores for a finished job, so a job's stored model and a
model file hold the same description. The entries carry a fixed date, so one model always gives the same bytes.
"""

from __future__ import annotations

import io
import json
import os
import tempfile
import zipfile
import zlib
from collections.abc import Mapping
from os import PathLike
from pathlib import Path
from typing import IO, Any

import numpy as np

from .model import StackModel, check_format

MODEL_KIND = "deconv-model"
DESCRIPTION = "model.json"
_FIXED_DATE = (1980, 1, 1, 0, 0, 0)  # the zip epoch: the bytes depend on the model only

ModelSource = str | PathLike[str] | bytes | bytearray | memoryview | IO[bytes]


def model_bytes(model: StackModel, *, extra: Mapping[str, Any] | None = None) -> bytes:
    """The model file of `model` as bytes.

    Parameters
    ----------
    model : StackModel
    extra : mapping, optional
        JSON-able data kept beside the model under ``"extra"`` (ignored by :func:`load_model`).

    Returns
    -------
    bytes
        A zip archive.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel
    >>> model = StackModel.from_layers([np.ones((1, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
    >>> model_bytes(model)[:2]
    b'PK'
    """
    if not isinstance(model, StackModel):
        raise ValueError(f"model must be a StackModel, got {type(model).__name__}")
    arrays, metadata = model.to_arrays()
    body = {"kind": MODEL_KIND, **metadata}
    if extra is not None:
        body["extra"] = dict(extra)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        _write_entry(archive, DESCRIPTION, json.dumps(body, indent=1, allow_nan=False).encode())
        for name, array in arrays.items():
            npy = io.BytesIO()
            np.save(npy, np.asarray(array), allow_pickle=False)
            _write_entry(archive, f"{name}.npy", npy.getvalue())
    return buffer.getvalue()


def _write_entry(archive: zipfile.ZipFile, name: str, data: bytes) -> None:
    info = zipfile.ZipInfo(name, date_time=_FIXED_DATE)
    info.compress_type = zipfile.ZIP_DEFLATED
    archive.writestr(info, data)


def save_model(model: StackModel, path: str | PathLike[str], *, extra: Mapping[str, Any] | None = None) -> Path:
    """Write the model file of `model` at `path`, atomically: a temporary file in the same folder, fsync, rename.

    Parameters
    ----------
    model : StackModel
    path : str or path-like
        The folder must exist.
    extra : mapping, optional
        As in :func:`model_bytes`.

    Returns
    -------
    Path

    Examples
    --------
    >>> import numpy as np, tempfile, pathlib
    >>> from solver import StackModel
    >>> model = StackModel.from_layers([np.ones((1, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
    >>> save_model(model, pathlib.Path(tempfile.mkdtemp()) / "m.deconv").stat().st_size > 0
    True
    """
    data = model_bytes(model, extra=extra)
    target = Path(path)
    if not target.parent.is_dir():
        raise ValueError(f"path: the folder {str(target.parent)!r} does not exist")
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(temp, target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
    return target


def read_model(source: ModelSource) -> tuple[StackModel, dict[str, Any]]:
    """The model in a model file and the file's ``"extra"`` data (an empty dict when it has none).

    Parameters
    ----------
    source : path, bytes or binary file object
        A model file (:func:`save_model`), its bytes (:func:`model_bytes`, an HTTP response body), or an open
        binary file.

    Returns
    -------
    model : StackModel
    extra : dict

    Raises
    ------
    ValueError
        Not a model file (not a zip, no ``model.json``, another ``kind``), a format newer than this deconv reads,
        a missing array or field, or an array that needs pickle.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel
    >>> model = StackModel.from_layers([np.ones((1, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
    >>> read_model(model_bytes(model, extra={"note": "x"}))[1]
    {'note': 'x'}
    """
    name = _describe(source)
    if isinstance(source, bytes | bytearray | memoryview):
        source = io.BytesIO(bytes(source))
    try:
        with zipfile.ZipFile(source) as archive:  # type: ignore[arg-type]
            body = _description(archive, name)
            check_format(body.get("format"))
            arrays = {
                entry[:-4]: _array(archive, entry, name) for entry in archive.namelist() if entry.endswith(".npy")
            }
    except (zipfile.BadZipFile, EOFError) as exc:
        raise ValueError(f"{name} is not a deconv model file (not a zip archive: {exc})") from None
    except zlib.error as exc:  # a member whose compressed bytes were damaged
        raise ValueError(f"{name} is damaged: a member does not decompress ({exc})") from None
    extra = body.pop("extra", None) or {}
    if not isinstance(extra, dict):
        raise ValueError(f"{name}: {DESCRIPTION}'s 'extra' must be a mapping, got {type(extra).__name__}")
    body.pop("kind", None)
    try:
        return StackModel.from_arrays(arrays, body), dict(extra)
    except (KeyError, TypeError, AttributeError, IndexError) as exc:  # a description of the wrong structure
        raise ValueError(f"{name}: {DESCRIPTION} does not describe a model ({type(exc).__name__}: {exc})") from None


def load_model(source: ModelSource) -> StackModel:
    """The model in a model file (:meth:`StackModel.save`), its bytes, or an open binary file.

    Parameters
    ----------
    source : path, bytes or binary file object

    Returns
    -------
    StackModel
        Encode new images with :func:`~solver.encode_layers`, project maps down with
        :func:`~solver.project_down`.

    Raises
    ------
    ValueError
        As :func:`read_model`.

    Examples
    --------
    >>> import numpy as np
    >>> from solver import StackModel, load_model
    >>> model = StackModel.from_layers([np.ones((1, 1, 3, 3), np.float32) / 3], [None], [None], [0.1], [1.0])
    >>> load_model(model.to_bytes()).boundary
    'circular'
    """
    return read_model(source)[0]


def _describe(source: Any) -> str:
    if isinstance(source, str | PathLike):
        return f"model file {os.fspath(source)!r}"
    return "the model data"


def _description(archive: zipfile.ZipFile, name: str) -> dict[str, Any]:
    try:
        raw = archive.read(DESCRIPTION)
    except KeyError:
        raise ValueError(f"{name} is not a deconv model file: it has no {DESCRIPTION}") from None
    try:
        body = json.loads(raw)
    except ValueError as exc:
        raise ValueError(f"{name}: {DESCRIPTION} is not valid JSON ({exc})") from None
    if not isinstance(body, dict) or body.get("kind", MODEL_KIND) != MODEL_KIND:
        kind = body.get("kind") if isinstance(body, dict) else type(body).__name__
        raise ValueError(f"{name} is not a deconv model file: {DESCRIPTION} has kind {kind!r}, not {MODEL_KIND!r}")
    return body


def _array(archive: zipfile.ZipFile, entry: str, name: str) -> np.ndarray:
    try:
        return np.load(io.BytesIO(archive.read(entry)), allow_pickle=False)
    except ValueError as exc:  # an object array (needs pickle) or a corrupt header
        raise ValueError(f"{name}: {entry} is not a plain array ({exc})") from None
