"""Ghost batch norm (Hoffer et al. 2017): batch norm over virtual batches inside each batch.

Large-batch training loses the regularizing noise of small-batch statistics; ghost BN gets it
back by normalizing each consecutive group of ``virtual_batch_size`` samples with its own
statistics, whatever the SGD batch size. The experiments' MLP (``minibn.experiments``) and
``GhostBatchNorm`` both use ``ghost_batch_norm``.
"""
from __future__ import annotations

import torch

from minibn.conventions import average_factor, channel_shape, check_batch_size
from minibn.conventions import unbiased_variance, update_running_stat, values_per_channel
from minibn.nn import functional as F
from minibn.nn.function import batch_norm_train
from minibn.nn.group_norm import _affine
from minibn.nn.modules import _BatchNorm

__all__ = ["GhostBatchNorm", "ghost_batch_norm", "ghost_statistics"]


def ghost_statistics(input, virtual_batch_size, eps=1e-5):
    """``(x_hat, mean, var)``: ``input`` ``(N, C, *)`` normalized per channel within each of its
    ``N // virtual_batch_size`` consecutive virtual batches; ``mean``/``var`` (biased) are
    ``(virtual batches, C)``. N must be a multiple of ``virtual_batch_size``."""
    n, c = input.shape[0], input.shape[1]
    g = virtual_batch_size
    if isinstance(g, bool) or not isinstance(g, int) or g < 1 or n % g:
        raise ValueError(f"the batch size N = {n} must be a positive multiple of "
                         f"virtual_batch_size = {g!r}")
    check_batch_size((g,) + tuple(input.shape[1:]), allow_empty=False)
    k = n // g
    # (k, G, C, *) -> (G, k * C, *): every (virtual batch, channel) pair becomes a channel of
    # one batch norm, so one pass computes all the statistics (and the closed-form backward).
    grouped = input.reshape((k, g) + tuple(input.shape[1:])).transpose(0, 1)
    x_hat, mean, var = batch_norm_train(grouped.reshape((g, k * c) + tuple(input.shape[2:])),
                                        None, None, eps)
    x_hat = x_hat.reshape((g, k) + tuple(input.shape[1:])).transpose(0, 1).reshape(input.shape)
    return x_hat, mean.view(k, c), var.view(k, c)


def ghost_batch_norm(input, virtual_batch_size, weight=None, bias=None, eps=1e-5):
    """Ghost batch norm of ``input`` ``(N, C, *)`` with optional per-channel ``weight``/``bias``."""
    x_hat, _, _ = ghost_statistics(input, virtual_batch_size, eps)
    return _affine(x_hat, weight, bias, channel_shape(input))


class GhostBatchNorm(_BatchNorm):
    """``BatchNorm*d`` with training statistics from virtual batches of ``virtual_batch_size``.

    Any input ``(N, C, *)`` with N a multiple of ``virtual_batch_size``. The running statistics
    move once per batch, by the average over its virtual batches of their means and unbiased
    variances (the population statistics that the per-virtual-batch normalization estimates);
    eval mode is batch norm's.
    """

    def __init__(self, num_features, virtual_batch_size, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)
        self.virtual_batch_size = virtual_batch_size

    def _check_input_dim(self, input):
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def extra_repr(self):
        return super().extra_repr() + f", virtual_batch_size={self.virtual_batch_size}"

    def forward(self, input):
        self._check_input_dim(input)
        if not self.training and self.running_mean is not None:
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        compute = torch.float32 if input.dtype in (torch.float16, torch.bfloat16) else input.dtype
        x_hat, mean, var = ghost_statistics(input.to(compute), self.virtual_batch_size, self.eps)
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            factor = average_factor(self.momentum, self.num_batches_tracked)
            m = values_per_channel((self.virtual_batch_size,) + tuple(input.shape[1:]))
            with torch.no_grad():
                update_running_stat(self.running_mean,
                                    mean.detach().mean(0).to(self.running_mean.dtype), factor)
                update_running_stat(self.running_var, unbiased_variance(var.detach(), m).mean(0)
                                    .to(self.running_var.dtype), factor)
        return _affine(x_hat, self.weight, self.bias, channel_shape(input)).to(input.dtype)
