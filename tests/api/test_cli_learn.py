"""`deconv learn CONFIG --workers N --out DIR`: artifacts on success, exit status 2 and the field's name on a bad
config."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from api.cli import main
from configs import find_preset, sample_paths
from tests.workers.conftest import ray_cluster, ray_session  # noqa: F401  (the shared session cluster)


@pytest.fixture
def job_file(tmp_path) -> Path:
    """configs/quick.yaml on three 32x32 crops of the sample images, for 3 outer iterations."""
    images = tmp_path / "images"
    images.mkdir()
    samples = sample_paths()[:3]
    [Image.open(p).crop((40, 40, 72, 72)).save(images / p.name) for p in samples]
    config = yaml.safe_load(find_preset("quick").read_text())
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
def test_learn_writes_filters_history_and_montage(ray_session, job_file, tmp_path, capsys, caplog):  # noqa: F811
    caplog.set_level(logging.INFO, logger="workers")
    out = tmp_path / "out"
    status = main(["learn", str(job_file), "--workers", "2", "--out", str(out), "--checkpoint-every", "2"])
    filters = np.load(out / "filters.npy")
    history = json.loads((out / "history.json").read_text())
    assert status == 0
    assert (filters.shape, filters.dtype) == ((16, 1, 7, 7), np.float32)
    assert [h["iteration"] for h in history] == [1, 2, 3]
    assert all(np.isfinite([h["objective"] for h in history]))
    elapsed = [h["elapsed_s"] for h in history]
    assert 0 < elapsed[0] and elapsed == sorted(elapsed)
    assert Image.open(out / "filters.png").format == "PNG"
    assert str(out.resolve()) in capsys.readouterr().out
    said = [r.getMessage() for r in caplog.records if r.name == "workers.distributed.coordinator"]
    assert sum(m.startswith("shard actor ") and " computes with numpy on the CPU" in m for m in said) == 2


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


@pytest.mark.parametrize("value", ["0", "-5"])
@pytest.mark.parametrize(
    "argv",
    [
        ["encode", "f" * 32, "x.png", "--out", "x.npz", "--max-iter"],
        ["encode-job", "f" * 32, "--dataset", "d" * 32, "--block-size"],
        ["learn", "quick", "--out", "out", "--workers"],
    ],
    ids=["encode-max-iter", "encode-job-block-size", "learn-workers"],
)
def test_a_count_below_one_is_refused_as_not_positive_whatever_its_sign(capsys, argv, value):
    assert main([*argv, value]) == 2
    err = capsys.readouterr().err
    assert f"argument {argv[-1]}: must be a positive integer, got '{value}'" in err, err


def _two_sample_crops(folder: Path) -> list[str]:
    folder.mkdir()
    [Image.open(p).crop((40, 40, 72, 72)).save(folder / p.name) for p in sample_paths()[:2]]
    return [str(folder / p.name) for p in sample_paths()[:2]]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_learn_takes_a_preset_by_name_and_images_on_the_command_line(ray_session, tmp_path, monkeypatch):  # noqa: F811
    monkeypatch.chdir(tmp_path)
    images = _two_sample_crops(tmp_path / "images")
    status = main(["learn", "quick", "--images", *images, "--n-iter", "2", "--out", "out", "--no-progress"])
    history = json.loads((tmp_path / "out" / "history.json").read_text())
    assert status == 0
    assert np.load(tmp_path / "out" / "filters.npy").shape == (16, 1, 7, 7)
    assert [h["iteration"] for h in history] == [1, 2]


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_a_picture_that_cannot_be_decoded_exits_2_in_one_line_naming_it(ray_session, tmp_path, capsys):  # noqa: F811
    """Its header is sound, so it fails in the actor that loads it: the user reads the file, not Ray's traceback."""
    images = _two_sample_crops(tmp_path / "images")
    cut = Path(images[1])
    cut.write_bytes(cut.read_bytes()[:-60])
    argv = ["learn", "quick", "--images", *images, "--n-iter", "1", "--out", str(tmp_path / "out"), "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"deconv learn: error: cannot read image file {str(cut)!r}: OSError: image file is truncated"


def test_a_preset_without_images_exits_2_asking_for_them(tmp_path, capsys):
    assert main(["learn", "quick", "--out", str(tmp_path / "out")]) == 2
    assert "--images" in capsys.readouterr().err


def test_an_unknown_preset_exits_2_listing_the_presets(tmp_path, capsys):
    assert main(["learn", "quik", "--images", str(tmp_path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert "unknown preset 'quik'" in err
    assert "quick, zeiler2010, zeiler2010-layer1, zeiler2011" in err


def test_a_missing_image_exits_2_naming_it(tmp_path, capsys):
    assert main(["learn", "quick", "--images", str(tmp_path / "nope.png"), "--out", str(tmp_path / "out")]) == 2
    assert "nope.png" in capsys.readouterr().err


def test_version_prints_the_installed_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"deconv {version('deconv')}"


def test_samples_writes_the_bundled_images_into_a_folder(tmp_path, capsys):
    assert main(["samples", "--out", str(tmp_path / "pictures")]) == 0
    written = sorted(p.name for p in (tmp_path / "pictures").iterdir())
    assert written == [p.name for p in sample_paths()]
    assert (tmp_path / "pictures" / "camera.png").read_bytes() == (sample_paths()[2]).read_bytes()
    assert str((tmp_path / "pictures").resolve()) in capsys.readouterr().out


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_second_ctrl_c_stops_a_huge_coding_step_at_once(ray_session, job_file, tmp_path, capsys):  # noqa: F811
    from tests.api.test_cancel_running import _shard_actors  # noqa: PLC0415

    config = yaml.safe_load(job_file.read_text())
    # one coding step of 10,000 ADMM iterations on the eight 128² samples takes far longer than this test waits
    # (on the fixture's three 32² crops a quiet machine ended the whole run before the presses came)
    inference = {**config.get("inference", {}), "method": "admm", "max_iter": 10_000}
    _edited(job_file, inference=inference, images=str(sample_paths()[0].parent))
    before = set(_shard_actors())
    sent: list[float] = []

    def press_ctrl_c_twice() -> None:
        deadline = time.monotonic() + 120
        while not set(_shard_actors()) - before and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(3.0)  # the actor has its images and codes them
        for _ in range(2):
            sent.append(time.monotonic())
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.5)

    presser = threading.Thread(target=press_ctrl_c_twice, daemon=True)
    presser.start()
    status = main(["learn", str(job_file), "--out", str(tmp_path / "out"), "--no-progress"])
    ended = time.monotonic()
    presser.join(10)
    assert status == 130
    assert len(sent) == 2
    assert ended - sent[1] < 3.0, ended - sent[1]
    assert "interrupted in the middle of an outer iteration" in capsys.readouterr().err
    assert not (tmp_path / "out" / "filters.npy").exists()


def test_learn_against_an_address_nobody_answers_fails_at_once_in_one_line(tmp_path):
    # ray.init on such an address retried for minutes, logging GCS timeouts, and ignored Ctrl-C meanwhile
    import socket  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    from api.exits import EXIT_FAILED  # noqa: PLC0415
    from tests.api.conftest import ROOT  # noqa: PLC0415

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    image = str(sample_paths()[0])
    cmd = [sys.executable, "-m", "api.cli", "learn", "quick", "--images", image, "--address", f"127.0.0.1:{port}"]
    cmd += ["--out", str(tmp_path / "out"), "--no-progress"]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECONV_", "RAY_ADDRESS"))}
    started = time.monotonic()
    done = subprocess.run(
        cmd, cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120
    )
    assert time.monotonic() - started < 60
    assert done.returncode == EXIT_FAILED
    assert done.stderr.strip() == (
        f"deconv learn: error: cannot reach the Ray cluster at 127.0.0.1:{port} (connection refused): start its head "
        "there (ray start --head) or give the head's GCS address host:port"
    )
