"""``deconv demo``: a small two-layer job, end to end through the service, with nothing to start by hand.

It starts the service in this process (uvicorn on 127.0.0.1, a free port, in a thread; data in ``OUT/data``
unless ``--data-dir``), uploads the bundled sample images (:func:`configs.sample_paths`; without them,
scikit-image's grey sample images cropped to one size), submits the ``demo`` preset (``quick`` plus a second
layer; :mod:`configs`) as the job spec, follows it with a progress bar, and writes into OUT:

========================  =======================================================================
``filters.png``           the layer-1 filters, one tile each
``filters-layer2.png``    each layer-2 map seen in pixel space (a one-hot map projected through layer 1)
``reconstructions.png``   each preprocessed input beside its reconstruction from the top layer's maps
``objective.png``         the objective E after every outer iteration, one curve per layer
``filters.npy``           layer 1's filters (K, C, s, s) float32 (``filters-layer2.npy``: layer 2's)
``history.json``          one record per outer iteration: layer, objective, sparsity, elapsed time, ...
========================  =======================================================================

A one-layer config (``--config quick``) writes the same files but the layer-2 ones.

then stops the service (and the Ray cluster it started).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from configs import find_preset, sample_paths

from .commands import follow, result, say
from .exits import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK

DEMO_PRESET = "demo"
_SKIMAGE_IMAGES = ("camera", "astronaut", "coffee", "chelsea", "coins", "moon", "clock", "brick")
_SAMPLE_SIZE = 128


def run_demo(
    out: Path, *, data_dir: Path | None = None, config: str | Path | None = None, progress: bool = True
) -> int:
    """Run the demo: start the service in this process, learn the demo job, write its pictures into `out`.

    Parameters
    ----------
    out : Path
        The output folder.
    data_dir : Path, optional
        The service's data; default: ``out/data``.
    config : str or Path, optional
        A job file or a preset name; default: the ``demo`` preset.
    progress : bool
        False: no progress bar.

    Returns
    -------
    int
        The exit status: 0, 1 when the job did not succeed, 130 on Ctrl-C (the job is cancelled).
    """
    from .client import DeconvClient  # noqa: PLC0415
    from .serve import ServiceThread  # noqa: PLC0415
    from .settings import Settings  # noqa: PLC0415

    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    spec = quick_spec(config)
    parts = sample_images()
    settings = Settings(data_dir=data_dir or out / "data")
    job_id = None
    say("deconv demo: starting the service and a local Ray cluster ...")
    with ServiceThread(settings) as service, DeconvClient(service.url, api_key=settings.api_key) as client:
        say(f"deconv demo: service at {service.url}, data in {settings.data_dir.resolve()}")
        try:
            dataset = client.upload_dataset(parts)
            job = client.submit({**spec, "dataset_id": dataset["id"]})
            job_id = job["id"]
            layers = ", then ".join(
                f"{layer['n_filters']} filters {layer['filter_size']}x{layer['filter_size']} "
                f"({layer.get('n_iter') or spec.get('n_iter', 50)} outer iterations)"
                for layer in spec["layers"]
            )
            say(f"learning {layers} on {dataset['n_images']} images {tuple(dataset['shapes'][0][1:])}: job {job_id}")
            status = follow(client, job_id, progress=progress)
            if status == EXIT_INTERRUPTED:
                client.cancel(job_id)
                return status
            if status != EXIT_OK:
                return EXIT_FAILED
            written = _fetch_results(client, job_id, out, len(spec["layers"]))
        except KeyboardInterrupt:
            if job_id is not None:
                client.cancel(job_id)
            say("deconv demo: interrupted")
            return EXIT_INTERRUPTED
    history = _read_history(out)
    result(f"deconv demo: done in {time.perf_counter() - start:.0f} s")
    for layer in sorted({h.get("layer", 1) for h in history}):
        rows = [h for h in history if h.get("layer", 1) == layer]
        result(
            f"  layer {layer}: objective {rows[0]['objective']:.5g} -> {rows[-1]['objective']:.5g}, "
            f"non-zero maps {rows[-1]['sparsity']:.4f}"
        )
    result(f"wrote {', '.join(written)} to {out.resolve()}")
    return EXIT_OK


def _fetch_results(client: Any, job_id: str, out: Path, n_layers: int) -> list[str]:
    """Write the demo's files (see the module docstring); returns their names."""
    from workers.distributed.checkpoint import atomic_write_bytes  # noqa: PLC0415

    written = []
    for layer in range(1, n_layers + 1):
        suffix = "" if layer == 1 else f"-layer{layer}"
        atomic_write_bytes(out / f"filters{suffix}.png", client.filters_png(job_id, layer=layer))
        client.download(job_id, f"filters-L{layer}.npy", out / f"filters{suffix}.npy")  # checked by sha256
        written += [f"filters{suffix}.png", f"filters{suffix}.npy"]
    atomic_write_bytes(out / "reconstructions.png", client.reconstructions_png(job_id))
    atomic_write_bytes(out / "objective.png", client.history_png(job_id))
    client.download(job_id, "history.json", out / "history.json")
    return [*written, "reconstructions.png", "objective.png", "history.json"]


def _read_history(out: Path) -> list[dict[str, Any]]:
    import json  # noqa: PLC0415

    return json.loads((out / "history.json").read_text())


def quick_spec(config: str | Path | None = None) -> dict[str, Any]:
    """The job spec of the demo.

    Parameters
    ----------
    config : str or Path, optional
        A file or a preset name; default: the ``demo`` preset.

    Returns
    -------
    dict
        The spec's fields (no ``dataset_id``; a job file's ``images`` left out: the demo learns on the samples).

    Raises
    ------
    ValueError
        Naming the file and the field, before anything starts.
    """
    from pydantic import ValidationError  # noqa: PLC0415

    from workers.jobs.jobfile import describe_validation_error, read_job_mapping  # noqa: PLC0415
    from workers.jobs.spec import JobSpec  # noqa: PLC0415

    path = find_preset(config or DEMO_PRESET)
    spec = read_job_mapping(path)
    if spec.pop("images", None) is not None:
        say(f"deconv demo: learning on the sample images; {path.name}'s images are for deconv submit and learn")
    try:
        JobSpec.model_validate({"dataset_id": "0" * 32, **spec})
    except ValidationError as exc:
        raise ValueError(f"{path}: {describe_validation_error(exc)}") from None
    return spec


def sample_images() -> list[tuple[str, bytes]]:
    """The demo's images: the bundled samples, else scikit-image's sample images (grey, centre-cropped to a
    square, resized to 128x128).

    Returns
    -------
    list of (str, bytes)
        Each image's name and PNG bytes.
    """
    paths = sample_paths()
    if paths:
        return [(p.name, p.read_bytes()) for p in paths]
    return [(f"{name}.png", _skimage_png(name)) for name in _SKIMAGE_IMAGES]


def _skimage_png(name: str) -> bytes:
    import numpy as np  # noqa: PLC0415
    from PIL import Image  # noqa: PLC0415

    from solver.images.pictures import png_bytes  # noqa: PLC0415

    try:
        from skimage import data  # noqa: PLC0415
    except ImportError:
        raise ValueError(
            "no sample images: configs/samples/ is missing and scikit-image is not installed (pip install scikit-image)"
        ) from None
    picture = Image.fromarray(np.asarray(getattr(data, name)())).convert("L")
    side = min(picture.size)
    left, top = (picture.width - side) // 2, (picture.height - side) // 2
    picture = picture.crop((left, top, left + side, top + side)).resize(
        (_SAMPLE_SIZE, _SAMPLE_SIZE), Image.Resampling.LANCZOS
    )
    return png_bytes(np.asarray(picture) / 255.0)
