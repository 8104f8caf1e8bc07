"""``minibn.nn.functional.batch_norm``: ``torch.nn.functional.batch_norm`` computed by minibn.

The same signature, defaults, checks and errors as torch's (``torch/nn/functional.py`` and the
CPU kernel's argument checks), so that ``_BatchNorm.forward`` is as short as torch's and code
written against ``F.batch_norm`` can call this one instead. Training mode runs through
``BatchNormFunction`` (closed-form, differentiable backward); inference is one per-channel
affine map in plain torch ops, so autograd, ``torch.func`` and ``torch.compile`` see through it.

Where minibn differs from torch, on purpose: a NaN ``eps`` is refused (torch returns NaN
everywhere), and an empty batch is checked like any other (torch skips every check for it,
accepting a wrong channel count or an integer dtype).
"""
from __future__ import annotations

import torch

from minibn.conventions import (
    channel_shape,
    check_batch_size,
    check_eps,
    unbiased_variance,
    update_running_stat,
    values_per_channel,
)
from minibn.nn.function import batch_norm_train, scale_shift

__all__ = ["batch_norm"]

# What torch's CPU kernel computes in: half-precision inputs are normalized in float32 (a
# half-precision sum over thousands of values keeps few digits) and the output cast back.
_SUPPORTED = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_REDUCED = (torch.float16, torch.bfloat16)

# c10's ScalarType names, which torch's "not implemented for" errors print.
_SCALAR_TYPE_NAMES = {
    torch.bool: "Bool", torch.uint8: "Byte", torch.int8: "Char", torch.int16: "Short",
    torch.int32: "Int", torch.int64: "Long", torch.complex32: "ComplexHalf",
    torch.complex64: "ComplexFloat", torch.complex128: "ComplexDouble",
}


def batch_norm(input, running_mean, running_var, weight=None, bias=None, training=False,
               momentum=0.1, eps=1e-5):
    """Batch normalization of ``input`` ``(N, C, *)``, per channel (axis 1).

    Args (torch's):
        input: ``(N, C)`` or ``(N, C, *spatial)``, float16/bfloat16/float32/float64.
        running_mean, running_var: ``(C,)`` buffers, or both None. With ``training`` they are
            updated in place, ``running = (1 - momentum) * running + momentum * batch_stat``
            (unbiased batch variance); otherwise they normalize ``input``.
        weight, bias: ``(C,)`` scale and shift, or None.
        training: normalize with the batch's statistics (True) or the running ones (False).
        momentum: the weight of this batch in the running statistics.
        eps: added to the variance: > 0 in training, >= 0 otherwise.

    Returns:
        a tensor like ``input`` (shape, dtype, memory format).

    Raises (type and wording as torch's):
        ValueError: one value per channel in training; bad ``eps``; only one running buffer.
        RuntimeError: a per-channel tensor of the wrong length; no running statistics in
            inference; mixed dtypes; a running buffer that requires grad.
        NotImplementedError: an input that is not floating point.
        IndexError: an input with fewer than 2 dimensions.
    """
    if training:
        check_batch_size(input.size(), allow_empty=True)
    check_eps(eps, training=training)
    _check_dtypes(input, weight, bias, running_mean, running_var)
    _check_per_channel(input, weight, bias, running_mean, running_var, training)
    if (running_mean is None) != (running_var is None):  # in eval, the check above says which
        raise ValueError("running_mean and running_var must either both be None or neither be None")

    compute = torch.float32 if input.dtype in _REDUCED else input.dtype
    x = input.to(compute)
    weight, bias = (None if p is None else p.to(compute) for p in (weight, bias))
    if input.numel() == 0:
        # No values, so no statistics and nothing to update. Multiplying by weight and adding
        # bias (over zero elements) keeps them in the graph: their gradients are zeros, not None.
        out = _affine(x, weight, bias) if weight is not None or bias is not None else x.clone()
    elif training:
        out, mean, var = batch_norm_train(x, weight, bias, eps)
        if running_mean is not None:
            # detach() as well as no_grad(): torch.jit.trace records no grad mode, and a traced
            # update must not chain the running buffers into the autograd graph.
            mean, var = mean.detach(), var.detach()
            with torch.no_grad():
                m = values_per_channel(input.shape)
                update_running_stat(running_mean, mean.to(running_mean.dtype), momentum)
                update_running_stat(running_var, unbiased_variance(var, m).to(running_var.dtype),
                                    momentum)
    else:
        out = _normalize_with(x, running_mean.to(compute), running_var.to(compute), weight, bias,
                              eps)
    return out.to(input.dtype)


def _affine(x, weight, bias):
    shape = channel_shape(x)
    out = x if weight is None else x * weight.view(shape)
    return out if bias is None else out + bias.view(shape)


def _normalize_with(x, mean, var, weight, bias, eps):
    """Inference: ``weight * (x - mean) / sqrt(var + eps) + bias`` as one per-channel affine
    map ``x * scale + shift`` (paper Algorithm 2, step 11)."""
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    shift = -mean * scale
    if bias is not None:
        shift = shift + bias
    shape = channel_shape(x)
    return scale_shift(x, scale.view(shape), shift.view(shape))


def _check_dtypes(input, *per_channel):
    """torch's CPU rules: a floating-point input; per-channel tensors in the input's dtype, or
    all float32 for a float16/bfloat16 input (the mixed-precision case torch supports)."""
    if input.dtype not in _SUPPORTED:
        name = _SCALAR_TYPE_NAMES.get(input.dtype, str(input.dtype).removeprefix("torch."))
        raise NotImplementedError(f"\"batch_norm\" not implemented for '{name}'")
    given = [t for t in per_channel if t is not None]
    if any(t.dtype != input.dtype for t in given):
        device = input.device.type.upper()
        if any(t.dtype != torch.float32 for t in given):
            raise RuntimeError(f"mixed dtype ({device}): expect parameter to have scalar type of "
                               "Float")
        if input.dtype not in _REDUCED:
            raise RuntimeError(f"mixed dtype ({device}): all inputs must share same datatype.")


def _check_per_channel(input, weight, bias, running_mean, running_var, training):
    """One value per channel in each given vector; running statistics present in inference."""
    if input.dim() < 2:
        raise IndexError(f"batch_norm expects an input of shape (N, C, *) with channels on axis "
                         f"1, got a {input.dim()}D input of size {tuple(input.shape)}")
    channels = input.shape[1]
    for name, t in (("running_mean", running_mean), ("running_var", running_var),
                    ("weight", weight), ("bias", bias)):
        if t is None:
            if not training and name.startswith("running"):
                raise RuntimeError(f"{name} must be defined in evaluation mode")
            continue
        if t.numel() != channels:
            raise RuntimeError(f"{name} should contain {channels} elements not {t.numel()} "
                               f"(one per channel of an input of size {tuple(input.shape)}, "
                               "channels on axis 1)")
        if name.startswith("running") and t.requires_grad:
            raise RuntimeError(f"The function 'batch_norm' is not differentiable with respect "
                               f"to argument '{name}'. This input cannot have requires_grad True.")
