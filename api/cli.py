"""The ``deconv`` command line. Only ``learn`` so far (issue #4 adds serve, submit, status, ...).

::

    deconv learn CONFIG --workers N --out DIR [--address ADDR] [--checkpoint-every K] [--resume]

``learn`` runs one learning job on a Ray cluster (a private local one unless ``--address`` or ``RAY_ADDRESS``
names one), with a progress bar on stderr, checkpoints in ``DIR/checkpoints``, and writes ``DIR/filters.npy``
(K, C, s, s) float32, ``DIR/history.json`` (a list of {"iteration", "objective"}) and ``DIR/filters.png``.
Exit status: 0 done, 1 the job failed (shard failures past ``--max-failures``), 2 bad config or input,
130 interrupted (Ctrl-C stops after the current outer iteration, with a checkpoint; ``--resume`` goes on).
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import signal
import sys
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

logger = logging.getLogger("deconv.cli")

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deconv", description="Convolutional sparse coding and "
                                     "Deconvolutional Networks: learn filters from images.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO) on stderr")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    learn = commands.add_parser("learn", help="learn one layer of filters from a folder of images",
                                description="Learn one layer of filters on a Ray cluster (local by default).")
    learn.add_argument("config", type=Path, help="YAML job file: LearnConfig fields plus 'images: FOLDER'")
    learn.add_argument("--workers", type=_positive_int, default=None,
                       help="shard actors (default: the job file's 'workers', else 1)")
    learn.add_argument("--out", type=Path, required=True, help="output folder")
    learn.add_argument("--address", default=None,
                       help="Ray cluster address (default: RAY_ADDRESS, else a private local cluster)")
    learn.add_argument("--checkpoint-every", type=_non_negative_int, default=5, metavar="K",
                       help="checkpoint every K outer iterations in OUT/checkpoints (0: never; default 5)")
    learn.add_argument("--max-failures", type=_non_negative_int, default=3,
                       help="shard failures survived before the job fails (default 3)")
    learn.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in OUT/checkpoints")
    learn.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``deconv`` command line; returns the exit status."""
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors; callers of main() get a status
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    return _learn(args)


def _error(message: str) -> None:
    sys.stderr.write(f"deconv learn: error: {message}\n")


def _learn(args: argparse.Namespace) -> int:
    from workers.images import list_images  # noqa: PLC0415  (Ray is imported only for the commands that need it)
    from workers.jobfile import load_job_file  # noqa: PLC0415

    try:
        job = load_job_file(args.config)
        paths = list_images(job.images)
    except ValueError as exc:
        _error(str(exc))
        return EXIT_USAGE

    from workers.cluster import ClusterConfig, connect, shutdown  # noqa: PLC0415
    from workers.coordinator import Coordinator, JobFailedError  # noqa: PLC0415

    config = job.learn_config()
    workers = args.workers or job.workers or 1
    out: Path = args.out
    stop = threading.Event()
    try:
        out.mkdir(parents=True, exist_ok=True)
        coordinator = Coordinator(paths, config, workers=workers, checkpoint_dir=out / "checkpoints",
                                  checkpoint_every=args.checkpoint_every, max_failures=args.max_failures,
                                  cluster=ClusterConfig(address=args.address))
        context = connect(coordinator.cluster)
        try:
            with _progress(config.n_iter, disable=args.no_progress) as progress, _stop_on_interrupt(stop):
                result = coordinator.run(callback=progress, should_stop=stop.is_set, resume=args.resume)
        finally:
            if context.started:
                shutdown()
    except JobFailedError as exc:
        _error(str(exc))
        return EXIT_FAILED
    except (ValueError, OSError) as exc:
        _error(f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc).strip().splitlines()[-1])
        return EXIT_USAGE
    _write_outputs(out, result)
    sys.stdout.write(f"wrote filters.npy, history.json and filters.png to {out.resolve()}\n")
    if stop.is_set():
        _error(f"interrupted after outer iteration {len(result.history)}; run again with --resume to go on")
        return EXIT_INTERRUPTED
    return EXIT_OK


@contextmanager
def _progress(total: int, *, disable: bool) -> Iterator:
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=total, unit="it", desc="learning", file=sys.stderr, disable=disable) as bar:

        def update(stats) -> None:
            bar.n = stats.iteration  # absolute: a resumed run, or one rolled back after a failure, stays right
            bar.set_postfix(E=f"{stats.objective:.4g}", nonzero=f"{stats.sparsity:.3f}", refresh=False)
            bar.refresh()

        yield update


@contextmanager
def _stop_on_interrupt(stop: threading.Event) -> Iterator[None]:
    """First Ctrl-C: stop after the current outer iteration (cooperative cancel); the second one interrupts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()
        logger.warning("interrupt: stopping after this outer iteration (Ctrl-C again to abort)")

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def _write_outputs(out: Path, result) -> None:
    from PIL import Image  # noqa: PLC0415

    from solver.montage import filter_montage  # noqa: PLC0415
    from workers.checkpoint import atomic_write_bytes, npy_bytes  # noqa: PLC0415

    atomic_write_bytes(out / "filters.npy", npy_bytes(result.filters.astype(np.float32)))
    history = [{"iteration": s.iteration, "objective": s.objective} for s in result.stats]
    atomic_write_bytes(out / "history.json", json.dumps(history, indent=1).encode())
    picture = (np.clip(filter_montage(result.filters), 0, 1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    atomic_write_bytes(out / "filters.png", buffer.getvalue())


if __name__ == "__main__":
    raise SystemExit(main())
