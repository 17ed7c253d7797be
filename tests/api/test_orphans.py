"""A service killed with SIGKILL during a job leaves its local Ray cluster's agents running; the next service on
the same data folder stops them before it starts its own cluster, and resumes the job; SIGTERM in the middle of
an outer iteration (a coding step of 10,000 ADMM iterations) stops that service within 10 s, the job interrupted
and still queued for the next start. Two real services in subprocesses, each with a private local Ray cluster:
slow."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from api.orphans import PID_FILE, _descendants, _is_ray, _start_time
from tests.api.conftest import sample_png_parts
from workers.jobs.status import TERMINAL
from workers.jobs.store import JobStore

httpx2 = pytest.importorskip("httpx2")

ROOT = Path(__file__).resolve().parents[2]
SERVE = (
    "import logging, sys\n"
    "logging.basicConfig(level=logging.INFO, stream=sys.stderr, format='%(name)s %(message)s')\n"
    "from api.serve import serve\n"
    "from api.settings import Settings\n"
    "sys.exit(serve(Settings(data_dir=sys.argv[1], num_cpus=1), port=int(sys.argv[2])))\n"
)


def _start(data_dir: Path, log: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECONV_", "RAY_"))}
    env["PYTHONPATH"] = str(ROOT)
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(data_dir), str(port)],
        env=env,
        cwd=ROOT,
        stdout=log.open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 240
    while True:
        try:
            if httpx2.get(url + "/health", timeout=5).json()["runner"] == "running":
                return process, url
        except (httpx2.TransportError, ValueError, KeyError):
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("the service did not start")
        time.sleep(0.5)


# a coding step of 10,000 ADMM iterations on two 128² images with 16 filters: a stop a few seconds into it
# lands in the middle of it on any machine (on two 64² images with 8 filters a quiet machine finished it in 3 s)
LONG_JOB = {
    "layers": [{"n_filters": 16, "filter_size": 7, "lam": 0.1}],
    "inference": {"method": "admm", "max_iter": 10_000},
    "n_iter": 100,
}


def _job_when(url: str, job_id: str, until, timeout: float = 240) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = httpx2.get(f"{url}/jobs/{job_id}", timeout=10).json()
        if until(job):
            return job
        assert job["status"] not in TERMINAL and time.monotonic() < deadline, job
        time.sleep(0.5)


def _log_says(log: Path, text: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while text not in log.read_text(errors="replace"):
        assert time.monotonic() < deadline, f"{text!r} not in the log after {timeout} s"
        time.sleep(0.2)


def _alive(pids: list[tuple[int, int | None]]) -> list[int]:
    return [pid for pid, start in pids if start is not None and _start_time(pid) == start]


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_a_killed_service_s_ray_processes_are_stopped_and_its_job_resumes_and_sigterm_is_quick(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    first, url = _start(data_dir, tmp_path / "first.log")
    files = [("files", (name, data, "image/png")) for name, data in sample_png_parts(2, 128)]
    dataset = httpx2.post(f"{url}/datasets", files=files, timeout=30).json()["id"]
    job_id = httpx2.post(f"{url}/jobs", json={**LONG_JOB, "dataset_id": dataset}, timeout=30).json()["id"]
    _job_when(url, job_id, lambda job: job["status"] == "running")
    time.sleep(10)  # the raylet starts its agents after ray.init returns; the shard actors start
    tree = [(pid, _start_time(pid)) for pid in _descendants(first.pid) if _is_ray(pid)]
    assert (data_dir / PID_FILE).is_file()
    os.kill(first.pid, signal.SIGKILL)
    first.wait(30)
    time.sleep(5)
    left = _alive(tree)
    assert left, "no Ray process outlived the killed service"  # what the record is for
    second, url = _start(data_dir, tmp_path / "second.log")
    try:
        assert _alive([(pid, start) for pid, start in tree if pid in left]) == []
        _job_when(url, job_id, lambda job: job["status"] == "running" and job["attempts"] == 2)
        # the shard actor has its images once the rescale is fitted; then come its coding step and the filter
        # step's power iteration, seconds each: a stop 3 s on lands in one of their calls (which one depends on
        # the machine's speed, and does not matter here)
        _log_says(tmp_path / "second.log", "rescale statistics")
        time.sleep(3)
    finally:
        started = time.monotonic()
        second.send_signal(signal.SIGTERM)
        second.wait(60)
        stopped_in = time.monotonic() - started
    assert stopped_in < 10, stopped_in
    full_log = (tmp_path / "second.log").read_text(errors="replace")
    log = full_log[-5000:]
    # the job thread ended by itself, its shard calls interrupted, not cut off by the cluster's shutdown
    assert "did not stop within" not in full_log, log
    assert re.search(r"interrupted during '\w+': 1 of 1 shard call\(s\) stopped within", full_log), log
    assert f"job {job_id}: back in the queue (the service is stopping)" in full_log, log
    assert not (data_dir / PID_FILE).exists(), log  # a clean stop forgets its cluster
    store = JobStore(data_dir)
    assert store.get_job(job_id).status not in TERMINAL  # it resumes on the next start
    store.close()
