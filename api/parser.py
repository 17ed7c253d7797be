"""The argument parser of the ``deconv`` command line (:mod:`api.cli` runs the commands it parses): the commands,
their options and the argument types that reject bad values with a usage error.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from workers.jobs.status import STATUSES

CHECKPOINT_EVERY = 5
"""Outer iterations between the checkpoints of ``deconv learn`` when ``--checkpoint-every`` is not given."""

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
        default=None,
        metavar="K",
        help="checkpoint every K outer iterations (an online job: every K batches) in OUT/checkpoints (0: never; "
        f"default {CHECKPOINT_EVERY}; an online job: its learning.checkpoint_every, else every 20 batches)",
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
    cancel = add("cancel", "cancel a job (a running one stops within a second or two)")
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
    encode_job = add(
        "encode-job",
        "encode a whole dataset on the cluster with a finished job's model; prints its job id",
        following,
    )
    encode_job.add_argument("job", metavar="JOB", help="the finished learning job whose model encodes")
    encode_job.add_argument(
        "images", type=Path, nargs="*", metavar="IMAGE", help="image files or folders to upload (or --dataset)"
    )
    encode_job.add_argument("--dataset", default=None, metavar="ID", help="encode this uploaded dataset")
    encode_job.add_argument("--layer", type=_positive_int, default=None, metavar="L", help="default: the top layer")
    encode_job.add_argument(
        "--method", choices=("admm", "fista", "zeiler"), default=None, help="default: the job's inference"
    )
    encode_job.add_argument(
        "--max-iter", type=_positive_int, default=None, metavar="N", help="inference iterations per layer (default 200)"
    )
    encode_job.add_argument(
        "--block-size", type=_positive_int, default=None, metavar="N", help="images per block (default: the service's)"
    )
    encode_job.add_argument("--workers", type=_positive_int, default=1, help="coding actors (default 1)")
    encode_job.add_argument(
        "--idempotency-key",
        default=None,
        metavar="KEY",
        help="submitting again with the same key returns the first job",
    )
    encode_job.add_argument("--wait", action="store_true", help="follow the job to its end (exit status as wait)")
    encode_job.add_argument(
        "--out", type=Path, default=None, metavar="FILE", help="wait, then save every image's maps here (.npz)"
    )
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
    value = _int(text)
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
    value = _int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be a non-negative integer, got {text!r}")
    return value


def _int(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer, got {text!r}") from None
