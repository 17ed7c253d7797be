"""The ``deconv`` command line.

::

    deconv learn CONFIG --workers N --out DIR [--images IMAGE...] [--n-iter N] [--address ADDR]
                 [--checkpoint-every K] [--resume]
    deconv serve [--host 127.0.0.1] [--port 8000] [--data-dir DIR]
    deconv submit JOBFILE [--dataset ID] [--workers N] [--wait [--timeout S]]
    deconv status [JOB] [--status S] [--limit N] [--json]
    deconv wait JOB [--timeout S]
    deconv cancel JOB
    deconv filters JOB --out FILE [--layer L] [--format npy|png]
    deconv model JOB --out FILE.deconv
    deconv encode JOB IMAGE... --out FILE.npz [--layer L] [--max-iter N] [--method M]
    deconv reconstruct JOB --out FILE [--format npy|png]
    deconv reconstruct --maps FILE (--job JOB [--layer L] [--switches NPZ] | --filters FILE [--boundary B]) --out FILE
    deconv demo [--out demo-output] [--data-dir DIR] [--config CONFIG]
    deconv samples --out DIR
    deconv --version

CONFIG is a YAML file or a bundled preset by name (``quick``, ``demo``, ``zeiler2010``, ``zeiler2010-layer1``,
``zeiler2011``; see :mod:`configs`). ``learn`` runs one learning job on a Ray cluster (a private local one unless
``--address`` or ``RAY_ADDRESS`` names one), with a progress bar on stderr, checkpoints in ``DIR/checkpoints``,
and writes ``DIR/filters.npy`` (K, C, s, s) float32, ``DIR/history.json`` (a list of {"iteration", "objective"})
and ``DIR/filters.png``.
Ctrl-C stops it after the current outer iteration, with a checkpoint; ``--resume`` goes on. Its images are the
job file's ``images:`` folder, or the files and folders given with ``--images`` (a preset names none).
``samples`` writes the bundled sample images (eight 128x128 grey PNGs) into a folder, for a first ``learn``.

``serve`` runs the HTTP service (settings from the ``DECONV_*`` environment variables, see :mod:`api.settings`;
``--data-dir`` overrides ``DECONV_DATA_DIR``). ``submit`` takes a YAML job file as ``learn`` does (its
``images:`` folder is uploaded as a new dataset), or a spec file with ``--dataset ID``; it prints the job id.
``wait`` follows a job with a progress bar (layers x outer iterations, the objective E) on stderr. ``demo`` starts
the service in this process, runs the quick job on the sample images and writes pictures of the result (see
:mod:`api.demo`). The client commands talk to ``--url`` (default ``DECONV_URL``, else http://127.0.0.1:8000) with
``--api-key`` (default ``DECONV_API_KEY``).

Exit status:

===  ==============================================================================================
0    done; for ``wait``, ``submit --wait`` and ``demo``: the job succeeded
1    the job failed; the service answered 5xx or could not be reached; ``serve`` could not start
2    bad arguments, config or input file; a bad setting (``serve``); the service refused the request
     (4xx: a bad field, an unknown job, results of a job that has not succeeded)
3    the job was cancelled (``wait``, ``submit --wait``)
4    ``--timeout`` passed before the job ended (it goes on at the service)
130  interrupted (Ctrl-C); a followed job goes on at the service, the demo's job is cancelled
===  ==============================================================================================
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from workers.jobs.status import STATUSES

from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE

logger = logging.getLogger("deconv.cli")

DEFAULT_URL = "http://127.0.0.1:8000"


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="deconv",
        description="Convolutional sparse coding and "
        "Deconvolutional Networks: learn filters from images, locally or as a service.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log progress details (INFO) on stderr")
    parser.add_argument("--version", action="version", version=f"deconv {_version()}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _add_learn(commands)
    serve = commands.add_parser(
        "serve",
        help="run the HTTP service",
        description="Run the HTTP service (settings from DECONV_* environment variables; API docs at /docs).",
    )
    serve.add_argument("--host", default="127.0.0.1", help="interface to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=_port, default=8000, help="port (default 8000; 0: a free one)")
    serve.add_argument(
        "--data-dir", type=Path, default=None, help="data directory (default: DECONV_DATA_DIR, else ./deconv-data)"
    )
    _add_client_commands(commands)
    demo = commands.add_parser(
        "demo",
        help="the demo job on the sample images, through an in-process service",
        description="Start the service in this process, learn the demo job (two layers) on "
        "the sample images and write filters.png, filters-layer2.png, reconstructions.png, "
        "objective.png, filters.npy and history.json.",
    )
    demo.add_argument("--out", type=Path, default=Path("demo-output"), help="output folder (default demo-output)")
    demo.add_argument("--data-dir", type=Path, default=None, help="the service's data (default OUT/data)")
    demo.add_argument("--config", type=Path, default=None, help="job config: a file or a preset name (default demo)")
    demo.add_argument("--no-progress", action="store_true", help="no progress bar")
    samples = commands.add_parser(
        "samples",
        help="write the bundled sample images into a folder",
        description="Write the bundled sample images (eight 128x128 grey PNGs) into a "
        "folder, for example for 'deconv learn quick --images FOLDER'.",
    )
    samples.add_argument("--out", type=Path, required=True, help="output folder")
    return parser


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version  # noqa: PLC0415

    try:
        return version("deconv")
    except PackageNotFoundError:  # a clone on PYTHONPATH, never installed: no metadata to read the version from
        return "(version unknown: not installed)"


def _add_learn(commands) -> None:
    learn = commands.add_parser(
        "learn",
        help="learn one layer of filters from a folder of images",
        description="Learn one layer of filters on a Ray cluster (local by default).",
    )
    learn.add_argument(
        "config",
        type=Path,
        help="YAML job file (LearnConfig fields plus 'images: FOLDER'), or a "
        "config file or preset name (quick, zeiler2010, ...) with --images",
    )
    learn.add_argument(
        "--images",
        type=str,
        nargs="+",
        default=None,
        metavar="IMAGE",
        help="image files or folders of them, of one shape, as paths or fsspec URLs (s3://bucket/images/) "
        "(instead of the job file's 'images')",
    )
    learn.add_argument(
        "--n-iter",
        type=_positive_int,
        default=None,
        metavar="N",
        help="outer iterations (instead of the config's n_iter)",
    )
    learn.add_argument(
        "--workers", type=_positive_int, default=None, help="shard actors (default: the job file's 'workers', else 1)"
    )
    learn.add_argument("--out", type=str, required=True, help="output folder, or an fsspec URL (s3://bucket/run/)")
    learn.add_argument(
        "--address",
        type=_ray_address,
        default=None,
        help="Ray cluster: auto (the cluster this machine is a node of) or a head's host:port "
        "(default: RAY_ADDRESS, else a private local cluster)",
    )
    learn.add_argument(
        "--checkpoint-every",
        type=_non_negative_int,
        default=5,
        metavar="K",
        help="checkpoint every K outer iterations in OUT/checkpoints (0: never; default 5)",
    )
    learn.add_argument(
        "--max-failures",
        type=_non_negative_int,
        default=3,
        help="shard failures survived before the job fails (default 3)",
    )
    learn.add_argument(
        "--cpus-per-worker",
        type=_cpus,
        default=None,
        help="CPUs each shard actor reserves (default: 1 on a cluster joined with --address or RAY_ADDRESS, so "
        "the actors go where there are free CPUs; 0 on the private local cluster)",
    )
    learn.add_argument("--resume", action="store_true", help="resume from the newest checkpoint in OUT/checkpoints")
    learn.add_argument("--no-progress", action="store_true", help="no progress bar")


def _add_client_commands(commands) -> None:
    service = argparse.ArgumentParser(add_help=False)
    service.add_argument(
        "--url",
        default=os.environ.get("DECONV_URL") or DEFAULT_URL,
        help=f"the service (default: DECONV_URL, else {DEFAULT_URL})",
    )
    service.add_argument(
        "--api-key",
        default=os.environ.get("DECONV_API_KEY") or None,
        help="sent as X-API-Key (default: DECONV_API_KEY)",
    )
    following = argparse.ArgumentParser(add_help=False)
    following.add_argument(
        "--timeout",
        type=_positive_float,
        default=None,
        metavar="S",
        help="give up waiting after S seconds (exit 4; the job goes on)",
    )
    following.add_argument("--no-progress", action="store_true", help="no progress bar")

    def add(name: str, help: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:  # noqa: A002
        return commands.add_parser(
            name, help=help, description=help[0].upper() + help[1:] + ".", parents=[service, *parents]
        )

    submit = add("submit", "submit a learning job; prints its id", following)
    submit.add_argument(
        "spec",
        type=Path,
        metavar="JOBFILE",
        help="YAML job file: job spec fields plus 'images: FOLDER' (uploaded), or a spec with --dataset",
    )
    submit.add_argument("--dataset", default=None, metavar="ID", help="learn on this uploaded dataset")
    submit.add_argument("--workers", type=_positive_int, default=None, help="shard actors (default: the file's)")
    submit.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help="submitting again with the same key returns the first job",
    )
    submit.add_argument("--wait", action="store_true", help="follow the job to its end (exit status as wait)")
    status = add("status", "show one job, or list the jobs")
    status.add_argument("job", nargs="?", default=None, metavar="JOB", help="a job id (default: list the jobs)")
    status.add_argument("--status", default=None, choices=STATUSES, help="list only jobs in this state")
    status.add_argument(
        "--limit",
        type=_non_negative_int,
        default=20,
        metavar="N",
        help="list at most N jobs, newest first (0: all; default 20)",
    )
    status.add_argument("--json", action="store_true", help="print the JSON the service answered")
    wait = add("wait", "follow a job to its end with a progress bar", following)
    wait.add_argument("job", metavar="JOB")
    cancel = add("cancel", "cancel a job (a running one stops after its current outer iteration)")
    cancel.add_argument("job", metavar="JOB")
    filters = add("filters", "save a finished job's filters")
    filters.add_argument("job", metavar="JOB")
    filters.add_argument("--layer", type=_positive_int, default=None, metavar="L", help="default: the top layer")
    filters.add_argument(
        "--format",
        choices=("npy", "png"),
        default=None,
        help="npy (K, C, s, s) float32, or png (a montage); default: from --out's suffix",
    )
    filters.add_argument("--out", type=Path, required=True, metavar="FILE")
    model = add("model", "save a finished job's model file (solver.load_model reads it)")
    model.add_argument("job", metavar="JOB")
    model.add_argument("--out", type=Path, required=True, metavar="FILE", help="for example model.deconv")
    encode = add("encode", "encode images with a finished job's model: maps (and pooling switches) per layer")
    encode.add_argument("job", metavar="JOB")
    encode.add_argument(
        "images",
        type=Path,
        nargs="+",
        metavar="IMAGE",
        help="PNG, JPEG, TIFF or NPY files, or folders of them, of one shape",
    )
    encode.add_argument("--layer", type=_positive_int, default=None, metavar="L", help="default: the top layer")
    encode.add_argument(
        "--max-iter", type=_positive_int, default=200, metavar="N", help="inference iterations per layer (default 200)"
    )
    encode.add_argument(
        "--method", choices=("admm", "fista", "zeiler"), default=None, help="default: the job's inference"
    )
    encode.add_argument(
        "--format",
        choices=("npz", "npy"),
        default=None,
        help="npz: 'L1'... maps and 'S1'... switches of every layer up to L; npy: the maps of L "
        "(N, K, H', W'); default: from --out's suffix",
    )
    encode.add_argument("--out", type=Path, required=True, metavar="FILE")
    reconstruct = add("reconstruct", "save a job's reconstructions, or reconstruct images from feature maps")
    reconstruct.add_argument(
        "job_id",
        nargs="?",
        default=None,
        metavar="JOB",
        help="a finished job: save its reconstructions of the training images",
    )
    reconstruct.add_argument(
        "--maps", type=Path, default=None, metavar="FILE", help="feature maps (N, K, H', W') .npy, or a job's maps .npz"
    )
    reconstruct.add_argument("--job", default=None, metavar="JOB", help="with --maps: use this job's filters")
    reconstruct.add_argument(
        "--layer",
        type=_positive_int,
        default=None,
        metavar="L",
        help="with --job: the layer of the maps (default: the top one)",
    )
    reconstruct.add_argument(
        "--filters", type=Path, default=None, metavar="FILE", help="with --maps: filters (K, C, s, s) .npy"
    )
    reconstruct.add_argument(
        "--switches",
        type=Path,
        default=None,
        metavar="FILE",
        help="with --job, for maps of a layer above a pooling layer: the .npz that "
        "/models/{id}/encode?format=npz returned with them (its 'L<j>' and 'S<j>' arrays)",
    )
    reconstruct.add_argument(
        "--boundary",
        choices=("circular", "valid"),
        default="circular",
        help="with --filters: how the maps relate to the images (default circular)",
    )
    reconstruct.add_argument(
        "--format",
        choices=("npy", "png"),
        default=None,
        help="npy (N, C, H, W) float32, or png; default: from --out's suffix",
    )
    reconstruct.add_argument("--out", type=Path, required=True, metavar="FILE")


def _ray_address(text: str) -> str:
    from workers.distributed.address import check_address  # noqa: PLC0415

    try:
        return check_address(text, "the address")
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _cpus(text: str) -> float:
    from workers.distributed.placement import check_amount  # noqa: PLC0415

    try:
        value = float(text)
        if not value >= 0:
            raise ValueError(f"must be a non-negative number, got {text!r}")
        return check_amount(value)
    except ValueError as exc:
        message = str(exc).replace("could not convert string to float: ", "not a number: ")
        raise argparse.ArgumentTypeError(message) from None


def _positive_int(text: str) -> int:
    value = _non_negative_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def _port(text: str) -> int:
    value = _non_negative_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0 to 65535), got {text!r}")
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
    """Run the ``deconv`` command line.

    Parameters
    ----------
    argv : sequence of str, optional
        The arguments after ``deconv``; default: ``sys.argv[1:]``.

    Returns
    -------
    int
        The exit status (see the table above, :mod:`api.exits`); ``--help`` and usage errors return instead of
        exiting.
    """
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on usage errors; callers of main() get a status
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    logging.basicConfig(
        level=logging.INFO if args.verbose or args.command == "serve" else logging.WARNING,
        format="%(levelname)s %(name)s: %(message)s",
    )
    if args.command == "learn":
        from .learn import learn  # noqa: PLC0415  (Ray and the solver load only for this command)

        return learn(args)
    if args.command == "serve":
        return _serve(args)
    if args.command == "demo":
        return _demo(args)
    if args.command == "samples":
        return _samples(args)
    return _client_command(args)


def _error(message: str, command: str) -> None:
    sys.stderr.write(f"deconv {command}: error: {message}\n")


def _serve(args: argparse.Namespace) -> int:
    import sqlite3  # noqa: PLC0415

    from .serve import serve  # noqa: PLC0415
    from .settings import Settings  # noqa: PLC0415

    try:
        settings = Settings.from_env(data_dir=args.data_dir)
    except ValueError as exc:
        _error(str(exc), "serve")
        return EXIT_USAGE
    try:
        return serve(settings, host=args.host, port=args.port)
    except ValueError as exc:  # local-cluster resources with a remote Ray address
        _error(str(exc), "serve")
        return EXIT_USAGE
    except ConnectionError as exc:
        _error(f"cannot connect to the Ray cluster: {exc}", "serve")
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as exc:
        _error(f"cannot use the data directory {settings.data_dir}: {exc}", "serve")
        return EXIT_USAGE


def _demo(args: argparse.Namespace) -> int:
    from .client import DeconvAPIError  # noqa: PLC0415
    from .demo import run_demo  # noqa: PLC0415

    if not args.verbose:  # Ray's note on its token authentication means nothing to a first run
        logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        return run_demo(args.out, data_dir=args.data_dir, config=args.config, progress=not args.no_progress)
    except DeconvAPIError as exc:
        _error(exc.message, "demo")
        return EXIT_FAILED
    except RuntimeError as exc:  # the service did not start
        _error(str(exc), "demo")
        return EXIT_FAILED
    except (ValueError, OSError) as exc:
        _error(f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc), "demo")
        return EXIT_USAGE


def _samples(args: argparse.Namespace) -> int:
    from configs import sample_paths  # noqa: PLC0415
    from workers.distributed.checkpoint import atomic_write_bytes  # noqa: PLC0415

    try:
        args.out.mkdir(parents=True, exist_ok=True)
        for path in sample_paths():
            atomic_write_bytes(args.out / path.name, path.read_bytes())
    except OSError as exc:
        _error(f"{type(exc).__name__}: {exc}", "samples")
        return EXIT_USAGE
    sys.stdout.write(f"wrote {len(sample_paths())} sample images to {args.out.resolve()}\n")
    return EXIT_OK


def _client_command(args: argparse.Namespace) -> int:
    from . import commands  # noqa: PLC0415
    from .client import DeconvAPIError, DeconvClient  # noqa: PLC0415

    run = {
        "submit": commands.submit,
        "status": commands.status,
        "wait": commands.wait,
        "cancel": commands.cancel,
        "filters": commands.filters,
        "model": commands.model,
        "encode": commands.encode,
        "reconstruct": commands.reconstruct,
    }[args.command]
    try:
        with DeconvClient(args.url, api_key=args.api_key) as client:
            return run(args, client)
    except DeconvAPIError as exc:
        _error(exc.message, args.command)
        return EXIT_USAGE if exc.client_error else EXIT_FAILED
    except ValueError as exc:  # commands.UsageError, or a folder without images
        _error(str(exc), args.command)
        return EXIT_USAGE
    except OSError as exc:
        _error(f"{type(exc).__name__}: {exc}", args.command)
        return EXIT_USAGE
    except KeyboardInterrupt:
        _error("interrupted", args.command)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
