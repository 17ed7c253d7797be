"""A store that is missing or does not answer, named in a setting or on the command line, fails at once in one line
naming the setting, before Ray starts or any job runs; and no bucket is ever created for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from api.cli import main
from api.exits import EXIT_FAILED, EXIT_USAGE
from configs import sample_paths
from tests.api.conftest import ROOT
from tests.s3server import s3_server  # noqa: F401  (the session's S3 server)


def _no_bucket(name: str) -> bool:
    import s3fs  # noqa: PLC0415

    return not s3fs.S3FileSystem().exists(name)


def _one_line(err: str) -> str:
    """The error, alone: no traceback, and no line of the S3 client's before it."""
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    return lines[0]


@pytest.mark.timeout(60)
def test_learn_into_a_missing_bucket_exits_2_before_ray_starts(s3_server, tmp_path, capsys):  # noqa: F811
    started = time.monotonic()
    status = main(["learn", "quick", "--images", str(sample_paths()[0]), "--out", "s3://no-such-out/run"])
    assert status == EXIT_USAGE
    assert time.monotonic() - started < 20  # no Ray cluster was started, no iteration ran
    line = _one_line(capsys.readouterr().err)
    assert line.startswith("deconv learn: error: --out: the bucket 'no-such-out' of s3://no-such-out/run does not")
    assert _no_bucket("no-such-out")


@pytest.mark.timeout(60)
def test_learn_from_a_missing_bucket_says_so_rather_than_no_images(s3_server, tmp_path, capsys):  # noqa: F811
    status = main(["learn", "quick", "--images", "s3://no-such-images/set/", "--out", str(tmp_path / "out")])
    assert status == EXIT_USAGE
    line = _one_line(capsys.readouterr().err)
    assert "--images: the bucket 'no-such-images' of s3://no-such-images/set/ does not exist" in line
    assert not (tmp_path / "out").exists()


def _serve(data_dir, **env) -> subprocess.CompletedProcess:
    """``deconv serve`` in a process of its own, so that a regression (a service that starts) fails by its timeout."""
    environ = {**os.environ, **env}
    command = [sys.executable, "-m", "api.cli", "serve", "--data-dir", str(data_dir), "--port", "0"]
    return subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)


def test_serve_refuses_to_start_on_a_missing_artifacts_bucket_and_creates_none(s3_server, tmp_path):  # noqa: F811
    done = _serve(tmp_path / "data", DECONV_ARTIFACTS="s3://no-such-artifacts/deconv")
    assert done.returncode == EXIT_USAGE, done.stderr
    line = _one_line(done.stderr)
    assert line.startswith("deconv serve: error: DECONV_ARTIFACTS: the bucket 'no-such-artifacts'")
    assert _no_bucket("no-such-artifacts")


def test_serve_with_an_endpoint_nobody_answers_exits_1_naming_it(s3_server, tmp_path):  # noqa: F811
    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    endpoint, work = f"http://127.0.0.1:{port}", s3_server.url("work")
    started = time.monotonic()
    done = _serve(tmp_path / "data", AWS_ENDPOINT_URL=endpoint, DECONV_WORK_URL=work)
    assert done.returncode == EXIT_FAILED, done.stderr
    assert time.monotonic() - started < 15  # the client's retries would take minutes
    assert _one_line(done.stderr) == (
        f"deconv serve: error: DECONV_WORK_URL: cannot reach the store of {work} at {endpoint} (AWS_ENDPOINT_URL): "
        "connection refused"
    )


@pytest.mark.timeout(60)
def test_learn_with_an_endpoint_nobody_answers_exits_1_in_one_line(s3_server, tmp_path, monkeypatch, capsys):  # noqa: F811
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    out = s3_server.url("run")
    status = main(["learn", "quick", "--images", str(sample_paths()[0]), "--out", out])
    assert status == EXIT_FAILED
    assert _one_line(capsys.readouterr().err) == (
        f"deconv learn: error: --out: cannot reach the store of {out} at http://127.0.0.1:{port} (AWS_ENDPOINT_URL): "
        "connection refused"
    )
