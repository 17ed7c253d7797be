"""``/presets``: the bundled learning presets, as job specs without their ``dataset_id`` (the dashboard's form).

Route functions carry no docstring: FastAPI would publish it as the operation's description.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter

from configs import find_preset, preset_names
from workers.jobs.jobfile import read_job_mapping

from ..deps import guarded
from ..schemas import PresetOut

router = APIRouter(tags=["jobs"], dependencies=guarded)


@router.get(
    "/presets",
    response_model=list[PresetOut],
    summary="The bundled presets, by name",
    description="Each preset's learning config as a job spec without `dataset_id`: add one and POST it "
    "to /jobs. `description` says what the preset is (its file's leading comment, to the "
    "first full stop or colon).",
)
def list_presets() -> list[PresetOut]:
    return [
        PresetOut(name=path.stem, description=_leading_comment(path), spec=read_job_mapping(path))
        for path in preset_paths()
    ]


def preset_paths() -> list[Path]:
    """The bundled presets' YAML files.

    Returns
    -------
    list of Path
        Sorted by preset name.
    """
    return [find_preset(name) for name in preset_names()]


def _leading_comment(path: Path) -> str:
    """The file's leading comment up to its first full stop or colon: what the preset is."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        lines.append(line.lstrip("#").strip())
    text = " ".join(lines)
    ends = [i for i in (text.find(". "), text.find(": ")) if i >= 0]
    return text[: min(ends)] if ends else text
