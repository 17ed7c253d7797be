"""The model of a finished job: its layer stack and the inference it learned with; encoding and projection.

The runner stores a :class:`~solver.StackModel` as ``filters-L<l>.npy`` and ``connectivity-L<l>.npy`` per
layer and ``model.json`` (the boundary; per layer λ, p and the fitted preprocessing of its input; the inference);
:func:`load_model` reads them back from the store, so ``POST /models/{id}/encode`` and ``POST /reconstruct`` work
on any finished job, also after a restart. :func:`model_file` gives the job's model as one model file
(:func:`solver.load_model` reads it), built from those stored artifacts.
"""

from __future__ import annotations

import io
import json
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from pydantic import TypeAdapter

from solver import LayerModel, StackCode, StackModel, encode_layers, project_down
from solver.config import InferenceConfig

from .store import JobStore


class ModelNotReadyError(LookupError):
    """The job has no model (yet): it is not finished, or it failed or was cancelled before its first layer."""


@dataclass(frozen=True)
class JobModel:
    """A job's :class:`~solver.StackModel` and the inference it learned with (the default for encoding)."""

    stack: StackModel
    inference: InferenceConfig

    @property
    def layers(self) -> tuple[LayerModel, ...]:
        return self.stack.layers

    def check_layer(self, layer: int | None) -> int:
        """`layer` (1-based) if the model has it; the top layer for None."""
        return self.stack.check_layer(layer)

    def encode(
        self, images: np.ndarray, *, layer: int | None = None, method: str | None = None, max_iter: int | None = None
    ) -> StackCode:
        """Maps and switches of every layer up to `layer` (default: the top one); see
        :func:`solver.encode_layers`."""
        return encode_layers(self.stack, images, layer=layer, method=method or self.inference.method, max_iter=max_iter)

    def project(
        self,
        maps: np.ndarray,
        *,
        layer: int | None = None,
        switches: Sequence[Any] | None = None,
        map_shapes: Sequence[Sequence[int]] | None = None,
    ) -> np.ndarray:
        """Images from maps of `layer` through every layer below, unpooling at `switches` where a layer below
        pools; see :func:`solver.project_down`."""
        return project_down(self.stack, maps, layer, switches=switches, map_shapes=map_shapes)

    @property
    def model(self) -> StackModel:
        """The stack with the job's inference in it: what the model file holds, so that
        :func:`solver.encode_layers` on it encodes as :meth:`encode` does."""
        return replace(self.stack, inference=self.inference)

    def file_bytes(self) -> bytes:
        """The model file (a zip archive that :func:`solver.load_model` reads)."""
        return self.model.to_bytes()

    def artifacts(self) -> tuple[dict[str, np.ndarray], bytes]:
        """The arrays (``filters-L<l>``, ``connectivity-L<l>``) and the ``model.json`` bytes that store it."""
        arrays, metadata = self.stack.to_arrays()
        body = {**metadata, "inference": self.inference.model_dump()}
        return arrays, json.dumps(body, indent=1).encode()


def load_model(store: JobStore, job_id: str) -> JobModel:
    """The model of job `job_id` from its artifacts (ModelNotReadyError when it has none)."""
    raw = store.read_artifact(job_id, "model.json")
    if raw is None:
        raise ModelNotReadyError(f"job {job_id} has no model: it has not succeeded")
    body: dict[str, Any] = json.loads(raw)
    arrays = {}
    for number in range(1, len(body["layers"]) + 1):
        for name in (f"filters-L{number}", f"connectivity-L{number}"):
            arrays[name] = _npy(store.read_artifact(job_id, f"{name}.npy"))
    inference = TypeAdapter(InferenceConfig).validate_python(body.pop("inference"))
    return JobModel(StackModel.from_arrays(arrays, body), inference)


def model_file(store: JobStore, job_id: str) -> bytes:
    """The model of job `job_id` as one model file, from its stored artifacts (``GET /jobs/{id}/model`` serves it).

    Parameters
    ----------
    store : JobStore
    job_id : str

    Returns
    -------
    bytes
        A zip archive that :func:`solver.load_model` reads; encoding with it (:func:`solver.encode_layers`)
        gives the maps ``POST /models/{id}/encode`` gives.

    Raises
    ------
    ModelNotReadyError
        When the job has no model (it has not succeeded).
    """
    return load_model(store, job_id).file_bytes()


def _npy(data: bytes | None) -> np.ndarray:
    if data is None:
        raise ModelNotReadyError("a model array is missing from the store")
    return np.load(io.BytesIO(data), allow_pickle=False)
