"""`deconv learn CONFIG --workers N --out DIR`: artifacts on success, exit status 2 and the field's name on a bad
config."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from api.cli import main
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def job_file(tmp_path) -> Path:
    """configs/quick.yaml on three 32x32 crops of the sample images, for 3 outer iterations."""
    images = tmp_path / "images"
    images.mkdir()
    samples = sorted((ROOT / "samples").glob("*.png"))[:3]
    [Image.open(p).crop((40, 40, 72, 72)).save(images / p.name) for p in samples]
    config = yaml.safe_load((ROOT / "configs" / "quick.yaml").read_text())
    config.update(images="images", n_iter=3)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def _edited(job_file: Path, **changes) -> Path:
    config = yaml.safe_load(job_file.read_text())
    config.update(changes)
    job_file.write_text(yaml.safe_dump(config))
    return job_file


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_learn_writes_filters_history_and_montage(ray_session, job_file, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    status = main(["learn", str(job_file), "--workers", "2", "--out", str(out), "--checkpoint-every", "2"])
    filters = np.load(out / "filters.npy")
    history = json.loads((out / "history.json").read_text())
    assert status == 0
    assert (filters.shape, filters.dtype) == ((16, 1, 7, 7), np.float32)
    assert [h["iteration"] for h in history] == [1, 2, 3]
    assert all(np.isfinite([h["objective"] for h in history]))
    assert Image.open(out / "filters.png").format == "PNG"
    assert str(out.resolve()) in capsys.readouterr().out


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"learning_rate": 0.1}, "learning_rate"),
        ({"layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.0}]}, "layers.0.lam"),
        ({"layers": [{"n_filters": 4, "filter_size": 5, "lam": -1.0}]}, "layers.0.lam"),
        ({"images": "no-such-folder"}, "no-such-folder"),
    ],
)
def test_a_bad_job_file_exits_with_2_and_names_the_field(job_file, tmp_path, capsys, changes, field):
    status = main(["learn", str(_edited(job_file, **changes)), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert status == 2
    assert field in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_a_missing_out_option_is_a_usage_error(job_file, capsys):
    assert main(["learn", str(job_file)]) == 2
    assert "--out" in capsys.readouterr().err


def test_a_bad_workers_count_is_a_usage_error(job_file, tmp_path, capsys):
    assert main(["learn", str(job_file), "--workers", "0", "--out", str(tmp_path)]) == 2
    assert "--workers" in capsys.readouterr().err
