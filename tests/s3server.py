"""A local S3-compatible server for the tests of the store on ``s3://`` (moto's server, the ``moto[server]`` test
dependency), started as a subprocess on a free loopback port and stopped by its pid.

:func:`s3_server` is a session fixture: it sets the usual ``AWS_*`` variables (``AWS_ENDPOINT_URL`` pointing at the
server) for the whole session and creates a bucket. Ray's worker processes take their environment from the
cluster's start, so a Ray cluster already running is shut down first: the next ``ray_session`` (or a service's
runner) starts one whose shard actors reach the server.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

BUCKET = "deconv-tests"


@dataclass(frozen=True)
class S3Server:
    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        """``s3://<bucket>/<unique prefix>/<parts>``: a fresh place for one test."""
        return "/".join([f"s3://{self.bucket}", uuid.uuid4().hex, *parts])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    pytest.importorskip("moto.server", reason="the S3 tests need moto[server] (a test dependency)")
    pytest.importorskip("s3fs", reason="the S3 tests need s3fs (the 's3' extra)")
    port = _free_port()
    process = subprocess.Popen(  # noqa: S603  (our own interpreter, fixed arguments)
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise RuntimeError("the moto S3 server did not start") from None
                time.sleep(0.1)
        variables = {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }
        with pytest.MonkeyPatch.context() as patch:
            for name, value in variables.items():
                patch.setenv(name, value)
            import s3fs  # noqa: PLC0415

            s3fs.S3FileSystem.clear_instance_cache()
            s3fs.S3FileSystem().mkdir(BUCKET)
            _restart_ray()
            yield S3Server(endpoint, BUCKET)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()


def _restart_ray() -> None:
    """Shut down a Ray cluster this process started, so that the next one's workers see the S3 variables."""
    if "ray" not in sys.modules:
        return
    import ray  # noqa: PLC0415

    if ray.is_initialized():
        ray.shutdown()
