"""A service killed mid-job (SIGKILL, with its private Ray cluster) and started again on the same data directory:
the job resumes from its last checkpoint, succeeds, and every artifact downloads intact.

The service runs as a real subprocess in its own session, and the test kills the whole process group: a SIGKILL of
the server process alone takes gcs_server, raylet and the shard workers with it (they share its fate), but Ray's
dashboard and runtime-env agents (ray 2.60) notice the raylet's death, try to report it to the dead GCS and linger
for about a minute before they exit.

Marked slow: two private Ray clusters start (about 10 s each on the 2-core test machine), and the whole module takes
40-55 s there. The graceful restart (test_restart.py) runs in the default suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.api.conftest import ROOT, sample_png_parts, wait_for_job
from tests.workers.cluster_harness import session_processes

httpx2 = pytest.importorskip("httpx2")
pytest.importorskip("ray")

pytestmark = [pytest.mark.ray, pytest.mark.slow, pytest.mark.timeout(240)]

# The app under uvicorn, with INFO logs on stderr (the runner and coordinator say when they resume).
_SERVER = """
import logging, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
import uvicorn
uvicorn.run("api.app:create_app", factory=True, host="127.0.0.1", port=int(sys.argv[1]), log_level="warning")
"""
SPEC = {
    "layers": [{"n_filters": 8, "filter_size": 5, "lam": 0.5}],
    "n_iter": 10,
    "inference": {"method": "admm", "max_iter": 20},
    "filter_update": {"max_iter": 5},
    "seed": 4,
}


@dataclass
class ServerProcess:
    process: subprocess.Popen
    client: httpx2.Client
    log: Path

    def kill(self) -> None:
        """SIGKILL the whole session (the server and every Ray process it started), reap, wait until all gone."""
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.process.wait(30)
        self.client.close()
        deadline = time.monotonic() + 30
        while session_processes(self.process.pid) and time.monotonic() < deadline:
            time.sleep(0.1)

    def text(self) -> str:
        return self.log.read_text(errors="replace")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(data_dir: Path, log: Path) -> ServerProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DECONV_", "RAY_ADDRESS"))}
    env |= {"DECONV_DATA_DIR": str(data_dir), "DECONV_CHECKPOINT_EVERY": "1", "PYTHONPATH": str(ROOT)}
    port = _free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _SERVER, str(port)],
        cwd=ROOT,
        env=env,
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    server = ServerProcess(process, httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=30), log)
    deadline = time.monotonic() + 60
    while True:
        try:
            if server.client.get("/health").status_code == 200:
                return server
        except httpx2.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            server.kill()
            raise RuntimeError(f"the service did not start:\n{server.text()[-3000:]}")
        time.sleep(0.1)


@dataclass
class Resumed:
    server: ServerProcess  # the second service, still running
    dataset_id: str
    job: dict
    history_before: list[dict]
    history_after: list[dict]
    first_log: str
    artifacts: list[dict]
    downloads: dict[str, bytes]
    leftovers: list[int]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory) -> Iterator[Resumed]:
    """Submit, kill the service once a checkpoint exists, start a new one on the same data dir, let the job end."""
    root = tmp_path_factory.mktemp("restart")
    first = _start(root / "data", root / "first.log")
    try:
        dataset = first.client.post(
            "/datasets", files=[("files", (name, data, "image/png")) for name, data in sample_png_parts(3, 64)]
        ).json()
        job_id = first.client.post("/jobs", json={**SPEC, "dataset_id": dataset["id"]}).json()["id"]
        wait_for_job(first.client, job_id, lambda j: j["progress"]["iteration"] >= 3)
        history_before = first.client.get(f"/jobs/{job_id}/history").json()
    finally:
        first.kill()
    leftovers = session_processes(first.process.pid)
    second = _start(root / "data", root / "second.log")
    try:
        job = wait_for_job(second.client, job_id, lambda j: j["status"] == "succeeded")
        artifacts = second.client.get(f"/jobs/{job_id}/artifacts").json()
        downloads = {a["name"]: second.client.get(a["url"]).content for a in artifacts}
        history_after = second.client.get(f"/jobs/{job_id}/history").json()
        yield Resumed(
            second, dataset["id"], job, history_before, history_after, first.text(), artifacts, downloads, leftovers
        )
    finally:
        second.kill()


@pytest.fixture(scope="module")
def uninterrupted(resumed) -> dict:
    """The same spec run again, without a kill, on the second service."""
    client = resumed.server.client
    job_id = client.post("/jobs", json={**SPEC, "dataset_id": resumed.dataset_id}).json()["id"]
    wait_for_job(client, job_id, lambda j: j["status"] == "succeeded")
    return {
        "history": client.get(f"/jobs/{job_id}/history").json(),
        "filters": client.get(f"/jobs/{job_id}/filters").content,
    }


def test_the_killed_service_leaves_no_process_behind(resumed):
    assert resumed.leftovers == []


def test_the_job_was_mid_run_when_the_service_died(resumed):
    iterations = [h["iteration"] for h in resumed.history_before]
    assert 3 <= len(iterations) < SPEC["n_iter"]
    assert "resuming from" not in resumed.first_log  # the first attempt started fresh
    assert "checkpoint of iteration 3 written" in resumed.first_log


def test_the_job_resumes_from_its_checkpoint_and_succeeds(resumed):
    second_log = resumed.server.text()
    match = re.search(r"resuming from \S+ \(outer iteration (\d+)\)", second_log)
    assert resumed.job["status"] == "succeeded"
    assert resumed.job["attempts"] == 2
    assert match is not None, second_log[-3000:]
    assert int(match.group(1)) >= len(resumed.history_before)
    assert f"{resumed.job['id']}/checkpoints/L1: starting from scratch" not in second_log


def test_the_iterations_done_before_the_kill_are_not_run_again(resumed):
    after = {h["iteration"]: h for h in resumed.history_after}
    assert sorted(after) == list(range(1, SPEC["n_iter"] + 1))
    assert [after[h["iteration"]] for h in resumed.history_before] == resumed.history_before  # same elapsed too


def test_the_resumed_run_follows_the_uninterrupted_one(resumed, uninterrupted):
    resumed_objectives = [h["objective"] for h in resumed.history_after]
    reference_objectives = [h["objective"] for h in uninterrupted["history"]]
    assert resumed_objectives == pytest.approx(reference_objectives, rel=1e-6)
    assert resumed.downloads["filters-L1.npy"] == uninterrupted["filters"]


def test_every_artifact_downloads_with_its_sha256(resumed):
    names = {a["name"] for a in resumed.artifacts}
    index = json.loads(resumed.downloads["shards.json"])
    assert {
        "filters-L1.npy",
        "filters-L1.png",
        "shards.json",
        *index["layers"][0]["maps"],
        *index["reconstructions"],
        "history.json",
        "model.json",
    } <= names
    assert {a["name"]: hashlib.sha256(resumed.downloads[a["name"]]).hexdigest() for a in resumed.artifacts} == {
        a["name"]: a["sha256"] for a in resumed.artifacts
    }
    assert {a["name"]: len(resumed.downloads[a["name"]]) for a in resumed.artifacts} == {
        a["name"]: a["size"] for a in resumed.artifacts
    }
