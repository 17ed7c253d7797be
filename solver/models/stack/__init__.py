r"""Deep Deconvolutional Networks: layers learned one after another, encoding through all of them, and projection
of any layer's maps down to pixels (Zeiler, Krishnan, Taylor & Fergus, CVPR 2010; ``docs/zeiler.md`` section 4).

Layer 1 learns on the (preprocessed) images. Layer l+1 learns on the final maps of layer l, rescaled as the 2010
toolbox does (``rescale_all_n1_1.m``): shift the minimum to 0, divide by half the range, subtract the mean,

.. math:: y^{(l+1)} = \big(z^{(l)} - \text{shift}\big) / \text{scale} - \text{mean},

fitted once on the training maps (:data:`~.learning.INTER_LAYER_PREPROCESS`) and recorded with the model, so that
encoding new images repeats it. Each layer reconstructs only the layer beneath it:

.. math:: \min_{z^{(l)}, f^{(l)}} \tfrac12 \sum_{n,c} \Big\| P \sum_k g^{(l)}_{kc}\, z^{(l)}_{nk} \circledast
          f^{(l)}_{kc} - y^{(l)}_{nc} \Big\|^2 + \lambda_l \sum_{n,k} \|z^{(l)}_{nk}\|_p^p

Shapes: layer l reads ``(N, C_l, H_l, W_l)`` (C_1 = the image channels, C_{l+1} = K_l) and codes it with maps
``(N, K_l, H_l', W_l')``; with the valid boundary ``H_{l+1} = H_l' = H_l + s_l − 1``, so the reconstruction of
layer-(l+1) maps has exactly the shape of the layer-l maps, and a projection to pixels has the images' shape.

Pooling and the 2011 model. A layer with ``pool`` (:class:`~solver.config.LayerSpec`) max-pools its maps in 3-D
with switches (:mod:`solver.operators.pooling`) before the layer above reads them, so layer l+1 reads ``⌈K_l/pk⌉``
channels of ``⌈H_l'/ph⌉ × ⌈W_l'/pw⌉``, and every projection down unpools at the switches of the images being
projected (:class:`~.model.StackCode` carries them). With ``reconstruct_to="pixels"`` (Zeiler, Taylor & Fergus 2011)
every layer instead reconstructs the preprocessed pixels through the frozen layers below
(:mod:`solver.operators.pixel_path`, :class:`~solver.algorithms.problem.PixelCodingProblem`,
:class:`~solver.models.shard.PixelShard`), there is no rescale between layers, and inference is the 2011 ISTA with
the pooling of each layer.

The package, by role: :mod:`.model` (the learned stack, its codes and its array form), :mod:`.learning`
(:func:`learn_stack`, one layer after another), :mod:`.encoding` (new images through every layer) and
:mod:`.projection` (maps of any layer down to pixels, and the pictures of each layer's features in pixel space).

Layer *numbers* are 1-based (layer 1 reads the pixels), as in the papers and the job service; an ``index`` is a
0-based position in ``config.layers``.
"""
