"""The models built on the operators and algorithms: what the public functions of :mod:`solver` run.

* :mod:`.coding`: fixed filters, ``encode`` and ``reconstruct``;
* :mod:`.shard`: a shard of training images and the steps the learning loop asks of it;
* :mod:`.learn`: dictionary learning of one layer (the alternating loop, shared with ``workers/``);
* :mod:`.stack`: deep networks, layers learned one after another, encoding and projection to pixels;
* :mod:`.adaptive`: the 2011 Adaptive Deconvolutional Network (every layer reconstructs the pixels).
"""
