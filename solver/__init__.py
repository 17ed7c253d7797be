"""deconv's numerical core: convolutional sparse coding and Deconvolutional Networks (Zeiler et al. 2010, 2011).

Public surface::

    from solver import encode, learn, reconstruct

Shapes: images (N, C, H, W), filters (K, C, s, s), connectivity (K, C), maps (N, K, H', W') with H' = H for the
circular boundary and H + s − 1 for the valid one. float32 by default; the input dtype is kept.
"""

from .backend import get_backend, gpu_available
from .coding import EncodeResult, encode, reconstruct
from .config import (
    AdmmConfig,
    FilterUpdateConfig,
    FistaConfig,
    LayerSpec,
    LearnConfig,
    PreprocessConfig,
    ZeilerConfig,
    load_config,
)
from .learn import IterStats, LearnResult, encode_with, learn, learn_layer
from .preprocess import FittedPreprocess
from .problem import objective

__all__ = [
    "AdmmConfig",
    "EncodeResult",
    "FilterUpdateConfig",
    "FistaConfig",
    "FittedPreprocess",
    "IterStats",
    "LayerSpec",
    "LearnConfig",
    "LearnResult",
    "PreprocessConfig",
    "ZeilerConfig",
    "encode",
    "encode_with",
    "get_backend",
    "gpu_available",
    "learn",
    "learn_layer",
    "load_config",
    "objective",
    "reconstruct",
]
