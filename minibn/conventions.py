"""The rules of Batch Normalization that every part of minibn follows, each written once.

The NumPy/CuPy reference (``minibn.functional``), the torch modules (``minibn.nn``), the CUDA
kernels' wrappers (``minibn.cuda.api``) and the experiments call these instead of restating them,
so that a rule, and the error message that enforces it, cannot drift between copies. They are
torch's conventions (``torch.nn.BatchNorm*d``), and they use only shapes, Python scalars and the
array's own operators, so the same function serves NumPy arrays, CuPy arrays and torch tensors.

Layout. Channels are axis 1: ``x`` is ``(N, C)`` or ``(N, C, *spatial)``; a channel's statistics
pool the ``m = N * prod(spatial)`` values of every other axis (the paper's ``m * p * q``).

Statistics. Training normalizes with the *biased* batch variance; the running variance, which
stands in for the population's at inference, is updated with the *unbiased* one,
``m / (m - 1)`` times the biased. Running statistics move by ``momentum``:
``running = (1 - momentum) * running + momentum * batch_stat`` (torch's convention; CS231n's
``momentum`` is one minus this), and torch's ``momentum=None`` means the cumulative average
``1 / num_batches_tracked``.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = [
    "array_namespace",
    "average_factor",
    "channel_shape",
    "check_batch_size",
    "check_eps",
    "check_momentum",
    "is_cupy",
    "reduce_axes",
    "unbiased_variance",
    "update_running_stat",
    "values_per_channel",
]


# ---------------------------------------------------------------------------------------------
# Arrays


def is_cupy(a):
    """True for a CuPy array (tested by the type's module, so CuPy need not be installed)."""
    return type(a).__module__.split(".")[0] == "cupy"


def array_namespace(x):
    """``cupy`` for a CuPy array, ``numpy`` for anything else."""
    if is_cupy(x):
        import cupy

        return cupy
    return np


# ---------------------------------------------------------------------------------------------
# Layout


def channel_shape(x):
    """The shape that broadcasts a ``(C,)`` vector against ``x`` along axis 1: ``(1, C, 1, ...)``."""
    return (1, x.shape[1]) + (1,) * (x.ndim - 2)


def reduce_axes(x):
    """The axes a channel's statistics run over: every axis of ``x`` except 1."""
    return (0,) + tuple(range(2, x.ndim))


def values_per_channel(shape):
    """``m = N * prod(spatial)`` for an input of ``shape`` ``(N, C, *spatial)``.

    Computed without dividing by ``C``, so it is defined for ``C = 0`` too (as torch counts).
    """
    return math.prod(shape[:1]) * math.prod(shape[2:])


# ---------------------------------------------------------------------------------------------
# Checks: each raises ValueError with torch's wording where torch has one.


def check_batch_size(size, *, allow_empty):
    """Raise unless a training batch has enough values per channel for batch statistics.

    One value per channel is always an error: its variance is 0, so every output would be
    ``beta`` and no gradient would reach the layers below (torch's rule and message). An empty
    batch (``m = 0``) is allowed where ``allow_empty`` is true: torch's modules return an empty
    output for it; the NumPy reference, whose statistics of no values would be NaN, refuses it.

    ``size`` is printed as given (torch passes ``x.size()``, NumPy a tuple).
    """
    m = values_per_channel(tuple(size))
    if m == 1 or (m == 0 and not allow_empty):
        raise ValueError(f"Expected more than 1 value per channel when training, got input size {size}")


def check_eps(eps, *, training):
    """Raise unless ``eps`` is usable: positive in training, non-negative otherwise (torch's rule).

    In training a constant channel has variance 0, so ``eps = 0`` would divide by zero; with
    running statistics eps = 0 is fine as long as no running variance is 0. NaN is refused too
    (torch lets it through and returns NaN everywhere). The NumPy reference checks with
    ``training=False`` on purpose: lesson 01 lets learners try ``eps = 0`` on their own data.
    """
    if training and not eps > 0.0:
        raise ValueError(f"batch_norm eps must be positive during training, but got {eps}")
    if not eps >= 0.0:
        raise ValueError(f"batch_norm eps must be non-negative, but got {eps}")


def check_momentum(momentum):
    """Raise unless ``0 <= momentum <= 1`` (the NumPy reference and the kernels; torch's modules
    accept any float, and so do minibn's)."""
    if not 0.0 <= momentum <= 1.0:
        raise ValueError(f"momentum must be in [0, 1], got {momentum}")


# ---------------------------------------------------------------------------------------------
# Running statistics


def unbiased_variance(var, m):
    """The unbiased variance from the biased one of ``m`` values: ``var * m / (m - 1)`` (Bessel).

    The running variance estimates the population's, and the mean of biased batch variances
    underestimates it by ``(m - 1) / m``. Needs ``m >= 2`` (``check_batch_size``).

    Multiplied then divided, not scaled by ``m / (m - 1)``: under ``torch.jit.trace`` sizes are
    integer tensors, and their quotient would be rounded to float32.
    """
    return var * m / (m - 1)


def average_factor(momentum, num_batches_tracked):
    """The weight of the new batch in the running statistics, as torch's modules compute it.

    ``momentum`` itself, or, for ``momentum=None``, ``1 / num_batches_tracked`` (counting this
    batch), which makes the running statistics the plain average of every batch so far.
    """
    if momentum is None:
        return 1.0 / float(num_batches_tracked)
    return momentum


def update_running_stat(running, batch_stat, momentum):
    """``running = (1 - momentum) * running + momentum * batch_stat``, in place; returns ``running``.

    Written as torch's CPU kernel writes it. ``running`` is a NumPy/CuPy array or a tensor (under
    ``torch.no_grad()``) that is updated in place; ``batch_stat`` broadcasts against it.
    """
    running *= 1.0 - momentum
    running += momentum * batch_stat
    return running
