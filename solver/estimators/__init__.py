"""scikit-learn style estimators: :class:`ConvolutionalDictionaryLearning` (one layer) and
:class:`DeconvolutionalNetwork` (a layer stack), for pipelines, ``clone`` and model selection.

scikit-learn is an optional dependency (``pip install "deconv[sklearn]"``): ``import solver`` does not import
this module; ``from solver.estimators import DeconvolutionalNetwork`` (or ``solver.DeconvolutionalNetwork``,
resolved on first use) does.

``ConvolutionalDictionaryLearning.partial_fit`` learns online (:func:`~solver.learn_online`): each call is one batch
(or several of ``batch_size``), and the statistics of the images seen are kept between calls, so a stream of calls
learns from more images than fit in memory.

Input layout. ``X`` is a batch of images: (N, C, H, W), (N, H, W) for grey ones, or 2-D (N, F) of flattened
images, of shape ``image_shape`` ((H, W) or (C, H, W), one size of which may be -1 as in ``numpy.reshape``) or,
when that is None, square and grey (F = H·W with H = W). The output follows the input: image batches give maps
(N, K, H', W'); 2-D input gives flattened maps (N, K·H'·W'), so that a classifier can follow in a
:class:`~sklearn.pipeline.Pipeline`. Convolutional models encode images of any size, so 4-D and 3-D batches need
not have the training images' height and width.

scikit-learn's checks (``check_estimator``) all generate 2-D X of a few features (1, 2, 3, 5, 10), mostly not a
square number. With the default ``image_shape=None`` those are refused (a ValueError naming ``image_shape``), by
design: a flattened image has a shape. Read as images one pixel high (``image_shape=(1, -1)``) with 1×1 filters,
both estimators pass every check of scikit-learn 1.9 (``tests/solver/test_estimators.py``); none is skipped but
``check_array_api_input``, which scikit-learn itself skips unless ``SCIPY_ARRAY_API`` is set.
"""

from ._dictionary import ConvolutionalDictionaryLearning
from ._network import DeconvolutionalNetwork

# The classes are defined in private modules but belong to this one: their pickles, reprs and doctests name
# solver.estimators, as they did before the split.
ConvolutionalDictionaryLearning.__module__ = __name__
DeconvolutionalNetwork.__module__ = __name__

__all__ = ["ConvolutionalDictionaryLearning", "DeconvolutionalNetwork"]
