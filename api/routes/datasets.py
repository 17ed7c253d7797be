"""``POST /datasets`` (upload images) and ``GET /datasets/{id}``.

Route functions carry no docstring: FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, File, HTTPException, Path, UploadFile

from workers.jobs.store import ID_PATTERN

from ..deps import SettingsDep, StoreDep, guarded
from ..schemas import DatasetOut
from ..uploads import read_uploads

router = APIRouter(tags=["datasets"], dependencies=guarded)


@router.post("/datasets", response_model=DatasetOut, status_code=201)
def upload_dataset(
    files: Annotated[list[UploadFile], File(description="PNG, JPEG, TIFF or NPY files, or one zip or npz")],
    settings: SettingsDep,
    store: StoreDep,
) -> DatasetOut:
    images = read_uploads(files, "files", settings)
    record = store.add_dataset([(im.name, im.array) for im in images])
    return DatasetOut.of(record)


@router.get("/datasets/{dataset_id}", response_model=DatasetOut)
def get_dataset(dataset_id: Annotated[str, Path(pattern=ID_PATTERN)], store: StoreDep) -> DatasetOut:
    record = store.get_dataset(dataset_id)
    if record is None:
        raise HTTPException(404, f"dataset {dataset_id!r} not found")
    return DatasetOut.of(record)
