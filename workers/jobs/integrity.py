"""A dataset's images checked against the sha256 they were stored under, before a job learns on them.

An image is stored as an artifact named by the sha256 of its bytes; a file changed on disk since (a bad sector, a
hand edit, a partial restore) would otherwise be learned on without notice. The files of a local store are hashed
a megabyte at a time (the service's memory does not grow with the dataset); an object store's images are not
fetched here, only checked to exist: the readers that fetch them compare what they read. The error names the
dataset and the image by its index and upload name, never the server's path to the file.
"""

from __future__ import annotations

import hashlib

from .store import DatasetRecord, JobStore

_CHUNK = 2**20


class DatasetCorruptError(ValueError):
    """An image of a dataset is missing from the store or does not match its sha256."""


def verify_dataset(store: JobStore, dataset: DatasetRecord) -> None:
    """Read every image of `dataset` back and compare it with its sha256.

    Parameters
    ----------
    store : JobStore
    dataset : DatasetRecord

    Raises
    ------
    DatasetCorruptError
        Naming the dataset, the image's index and its upload name.
    """
    for index, image in enumerate(dataset.images):
        if not _intact(store, image.key):
            raise DatasetCorruptError(
                f"dataset {dataset.id}: image {index} ({image.name!r}) is missing from the store or damaged (its "
                "bytes do not match the sha256 it was stored under); upload the images again"
            ) from None


def _intact(store: JobStore, key: str) -> bool:
    path = store.artifacts.local_path(key)
    if path is None:
        return store.artifacts.exists(key)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as file:
            while chunk := file.read(_CHUNK):
                digest.update(chunk)
    except OSError:
        return False
    return digest.hexdigest() == key[:64]
