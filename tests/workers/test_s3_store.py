"""The store on ``s3://`` (a local moto server): the object store's operations, and a distributed run whose images,
checkpoints and outputs live there, with the filters of the same run on local files."""

from __future__ import annotations

import time

import numpy as np
import pytest

from tests.s3server import s3_server  # noqa: F401  (the session's S3 server)
from workers.distributed.checkpoint import latest_checkpoint
from workers.distributed.coordinator import Coordinator
from workers.distributed.outputs import LayerOutputs
from workers.jobs.artifacts import open_artifact_store
from workers.jobs.objects import (
    ObjectStore,
    Part,
    StoreUnreachable,
    _filesystem,
    check_store,
    read_array,
    read_rows,
    rows_of_parts,
    write_array,
)

pytestmark = pytest.mark.ray


def test_an_s3_store_writes_reads_lists_and_removes(s3_server):  # noqa: F811
    store = ObjectStore(s3_server.url("objects"))
    array = np.arange(5 * 3 * 4, dtype=np.float32).reshape(5, 3, 4)
    digest, size = write_array(store.at("a/x.npy"), array)
    store.write("a/y.bin", b"abc")
    assert store.list("a") == ["x.npy", "y.bin"] and store.size("a/x.npy") == size
    np.testing.assert_array_equal(read_array(store.at("a/x.npy")), array)
    np.testing.assert_array_equal(read_rows(store.at("a/x.npy"), 2, 4), array[2:4])
    store.remove("a")
    assert store.list("a") == [] and not store.exists("a/x.npy")


def test_a_run_on_s3_gives_the_filters_of_the_run_on_local_files(s3_server, ray_session, dataset, learn_config):  # noqa: F811
    images = ObjectStore(s3_server.url("images"))
    sources = [images.at(p.name) for p in dataset]
    for source, path in zip(sources, dataset, strict=True):
        source.store.write(source.key, path.read_bytes())
    local = Coordinator(dataset, learn_config, workers=2).run()
    work = ObjectStore(s3_server.url("work"))
    artifacts = s3_server.url("artifacts")
    coordinator = Coordinator(
        sources,
        learn_config,
        workers=2,
        checkpoint_dir=work.child("checkpoints"),
        checkpoint_every=2,
        outputs=LayerOutputs(artifacts, work, pool=(1, 2, 2)),
    )
    result = coordinator.run()
    assert result.maps is None  # the maps stay in the store: nothing the size of the dataset came back
    np.testing.assert_allclose(result.filters, local.filters, rtol=1e-12, atol=1e-14)
    assert result.history == pytest.approx(local.history, rel=1e-12)
    checkpoint = latest_checkpoint(work.child("checkpoints"))
    assert checkpoint.iteration == learn_config.n_iter and len(checkpoint.shard_parts) == 2
    store = open_artifact_store(artifacts)
    written = coordinator.written
    assert [(w.first, w.count) for w in written] == [(0, 3), (3, 3)]
    maps = rows_of_parts([Part(store.location(w.maps.key), w.first, w.count) for w in written], 0, 6)
    np.testing.assert_allclose(maps, local.maps, rtol=1e-12, atol=1e-14)
    pooled = rows_of_parts([Part(work.at(w.pooled.key), w.first, w.count) for w in written], 2, 5)
    assert pooled.shape == (3, learn_config.layers[0].n_filters, 8, 8)


def test_the_store_check_passes_an_existing_bucket_and_refuses_a_missing_one(s3_server):  # noqa: F811
    check_store(s3_server.url("run"), "--out")
    check_store("/a/local/folder/that/is/created/when/written", "--out")
    with pytest.raises(ValueError, match=r"^--out: the bucket 'no-such-bucket' of s3://no-such-bucket/run does not"):
        check_store("s3://no-such-bucket/run", "--out")
    import s3fs  # noqa: PLC0415

    assert not s3fs.S3FileSystem().exists("no-such-bucket")  # and the check created nothing


def test_the_store_check_names_the_setting_and_endpoint_when_nothing_answers(s3_server, monkeypatch):  # noqa: F811
    import socket  # noqa: PLC0415

    import s3fs  # noqa: PLC0415

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    s3fs.S3FileSystem.clear_instance_cache()
    _filesystem.cache_clear()
    try:
        started = time.monotonic()
        with pytest.raises(
            StoreUnreachable,
            match=rf"^DECONV_ARTIFACTS: cannot reach .* at http://127.0.0.1:{port} \(AWS_ENDPOINT_URL\): "
            "connection refused$",
        ):
            check_store(s3_server.url("artifacts"), "DECONV_ARTIFACTS", timeout=5.0)
        assert time.monotonic() - started < 5.0  # refused at once: the client's retries are not waited for
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        _filesystem.cache_clear()


def test_the_store_check_refuses_a_url_without_a_bucket(s3_server):  # noqa: F811
    with pytest.raises(ValueError, match=r"^--out: 's3://' names no bucket"):
        check_store("s3://", "--out")


def test_a_server_that_is_not_s3_is_not_taken_for_a_missing_bucket(s3_server, monkeypatch):  # noqa: F811
    import http.server  # noqa: PLC0415
    import threading  # noqa: PLC0415

    import s3fs  # noqa: PLC0415

    # a plain HTTP server answers 404 to every S3 request, as S3 does for a missing bucket's HEAD
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.SimpleHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    s3fs.S3FileSystem.clear_instance_cache()
    _filesystem.cache_clear()
    try:
        with pytest.raises(StoreUnreachable, match=r"^--out: cannot use the store of .*\(is it an S3 server\?\)$"):
            check_store(s3_server.url("run"), "--out", timeout=10.0)
    finally:
        server.shutdown()
        server.server_close()
        s3fs.S3FileSystem.clear_instance_cache()
        _filesystem.cache_clear()
