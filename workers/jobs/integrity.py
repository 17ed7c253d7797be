"""A dataset's images checked against the sha256 they were stored under, before a job learns on them.

An image is stored as an artifact named by the sha256 of its bytes; a file changed on disk since (a bad sector, a
hand edit, a partial restore) would otherwise be learned on without notice. The error names the dataset and the
image by its index and upload name, never the server's path to the file.
"""

from __future__ import annotations

from .artifacts import ArtifactCorruptError
from .store import DatasetRecord, JobStore


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
        try:
            store.artifacts.get(image.key)  # verifies the bytes against the key's sha256
        except ArtifactCorruptError:
            raise DatasetCorruptError(
                f"dataset {dataset.id}: image {index} ({image.name!r}) is missing from the store or damaged (its "
                "bytes do not match the sha256 it was stored under); upload the images again"
            ) from None
