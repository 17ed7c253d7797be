"""The ``deconv`` client commands against a live service, through ``main([...])``: exit codes, what goes to stdout
(ids, files written) and stderr (progress, errors naming the field, never a traceback); ``serve`` and ``demo``."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from api.cli import main
from api.client import DeconvClient
from tests.api.conftest import ROOT, sample_png_parts, start_service, stop_service

pytestmark = [pytest.mark.ray, pytest.mark.timeout(180)]

TINY = {
    "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}],
    "inference": {"method": "admm", "max_iter": 5},
    "filter_update": {"method": "fista", "max_iter": 5},
    "n_iter": 3,
    "seed": 0,
}


@pytest.fixture(scope="module")
def live_service(tmp_path_factory, ray_cluster):
    """One job at a time, so the long job submitted second waits in the queue until it is cancelled there."""
    service = start_service(tmp_path_factory.mktemp("deconv-data"), max_running_jobs=1)
    yield service
    stop_service(service)


@pytest.fixture(scope="module")
def url(live_service) -> str:
    return live_service.url


@pytest.fixture(scope="module")
def job_file(tmp_path_factory) -> Path:
    """The tiny spec with ``images:`` a folder of three 32x32 crops (relative to the file)."""
    folder = tmp_path_factory.mktemp("job")
    (folder / "images").mkdir()
    for name, data in sample_png_parts(3, 32):
        (folder / "images" / name).write_bytes(data)
    path = folder / "job.yaml"
    path.write_text(yaml.safe_dump({**TINY, "images": "images"}))
    return path


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def _run_captured(*argv: str) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured, for module fixtures (capsys is per test)."""
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sys, "stdout", out)
        mp.setattr(sys, "stderr", err)
        status = main(list(argv))
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def runs(url, job_file, tmp_path_factory) -> dict[str, tuple[int, str, str]]:
    """Through the CLI: submit the tiny job; submit a long one on its dataset and cancel it while it waits in the
    queue behind the first; wait for the first, then for the cancelled one. {step: (status, stdout, stderr)}."""
    runs = {"submit": _run_captured("submit", str(job_file), "--url", url, "--idempotency-key", "cli-tiny")}
    job = runs["submit"][1].strip()
    with DeconvClient(url) as client:
        dataset = client.job(job)["dataset_id"]
    long_spec = _spec_file(tmp_path_factory.mktemp("long"), n_iter=500)
    runs["submit-dataset"] = _run_captured("submit", str(long_spec), "--dataset", dataset, "--url", url)
    doomed = runs["submit-dataset"][1].strip()
    runs["cancel"] = _run_captured("cancel", doomed, "--url", url)
    runs["wait"] = _run_captured("wait", job, "--url", url, "--timeout", "150")
    runs["wait-cancelled"] = _run_captured("wait", doomed, "--url", url, "--timeout", "150")
    return runs


@pytest.fixture(scope="module")
def job_id(runs) -> str:
    status, out, err = runs["wait"]
    assert status == 0, err
    return runs["submit"][1].strip()


@pytest.fixture(scope="module")
def cancelled_id(runs) -> str:
    return runs["submit-dataset"][1].strip()


def _spec_file(tmp_path: Path, **changes) -> Path:
    path = tmp_path / "spec.yaml"
    path.write_text(yaml.safe_dump({**TINY, **changes}))
    return path


# -- submit, status, wait, cancel ----------------------------------------------------------------------------------


def test_submit_uploads_the_folder_and_prints_the_id(runs, job_id):
    status, out, err = runs["submit"]
    assert status == 0
    assert out.strip() == job_id and len(job_id) == 32
    assert "uploaded 3 image(s)" in err


def test_wait_shows_progress_and_exits_0_when_the_job_succeeded(runs, job_id):
    status, _, err = runs["wait"]
    assert status == 0
    assert f"job {job_id} succeeded" in err
    assert "E=" in err and "3/3" in err  # the progress bar: outer iterations and the objective


def test_a_job_cancelled_in_the_queue_ends_cancelled_and_wait_exits_3(runs, cancelled_id):
    assert runs["submit-dataset"][0] == 0
    status, out, _ = runs["cancel"]
    assert status == 0
    assert f"job {cancelled_id} cancelled" in out
    status, _, err = runs["wait-cancelled"]
    assert status == 3
    assert f"job {cancelled_id} cancelled" in err


def test_submit_wait_with_the_same_idempotency_key_follows_the_same_job(capsys, url, job_id, tmp_path):
    with DeconvClient(url) as client:
        dataset = client.job(job_id)["dataset_id"]
    status, out, err = _run(
        capsys,
        "submit",
        str(_spec_file(tmp_path)),
        "--dataset",
        dataset,
        "--url",
        url,
        "--idempotency-key",
        "cli-tiny",
        "--wait",
        "--no-progress",
    )
    assert status == 0, err
    assert out.strip() == job_id
    assert f"job {job_id} succeeded" in err


def test_status_of_one_job(capsys, url, job_id):
    status, out, _ = _run(capsys, "status", job_id, "--url", url)
    assert status == 0
    assert "succeeded" in out
    assert "iteration 3/3" in out


def test_status_lists_the_jobs_and_prints_json(capsys, url, job_id):
    status, out, _ = _run(capsys, "status", "--url", url)
    assert status == 0
    assert out.splitlines()[0].split() == ["JOB", "STATUS", "PROGRESS", "OBJECTIVE", "CREATED"]
    assert job_id in out
    status, out, _ = _run(capsys, "status", "--url", url, "--json", "--status", "succeeded")
    assert status == 0
    assert job_id in [j["id"] for j in json.loads(out)]


def test_wait_on_a_finished_job_exits_0(capsys, url, job_id):
    status, _, err = _run(capsys, "wait", job_id, "--url", url, "--no-progress")
    assert status == 0
    assert f"job {job_id} succeeded" in err


def test_cancelling_a_finished_job_exits_2(capsys, url, job_id):
    status, _, err = _run(capsys, "cancel", job_id, "--url", url)
    assert status == 2
    assert "already succeeded" in err


# -- results -------------------------------------------------------------------------------------------------------


def test_filters_as_npy_and_png(capsys, url, job_id, tmp_path):
    status, out, _ = _run(capsys, "filters", job_id, "--url", url, "--out", str(tmp_path / "f.npy"))
    assert status == 0
    assert str(tmp_path / "f.npy") in out
    assert np.load(tmp_path / "f.npy").shape == (4, 1, 5, 5)
    status, _, _ = _run(capsys, "filters", job_id, "--url", url, "--layer", "1", "--out", str(tmp_path / "f.png"))
    assert status == 0
    assert Image.open(tmp_path / "f.png").format == "PNG"
    status, _, _ = _run(capsys, "filters", job_id, "--url", url, "--format", "png", "--out", str(tmp_path / "f"))
    assert Image.open(tmp_path / "f").format == "PNG"
    status, _, err = _run(capsys, "filters", job_id, "--url", url, "--out", str(tmp_path / "filters.txt"))
    assert status == 2 and "name a .npy or .png file, or give --format" in err
    assert not (tmp_path / "filters.txt").exists()
    status, _, _ = _run(capsys, "filters", job_id, "--url", url, "--format", "npy", "--out", str(tmp_path / "f.txt"))
    assert status == 0 and np.load(tmp_path / "f.txt").shape == (4, 1, 5, 5)


def test_reconstruct_a_jobs_images(capsys, url, job_id, tmp_path):
    status, _, _ = _run(capsys, "reconstruct", job_id, "--url", url, "--out", str(tmp_path / "r.npy"))
    assert status == 0
    assert np.load(tmp_path / "r.npy").shape == (3, 1, 32, 32)
    status, _, _ = _run(capsys, "reconstruct", job_id, "--url", url, "--out", str(tmp_path / "r.png"))
    assert Image.open(tmp_path / "r.png").format == "PNG"


def test_reconstruct_from_maps_with_a_job_or_filters(capsys, url, job_id, tmp_path):
    with DeconvClient(url) as client:
        np.savez(tmp_path / "maps.npz", **client.maps(job_id))
        np.save(tmp_path / "filters.npy", client.filters(job_id))
    status, _, err = _run(
        capsys,
        "reconstruct",
        "--maps",
        str(tmp_path / "maps.npz"),
        "--job",
        job_id,
        "--url",
        url,
        "--out",
        str(tmp_path / "a.npy"),
    )
    assert status == 0, err
    status, _, err = _run(
        capsys,
        "reconstruct",
        "--maps",
        str(tmp_path / "maps.npz"),
        "--filters",
        str(tmp_path / "filters.npy"),
        "--url",
        url,
        "--out",
        str(tmp_path / "b.npy"),
    )
    assert status == 0, err
    a, b = np.load(tmp_path / "a.npy"), np.load(tmp_path / "b.npy")
    assert a.shape == (3, 1, 32, 32)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


# -- errors: exit 2 naming the field, 1 when unreachable, never a traceback -----------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["reconstruct", "--out", "x.npy"], "give a JOB"),
        (["reconstruct", "--maps", "m.npy", "--out", "x.npy"], "exactly one of --job JOB"),
        (["reconstruct", "0" * 32, "--filters", "f.npy", "--out", "x.npy"], "go with --maps"),
        (["status", "f" * 32], f"job '{'f' * 32}' not found"),
        (["filters", "0" * 32, "--out", "x.npy"], f"job '{'0' * 32}' not found"),
        (["filters", "nothex", "--out", "x.npy"], "path.job_id: String should match pattern"),
        (["cancel", "0" * 32], "not found"),
    ],
)
def test_a_bad_request_exits_2_with_one_line(capsys, url, argv, message):
    status, _, err = _run(capsys, *argv, "--url", url)
    assert status == 2
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_results_of_a_job_that_did_not_succeed_exit_2(capsys, url, cancelled_id, tmp_path):
    status, _, err = _run(capsys, "filters", cancelled_id, "--url", url, "--out", str(tmp_path / "f.npy"))
    assert status == 2
    assert "is cancelled" in err
    assert not (tmp_path / "f.npy").exists()


def test_a_bad_job_file_is_refused_before_any_upload(capsys, url, job_file, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "images": str(job_file.parent / "images"), "n_iter": -1}))
    with DeconvClient(url) as client:
        before = len(list(client.jobs()))
    status, out, err = _run(capsys, "submit", str(bad), "--url", url)
    assert status == 2
    assert "n_iter" in err and "(got -1)" in err
    assert "uploaded" not in err and out == ""
    with DeconvClient(url) as client:
        assert len(list(client.jobs())) == before


def test_a_spec_that_does_not_fit_the_images_is_refused_by_the_service(capsys, url, job_file, tmp_path):
    spec = _spec_file(
        tmp_path, layers=[{"n_filters": 4, "filter_size": 40, "lam": 0.5}], images=str(job_file.parent / "images")
    )
    status, _, err = _run(capsys, "submit", str(spec), "--url", url)
    assert status == 2
    assert "layers.0.filter_size: filters of 40x40 are larger than the layer's input of 32x32" in err


def test_submit_without_images_or_dataset_is_a_usage_error(capsys, url, tmp_path):
    status, _, err = _run(capsys, "submit", str(_spec_file(tmp_path)), "--url", url)
    assert status == 2
    assert "--dataset" in err


def test_an_unreachable_service_exits_1_naming_the_url(capsys):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    status, _, err = _run(capsys, "status", "--url", f"http://127.0.0.1:{port}")
    assert status == 1
    assert f"http://127.0.0.1:{port}" in err
    assert "Traceback" not in err


def test_the_url_and_key_come_from_the_environment(capsys, monkeypatch, keyed_service):
    monkeypatch.setenv("DECONV_URL", keyed_service.url)
    status, _, err = _run(capsys, "status")
    assert status == 2
    assert "HTTP 401" in err and "X-API-Key" in err
    monkeypatch.setenv("DECONV_API_KEY", "k")
    status, _, _ = _run(capsys, "status")
    assert status == 0


@pytest.fixture(scope="module")
def keyed_service(tmp_path_factory):
    service = start_service(tmp_path_factory.mktemp("keyed"), api_key="k", run_jobs=False)
    yield service
    stop_service(service)


def test_wait_past_its_timeout_exits_4(capsys, keyed_service, job_file):
    with DeconvClient(keyed_service.url, api_key="k") as client:
        dataset = client.upload_dataset(sample_png_parts(1, 16))["id"]
        job = client.submit({**TINY, "dataset_id": dataset})["id"]  # this service runs no job: it stays queued
    status, _, err = _run(capsys, "wait", job, "--url", keyed_service.url, "--api-key", "k", "--timeout", "0.5")
    assert status == 4
    assert "still queued" in err


# -- serve ---------------------------------------------------------------------------------------------------------


def test_serve_refuses_a_bad_setting_naming_the_variable(capsys, monkeypatch):
    monkeypatch.setenv("DECONV_MAX_UPLOAD_BYTES", "lots")
    status, _, err = _run(capsys, "serve")
    assert status == 2
    assert "DECONV_MAX_UPLOAD_BYTES" in err and "'lots'" in err


def test_serve_answers_and_stops_on_sigint(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "DECONV_DATA_DIR": str(tmp_path / "data"), "DECONV_RUN_JOBS": "false"}  # no Ray to start
    process = subprocess.Popen(
        [sys.executable, "-m", "api.cli", "serve", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        health = _poll_health(f"http://127.0.0.1:{port}", process)
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert (health["status"], health["runner"]) == ("ok", "disabled")
    assert process.returncode == 0
    assert str(tmp_path / "data") in err and f"http://127.0.0.1:{port}" in err
    assert (tmp_path / "data" / "deconv.sqlite3").is_file()


def _poll_health(url: str, process: subprocess.Popen) -> dict:
    deadline = time.monotonic() + 60
    with DeconvClient(url, timeout=2) as client:
        while True:
            try:
                return client.health()
            except Exception:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


# -- demo ----------------------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_demo_writes_its_pictures(capsys, tmp_path):
    status, out, err = _run(capsys, "demo", "--out", str(tmp_path / "demo"), "--no-progress")
    assert status == 0, err
    names = {p.name for p in (tmp_path / "demo").iterdir()}
    assert names >= {
        "filters.png",
        "filters-layer2.png",
        "reconstructions.png",
        "objective.png",
        "filters.npy",
        "filters-layer2.npy",
        "history.json",
        "data",
    }
    assert np.load(tmp_path / "demo" / "filters.npy").shape == (16, 1, 7, 7)
    assert np.load(tmp_path / "demo" / "filters-layer2.npy").shape == (16, 16, 7, 7)
    history = json.loads((tmp_path / "demo" / "history.json").read_text())
    assert [sum(h["layer"] == layer for h in history) for layer in (1, 2)] == [40, 8]
    assert {
        Image.open(tmp_path / "demo" / n).format
        for n in ("filters.png", "filters-layer2.png", "reconstructions.png", "objective.png")
    } == {"PNG"}
    # layer-2 tiles are 13x13 pixel-space views, layer-1 tiles 7x7: the layer-2 montage is the larger picture
    layer1, layer2 = (Image.open(tmp_path / "demo" / n).size for n in ("filters.png", "filters-layer2.png"))
    assert layer2[0] > layer1[0] and layer2[1] > layer1[1]
    assert str((tmp_path / "demo").resolve()) in out


def test_submit_with_an_empty_images_folder_exits_2(capsys, url, tmp_path):
    (tmp_path / "empty").mkdir()
    status, _, err = _run(capsys, "submit", str(_spec_file(tmp_path, images="empty")), "--url", url)
    assert status == 2
    assert "holds no" in err and "Traceback" not in err


def test_the_demo_spec_is_a_valid_job_spec():
    from api.demo import quick_spec
    from workers.jobs.spec import JobSpec

    spec = JobSpec.model_validate({**quick_spec(), "dataset_id": "0" * 32})
    assert [layer.n_filters for layer in spec.layers] == [16, 16]
    assert spec.layers[1].connectivity == "random-doubles:2"


def test_the_demo_takes_a_preset_by_name_from_any_folder(tmp_path, monkeypatch):
    from api.demo import quick_spec
    from workers.jobs.spec import JobSpec

    monkeypatch.chdir(tmp_path)
    assert [layer["n_filters"] for layer in quick_spec()["layers"]] == [16, 16]
    assert [layer["n_filters"] for layer in quick_spec("quick")["layers"]] == [16]
    spec = JobSpec.model_validate({**quick_spec("zeiler2010"), "dataset_id": "0" * 32})
    assert [layer.n_filters for layer in spec.layers] == [9, 45]


def test_the_demo_takes_a_job_file_that_names_its_images(tmp_path, capsys):
    """The job-file format of deconv learn and submit: its images are left out, the demo learns on the samples."""
    from api.demo import quick_spec

    job = tmp_path / "job.yaml"
    job.write_text("images: imgs\nlayers:\n  - {n_filters: 4, filter_size: 5, lam: 0.2}\nn_iter: 3\n")
    spec = quick_spec(job)
    assert "images" not in spec and spec["layers"][0]["n_filters"] == 4 and spec["n_iter"] == 3
    assert "learning on the sample images" in capsys.readouterr().err


def test_the_demo_refuses_a_bad_job_file_before_starting_anything(tmp_path, capsys):
    job = tmp_path / "job.yaml"
    job.write_text("layers:\n  - {n_filters: 4, filter_size: 5, lam: -1}\n")
    status, out, err = _run(capsys, "demo", "--config", str(job), "--out", str(tmp_path / "out"))
    assert status == 2
    assert err.startswith(f"deconv demo: error: {job}: layers.0.lam") and "Traceback" not in err
    assert "starting the service" not in out and not (tmp_path / "out" / "data").exists()


def test_the_demo_with_an_unknown_preset_exits_2_listing_the_presets(capsys, tmp_path):
    status, _, err = _run(capsys, "demo", "--config", "zeiler2012", "--out", str(tmp_path / "out"))
    assert status == 2
    assert "unknown preset 'zeiler2012'" in err and "demo, online, quick, zeiler2010" in err


def test_without_samples_the_demo_takes_scikit_image_pictures_of_one_size(monkeypatch):
    pytest.importorskip("skimage")
    import api.demo

    monkeypatch.setattr(api.demo, "sample_paths", list)
    parts = api.demo.sample_images()
    assert len(parts) == 8
    assert {Image.open(io.BytesIO(data)).size for _, data in parts} == {(128, 128)}
    assert {Image.open(io.BytesIO(data)).mode for _, data in parts} == {"L"}
