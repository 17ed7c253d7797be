"""One service per data folder: a second one started on a live service's folder refuses to start and leaves the
live one, its Ray cluster and its jobs alone; a killed holder's folder is free again at once."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from api import datalock
from api.exits import EXIT_USAGE
from tests.api.conftest import ROOT, sample_png_parts, wait_for_job
from tests.workers.cluster_harness import session_processes

_HOLDER = textwrap.dedent(
    """
    import sys, time
    from api import datalock
    datalock.acquire(sys.argv[1])
    print("held", flush=True)
    time.sleep(600)
    """
)


def _hold_in_another_process(folder: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(folder)], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_folder_held_by_another_process_is_refused_naming_that_process(tmp_path):
    holder = _hold_in_another_process(tmp_path)
    try:
        with pytest.raises(
            datalock.DataDirInUse, match=rf"{tmp_path}.*in use by another deconv service \(pid {holder.pid},"
        ):
            datalock.acquire(tmp_path)
    finally:
        holder.kill()
        holder.wait(10)


def test_the_folder_of_a_killed_holder_is_free_at_once(tmp_path):
    holder = _hold_in_another_process(tmp_path)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    folder = datalock.acquire(tmp_path)
    try:
        assert f"pid {os.getpid()}," in (tmp_path / datalock.LOCK_NAME).read_text()
    finally:
        datalock.release(folder)


def test_the_lock_is_counted_within_a_process(tmp_path):
    first = datalock.acquire(tmp_path)
    second = datalock.acquire(tmp_path)  # the server and the app's lifespan both hold it
    datalock.release(second)
    holder_env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = [sys.executable, "-c", f"from api import datalock; datalock.acquire({str(tmp_path)!r})"]
    still_held = subprocess.run(probe, cwd=ROOT, env=holder_env, capture_output=True, text=True, timeout=60)
    assert still_held.returncode != 0 and "DataDirInUse" in still_held.stderr
    datalock.release(first)
    free = subprocess.run(probe, cwd=ROOT, env=holder_env, capture_output=True, text=True, timeout=60)
    assert free.returncode == 0, free.stderr


def _cluster_daemons(session: int) -> set[int]:
    """The GCS server and raylet processes of a session (its Ray workers come and go on their own)."""
    found = set()
    for pid in session_processes(session):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
        except OSError:
            continue
        if command.endswith((b"gcs_server", b"raylet")):
            found.add(pid)
    return found


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.ray
@pytest.mark.slow
@pytest.mark.timeout(300)
def test_a_second_serve_on_a_live_service_s_folder_refuses_and_leaves_it_running(tmp_path):
    httpx2 = pytest.importorskip("httpx2")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECONV_", "RAY_ADDRESS"))}
    env |= {"PYTHONPATH": str(ROOT), "DECONV_NUM_CPUS": "2"}
    data = tmp_path / "data"
    port = _free_port()
    serve = [sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data)]
    log = (tmp_path / "first.log").open("wb")
    first = subprocess.Popen(
        [*serve, "--port", str(port)], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
    )
    client = httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if client.get("/health").status_code == 200:
                    break
            except httpx2.TransportError:
                pass
            assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()
            time.sleep(0.2)
        dataset = client.post("/datasets", files=[("files", part) for part in sample_png_parts(2, 32)]).json()["id"]
        spec = {"dataset_id": dataset, "layers": [{"n_filters": 4, "filter_size": 5, "lam": 0.5}], "n_iter": 40}
        job = client.post("/jobs", json=spec).json()["id"]
        wait_for_job(client, job, lambda j: j["status"] == "running")
        cluster = _cluster_daemons(first.pid)
        assert len(cluster) >= 2  # the live service's GCS server and raylet

        second = subprocess.run(
            [*serve, "--port", str(_free_port())], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )

        assert second.returncode == EXIT_USAGE
        assert f"in use by another deconv service (pid {first.pid}," in second.stderr
        assert "Traceback" not in second.stderr
        assert cluster <= _cluster_daemons(first.pid)  # the live cluster was not stopped
        done = wait_for_job(client, job, timeout=240)
        assert done["status"] == "succeeded", done
        assert done["attempts"] == 1  # run once, by the first service only
        assert "requeued" not in (tmp_path / "first.log").read_text()
    finally:
        client.close()
        os.killpg(first.pid, signal.SIGTERM)
        first.wait(60)
        log.close()


def test_the_demo_on_a_held_folder_names_only_its_own_option(tmp_path, capsys):
    from api.cli import main  # noqa: PLC0415

    holder = _hold_in_another_process(tmp_path / "data")
    try:
        status = main(["demo", "--out", str(tmp_path / "out"), "--data-dir", str(tmp_path / "data"), "--no-progress"])
    finally:
        holder.kill()
        holder.wait(10)
    assert status == EXIT_USAGE
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("deconv demo: error: the data folder ") and last.endswith("another data folder (--data-dir)")
