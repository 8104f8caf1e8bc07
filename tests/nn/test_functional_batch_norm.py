"""``minibn.nn.functional.batch_norm`` and ``BatchNormFunction`` against torch's ``F.batch_norm``:
the signature, every error (type and wording), and the autograd features a drop-in needs:
double backward, forward mode, ``vmap`` over the backward (batched gradients, vectorized
Jacobians) and over the forward."""
from __future__ import annotations

import inspect
import warnings

import pytest
import torch
import torch.nn.functional as TF

from minibn import nn as mnn
from minibn.conventions import reduce_axes
from minibn.nn import functional as MF
from minibn.nn.function import BatchNormFunction, channel_sum, channel_sum_of_squares, scale_shift

F64 = dict(rtol=1e-10, atol=1e-12)


def test_signature_is_torchs():
    ours, theirs = inspect.signature(MF.batch_norm), inspect.signature(TF.batch_norm)
    assert [(p.name, p.default, p.kind) for p in ours.parameters.values()] == \
        [(p.name, p.default, p.kind) for p in theirs.parameters.values()]


def _x(shape=(4, 3, 2, 2), dtype=torch.float32):
    return torch.randn(shape).to(dtype) if dtype.is_floating_point else torch.ones(shape, dtype=dtype)


def _stats(c=3, dtype=torch.float32):
    return torch.zeros(c, dtype=dtype), torch.ones(c, dtype=dtype)


# (description, arguments): the same call must fail the same way in torch and in minibn.
SAME_ERROR = [
    ("eps 0 in training", lambda: (_x(), None, None, None, None, True, 0.1, 0.0)),
    ("eps < 0 in training", lambda: (_x(), None, None, None, None, True, 0.1, -1.0)),
    ("eps < 0 in eval", lambda: (_x(), *_stats(), None, None, False, 0.1, -1e-3)),
    ("one value per channel", lambda: (_x((1, 3)), None, None, None, None, True)),
    ("one value per channel, 4-D", lambda: (_x((1, 3, 1, 1)), *_stats(), None, None, True)),
    ("one value per channel before eps", lambda: (_x((1, 3)), None, None, None, None, True, 0.1, 0.0)),
    ("long input", lambda: (_x(dtype=torch.long), None, None, None, None, True)),
    ("int input in eval", lambda: (_x(dtype=torch.int32), *_stats(), None, None, False)),
    ("bool input", lambda: (_x(dtype=torch.bool), None, None, None, None, True)),
    ("complex input", lambda: (_x(dtype=torch.complex64), None, None, None, None, True)),
    ("float32 input, float64 module", lambda: (_x(), *_stats(dtype=torch.float64),
                                               torch.ones(3, dtype=torch.float64), None, True)),
    ("float64 input, float32 module", lambda: (_x(dtype=torch.float64), *_stats(),
                                               torch.ones(3), torch.zeros(3), False)),
    ("float32 input, float16 weight", lambda: (_x(), None, None, torch.ones(3).half(), None, True)),
    ("bfloat16 input, one bfloat16 buffer", lambda: (_x(dtype=torch.bfloat16), torch.zeros(3).bfloat16(),
                                                     torch.ones(3), torch.ones(3), None, True)),
    ("only running_mean", lambda: (_x(), torch.zeros(3), None, None, None, True)),
    ("eval without running stats", lambda: (_x(), None, None, None, None, False)),
    ("eval without running_var", lambda: (_x(), torch.zeros(3), None, None, None, False)),
    ("running buffer that requires grad", lambda: (_x(), torch.zeros(3, requires_grad=True),
                                                   torch.ones(3), None, None, True)),
]


@pytest.mark.parametrize("case", [c[1] for c in SAME_ERROR], ids=[c[0] for c in SAME_ERROR])
def test_errors_match_torchs(case):
    with pytest.raises(Exception) as theirs:
        TF.batch_norm(*case())
    with pytest.raises(Exception) as ours:
        MF.batch_norm(*case())
    assert type(ours.value) is type(theirs.value)
    message = str(theirs.value).replace("native_batch_norm", "batch_norm")
    assert str(ours.value) == message


# torch's message, then where it came from (torch's says neither the input size nor the axis).
LONGER_MESSAGE = [
    ("weight of the wrong length", lambda: (_x(), None, None, torch.ones(4), None, True)),
    ("bias of the wrong length", lambda: (_x(), None, None, torch.ones(3), torch.ones(2), True)),
    ("running_mean of the wrong length", lambda: (_x(), torch.zeros(4), torch.ones(4), None, None,
                                                  False)),
]


@pytest.mark.parametrize("case", [c[1] for c in LONGER_MESSAGE], ids=[c[0] for c in LONGER_MESSAGE])
def test_length_errors_start_with_torchs_message(case):
    with pytest.raises(RuntimeError) as theirs:
        TF.batch_norm(*case())
    with pytest.raises(RuntimeError) as ours:
        MF.batch_norm(*case())
    assert str(ours.value).startswith(str(theirs.value) + " (one per channel of an input of size")


@pytest.mark.parametrize("call, torch_result", [
    # Both refuse, minibn with a message that says what is wrong.
    (lambda f: f(torch.ones(3), None, None, training=True), IndexError),
    # torch skips every check for an empty batch; minibn checks it like any other.
    (lambda f: f(torch.ones(0, 4, 2), None, None, torch.ones(3), None, True), "runs"),
    (lambda f: f(torch.ones(0, 3), None, None, None, None, True, 0.1, float("nan")), "runs"),
], ids=["1-D input", "empty batch, wrong channel count", "NaN eps"])
def test_where_minibn_is_stricter_than_torch(call, torch_result):
    if torch_result == "runs":
        call(TF.batch_norm)
    else:
        with pytest.raises(torch_result):
            call(TF.batch_norm)
    with pytest.raises((ValueError, RuntimeError, IndexError)) as ours:
        call(MF.batch_norm)
    assert any(word in str(ours.value) for word in ("channels on axis 1", "eps", "elements"))


@pytest.mark.parametrize("training", [True, False])
def test_eps_zero_and_mixed_precision_run_where_torch_runs(training):
    x = torch.randn(4, 3, 2, 2) + 1
    args = (*_stats(), torch.rand(3) + 0.5, torch.randn(3))
    eps = 1e-5 if training else 0.0  # eps = 0 is allowed with running statistics
    torch.testing.assert_close(MF.batch_norm(x, *args, training=training, eps=eps),
                               TF.batch_norm(x, *_stats(), *args[2:], training=training, eps=eps))
    half = x.to(torch.bfloat16)
    ours = MF.batch_norm(half, *_stats(), *args[2:], training=training)
    assert ours.dtype == torch.bfloat16
    torch.testing.assert_close(ours, TF.batch_norm(half, *_stats(), *args[2:], training=training),
                               rtol=2e-2, atol=2e-2)


def test_empty_batch_gives_zero_parameter_gradients_and_leaves_the_statistics():
    for training in (True, False):
        for shape in [(0, 3), (0, 3, 5), (2, 3, 0, 4)]:
            x = torch.randn(shape, requires_grad=True)
            w, b = torch.rand(3, requires_grad=True), torch.rand(3, requires_grad=True)
            rm, rv = torch.randn(3), torch.rand(3)
            before = rm.clone(), rv.clone()
            out = MF.batch_norm(x, rm, rv, w, b, training)
            assert out.shape == shape
            out.sum().backward()
            assert torch.equal(w.grad, torch.zeros(3)) and torch.equal(b.grad, torch.zeros(3))
            assert torch.equal(rm, before[0]) and torch.equal(rv, before[1])


# ---------------------------------------------------------------------------------------------
# Autograd: the backward is differentiable, batchable, and has a forward-mode twin


def _case(shape=(3, 2, 2, 2), seed=0, loc=1.0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=gen, dtype=torch.float64) * 2 + loc
    w = torch.rand(shape[1], generator=gen, dtype=torch.float64) + 0.5
    b = torch.randn(shape[1], generator=gen, dtype=torch.float64)
    return x, w, b


def _train(f):
    return lambda x, w, b: f(x, None, None, w, b, True)


def test_gradient_penalty_gets_torchs_second_order_term():
    """loss = |d sum(out * u) / dx|^2 through BN: its gradient with respect to the weight is
    purely second order (zero if the backward were treated as a constant)."""
    x, w, b = _case((5, 3, 2, 2))
    u = torch.randn(x.shape, dtype=torch.float64)
    grads = []
    for f in (MF.batch_norm, TF.batch_norm):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        out = f(xi, None, None, wi, b, True)
        (gx,) = torch.autograd.grad((out * u).sum(), xi, create_graph=True)
        grads.append(torch.autograd.grad(gx.square().sum(), wi)[0])
    assert grads[1].abs().max() > 1e-3
    torch.testing.assert_close(grads[0], grads[1], **F64)


@pytest.mark.parametrize("shape", [(4, 3), (3, 2, 5), (3, 2, 2, 2)], ids=str)
def test_gradcheck_gradgradcheck_forward_mode_and_batched_gradients(shape):
    x, w, b = (t.requires_grad_() for t in _case(shape))
    f = _train(MF.batch_norm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # vmap's fallback for addcmul_ (see below)
        assert torch.autograd.gradcheck(f, (x, w, b), check_batched_grad=True,
                                        check_forward_ad=True, check_batched_forward_grad=True)
        assert torch.autograd.gradgradcheck(f, (x, w, b), check_batched_grad=True,
                                            check_fwd_over_rev=True)


def test_all_outputs_of_the_function_are_differentiable():
    x, w, b = (t.requires_grad_() for t in _case())
    assert torch.autograd.gradcheck(lambda *a: BatchNormFunction.apply(*a, 1e-3), (x, w, b))
    assert torch.autograd.gradgradcheck(lambda *a: BatchNormFunction.apply(*a, 1e-3), (x, w, b))
    assert torch.autograd.gradcheck(lambda x: BatchNormFunction.apply(x, None, None, 0.1), (x,))


def test_vectorized_jacobian_and_batched_gradients_equal_torchs():
    x, w, b = _case((4, 3, 2, 2))
    jac = [torch.autograd.functional.jacobian(_train(f), (x, w, b), vectorize=True)
           for f in (MF.batch_norm, TF.batch_norm)]
    for a, c in zip(jac[0], jac[1]):
        torch.testing.assert_close(a, c, **F64)
    g = torch.randn((6,) + x.shape, dtype=torch.float64)
    got = []
    for f in (MF.batch_norm, TF.batch_norm):
        xi, wi = x.clone().requires_grad_(), w.clone().requires_grad_()
        got.append(torch.autograd.grad(f(xi, None, None, wi, b, True), (xi, wi), g,
                                       is_grads_batched=True))
    for a, c in zip(*got):
        torch.testing.assert_close(a, c, **F64)


def test_torch_func_transforms_equal_torchs():
    x, w, b = _case((4, 2, 1, 2))
    for transform in (torch.func.jacrev, torch.func.jacfwd, torch.func.hessian):
        ours = transform(lambda x: _train(MF.batch_norm)(x, w, b).pow(3).sum())(x)
        theirs = transform(lambda x: _train(TF.batch_norm)(x, w, b).pow(3).sum())(x)
        torch.testing.assert_close(ours, theirs, **F64)
    tangents = tuple(torch.randn_like(t) for t in (x, w, b))
    ours = torch.func.jvp(_train(MF.batch_norm), (x, w, b), tangents)
    theirs = torch.func.jvp(_train(TF.batch_norm), (x, w, b), tangents)
    torch.testing.assert_close(ours, theirs, **F64)


def test_the_backward_uses_no_out_operations():
    """Every op of the backward must have a vmap batching rule: an out= op has none and fails
    under is_grads_batched (the in-place addcmul_ has none either, but falls back to a loop)."""
    x, w, b = (t.requires_grad_() for t in _case())
    out = MF.batch_norm(x, None, None, w, b, True)
    with torch.profiler.profile() as prof:
        torch.autograd.grad(out, (x, w, b), torch.randn_like(out))
    names = {e.name for e in prof.events()}
    assert "BatchNormFunctionBackward" in " ".join(names)
    assert not [n for n in names if n.endswith(".out") or "_out" in n]


# ---------------------------------------------------------------------------------------------
# The fast forms of the reductions and the affine map agree with the plain ones


@pytest.mark.parametrize("shape, layout", [((4, 3), None), ((3, 4, 5), None),
                                           ((2, 3, 4, 5), None),
                                           ((2, 3, 4, 5), torch.channels_last),
                                           ((2, 3, 2, 4, 5), torch.channels_last_3d),
                                           ((2, 3, 8, 8), "strided")], ids=str)
def test_fast_reductions_and_scale_shift_agree_with_the_plain_forms(shape, layout):
    t = torch.randn(shape, dtype=torch.float64)
    if layout == "strided":
        t = t[..., ::2]
    elif layout is not None:
        t = t.to(memory_format=layout)
    torch.testing.assert_close(channel_sum(t), t.sum(reduce_axes(t)), **F64)
    squares = (t * t).sum(reduce_axes(t))
    torch.testing.assert_close(channel_sum_of_squares(t), squares, **F64)
    scratch = torch.empty_like(t)
    torch.testing.assert_close(channel_sum_of_squares(t, scratch=scratch), squares, **F64)
    c = t.shape[1]
    shape1 = (1, c) + (1,) * (t.dim() - 2)
    scale, shift = torch.randn(shape1, dtype=torch.float64), torch.randn(shape1, dtype=torch.float64)
    out = scale_shift(t, scale, shift)
    torch.testing.assert_close(out, t * scale + shift, **F64)
    if layout in (torch.channels_last, torch.channels_last_3d):
        assert out.is_contiguous(memory_format=layout)


def test_subclass_overriding_check_input_dim_works_as_with_torch():
    """A torch-style subclass: relax the rank check through the _check_input_dim hook."""
    class AnyRank(mnn.modules._BatchNorm):
        def _check_input_dim(self, input):
            if input.dim() < 2:
                raise ValueError("need (N, C, ...)")

    bn = AnyRank(3)
    assert bn(torch.randn(2, 3, 2, 2, 2, 2)).shape == (2, 3, 2, 2, 2, 2)
    with pytest.raises(ValueError, match=r"need \(N, C"):
        bn(torch.randn(3))
    with pytest.raises(NotImplementedError):
        mnn.modules._BatchNorm(3)(torch.randn(2, 3))
