"""torch's own ``torch.nn.SyncBatchNorm`` on CPU tensors, as a second oracle for minibn's.

torch's module refuses CPU input, and five of the ATen operators its autograd function calls
exist only for accelerators. Everything else is torch's: the module's momentum and eval-mode
logic, the function's all-gather of (mean, invstd, count), its masking of empty batches, its
all-reduce of the two gradient sums and what each rank returns. ``install()`` gives those five
operators CPU kernels written from what torch's CUDA kernels compute (the per-rank merge of
``batch_norm_gather_stats_with_counts`` included), and ``forward`` lets a CPU tensor past the
module's device gate for one call.
"""
from __future__ import annotations

import contextlib
from unittest import mock

import torch

from minibn.conventions import channel_shape, reduce_axes

_library = None


def _per_channel(t, x):
    return t.view(channel_shape(x))


def _stats(x, eps):
    var, mean = torch.var_mean(x, reduce_axes(x), correction=0)
    return mean, (var + eps).rsqrt()


def _gather_stats_with_counts(x, mean, invstd, running_mean, running_var, momentum, eps, counts):
    # Rank by rank, as the CUDA kernel merges them: the sum of squares of each rank's batch
    # recovered from its invstd, then Chan et al.'s pairwise update.
    n = torch.zeros((), dtype=mean.dtype)
    avg = torch.zeros(mean.shape[1], dtype=mean.dtype)
    m2 = torch.zeros_like(avg)
    for j in range(mean.shape[0]):
        count = counts[j].to(mean.dtype)
        m2_j = (invstd[j].reciprocal() ** 2 - eps) * count
        total = n + count
        m2 = m2 + m2_j + (avg - mean[j]) ** 2 * n * count / total
        avg = avg * (n / total) + mean[j] * (count / total)
        n = total
    if running_mean is not None:
        running_mean.mul_(1 - momentum).add_(avg, alpha=momentum)
    if running_var is not None:
        running_var.mul_(1 - momentum).add_(m2 / (n - 1), alpha=momentum)
    return avg, (m2 / n + eps).rsqrt()


def _elemt(x, weight, bias, mean, invstd, eps):
    y = (x - _per_channel(mean, x)) * _per_channel(invstd, x)
    if weight is not None:
        y = y * _per_channel(weight, x)
    if bias is not None:
        y = y + _per_channel(bias, x)
    return y


def _backward_reduce(dy, x, mean, invstd, weight, input_g, weight_g, bias_g):
    sum_dy = dy.sum(reduce_axes(x))
    sum_dy_xmu = (dy * (x - _per_channel(mean, x))).sum(reduce_axes(x))
    empty = torch.empty(0, dtype=x.dtype)
    return (sum_dy, sum_dy_xmu, sum_dy_xmu * invstd if weight_g else empty,
            sum_dy if bias_g else empty)


def _backward_elemt(dy, x, mean, invstd, weight, sum_dy, sum_dy_xmu, count):
    n = count.sum().to(x.dtype)
    scale = invstd if weight is None else invstd * weight
    centered = x - _per_channel(mean, x)
    return (dy - _per_channel(sum_dy / n, x)
            - centered * _per_channel(invstd ** 2 * sum_dy_xmu / n, x)) * _per_channel(scale, x)


def install():
    """Register the five CPU kernels in this process (once)."""
    global _library
    if _library is not None:
        return
    _library = torch.library.Library("aten", "IMPL")
    for name, kernel in (("batch_norm_stats", _stats),
                         ("batch_norm_gather_stats_with_counts", _gather_stats_with_counts),
                         ("batch_norm_elemt", _elemt),
                         ("batch_norm_backward_reduce", _backward_reduce),
                         ("batch_norm_backward_elemt", _backward_elemt)):
        _library.impl(name, kernel, "CPU")


def forward(module: torch.nn.SyncBatchNorm, x):
    """``module(x)`` for a CPU ``x``: the gate accepts the privateuse1 backend's name, which
    reads as ``"cpu"`` for this one call."""
    install()
    gate = mock.patch.object(torch._C, "_get_privateuse1_backend_name", lambda: "cpu")
    with gate if module.training else contextlib.nullcontext():
        return module(x)
