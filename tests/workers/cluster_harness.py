"""A two-node Ray cluster on this one machine whose worker node cannot see the service's data folder, with a local
S3-compatible server: what a real deployment on two machines looks like to deconv.

- an S3 server (moto's, on 127.0.0.1, a free port) and a bucket: the artifact store every node reads and writes;
- a Ray head (``ray start --head --num-cpus=0``) on 127.0.0.1 with its own temp folder: it offers no CPU, so every
  shard actor (1 CPU each) must run on the other node;
- the hidden node: ``ray start --address`` on 127.0.0.2, inside a mount namespace (``unshare -m``, root) in which
  an empty tmpfs covers the service's data folder, with 2 CPUs and the custom resource ``hidden``;
- ``deconv serve`` on the head's side (``DECONV_RAY_ADDRESS`` = the head, ``DECONV_ARTIFACTS`` = the bucket), or
  ``deconv learn --address`` against the same cluster.

Every process starts in a session of its own and is stopped by that session (SIGTERM, then SIGKILL of whatever is
left in it), never by name: ``ray stop`` would stop every Ray on the machine, other users' included.
:func:`unavailable` says why the harness cannot run here (not root, no ``unshare``, no mount namespaces, moto or
s3fs missing), for a skip.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
HEAD_IP = "127.0.0.1"
HIDDEN_IP = "127.0.0.2"  # another address on the loopback: the service's driver attaches to the head, not to it
HIDDEN_CPUS = 2
HIDDEN_RESOURCE = "hidden"
BUCKET = "deconv-test"
MARKER = "seen-only-by-the-service"  # a file in the data folder: the probe on the hidden node must not list it
_AWS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_RAY_BIN = Path(sys.executable).with_name("ray")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def unavailable() -> str | None:
    """Why the harness cannot run on this machine (None when it can)."""
    for module in ("moto", "s3fs", "boto3", "ray"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (the test extra: moto[server], s3fs)"
    if not _RAY_BIN.is_file():
        return f"the ray command is not beside {sys.executable}"
    if os.geteuid() != 0:
        return "a mount namespace with a tmpfs over the data folder needs root (unshare -m)"
    if shutil.which("unshare") is None:
        return "the unshare command (util-linux) is not installed"
    with tempfile.TemporaryDirectory() as folder:
        probe = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "mount", "-t", "tmpfs", "-o", "size=1m", "probe", folder],
            capture_output=True,
            text=True,
            check=False,
        )
    if probe.returncode != 0:
        return f"unshare -m with a tmpfs mount is not permitted here: {probe.stderr.strip() or probe.returncode}"
    return None


def session_processes(session: int) -> list[int]:
    """Live (not zombie) processes of a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if os.getsid(int(entry.name)) == session and " Z " not in (entry / "stat").read_text().split(")")[-1][:4]:
                found.append(int(entry.name))
        except (OSError, ValueError):
            continue
    return found


def stop_session(process: subprocess.Popen, *, grace: float = 15.0) -> None:
    """SIGTERM the session `process` leads, wait up to `grace` s, SIGKILL what is left in it, reap."""
    session = process.pid
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 30.0)):
        for pid in session_processes(session):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + wait
        while session_processes(session) and time.monotonic() < deadline:
            if process.poll() is None:
                try:
                    process.wait(0.1)
                except subprocess.TimeoutExpired:
                    pass
            else:
                time.sleep(0.1)
        if not session_processes(session):
            break
    try:
        process.wait(5)
    except subprocess.TimeoutExpired:
        logger.warning("process %d did not exit", process.pid)


@dataclass
class Service:
    """A ``deconv serve`` process on the cluster."""

    process: subprocess.Popen
    url: str
    log: Path

    def kill(self) -> None:
        """SIGKILL the service (and anything in its session), as a crash would."""
        for pid in session_processes(self.process.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(30)

    def stop(self) -> None:
        stop_session(self.process, grace=30.0)

    def text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.is_file() else ""


@dataclass
class TwoNodeCluster:
    """The running harness (see the module docstring); a context manager that stops everything it started."""

    root: Path
    data_dir: Path
    s3_endpoint: str
    head_address: str
    processes: dict[str, subprocess.Popen] = field(default_factory=dict)
    services: list[Service] = field(default_factory=list)
    hidden_node_id: str | None = None
    # Ray 2.60 turns on token authentication for a `ray start` head: every node and driver of this cluster gets
    # the same private token (never ~/.ray/auth_token, which other users' clusters may read)
    auth_token: str = field(default_factory=lambda: secrets.token_hex(32))

    @property
    def s3_url(self) -> str:
        return f"s3://{BUCKET}"

    def env(self, **extra: str) -> dict[str, str]:
        """The environment of every process here: this one's without DECONV_* and RAY_ADDRESS, the S3 endpoint
        and credentials, and this checkout first on the import path."""
        base = {k: v for k, v in os.environ.items() if not k.startswith(("DECONV_", "RAY_", "AWS_"))}
        return {
            **base,
            **_AWS,
            "AWS_ENDPOINT_URL": self.s3_endpoint,
            "PYTHONPATH": str(ROOT),
            "RAY_USAGE_STATS_ENABLED": "0",
            "RAY_AUTH_MODE": "token",
            "RAY_AUTH_TOKEN": self.auth_token,
            # on a busy machine a node's dashboard agent takes 20-30 s to import its modules, and the raylet gives
            # up waiting for it after 30 s by default
            "RAY_agent_register_timeout_ms": "180000",
            "RAY_worker_register_timeout_seconds": "180",
            # Ray's OOM killer weighs the whole machine's memory: on a shared test machine another program's peak
            # would kill these small shard actors (measured: a 21 GB neighbour did), so it is off on these nodes
            "RAY_memory_monitor_refresh_ms": "0",
            **extra,
        }

    # -- start ------------------------------------------------------------------------------------------------

    def start(self) -> TwoNodeCluster:
        try:
            self._start_s3()
            self._start_head()
            self._start_hidden_node()
            self.wait_for_nodes()
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: list[str], **extra: str) -> subprocess.Popen:
        log = self.root / f"{name}.log"
        process = subprocess.Popen(
            command,
            cwd=ROOT,
            env=self.env(**extra),
            stdin=subprocess.DEVNULL,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        return process

    def _start_s3(self) -> None:
        port = int(self.s3_endpoint.rsplit(":", 1)[1])
        self._spawn("s3", [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)])
        deadline = time.monotonic() + 60
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    break
            except OSError:
                if time.monotonic() > deadline or self.processes["s3"].poll() is not None:
                    raise RuntimeError(f"the S3 server did not start:\n{self.log('s3')}") from None
                time.sleep(0.2)
        import boto3  # noqa: PLC0415

        boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_credentials()).create_bucket(Bucket=BUCKET)

    def _node_ports(self) -> list[str]:
        return [
            f"--node-manager-port={free_port()}",
            f"--object-manager-port={free_port()}",
            f"--dashboard-agent-listen-port={free_port()}",
            f"--dashboard-agent-grpc-port={free_port()}",
            f"--metrics-export-port={free_port()}",
            f"--runtime-env-agent-port={free_port()}",
        ]

    def _start_head(self) -> None:
        port = int(self.head_address.rsplit(":", 1)[1])
        self._spawn(
            "head",
            [
                str(_RAY_BIN),
                "start",
                "--head",
                "--block",
                f"--port={port}",
                f"--node-ip-address={HEAD_IP}",
                "--num-cpus=0",
                "--num-gpus=0",
                f"--temp-dir={self.root / 'ray-head'}",
                "--include-dashboard=false",
                "--disable-usage-stats",
                "--object-store-memory=100000000",
                *self._node_ports(),
            ],
        )

    def _start_hidden_node(self) -> None:
        ray_start = [
            str(_RAY_BIN),
            "start",
            "--block",
            f"--address={self.head_address}",
            f"--node-ip-address={HIDDEN_IP}",
            f"--num-cpus={HIDDEN_CPUS}",
            "--num-gpus=0",
            f"--resources={json.dumps({HIDDEN_RESOURCE: 100})}",
            f"--temp-dir={self.root / 'ray-hidden'}",
            "--disable-usage-stats",
            "--object-store-memory=100000000",
            *self._node_ports(),
        ]
        # The tmpfs is mounted in the node's own mount namespace: the service's folder stays as it is for everyone
        # else, and every Ray process of the node (raylet, workers, shard actors) sees an empty folder there.
        script = 'mount -t tmpfs -o size=1m deconv-hidden "$0" && exec "$@"'
        self._spawn(
            "hidden",
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, str(self.data_dir), *ray_start],
        )

    def wait_for_nodes(self, timeout: float = 180.0) -> dict:
        """Wait until both nodes are up, and check from a Ray task on the hidden node that the data folder is
        empty there; returns what the probe saw (``nodes``, ``hidden_node_id``, ``listing``)."""
        probe = f"""
import json, os, ray
ray.init(address={self.head_address!r}, log_to_driver=False)
import time
deadline = time.monotonic() + {timeout}
while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
    time.sleep(0.5)
@ray.remote(num_cpus=1, resources={{{HIDDEN_RESOURCE!r}: 1}})
def look():
    return ray.get_runtime_context().get_node_id(), sorted(os.listdir({str(self.data_dir)!r}))
node, listing = ray.get(look.remote(), timeout={timeout})
print(json.dumps({{"nodes": len([n for n in ray.nodes() if n["Alive"]]), "hidden_node_id": node, "listing": listing}}))
"""
        deadline = time.monotonic() + timeout
        while True:
            result = subprocess.run(
                [sys.executable, "-c", probe],
                cwd=ROOT,
                env=self.env(),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
            if result.returncode == 0:
                seen = json.loads(result.stdout.strip().splitlines()[-1])
                self.hidden_node_id = seen["hidden_node_id"]
                return seen
            for name in ("head", "hidden"):
                if self.processes[name].poll() is not None:
                    raise RuntimeError(f"the Ray {name} node stopped:\n{self.log(name)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not come up: {result.stderr[-3000:]}")
            time.sleep(1.0)

    # -- the service and the CLI ----------------------------------------------------------------------------------

    def start_service(self, name: str = "service", *, on_cluster: bool = True, **settings: str) -> Service:
        """``deconv serve`` on this side of the cluster with the S3 store, or (`on_cluster` False) a single-node
        one in a folder of its own with a private local Ray of 2 CPUs (a reference); `settings` are more
        DECONV_* values."""
        port = free_port()
        if on_cluster:
            env = {
                "DECONV_DATA_DIR": str(self.data_dir),
                "DECONV_ARTIFACTS": f"{self.s3_url}/artifacts",
                "DECONV_RAY_ADDRESS": self.head_address,
            }
        else:
            env = {"DECONV_DATA_DIR": str(self.root / f"{name}-data"), "DECONV_NUM_CPUS": "2"}
        env |= settings
        log = self.root / f"{name}.log"
        process = self._spawn(name, [sys.executable, "-m", "api.cli", "serve", "--port", str(port)], **env)
        service = Service(process, f"http://127.0.0.1:{port}", log)
        self.services.append(service)
        deadline = time.monotonic() + 120
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return service
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the service did not start:\n{service.text()[-3000:]}") from None
                time.sleep(0.2)

    def run_cli(self, *args: str, timeout: float = 600, **extra: str) -> subprocess.CompletedProcess:
        """``deconv ARGS`` as a process of this harness's environment (`extra`: more variables)."""
        return subprocess.run(
            [sys.executable, "-m", "api.cli", *args],
            cwd=ROOT,
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def put_file(self, key: str, data: bytes) -> str:
        """Write `data` to the bucket under `key`; returns its s3:// URL."""
        import boto3  # noqa: PLC0415

        boto3.client("s3", endpoint_url=self.s3_endpoint, **_boto_credentials()).put_object(
            Bucket=BUCKET, Key=key, Body=data
        )
        return f"{self.s3_url}/{key}"

    def actor_nodes(self, class_name: str = "ShardWorker") -> list[dict]:
        """Every actor of `class_name` (shard actors by default) the cluster has seen, alive or dead: state, node
        id, pid (from the GCS's actor table, which needs no dashboard; ``ray list actors`` shows the same with
        one)."""
        script = f"""
import json, ray
from ray._private.state import actors
ray.init(address={self.head_address!r}, log_to_driver=False)
rows = [a for a in actors().values() if a["ActorClassName"] == {class_name!r}]
print(json.dumps([{{"state": a["State"], "node_id": a["Address"]["NodeID"], "pid": a["Pid"]}} for a in rows]))
"""
        result = subprocess.run(
            [sys.executable, "-c", script],
            cwd=ROOT,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"cannot list the actors: {result.stderr[-3000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])

    def log(self, name: str) -> str:
        path = self.root / f"{name}.log"
        return path.read_text(errors="replace")[-4000:] if path.is_file() else ""

    # -- stop -----------------------------------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop the services, the hidden node, the head and the S3 server (each by its session), in that order."""
        for service in self.services:
            if service.process.poll() is None or session_processes(service.process.pid):
                service.stop()
        for name in ("hidden", "head", "s3"):
            process = self.processes.get(name)
            if process is not None:
                stop_session(process)
        if os.environ.get("DECONV_KEEP_CLUSTER_LOGS"):  # for a look at the nodes' and services' logs afterwards
            logger.warning("the two-node harness left its folder %s", self.root)
        else:
            shutil.rmtree(self.root, ignore_errors=True)  # Ray's session folders, the logs, the service's data

    def __enter__(self) -> TwoNodeCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _boto_credentials() -> dict[str, str]:
    return {
        "aws_access_key_id": _AWS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": _AWS["AWS_SECRET_ACCESS_KEY"],
        "region_name": _AWS["AWS_DEFAULT_REGION"],
    }


def start_two_node_cluster(root: Path | None = None) -> TwoNodeCluster:
    """Start the whole harness under `root` (a short new temp folder by default: Ray's socket paths must stay
    under 108 bytes); stop it with :meth:`TwoNodeCluster.stop`."""
    root = Path(tempfile.mkdtemp(prefix="dcv2n-", dir="/tmp")) if root is None else Path(root)
    data_dir = root / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("the hidden node must not see this file\n")
    cluster = TwoNodeCluster(root, data_dir, f"http://127.0.0.1:{free_port()}", f"{HEAD_IP}:{free_port()}")
    return cluster.start()
