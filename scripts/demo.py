"""The demo job: learn filters on the bundled sample images and write pictures of the result.

    python scripts/demo.py [--config configs/quick.yaml] [--images samples] [--out demo-output]

Writes ``filters.npy``, ``filters.png`` (one tile per filter), ``reconstructions.png`` (each preprocessed input
beside its reconstruction), ``objective.png`` and ``history.json`` into the output folder, atomically.
(The service's ``deconv demo`` replaces this script once the job system exists.)
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from solver import learn_layer, load_config, reconstruct  # noqa: E402
from solver.montage import filter_montage, side_by_side  # noqa: E402
from workers.checkpoint import atomic_write_bytes, npy_bytes  # noqa: E402

logger = logging.getLogger("deconv.demo")


def load_images(folder: Path) -> tuple[np.ndarray, list[str]]:
    """Every PNG/JPEG in `folder` as a (N, 1, H, W) uint8 array (grey; all must share one size)."""
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    if not paths:
        raise ValueError(f"no PNG or JPEG images in {folder}")
    arrays = [np.asarray(Image.open(p).convert("L")) for p in paths]
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"images in {folder} have different sizes: {sorted(shapes)}")
    return np.stack(arrays)[:, None], [p.name for p in paths]


def png_bytes(picture: np.ndarray) -> bytes:
    """A [0, 1] grey or RGB picture as PNG bytes."""
    buffer = io.BytesIO()
    Image.fromarray((np.clip(picture, 0, 1) * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def objective_plot_bytes(history: list[float]) -> bytes:
    """The learning curve as PNG bytes."""
    import matplotlib  # noqa: PLC0415

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415

    fig, ax = plt.subplots(figsize=(5, 3.2), dpi=120)
    ax.plot(np.arange(1, len(history) + 1), history, marker=".", lw=1)
    ax.set_xlabel("outer iteration")
    ax.set_ylabel("objective E")
    ax.set_title("learning objective")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()


def psnr(reference: np.ndarray, estimate: np.ndarray) -> float:
    peak = float(reference.max() - reference.min())
    mse = float(np.mean((reference - estimate) ** 2))
    return 10 * np.log10(peak * peak / mse) if mse > 0 else float("inf")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "quick.yaml")
    parser.add_argument("--images", type=Path, default=ROOT / "samples")
    parser.add_argument("--out", type=Path, default=Path("demo-output"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    config = load_config(args.config)
    images, names = load_images(args.images)
    layer = config.layers[0]
    logger.info("learning %d filters %dx%d on %d images %s (%s, lam=%g, %d iterations)", layer.n_filters,
                layer.filter_size, layer.filter_size, len(names), images.shape[-2:], config.inference.method,
                layer.lam, config.n_iter)
    start = time.perf_counter()
    with tqdm(total=config.n_iter, unit="it", desc="learning") as bar:

        def progress(stats) -> None:
            bar.set_postfix(E=f"{stats.objective:.4g}", nonzero=f"{stats.sparsity:.3f}")
            bar.update(1)

        result = learn_layer(images, config, callback=progress)
    elapsed = time.perf_counter() - start

    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(args.out / "filters.npy", npy_bytes(result.filters))
    history = [{"iteration": s.iteration, "objective": s.objective} for s in result.stats]
    atomic_write_bytes(args.out / "history.json", json.dumps(history, indent=1).encode())
    atomic_write_bytes(args.out / "filters.png", png_bytes(filter_montage(result.filters)))
    inputs = result.preprocess.apply(images) if result.preprocess is not None else images.astype(np.float32)
    recon = reconstruct(result.maps, result.filters, boundary=config.boundary, connectivity=result.connectivity)
    rows = [side_by_side(inputs[i, 0], recon[i, 0]) for i in range(min(4, len(names)))]
    atomic_write_bytes(args.out / "reconstructions.png", png_bytes(np.concatenate(rows, axis=0)))
    atomic_write_bytes(args.out / "objective.png", objective_plot_bytes(result.history))
    logger.info("done in %.1f s: E %.4g -> %.4g, non-zero maps %.3f, reconstruction PSNR %.1f dB", elapsed,
                result.history[0], result.history[-1], result.stats[-1].sparsity, psnr(inputs, recon))
    logger.info("wrote filters.npy, filters.png, reconstructions.png, objective.png, history.json to %s",
                args.out.resolve())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
