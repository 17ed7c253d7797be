"""The client's methods for what a finished job produced: filters, maps, reconstructions, history, artifacts."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from .connection import Connection
from .errors import DeconvAPIError
from .payloads import load_npy, load_npz, params

_CHUNK = 1 << 16


class ResultMethods(Connection):
    """``/jobs/{id}/...`` results; a part of :class:`~api.client.DeconvClient`. A job that has not succeeded
    answers 409 (a :class:`~api.client.errors.DeconvAPIError`).

    Parameters
    ----------
    base_url, api_key, timeout, transport
        As for :class:`~api.client.connection.Connection`.
    """

    def filters(self, job_id: str, layer: int | None = None) -> np.ndarray:
        """The learned filters of one layer.

        Parameters
        ----------
        job_id : str
        layer : int, optional
            1-based; default: the top layer.

        Returns
        -------
        ndarray of shape (K, C, s, s), float32
        """
        return load_npy(self._request("GET", f"/jobs/{job_id}/filters", params=params(layer=layer)).content)

    def filters_png(self, job_id: str, layer: int | None = None) -> bytes:
        """A montage of the filters of one layer (higher layers projected to pixel space).

        Parameters
        ----------
        job_id : str
        layer : int, optional
            Default: the top layer.

        Returns
        -------
        bytes
            A PNG.
        """
        return self._request("GET", f"/jobs/{job_id}/filters", params=params(layer=layer, format="png")).content

    def latest_filters(self, job_id: str, layer: int | None = None) -> tuple[np.ndarray, int]:
        """The newest filters of one layer, also while the job runs (from its newest checkpoint).

        Parameters
        ----------
        job_id : str
            A job that is running or has succeeded (409 before its first checkpoint).
        layer : int, optional
            1-based; default: the layer being learned (the top layer once the job has succeeded).

        Returns
        -------
        filters : ndarray of shape (K, C, s, s), float32
        iteration : int
            The layer's outer iteration after which these filters were saved.
        """
        response = self._request("GET", f"/jobs/{job_id}/filters/latest", params=params(layer=layer))
        return load_npy(response.content), int(response.headers["X-Deconv-Iteration"])

    def maps(self, job_id: str, layer: int | None = None) -> dict[str, np.ndarray]:
        """The feature maps of the training images for one layer.

        Parameters
        ----------
        job_id : str
        layer : int, optional
            Default: the top layer.

        Returns
        -------
        dict of str to ndarray of shape (K, H', W')
            ``{"image-00000": ..., ...}``, one per training image.
        """
        return load_npz(self._request("GET", f"/jobs/{job_id}/maps", params=params(layer=layer)).content)

    def save_maps(self, job_id: str, path: str | os.PathLike[str], layer: int | None = None) -> Path:
        """Save the maps of every image to an ``.npz`` file, streamed (a collection need not fit in memory).

        The bytes go to a temporary file beside `path`, which replaces `path` once the whole archive has come.

        Parameters
        ----------
        job_id : str
            A learning job (its training images' maps) or an encode job.
        path : path
        layer : int, optional
            Default: the top layer.

        Returns
        -------
        Path
            The file written; ``numpy.load`` reads it (``image-00000``, ...).
        """
        query = "" if layer is None else f"?layer={int(layer)}"
        return self._download(f"/jobs/{job_id}/maps{query}", Path(path))

    def image_maps(self, job_id: str, image: int, layer: int | None = None) -> np.ndarray:
        """The feature maps of one training image, without the others.

        Parameters
        ----------
        job_id : str
        image : int
            Its index in the dataset (0-based).
        layer : int, optional
            Default: the top layer.

        Returns
        -------
        ndarray of shape (K, H', W')
        """
        response = self._request("GET", f"/jobs/{job_id}/maps", params=params(layer=layer, image=image))
        return load_npy(response.content)

    def reconstructions(self, job_id: str) -> np.ndarray:
        """The training images rebuilt from the top layer's maps (in the preprocessed space).

        Parameters
        ----------
        job_id : str

        Returns
        -------
        ndarray of shape (N, C, H, W), float32
        """
        return load_npy(self._request("GET", f"/jobs/{job_id}/reconstructions").content)

    def reconstructions_png(self, job_id: str) -> bytes:
        """Each preprocessed input beside its reconstruction.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        bytes
            A PNG.
        """
        return self._request("GET", f"/jobs/{job_id}/reconstructions", params={"format": "png"}).content

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """One record per outer iteration so far (also while the job runs).

        Parameters
        ----------
        job_id : str

        Returns
        -------
        list of dict
            ``layer``, ``iteration``, ``objective``, ``sparsity``, ...
        """
        return self._request("GET", f"/jobs/{job_id}/history").json()

    def history_png(self, job_id: str) -> bytes:
        """The objective per outer iteration as a plot.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        bytes
            A PNG.
        """
        return self._request("GET", f"/jobs/{job_id}/history", params={"format": "png"}).content

    def artifacts(self, job_id: str) -> list[dict[str, Any]]:
        """Every artifact of the job.

        Parameters
        ----------
        job_id : str

        Returns
        -------
        list of dict
            ``name``, ``sha256``, ``size``, ``media_type``, ``url``.
        """
        return self._request("GET", f"/jobs/{job_id}/artifacts").json()

    def download(self, job_id: str, name: str, path: str | os.PathLike[str]) -> Path:
        """Save one artifact of the job to a file, checked against its sha256.

        The bytes stream into a temporary file beside the target and replace it only once their sha256 matches
        the one ``/jobs/{id}/artifacts`` lists: a failed download leaves nothing.

        Parameters
        ----------
        job_id, name : str
        path : path
            A file, or a folder to put `name` in.

        Returns
        -------
        Path
            The file written.
        """
        listed = {a["name"]: a for a in self.artifacts(job_id)}
        if name not in listed:
            raise DeconvAPIError(
                404,
                None,
                f"HTTP 404: job {job_id} has no artifact {name!r} (it has {', '.join(sorted(listed)) or 'none'})",
            )
        target = Path(path)
        if target.is_dir():
            target = target / name
        expected = listed[name]["sha256"]

        def check(digest: str) -> None:
            if digest != expected:
                raise DeconvAPIError(
                    None,
                    None,
                    f"artifact {name!r} of job {job_id} arrived damaged: sha256 {digest}, the service lists {expected}",
                )

        return self._download(f"/jobs/{job_id}/artifacts/{name}", target, check)

    def _download(self, url: str, target: Path, check: Callable[[str], None] | None = None) -> Path:
        """Stream `url` into `target` through a temporary file beside it, renamed once complete (and, with `check`,
        once `check` accepted the sha256 of what arrived): a failed download leaves no partial file."""
        target.parent.mkdir(parents=True, exist_ok=True)
        digest = hashlib.sha256()
        handle = tempfile.NamedTemporaryFile(dir=target.parent, prefix=f".{target.name}.", delete=False)
        try:
            with handle, self._stream("GET", url) as response:
                for chunk in response.iter_bytes(_CHUNK):
                    digest.update(chunk)
                    handle.write(chunk)
            if check is not None:
                check(digest.hexdigest())
            os.chmod(handle.name, 0o644)
            os.replace(handle.name, target)
        except BaseException:
            Path(handle.name).unlink(missing_ok=True)
            raise
        return target
