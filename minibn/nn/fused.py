"""The fused CPU path of ``BatchNormFunction``: the same closed form as C++ loops.

The composite ops of ``minibn.nn.function`` write full-size temporaries (``x - mean``, and
``dout * (x - mean)`` in the backward), and over a channels_last tensor they also reduce across a
strided axis: about twice the memory traffic of a fused kernel. Here the closed form runs
as C++ loops over the tensor's memory seen as a row-major ``(outer, C, inner)`` array
(``_kernels/batch_norm.cpp``, compiled with g++ on first use and cached on disk like the CPU
executor's kernels): ``(N, C, prod(spatial))`` for a contiguous tensor, ``(N * prod(spatial), C,
1)`` for a channels_last one. Three passes forward (mean, variance, normalize) and two backward
(both sums in one, then ``dx``), and no full-size tensor written but the outputs.

``batch_norm_train`` takes this path only where it can stand in for the composite one
(``applies``): the same closed form, rounding aside. Everything else, including any failure to
build the library (warned once), goes through the composite form, which stays the readable
reference. ``tests/nn/test_fused.py`` checks that the two agree.
"""
from __future__ import annotations

import contextlib
import ctypes
import math
import subprocess
import threading
import warnings
from pathlib import Path

import torch

from minibn.conventions import channel_shape, values_per_channel
from minibn.nn.function import closed_form_backward, closed_form_jvp

__all__ = ["FusedBatchNormFunction", "applies", "disabled"]

SOURCE = Path(__file__).parent / "_kernels" / "batch_norm.cpp"
_FLAGS = ("-std=c++17", "-O3", "-march=native", "-fopenmp-simd", "-fPIC", "-shared")
_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}
_CHANNELS_LAST = {4: torch.channels_last, 5: torch.channels_last_3d}

_lock = threading.Lock()
_library = None  # the loaded library; False once building it failed
_enabled = threading.local()


@contextlib.contextmanager
def disabled():
    """Within the block (this thread), ``batch_norm_train`` uses the composite path only: to
    compare the two, or to time the composite one."""
    previous = getattr(_enabled, "value", True)
    _enabled.value = False
    try:
        yield
    finally:
        _enabled.value = previous


def _native_target(cxx):
    """What ``-march=native`` means on this machine (the compiler's resolved target options),
    for the cache key: a library built for one CPU's instruction set must not load on another's."""
    proc = subprocess.run([cxx, "-march=native", "-Q", "--help=target"], capture_output=True,
                          text=True, check=False)
    return proc.stdout


def _build():
    from minibn.cuda import executor

    cxx = executor._compiler()
    source = SOURCE.read_text()
    path = executor.cached_build(
        "bn-fused.so",
        [source, " ".join(_FLAGS), executor._compiler_version(cxx), _native_target(cxx)],
        lambda out: executor._run([cxx, *_FLAGS, str(SOURCE), "-o", str(out)],
                                  "compiling minibn/nn/_kernels/batch_norm.cpp"))
    lib = ctypes.CDLL(str(path))
    p, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    for suffix in _SUFFIX.values():
        forward = getattr(lib, f"minibn_bn_forward_{suffix}")
        forward.argtypes = [p, i64, i64, i64, p, p, f64, p, p, p]
        forward.restype = None
        backward = getattr(lib, f"minibn_bn_backward_{suffix}")
        backward.argtypes = [p, p, i64, i64, i64, p, p, p, f64, p, p, p, p, p]
        backward.restype = None
    return lib


def _get_library():
    """The compiled library, or None where it cannot be built (no g++, a compile error): then
    the composite path serves every call, after one warning."""
    global _library
    with _lock:
        if _library is None:
            try:
                _library = _build()
            except Exception as error:  # any failure means "use the composite path"
                _library = False
                message = (f"minibn.nn: the fused CPU batch-norm kernel is unavailable "
                           f"({type(error).__name__}: {error}); BatchNorm uses the composite "
                           "torch ops instead (same results, slower)")
                warnings.warn(message, RuntimeWarning, stacklevel=4)
        return _library or None


def applies(x, weight, bias):
    """True where the fused kernel can stand in for the composite path.

    - A plain CPU tensor, float32 or float64, contiguous or channels_last (4-D, or
      channels_last_3d 5-D): a memory layout ``_memory_format`` names.
    - Not traced or transformed: ``torch.compile``, ``torch.jit.trace`` and ``torch.func``
      transforms (vmap, grad, jvp) see through torch ops, never through a C call.
    - One intra-op thread (the kernel is serial; torch's ops would use the other threads).
    - Not switched off by ``disabled()``, and the library built.
    """
    # Transforms first: a vmapped tensor cannot even be asked for its channels_last layout.
    if not getattr(_enabled, "value", True) or _transformed() or torch.get_num_threads() != 1:
        return False
    if not _plain(x) or x.device.type != "cpu" or x.dtype not in _SUFFIX:
        return False
    if _memory_format(x) is None:
        return False
    for p in (weight, bias):
        if p is not None and (p.device.type != "cpu" or p.dtype != x.dtype):
            return False
    return _get_library() is not None


def _memory_format(x):
    """The memory format in which ``x`` is dense: contiguous first (where both hold, as for a
    ``(N, C, 1, 1)`` tensor, either view is right), then channels_last; None for any other."""
    if x.is_contiguous():
        return torch.contiguous_format
    fmt = _CHANNELS_LAST.get(x.dim())
    return fmt if fmt is not None and x.is_contiguous(memory_format=fmt) else None


def _view(x, fmt):
    """``(outer, C, inner)``: ``x``'s memory as a row-major array, in format ``fmt``."""
    if fmt == torch.contiguous_format:
        return x.shape[0], x.shape[1], math.prod(x.shape[2:])
    return values_per_channel(x.shape), x.shape[1], 1


def _transformed():
    """True while something records or transforms torch ops, which a C call would bypass."""
    return (torch.compiler.is_compiling() or torch.jit.is_tracing()
            or torch._C._are_functorch_transforms_active())


def _plain(t):
    """A tensor with storage of its own: not a subclass, nor batched by vmap (functorch's, or the
    legacy one behind ``autograd.grad(..., is_grads_batched=True)``)."""
    return (type(t) is torch.Tensor and not torch._C._functorch.is_functorch_wrapped_tensor(t)
            and not torch._C._functorch.is_legacy_batchedtensor(t))


def _ptr(t):
    return None if t is None else t.data_ptr()


class FusedBatchNormFunction(torch.autograd.Function):
    """``BatchNormFunction`` through the fused kernel, for inputs where ``applies`` holds.

    ``FusedBatchNormFunction.apply(x, weight, bias, eps) -> (out, mean, var)``, the
    outputs of ``BatchNormFunction`` but ``x - mean`` (the kernels never write it; ``x`` is saved
    instead). The backward runs the kernel when no graph of the backward is wanted and nothing
    transforms it; under ``create_graph`` or a vmap over the backward (batched gradients) it runs
    the composite closed form on ``x - mean``, which autograd can differentiate again and vmap
    can batch, so double backward is the composite path's. ``jvp`` likewise.
    """

    @staticmethod
    def forward(x, weight, bias, eps):
        weight, bias = (None if p is None else p.contiguous() for p in (weight, bias))
        out = torch.empty_like(x)
        mean, var = x.new_empty(x.shape[1]), x.new_empty(x.shape[1])
        getattr(_get_library(), f"minibn_bn_forward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), *_view(x, _memory_format(x)), _ptr(weight), _ptr(bias), float(eps),
            out.data_ptr(), mean.data_ptr(), var.data_ptr())
        return out, mean, var

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, _, eps = inputs
        _, mean, var = output
        ctx.eps = eps
        ctx.save_for_backward(x, mean, var, weight)
        ctx.save_for_forward(x, mean, var, weight)
        ctx.set_materialize_grads(False)

    @staticmethod
    def backward(ctx, dout, dmean, dvar):
        x, mean, var, weight = ctx.saved_tensors
        need_x, need_weight, need_bias = ctx.needs_input_grad[:3]
        # create_graph (grad mode on) needs a differentiable backward; batched gradients
        # (vmap over the backward) need one made of torch ops.
        if (torch.is_grad_enabled() or dout is None or _transformed()
                or not all(_plain(t) for t in (dout, dmean, dvar) if t is not None)):
            centered = x - mean.view(channel_shape(x))
            grads = closed_form_backward(centered, var, weight, ctx.eps, (need_x, need_weight,
                                         need_bias), dout, None, dmean, dvar)
            return (*grads, None)
        fmt = _memory_format(x)
        dout = dout.contiguous(memory_format=fmt)
        dx = torch.empty_like(x) if need_x else None
        dweight = torch.empty_like(var) if need_weight else None
        dbias = torch.empty_like(var) if need_bias else None
        dmean, dvar, weight = (None if t is None else t.contiguous() for t in (dmean, dvar, weight))
        getattr(_get_library(), f"minibn_bn_backward_{_SUFFIX[x.dtype]}")(
            x.data_ptr(), dout.data_ptr(), *_view(x, fmt), mean.data_ptr(), var.data_ptr(),
            _ptr(weight), float(ctx.eps), _ptr(dmean), _ptr(dvar), _ptr(dx), _ptr(dweight),
            _ptr(dbias))
        return dx, dweight, dbias, None

    @staticmethod
    def jvp(ctx, tx, tweight, tbias, _teps):
        x, mean, var, weight = ctx.saved_tensors
        centered = x - mean.view(channel_shape(x))
        t_out, _, t_mean, t_var = closed_form_jvp(centered, var, weight, ctx.eps, tx, tweight,
                                                  tbias)
        return t_out, t_mean, t_var
