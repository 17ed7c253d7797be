"""The client's methods that use a finished job as a model: download it, encode new images, reconstruct images
from maps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from .connection import Connection
from .payloads import ImageParts, file_parts, load_npy, load_npz, npy_bytes, npz_bytes, params

if TYPE_CHECKING:
    from solver import StackModel

_NPY = "application/x-npy"


class ModelMethods(Connection):
    """``/jobs/{id}/model``, ``/models/{id}/encode`` and ``/reconstruct``; a part of
    :class:`~api.client.DeconvClient`.

    Parameters
    ----------
    base_url, api_key, timeout, transport
        As for :class:`~api.client.connection.Connection`.
    """

    def model(self, job_id: str) -> StackModel:
        """The model of a finished job, loaded, to encode and reconstruct offline.

        Parameters
        ----------
        job_id : str
            A job that has succeeded.

        Returns
        -------
        solver.StackModel
            With the job's inference: ``solver.encode_layers(model, images, max_iter=200)`` gives the maps
            :meth:`encode_layers` gets from the service (whose default `max_iter` is 200).
        """
        from solver import load_model  # noqa: PLC0415  (the solver loads only when used)

        return load_model(self.model_file(job_id))

    def model_file(self, job_id: str) -> bytes:
        """The model file of a finished job.

        Parameters
        ----------
        job_id : str
            A job that has succeeded.

        Returns
        -------
        bytes
            A zip archive (save it as ``NAME.deconv``) that :func:`solver.load_model` reads.
        """
        return self._request("GET", f"/jobs/{job_id}/model").content

    def encode(
        self,
        job_id: str,
        images: np.ndarray | ImageParts,
        *,
        layer: int | None = None,
        max_iter: int = 200,
        method: str | None = None,
    ) -> np.ndarray:
        """Feature maps of new images with the job's filters.

        Parameters
        ----------
        job_id : str
            A job that has succeeded.
        images : array or sequence of path or (name, bytes)
            An array of shape (H, W) or (C, H, W) (one image) or (N, C, H, W); or image files as for
            :meth:`~api.client.DeconvClient.upload_dataset`. They must share one shape; the job's preprocessing
            is applied to them.
        layer : int, optional
            Default: the top layer.
        max_iter : int
            Inference iterations per layer.
        method : {"admm", "fista", "zeiler"}, optional
            Default: the job's inference method.

        Returns
        -------
        ndarray of shape (N, K, H', W'), float32
            The maps of `layer`.
        """
        body = self._encode(job_id, images, params(layer=layer, max_iter=max_iter, method=method))
        return load_npy(body)

    def encode_layers(
        self,
        job_id: str,
        images: np.ndarray | ImageParts,
        *,
        layer: int | None = None,
        max_iter: int = 200,
        method: str | None = None,
    ) -> dict[str, np.ndarray]:
        """As :meth:`encode`, the maps of every layer up to `layer` and the pooling switches.

        Parameters
        ----------
        job_id, images, layer, max_iter, method
            As for :meth:`encode`.

        Returns
        -------
        dict of str to ndarray
            ``"L1"``, ``"L2"``, ... the maps (N, K_j, H_j', W_j') of each layer, and ``"S1"``, ... the int32
            switches of the layers that pool: what :meth:`reconstruct` needs (``switches=``) to project maps of
            a layer above a pooling layer down to pixels.
        """
        body = self._encode(job_id, images, params(layer=layer, max_iter=max_iter, method=method, format="npz"))
        return load_npz(body)

    def reconstruct(
        self,
        maps: np.ndarray,
        *,
        job_id: str | None = None,
        layer: int | None = None,
        filters: np.ndarray | None = None,
        boundary: str = "circular",
        switches: Mapping[str, np.ndarray] | None = None,
    ) -> np.ndarray:
        """Images from feature maps, with a finished job's filters or given ones.

        Parameters
        ----------
        maps : ndarray of shape (N, K, H', W') or (K, H', W')
        job_id : str, optional
            A finished job: the maps are of its `layer` and are projected through every layer below to pixels.
        layer : int, optional
            With `job_id`; default: the top layer.
        filters : ndarray of shape (K, C, s, s), optional
            Instead of `job_id`.
        boundary : {"circular", "valid"}
            With `filters`.
        switches : dict of str to ndarray, optional
            What :meth:`encode_layers` returned for these maps; needed when a layer below `layer` pools.

        Returns
        -------
        ndarray of shape (N, C, H, W), float32
        """
        return load_npy(self._reconstruct(maps, job_id, layer, filters, boundary, "npy", switches))

    def reconstruct_png(
        self,
        maps: np.ndarray,
        *,
        job_id: str | None = None,
        layer: int | None = None,
        filters: np.ndarray | None = None,
        boundary: str = "circular",
        switches: Mapping[str, np.ndarray] | None = None,
    ) -> bytes:
        """As :meth:`reconstruct`, the images as one picture.

        Parameters
        ----------
        maps, job_id, layer, filters, boundary, switches
            As for :meth:`reconstruct`.

        Returns
        -------
        bytes
            A PNG sheet of the images.
        """
        return self._reconstruct(maps, job_id, layer, filters, boundary, "png", switches)

    def _encode(self, job_id: str, images: np.ndarray | ImageParts, query: dict) -> bytes:
        if isinstance(images, np.ndarray):
            files = [("files", ("images.npy", npy_bytes(images), _NPY))]
        else:
            files = file_parts("files", images)
        return self._request("POST", f"/models/{job_id}/encode", params=query, files=files).content

    def _reconstruct(
        self,
        maps: np.ndarray,
        job_id: str | None,
        layer: int | None,
        filters: np.ndarray | None,
        boundary: str,
        format: str,
        switches: Mapping[str, np.ndarray] | None,
    ) -> bytes:  # noqa: A002
        files = [("maps", ("maps.npy", npy_bytes(maps), _NPY))]
        if filters is not None:
            files.append(("filters", ("filters.npy", npy_bytes(filters), _NPY)))
        if switches is not None:
            kept = {k: v for k, v in switches.items() if k[:1] in "LS"}
            files.append(("switches", ("switches.npz", npz_bytes(kept), "application/x-npz")))
        data = params(job_id=job_id, layer=layer, boundary=boundary)
        return self._request("POST", "/reconstruct", params={"format": format}, data=data, files=files).content
