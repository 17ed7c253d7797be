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
    deconv encode-job JOB (IMAGE... | --dataset ID) [--layer L] [--method M] [--max-iter N] [--block-size N]
                      [--workers N] [--wait | --out FILE.npz]
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
import sys
from collections.abc import Sequence

from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE
from .parser import DEFAULT_URL as DEFAULT_URL  # re-exported: the default --url
from .parser import _parser

logger = logging.getLogger("deconv.cli")


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
    if not args.verbose:  # where the S3 client found its credentials and endpoint is noise in a service's log
        for name in ("botocore", "aiobotocore", "s3fs"):
            logging.getLogger(name).setLevel(logging.WARNING)
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

    from workers.jobs.objects import StoreUnreachable  # noqa: PLC0415

    from .datalock import DataDirInUse  # noqa: PLC0415
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
    except DataDirInUse as exc:
        _error(f"{exc} (--data-dir or DECONV_DATA_DIR)", "serve")
        return EXIT_USAGE
    except StoreUnreachable as exc:
        _error(str(exc), "serve")
        return EXIT_FAILED
    except ConnectionError as exc:
        _error(f"cannot connect to the Ray cluster: {exc}", "serve")
        return EXIT_FAILED
    except (OSError, sqlite3.Error) as exc:
        _error(f"cannot use the data directory {settings.data_dir}: {exc}", "serve")
        return EXIT_USAGE


def _demo(args: argparse.Namespace) -> int:
    from .client import DeconvAPIError  # noqa: PLC0415
    from .datalock import DataDirInUse  # noqa: PLC0415
    from .demo import run_demo  # noqa: PLC0415

    if not args.verbose:  # Ray's note on its token authentication means nothing to a first run
        logging.getLogger("ray").setLevel(logging.ERROR)
    try:
        return run_demo(args.out, data_dir=args.data_dir, config=args.config, progress=not args.no_progress)
    except DeconvAPIError as exc:
        _error(exc.message, "demo")
        return EXIT_FAILED
    except DataDirInUse as exc:  # the demo reads no DECONV_DATA_DIR: only its option can move it
        _error(f"{exc} (--data-dir)", "demo")
        return EXIT_USAGE
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
        "encode-job": commands.encode_job,
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
