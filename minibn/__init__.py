"""minibn: Batch Normalization from its derivation to GPU kernels.

``minibn.functional`` is the NumPy/CuPy reference, ``minibn.gradcheck`` the numerical gradient
tools and ``minibn.checks`` the course's autograder checks (one module per lesson).
"""
from minibn import functional, gradcheck
from minibn.functional import (
    batchnorm_backward,
    batchnorm_backward_graph,
    batchnorm_forward,
    batchnorm_inference,
)

__version__ = "0.1.0"

__all__ = [
    "functional",
    "gradcheck",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_graph",
    "batchnorm_inference",
]
