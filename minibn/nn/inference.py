"""Inference-time tools for trained BN layers (minibn's or torch's).

- ``precise_bn(model, batches)``: recompute every BN layer's population statistics after
  training (Ioffe & Szegedy Algorithm 2; Wu & Johnson 2021, "PreciseBN").
- ``fold_batchnorm(layer, bn)``: fold an eval-mode BN into the ``Linear``/``Conv`` before it.
"""
from __future__ import annotations

import copy

import torch
from torch import nn

from minibn.conventions import reduce_axes, values_per_channel
from minibn.functional import pooled_moments
from minibn.nn.modules import _BatchNorm

__all__ = ["fold_batchnorm", "precise_bn"]

_TORCH_BN = nn.modules.batchnorm._BatchNorm


def _is_batchnorm(module):
    return isinstance(module, (_BatchNorm, _TORCH_BN))


# ----------------------------------------------------------------------------------------------
# Population statistics (PreciseBN)


class _PooledStats:
    """Per-channel count, mean and biased variance of every batch a BN layer saw, in float64;
    ``minibn.functional.pooled_moments`` merges them into the statistics of all the values."""

    def __init__(self):
        self.counts, self.means, self.variances = [], [], []

    @property
    def count(self):
        return sum(self.counts)

    def add(self, x):
        m = values_per_channel(x.shape)
        if m == 0:  # an empty batch holds no values: nothing to pool
            return
        x = x.detach().to(torch.float64)
        var, mean = torch.var_mean(x, dim=reduce_axes(x), correction=0)
        self.counts.append(m)
        self.means.append(mean)
        self.variances.append(var)

    def pooled(self):
        return pooled_moments(self.counts, self.means, self.variances)


def precise_bn(model, batches, num_batches=None):
    """Replace every BN layer's running statistics by population statistics (PreciseBN).

    Runs ``model`` in training mode (each BN layer normalizes with batch statistics, as it did
    while training) on up to ``num_batches`` batches from ``batches`` without gradients, and
    sets each layer's ``running_mean`` to the mean of all the values its input took, and
    ``running_var`` to their unbiased variance: the mean of batch means and the pooled
    ``E[mu_B^2 + var_B] - E[mu_B]^2`` of Wu & Johnson 2021, scaled by ``M / (M - 1)`` for ``M``
    values. On equal-size disjoint batches that cover a data set this equals the variance of
    the whole data set, the population statistic Algorithm 2 of the BN paper approximates.

    All or nothing: if anything fails (a batch, the model's forward, a layer no batch reached,
    a layer that saw one value per channel), the model is left exactly as it was.

    Args:
        model: an ``nn.Module`` holding ``minibn.nn`` and/or ``torch.nn`` BatchNorm layers.
        batches: an iterable of inputs ``x`` or of tuples/lists whose first item is ``x``.
        num_batches: how many batches to use; None uses all of ``batches``.

    Returns:
        the number of batches used. Every module's train/eval mode and ``num_batches_tracked``
        are restored; layers with ``track_running_stats=False`` are left alone.
    """
    layers = [m for m in model.modules() if _is_batchnorm(m) and m.track_running_stats]
    if not layers:
        raise ValueError("precise_bn: the model has no BatchNorm layer with running statistics")
    if num_batches is not None and num_batches < 1:
        raise ValueError(f"num_batches must be at least 1, got {num_batches}")
    stats = {layer: _PooledStats() for layer in layers}
    hooks = [layer.register_forward_pre_hook(lambda mod, args: stats[mod].add(args[0]))
             for layer in layers]
    modes = {mod: mod.training for mod in model.modules()}
    saved = {layer: (layer.num_batches_tracked.clone(), layer.running_mean.clone(),
                     layer.running_var.clone()) for layer in layers}
    used = 0
    try:
        model.train()
        with torch.no_grad():
            for batch in batches:
                if num_batches is not None and used >= num_batches:
                    break
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                model(x)
                used += 1
    finally:
        for h in hooks:
            h.remove()
        for mod, training in modes.items():
            mod.training = training
        # The passes moved the running statistics by momentum; put them back, so that a failure
        # leaves the model as it was (on success they are overwritten below).
        with torch.no_grad():
            for layer, (count, mean, var) in saved.items():
                layer.num_batches_tracked.copy_(count)
                layer.running_mean.copy_(mean)
                layer.running_var.copy_(var)
    if used == 0:
        raise ValueError("precise_bn: batches is empty")
    # Every layer's statistics are computed before any is written: a layer that cannot get
    # them must not leave the ones before it already overwritten.
    pooled = {}
    for layer, s in stats.items():
        if s.count == 0:
            raise ValueError(f"precise_bn: no batch reached {layer} (or every batch that did "
                             "was empty); it would keep stale statistics (is it used in the "
                             "model's forward?)")
        if s.count < 2:
            raise ValueError(f"precise_bn: {layer} saw a single value per channel; "
                             "its variance is undefined")
        pooled[layer] = s.pooled()
    with torch.no_grad():
        for layer, (mean, var) in pooled.items():
            layer.running_mean.copy_(mean)
            layer.running_var.copy_(var)
    return used


# ----------------------------------------------------------------------------------------------
# Folding BN into the layer before it

_FOLDABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def fold_batchnorm(layer, bn):
    """Return a copy of ``layer`` that computes ``bn(layer(x))`` for an eval-mode ``bn``.

    In eval mode BN is the per-channel affine map ``y = scale * z + shift`` with
    ``scale = gamma / sqrt(running_var + eps)`` and ``shift = beta - running_mean * scale``, so
    after ``z = W x + b`` it folds into ``W' = scale[:, None] * W`` and ``b' = scale * b + shift``
    (any groups, dilation, stride or padding: each output channel is scaled as a whole). The
    arithmetic is done in float64, then cast to the layer's dtype. ``layer`` and ``bn`` are
    left unchanged.

    Args:
        layer: ``nn.Linear`` or ``nn.Conv1d/2d/3d`` (bias or not).
        bn: a ``minibn.nn`` or ``torch.nn`` BatchNorm in eval mode, with running statistics,
            whose ``num_features`` equals the layer's output channels.
    """
    if not isinstance(layer, _FOLDABLE):
        raise TypeError(f"fold_batchnorm folds into nn.Linear or nn.Conv1d/2d/3d, "
                        f"got {type(layer).__name__}")
    if not _is_batchnorm(bn):
        raise TypeError(f"bn must be a BatchNorm module, got {type(bn).__name__}")
    if bn.training:
        raise ValueError("bn is in training mode: it normalizes with each batch's statistics, "
                         "which no fixed layer can reproduce; call bn.eval() first")
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("bn has no running statistics (track_running_stats=False): it always "
                         "normalizes with batch statistics, so it cannot be folded")
    out_channels = layer.weight.shape[0]
    if bn.num_features != out_channels:
        raise ValueError(f"channel mismatch: {type(layer).__name__} has {out_channels} output "
                         f"channels but bn has num_features={bn.num_features}")
    with torch.no_grad():
        w = layer.weight.to(torch.float64)
        scale = torch.rsqrt(bn.running_var.to(torch.float64) + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.to(torch.float64)
        shift = -bn.running_mean.to(torch.float64) * scale
        if bn.bias is not None:
            shift = shift + bn.bias.to(torch.float64)
        b = (layer.bias.to(torch.float64) if layer.bias is not None
             else torch.zeros(out_channels, dtype=torch.float64, device=w.device))
        fused = copy.deepcopy(layer)
        dtype = layer.weight.dtype
        fused.weight = nn.Parameter((w * scale.view((-1,) + (1,) * (w.dim() - 1))).to(dtype))
        fused.bias = nn.Parameter((b * scale + shift).to(dtype))
    return fused
