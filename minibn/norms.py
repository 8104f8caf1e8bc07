"""Layer, group and instance normalization in NumPy (and CuPy): the references of lesson 09.

All three normalize *each sample on its own*, so unlike batch norm they do not depend on the
batch size and behave the same in training and inference. They differ only in which values of
a sample share a mean and variance (``x`` is ``(N, C, *spatial)``, channels on axis 1):

- ``group_norm(x, G, ...)``: the ``C // G`` channels of each of ``G`` groups, with all their
  spatial positions (Wu & He 2018);
- ``layer_norm``: the whole sample, ``(C, *spatial)`` (Ba et al. 2016), that is ``G = 1``;
- ``instance_norm``: each channel alone, its spatial positions (Ulyanov et al. 2016), ``G = C``.

Each row of ``M`` values normalized together is a batch-norm "channel" turned sideways, so the
backward pass is lesson 02's closed form applied per row (``norm_backward``)::

    dx = inv_std / M * (M * g - sum(g) - x_hat * sum(g * x_hat)),   g = dout * gamma

The affine parameters are per channel ``(C,)`` for group and instance norm, as in
``torch.nn.GroupNorm``/``InstanceNorm*d``, and elementwise ``x.shape[1:]`` for layer norm, as in
``torch.nn.LayerNorm(x.shape[1:])``. The variance is the biased one and ``eps`` is added inside
the square root, as in batch norm.
"""
from __future__ import annotations

from typing import NamedTuple

from minibn.conventions import array_namespace, channel_shape, check_eps
from minibn.functional import _check_finite, _check_input, _check_param

__all__ = ["NormCache", "group_norm", "instance_norm", "layer_norm", "norm_backward"]


class NormCache(NamedTuple):
    """What the forward functions save for ``norm_backward``.

    x_hat:   the normalized input, same shape as ``x``
    inv_std: ``1 / sqrt(var + eps)`` per row, ``(N, G)``
    gamma:   the scale, shaped to broadcast against ``x``
    groups:  ``G``, the number of rows per sample
    param_shape: the shape gamma and beta were given in, ``(C,)`` or ``x.shape[1:]``
    """

    x_hat: object
    inv_std: object
    gamma: object
    groups: int
    param_shape: tuple


def group_norm(x, num_groups, gamma, beta, eps=1e-5):
    """Group normalization: each sample's channels in ``num_groups`` groups of ``C // num_groups``.

    Args:
        x: ``(N, C, *spatial)`` float32/float64 array, ``C`` divisible by ``num_groups``.
        num_groups: ``G``; ``G = 1`` is layer norm over ``(C, *spatial)``, ``G = C`` instance norm.
        gamma, beta: ``(C,)`` per-channel scale and shift.
        eps: added to the variance inside the square root (>= 0).

    Returns:
        out (like ``x``) and a ``NormCache`` for ``norm_backward``.

    Raises:
        ValueError: ``C`` not divisible by ``num_groups``, a group of fewer than 2 values, bad
            gamma/beta shapes, negative eps, or NaN/inf in ``x``.
        TypeError: ``x`` is not a floating-point array, ``num_groups`` not an integer.
    """
    _check_input(x)
    if isinstance(num_groups, bool) or not isinstance(num_groups, int) or num_groups < 1:
        raise TypeError(f"num_groups must be a positive integer, got {num_groups!r}")
    if x.shape[1] % num_groups:
        raise ValueError(f"the number of channels C = {x.shape[1]} of x (shape {tuple(x.shape)}) "
                         f"must be divisible by num_groups = {num_groups}")
    gamma = _check_param(gamma, "gamma", x).reshape(channel_shape(x))
    beta = _check_param(beta, "beta", x).reshape(channel_shape(x))
    return _normalize(x, num_groups, gamma, beta, eps, (x.shape[1],))


def instance_norm(x, gamma, beta, eps=1e-5):
    """Instance normalization: each channel of each sample over its spatial positions.

    ``group_norm`` with ``G = C``; ``x`` must have spatial axes with more than one position.
    """
    _check_input(x)
    return group_norm(x, x.shape[1], gamma, beta, eps)


def layer_norm(x, gamma, beta, eps=1e-5):
    """Layer normalization: each sample over all its values, ``(C, *spatial)``.

    ``gamma`` and ``beta`` are elementwise, of shape ``x.shape[1:]`` (torch's
    ``LayerNorm(x.shape[1:])``). Without the affine part this is ``group_norm`` with ``G = 1``.
    """
    xp = _check_input(x)
    params = []
    for name, p in (("gamma", gamma), ("beta", beta)):
        p = xp.asarray(p)
        if tuple(p.shape) != tuple(x.shape[1:]):
            raise ValueError(f"{name} must have shape x.shape[1:] = {tuple(x.shape[1:])} (one "
                             f"value per element of a sample); got shape {tuple(p.shape)}")
        if not (xp.issubdtype(p.dtype, xp.floating) or xp.issubdtype(p.dtype, xp.integer)):
            raise TypeError(f"{name} must be a real numeric array, got dtype {p.dtype}")
        params.append(p.astype(x.dtype, copy=False)[None])
    return _normalize(x, 1, *params, eps, tuple(x.shape[1:]))


def _normalize(x, groups, gamma, beta, eps, param_shape):
    xp = array_namespace(x)
    check_eps(eps, training=False)  # eps = 0 allowed, as in minibn.functional
    n = x.shape[0]
    rows = x.reshape(n, groups, -1)
    m = rows.shape[2]
    if m < 2 and n > 0:
        # One value per row: its variance is 0, every output would be beta and no gradient
        # would flow back (batch norm's "more than 1 value per channel" rule, sideways).
        raise ValueError(f"each normalized group needs more than 1 value, got {m} for x of shape "
                         f"{tuple(x.shape)} and {groups} group(s) per sample")
    mean = rows.mean(axis=2, keepdims=True)
    _check_finite(xp, mean.reshape(-1), "x contains NaN or inf in normalized group(s) {channels} "
                  "(numbered sample * groups + group)")
    centered = rows - mean
    # Two passes, as in batch norm: E[x^2] - E[x]^2 cancels when |mean| >> std.
    var = (centered * centered).mean(axis=2, keepdims=True)
    inv_std = 1.0 / xp.sqrt(var + eps)
    x_hat = (centered * inv_std).reshape(x.shape)
    out = x_hat * gamma + beta
    return out, NormCache(x_hat, inv_std.reshape(n, groups), gamma, groups, param_shape)


def norm_backward(dout, cache):
    """Closed-form backward of ``group_norm``, ``instance_norm`` and ``layer_norm``.

    Returns ``dx`` (like ``x``) and ``dgamma``, ``dbeta`` (the shape gamma and beta were given
    in: ``(C,)``, or ``x.shape[1:]`` for layer norm).
    """
    _check_input(dout, "dout")
    x_hat, gamma = cache.x_hat, cache.gamma
    if tuple(dout.shape) != tuple(x_hat.shape):
        raise ValueError(f"dout must have the shape of the forward output {tuple(x_hat.shape)}, "
                         f"got {tuple(dout.shape)}")
    dout = dout.astype(x_hat.dtype, copy=False)
    # gamma broadcasts along the axes where its shape is 1: its gradient sums over them.
    axes = tuple(i for i, size in enumerate(gamma.shape) if size == 1)
    dbeta = dout.sum(axis=axes).reshape(cache.param_shape)
    dgamma = (dout * x_hat).sum(axis=axes).reshape(cache.param_shape)
    n = x_hat.shape[0]
    g = (dout * gamma).reshape(n, cache.groups, -1)
    xh = x_hat.reshape(n, cache.groups, -1)
    dx = g - (g.mean(axis=2, keepdims=True) + xh * (g * xh).mean(axis=2, keepdims=True))
    dx *= cache.inv_std[:, :, None]
    return dx.reshape(x_hat.shape), dgamma, dbeta
