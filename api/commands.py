"""The ``deconv`` commands that talk to a running service: submit, status, wait, cancel, filters, encode,
reconstruct.

Each takes the parsed arguments and an open :class:`~api.client.DeconvClient` and returns an exit status (see
:mod:`api.cli`). Results go to stdout (a job id, a file written, a table); messages and the progress bar go to
stderr. A :class:`~api.client.DeconvAPIError` is not caught here: :func:`api.cli.main` prints its message (which
names the field) and exits 2 for a 4xx, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from .client import DeconvClient, JobWaitTimeout
from .client.payloads import npy_bytes, npz_bytes
from .exits import EXIT_INTERRUPTED, EXIT_OF_STATUS, EXIT_OK, EXIT_TIMEOUT


class UsageError(ValueError):
    """A bad argument or input file: the command prints the message and exits 2."""


def say(message: str) -> None:
    """A message for the person at the terminal (stderr, so stdout stays the command's result)."""
    sys.stderr.write(message.rstrip("\n") + "\n")


def result(text: str) -> None:
    sys.stdout.write(text.rstrip("\n") + "\n")


# -- submit ------------------------------------------------------------------------------------------------------

def submit(args: argparse.Namespace, client: DeconvClient) -> int:
    """Upload the job file's images (unless ``--dataset``), submit, print the job id; ``--wait`` follows it."""
    spec, images = load_spec_file(args.spec, dataset_id=args.dataset, workers=args.workers)
    if images is not None:
        dataset = client.upload_dataset([images])
        spec["dataset_id"] = dataset["id"]
        say(f"uploaded {dataset['n_images']} image(s) from {images} as dataset {dataset['id']}")
    job = client.submit(spec, idempotency_key=args.idempotency_key)
    result(job["id"])
    if not args.wait:
        return EXIT_OK
    return follow(client, job["id"], timeout=args.timeout, progress=not args.no_progress)


def load_spec_file(path: Path, *, dataset_id: str | None, workers: int | None) -> tuple[dict[str, Any], Path | None]:
    """The job spec of a YAML (or JSON) file, and the images folder to upload (None with `dataset_id`).

    The file holds the fields of a job spec (a learning config, as ``deconv learn`` takes) and, unless a
    dataset is given, ``images``: a folder, relative to the file's folder. The spec is checked here, so a bad
    field is named before any image is uploaded.
    """
    from pydantic import ValidationError  # noqa: PLC0415

    from workers.jobs.jobfile import JobFileError, describe_validation_error, read_job_mapping  # noqa: PLC0415
    from workers.jobs.spec import JobSpec  # noqa: PLC0415

    try:
        data = read_job_mapping(path)
    except JobFileError as exc:
        raise UsageError(str(exc)) from None
    images = data.pop("images", None)
    if workers is not None:
        data["workers"] = workers
    if dataset_id is not None:
        data["dataset_id"] = dataset_id
        folder = None
    elif images is None:
        raise UsageError(f"{path}: give 'images: FOLDER' in the file or --dataset ID")
    else:
        folder = Path(images) if Path(images).is_absolute() else path.resolve().parent / images
        if not folder.is_dir():
            raise UsageError(f"{path}: images: {str(folder)!r} is not a folder")
    try:
        JobSpec.model_validate({"dataset_id": "0" * 32, **data})
    except ValidationError as exc:
        raise UsageError(f"{path}: {describe_validation_error(exc)}") from None
    return data, folder


# -- status, wait, cancel ----------------------------------------------------------------------------------------

def status(args: argparse.Namespace, client: DeconvClient) -> int:
    """One job in detail, or a table of jobs (newest first)."""
    if args.job is not None:
        job = client.job(args.job)
        result(json.dumps(job, indent=1) if args.json else describe_job(job))
        return EXIT_OK
    jobs = list(client.jobs(limit=args.limit or None, status=args.status))
    if args.json:
        result(json.dumps(jobs, indent=1))
    elif not jobs:
        say("no jobs" + (f" with status {args.status}" if args.status else ""))
    else:
        rows = [("JOB", "STATUS", "PROGRESS", "OBJECTIVE", "CREATED")]
        rows += [(j["id"], j["status"], _progress_text(j), _objective_text(j), j["created_at"][:19]) for j in jobs]
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        result("\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows))
    return EXIT_OK


def describe_job(job: dict[str, Any]) -> str:
    p = job["progress"]
    lines = [f"job        {job['id']}", f"status     {job['status']}" + (" (cancel requested)" if
                                                                        job["cancel_requested"] and job["status"] ==
                                                                        "running" else ""),
             f"dataset    {job['dataset_id']}", f"progress   {_progress_text(job)}"]
    if p["objective"] is not None:
        sparsity = "" if p["sparsity"] is None else f", non-zero maps {p['sparsity']:.4f}"
        elapsed = "" if p["elapsed"] is None else f", {p['elapsed']:.1f} s"
        lines.append(f"objective  {p['objective']:.6g}{sparsity}{elapsed}")
    lines.append(f"created    {job['created_at']}")
    if job["finished_at"]:
        lines.append(f"finished   {job['finished_at']}")
    if job["error"]:
        lines.append(f"error      {job['error']}")
    return "\n".join(lines)


def _progress_text(job: dict[str, Any]) -> str:
    p = job["progress"]
    return f"layer {max(p['layer'], 1)}/{p['n_layers']}, iteration {p['iteration']}/{p['n_iter']} " \
           f"({100 * p['fraction']:.0f}%)"


def _objective_text(job: dict[str, Any]) -> str:
    objective = job["progress"]["objective"]
    return "-" if objective is None else f"{objective:.5g}"


def wait(args: argparse.Namespace, client: DeconvClient) -> int:
    return follow(client, args.job, timeout=args.timeout, progress=not args.no_progress)


def follow(client: DeconvClient, job_id: str, *, timeout: float | None = None, progress: bool = True) -> int:
    """Wait for the job with a progress bar on stderr; the exit status says how it ended (see :mod:`api.cli`)."""
    try:
        with progress_bar(disable=not progress) as update:
            job = client.wait(job_id, timeout=timeout, on_progress=update)
    except JobWaitTimeout as exc:
        say(f"deconv: {exc}")
        return EXIT_TIMEOUT
    except KeyboardInterrupt:
        say(f"deconv: stopped following job {job_id}; it goes on at the service (deconv cancel {job_id} stops it)")
        return EXIT_INTERRUPTED
    end = f"job {job_id} {job['status']}"
    if job["status"] == "succeeded":
        p = job["progress"]
        took = _seconds_between(job.get("started_at"), job.get("finished_at"))  # all layers, not the last one's
        elapsed = "" if took is None else f" in {took:.1f} s"
        objective = "" if p["objective"] is None else f", final objective {p['objective']:.6g}"
        end += f"{elapsed}{objective}"
    elif job["error"]:
        end += f": {job['error']}"
    say(end)
    return EXIT_OF_STATUS[job["status"]]


@contextmanager
def progress_bar(*, disable: bool = False) -> Iterator[Callable[[dict[str, Any]], None]]:
    """A tqdm bar on stderr over layers x outer iterations, showing the objective E; yields the update callback
    for :meth:`DeconvClient.wait`."""
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=1, unit="it", desc="queued", file=sys.stderr, disable=disable, dynamic_ncols=True) as bar:

        def update(job: dict[str, Any]) -> None:
            p = job["progress"]
            bar.total = p["total_steps"]
            bar.n = p["step"]
            bar.set_description(job["status"] if p["n_layers"] == 1 else f"{job['status']} L{max(p['layer'], 1)}/"
                                f"{p['n_layers']}", refresh=False)
            if p["objective"] is not None:
                bar.set_postfix(E=f"{p['objective']:.5g}", refresh=False)
            bar.refresh()

        yield update


def cancel(args: argparse.Namespace, client: DeconvClient) -> int:
    job = client.cancel(args.job)
    if job["status"] == "cancelled":
        result(f"job {job['id']} cancelled")
    else:
        result(f"job {job['id']} is {job['status']}: it stops after its current outer iteration")
    return EXIT_OK


# -- results -----------------------------------------------------------------------------------------------------

def filters(args: argparse.Namespace, client: DeconvClient) -> int:
    """Save a job's filters: ``.npy`` (K, C, s, s) float32, or the PNG montage."""
    fmt = args.format or _format_of(args.out, default="npy")
    if fmt == "png":
        data = client.filters_png(args.job, layer=args.layer)
        what = "filter montage"
    else:
        array = client.filters(args.job, layer=args.layer)
        data, what = npy_bytes(array), f"filters {tuple(array.shape)} {array.dtype}"
    return _write(args.out, data, what)


def model(args: argparse.Namespace, client: DeconvClient) -> int:
    """Save a finished job's model file (a zip archive that :func:`solver.load_model` reads)."""
    return _write(args.out, client.model_file(args.job), "model file")


def encode(args: argparse.Namespace, client: DeconvClient) -> int:
    """Encode image files (or folders of them) with a finished job's model: ``.npz`` with the maps of every layer
    up to ``--layer`` (``L1``, ``L2``, ...) and the switches of the layers that pool (``S1``, ...), which
    ``deconv reconstruct --switches`` reads; or ``.npy``, the (N, K, H', W') maps of ``--layer`` alone."""
    fmt = args.format or ("npy" if args.out.suffix.lower() == ".npy" else "npz")
    missing = [str(p) for p in args.images if not p.exists()]
    if missing:
        raise UsageError(f"no such image file or folder: {', '.join(missing)}")
    try:
        code = client.encode_layers(args.job, list(args.images), layer=args.layer, max_iter=args.max_iter,
                                    method=args.method)
    except (ValueError, OSError) as exc:
        raise UsageError(f"images: {exc}") from None
    top = max(int(name[1:]) for name in code if name.startswith("L"))
    if fmt == "npy":
        maps = code[f"L{top}"]
        return _write(args.out, npy_bytes(maps), f"layer-{top} maps {tuple(maps.shape)}")
    switches = sorted(name for name in code if name.startswith("S"))
    what = f"maps of layers 1-{top}" + (f" and switches {', '.join(switches)}" if switches else "")
    return _write(args.out, npz_bytes(code), what)


def reconstruct(args: argparse.Namespace, client: DeconvClient) -> int:
    """A job's reconstructions, or images from a maps file with a job's filters or a filters file."""
    fmt = args.format or _format_of(args.out, default="npy")
    if args.maps is None:
        return _job_reconstructions(args, client, fmt)
    _check_maps_options(args)
    maps = load_array(args.maps, "--maps")
    kwargs: dict[str, Any] = {"job_id": args.job, "layer": args.layer, "boundary": args.boundary}
    if args.switches is not None:
        kwargs["switches"] = load_arrays(args.switches, "--switches")
    if args.filters is not None:
        kwargs["filters"] = load_array(args.filters, "--filters")
    if fmt == "png":
        return _write(args.out, client.reconstruct_png(maps, **kwargs), "reconstructed images")
    images = client.reconstruct(maps, **kwargs)
    return _write(args.out, npy_bytes(images), f"images {tuple(images.shape)}")


def _job_reconstructions(args: argparse.Namespace, client: DeconvClient, fmt: str) -> int:
    if args.job_id is None:
        raise UsageError("give a JOB (its reconstructions) or --maps FILE with --job JOB or --filters FILE")
    if args.job is not None or args.filters is not None or args.layer is not None:
        raise UsageError("--job, --filters and --layer go with --maps; a JOB alone fetches its reconstructions")
    if fmt == "png":
        return _write(args.out, client.reconstructions_png(args.job_id), "inputs beside reconstructions")
    array = client.reconstructions(args.job_id)
    return _write(args.out, npy_bytes(array), f"reconstructions {tuple(array.shape)}")


def _check_maps_options(args: argparse.Namespace) -> None:
    if args.job_id is not None:
        raise UsageError(f"give the job of --maps as --job {args.job_id}, not as JOB")
    if (args.job is None) == (args.filters is None):
        raise UsageError("--maps needs exactly one of --job JOB (its filters) and --filters FILE")
    if args.filters is not None and (args.layer is not None or args.switches is not None):
        raise UsageError("--layer and --switches go with --job, not with --filters")


def load_arrays(path: Path, option: str) -> dict[str, np.ndarray]:
    """The named arrays of an ``.npz`` (no pickles)."""
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {name: archive[name] for name in archive.files}
    except (OSError, ValueError, EOFError, AttributeError, TypeError) as exc:
        raise UsageError(f"{option} {path}: not a readable .npz file: {exc}") from None


def load_array(path: Path, option: str) -> np.ndarray:
    """An ``.npy`` array, or the arrays of an ``.npz`` stacked in name order (a job's maps file)."""
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise UsageError(f"{option} {path}: not a readable .npy or .npz file: {exc}") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        return loaded
    with loaded:
        arrays = [loaded[name] for name in sorted(loaded.files)]
    if not arrays:
        raise UsageError(f"{option} {path}: the npz holds no array")
    try:
        return arrays[0] if len(arrays) == 1 else np.stack(arrays)
    except ValueError as exc:
        raise UsageError(f"{option} {path}: the npz's arrays cannot be stacked: {exc}") from None


def _format_of(path: Path, *, default: str) -> str:
    suffix = path.suffix.lower().lstrip(".")
    return suffix if suffix in ("npy", "png") else default


def _write(path: Path, data: bytes, what: str) -> int:
    from workers.distributed.checkpoint import atomic_write_bytes  # noqa: PLC0415

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, data)
    except OSError as exc:
        raise UsageError(f"--out {path}: cannot write: {exc.strerror or exc}") from None
    result(f"wrote {what} to {path}")
    return EXIT_OK


def _seconds_between(start: str | None, end: str | None) -> float | None:
    from datetime import datetime  # noqa: PLC0415

    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
