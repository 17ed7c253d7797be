"""``deconv encode-job``: the maps of a whole collection, encoded on the cluster with a finished job's model."""

from __future__ import annotations

import argparse
from typing import Any

from ..client import DeconvClient
from ..exits import EXIT_OK
from .jobs import follow
from .output import UsageError, result, say


def encode_job(args: argparse.Namespace, client: DeconvClient) -> int:
    """Submit an encode job on an uploaded dataset (``--dataset``) or on image files uploaded first; print its id.
    ``--wait`` follows it; ``--out FILE.npz`` waits too, then saves every image's maps (streamed to the file).

    Parameters
    ----------
    args : argparse.Namespace
        The command's parsed arguments (see ``deconv encode-job --help``).
    client : DeconvClient
        Open, on the service.

    Returns
    -------
    int
        The exit status (:mod:`api.exits`): as ``wait`` when it waits.
    """
    if (args.dataset is None) == (not args.images):
        raise UsageError("give either IMAGE files or folders to upload, or --dataset ID of an uploaded dataset")
    missing = [str(p) for p in args.images if not p.exists()]
    if missing:
        raise UsageError(f"no such image file or folder: {', '.join(missing)}")
    dataset_id = args.dataset
    if dataset_id is None:
        dataset = client.upload_dataset(list(args.images))
        dataset_id = dataset["id"]
        say(f"uploaded {dataset['n_images']} image(s) as dataset {dataset_id}")
    inference = _inference(args, client)
    job = client.submit_encode(
        args.job,
        dataset_id,
        layer=args.layer,
        inference=inference,
        block_size=args.block_size,
        workers=args.workers,
        idempotency_key=args.idempotency_key,
    )
    result(job["id"])
    if not (args.wait or args.out):
        return EXIT_OK
    status = follow(client, job["id"], timeout=args.timeout, progress=not args.no_progress)
    if status != EXIT_OK or args.out is None:
        return status
    written = client.save_maps(job["id"], args.out, layer=args.layer)
    say(f"wrote the maps of {job['progress']['n_iter']} image(s) to {written}")
    return EXIT_OK


def _inference(args: argparse.Namespace, client: DeconvClient) -> dict[str, Any] | None:
    """The job's ``inference`` from ``--method`` and ``--max-iter`` (None: the service's default, the model's
    method with 200 iterations); ``--max-iter`` alone keeps the method the model learned with."""
    if args.method is None and args.max_iter is None:
        return None
    method = args.method or client.job(args.job)["spec"].get("inference", {}).get("method", "admm")
    inference: dict[str, Any] = {"method": method}
    if args.max_iter is not None:
        # zeiler: the iterations in all, spread over its β stages, as POST /models/{id}/encode spreads them
        inference["total_iter" if method == "zeiler" else "max_iter"] = args.max_iter
    return inference
