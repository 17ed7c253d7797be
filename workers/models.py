"""The model of a finished job: per layer its filters, connectivity and input preprocessing; encode and project.

The runner writes ``model.json`` (per layer: λ, p, the artifact names of the filters and connectivity, the fitted
preprocessing of that layer's input) beside the arrays; :func:`load_model` reads them back from the store, so
``POST /models/{id}/encode`` and ``POST /reconstruct`` work on any finished job, also after a restart.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from solver.coding import encode, reconstruct
from solver.config import InferenceConfig
from solver.preprocess import FittedPreprocess

from .store import JobStore

MODEL_FORMAT = 1


class ModelNotReadyError(LookupError):
    """The job has no model (yet): it is not finished, or it failed or was cancelled before its first layer."""


@dataclass(frozen=True)
class LayerModel:
    filters: np.ndarray  # (K, C, s, s)
    connectivity: np.ndarray  # (K, C) bool
    preprocess: FittedPreprocess | None  # of this layer's input
    lam: float
    p: float

    @property
    def n_filters(self) -> int:
        return int(self.filters.shape[0])

    @property
    def n_channels(self) -> int:
        return int(self.filters.shape[1])


@dataclass(frozen=True)
class JobModel:
    layers: list[LayerModel]
    boundary: str
    inference: InferenceConfig

    def check_layer(self, layer: int | None) -> int:
        """`layer` (1-based) if the model has it; the top layer for None."""
        if layer is None:
            return len(self.layers)
        if isinstance(layer, bool) or not isinstance(layer, int) or not 1 <= layer <= len(self.layers):
            raise ValueError(f"layer must be between 1 and {len(self.layers)}, got {layer!r}")
        return layer

    def encode(self, images: np.ndarray, *, layer: int | None = None, method: str | None = None,
               max_iter: int | None = None) -> list[np.ndarray]:
        """Maps of every layer up to `layer` (default: the top one) for `images` (N, C, H, W).

        The first layer's preprocessing is applied to `images`; each higher layer codes the rescaled maps of the
        layer below, as in learning.
        """
        top = self.check_layer(layer)
        x, out = images, []
        for spec in self.layers[:top]:
            result = encode(x, spec.filters, spec.lam, p=spec.p, boundary=self.boundary,
                            connectivity=spec.connectivity, preprocess=spec.preprocess,
                            method=method or self.inference.method, max_iter=max_iter)
            out.append(result.maps)
            x = result.maps
        return out

    def project(self, maps: np.ndarray, *, layer: int | None = None) -> np.ndarray:
        """Images (N, C0, H, W) from maps of `layer` (default: the top one), through every layer below.

        The result is in the space of the preprocessed input of layer 1 (what layer 1 learned to reconstruct).
        Between layers the rescale of the maps is undone (its inverse affine map).
        """
        top = self.check_layer(layer)
        x = maps
        for index in range(top - 1, -1, -1):
            spec = self.layers[index]
            x = reconstruct(x, spec.filters, boundary=self.boundary, connectivity=spec.connectivity)
            if index > 0 and spec.preprocess is not None:
                stats = spec.preprocess.stats
                x = ((x + stats.mean) * stats.scale + stats.shift).astype(x.dtype, copy=False)
        return x

    def to_json(self, names: list[tuple[str, str]]) -> bytes:
        """``model.json``: `names` are the (filters, connectivity) artifact names of each layer."""
        layers = [{"filters": f, "connectivity": g, "lam": spec.lam, "p": spec.p,
                   "preprocess": None if spec.preprocess is None else spec.preprocess.to_dict()}
                  for (f, g), spec in zip(names, self.layers, strict=True)]
        body = {"format": MODEL_FORMAT, "boundary": self.boundary, "inference": self.inference.model_dump(),
                "layers": layers}
        return json.dumps(body, indent=1).encode()


def load_model(store: JobStore, job_id: str) -> JobModel:
    """The model of job `job_id` from its artifacts (ModelNotReadyError when it has none)."""
    from pydantic import TypeAdapter  # noqa: PLC0415

    raw = store.read_artifact(job_id, "model.json")
    if raw is None:
        raise ModelNotReadyError(f"job {job_id} has no model: it has not succeeded")
    body: dict[str, Any] = json.loads(raw)
    layers = []
    for entry in body["layers"]:
        filters = _npy(store.read_artifact(job_id, entry["filters"]))
        connectivity = _npy(store.read_artifact(job_id, entry["connectivity"])).astype(bool)
        pre = None if entry["preprocess"] is None else FittedPreprocess.from_dict(entry["preprocess"])
        layers.append(LayerModel(filters, connectivity, pre, float(entry["lam"]), float(entry["p"])))
    inference = TypeAdapter(InferenceConfig).validate_python(body["inference"])
    return JobModel(layers, body["boundary"], inference)


def _npy(data: bytes | None) -> np.ndarray:
    if data is None:
        raise ModelNotReadyError("a model array is missing from the store")
    return np.load(io.BytesIO(data), allow_pickle=False)
