"""A store on S3 that stops answering (a hung endpoint: it accepts connections and never replies) fails a call
within the store's deadlines, instead of holding a job, and its cancel, for a quarter of an hour and more."""

from __future__ import annotations

import socket
import time

import pytest

import workers.jobs.objects as objects

s3fs = pytest.importorskip("s3fs", reason="an S3 store needs s3fs (the 's3' extra)")


def test_a_store_that_never_answers_fails_a_read_within_its_deadlines(monkeypatch):
    with socket.socket() as hung:
        hung.bind(("127.0.0.1", 0))
        hung.listen(64)  # the kernel completes the handshakes; nobody ever reads or answers
        endpoint = f"http://127.0.0.1:{hung.getsockname()[1]}"
        for name, value in {
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_ENDPOINT_URL": endpoint,
        }.items():
            monkeypatch.setenv(name, value)
        monkeypatch.setattr(objects, "STORE_READ_TIMEOUT_S", 1.0)
        monkeypatch.setattr(objects, "STORE_CONNECT_TIMEOUT_S", 1.0)
        # s3fs keeps its instances by their options, not by the endpoint of the environment: none from another
        # test's server may answer here, and none of this one's may be left for the next test
        objects._filesystem.cache_clear()
        s3fs.S3FileSystem.clear_instance_cache()
        try:
            started = time.monotonic()
            with pytest.raises(Exception, match="Read timeout on endpoint URL"):
                objects.ObjectStore("s3://bucket/prefix").read("key")
            took = time.monotonic() - started
        finally:
            objects._filesystem.cache_clear()
            s3fs.S3FileSystem.clear_instance_cache()
    # 2 tries by s3fs around 2 by the client, 1 s each, with s3fs's back-off between: seconds, not minutes
    assert took < 30.0, f"the read took {took:.0f} s"


def test_the_artifact_store_on_s3_has_the_same_deadlines():
    from workers.jobs.artifacts import FsspecArtifactStore  # noqa: PLC0415

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        store = FsspecArtifactStore("s3://bucket/artifacts")
        assert store.fs.retries == objects.STORE_ATTEMPTS
        assert store.fs.config_kwargs["read_timeout"] == objects.STORE_READ_TIMEOUT_S
        assert store.fs.config_kwargs["connect_timeout"] == objects.STORE_CONNECT_TIMEOUT_S
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
