"""The fused CPU kernel (``minibn.nn.fused``) against the composite path.

Both compute the same closed form; these tests hold them to each other (float64 to rtol 1e-10,
float32 to float32 rounding) over random shapes in both memory formats, and check where the fused
path is taken and where it must not be (traced, transformed, several threads, a layout it cannot
read), and that a missing compiler falls back with one warning.
"""
from __future__ import annotations

import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from minibn import nn as mnn
from minibn.nn import fused
from minibn.nn.function import BatchNormFunction

pytestmark = pytest.mark.skipif(fused._get_library() is None,
                                reason="the fused kernel needs g++")

TOL = {torch.float64: dict(rtol=1e-10, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}
MODULES = {2: mnn.BatchNorm1d, 3: mnn.BatchNorm1d, 4: mnn.BatchNorm2d, 5: mnn.BatchNorm3d}


@st.composite
def batches(draw):
    """``(shape, layout)``: 2-D to 5-D, contiguous or (4-D, 5-D) channels_last, with the edge
    cases drawn often: m = 2 values per channel, zero-size batches, one channel."""
    dim = draw(st.sampled_from([2, 3, 4, 5]))
    c = draw(st.sampled_from([1, 3, 16, 33]))
    kind = draw(st.sampled_from(["any", "m=2", "empty"]))
    if kind == "m=2":
        n, spatial = (2, (1,) * (dim - 2)) if draw(st.booleans()) or dim == 2 else (
            1, (1,) * (dim - 3) + (2,))
    else:
        n = draw(st.integers(2, 6))
        spatial = tuple(draw(st.integers(1, 5)) for _ in range(dim - 2))
        if kind == "empty":
            if dim == 2 or draw(st.booleans()):
                n = 0
            else:
                spatial = (0,) + spatial[1:]
    layout = torch.contiguous_format
    if dim >= 4 and draw(st.booleans()):
        layout = torch.channels_last if dim == 4 else torch.channels_last_3d
    return (n, c) + spatial, layout


def _run_steps(module, inputs, grads):
    """Two training steps and an eval step: every output, gradient and buffer along the way."""
    seen = []
    for i, (x, g) in enumerate(zip(inputs, grads)):
        module.train(i < 2)
        x = x.clone().requires_grad_()
        y = module(x)
        y.backward(g)
        seen += [y, x.grad]
        seen += [p.grad.clone() for p in module.parameters()]
        for p in module.parameters():
            p.grad = None
        seen += [b.clone() for b in module.buffers()]
    return seen


@settings(max_examples=60, deadline=None)
@given(batch=batches(), dtype=st.sampled_from([torch.float32, torch.float64]),
       momentum=st.sampled_from([0.1, None]), affine=st.booleans(), seed=st.integers(0, 2**16))
def test_modules_agree_with_the_composite_path(batch, dtype, momentum, affine, seed):
    shape, layout = batch
    gen = torch.Generator().manual_seed(seed)
    inputs = [(torch.randn(shape, generator=gen, dtype=dtype) * 3 + 5).contiguous(
        memory_format=layout) for _ in range(3)]
    grads = [torch.randn(shape, generator=gen, dtype=dtype) for _ in range(3)]
    make = MODULES[len(shape)]
    fast = make(shape[1], momentum=momentum, affine=affine, dtype=dtype)
    composite = make(shape[1], momentum=momentum, affine=affine, dtype=dtype)
    if affine:
        with torch.no_grad():
            for p, q in zip(fast.parameters(), composite.parameters()):
                p.copy_(torch.rand(p.shape, generator=gen, dtype=dtype) + 0.5)
                q.copy_(p)
    if inputs[0].numel():  # an empty batch never reaches batch_norm_train
        assert fused.applies(inputs[0], fast.weight, fast.bias)
    got = _run_steps(fast, inputs, grads)
    with fused.disabled():
        assert not fused.applies(inputs[0], fast.weight, fast.bias)
        want = _run_steps(composite, inputs, grads)
    assert len(got) == len(want)
    for a, b in zip(got, want):
        if a.is_floating_point():
            torch.testing.assert_close(a, b, **TOL[dtype])
        else:
            assert torch.equal(a, b)
    if got[0].numel():  # an empty tensor's memory format means nothing
        assert got[0].is_contiguous(memory_format=layout)


def _inputs(shape=(5, 6, 3, 4), dtype=torch.float64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(shape, generator=gen, dtype=dtype) * 2 - 3).to(
        memory_format=torch.channels_last).requires_grad_()
    w = (torch.rand(shape[1], generator=gen, dtype=dtype) + 0.5).requires_grad_()
    b = torch.randn(shape[1], generator=gen, dtype=dtype).requires_grad_()
    return x, w, b


def test_gradients_of_every_output_agree_with_the_composite_function():
    """The kernel's backward with gradients for ``mean`` and ``var`` too (not only ``out``)."""
    x, w, b = _inputs()
    out, mean, var = fused.FusedBatchNormFunction.apply(x, w, b, 1e-3)
    ref_out, _, ref_mean, ref_var = BatchNormFunction.apply(x, w, b, 1e-3)
    for a, r in ((out, ref_out), (mean, ref_mean), (var, ref_var)):
        torch.testing.assert_close(a, r, **TOL[torch.float64])
    gen = torch.Generator().manual_seed(1)
    cotangents = [torch.randn(t.shape, generator=gen, dtype=t.dtype) for t in (out, mean, var)]

    def loss(o, m, v):
        return sum((t * g).sum() for t, g in zip((o, m, v), cotangents))

    got = torch.autograd.grad(loss(out, mean, var), (x, w, b))
    want = torch.autograd.grad(loss(ref_out, ref_mean, ref_var), (x, w, b))
    for a, r in zip(got, want):
        torch.testing.assert_close(a, r, **TOL[torch.float64])


def test_gradcheck_gradgradcheck_and_forward_mode():
    """Double backward and batched gradients (a vmap over the backward) go through the composite
    closed form, and must still be the true derivatives; forward mode likewise."""
    x, w, b = _inputs(shape=(3, 4, 2, 3))

    def f(*a):
        return fused.FusedBatchNormFunction.apply(*a, 1e-3)

    assert torch.autograd.gradcheck(f, (x, w, b), check_batched_grad=True)
    assert torch.autograd.gradgradcheck(f, (x, w, b), check_batched_grad=True)
    assert torch.autograd.gradcheck(f, (x, w, b), check_forward_ad=True, check_backward_ad=False,
                                    check_batched_grad=False)
    assert torch.autograd.gradcheck(lambda x: fused.FusedBatchNormFunction.apply(
        x, None, None, 0.1), (x,))


def test_a_gradient_penalty_through_the_module_matches_torch():
    x, _, _ = _inputs()
    ours, theirs = mnn.BatchNorm2d(6, dtype=torch.float64), torch.nn.BatchNorm2d(
        6, dtype=torch.float64)
    assert fused.applies(x, ours.weight, ours.bias)
    penalties = []
    for module in (ours, theirs):
        (gx,) = torch.autograd.grad((module(x) ** 3).sum(), x, create_graph=True)
        penalty = (gx ** 2).sum()
        penalties.append((penalty, *torch.autograd.grad(penalty, (x, module.weight))))
    for a, r in zip(*penalties):
        torch.testing.assert_close(a, r, rtol=1e-9, atol=1e-10)


def test_where_the_fused_path_does_not_apply():
    x, w, b = _inputs()
    assert fused.applies(x, w, b)
    assert fused.applies(x.contiguous(), w, b)
    assert not fused.applies(x.contiguous().transpose(2, 3), w, b)  # neither layout
    assert not fused.applies(x[:, :, :, ::2], w, b)  # strided
    assert not fused.applies(x.float(), w, b)  # mixed dtypes
    assert not fused.applies(x.half(), None, None)
    seen = []
    torch.func.vmap(lambda t: seen.append(fused.applies(t, w, b)) or t)(x.unsqueeze(0))
    assert seen == [False]
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        assert not fused.applies(x, w, b)
    finally:
        torch.set_num_threads(threads)


def test_a_traced_model_records_the_composite_ops():
    """``torch.jit.trace`` records torch ops only: a C call would vanish from the trace, and the
    trace would return whatever the tracing run returned."""
    model = torch.nn.Sequential(mnn.BatchNorm2d(6, dtype=torch.float64))
    x, _, _ = _inputs()
    traced = torch.jit.trace(model, x.detach(), check_trace=False)
    other = _inputs(seed=3)[0].detach()
    torch.testing.assert_close(traced(other), torch.nn.functional.batch_norm(
        other, None, None, model[0].weight, model[0].bias, training=True))


def test_a_missing_compiler_falls_back_with_one_warning(monkeypatch):
    monkeypatch.setattr(fused, "_library", None)
    monkeypatch.setenv("CXX", "minibn-no-such-compiler")
    x, w, b = _inputs()
    with pytest.warns(RuntimeWarning, match="fused CPU batch-norm kernel is unavailable"):
        assert not fused.applies(x, w, b)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = mnn.BatchNorm2d(6, dtype=torch.float64)(x)  # the composite path, silently now
    torch.testing.assert_close(out, torch.nn.functional.batch_norm(
        x, None, None, training=True))
