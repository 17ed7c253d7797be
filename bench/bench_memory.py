"""Memory of a learning job against the number of images: the service process's peak, and a shard actor's peak per
byte of its maps.

    PYTHONPATH=. .venv/bin/python bench/bench_memory.py [--images 16 64 256] [--skip-service] [--skip-actor]

The job: N grey 256x256 images (the bundled samples, tiled 2x2 and shifted per image), 16 filters 8x8, the
``quick`` preset's settings otherwise (ADMM coding, 10 iterations; projected-FISTA filter update; preprocessing
on), float32, 2 workers, 2 outer iterations, a checkpoint after each.

* Service: ``deconv serve`` in its own process (a private local Ray cluster), the images uploaded as PNGs and the
  job submitted over HTTP; its peak RSS is the kernel's high-water mark (``VmHWM``) once the job has succeeded.
  The shard actors are other processes: the service holds keys, filters and statistics only.
* Actor: the body of a shard actor (:class:`workers.distributed.actors.ShardWorker`) on one shard (N/2 images),
  through the same calls the coordinator makes (load and preprocessing, the rescale fit, build, the learning loop,
  a checkpoint part, the shard's outputs), in a fresh process under ``tracemalloc`` (numpy's buffers are traced):
  its peak of traced bytes over the bytes of its final maps, and the growth of ``ru_maxrss`` over the process's
  RSS before loading, over the same.

The table goes to stdout, progress to stderr.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import multiprocessing
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # the repository is not installed in the venv: make `solver`, `workers` importable
    sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # Ray's local workers import `solver` and `workers` from the driver's working directory

logger = logging.getLogger("bench.memory")

SIDE, N_FILTERS, FILTER_SIZE, WORKERS, N_ITER = 256, 16, 8, 2, 2
MIB = 2**20


def _spec() -> dict:
    from solver import load_config  # noqa: PLC0415

    config = load_config("quick").model_dump(mode="json")
    config["layers"][0].update(n_filters=N_FILTERS, filter_size=FILTER_SIZE)
    return {**config, "n_iter": N_ITER, "dtype": "float32", "workers": WORKERS}


def _images(n: int) -> list[np.ndarray]:
    """`n` grey uint8 images of SIDE², the sample images tiled 2x2, each shifted by its own offset."""
    from PIL import Image  # noqa: PLC0415

    from configs import sample_paths  # noqa: PLC0415

    samples = [np.asarray(Image.open(p).convert("L")) for p in sample_paths()]
    out = []
    for i in range(n):
        tile = np.tile(samples[i % len(samples)], (2, 2))[:SIDE, :SIDE]
        out.append(np.roll(tile, (7 * i, 13 * i), axis=(0, 1)))
    return out


def _png(image: np.ndarray) -> bytes:
    from PIL import Image  # noqa: PLC0415

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


# -- the service -----------------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _hwm_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status", encoding="ascii") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


def service_peak(n: int) -> dict:
    """Run the job through a fresh service process; its peak RSS (MiB) and the job's time."""
    import httpx2  # noqa: PLC0415

    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="deconv-bench-memory-") as data:
        env = {**os.environ, "DECONV_DATA_DIR": data, "DECONV_CHECKPOINT_EVERY": "1", "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "api.cli", "serve", "--host", "127.0.0.1", "--port", str(port)]
        process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # noqa: S603
        try:
            with httpx2.Client(base_url=f"http://127.0.0.1:{port}", timeout=600) as client:
                _wait_up(client, process)
                files = [("files", (f"im{i:04d}.png", _png(im), "image/png")) for i, im in enumerate(_images(n))]
                dataset = client.post("/datasets", files=files)
                dataset.raise_for_status()
                start = time.perf_counter()
                job = client.post("/jobs", json={"dataset_id": dataset.json()["id"], **_spec()})
                job.raise_for_status()
                job_id = job.json()["id"]
                while (status := client.get(f"/jobs/{job_id}").json())["status"] in ("queued", "running"):
                    time.sleep(0.5)
                elapsed = time.perf_counter() - start
                if status["status"] != "succeeded":
                    raise RuntimeError(f"the job ended {status['status']}: {status.get('error')}")
                peak = _hwm_mib(process.pid)
                maps = client.get(f"/jobs/{job_id}/maps")  # streamed from the shards' parts
                maps.raise_for_status()
                served_peak = _hwm_mib(process.pid)
        finally:
            process.terminate()
            process.wait(60)
    return {"peak_mib": peak, "after_maps_download_mib": served_peak, "job_s": elapsed}


def _wait_up(client, process) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError("the service exited at start")
        try:
            if client.get("/health").status_code == 200:
                return
        except Exception:  # noqa: BLE001  (not listening yet)
            pass
        time.sleep(0.2)
    raise RuntimeError("the service did not start within 120 s")


# -- one shard actor's body ------------------------------------------------------------------------------------------


def _shard_run(sources, config, info, store, name: str):
    """The calls a coordinator makes of one shard actor, in order, on `sources`; returns the worker."""
    from solver.images.preprocess import combine_rescale_means, combine_rescale_ranges  # noqa: PLC0415
    from solver.models.learn import alternate, initial_filters  # noqa: PLC0415
    from solver.models.shard import LocalPool  # noqa: PLC0415
    from workers.distributed.actors import ShardWorker  # noqa: PLC0415
    from workers.distributed.checkpoint import begin_checkpoint  # noqa: PLC0415
    from workers.distributed.outputs import LayerOutputs  # noqa: PLC0415

    worker = ShardWorker()
    worker.load(sources, config, info)
    shifted = combine_rescale_ranges([worker.rescale_range()])
    stats = combine_rescale_means(shifted, [worker.rescale_sum(shifted)])
    worker.build(stats, None, "numpy")
    filters = initial_filters(N_FILTERS, 1, FILTER_SIZE, seed=config.seed, norm=config.filter_update.norm)
    checkpoints = store.child(f"{name}/checkpoints")

    def checkpoint(iteration, f, v) -> None:
        worker.save_state(begin_checkpoint(checkpoints, iteration), 0)

    alternate(LocalPool([worker]), config, filters.astype(np.float32), on_iteration=checkpoint)
    worker.write_outputs(LayerOutputs(store.child(f"{name}/artifacts").url), 0, 0)
    return worker


def _actor_body(n: int, queue) -> None:
    import tracemalloc  # noqa: PLC0415

    from solver import LearnConfig  # noqa: PLC0415
    from workers.distributed.images import inspect_images  # noqa: PLC0415
    from workers.jobs.objects import ObjectStore, npy_bytes  # noqa: PLC0415

    spec = _spec()
    config = LearnConfig.model_validate({k: v for k, v in spec.items() if k != "workers"})
    with tempfile.TemporaryDirectory(prefix="deconv-bench-actor-") as folder:
        store = ObjectStore(folder)
        sources = [store.at(f"images/{i:04d}.npy") for i in range(n)]
        for source, image in zip(sources, _images(n), strict=True):
            store.write(source.key, npy_bytes(image[None]))
        info = inspect_images(sources[:1])
        # a first run on one image imports and compiles everything (numba's kernels), outside the measure
        _shard_run(sources[:1], config.model_copy(update={"n_iter": 1}), info, store, "warm-up")
        before = _rss_mib()
        tracemalloc.start()
        worker = _shard_run(sources, config, info, store, "run")
        _, peak = tracemalloc.get_traced_memory()
        maps_bytes = worker.maps().nbytes
        queue.put(
            {
                "maps_mib": maps_bytes / MIB,
                "traced_peak_mib": peak / MIB,
                "traced_ratio": peak / maps_bytes,
                "rss_growth_ratio": (_maxrss_mib() - before) * MIB / maps_bytes,
            }
        )


def _rss_mib() -> float:
    with open("/proc/self/statm", encoding="ascii") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / MIB


def _maxrss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def actor_peak(n_shard: int) -> dict:
    """One shard actor's body on `n_shard` images, in a fresh process (spawned: nothing inherited)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=_actor_body, args=(n_shard, queue))
    process.start()
    result = queue.get(timeout=3600)
    process.join()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, nargs="+", default=[16, 64, 256])
    parser.add_argument("--skip-service", action="store_true")
    parser.add_argument("--skip-actor", action="store_true")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(message)s")
    rows = []
    for n in args.images:
        row = {"images": n}
        if not args.skip_actor:
            logger.info("actor body on %d images (one shard of %d)", n // WORKERS, n)
            row.update(actor_peak(n // WORKERS))
        if not args.skip_service:
            logger.info("service job on %d images", n)
            row.update(service_peak(n))
        logger.info("%s", json.dumps(row))
        rows.append(row)
    _print_table(rows)
    return 0


def _print_table(rows: list[dict]) -> None:
    base = rows[0].get("peak_mib")
    print(f"load average {', '.join(f'{x:.2f}' for x in os.getloadavg())}; {os.cpu_count()} cores")
    print(
        "| images | service peak RSS | × the 16-image peak | after GET maps | job time | actor maps | "
        "actor traced peak / maps | actor RSS growth / maps |"
    )
    print("|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        service = row.get("peak_mib")
        cells = [
            str(row["images"]),
            f"{service:.0f} MiB" if service else "—",
            f"{service / base:.2f}" if service and base else "—",
            f"{row['after_maps_download_mib']:.0f} MiB" if service else "—",
            f"{row['job_s']:.0f} s" if service else "—",
            f"{row['maps_mib']:.0f} MiB" if "maps_mib" in row else "—",
            f"{row['traced_ratio']:.2f}" if "traced_ratio" in row else "—",
            f"{row['rss_growth_ratio']:.2f}" if "rss_growth_ratio" in row else "—",
        ]
        print("| " + " | ".join(cells) + " |")


if __name__ == "__main__":
    sys.exit(main())
