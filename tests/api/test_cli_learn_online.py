"""`deconv learn online --images FOLDER --out DIR`: the online preset through the command line, its outputs, and its
errors (exit status 2 naming the field)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from api.cli import main
from configs import find_preset, sample_paths
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)


@pytest.fixture
def images(tmp_path) -> Path:
    """The eight sample images cropped to 32x32."""
    folder = tmp_path / "images"
    folder.mkdir()
    for path in sample_paths():
        Image.open(path).crop((40, 40, 72, 72)).save(folder / path.name)
    return folder


def _job(tmp_path: Path, **learning) -> Path:
    config = yaml.safe_load(find_preset("online").read_text())
    config["learning"] |= learning
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def test_the_online_preset_is_an_online_job_file():
    from workers.jobs.jobfile import load_job_file  # noqa: PLC0415
    from workers.jobs.spec import JobSpec  # noqa: PLC0415

    job = load_job_file("online")
    assert job.learning.online and job.learning.batch_size == 4
    spec = JobSpec.model_validate({"dataset_id": "0" * 32, **yaml.safe_load(find_preset("online").read_text())})
    assert spec.learning == job.learning


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_learn_online_writes_filters_history_and_held_out(ray_session, images, tmp_path, capsys):  # noqa: F811
    out = tmp_path / "out"
    job = _job(tmp_path, n_epochs=1, batch_size=3)
    status = main(["learn", str(job), "--images", str(images), "--workers", "2", "--out", str(out), "--no-progress"])
    assert status == 0, capsys.readouterr().err
    filters = np.load(out / "filters.npy")
    assert (filters.shape, filters.dtype) == ((16, 1, 7, 7), np.float32)
    history = json.loads((out / "history.json").read_text())
    assert [h["iteration"] for h in history] == [1, 2]  # 6 training images (2 held out) in batches of 3
    held = json.loads((out / "held_out.json").read_text())
    assert len(held) == 2 and all(np.isfinite(held))
    assert Image.open(out / "filters.png").format == "PNG"
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["ckpt-000002"]


@pytest.mark.parametrize(
    ("learning", "args", "field"),
    [
        ({"batch_size": 7}, [], "learning.batch_size"),
        ({"held_out": 8}, [], "learning.held_out"),
        ({"n_images": 3}, [], "n_epochs or n_images"),
        ({}, ["--n-iter", "3"], "--n-iter"),
    ],
)
def test_a_bad_online_job_exits_with_2_and_names_the_field(images, tmp_path, capsys, learning, args, field):
    status = main(["learn", str(_job(tmp_path, **learning)), "--images", str(images), "--out", str(tmp_path), *args])
    err = capsys.readouterr().err
    assert status == 2 and field in err and "Traceback" not in err, err


@pytest.mark.ray
@pytest.mark.timeout(180)
@pytest.mark.parametrize(
    ("learning", "args", "kept"),
    [
        ({}, ["--checkpoint-every", "2"], ["ckpt-000004", "ckpt-000006"]),  # the last two are kept
        ({"checkpoint_every": 4}, [], ["ckpt-000004", "ckpt-000006"]),
        ({"checkpoint_every": 4}, ["--checkpoint-every", "5"], ["ckpt-000005", "ckpt-000006"]),
        ({"checkpoint_every": 4}, ["--checkpoint-every", "0"], None),
    ],
)
def test_checkpoint_every_counts_batches_and_overrides_the_job_file(
    ray_session,  # noqa: F811
    images,
    tmp_path,
    capsys,
    learning,
    args,
    kept,
):
    out = tmp_path / "out"
    job = _job(tmp_path, n_epochs=1, batch_size=1, **learning)  # 6 training images: 6 batches
    status = main(["learn", str(job), "--images", str(images), "--out", str(out), "--no-progress", *args])
    assert status == 0, capsys.readouterr().err
    folder = out / "checkpoints"
    assert (sorted(p.name for p in folder.iterdir()) if folder.exists() else None) == kept


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_ctrl_c_stops_an_online_run_after_its_batch(ray_session, images, tmp_path, capsys, caplog):  # noqa: F811
    import os  # noqa: PLC0415
    import signal  # noqa: PLC0415
    import threading  # noqa: PLC0415
    import time  # noqa: PLC0415

    out = tmp_path / "out"
    job = _job(tmp_path, n_epochs=200, batch_size=1, checkpoint_every=1)  # 1200 batches: minutes

    def press_ctrl_c() -> None:
        deadline = time.monotonic() + 120
        while not (out / "checkpoints").exists() and time.monotonic() < deadline:
            time.sleep(0.05)  # the run is under way once it has checkpointed
        os.kill(os.getpid(), signal.SIGINT)

    presser = threading.Thread(target=press_ctrl_c, daemon=True)
    presser.start()
    with caplog.at_level("WARNING", logger="deconv.cli"):
        status = main(["learn", str(job), "--images", str(images), "--out", str(out), "--no-progress"])
    presser.join(10)
    assert status == 130
    assert "stopping after this batch" in caplog.text
    assert "interrupted after" in capsys.readouterr().err
