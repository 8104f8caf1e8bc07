"""minibn: Batch Normalization from its derivation to GPU kernels.

``minibn.functional`` is the NumPy/CuPy reference, ``minibn.norms`` its per-sample relatives
(layer, group and instance norm), ``minibn.gradcheck`` the numerical gradient tools and
``minibn.checks`` the course's autograder checks (one module per lesson).
"""
from minibn import functional, gradcheck, norms
from minibn.functional import (
    batchnorm_backward,
    batchnorm_backward_graph,
    batchnorm_forward,
    batchnorm_inference,
)
from minibn.norms import group_norm, instance_norm, layer_norm, norm_backward

__version__ = "0.1.0"

__all__ = [
    "functional",
    "gradcheck",
    "norms",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_graph",
    "batchnorm_inference",
    "group_norm",
    "instance_norm",
    "layer_norm",
    "norm_backward",
]
