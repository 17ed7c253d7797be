"""Online dictionary learning (``solver.learn_online``): memory, quality against batch learning, and SPORCO's
``OnlineConvBPDNDictLearn``.

```sh
PYTHONPATH=. .venv/bin/python bench/bench_online.py            # every part, about 10 minutes on 2 busy cores
PYTHONPATH=. .venv/bin/python bench/bench_online.py --quick    # small sizes, about a minute
PYTHONPATH=. .venv/bin/python bench/bench_online.py --part peer
PYTHONPATH=. .venv/bin/python bench/bench_online.py --part distributed   # the Ray driver: memory and throughput
PYTHONPATH=. .venv/bin/python bench/bench_online.py --part throughput --actors 1,2,4   # on a machine of 5+ cores
```

Data: random 128×128 crops of the bundled sample images (``configs/samples``, upsampled ×2 so that crops differ,
a random flip and quarter turn each), high-passed like the other benchmarks (minus a Gaussian blur, σ = 4). 16
filters 8×8, λ = 0.1, circular boundary, ADMM coding (10 iterations per batch), 100 filter steps per batch,
batches of 16 images.

* **memory**: peak RSS (``ru_maxrss``) of a fresh process that learns online from 256 and from 4096 images
  generated batch by batch; the second peak must stay within 1.15 × the first.
* **quality**: 64 training images; the held-out objective (16 other images encoded with ADMM to convergence at
  the same λ) of the filters after 5 online passes, against batch learning (``solver.learn``) after 20 outer
  iterations; the ratio must be ≤ 1.02.
* **peer**: SPORCO's ``OnlineConvBPDNDictLearn`` (float32, its example's options: 50 ADMM iterations per batch,
  η = 10 / (j + 20)) on the same data, K, s, λ, batch size and initial filters. Both learners run batch by batch,
  interleaved in one process (the machine is shared, so their timings see the same load); the held-out objective
  of every snapshot is computed afterwards, untimed, by the same encoder. The target is SPORCO's held-out
  objective after one pass; the ratio of our time to reach it to SPORCO's time for that pass must be ≤ 0.33.

* **distributed** (:class:`workers.distributed.online.OnlineRun` on a private local Ray cluster, the images as
  ``.npy`` files read by the coding actors):

  - memory: peak RSS of the driver process and of each of its 2 coding actors learning one pass from 256 and
    from 4096 images (fresh processes each time); the 4096-image peaks must stay within 1.15 × the 256-image ones.
    One ADMM iteration and 10 filter steps per batch here: what is allocated does not depend on the counts, and
    this keeps the 4096-image pass within minutes on a busy machine;
  - throughput (also ``--part throughput`` alone): images per second per worker of the driver with 1 and with 2
    actors against single-process learning on the same batches (``OnlineLearner``, what ``learn_online`` runs)
    with the threads each actor has (the cores shared among the actors: 2 for one actor on 2 cores, 1 for two),
    every run in a fresh process; two rounds of the runs in turn, each rate from the median step of its runs
    (the first batch of each run is left out: compilation); target ≥ 0.8.

* **read**: images per second read by 2 consumers from ``.npy`` files: coding actors loading their parts of each
  batch by key, a step at a time as the driver asks them, against a Ray Data stream
  (``from_items(paths).map_batches(load)``, ``streaming_split(2, equal=True)``) read through without any barrier
  (its best case): why the driver uses the plain actors.

The table goes to stdout, with the machine and its load average; progress lines go to stderr.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from _common import machine_info, peak_rss_mb
from scipy.ndimage import gaussian_filter, zoom

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

logger = logging.getLogger("bench_online")

SIZE, K, S, LAM, BATCH = 128, 16, 8, 0.1, 16
INNER_ITER = 10
HIGHPASS_SIGMA = 4.0
MEMORY_LIMIT, QUALITY_LIMIT, PEER_LIMIT, THROUGHPUT_LIMIT = 1.15, 1.02, 0.33, 0.8
FILTER_ITER = 100


def _samples() -> list[np.ndarray]:
    from skimage import io  # noqa: PLC0415

    from configs import sample_paths  # noqa: PLC0415

    out = []
    for path in sample_paths():
        img = io.imread(path, as_gray=True).astype(np.float64)
        img = img / max(float(img.max()), 1e-12)
        out.append(zoom(img, 2, order=1))  # 256×256: room for distinct 128×128 crops
    return out


def crops(n_images: int, seed: int, size: int = SIZE, batch: int = BATCH) -> Iterator[np.ndarray]:
    """`n_images` high-passed random crops, float32, in batches (N, 1, size, size), generated as they are asked for."""
    rng = np.random.default_rng(seed)
    samples = _samples()
    done = 0
    while done < n_images:
        out = []
        for _ in range(min(batch, n_images - done)):
            img = samples[rng.integers(len(samples))]
            top, left = rng.integers(img.shape[0] - size + 1), rng.integers(img.shape[1] - size + 1)
            c = np.rot90(img[top : top + size, left : left + size], k=int(rng.integers(4)))
            c = c[:, ::-1] if rng.integers(2) else c
            out.append(c - gaussian_filter(c, HIGHPASS_SIGMA, mode="wrap"))
        done += len(out)
        yield np.stack(out)[:, None].astype(np.float32)


def _all(n_images: int, seed: int, size: int) -> np.ndarray:
    return np.concatenate(list(crops(n_images, seed, size)))


def _held_out_objective(images: np.ndarray, filters: np.ndarray) -> float:
    from solver import encode  # noqa: PLC0415

    return encode(images, filters, LAM, method="admm", max_iter=1000, tol=1e-4, backend="numpy").objective


# memory ------------------------------------------------------------------------------------------------------------


def _memory_child(n_images: int, size: int) -> None:
    from solver import learn_online  # noqa: PLC0415

    t0 = time.perf_counter()
    result = learn_online(
        crops(n_images, seed=1, size=size), K, S, LAM, batch_size=BATCH, inner_iter=INNER_ITER, backend="numpy"
    )
    seconds = time.perf_counter() - t0
    json.dump({"rss_mb": peak_rss_mb(), "seconds": seconds, "batches": len(result.history)}, sys.stdout)


def memory(quick: bool) -> list[list[str]]:
    size = 64 if quick else SIZE
    sizes = (32, 256) if quick else (256, 4096)
    runs = {}
    for n in sizes:
        logger.info("memory: learning online from %d images in a fresh process", n)
        cmd = [sys.executable, __file__, "--memory-child", str(n), "--size", str(size)]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
        runs[n] = json.loads(out.stdout)
    a, b = (runs[n] for n in sizes)
    ratio = b["rss_mb"] / a["rss_mb"]
    return [
        [
            "memory",
            f"peak RSS, {sizes[0]} -> {sizes[1]} images {size}²",
            f"{a['rss_mb']:.0f} MB -> {b['rss_mb']:.0f} MB ({a['seconds']:.0f} s, {b['seconds']:.0f} s)",
            f"{ratio:.3f}",
            f"≤ {MEMORY_LIMIT}",
            "yes" if ratio <= MEMORY_LIMIT else "NO",
        ]
    ]


# quality -----------------------------------------------------------------------------------------------------------


def quality(quick: bool) -> list[list[str]]:
    from solver import learn, learn_online  # noqa: PLC0415

    size, n_train, n_held = (64, 16, 4) if quick else (SIZE, 64, 16)
    train, held = _all(n_train, 2, size), _all(n_held, 3, size)
    logger.info("quality: online, 5 passes over %d images", n_train)
    t0 = time.perf_counter()
    online = learn_online(train, K, S, LAM, batch_size=BATCH, n_epochs=5, inner_iter=INNER_ITER, backend="numpy")
    t_online = time.perf_counter() - t0
    logger.info("quality: batch, 20 outer iterations")
    t0 = time.perf_counter()
    batch = learn(train, K, S, LAM, n_iter=20, inner_iter=INNER_ITER, backend="numpy")
    t_batch = time.perf_counter() - t0
    e_online, e_batch = _held_out_objective(held, online.filters), _held_out_objective(held, batch.filters)
    ratio = e_online / e_batch
    return [
        [
            "quality",
            f"held-out E ({n_held} images): online 5 passes / batch 20 iterations ({n_train} images)",
            f"{e_online:.2f} / {e_batch:.2f} ({t_online:.0f} s, {t_batch:.0f} s)",
            f"{ratio:.3f}",
            f"≤ {QUALITY_LIMIT}",
            "yes" if ratio <= QUALITY_LIMIT else "NO",
        ]
    ]


# peer --------------------------------------------------------------------------------------------------------------


class _Sporco:
    def __init__(self, f0: np.ndarray):
        from sporco.dictlrn import onlinecdl  # noqa: PLC0415

        opt = onlinecdl.OnlineConvBPDNDictLearn.Options(
            {
                "Verbose": False,
                "ZeroMean": False,
                "eta_a": 10.0,
                "eta_b": 20.0,
                "DataType": np.float32,
                "CBPDN": {
                    "rho": 5.0,
                    "AutoRho": {"Enabled": True},
                    "RelaxParam": 1.8,
                    "RelStopTol": 1e-7,
                    "MaxMainIter": 50,
                    "FastSolve": False,
                    "DataType": np.float32,
                },
            }
        )
        self.d = onlinecdl.OnlineConvBPDNDictLearn(f0[:, 0].transpose(1, 2, 0), LAM, opt, dimK=1)

    def update(self, batch: np.ndarray) -> None:
        self.d.solve(np.ascontiguousarray(batch[:, 0].transpose(1, 2, 0)))

    def filters(self) -> np.ndarray:
        return np.ascontiguousarray(self.d.getdict().squeeze().reshape(S, S, K).transpose(2, 0, 1)[:, None])


def _first_reach(times: list[float], values: list[float], target: float) -> float | None:
    return next((t for t, v in zip(times, values, strict=True) if v <= target), None)


def peer(quick: bool) -> list[list[str]]:
    from solver import LearnConfig, OnlineConfig, OnlineLearner  # noqa: PLC0415
    from solver.models.learn import initial_filters  # noqa: PLC0415
    from solver.models.online import DEFAULT_FILTER_ITER  # noqa: PLC0415

    size, n_train, n_held, max_passes = (64, 16, 4, 3) if quick else (SIZE, 64, 16, 3)
    batches, held = list(crops(n_train, 2, size)), _all(n_held, 3, size)
    config = LearnConfig.model_validate(
        {
            "layers": [{"n_filters": K, "filter_size": S, "lam": LAM}],
            "inference": {"method": "admm", "max_iter": INNER_ITER},
            "filter_update": {"max_iter": DEFAULT_FILTER_ITER},
        }
    )
    f0 = initial_filters(K, 1, S, seed=0, norm="filter")
    # one untimed batch each first: numba's compilation (ours), FFTW's planning (SPORCO's)
    OnlineLearner(config, OnlineConfig(batch_size=BATCH), 1, backend="numpy").update_from_batch(batches[0])
    _Sporco(f0).update(batches[0])
    ours = OnlineLearner(config, OnlineConfig(batch_size=BATCH), 1, backend="numpy")
    theirs = _Sporco(f0)
    snaps: dict[str, tuple[list[float], list[np.ndarray]]] = {"ours": ([], []), "sporco": ([], [])}
    elapsed = {"ours": 0.0, "sporco": 0.0}
    for number, batch in enumerate(batches * max_passes):
        for name, update, filters in (
            ("ours", ours.update_from_batch, lambda: ours.filters.copy()),
            ("sporco", theirs.update, theirs.filters),
        ):
            if name == "sporco" and number >= len(batches):
                continue  # SPORCO's target is its objective after one pass
            t0 = time.perf_counter()
            update(batch)
            elapsed[name] += time.perf_counter() - t0
            snaps[name][0].append(elapsed[name])
            snaps[name][1].append(filters())
        logger.info("peer: batch %d (ours %.1f s, SPORCO %.1f s)", number + 1, elapsed["ours"], elapsed["sporco"])
    target = _held_out_objective(held, snaps["sporco"][1][-1])
    t_sporco = snaps["sporco"][0][-1]
    values = []
    for f in snaps["ours"][1]:  # stop evaluating once the target is reached
        values.append(_held_out_objective(held, f))
        if values[-1] <= target:
            break
    t_ours = _first_reach(snaps["ours"][0][: len(values)], values, target)
    ratio = None if t_ours is None else t_ours / t_sporco
    shown = "not reached" if ratio is None else f"{ratio:.3f}"
    return [
        [
            "peer",
            f"time to SPORCO's held-out E after 1 pass ({target:.2f}): ours / SPORCO",
            f"{'—' if t_ours is None else f'{t_ours:.1f}'} s / {t_sporco:.1f} s (ours after {len(values)} batches)",
            shown,
            f"≤ {PEER_LIMIT}",
            "yes" if ratio is not None and ratio <= PEER_LIMIT else "NO",
        ]
    ]


# distributed ---------------------------------------------------------------------------------------------------


def _write_crops(folder: Path, n_images: int, size: int) -> list[Path]:
    paths = []
    for batch in crops(n_images, seed=1, size=size):
        for image in batch:
            paths.append(folder / f"crop-{len(paths):05d}.npy")
            np.save(paths[-1], image)
    return paths


def _online_config(inner_iter: int, filter_iter: int):
    from solver import LearnConfig  # noqa: PLC0415

    return LearnConfig.model_validate(
        {
            "layers": [{"n_filters": K, "filter_size": S, "lam": LAM}],
            "inference": {"method": "admm", "max_iter": inner_iter},
            "filter_update": {"max_iter": filter_iter, "norm": "filter"},
        }
    )


def _distributed_child(spec: dict) -> None:
    """One distributed run in this (fresh) process: the driver, on a private local Ray cluster."""
    import ray  # noqa: PLC0415

    from solver import OnlineConfig  # noqa: PLC0415
    from workers.distributed.cluster import ClusterConfig, connect, shutdown  # noqa: PLC0415
    from workers.distributed.online import OnlineRun  # noqa: PLC0415
    from workers.distributed.stream import StreamPlan  # noqa: PLC0415

    paths = sorted(Path(spec["folder"]).glob("crop-*.npy"))[: spec["n_images"]]
    batch = spec.get("batch", BATCH)
    plan = StreamPlan(len(paths), batch, 1, None, seed=0)
    connect(ClusterConfig(address="local", num_cpus=max(2, spec["workers"]), object_store_memory=200 * 2**20))
    try:
        run = OnlineRun(
            paths,
            _online_config(spec["inner_iter"], spec["filter_iter"]),
            OnlineConfig(batch_size=batch),
            plan,
            workers=spec["workers"],
            backend="numpy",
        )
        t0 = time.perf_counter()
        outcome = run.run(keep_actors=True)
        seconds = time.perf_counter() - t0
        actors = ray.get([a.peak_rss_mb.remote() for a in run._actors])
        run.close()
    finally:
        shutdown()
    out = {
        "driver_mb": peak_rss_mb(),
        "actors_mb": actors,
        "seconds": seconds,
        "step_seconds": outcome.step_seconds,
        "filters": outcome.result.filters.tolist(),
    }
    json.dump(out, sys.stdout)


def _child(spec: dict) -> dict:
    cmd = [sys.executable, __file__, "--distributed-child", json.dumps(spec)]
    # a session of its own, as the single-process runs have: Linux's autogroup scheduler shares the CPUs between
    # sessions, so runs in different sessions see the same share of a busy machine
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ}, start_new_session=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def _single_child(spec: dict) -> None:
    steps = _single_steps(spec["paths"], spec["inner_iter"], spec["filter_iter"], spec.get("batch", BATCH))
    json.dump({"step_seconds": steps}, sys.stdout)


def _single_steps(paths: list[str], inner_iter: int, filter_iter: int, batch: int = BATCH) -> list[float]:
    """Seconds of every batch of single-process learning on the batches the driver reads (from memory)."""
    from solver import OnlineConfig, OnlineLearner  # noqa: PLC0415
    from workers.distributed.stream import StreamPlan  # noqa: PLC0415

    plan = StreamPlan(len(paths), batch, 1, None, seed=0)
    images = np.stack([np.load(p) for p in paths])
    learner = OnlineLearner(_online_config(inner_iter, filter_iter), OnlineConfig(batch_size=batch), 1, backend="numpy")
    seconds = []
    for step in range(plan.n_steps):
        t0 = time.perf_counter()
        learner.update_from_batch(images[plan.batch(step)])
        seconds.append(time.perf_counter() - t0)
    return seconds


#: the numbers of coding actors the throughput part measures (``--actors``); each needs a CPU, and the driver and
#: Ray's own processes want one more: on a machine of n cores, n − 1 actors at most see an idle core each
ACTORS = (1, 2)
#: images per actor in each batch of the throughput part (``--batch-per-actor``); None: batches of BATCH images
PER_ACTOR: int | None = None
THROUGHPUT_STEPS = 10  # batches per throughput run (the first is left out: compilation)


def _threads_per_actor(workers: int) -> int:
    """The thread budget each of `workers` one-CPU actors on this machine takes."""
    from workers.distributed.threads import node_share  # noqa: PLC0415

    return node_share(workers)


def _throughput(paths: list[Path], size: int, rounds: int = 2) -> list[list[str]]:
    """Images/s per worker of the driver with each count of actors in :data:`ACTORS` against single-process
    learning with the threads each of those actors has (the machine's cores shared among the actors, as the
    driver shares a node: one actor on 2 cores runs 2 threads, two run 1 each), every run in a fresh process.
    `rounds` rounds of (single process, driver) for each count in turn, and each rate from the median step of all
    its runs: the shared machine's load moves within seconds, and the median of steps taken in turn sees the same
    load for each. The batches are of :data:`BATCH` images whatever the count of actors, or with
    :data:`PER_ACTOR` set, of that many images per actor (both sides learn on the same, larger batches)."""
    folder = str(Path(paths[0]).parent)
    single: dict[int, list[float]] = {w: [] for w in ACTORS}
    driver: dict[int, list[float]] = {w: [] for w in ACTORS}
    batches = {w: BATCH if PER_ACTOR is None else PER_ACTOR * w for w in ACTORS}
    counts = {w: min(len(paths), THROUGHPUT_STEPS * batches[w]) for w in ACTORS}
    for r in range(rounds):
        for workers in ACTORS:
            threads = _threads_per_actor(workers)
            batch, n = batches[workers], counts[workers]
            spec = {"inner_iter": INNER_ITER, "filter_iter": FILTER_ITER, "batch": batch}
            logger.info(
                "throughput round %d/%d: single process, %d thread(s), batches of %d", r + 1, rounds, threads, batch
            )
            env = {
                **os.environ,
                **{v: str(threads) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")},
            }
            child = {**spec, "paths": [str(p) for p in paths[:n]]}
            cmd = [sys.executable, __file__, "--single-child", json.dumps(child)]
            out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, start_new_session=True)
            single[workers] += json.loads(out.stdout.strip().splitlines()[-1])["step_seconds"][1:]  # 1st compiles
            logger.info("throughput round %d/%d: the driver with %d actor(s)", r + 1, rounds, workers)
            run = _child({**spec, "folder": folder, "n_images": n, "workers": workers})
            driver[workers] += run["step_seconds"][1:]
    rows = []
    for workers in ACTORS:
        threads, batch = _threads_per_actor(workers), batches[workers]
        base = batch / float(np.median(single[workers]))
        rate = batch / float(np.median(driver[workers])) / workers
        rows.append(
            [
                "distributed throughput",
                f"images/s per worker, {workers} actor(s) of {threads} thread(s) / single process of {threads} "
                f"(batches of {batch}, {counts[workers]} images {size}², median of {len(driver[workers])} / "
                f"{len(single[workers])} steps)",
                f"{rate:.2f} / {base:.2f}",
                f"{rate / base:.3f}",
                f"≥ {THROUGHPUT_LIMIT}",
                "yes" if rate / base >= THROUGHPUT_LIMIT else "NO",
            ]
        )
    return rows


def throughput(quick: bool) -> list[list[str]]:
    import tempfile  # noqa: PLC0415

    size = 64 if quick else SIZE
    per_step = BATCH if PER_ACTOR is None else PER_ACTOR * max(ACTORS)
    n = 48 if quick else max(160, THROUGHPUT_STEPS * per_step)
    with tempfile.TemporaryDirectory(prefix="bench-online-") as folder:
        return _throughput(_write_crops(Path(folder), n, size), size, rounds=1 if quick else 2)


def distributed(quick: bool) -> list[list[str]]:
    import tempfile  # noqa: PLC0415

    size = 64 if quick else SIZE
    sizes = (32, 256) if quick else (256, 4096)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-online-") as folder:
        logger.info("distributed: writing %d crops of %d² as .npy files", sizes[1], size)
        paths = _write_crops(Path(folder), sizes[1], size)
        runs = {}
        for n in sizes:
            logger.info("distributed memory: one pass over %d images, 2 coding actors", n)
            runs[n] = _child({"folder": folder, "n_images": n, "workers": 2, "inner_iter": 1, "filter_iter": 10})
        a, b = (runs[n] for n in sizes)
        for who, small, large in (
            ("driver", a["driver_mb"], b["driver_mb"]),
            *((f"actor {i}", x, y) for i, (x, y) in enumerate(zip(a["actors_mb"], b["actors_mb"], strict=True))),
        ):
            ratio = large / small
            rows.append(
                [
                    "distributed memory",
                    f"{who} peak RSS, {sizes[0]} -> {sizes[1]} images {size}²",
                    f"{small:.0f} MB -> {large:.0f} MB ({a['seconds']:.0f} s, {b['seconds']:.0f} s)",
                    f"{ratio:.3f}",
                    f"≤ {MEMORY_LIMIT}",
                    "yes" if ratio <= MEMORY_LIMIT else "NO",
                ]
            )
        rows += _throughput(paths[: 48 if quick else 160], size, rounds=1 if quick else 2)
    return rows


class _Consumer:
    """A Ray Data consumer: counts the images of its split (the read alone, no coding)."""

    def consume(self, split) -> int:
        return sum(len(batch["image"]) for batch in split.iter_batches(batch_size=BATCH // 2, batch_format="numpy"))


def _load_rows(batch: dict) -> dict:
    return {"image": np.stack([np.load(p) for p in batch["path"]])}


def _read_child(spec: dict) -> None:
    """Read `n_images` .npy images with 2 consumers: coding actors loading their parts of every batch by path
    (a step at a time, as the driver asks), against a Ray Data stream split in 2 (``streaming_split``)."""
    import ray  # noqa: PLC0415

    from workers.distributed.cluster import ClusterConfig, connect, shutdown  # noqa: PLC0415
    from workers.distributed.images import ImageInfo  # noqa: PLC0415
    from workers.distributed.online_coder import remote_coder  # noqa: PLC0415
    from workers.distributed.stream import StreamPlan, split  # noqa: PLC0415

    paths = sorted(Path(spec["folder"]).glob("crop-*.npy"))[: spec["n_images"]]
    plan = StreamPlan(len(paths), BATCH, 1, None, seed=0)
    connect(ClusterConfig(address="local", num_cpus=2, object_store_memory=300 * 2**20))
    try:
        from solver import OnlineConfig  # noqa: PLC0415

        config = _online_config(1, 1)  # no preprocessing: rescale_range() is the read and a min/max
        coders = [remote_coder(num_cpus=0) for _ in range(2)]
        info = ImageInfo((1, spec["size"], spec["size"]), "float32")
        ray.get([c.setup.remote(config, OnlineConfig(batch_size=BATCH), info, 1, "numpy", None) for c in coders])
        t0 = time.perf_counter()
        count = 0
        for step in range(plan.n_steps):
            parts = split(plan.batch(step), 2)
            ray.get([c.rescale_range.remote([paths[i] for i in p]) for c, p in zip(coders, parts, strict=False)])
            count += sum(len(p) for p in parts)
        plain = time.perf_counter() - t0
        consumers = [ray.remote(_Consumer).options(num_cpus=0).remote() for _ in range(2)]
        t0 = time.perf_counter()
        ds = ray.data.from_items([{"path": str(p)} for p in paths]).map_batches(_load_rows, batch_size=BATCH // 2)
        splits = ds.streaming_split(2, equal=True)
        counted = sum(ray.get([c.consume.remote(s) for c, s in zip(consumers, splits, strict=True)]))
        data = time.perf_counter() - t0
    finally:
        shutdown()
    json.dump({"plain_s": plain, "plain_images": count, "data_s": data, "data_images": counted}, sys.stdout)


def read(quick: bool) -> list[list[str]]:
    """Reading the images: actors pulling their parts by key against Ray Data's streaming_split."""
    import importlib.util  # noqa: PLC0415
    import tempfile  # noqa: PLC0415

    if importlib.util.find_spec("pyarrow") is None:  # Ray Data's own dependency, not one of deconv's
        raise SystemExit("bench_online --part read needs Ray Data: pip install -e '.[bench]'")
    size, n = (64, 64) if quick else (SIZE, 512)
    with tempfile.TemporaryDirectory(prefix="bench-online-read-") as folder:
        _write_crops(Path(folder), n, size)
        cmd = [sys.executable, __file__, "--read-child", json.dumps({"folder": folder, "n_images": n, "size": size})]
        out = subprocess.run(cmd, check=True, capture_output=True, text=True, env={**os.environ})
    run = json.loads(out.stdout.strip().splitlines()[-1])
    plain, data = run["plain_images"] / run["plain_s"], run["data_images"] / run["data_s"]
    return [
        [
            "read",
            f"images/s read by 2 consumers, {n} images {size}²: actors by key (per step) / Ray Data streaming_split",
            f"{plain:.0f} / {data:.0f} ({run['plain_s']:.1f} s, {run['data_s']:.1f} s)",
            f"{plain / data:.2f}",
            "≥ 1 (the plain actors)",
            "yes" if plain >= data else "NO",
        ]
    ]


def _table(rows: list[list[str]]) -> str:
    head = ["part", "measure", "values", "ratio", "target", "met"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--part", choices=["memory", "quality", "peer", "distributed", "throughput", "read", "all"], default="all"
    )
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run, not the targets' sizes)")
    parser.add_argument(
        "--actors", default="1,2", help="comma-separated numbers of coding actors for the throughput (default 1,2)"
    )
    parser.add_argument(
        "--batch-per-actor",
        type=int,
        default=None,
        help=f"throughput: batches of this many images per actor (default: {BATCH} images whatever the actors)",
    )
    parser.add_argument("--memory-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--distributed-child", type=str, help=argparse.SUPPRESS)
    parser.add_argument("--read-child", type=str, help=argparse.SUPPRESS)
    parser.add_argument("--single-child", type=str, help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=SIZE, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        _memory_child(args.memory_child, args.size)
        return 0
    if args.distributed_child:
        _distributed_child(json.loads(args.distributed_child))
        return 0
    if args.read_child:
        _read_child(json.loads(args.read_child))
        return 0
    if args.single_child:
        _single_child(json.loads(args.single_child))
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stderr)
    global ACTORS, PER_ACTOR
    if args.batch_per_actor is not None and args.batch_per_actor < 1:
        parser.error(f"--batch-per-actor must be at least 1, got {args.batch_per_actor}")
    PER_ACTOR = args.batch_per_actor
    try:
        ACTORS = tuple(sorted({int(a) for a in args.actors.split(",")}))
    except ValueError:
        parser.error(f"--actors takes comma-separated integers, got {args.actors!r}")
    if not ACTORS or min(ACTORS) < 1:
        parser.error(f"--actors takes counts of at least 1, got {args.actors!r}")
    parts = {
        "memory": memory,
        "quality": quality,
        "peer": peer,
        "distributed": distributed,
        "throughput": throughput,
        "read": read,
    }
    rows = []
    everything = [name for name in parts if name != "throughput"]  # the distributed part measures it too
    for name in everything if args.part == "all" else [args.part]:
        rows += parts[name](args.quick)
    info = machine_info()
    lines = [_table(rows), ""] + [f"- {k}: {v}" for k, v in info.items()]
    sys.stdout.write("\n".join(lines) + "\n")
    return 0 if all(r[-1] == "yes" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
