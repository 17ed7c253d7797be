"""``deconv learn`` of a job file with ``learning: {mode: online, ...}``: one layer learned from a stream of image
batches by coding actors (:class:`workers.distributed.online.OnlineRun`), run from this process.

The images (a folder or an fsspec URL) are read by the actors, a batch at a time; this process holds the filters
and the statistics only. The held-out images (``learning.held_out``) give ``held_out.json``; checkpoints go to
``OUT/checkpoints`` every ``--checkpoint-every`` batches, else ``learning.checkpoint_every`` (0: none) and ``--resume``
goes on from the newest. ``OUT`` receives ``filters.npy``, ``history.json`` (E of every batch), ``filters.png``
and ``held_out.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from workers.jobs.jobfile import LearnJobFile
from workers.jobs.objects import ObjectStore

from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE


def learn_online(args: argparse.Namespace, job: LearnJobFile, paths: list, error) -> int:
    """Run an online ``deconv learn``; `paths` are the image files, `error` writes a message for the user.

    Returns
    -------
    int
        0 done, 1 failed, 2 a bad config or input, 130 stopped by Ctrl-C (with a checkpoint to resume from).
    """
    from workers.jobs.spec import SpecError, check_online  # noqa: PLC0415

    if args.n_iter is not None:
        error(
            "--n-iter: an online job reads learning.n_epochs passes or learning.n_images images, not outer iterations"
        )
        return EXIT_USAGE
    try:
        check_online(job, len(paths))
        config = job.learn_config()
    except (SpecError, ValueError) as exc:
        error(str(exc))
        return EXIT_USAGE

    from workers.distributed.cluster import ClusterConfig, connect, shutdown  # noqa: PLC0415
    from workers.distributed.online import OnlineRun  # noqa: PLC0415
    from workers.distributed.pool import Interrupted  # noqa: PLC0415
    from workers.distributed.stream import StreamPlan, held_out_split  # noqa: PLC0415
    from workers.jobs.online_job import DEFAULT_CHECKPOINT_EVERY  # noqa: PLC0415

    from .learn import _actor_cpus, _one_line, _stop_on_interrupt, _write_outputs  # noqa: PLC0415

    learning = job.learning
    train, held = held_out_split(len(paths), learning.held_out_count(len(paths)), config.seed)
    plan = StreamPlan(len(train), learning.batch_size or 16, learning.n_epochs or 1, learning.n_images, config.seed)
    out = ObjectStore(str(args.out))
    every = args.checkpoint_every if args.checkpoint_every is not None else learning.checkpoint_every
    every = every if every is not None else DEFAULT_CHECKPOINT_EVERY
    stop, now = threading.Event(), threading.Event()
    try:
        run = OnlineRun(
            [paths[i] for i in train],
            config,
            learning.online_config(held_out_every=max(1, plan.n_steps // 50)),
            plan,
            workers=args.workers or job.workers or 1,
            backend="auto",
            actor_cpus=_actor_cpus(args),
            held_out=[paths[i] for i in held],
            checkpoint_dir=out.child("checkpoints") if every else None,
            checkpoint_every=max(1, every),
            max_failures=args.max_failures,
        )
        context = connect(ClusterConfig(address=args.address))
        try:
            with (
                _progress(plan.total_images, disable=args.no_progress) as progress,
                _stop_on_interrupt(stop, now, "batch"),
            ):
                outcome = run.run(callback=progress, should_stop=stop.is_set, resume=args.resume, interrupt=now.is_set)
        finally:
            if context.started:
                shutdown()
    except Interrupted:
        error("interrupted in the middle of a batch; run again with --resume to go on from the last checkpoint")
        return EXIT_INTERRUPTED
    except (ValueError, OSError) as exc:  # an actor's error comes wrapped: its own type and message, one line
        error(_one_line(exc))
        return EXIT_USAGE
    except Exception as exc:  # an actor's failure, beyond max_failures  # noqa: BLE001
        error(f"{type(exc).__name__}: {exc}")
        return EXIT_FAILED
    if outcome.result is not None:
        _write_outputs(out, outcome.result)
        out.write("held_out.json", json.dumps(outcome.result.held_out_history).encode())
        sys.stdout.write(f"wrote filters.npy, history.json, filters.png and held_out.json to {out.url}\n")
    if not outcome.finished:
        error(f"interrupted after {outcome.images_seen} images; run again with --resume to go on")
        return EXIT_INTERRUPTED
    return EXIT_OK


@contextmanager
def _progress(total: int, *, disable: bool) -> Iterator:
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=total, unit="img", desc="learning online", file=sys.stderr, disable=disable) as bar:

        def update(stats, seen: int) -> None:
            bar.n = seen
            bar.set_postfix(E=f"{stats.objective:.4g}", nonzero=f"{stats.sparsity:.3f}", refresh=False)
            bar.refresh()

        yield update
