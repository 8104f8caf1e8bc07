"""``BatchRenorm2d``: Batch Renormalization (Ioffe 2017), for small or non-i.i.d. batches.

Batch norm trains on batch statistics and infers with running ones; with small batches the two
differ, and the network learns to rely on the noise of the first. Batch Renorm normalizes with
the batch statistics and then corrects them towards the running ones::

    x_hat = (x - mean_B) / sigma_B * r + d,
    r = clip(sigma_B / sigma, 1 / rmax, rmax),   d = clip((mean_B - mean) / sigma, -dmax, dmax)

with ``sigma_B = sqrt(var_B + eps)`` and ``mean``, ``sigma = sqrt(running_var + eps)`` the
running statistics *before* this batch updates them. Unclipped, ``x_hat = (x - mean) / sigma``:
training sees the inference-time normalization. ``r`` and ``d`` are constants for the backward
pass (the paper's stop-gradient), so the gradient is batch norm's, scaled by ``r``; with
``rmax = 1, dmax = 0`` the layer is batch norm.

The paper starts at ``rmax = 1, dmax = 0`` (plain BN, while the running statistics settle) and
relaxes them to 3 and 5; ``rmax``/``dmax`` take a number or a schedule, a function of the
number of training batches seen (``renorm_schedule`` makes the paper's linear ramps).
Running statistics follow batch norm's conventions (``minibn.conventions``: momentum, unbiased
running variance); the paper keeps a running ``sigma`` instead, which is the same up to eps.
"""
from __future__ import annotations

import torch

from minibn.conventions import average_factor, channel_shape, check_batch_size
from minibn.conventions import unbiased_variance, update_running_stat, values_per_channel
from minibn.nn import functional as F
from minibn.nn.function import batch_norm_train
from minibn.nn.group_norm import _affine
from minibn.nn.modules import _BatchNorm

__all__ = ["BatchRenorm2d", "renorm_schedule"]


def renorm_schedule(start, end, warmup_steps, ramp_steps):
    """A schedule for ``rmax``/``dmax``: ``start`` for the first ``warmup_steps`` batches, then
    linear to ``end`` over ``ramp_steps`` batches, then ``end`` (the paper: rmax 1 -> 3, dmax
    0 -> 5, after a warm-up of plain batch norm)."""
    if warmup_steps < 0 or ramp_steps < 0:
        raise ValueError(f"warmup_steps and ramp_steps must be >= 0, got {warmup_steps} and "
                         f"{ramp_steps}")

    def schedule(step):
        if step <= warmup_steps:
            return float(start)
        if step >= warmup_steps + ramp_steps:
            return float(end)
        return float(start) + (float(end) - float(start)) * (step - warmup_steps) / ramp_steps
    return schedule


class BatchRenorm2d(_BatchNorm):
    """Batch Renormalization over ``(N, C, H, W)``; ``BatchNorm2d``'s parameters and buffers.

    Args: those of ``BatchNorm2d`` (running statistics are always tracked: the correction needs
    them), and ``rmax`` (>= 1), ``dmax`` (>= 0): numbers, or functions of
    ``num_batches_tracked`` (counting the current batch) that return them.

    After a training batch, ``last_r`` and ``last_d`` hold the corrections it used, ``(C,)``.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, rmax=3.0, dmax=5.0,
                 device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, True, device, dtype, bias=bias)
        self.rmax = rmax
        self.dmax = dmax
        self.last_r = self.last_d = None

    def _check_input_dim(self, input):
        if input.dim() != 4:
            raise ValueError(f"expected 4D input (got {input.dim()}D input)")

    def extra_repr(self):
        return super().extra_repr() + f", rmax={self.rmax}, dmax={self.dmax}"

    def limits(self):
        """``(rmax, dmax)`` for the current batch, checked."""
        step = int(self.num_batches_tracked)
        rmax = self.rmax(step) if callable(self.rmax) else float(self.rmax)
        dmax = self.dmax(step) if callable(self.dmax) else float(self.dmax)
        if not rmax >= 1.0 or not dmax >= 0.0:
            raise ValueError(f"Batch Renorm needs rmax >= 1 and dmax >= 0, got rmax={rmax} and "
                             f"dmax={dmax} at batch {step}")
        return rmax, dmax

    def forward(self, input):
        self._check_input_dim(input)
        if not self.training:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        self.num_batches_tracked.add_(1)
        factor = average_factor(self.momentum, self.num_batches_tracked)
        check_batch_size(input.size(), allow_empty=False)
        rmax, dmax = self.limits()
        compute = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
        x_hat, mean, var = batch_norm_train(input.to(compute), None, None, self.eps)
        with torch.no_grad():
            running_mean = self.running_mean.to(mean.dtype)
            sigma = torch.sqrt(self.running_var.to(var.dtype) + self.eps)
            r = (torch.sqrt(var + self.eps) / sigma).clamp_(1.0 / rmax, rmax)
            d = ((mean - running_mean) / sigma).clamp_(-dmax, dmax)
            self.last_r, self.last_d = r.clone(), d.clone()
            m = values_per_channel(input.shape)
            update_running_stat(self.running_mean, mean.detach().to(self.running_mean.dtype),
                                factor)
            update_running_stat(self.running_var,
                                unbiased_variance(var.detach(), m).to(self.running_var.dtype),
                                factor)
        shape = channel_shape(input)
        corrected = x_hat * r.view(shape) + d.view(shape)
        return _affine(corrected, self.weight, self.bias, shape).to(input.dtype)
