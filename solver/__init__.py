"""deconv's numerical core: convolutional sparse coding and Deconvolutional Networks (Zeiler et al. 2010, 2011).

Public surface::

    from solver import encode, learn, reconstruct

and for deep networks (layers learned one after another, projection to pixels)::

    from solver import learn_stack, encode_layers, project_down, pixel_filters

and online learning from a stream of image batches (memory set by the batch size, not the collection)::

    from solver import learn_online

and, with pooling between layers and the 2011 model (every layer reconstructs the pixels)::

    from solver import encode_layers, reconstruct_from, top_projections

A learned model (``learn(...).model``, ``learn_stack(...).model``) is saved to one file by ``model.save(path)`` and
read back by ``load_model(path)``. scikit-learn style estimators live in :mod:`solver.estimators` (imported on
demand: ``import solver`` does not need scikit-learn).

Shapes: images (N, C, H, W), filters (K, C, s, s), connectivity (K, C), maps (N, K, H', W') with H' = H for the
circular boundary and H + s − 1 for the valid one. float32 by default; the input dtype is kept.
"""

from .algorithms.problem import objective
from .backend import get_backend, gpu_available
from .config import (
    AdmmConfig,
    FilterUpdateConfig,
    FistaConfig,
    LayerSpec,
    LearnConfig,
    OnlineConfig,
    PreprocessConfig,
    ZeilerConfig,
    load_config,
)
from .images.metrics import psnr
from .images.preprocess import FittedPreprocess
from .models.coding import EncodeResult, encode, reconstruct
from .models.lam import lambda_max
from .models.learn import IterStats, LearnResult, encode_with, learn, learn_layer
from .models.online import OnlineLearner, learn_online
from .models.stack.encoding import encode_layers
from .models.stack.files import load_model
from .models.stack.learning import INTER_LAYER_PREPROCESS, layer_config, learn_stack
from .models.stack.model import LayerModel, StackCode, StackModel, StackResult
from .models.stack.projection import pixel_filters, project_down, reconstruct_from, top_projections
from .operators.pooling import pool3d, unpool3d  # noqa: F401  (re-exported; see solver.operators.pooling)

_ESTIMATORS = ("ConvolutionalDictionaryLearning", "DeconvolutionalNetwork")


def __getattr__(name: str):
    """The scikit-learn estimators, imported on first use: ``import solver`` does not need scikit-learn."""
    if name in _ESTIMATORS:
        from . import estimators  # noqa: PLC0415

        return getattr(estimators, name)
    raise AttributeError(f"module 'solver' has no attribute {name!r}")


__all__ = [
    "INTER_LAYER_PREPROCESS",
    "AdmmConfig",
    "EncodeResult",
    "FilterUpdateConfig",
    "FistaConfig",
    "FittedPreprocess",
    "IterStats",
    "LayerModel",
    "LayerSpec",
    "LearnConfig",
    "LearnResult",
    "OnlineConfig",
    "OnlineLearner",
    "PreprocessConfig",
    "StackCode",
    "StackModel",
    "StackResult",
    "ZeilerConfig",
    "encode",
    "encode_layers",
    "encode_with",
    "get_backend",
    "gpu_available",
    "layer_config",
    "lambda_max",
    "learn",
    "learn_layer",
    "learn_online",
    "learn_stack",
    "load_config",
    "load_model",
    "objective",
    "pixel_filters",
    "project_down",
    "psnr",
    "reconstruct",
    "reconstruct_from",
    "top_projections",
]
