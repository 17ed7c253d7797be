"""The job commands: ``submit``, ``status``, ``wait``, ``cancel``, and ``follow`` (the progress bar of ``wait``,
``submit --wait`` and the demo)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..client import DeconvClient, JobWaitTimeout
from ..exits import EXIT_INTERRUPTED, EXIT_OF_STATUS, EXIT_OK, EXIT_TIMEOUT
from .output import UsageError, result, say

# -- submit ------------------------------------------------------------------------------------------------------


def submit(args: argparse.Namespace, client: DeconvClient) -> int:
    """Upload the job file's images (unless ``--dataset``), submit, print the job id; ``--wait`` follows it.

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv submit --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
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

    Parameters
    ----------
    path : Path
    dataset_id : str or None
        A dataset uploaded before, instead of the file's images.
    workers : int or None
        Overrides the file's ``workers``.

    Returns
    -------
    (dict, Path or None)
        The spec's fields, and the folder of images to upload.

    Raises
    ------
    UsageError
        Naming the file and the field at fault.
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
    """One job in detail, or a table of jobs (newest first).

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv status --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
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
    """A job as ``deconv status JOB`` prints it: one ``name value`` line per field that has a value.

    Parameters
    ----------
    job : dict
        As :meth:`DeconvClient.job` returns it.

    Returns
    -------
    str
    """
    p = job["progress"]
    lines = [
        f"job        {job['id']}",
        f"status     {job['status']}"
        + (" (cancel requested)" if job["cancel_requested"] and job["status"] == "running" else ""),
        f"dataset    {job['dataset_id']}",
        f"progress   {_progress_text(job)}",
    ]
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
    if job["spec"].get("kind") == "encode":  # an encode job counts images
        return f"{p['iteration']}/{p['n_iter']} images encoded ({100 * p['fraction']:.0f}%)"
    return (
        f"layer {max(p['layer'], 1)}/{p['n_layers']}, iteration {p['iteration']}/{p['n_iter']} "
        f"({100 * p['fraction']:.0f}%)"
    )


def _objective_text(job: dict[str, Any]) -> str:
    objective = job["progress"]["objective"]
    return "-" if objective is None else f"{objective:.5g}"


def wait(args: argparse.Namespace, client: DeconvClient) -> int:
    """Follow a job to its end with a progress bar.

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv wait --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
    return follow(client, args.job, timeout=args.timeout, progress=not args.no_progress)


def follow(client: DeconvClient, job_id: str, *, timeout: float | None = None, progress: bool = True) -> int:
    """Wait for the job with a progress bar on stderr, then say how it ended.

    Parameters
    ----------
    client : DeconvClient
    job_id : str
    timeout : float, optional
        Seconds; default: as long as it takes.
    progress : bool
        False: no progress bar.

    Returns
    -------
    int
        The exit status: by the job's end (:data:`api.exits.EXIT_OF_STATUS`), or ``EXIT_TIMEOUT``, or
        ``EXIT_INTERRUPTED`` (Ctrl-C: the job goes on at the service).
    """
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
    """A tqdm bar on stderr over layers x outer iterations, showing the objective E.

    Parameters
    ----------
    disable : bool
        True: draw nothing.

    Yields
    ------
    callable
        The ``on_progress`` callback of :meth:`DeconvClient.wait`.
    """
    from tqdm import tqdm  # noqa: PLC0415

    with tqdm(total=1, unit="it", desc="queued", file=sys.stderr, disable=disable, dynamic_ncols=True) as bar:

        def update(job: dict[str, Any]) -> None:
            p = job["progress"]
            bar.total = p["total_steps"]
            bar.n = p["step"]
            bar.set_description(
                job["status"] if p["n_layers"] == 1 else f"{job['status']} L{max(p['layer'], 1)}/{p['n_layers']}",
                refresh=False,
            )
            if p["objective"] is not None:
                bar.set_postfix(E=f"{p['objective']:.5g}", refresh=False)
            bar.refresh()

        yield update


def cancel(args: argparse.Namespace, client: DeconvClient) -> int:
    """Cancel a job: a queued one at once, a running one within a second or two.

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv cancel --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`).
    """
    job = client.cancel(args.job)
    if job["status"] == "cancelled":
        result(f"job {job['id']} cancelled")
    else:
        result(f"job {job['id']} is {job['status']}: it stops within a second or two")
    return EXIT_OK


def _seconds_between(start: str | None, end: str | None) -> float | None:
    from datetime import datetime  # noqa: PLC0415

    if not start or not end:
        return None
    return (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
