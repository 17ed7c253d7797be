"""A finished job's artifacts: the model's arrays, pictures of the filters and reconstructions, the history, the
config and the index of the shards' parts (``shards.json``), with ``model.json`` stored last.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np

from solver import StackCode, pixel_filters, top_projections
from solver.images.pictures import filter_montage, history_plot, image_sheet, png_bytes

from ..distributed.outputs import Written
from .models import JobModel
from .objects import Location, Part, npy_bytes, read_array, rows_of_parts
from .spec import JobSpec
from .store import JobStore

if TYPE_CHECKING:
    from .learning import FinishedLayer


#: Images shown in ``reconstructions.png`` and used for the pictures of layers above a pooling layer: a sample,
#: so that the service's memory does not grow with the dataset.
SAMPLE_IMAGES = 8


def part_name(what: str, layer: int | None, index: int) -> str:
    """The artifact name of shard `index`'s part of `what` (``maps``, ``switches`` of a layer; ``reconstructions``)."""
    return f"{what}-L{layer}.part-{index:03d}.npy" if layer is not None else f"{what}.part-{index:03d}.npy"


def _store_artifacts(
    store: JobStore, job_id: str, spec: JobSpec, model: JobModel, layers: list[FinishedLayer], images: list[Location]
) -> None:
    arrays, model_json = model.artifacts()
    for name, array in arrays.items():
        store.put_artifact(
            job_id,
            f"{name}.npy",
            npy_bytes(array.astype(np.float32) if array.dtype.kind == "f" else array),
            "application/x-npy",
        )
    n_images = len(images)
    sample = min(SAMPLE_IMAGES, n_images)
    index = {"n_images": n_images, "parts": [], "layers": [], "reconstructions": []}
    index["parts"] = [{"first": w.first, "count": w.count} for w in layers[0].written]
    for number, done in enumerate(layers, start=1):
        entry = {"maps": [], "switches": None if done.written[0].switches is None else []}
        for i, w in enumerate(done.written):
            entry["maps"].append(_record(store, job_id, part_name("maps", number, i), w.maps, done))
            if w.switches is not None:
                entry["switches"].append(_record(store, job_id, part_name("switches", number, i), w.switches, done))
        index["layers"].append(entry)
        if model.stack.pools_below(number):  # seen through its strongest activation on a sample of the images
            code = StackCode(
                [_rows(d.parts("maps"), sample) for d in layers[:number]],
                [None if d.parts("switches") is None else _rows(d.parts("switches"), sample) for d in layers[:number]],
            )
            picture = filter_montage(top_projections(model.stack, code, number))
        else:
            picture = filter_montage(pixel_filters(model.stack, number))
        store.put_artifact(job_id, f"filters-L{number}.png", png_bytes(picture), "image/png")
    top = layers[-1]
    for i, w in enumerate(top.written):
        index["reconstructions"].append(
            _record(store, job_id, part_name("reconstructions", None, i), w.reconstructions, top)
        )
    store.put_artifact(job_id, "shards.json", json.dumps(index, indent=1).encode(), "application/json")
    recon = _rows(top.parts("reconstructions"), sample)
    shown = np.stack([read_array(images[n]) for n in range(sample)])
    shown = shown if model.layers[0].preprocess is None else model.layers[0].preprocess.apply(shown)
    store.put_artifact(job_id, "reconstructions.png", png_bytes(image_sheet(shown, recon)), "image/png")
    history = [{"layer": n + 1, **asdict(s)} for n, d in enumerate(layers) for s in d.result.stats]
    store.put_artifact(job_id, "history.json", json.dumps(history, indent=1).encode(), "application/json")
    per = "batch" if spec.learning.online else "outer iteration"  # what an online job's iteration counts
    store.put_artifact(job_id, "history.png", history_plot(history, xlabel=per), "image/png")
    store.put_artifact(job_id, "config.json", spec.model_dump_json(indent=1).encode(), "application/json")
    store.put_artifact(job_id, "model.json", model_json, "application/json")  # last: the job's model


def _record(store: JobStore, job_id: str, name: str, written: Written, done: FinishedLayer) -> str:
    """Record a shard's part as the job's artifact `name`, adopted first from the job's work store, where the
    shard left it (the job has succeeded: its parts join the content-addressed store now)."""
    if written.stored is not None:
        store.artifacts.adopt(done.work.at(written.stored), written.key, written.size)
    store.record_artifact(job_id, name, written.key, "application/x-npy", written.size)
    return name


def _rows(parts: list[Part], n: int) -> np.ndarray:
    return rows_of_parts(parts, 0, n)
