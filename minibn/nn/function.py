"""``BatchNormFunction``: training-mode batch norm with minibn's closed-form backward.

The backward is the closed form of lesson 02 (``minibn.functional.batchnorm_backward``) written
in ordinary differentiable torch ops, so it is itself differentiable: a gradient penalty or
``gradgradcheck`` through it gets the true second derivative. For that, everything the backward
reads must be connected to the graph: it reads ``weight`` (a saved input) and the centered input
``x - mean`` and the batch variance, which are *outputs* of the function (saved outputs: autograd
knows how they depend on ``x``), and it accepts gradients for those outputs too. A ``jvp`` gives
forward mode (``torch.func.jvp``, ``jacfwd``, ``hessian``), and a ``vmap`` rule ``torch.func.vmap``.

Speed. On CPU every full-size temporary costs about as much as a pass over the data (fresh
memory is faulted in page by page), so the forward makes only ``x - mean`` (kept for the
backward, as torch keeps ``x``) and the output, written with ``out=``; the backward makes one,
``dout * (x - mean)``, and overwrites it with ``dx`` once it is summed. ``x_hat`` is never stored:
``out = (x - mean) * alpha + bias`` and ``dx = gain * dout + k * (x - mean) + k0`` with
per-channel ``alpha``, ``gain``, ``k``, ``k0``. That still writes ``x - mean`` and, on
channels_last inputs, reduces across a strided axis; on CPU ``batch_norm_train`` runs the same
closed form as fused C++ loops instead where it can (``minibn.nn.fused``). This module stays the
readable form, and the one every traced, transformed or twice-differentiated call runs.
"""
from __future__ import annotations

import torch

from minibn.conventions import channel_shape, reduce_axes, values_per_channel

__all__ = ["BatchNormFunction", "BatchNormFunctionNoJvp", "batch_norm_train", "channel_sum",
           "channel_sum_of_squares", "closed_form_backward", "closed_form_jvp", "scale_shift"]


def channel_sum(t):
    """``t`` summed over every axis except the channel axis 1: shape ``(C,)``.

    For a contiguous ``(N, C, *spatial)`` tensor this sums the N samples first (a reduction
    over the outer axis, vectorized along memory) and then each channel's ``prod(spatial)``
    partial sums; torch's reduction over axes ``(0, 2, ...)`` at once is up to 5x slower when the
    spatial size is small (8x8). Channels-last and 2-D inputs already have channels innermost.
    """
    if t.dim() > 2 and t.is_contiguous():
        n, c = t.shape[0], t.shape[1]
        return t.reshape(n, -1).sum(0).view(c, -1).sum(1)
    return t.sum(reduce_axes(t))


def channel_sum_of_squares(t, scratch=None):
    """``sum(t * t)`` over every axis except the channel axis 1: shape ``(C,)``.

    For a contiguous ``(N, C, *spatial)`` tensor, the squared norms of its ``N * C`` contiguous
    rows: one read of ``t`` and no ``t * t`` to write and read back (and torch's norm accumulates
    float32 in float64). Otherwise ``channel_sum(t * t)``, with ``t * t`` written into
    ``scratch`` (a tensor like ``t`` whose contents may be overwritten) when one is given.
    """
    if t.dim() > 2 and t.is_contiguous():
        n, c = t.shape[0], t.shape[1]
        rows = torch.linalg.vector_norm(t.view(n * c, -1), dim=1)
        return rows.square_().view(n, c).sum(0)
    return channel_sum(t * t if scratch is None else torch.mul(t, t, out=scratch))


def scale_shift(t, scale, shift):
    """``t * scale + shift`` in a new tensor, in ``t``'s memory format, with per-channel
    ``scale``/``shift`` of shape ``channel_shape(t)``.

    One fused ``addcmul``: on data that is not already in cache it is as fast as a multiply
    followed by an in-place add, and unlike the in-place add it stays correct under ``vmap``
    when only ``shift`` is batched.
    """
    return torch.addcmul(shift, t, scale)


def batch_norm_train(x, weight, bias, eps):
    """``(out, mean, var)`` of ``BatchNormFunction``; through the fused C++ kernel of
    ``minibn.nn.fused`` where it applies (contiguous and channels_last CPU inputs), and inside
    ``torch.compile`` through ``BatchNormFunctionNoJvp``, since dynamo cannot trace a Function
    that defines ``jvp``."""
    from minibn.nn import fused  # imported here: it builds on this module

    if fused.applies(x, weight, bias):
        return fused.FusedBatchNormFunction.apply(x, weight, bias, eps)
    function = BatchNormFunctionNoJvp if torch.compiler.is_compiling() else BatchNormFunction
    out, _, mean, var = function.apply(x, weight, bias, eps)
    return out, mean, var


def closed_form_backward(centered, var, weight, eps, needs_input_grad, dout, dcentered, dmean,
                         dvar):
    """``(dx, dweight, dbias)`` of ``BatchNormFunction`` in differentiable torch ops (None where
    ``needs_input_grad`` says no, or no gradient flows). The closed form. With ``c = x - mean``,
    ``inv_std = 1 / sqrt(var + eps)``, ``x_hat = c * inv_std`` and sums over every axis except 1
    (``m`` values per channel):

        dbias   = sum(dout)
        dweight = sum(dout * x_hat) = inv_std * sum(dout * c)
        dx      = weight * inv_std / m * (m * dout - dbias - x_hat * dweight)

    which is ``gain * dout + k * c + k0`` with per-channel ``gain = weight * inv_std``,
    ``k = -gain * inv_std * dweight / m`` and ``k0 = -gain * dbias / m``. Gradients for the
    other outputs add their paths: ``var`` (``d var / d x = 2 c / m``), ``mean``
    (``1 / m``) and ``c`` itself (``dc - mean(dc)``).
    """
    need_x, need_weight, need_bias = needs_input_grad
    m = values_per_channel(centered.shape)
    shape = channel_shape(centered)
    inv_std = torch.rsqrt(var + eps)
    dbias = dweight = dx = product = None
    if dout is not None and (need_bias or need_x):
        dbias = channel_sum(dout)
    if dout is not None and (need_weight or need_x):
        product = dout * centered
        dweight = channel_sum(product) * inv_std
    if need_x:
        k = torch.zeros_like(var)   # coefficient of c = x - mean
        k0 = torch.zeros_like(var)  # constant
        if dout is not None:
            gain = inv_std if weight is None else inv_std * weight
            k = k - gain * inv_std * dweight / m
            k0 = k0 - gain * dbias / m
        if dvar is not None:
            k = k + dvar * (2.0 / m)
        if dmean is not None:
            k0 = k0 + dmean / m
        if dcentered is not None:
            k0 = k0 - channel_sum(dcentered) / m
        if product is None:
            dx = scale_shift(centered, k.view(shape), k0.view(shape))
        else:
            # dx = gain * dout + k * c + k0, written over dout * c (summed, no longer needed):
            # a fresh x-sized tensor costs more than the extra pass (its pages are faulted
            # in one by one).
            dx = product.copy_(dout).mul_(gain.view(shape))
            dx.addcmul_(centered, k.view(shape)).add_(k0.view(shape))
        if dcentered is not None:
            dx = dx + dcentered
    return dx, dweight if need_weight else None, dbias if need_bias else None


def closed_form_jvp(centered, var, weight, eps, tx, tweight, tbias):
    """``(t_out, t_centered, t_mean, t_var)`` of ``BatchNormFunction``: the outputs' tangents
    from the inputs' (None: no tangent), with ``c = x - mean`` and sums over every axis except 1:

        t_mean = sum(tx) / m,   t_c = tx - t_mean,   t_var = 2 * sum(c * tx) / m
        t_out  = weight * (inv_std * t_c + c * t_inv_std) + tweight * inv_std * c + tbias
                 with t_inv_std = -inv_std**3 * t_var / 2

    Every output gets a tangent tensor (zeros where none flows): autograd's forward mode
    does not take None for an output.
    """
    m = values_per_channel(centered.shape)
    shape = channel_shape(centered)
    inv_std = torch.rsqrt(var + eps)
    w = torch.ones_like(var) if weight is None else weight
    # t_out = gain * tx + k * c + k0, with per-channel gain, k, k0.
    k = torch.zeros_like(var)
    k0 = torch.zeros_like(var)
    if tx is None:
        t_mean, t_var, t_centered = torch.zeros_like(var), torch.zeros_like(var), None
    else:
        t_mean = channel_sum(tx) / m
        t_var = channel_sum(centered * tx) * (2.0 / m)
        t_centered = tx - t_mean.view(shape)
        k = k - w * inv_std ** 3 * t_var / 2
        k0 = k0 - w * inv_std * t_mean
    if tweight is not None:
        k = k + tweight * inv_std
    if tbias is not None:
        k0 = k0 + tbias
    t_out = scale_shift(centered, k.view(shape), k0.view(shape))
    if tx is not None:
        t_out.addcmul_(tx, (w * inv_std).view(shape))
    else:
        t_centered = torch.zeros_like(centered)
    return t_out, t_centered, t_mean, t_var


class BatchNormFunctionNoJvp(torch.autograd.Function):
    """``BatchNormFunction`` without forward mode: what ``torch.compile`` traces. The forward,
    the backward and the vmap rule are here."""

    @staticmethod
    def forward(x, weight, bias, eps):
        m = values_per_channel(x.shape)
        shape = channel_shape(x)
        mean = channel_sum(x) / m
        # Two passes, the mean then the mean of squared deviations: the one-pass
        # E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std.
        centered = x - mean.view(shape)
        out = torch.empty_like(centered)
        var = channel_sum_of_squares(centered, scratch=out) / m
        alpha = torch.rsqrt(var + eps)
        if weight is not None:
            alpha = alpha * weight
        if bias is None:
            torch.mul(centered, alpha.view(shape), out=out)
        else:
            torch.addcmul(bias.view(shape), centered, alpha.view(shape), out=out)
        return out, centered, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        _, weight, _, eps = inputs
        _, centered, _, var = output
        ctx.eps = eps
        ctx.save_for_backward(centered, var, weight)
        # Gradients of unused outputs arrive as None rather than tensors of zeros: the usual
        # call uses ``out`` only.
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dout, dcentered, dmean, dvar):
        centered, var, weight = ctx.saved_tensors
        dx, dweight, dbias = closed_form_backward(centered, var, weight, ctx.eps,
                                                  ctx.needs_input_grad[:3], dout, dcentered,
                                                  dmean, dvar)
        return dx, dweight, dbias, None

    @staticmethod
    def vmap(info, in_dims, x, weight, bias, eps):
        """``torch.func.vmap``: B independent batch norms over an outer batch dimension are one
        batch norm over ``B * C`` channels. The forward then never sees a batched tensor (it
        writes its output with ``out=``, which has no batching rule)."""
        x_dim, w_dim, b_dim, _ = in_dims
        batch = info.batch_size
        x = x.movedim(x_dim, 1) if x_dim is not None else x.unsqueeze(1).expand(
            x.shape[0], batch, *x.shape[1:])  # (N, B, C, *spatial)
        n, c, spatial = x.shape[0], x.shape[2], x.shape[3:]

        def per_channel(p, dim):
            if p is None:
                return None
            p = p.movedim(dim, 0) if dim is not None else p.expand(batch, c)
            return p.reshape(batch * c)

        out, centered, mean, var = BatchNormFunction.apply(
            x.reshape(n, batch * c, *spatial), per_channel(weight, w_dim),
            per_channel(bias, b_dim), eps)
        return ((out.view(n, batch, c, *spatial), centered.view(n, batch, c, *spatial),
                 mean.view(batch, c), var.view(batch, c)), (1, 1, 0, 0))


class BatchNormFunction(BatchNormFunctionNoJvp):
    """Batch norm with the batch's own statistics (Ioffe & Szegedy 2015, Algorithm 1).

    ``BatchNormFunction.apply(x, weight, bias, eps) -> (out, x - mean, mean, var)``

    - ``x``: ``(N, C, *spatial)`` with ``m = N * prod(spatial) >= 2`` values per channel,
      float32 or float64 (``minibn.nn.functional.batch_norm`` checks and casts).
    - ``weight``, ``bias``: ``(C,)`` in ``x``'s dtype, or None (no scale / no shift).
    - ``out = weight * (x - mean) / sqrt(var + eps) + bias`` and ``x - mean``: like ``x``
      (shape, memory format).
    - ``mean``, ``var``: ``(C,)`` batch mean and *biased* variance (what the running statistics
      are updated from).

    Every output is differentiable, in reverse mode (``backward``, inherited) and forward mode
    (``jvp``).
    """

    @staticmethod
    def setup_context(ctx, inputs, output):
        BatchNormFunctionNoJvp.setup_context(ctx, inputs, output)
        ctx.save_for_forward(output[1], output[3], inputs[1])

    @staticmethod
    def jvp(ctx, tx, tweight, tbias, _teps):
        centered, var, weight = ctx.saved_tensors
        return closed_form_jvp(centered, var, weight, ctx.eps, tx, tweight, tbias)
