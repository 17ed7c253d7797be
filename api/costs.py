"""What an encode or a reconstruction will cost, estimated from the shapes before anything is computed.

A request that a few kilobytes describe can ask for gigabytes: a black 2048² PNG encoded with three filters holds
a dozen arrays of 3 × 2048² values, and maps of (1, 1, 2048, 2048) reconstructed with filters of
(1, 65536, 1, 1) ask for 65536 images of 2048². So the routes estimate, from the shapes alone:

* bytes: the decoded images, every layer's maps, the filters' transforms at the maps' size, the intermediate
  arrays of the chosen method and the response, in the computation dtype;
* work: iterations times the Fourier-domain products and the FFTs (about the floating-point operations);

and refuse a request over ``DECONV_MAX_REQUEST_BYTES`` with a 413, over ``DECONV_MAX_REQUEST_WORK`` with a 422,
each naming the field, the estimate and the limit.

The byte coefficients are upper bounds of the peaks measured with ``tracemalloc`` on the numpy backend (float32,
circular boundary, 1 to 16 filters of 1 to 8 channels, 128² to 512² images): per element of the maps, and per
element of the filters' transforms (K × C × the FFT grid), which the Woodbury solves of ADMM and Zeiler's method
keep beside the maps. They are estimates that err on the high side, not accounting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from solver.operators.convolution import map_shape
from solver.operators.pooling import pooled_shape

from .errors import field_error
from .settings import Settings, env_name

# bytes per float32 element: (maps, filters' transforms) of one layer's inference, measured peak with margin;
# the maps' share includes the FFTW plans' buffers (an input copy and an output per direction, about 18 bytes),
# so that the estimate bounds a process with pyFFTW installed too
METHOD_BYTES = {"admm": (90, 10), "fista": (54, 10), "zeiler": (42, 30)}
WOODBURY_BYTES = 12
"""Per element N·C²·H'W' of an ADMM layer of C > 1 channels: its per-image factors (complex C×C per frequency
of the half spectrum), the ones in use beside the next ones made at a change of ρ, measured with margin."""
IMAGE_BYTES = 16
"""Per value of the images: the decoded array, its float copy and the preprocessed one."""
KEPT_MAP_BYTES = 4
"""Per element of the maps every layer keeps (the code of a stack holds every layer's maps)."""
RESPONSE_BYTES = 8
"""Per element of a response array: the float32 array and the bytes written from it."""
BASE_BYTES = 32 * 2**20
"""What any request costs on top of its arrays (FFT plans, the first call's compiled kernels, buffers)."""
RECONSTRUCT_BYTES = (8, 8, 12)
"""Per element of the maps, of the filters' transforms and of the images, of one layer's synthesis."""


@dataclass(frozen=True)
class Layer:
    """What the estimate needs of one layer: filters (K, C, s, s) and the pooling of its maps."""

    n_filters: int
    n_channels: int
    filter_size: int
    pool: tuple[int, int, int] | None = None


@dataclass(frozen=True)
class Estimate:
    """Bytes at the peak and work (about the floating-point operations) of a request."""

    bytes: int
    work: int

    def __add__(self, other: Estimate) -> Estimate:
        return Estimate(self.bytes + other.bytes, self.work + other.work)


def _fft_work(count: int, grid: int) -> int:
    return int(count * grid * max(math.log2(max(grid, 2)), 1.0))


def encode_cost(
    layers: Sequence[Layer],
    shape: tuple[int, int, int, int],
    *,
    method: str,
    max_iter: int,
    boundary: str,
    itemsize: int = 4,
    all_layers: bool = False,
) -> Estimate:
    """The cost of encoding images of `shape` (N, C, H, W) through `layers`.

    Parameters
    ----------
    layers : sequence of Layer
        Bottom first, up to the layer asked for.
    shape : (int, int, int, int)
        The images, as decoded.
    method : {"admm", "fista", "zeiler"}
    max_iter : int
        Iterations per layer.
    boundary : {"circular", "valid"}
    itemsize : int
        Bytes per value of the computation dtype (4: float32, 8: float64).
    all_layers : bool
        Whether the response holds every layer's maps (npz) or the top layer's (npy).

    Returns
    -------
    Estimate

    Examples
    --------
    >>> small = encode_cost([Layer(3, 1, 7)], (1, 1, 64, 64), method="admm", max_iter=200, boundary="circular")
    >>> big = encode_cost([Layer(3, 1, 7)], (1, 1, 2048, 2048), method="admm", max_iter=200, boundary="circular")
    >>> (big.bytes - BASE_BYTES) // (small.bytes - BASE_BYTES), big.work > 1024 * small.work
    (1024, True)
    """
    n, c, h, w = shape
    scale = itemsize / 4
    map_bytes, filter_bytes = METHOD_BYTES.get(method, METHOD_BYTES["admm"])
    total = Estimate(BASE_BYTES + int(IMAGE_BYTES * n * c * h * w * scale), 0)
    kept = 0
    for index, layer in enumerate(layers):
        h, w = map_shape((h, w), layer.filter_size, boundary)
        grid = h * w
        maps = n * layer.n_filters * grid
        transforms = layer.n_filters * layer.n_channels * grid
        factors = n * layer.n_channels**2 * grid if method == "admm" and layer.n_channels > 1 else 0
        total += Estimate(
            int((map_bytes * maps + filter_bytes * transforms + WOODBURY_BYTES * factors) * scale),
            max_iter * (n * transforms + _fft_work(n * (layer.n_filters + layer.n_channels), grid)),
        )
        kept += maps
        if all_layers or index == len(layers) - 1:
            total += Estimate(RESPONSE_BYTES * maps, 0)
        if layer.pool is not None:
            _, _, h, w = pooled_shape((n, layer.n_filters, h, w), layer.pool)
    return total + Estimate(int(KEPT_MAP_BYTES * kept * scale), 0)


def reconstruct_cost(
    layers: Sequence[Layer], maps_shape: tuple[int, int, int, int], *, boundary: str, itemsize: int = 4
) -> Estimate:
    """The cost of projecting maps of `maps_shape` (N, K, H', W') of the top of `layers` down to images.

    Parameters
    ----------
    layers : sequence of Layer
        Bottom first; the maps belong to the last one. Unpooling below a pooling layer is counted at the pooled
        maps' size times the pooling block.
    maps_shape : (int, int, int, int)
    boundary : {"circular", "valid"}
    itemsize : int
        Bytes per value of the maps' dtype.

    Returns
    -------
    Estimate

    Examples
    --------
    >>> reconstruct_cost([Layer(1, 65536, 1)], (1, 1, 2048, 2048), boundary="circular").bytes > 2**40
    True
    """
    n, _, h, w = maps_shape
    scale = itemsize / 4
    per_map, per_transform, per_image = RECONSTRUCT_BYTES
    total = Estimate(BASE_BYTES, 0)
    for index in range(len(layers) - 1, -1, -1):
        layer = layers[index]
        grid = h * w
        h, w = (h, w) if boundary == "circular" else (h - layer.filter_size + 1, w - layer.filter_size + 1)
        images = n * layer.n_channels * max(h, 1) * max(w, 1)
        transforms = layer.n_filters * layer.n_channels * grid
        total += Estimate(
            int((per_map * n * layer.n_filters * grid + per_transform * transforms + per_image * images) * scale),
            n * transforms + _fft_work(n * (layer.n_filters + layer.n_channels), grid),
        )
        below = layers[index - 1] if index > 0 else None
        if below is not None and below.pool is not None:  # unpooled to the maps of the layer below
            h, w = h * below.pool[1], w * below.pool[2]
    return total


def values_budget(layers: Sequence[Layer], method: str, settings: Settings) -> int:
    """How many image values (C × H × W, summed over the images) an encode may decode before its estimate must
    pass ``max_request_bytes``: every value costs at least the images' bytes and the first layer's maps, so
    decoding can stop there, before the pixels of an image that could not be encoded anyway are decoded.

    Parameters
    ----------
    layers : sequence of Layer
    method : str
    settings : Settings

    Returns
    -------
    int
    """
    first = layers[0]
    map_bytes, _ = METHOD_BYTES.get(method, METHOD_BYTES["admm"])
    # an image of C values per pixel gives K map elements per pixel (C is at most 3 more than the model reads:
    # colour images of a grey model)
    per_value = IMAGE_BYTES + map_bytes * first.n_filters / max(first.n_channels, 3)
    return max(int(settings.max_request_bytes / per_value), 1)


def check(estimate: Estimate, settings: Settings, *, loc: list, work_loc: list, what: str) -> None:
    """Refuse `estimate` when it is over the settings' limits: 413 for the bytes, 422 for the work.

    Parameters
    ----------
    estimate : Estimate
    settings : Settings
        ``max_request_bytes``, ``max_request_work``.
    loc, work_loc : list
        The field that sets the bytes (the upload) and the one that sets the work (``max_iter``).
    what : str
        The request, for the message (``"encoding 2 images of 1x2048x2048"``).

    Raises
    ------
    fastapi.HTTPException
    """
    if estimate.bytes > settings.max_request_bytes:
        raise field_error(
            loc,
            f"{what} would take about {_size(estimate.bytes)}, more than the limit of "
            f"{_size(settings.max_request_bytes)} per request ({env_name('max_request_bytes')}): send fewer or "
            "smaller images, or use fewer layers",
            estimate.bytes,
            status=413,
        )
    if estimate.work > settings.max_request_work:
        raise field_error(
            work_loc,
            f"{what} would take about {estimate.work:.3g} operations, more than the limit of "
            f"{settings.max_request_work:.3g} per request ({env_name('max_request_work')}): ask for fewer "
            "iterations, or send fewer or smaller images",
            estimate.work,
        )


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"
