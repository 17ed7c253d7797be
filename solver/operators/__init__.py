"""The model's linear operators and the numerics under them (the bottom layer: imports only ``solver.backend``).

* :mod:`.convolution`: Fourier-domain synthesis ``ConvOperator`` and ``FilterOperator``, with their adjoints;
* :mod:`.pairs`: the connected (map, channel) pairs of a table and the Fourier sums over them;
* :mod:`.connectivity`: the connectivity tables g (K, C) themselves;
* :mod:`.linalg`: per-frequency shifted normal equations, spectral norms, conjugate gradients;
* :mod:`.prox`: shrinkage of ``τ|x|^p`` and the filter-constraint projections;
* :mod:`.pooling`: 3-D max pooling with switches, and unpooling;
* :mod:`.pixel_path`: the frozen layers below a 2011 layer, from its input down to the pixels, and back;
* :mod:`.kernels` / :mod:`.gpu_kernels`: the fused ADMM inner loop (numba on the CPU, CUDA through cupy).
"""
