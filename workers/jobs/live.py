"""The newest filters of a running job: what a person watching it sees before its artifacts exist.

While a job runs, each layer's filters live in the job's work store (a local folder, or any fsspec URL such as
``DECONV_WORK_URL=s3://...``): every ``checkpoint_every`` outer iterations the coordinator writes a checkpoint
(``layers/L<l>/checkpoints/ckpt-<iteration>``, its manifest last, with the sha256 of ``filters.npy``), and a
finished layer leaves ``layers/L<l>/filters.npy`` beside its ``done.json``. :func:`latest_filters` is the one
function that knows where they are; :func:`live_montage` draws them as the finished job's ``filters-L<l>.png``
would be drawn.

Nothing here writes: a checkpoint pruned or half-written while it is read is skipped for the one before it.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver import StackModel, pixel_filters
from solver.images.pictures import filter_montage

from ..distributed.checkpoint import MANIFEST, checkpoint_folders
from .objects import ObjectStore
from .store import JobStore

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LiveFilters:
    """The newest filters of one layer of a running job.

    Attributes
    ----------
    layer : int
        1-based.
    iteration : int
        The outer iteration of that layer after which these filters were saved.
    filters : ndarray of shape (K, C, s, s)
    final : bool
        True when the layer has finished learning (these are its learned filters).
    """

    layer: int
    iteration: int
    filters: np.ndarray
    final: bool


def layer_folder(store: JobStore, job_id: str, layer: int) -> ObjectStore:
    """Where the runner keeps layer `layer` (1-based) of a running job: its checkpoints, and ``done.json`` with
    ``filters.npy`` once it is learned."""
    return store.job_work(job_id).child(f"layers/L{layer}")


def latest_filters(store: JobStore, job_id: str, layer: int) -> LiveFilters | None:
    """The newest saved filters of `layer` of job `job_id` while it runs: the finished layer's filters, else those
    of its newest complete checkpoint; read through the job's work store, local or remote.

    Parameters
    ----------
    store : JobStore
    job_id : str
    layer : int
        1-based.

    Returns
    -------
    LiveFilters or None
        None when the layer has neither finished nor written a checkpoint (or the job's work folder is gone:
        the job ended, and its artifacts hold the filters).
    """
    folder = layer_folder(store, job_id, layer)
    try:
        stats = json.loads(folder.read("done.json"))["stats"]
        filters = _npy(folder.read("filters.npy"))
        return LiveFilters(layer, int(stats[-1]["iteration"]) if stats else 0, filters, True)
    except (OSError, ValueError, KeyError, IndexError):  # not finished (or removed as the job ends)
        pass
    for iteration, checkpoint in reversed(checkpoint_folders(folder.child("checkpoints"))):
        try:
            manifest = json.loads(checkpoint.read(MANIFEST))
            data = checkpoint.read("filters.npy")
            if hashlib.sha256(data).hexdigest() != manifest["files"]["filters.npy"]:
                raise ValueError("filters.npy does not match its manifest")
            return LiveFilters(layer, int(manifest["iteration"]), _npy(data), False)
        except (OSError, ValueError, KeyError, TypeError) as exc:  # incomplete, or pruned while read
            logger.debug("job %s: checkpoint %d of layer %d skipped: %s", job_id, iteration, layer, exc)
    return None


def live_montage(newest: LiveFilters, below: Sequence[LiveFilters], layers: Sequence[dict[str, Any]]) -> np.ndarray:
    """One tile per filter of `newest`, as the job's ``filters-L<l>.png`` draws them.

    Parameters
    ----------
    newest : LiveFilters
        Of layer l.
    below : sequence of LiveFilters
        The newest filters of layers 1 .. l−1, bottom first.
    layers : sequence of dict
        The job spec's layers (their ``pool``).

    Returns
    -------
    ndarray of shape (rows, cols)
        Values in [0, 1] (:func:`solver.images.pictures.filter_montage`). Layer 1: the filters. Higher layers:
        each filter seen in pixel space through the newest filters below (the rescales between layers are left
        out: they scale a whole tile, and each tile is drawn on its own range). Above a pooling layer, whose
        pixel view needs an image's switches, the filters themselves (their mean over the input maps).
    """
    l = newest.layer
    pools = [spec.get("pool") for spec in layers[: l - 1]]
    if l == 1 or any(pool is not None for pool in pools) or len(below) != l - 1:
        return filter_montage(newest.filters)
    stack = [*(b.filters for b in below), newest.filters]
    model = StackModel.from_layers(stack, [None] * l, [None] * l, [1.0] * l, [1.0] * l)
    # unconnected filters are zero in a checkpoint, so the full table projects the same
    return filter_montage(pixel_filters(model, l))


def _npy(data: bytes) -> np.ndarray:
    return np.load(io.BytesIO(data), allow_pickle=False)


__all__ = ["LiveFilters", "latest_filters", "live_montage"]
