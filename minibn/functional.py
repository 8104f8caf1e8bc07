"""Batch Normalization in NumPy (and CuPy): the reference the course builds and grades against.

Every function is written against the array namespace of its input, so the same code runs on
NumPy arrays on the CPU and CuPy arrays on a GPU. The channel axis is 1 everywhere: ``x`` is
``(N, C)`` or ``(N, C, *spatial)`` and statistics are taken over every axis except 1, so a
channel's statistics pool ``m = N * prod(spatial)`` values (the paper's effective batch ``m·p·q``).

Conventions (the same as ``torch.nn.BatchNorm*d``):
- training normalizes with the *biased* batch variance ``mean((x - mu)**2)``;
- ``eps`` is added to the variance, inside the square root;
- the running variance used at inference is updated with the *unbiased* variance
  (see ``update_running_stats``).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

from minibn.conventions import array_namespace, check_batch_size, check_eps, check_momentum
from minibn.conventions import channel_shape as _channel_shape
from minibn.conventions import reduce_axes as _reduce_axes
from minibn.conventions import unbiased_variance, update_running_stat

__all__ = [
    "BatchNormCache",
    "array_namespace",
    "batchnorm_forward",
    "batchnorm_backward",
    "batchnorm_backward_graph",
    "batchnorm_inference",
    "pooled_moments",
    "update_running_stats",
]


class BatchNormCache(NamedTuple):
    """What ``batchnorm_forward`` saves for the backward pass.

    x:       the input, ``(N, C, *spatial)`` (a reference, not a copy: don't modify it in place)
    x_hat:   the normalized input ``(x - mean) * inv_std``, same shape as ``x``
    mean:    per-channel batch mean, ``(C,)``
    var:     per-channel biased batch variance, ``(C,)``
    inv_std: ``1 / sqrt(var + eps)``, ``(C,)``
    gamma:   the scale, ``(C,)``, in the dtype of ``x``
    eps:     the epsilon used
    """

    x: object
    x_hat: object
    mean: object
    var: object
    inv_std: object
    gamma: object
    eps: float


def _check_input(x, name="x"):
    xp = array_namespace(x)
    if not hasattr(x, "ndim") or not hasattr(x, "dtype"):
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if x.ndim < 2:
        raise ValueError(
            f"{name} must have shape (N, C) or (N, C, *spatial) with channels on axis 1; "
            f"got {x.ndim}D input of shape {tuple(x.shape)}"
        )
    if not xp.issubdtype(x.dtype, xp.floating):
        raise TypeError(
            f"{name} must be a floating-point array (float32 or float64), got dtype {x.dtype}"
        )
    return xp


def _check_param(p, name, x):
    """Validate a per-channel vector and return it in the dtype of ``x``."""
    xp = array_namespace(x)
    p = xp.asarray(p)
    channels = x.shape[1]
    if p.shape != (channels,):
        raise ValueError(
            f"{name} must have shape (C,) = ({channels},) to match x of shape {tuple(x.shape)} "
            f"(channels on axis 1); got shape {tuple(p.shape)}"
        )
    if not (xp.issubdtype(p.dtype, xp.floating) or xp.issubdtype(p.dtype, xp.integer)):
        raise TypeError(f"{name} must be a real numeric array, got dtype {p.dtype}")
    return p.astype(x.dtype, copy=False)


def _check_finite(xp, stat, problem, **fields):
    """Raise ``ValueError(problem)``, its ``{channels}`` filled with where ``stat`` is NaN or inf
    (and any other ``{field}`` from ``fields``, formatted only then: printing a dtype costs
    more than a small batch's arithmetic).

    NaN/inf anywhere in a channel makes its mean non-finite, so this finds bad input from C
    numbers instead of an extra pass over the whole tensor (and before the arithmetic on it warns).
    """
    bad = ~xp.isfinite(stat)
    if bool(bad.any()):
        channels = [int(c) for c in xp.flatnonzero(bad)[:5].tolist()]
        raise ValueError(problem.format(channels=channels, **fields))


def batchnorm_forward(x, gamma, beta, eps=1e-5):
    """Training-mode batch normalization (Ioffe & Szegedy 2015, Algorithm 1).

    Args:
        x: ``(N, C)`` or ``(N, C, *spatial)`` float32/float64 array.
        gamma, beta: ``(C,)`` scale and shift.
        eps: added to the variance inside the square root.

    Returns:
        out: same shape and dtype as ``x``: ``gamma * x_hat + beta``.
        cache: a ``BatchNormCache`` for ``batchnorm_backward`` / ``batchnorm_backward_graph``.

    Raises:
        ValueError: ``x`` has fewer than 2 dims, gamma/beta are not ``(C,)``, a channel has a
            single value (statistics undefined, as in torch), or ``x`` holds NaN/inf.
        TypeError: ``x`` is not a floating-point array.
    """
    xp = _check_input(x)
    gamma = _check_param(gamma, "gamma", x)
    beta = _check_param(beta, "beta", x)
    check_eps(eps, training=False)  # eps = 0 allowed: lesson 01 tries it
    check_batch_size(tuple(x.shape), allow_empty=False)
    m = x.size // x.shape[1]
    rows = _Rows(x)

    mean = _per_channel_sum(xp, x) / m
    _check_finite(xp, mean, "x contains NaN or inf in channel(s) {channels} (or values whose sum "
                  "overflows {dtype})", dtype=x.dtype)
    x_hat = rows.flat(x) - rows.per_channel(mean)
    # Two passes (mean, then mean of squared deviations): the one-pass E[x^2] - E[x]^2
    # cancels catastrophically when |mean| >> std.
    var = _per_channel_dot(xp, rows.unflat(x_hat), rows.unflat(x_hat)) / m
    _check_finite(xp, var, "the variance of x overflows {dtype} in channel(s) {channels}",
                  dtype=x.dtype)
    inv_std = 1.0 / xp.sqrt(var + eps)
    x_hat *= rows.per_channel(inv_std)
    out = x_hat * rows.per_channel(gamma)
    out += rows.per_channel(beta)
    x_hat, out = rows.unflat(x_hat), rows.unflat(out)
    return out, BatchNormCache(x, x_hat, mean, var, inv_std, gamma, float(eps))


# From how many values the large-array forms below pay for their setup (on a 2-core Xeon).
_LARGE = 1 << 14


class _Rows:
    """How the elementwise passes see an ``(N, C, *spatial)`` array and its ``(C,)`` vectors.

    The plain way, ``a * v.reshape(1, C, 1, ...)``, is slow in NumPy: broadcasting a vector
    along the last axis keeps the loop from running over whole contiguous rows (on a 2-core
    Xeon an in-place multiply or add takes 1.4-2x as long). So a C-contiguous input is seen as ``N`` rows
    of ``C * prod(spatial)`` values and each vector as one such row, ``repeat(v, prod(spatial))``
    (``1/N`` of the array): every pass then multiplies or adds two contiguous rows, and each
    element gets the very same arithmetic. 2-D and strided inputs keep the plain broadcast, and
    so do small ones (under ``ROWS_FROM`` values), where making the rows costs more than it saves.
    """

    ROWS_FROM = _LARGE

    def __init__(self, x):
        self.shape = x.shape
        self.channel_shape = _channel_shape(x)
        spatial = x.size // max(x.shape[0] * x.shape[1], 1)
        rows = x.ndim > 2 and x.flags.c_contiguous and x.size >= self.ROWS_FROM
        self.repeat = spatial if rows else None

    def flat(self, a):
        return a.reshape(a.shape[0], -1) if self.repeat else a

    def unflat(self, a):
        return a.reshape(self.shape)

    def per_channel(self, v):
        if self.repeat:
            return array_namespace(v).repeat(v, self.repeat)
        return v.reshape(self.channel_shape)


# Per-channel reductions. On an (N, C, prod(spatial)) view matmul first sums each (sample, channel)
# row in the input's dtype (a matrix-vector product against ones, and a dot product per row: the
# array is read once, by BLAS's vectorized loops, about 3x faster than ``sum(axis=(0, 2, ...))``;
# the sum 1.5x faster than einsum's, the dot a little; below ``_LARGE`` values einsum, whose call
# costs less, does the same); the N row sums are then accumulated in float64. A float32 running sum over a large
# batch would drift by ~1e-5 relative, which an input offset from zero
# (mean 100, std 2, say) turns into errors of 1e-4 in x_hat. (N, C) inputs have no rows to sum:
# einsum reduces them directly (as accurate as torch, which accumulates in float32 too).
def _ncs(a):
    return a.reshape(a.shape[0], a.shape[1], -1)


def _per_channel_sum(xp, a):
    """``sum(a)`` over every axis except 1, ``(C,)``, in the dtype of ``a``."""
    if a.ndim == 2:
        return xp.einsum("nc->c", a)
    a = _ncs(a)
    if a.size < _LARGE:
        rows = xp.einsum("ncs->nc", a)
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow is reported by name later
            rows = xp.matmul(a, xp.ones(a.shape[2], a.dtype))
    return rows.sum(axis=0, dtype=xp.float64).astype(a.dtype, copy=False)


def _per_channel_dot(xp, a, b):
    """``sum(a * b)`` over every axis except 1, ``(C,)``, without materializing ``a * b``."""
    if a.ndim == 2:
        return xp.einsum("nc,nc->c", a, b)
    if a.size < _LARGE:
        rows = xp.einsum("ncs,ncs->nc", _ncs(a), _ncs(b))
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # as in _per_channel_sum
            rows = xp.matmul(_ncs(a)[:, :, None, :], _ncs(b)[:, :, :, None])[:, :, 0, 0]
    return rows.sum(axis=0, dtype=xp.float64).astype(a.dtype, copy=False)


def _check_dout(dout, cache):
    xp = array_namespace(dout)
    if not hasattr(dout, "shape"):
        raise TypeError(f"dout must be an array, got {type(dout).__name__}")
    if tuple(dout.shape) != tuple(cache.x_hat.shape):
        raise ValueError(
            f"dout must have the shape of the forward output {tuple(cache.x_hat.shape)}, "
            f"got {tuple(dout.shape)}"
        )
    if not xp.issubdtype(dout.dtype, xp.floating):
        raise TypeError(f"dout must be a floating-point array, got dtype {dout.dtype}")
    return xp


def batchnorm_backward(dout, cache):
    """Backward pass in the simplified closed form.

    With ``m`` values per channel, ``x_hat`` and ``inv_std`` from the forward pass:
        dbeta  = sum(dout)
        dgamma = sum(dout * x_hat)
        dx     = gamma * inv_std / m * (m * dout - dbeta - x_hat * dgamma)
    where the sums run over every axis except 1.

    Args:
        dout: upstream gradient, same shape as the forward output.
        cache: the ``BatchNormCache`` returned by ``batchnorm_forward``.

    Returns:
        dx: same shape as ``x``; dgamma, dbeta: ``(C,)``.
    """
    xp = _check_dout(dout, cache)
    x_hat = cache.x_hat
    rows = _Rows(x_hat)
    m = x_hat.size // x_hat.shape[1]
    dout = dout.astype(x_hat.dtype, copy=False)

    dbeta = _per_channel_sum(xp, dout)
    dgamma = _per_channel_dot(xp, dout, x_hat)
    # dx = (gamma * inv_std) * (dout - (dbeta + x_hat * dgamma) / m), in four passes over
    # memory and a single array allocated (dx itself).
    dx = rows.flat(x_hat) * rows.per_channel(dgamma / m)
    dx += rows.per_channel(dbeta / m)
    xp.subtract(rows.flat(dout), dx, out=dx)
    dx *= rows.per_channel(cache.gamma * cache.inv_std)
    dx = rows.unflat(dx)
    return dx, dgamma, dbeta


def batchnorm_backward_graph(dout, cache):
    """Backward pass node by node through the staged computational graph.

    Forward graph (per channel, m values, sums over every axis except 1):
        mu = sum(x) / m;  xc = x - mu;  var = sum(xc**2) / m;  std = sqrt(var + eps)
        inv = 1 / std;    x_hat = xc * inv;  out = gamma * x_hat + beta
    Each step below is the local derivative of one node, applied in reverse.

    Returns:
        dx: same shape as ``x``; dgamma, dbeta: ``(C,)``.
    """
    _check_dout(dout, cache)
    x, x_hat, gamma = cache.x, cache.x_hat, cache.gamma
    shape = _channel_shape(x)
    axes = _reduce_axes(x)
    m = x.size // x.shape[1]
    dout = dout.astype(x.dtype, copy=False)
    xc = x - cache.mean.reshape(shape)
    std = 1.0 / cache.inv_std

    # out = gamma * x_hat + beta
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * x_hat).sum(axis=axes)
    dx_hat = dout * gamma.reshape(shape)
    # x_hat = xc * inv
    dinv = (dx_hat * xc).sum(axis=axes)
    dxc = dx_hat * cache.inv_std.reshape(shape)
    # inv = 1 / std
    dstd = -dinv / std**2
    # std = sqrt(var + eps)
    dvar = dstd / (2.0 * std)
    # var = sum(xc**2) / m
    dxc += (2.0 / m) * xc * dvar.reshape(shape)
    # xc = x - mu
    dx = dxc.copy()
    dmu = -dxc.sum(axis=axes)
    # mu = sum(x) / m
    dx += (dmu / m).reshape(shape)
    return dx, dgamma, dbeta


def batchnorm_inference(x, mean, var, gamma, beta, eps=1e-5):
    """Inference-mode batch normalization with fixed statistics (paper Algorithm 2, step 11).

    Args:
        x: ``(N, C)`` or ``(N, C, *spatial)``; any N, including 1.
        mean, var: ``(C,)`` population (or running) mean and variance.
        gamma, beta: ``(C,)``.

    Returns:
        out, same shape and dtype as ``x``: ``gamma * (x - mean) / sqrt(var + eps) + beta``,
        computed as one affine map per channel.

    Raises:
        ValueError: bad shapes (as in ``batchnorm_forward``), negative eps, or a ``mean``/``var``
            that is NaN, inf or (for ``var``) negative.
    """
    _check_input(x)
    xp = array_namespace(x)
    mean = _check_param(mean, "mean", x)
    var = _check_param(var, "var", x)
    gamma = _check_param(gamma, "gamma", x)
    beta = _check_param(beta, "beta", x)
    check_eps(eps, training=False)  # eps = 0 allowed: lesson 01 tries it
    for name, stat in (("mean", mean), ("var", var)):
        _check_finite(xp, stat, f"{name} contains NaN or inf in channel(s) {{channels}}")
    if bool((var < 0).any()):
        raise ValueError("var must be non-negative")
    scale = gamma / xp.sqrt(var + eps)
    shift = beta - mean * scale
    shape = _channel_shape(x)
    out = x * scale.reshape(shape)
    out += shift.reshape(shape)
    return out


def update_running_stats(running_mean, running_var, x, momentum=0.1):
    """Update running statistics in place from a training batch, as ``torch.nn.BatchNorm*d`` does.

    ``running = (1 - momentum) * running + momentum * batch_stat``, where the batch variance is the
    *unbiased* one: ``m / (m - 1)`` times the biased variance used to normalize the batch, since
    at inference the running variance stands in for the population variance.

    Args:
        running_mean, running_var: ``(C,)`` float arrays, updated in place (and returned).
        x: the training batch, ``(N, C, *spatial)`` with ``m = N * prod(spatial) > 1``.
        momentum: weight of the new batch statistic, in [0, 1] (torch's convention; CS231n's
            ``momentum`` is ``1 -`` this).
    """
    xp = _check_input(x)
    for name, r in (("running_mean", running_mean), ("running_var", running_var)):
        if not hasattr(r, "shape") or tuple(r.shape) != (x.shape[1],):
            raise ValueError(f"{name} must be an array of shape (C,) = ({x.shape[1]},)")
    check_momentum(momentum)
    check_batch_size(tuple(x.shape), allow_empty=False)
    m = x.size // x.shape[1]
    axes = _reduce_axes(x)
    mean = x.mean(axis=axes)
    _check_finite(xp, mean, "x contains NaN or inf in channel(s) {channels}")
    var_unbiased = unbiased_variance(x.var(axis=axes), m)
    _check_finite(xp, var_unbiased, "the variance of x overflows {dtype} in channel(s) "
                  "{channels}", dtype=x.dtype)
    update_running_stat(running_mean, mean, momentum)
    update_running_stat(running_var, var_unbiased, momentum)
    return running_mean, running_var


def pooled_moments(counts, means, variances):
    """Mean and unbiased variance of all the values of several batches, from each batch's
    statistics (PreciseBN; the population statistics of Algorithm 2).

    ``counts[b]`` values per channel in batch b, its per-channel ``means[b]`` and *biased*
    ``variances[b]`` (arrays or tensors of one shape). Chan et al.'s merge,
    ``var = sum_b n_b (var_b + (mean_b - mean)^2) / (N - 1)``, weighs every value once and has
    no ``E[x^2] - E[x]^2`` cancellation; on disjoint batches covering a data set it is exactly
    that data set's unbiased variance. Plain arithmetic, so NumPy, CuPy and torch all work.
    """
    counts = [int(n) for n in counts]
    if len(counts) != len(means) or len(counts) != len(variances):
        raise ValueError(f"pooled_moments: {len(counts)} counts, {len(means)} means and "
                         f"{len(variances)} variances; give one of each per batch")
    if any(n < 1 for n in counts) or sum(counts) < 2:
        raise ValueError(f"batch sizes must be >= 1 and sum to >= 2, got {counts}")
    total = sum(counts)
    mean = sum(n * m for n, m in zip(counts, means)) / total
    m2 = sum(n * (v + (m - mean) ** 2) for n, m, v in zip(counts, means, variances))
    return mean, m2 / (total - 1)

