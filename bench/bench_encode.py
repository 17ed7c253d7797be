"""Encode jobs: memory and throughput of encoding a stored collection block by block on Ray Data actors.

For two collection sizes (default 128 and 1024 random 64x64 images, one channel) in a fresh local store, one
encode job (:func:`workers.jobs.encoding.execute_encode`, as the service's runner calls it) with a one-layer model
of 8 filters of 7x7, ADMM with 20 iterations, blocks of 16 images, 2 coding actors. Measured:

* the driver's resident memory during the job, above what it held before (it records keys only);
* each coding actor's peak resident memory (``VmHWM`` of the ``MapWorker`` processes, polled while they live):
  with the block size fixed it should not grow with the collection;
* images per second of the job against encoding the same blocks one after another in this process
  (:func:`solver.encode_layers`, the code path of the actors), per actor.

Run: ``PYTHONPATH=. python bench/bench_encode.py [--sizes 128 1024]``; prints one JSON line per size.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

BLOCK = 16
WORKERS = 2
SIZE = 64


def _status_kb(pid: int, field: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def _map_workers() -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if b"MapWorker" in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
            except OSError:
                continue
    return pids


class _Watch(threading.Thread):
    """Polls the coding actors' VmHWM and this process's VmRSS until stopped."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.actors: dict[int, int] = {}
        self.driver_kb = 0

    def run(self) -> None:
        while not self.stop.is_set():
            for pid in _map_workers():
                self.actors[pid] = max(self.actors.get(pid, 0), _status_kb(pid, "VmHWM"))
            self.driver_kb = max(self.driver_kb, _status_kb(os.getpid(), "VmRSS"))
            time.sleep(0.05)


def _model():
    from solver import StackModel  # noqa: PLC0415

    filters = np.random.default_rng(0).standard_normal((8, 1, 7, 7)).astype(np.float32)
    filters /= np.linalg.norm(filters.reshape(8, -1), axis=1)[:, None, None, None]
    return StackModel.from_layers([filters], [None], [None], [0.1], [1.0])


def run(n_images: int, data_dir: Path) -> dict:
    from solver.config import AdmmConfig  # noqa: PLC0415
    from workers.distributed.checkpoint import npy_bytes  # noqa: PLC0415
    from workers.jobs.encoding import EncodeSpec, execute_encode  # noqa: PLC0415
    from workers.jobs.models import JobModel  # noqa: PLC0415
    from workers.jobs.store import JobStore  # noqa: PLC0415

    store = JobStore(data_dir)
    rng = np.random.default_rng(n_images)
    dataset = store.add_dataset(
        [(f"{i}", rng.standard_normal((1, SIZE, SIZE)).astype(np.float32)) for i in range(n_images)]
    )
    model, _ = store.submit({"dataset_id": dataset.id, "layers": []}, n_layers=1, n_iter=1)
    arrays, metadata = JobModel(_model(), AdmmConfig(max_iter=20)).artifacts()
    for name, array in arrays.items():
        store.put_artifact(model.id, f"{name}.npy", npy_bytes(array), "application/x-npy")
    store.put_artifact(model.id, "model.json", metadata, "application/json")
    store.claim(model.id)
    store.finish(model.id, "succeeded")
    inference = {"method": "admm", "max_iter": 20}
    spec = EncodeSpec(
        model_id=model.id, dataset_id=dataset.id, layer=1, block_size=BLOCK, workers=WORKERS, inference=inference
    )
    job, _ = store.submit(spec.model_dump(mode="json"), n_layers=1, n_iter=n_images)
    job = store.claim(job.id)
    watch = _Watch()
    before_kb = _status_kb(os.getpid(), "VmRSS")
    watch.start()
    start = time.perf_counter()
    execute_encode(store, job)
    took = time.perf_counter() - start
    watch.stop.set()
    watch.join()
    store.close()
    return {
        "n_images": n_images,
        "seconds": round(took, 2),
        "images_per_s": round(n_images / took, 1),
        "driver_rss_growth_mb": round((watch.driver_kb - before_kb) / 1024, 1),
        "actor_peak_rss_mb": sorted(round(kb / 1024, 1) for kb in watch.actors.values()),
    }


def in_process(n_images: int) -> float:
    """Images per second of :func:`solver.encode_layers` on blocks of :data:`BLOCK`, one after another."""
    from solver import encode_layers  # noqa: PLC0415
    from solver.config import AdmmConfig  # noqa: PLC0415

    model = _model()
    images = np.random.default_rng(n_images).standard_normal((n_images, 1, SIZE, SIZE)).astype(np.float32)
    encode_layers(model, images[:BLOCK], method=AdmmConfig(max_iter=20))  # warm-up (FFT plans)
    start = time.perf_counter()
    for first in range(0, n_images, BLOCK):
        encode_layers(model, images[first : first + BLOCK], method=AdmmConfig(max_iter=20))
    return n_images / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 1024])
    args = parser.parse_args()
    from workers.distributed.cluster import ClusterConfig, connect, shutdown  # noqa: PLC0415

    connect(ClusterConfig(address="local", num_cpus=WORKERS, object_store_memory=200 * 2**20))
    try:
        for n in args.sizes:
            with tempfile.TemporaryDirectory() as folder:
                print(json.dumps(run(n, Path(folder))), flush=True)
        print(json.dumps({"in_process_images_per_s": round(in_process(min(args.sizes)), 1)}), flush=True)
    finally:
        shutdown()
    print(json.dumps({"load_average": os.getloadavg()}))


if __name__ == "__main__":
    main()
