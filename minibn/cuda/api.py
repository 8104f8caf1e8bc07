"""``minibn.cuda.batchnorm_forward`` / ``batchnorm_backward``: the lesson's final kernels (K5, K6)
behind the same interface as ``minibn.functional``. CuPy arrays run on the GPU; NumPy arrays run
the very same CUDA C through the CPU executor (slowly: it is there for tests and for learners
without a GPU, never for speed).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minibn.conventions import array_namespace as _xp
from minibn.conventions import check_batch_size, check_eps, check_momentum, is_cupy
from minibn.cuda import progression

__all__ = ["KernelCache", "batchnorm_backward", "batchnorm_forward"]


class KernelCache(NamedTuple):
    """What the forward kernels save for the backward kernels (no x_hat: the backward recomputes
    it from x, which saves writing and re-reading a tensor the size of x).

    x:       the input, ``(N, C, *spatial)`` float32 (a reference, not a copy)
    mean:    per-channel batch mean, ``(C,)``
    var:     per-channel biased batch variance, ``(C,)``
    inv_std: ``1 / sqrt(var + eps)``, ``(C,)``
    gamma:   the scale, ``(C,)`` float32
    eps:     the epsilon used
    """

    x: object
    mean: object
    var: object
    inv_std: object
    gamma: object
    eps: float


def _check_x(x, name="x"):
    if not (isinstance(x, np.ndarray) or is_cupy(x)):
        raise TypeError(f"{name} must be a NumPy or CuPy array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(f"{name} must have shape (N, C) or (N, C, *spatial) with channels on axis 1; "
                         f"got shape {tuple(x.shape)}")
    if x.dtype != np.float32:
        raise TypeError(f"{name} must be float32 (the kernels are written for float), got {x.dtype}; "
                        f"use {name}.astype(np.float32)")
    return _xp(x)


def _vector(p, name, x, xp):
    if is_cupy(p) != is_cupy(x):
        raise TypeError(f"{name} must live on the same device as x (both NumPy or both CuPy)")
    p = xp.asarray(p)
    if p.shape != (x.shape[1],):
        raise ValueError(f"{name} must have shape (C,) = ({x.shape[1]},) to match x of shape "
                         f"{tuple(x.shape)}; got {tuple(p.shape)}")
    return xp.ascontiguousarray(p, dtype=xp.float32)


def _running(r, name, x, xp):
    if is_cupy(r) != is_cupy(x) or not hasattr(r, "shape"):
        raise TypeError(f"{name} must be an array on the same device as x")
    if r.shape != (x.shape[1],) or r.dtype != np.float32 or not r.flags.c_contiguous:
        raise ValueError(f"{name} is updated in place, so it must be a contiguous float32 array of "
                         f"shape (C,) = ({x.shape[1]},); got {r.dtype} {tuple(r.shape)}")


def batchnorm_forward(x, gamma, beta, eps=1e-5, running_mean=None, running_var=None, momentum=0.1,
                      *, block=256):
    """Training-mode batch normalization by the fused forward kernels (K5).

    Args:
        x: ``(N, C)`` or ``(N, C, *spatial)`` float32, NumPy (CPU executor) or CuPy (GPU).
        gamma, beta: ``(C,)`` on the same device.
        eps: added to the variance inside the square root.
        running_mean, running_var: optional ``(C,)`` float32 arrays, updated in place as
            ``torch.nn.BatchNorm2d`` does (unbiased variance); give both or neither.
        momentum: weight of the batch statistic in the running update, in [0, 1].
        block: threads per block (a multiple of 32).

    Returns:
        out: like ``x``; cache: a ``KernelCache`` for ``batchnorm_backward``.
    """
    xp = _check_x(x)
    gamma = _vector(gamma, "gamma", x, xp)
    beta = _vector(beta, "beta", x, xp)
    check_eps(eps, training=False)  # as minibn.functional: eps = 0 allowed
    if (running_mean is None) != (running_var is None):
        raise ValueError("give both running_mean and running_var, or neither")
    check_momentum(momentum)
    check_batch_size(tuple(x.shape), allow_empty=False)
    x = xp.ascontiguousarray(x)
    rm = rv = None
    if running_mean is not None:
        _running(running_mean, "running_mean", x, xp)
        _running(running_var, "running_var", x, xp)
        # Update copies and commit them only once the batch has proved finite.
        rm, rv = running_mean.copy(), running_var.copy()
    out, mean, var, inv_std = progression.forward(
        "K5", x, gamma, beta, eps, block=block, running_mean=rm, running_var=rv, momentum=momentum)
    bad = ~(xp.isfinite(mean) & xp.isfinite(var))
    if bool(bad.any()):
        channels = [int(c) for c in xp.flatnonzero(bad)[:5].tolist()]
        raise ValueError(f"x contains NaN or inf (in channel(s) {channels})")
    if rm is not None:
        running_mean[...] = rm
        running_var[...] = rv
    return out, KernelCache(x, mean, var, inv_std, gamma, float(eps))


def batchnorm_backward(dout, cache, *, block=256):
    """Backward pass by the K6 kernels: returns ``(dx, dgamma, dbeta)``.

    Args:
        dout: upstream gradient, float32, the shape of the forward output, on x's device.
        cache: the ``KernelCache`` from ``batchnorm_forward``.
    """
    if not isinstance(cache, KernelCache):
        raise TypeError("cache must be the KernelCache returned by minibn.cuda.batchnorm_forward")
    xp = _check_x(dout, "dout")
    if is_cupy(dout) != is_cupy(cache.x):
        raise TypeError("dout must live on the same device as the forward's x")
    if tuple(dout.shape) != tuple(cache.x.shape):
        raise ValueError(f"dout must have the shape of the forward output {tuple(cache.x.shape)}, "
                         f"got {tuple(dout.shape)}")
    return progression.backward(xp.ascontiguousarray(dout), cache.x, cache.mean, cache.inv_std,
                                cache.gamma, block=block)
