"""``GroupNorm``, ``LayerNorm``, ``InstanceNorm2d``: drop-ins for torch's, on minibn's batch norm.

Each normalizes rows of values inside a sample (a group of channels, the whole sample, one
channel), which is batch norm's per-channel normalization on the input reshaped to
``(1, rows, values_per_row)``. So the three run through ``BatchNormFunction`` (the closed-form,
twice-differentiable backward) and add their own affine map: per channel for ``GroupNorm`` and
``InstanceNorm2d``, elementwise for ``LayerNorm``. Constructors, parameters, buffers,
``state_dict`` keys, ``repr`` and errors are torch's (``torch/nn/modules/normalization.py``,
``instancenorm.py``); the NumPy references are ``minibn.norms``.
"""
from __future__ import annotations

import math
import numbers
import warnings

import torch
from torch import nn

from minibn.conventions import channel_shape, check_batch_size, unbiased_variance
from minibn.conventions import update_running_stat
from minibn.nn import functional as F
from minibn.nn.function import batch_norm_train
from minibn.nn.modules import _BatchNorm

__all__ = ["GroupNorm", "InstanceNorm2d", "LayerNorm", "group_norm", "layer_norm", "normalize_rows"]

_REDUCED = (torch.float16, torch.bfloat16)


def normalize_rows(x, rows, eps, keep_format=True):
    """``(x_hat, mean, var)``: ``x`` split into ``rows`` equal rows (in memory order), each
    normalized with its own mean and biased variance; ``mean``/``var`` are ``(rows,)``.

    Half-precision inputs are normalized in float32 (as torch's CPU kernels do) and ``x_hat`` is
    returned in float32; the caller casts the final output back. A channels-last ``x`` gives a
    channels-last ``x_hat`` and gradient if ``keep_format`` (torch's group norm keeps the format,
    its layer and instance norm do not).
    """
    compute = torch.float32 if x.dtype in _REDUCED else x.dtype
    if x.numel() == 0:  # nothing to normalize (and no row length to reshape to)
        empty = x.new_zeros(rows, dtype=compute)
        return x.to(compute).clone(), empty, empty
    fmt = _channels_last_format(x) if keep_format else None
    if fmt is not None:
        x = _GradIn.apply(x, fmt)
    flat = x.to(compute).reshape(1, rows, -1)
    x_hat, mean, var = batch_norm_train(flat, None, None, eps)
    x_hat = x_hat.reshape(x.shape)
    return (x_hat if fmt is None else x_hat.contiguous(memory_format=fmt)), mean, var


# Rows are contiguous in the standard layout, so a channels-last input is normalized as a copy;
# the output and the input's gradient are then put back in the input's format.
def _channels_last_format(x):
    for fmt, ndim in ((torch.channels_last, 4), (torch.channels_last_3d, 5)):
        if x.dim() == ndim and not x.is_contiguous() and x.is_contiguous(memory_format=fmt):
            return fmt
    return None


class _GradIn(torch.autograd.Function):
    """The identity, whose backward returns the gradient in the memory format ``fmt``."""

    @staticmethod
    def forward(ctx, x, fmt):
        ctx.fmt = fmt
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return grad.contiguous(memory_format=ctx.fmt), None


def group_norm(input, num_groups, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.group_norm``: its checks and messages, minibn's arithmetic."""
    if input.dim() < 2:
        raise RuntimeError(f"Expected at least 2 dimensions for input tensor but received "
                           f"{input.dim()}")
    n, c = input.shape[0], input.shape[1]
    check_batch_size([n * c // num_groups, num_groups] + list(input.shape[2:]), allow_empty=True)
    if c % num_groups:
        raise RuntimeError(f"Expected number of channels in input to be divisible by num_groups, "
                           f"but got input of shape {list(input.shape)} and "
                           f"num_groups={num_groups}")
    for name, p in (("weight", weight), ("bias", bias)):
        if p is not None and (p.dim() != 1 or p.numel() != c):
            raise RuntimeError(f"Expected {name} to be a vector of size equal to the number of "
                               f"channels in input, but got {name} of shape {list(p.shape)} and "
                               f"input of shape {list(input.shape)}")
    x_hat, _, _ = normalize_rows(input, n * num_groups, eps)
    shape = channel_shape(input)
    return _affine(x_hat, weight, bias, shape).to(input.dtype)


def layer_norm(input, normalized_shape, weight=None, bias=None, eps=1e-5):
    """``torch.nn.functional.layer_norm``: its checks and messages, minibn's arithmetic."""
    normalized_shape = tuple(normalized_shape)
    k = len(normalized_shape)
    if k == 0 or input.dim() < k or tuple(input.shape[input.dim() - k:]) != normalized_shape:
        expected = ", ".join(["*"] + [str(s) for s in normalized_shape])
        raise RuntimeError(f"Given normalized_shape={list(normalized_shape)}, expected input with "
                           f"shape [{expected}], but got input of size{list(input.shape)}")
    x_hat, _, _ = normalize_rows(input, math.prod(input.shape[:input.dim() - k]), eps,
                                 keep_format=False)
    return _affine(x_hat, weight, bias, normalized_shape).to(input.dtype)


def _affine(x_hat, weight, bias, shape):
    out = x_hat if weight is None else x_hat * weight.to(x_hat.dtype).view(shape)
    return out if bias is None else out + bias.to(x_hat.dtype).view(shape)


class GroupNorm(nn.Module):
    """Group normalization over ``(N, C, *)``; drop-in for ``torch.nn.GroupNorm``."""

    __constants__ = ["num_groups", "num_channels", "eps", "affine"]

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True, device=None, dtype=None,
                 *, bias=True):
        super().__init__()
        if num_channels % num_groups != 0:
            raise ValueError(f"num_channels ({num_channels}) must be divisible by num_groups "
                             f"({num_groups})")
        factory = {"device": device, "dtype": dtype}
        self.num_groups = num_groups
        self.num_channels = num_channels
        self.eps = eps
        self.affine = affine
        self.register_parameter(
            "weight", nn.Parameter(torch.empty(num_channels, **factory)) if affine else None)
        self.register_parameter(
            "bias", nn.Parameter(torch.empty(num_channels, **factory)) if affine and bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input):
        return group_norm(input, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.num_groups}, {self.num_channels}, eps={self.eps}, affine={self.affine}, "
                f"bias={self.bias is not None}")


class LayerNorm(nn.Module):
    """Layer normalization over the trailing ``normalized_shape``; drop-in for torch's."""

    __constants__ = ["normalized_shape", "eps", "elementwise_affine"]

    def __init__(self, normalized_shape, eps=1e-5, elementwise_affine=True, bias=True,
                 device=None, dtype=None):
        super().__init__()
        if isinstance(normalized_shape, numbers.Integral):
            normalized_shape = (normalized_shape,)
        factory = {"device": device, "dtype": dtype}
        self.normalized_shape = tuple(normalized_shape)
        self.eps = eps
        self.elementwise_affine = elementwise_affine
        shape = self.normalized_shape
        self.register_parameter("weight", nn.Parameter(torch.empty(shape, **factory))
                                if elementwise_affine else None)
        self.register_parameter("bias", nn.Parameter(torch.empty(shape, **factory))
                                if elementwise_affine and bias else None)
        self.reset_parameters()

    def reset_parameters(self):
        if self.elementwise_affine:
            nn.init.ones_(self.weight)
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def forward(self, input):
        return layer_norm(input, self.normalized_shape, self.weight, self.bias, self.eps)

    def extra_repr(self):
        return (f"{self.normalized_shape}, eps={self.eps}, "
                f"elementwise_affine={self.elementwise_affine}, bias={self.bias is not None}")


class InstanceNorm2d(_BatchNorm):
    """Instance normalization over ``(N, C, H, W)`` or ``(C, H, W)``; drop-in for torch's.

    Batch norm's constructor, buffers and ``state_dict`` (torch's ``_NormBase``, which both
    share), with torch's defaults ``affine=False, track_running_stats=False``. With tracking,
    training updates the running statistics with the batch average of the per-instance mean
    and unbiased variance, and eval normalizes with them, as torch does.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=False,
                 track_running_stats=False, device=None, dtype=None, *, bias=True):
        super().__init__(num_features, eps, momentum, affine, track_running_stats, device, dtype,
                         bias=bias)

    def _check_input_dim(self, input):
        if input.dim() not in (3, 4):
            raise ValueError(f"expected 3D or 4D input (got {input.dim()}D input)")

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict,
                              missing_keys, unexpected_keys, error_msgs):
        # Before torch 0.4.0 instance norm tracked running statistics by default: such a
        # checkpoint's buffers are refused with torch's explanation, as torch does.
        keys = [prefix + name for name in ("running_mean", "running_var")
                if prefix + name in state_dict]
        if local_metadata.get("version", None) is None and not self.track_running_stats and keys:
            klass = type(self).__name__
            names = " and ".join(f'"{k}"' for k in keys)
            error_msgs.append(
                f"Unexpected running stats buffer(s) {names} for {klass} with "
                "track_running_stats=False. If state_dict is a checkpoint saved before 0.4.0, "
                f"this may be expected because {klass} does not track running stats by default "
                "since 0.4.0. Please remove these keys from state_dict. If the running stats are "
                f"actually needed, instead set track_running_stats=True in {klass} to enable "
                f"them. See the documentation of {klass} for details.")
            for key in keys:
                state_dict.pop(key)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict,
                                      missing_keys, unexpected_keys, error_msgs)

    def forward(self, input):
        self._check_input_dim(input)
        feature_dim = input.dim() - 3
        if input.size(feature_dim) != self.num_features:
            if self.affine:
                raise ValueError(f"expected input's size at dim={feature_dim} to match "
                                 f"num_features ({self.num_features}), but got: "
                                 f"{input.size(feature_dim)}.")
            warnings.warn(f"input's size at dim={feature_dim} does not match num_features. You "
                          "can silence this warning by not passing in num_features, which is not "
                          "used because affine=False", stacklevel=2)
        if input.dim() == 3:
            return self._instance_norm(input.unsqueeze(0)).squeeze(0)
        return self._instance_norm(input)

    def _instance_norm(self, input):
        if not (self.training or not self.track_running_stats):
            return F.batch_norm(input, self.running_mean, self.running_var, self.weight,
                                self.bias, False, 0.0, self.eps)
        if math.prod(input.shape[2:]) == 1:
            raise ValueError(f"Expected more than 1 spatial element when training, got input "
                             f"size {input.size()}")
        n, c = input.shape[0], input.shape[1]
        x_hat, mean, var = normalize_rows(input, n * c, self.eps, keep_format=False)
        if self.running_mean is not None and n * c > 0:
            momentum = 0.0 if self.momentum is None else self.momentum
            m = math.prod(input.shape[2:])
            with torch.no_grad():
                batch_mean = mean.detach().view(n, c).mean(0)
                batch_var = unbiased_variance(var.detach(), m).view(n, c).mean(0)
                update_running_stat(self.running_mean, batch_mean.to(self.running_mean.dtype),
                                    momentum)
                update_running_stat(self.running_var, batch_var.to(self.running_var.dtype),
                                    momentum)
        return _affine(x_hat, self.weight, self.bias, channel_shape(input)).to(input.dtype)
