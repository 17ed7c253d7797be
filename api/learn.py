"""``deconv learn``: one learning job on a Ray cluster, run from this process (no service).

The job file or preset gives the config and the images (a folder, or an fsspec URL such as ``s3://bucket/imgs/``:
each shard actor reads its own images from there, on whatever node it runs); the coordinator runs the alternating
loop over the shard actors with checkpoints in ``OUT/checkpoints``, each actor writing its own part; ``OUT`` (a
folder or an fsspec URL, written through :class:`workers.jobs.objects.ObjectStore`) receives ``filters.npy``
(K, C, s, s) float32, ``history.json`` and ``filters.png``. The first Ctrl-C stops after the current outer
iteration (a checkpoint to ``--resume`` from), the second stops the shard actors' calls at once (the outer
iteration in flight is lost: ``--resume`` goes on from the last checkpoint), a third aborts. A job file with
``learning: {mode: online}`` learns from a stream of batches instead (:mod:`api.learn_online`). :mod:`api.cli`
imports this module only for ``learn``, so the other commands do not load Ray or the solver.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np

from solver.images.pictures import filter_montage, png_bytes
from workers.jobs.jobfile import load_job_file
from workers.jobs.objects import ObjectStore, StoreUnreachable, check_store, npy_bytes

from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .parser import CHECKPOINT_EVERY

logger = logging.getLogger("deconv.cli")


def _one_line(exc: BaseException) -> str:
    """An input error as one line: a ValueError's message, an OSError's type and message, the actor's own
    exception for one raised in a Ray actor (not Ray's wrapper and its traceback)."""
    from workers.jobs.runner import describe_error  # noqa: PLC0415

    line = describe_error(exc)
    return line.removeprefix("ValueError: ")


def _error(message: str) -> None:
    sys.stderr.write(f"deconv learn: error: {message}\n")


def learn(args: argparse.Namespace) -> int:
    """Run ``deconv learn`` with the parsed arguments.

    Parameters
    ----------
    args : argparse.Namespace
        ``config``, ``images``, ``n_iter``, ``workers``, ``out``, ``address``, ``checkpoint_every``,
        ``max_failures``, ``resume``, ``no_progress`` (see ``deconv learn --help``).

    Returns
    -------
    int
        The exit status: 0 done, 1 the job failed, 2 a bad config or input, 130 stopped by Ctrl-C (with a
        checkpoint to resume from).
    """
    try:
        job = load_job_file(args.config)
        # before any image is listed or Ray starts: a missing bucket or a store that does not answer is one line
        check_store(str(args.out), "--out")
        for given in args.images or ([job.images] if job.images else []):
            check_store(str(given), "--images" if args.images else "images")
        paths = job.image_paths(args.images)
        online = job.learning.online
        config = None if online else job.learn_config(n_iter=args.n_iter)
    except StoreUnreachable as exc:
        _error(str(exc))
        return EXIT_FAILED
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE
    if online:  # a stream of batches through coding actors
        from .learn_online import learn_online  # noqa: PLC0415

        return learn_online(args, job, paths, _error)

    # Ray loads only once the job file is known good: a bad one is refused at once
    from workers.distributed.cluster import ClusterConfig, connect, shutdown  # noqa: PLC0415
    from workers.distributed.coordinator import Coordinator, Interrupted, JobFailedError  # noqa: PLC0415

    workers = args.workers or job.workers or 1
    stop, now = threading.Event(), threading.Event()
    try:
        out = ObjectStore(str(args.out))
        coordinator = Coordinator(
            paths,
            config,
            workers=workers,
            checkpoint_dir=out.child("checkpoints"),
            checkpoint_every=CHECKPOINT_EVERY if args.checkpoint_every is None else args.checkpoint_every,
            max_failures=args.max_failures,
            cluster=ClusterConfig(address=args.address),
            actor_cpus=_actor_cpus(args),
            gather_maps=False,  # only the filters are written: the maps stay in the actors
        )
        context = connect(coordinator.cluster)
        try:
            with _progress(config.n_iter, disable=args.no_progress) as progress, _stop_on_interrupt(stop, now):
                result = coordinator.run(
                    callback=progress, should_stop=stop.is_set, resume=args.resume, interrupt=now.is_set
                )
        finally:
            if context.started:
                shutdown()
    except Interrupted:
        _error(
            "interrupted in the middle of an outer iteration; run again with --resume to go on from the last checkpoint"
        )
        return EXIT_INTERRUPTED
    except JobFailedError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except ConnectionError as exc:  # the cluster's address does not answer
        _error(str(exc))
        return EXIT_FAILED
    except (ValueError, OSError) as exc:  # an actor's error comes wrapped: its own type and message, one line
        _error(_one_line(exc))
        return EXIT_USAGE
    _write_outputs(out, result)
    sys.stdout.write(f"wrote filters.npy, history.json and filters.png to {out.url}\n")
    if stop.is_set():
        _error(f"interrupted after outer iteration {len(result.history)}; run again with --resume to go on")
        return EXIT_INTERRUPTED
    return EXIT_OK


@contextmanager
def _progress(total: int, *, disable: bool) -> Iterator:
    from tqdm import tqdm  # noqa: PLC0415  (a progress bar only where one is drawn)

    with tqdm(total=total, unit="it", desc="learning", file=sys.stderr, disable=disable) as bar:

        def update(stats) -> None:
            bar.n = stats.iteration  # absolute: a resumed run, or one rolled back after a failure, stays right
            bar.set_postfix(E=f"{stats.objective:.4g}", nonzero=f"{stats.sparsity:.3f}", refresh=False)
            bar.refresh()

        yield update


@contextmanager
def _stop_on_interrupt(stop: threading.Event, now: threading.Event, step: str = "outer iteration") -> Iterator[None]:
    """First Ctrl-C: stop after the current `step` (cooperative cancel); the second one stops the actors' calls at
    once; a third aborts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if now.is_set():
            raise KeyboardInterrupt
        if stop.is_set():
            now.set()
            logger.warning("interrupt: stopping now; the %s in flight is lost (Ctrl-C again to abort)", step)
            return
        stop.set()
        logger.warning("interrupt: stopping after this %s (Ctrl-C again to stop at once)", step)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _actor_cpus(args: argparse.Namespace) -> float:
    """``--cpus-per-worker``, else 1 CPU per shard actor on a cluster this command joins (Ray then places the actors
    on nodes with free CPUs, never on a head that offers none) and 0 on its private cluster (the machine is its own)."""
    from workers.distributed.cluster import LOCAL, ClusterConfig  # noqa: PLC0415

    given = getattr(args, "cpus_per_worker", None)
    if given is not None:
        return float(given)
    return 0.0 if ClusterConfig(address=args.address).resolved_address() == LOCAL else 1.0


def _write_outputs(out: ObjectStore, result) -> None:
    out.write("filters.npy", npy_bytes(result.filters.astype(np.float32)))
    # elapsed_s: seconds since the run started, so that the time per outer iteration can be read off the file
    history = [{"iteration": s.iteration, "objective": s.objective, "elapsed_s": s.elapsed} for s in result.stats]
    out.write("history.json", json.dumps(history, indent=1).encode())
    out.write("filters.png", png_bytes(filter_montage(result.filters)))
