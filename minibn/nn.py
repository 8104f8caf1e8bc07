"""Batch Normalization as drop-in ``torch.nn`` modules, plus the inference-time tools.

- ``BatchNorm1d``, ``BatchNorm2d``, ``BatchNorm3d``: the same constructor, parameters, buffers,
  ``state_dict`` keys, train/eval behaviour and errors as ``torch.nn.BatchNorm*d``, so a
  checkpoint loads into either. Training mode runs through ``BatchNormFunction``, whose backward
  is minibn's closed form (``minibn.functional.batchnorm_backward``) written in torch ops rather
  than autograd of the forward.
- ``precise_bn(model, batches)``: recompute every BN layer's population statistics after
  training (Ioffe & Szegedy Algorithm 2; Wu & Johnson 2021, "PreciseBN").
- ``fold_batchnorm(layer, bn)``: fold an eval-mode BN into the ``Linear``/``Conv`` before it.

Conventions (torch's): normalize with the *biased* batch variance; update ``running_var`` with
the *unbiased* one; ``running = (1 - momentum) * running + momentum * batch_stat``, and
``momentum=None`` makes that a cumulative average over ``num_batches_tracked`` batches.
"""
from __future__ import annotations

import copy

import torch
from torch import nn
from torch.autograd.function import once_differentiable

__all__ = [
    "BatchNormFunction",
    "BatchNorm1d",
    "BatchNorm2d",
    "BatchNorm3d",
    "precise_bn",
    "fold_batchnorm",
]


def _reduce_dims(x):
    return [0] + list(range(2, x.dim()))


def _per_channel(v, x):
    """View a ``(C,)`` vector so it broadcasts along axis 1 of ``x``."""
    return v.view((1, -1) + (1,) * (x.dim() - 2))


def _affine(x, scale, shift, out):
    """``out = x * scale + shift`` with per-channel ``scale``/``shift`` (already broadcastable).

    One fused ``addcmul`` pass when channels are the innermost axis (channels_last, or (N, C)),
    but two passes otherwise: on CPU, addcmul with two broadcast operands along NCHW's inner
    H*W axis runs several times slower than a mul followed by an in-place add.
    """
    if x.stride(1) == 1:
        return torch.addcmul(shift, x, scale, out=out)
    return torch.mul(x, scale, out=out).add_(shift)


class BatchNormFunction(torch.autograd.Function):
    """Training-mode batch norm with the closed-form backward.

    forward(x, weight, bias, eps) -> (out, mean, var)
        x: ``(N, C, *spatial)``; weight, bias: ``(C,)`` or None (no affine transform).
        out: same shape, dtype and memory format as ``x``.
        mean, var: ``(C,)`` batch mean and *biased* variance (no gradient flows through these
        outputs; the module uses them to update the running statistics).
    Saved for backward: ``x_hat`` (the normalized input), ``inv_std`` ``(1, C, 1..)`` and
    ``weight``.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        dims = _reduce_dims(x)
        m = x.numel() // x.shape[1]
        # Two passes (mean, then mean of squared deviations): E[x^2] - E[x]^2 would cancel
        # catastrophically when |mean| >> std. (torch.var_mean is ~10x slower here on CPU.)
        # Every full-size temporary costs as much as a pass, so each buffer is reused.
        mean = x.mean(dims, keepdim=True)
        x_hat = x - mean
        out = torch.mul(x_hat, x_hat, out=torch.empty_like(x_hat))
        var = out.sum(dims, keepdim=True).div_(m)
        inv_std = torch.rsqrt(var + eps)
        x_hat.mul_(inv_std)
        if weight is not None and bias is not None:
            _affine(x_hat, _per_channel(weight, x), _per_channel(bias, x), out)
        elif weight is not None:
            torch.mul(x_hat, _per_channel(weight, x), out=out)
        else:
            out.copy_(x_hat)
            if bias is not None:
                out.add_(_per_channel(bias, x))
        ctx.save_for_backward(x_hat, inv_std, weight)
        mean, var = mean.view(-1), var.view(-1)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    @once_differentiable
    def backward(ctx, dout, _dmean, _dvar):
        """dx = weight * inv_std / m * (m * dout - sum(dout) - x_hat * sum(dout * x_hat))."""
        x_hat, inv_std, weight = ctx.saved_tensors
        dims = _reduce_dims(x_hat)
        m = x_hat.numel() // x_hat.shape[1]
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        dgamma = dbeta = dx = None
        if need_x or need_b:
            dbeta = dout.sum(dims)
        if need_x or need_w:
            # dout * x_hat is written into the buffer that then becomes dx.
            buf = torch.mul(dout, x_hat)
            dgamma = buf.sum(dims)
        if need_x:
            scale = inv_std if weight is None else inv_std * _per_channel(weight, x_hat)
            dx = _affine(dout, scale, -scale * _per_channel(dbeta, x_hat) / m, out=buf)
            dx.addcmul_(x_hat, scale * _per_channel(dgamma, x_hat), value=-1.0 / m)
        return dx, dgamma if need_w else None, dbeta if need_b else None, None


class _BatchNorm(nn.Module):
    """What BatchNorm1d/2d/3d share: everything except which input ranks they accept."""

    _version = 2  # version 2 added num_batches_tracked (torch's numbering, for old checkpoints)
    _expected_dims = ()
    _dims_text = ""

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True,
                 track_running_stats=True, device=None, dtype=None, *, bias=True):
        super().__init__()
        factory = {"device": device, "dtype": dtype}
        self.num_features = num_features
        self.eps = eps
        self.momentum = momentum
        self.affine = affine
        self.track_running_stats = track_running_stats
        self.register_parameter(
            "weight", nn.Parameter(torch.empty(num_features, **factory)) if affine else None)
        self.register_parameter(
            "bias", nn.Parameter(torch.empty(num_features, **factory)) if affine and bias else None)
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, **factory))
            self.register_buffer("running_var", torch.ones(num_features, **factory))
            self.register_buffer("num_batches_tracked",
                                 torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.register_buffer("running_mean", None)
            self.register_buffer("running_var", None)
            self.register_buffer("num_batches_tracked", None)
        self.reset_parameters()

    def reset_running_stats(self):
        if self.track_running_stats:
            self.running_mean.zero_()
            self.running_var.fill_(1)
            self.num_batches_tracked.zero_()

    def reset_parameters(self):
        self.reset_running_stats()
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def extra_repr(self):
        return (f"{self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, bias={self.bias is not None}, "
                f"track_running_stats={self.track_running_stats}")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Checkpoints saved before torch added num_batches_tracked (version < 2) lack the key:
        # keep the current count instead of reporting it missing, as torch does.
        version = local_metadata.get("version", None)
        key = prefix + "num_batches_tracked"
        if (version is None or version < 2) and self.track_running_stats and key not in state_dict:
            current = self.num_batches_tracked
            state_dict[key] = (current if current is not None and current.device.type != "meta"
                               else torch.tensor(0, dtype=torch.long))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def _check_input(self, x):
        if x.dim() not in self._expected_dims:
            raise ValueError(f"expected {self._dims_text} input (got {x.dim()}D input)")
        # Like torch, check the channel count only where a per-channel tensor needs it.
        has_per_channel = self.weight is not None or self.running_mean is not None
        if has_per_channel and x.shape[1] != self.num_features:
            raise RuntimeError(
                f"{type(self).__name__}({self.num_features}) got an input with {x.shape[1]} "
                f"channels on axis 1 (input size {tuple(x.shape)})")
        if not x.is_floating_point():
            raise TypeError(f"{type(self).__name__} needs a floating-point input, got {x.dtype}")

    def forward(self, x):
        self._check_input(x)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative average: batch k gets weight 1/k
                factor = 1.0 / float(self.num_batches_tracked)
        use_batch_stats = self.training or (self.running_mean is None and self.running_var is None)
        # float16/bfloat16 inputs are normalized in float32 and the output cast back, as torch
        # does: a half-precision sum over thousands of values loses most of its digits.
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        if not use_batch_stats:
            return self._normalize_with(x.to(compute), self.running_mean.to(compute),
                                        self.running_var.to(compute)).to(x.dtype)
        m = x.numel() // x.shape[1]
        if m <= 1:
            raise ValueError("Expected more than 1 value per channel when training, "
                             f"got input size {x.size()}")
        weight, bias = (None if p is None else p.to(compute) for p in (self.weight, self.bias))
        out, mean, var = BatchNormFunction.apply(x.to(compute), weight, bias, self.eps)
        out = out.to(x.dtype)
        if self.training and self.track_running_stats and self.running_mean is not None:
            with torch.no_grad():
                self.running_mean.lerp_(mean.to(self.running_mean.dtype), factor)
                # The running variance estimates the population's: unbiased, m / (m - 1).
                unbiased = var.to(self.running_var.dtype) * (m / (m - 1))
                self.running_var.lerp_(unbiased, factor)
        return out

    def _normalize_with(self, x, mean, var):
        """Inference mode: one affine map per channel (paper Algorithm 2, step 11)."""
        scale = torch.rsqrt(var + self.eps)
        if self.weight is not None:
            scale = scale * self.weight.to(x.dtype)
        shift = -mean * scale
        if self.bias is not None:
            shift = shift + self.bias.to(x.dtype)
        return torch.addcmul(_per_channel(shift, x), x, _per_channel(scale, x))


class BatchNorm1d(_BatchNorm):
    """Batch norm over ``(N, C)`` or ``(N, C, L)`` inputs; drop-in for ``torch.nn.BatchNorm1d``."""

    _expected_dims = (2, 3)
    _dims_text = "2D or 3D"


class BatchNorm2d(_BatchNorm):
    """Spatial batch norm over ``(N, C, H, W)``: per channel over N, H and W (m = N*H*W)."""

    _expected_dims = (4,)
    _dims_text = "4D"


class BatchNorm3d(_BatchNorm):
    """Batch norm over ``(N, C, D, H, W)``; drop-in for ``torch.nn.BatchNorm3d``."""

    _expected_dims = (5,)
    _dims_text = "5D"


# ----------------------------------------------------------------------------------------------
# Population statistics (PreciseBN)

_TORCH_BN = nn.modules.batchnorm._BatchNorm


def _is_batchnorm(module):
    return isinstance(module, (_BatchNorm, _TORCH_BN))


class _PooledStats:
    """Per-channel count, mean and sum of squared deviations of every value seen, in float64.

    Batches are merged with Chan et al.'s pairwise update, so the result is the statistics of
    all the values together (each value weighted once), without the cancellation of
    ``E[x^2] - E[x]^2``.
    """

    def __init__(self):
        self.count, self.mean, self.m2 = 0, None, None

    def add(self, x):
        x = x.detach().to(torch.float64)
        dims = _reduce_dims(x)
        m = x.numel() // x.shape[1]
        var, mean = torch.var_mean(x, dim=dims, correction=0)
        if self.mean is None:
            self.count, self.mean, self.m2 = m, mean, var * m
            return
        total = self.count + m
        delta = mean - self.mean
        self.mean = self.mean + delta * (m / total)
        self.m2 = self.m2 + var * m + delta.square() * (self.count * m / total)
        self.count = total

    def unbiased_var(self):
        return self.m2 / (self.count - 1)


def precise_bn(model, batches, num_batches=None):
    """Replace every BN layer's running statistics by population statistics (PreciseBN).

    Runs ``model`` in training mode (each BN layer normalizes with batch statistics, as it did
    while training) on up to ``num_batches`` batches from ``batches`` without gradients, and
    sets each layer's ``running_mean`` to the mean of all the values its input took, and
    ``running_var`` to their unbiased variance: the mean of batch means and the pooled
    ``E[mu_B^2 + var_B] - E[mu_B]^2`` of Wu & Johnson 2021, scaled by ``M / (M - 1)`` for ``M``
    values. On equal-size disjoint batches that cover a data set this equals the variance of
    the whole data set, the population statistic Algorithm 2 of the BN paper approximates.

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
    with torch.no_grad():
        for layer, s in stats.items():
            if s.count < 2:
                raise ValueError(f"precise_bn: {layer} saw a single value per channel; "
                                 "its variance is undefined")
            layer.running_mean.copy_(s.mean)
            layer.running_var.copy_(s.unbiased_var())
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
