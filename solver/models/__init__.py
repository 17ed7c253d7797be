"""The models built on the operators and algorithms: what the public functions of :mod:`solver` run.

* :mod:`.coding`: fixed filters: ``encode`` and ``reconstruct``, and ``code_pixels`` (the 2011 inference of one
  layer through the frozen layers below);
* :mod:`.shard`: a shard of training images and the steps the learning loop asks of it (``Shard`` for the 2010
  model, ``PixelShard`` for the 2011 one);
* :mod:`.learn`: dictionary learning of one layer (the alternating loop, shared with ``workers/``);
* :mod:`.stack`: deep networks: the learned stack, learning it layer after layer, encoding through it and
  projecting any layer down to pixels.
"""
