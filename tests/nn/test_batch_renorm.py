"""Batch Renormalization (minibn.nn.BatchRenorm2d): batch norm when r = 1 and d = 0, the clipped
corrections, a backward that treats r and d as constants, and the schedules."""
import pytest
import torch

from minibn import nn as mnn

F64 = dict(rtol=1e-10, atol=1e-12)


def _batch(gen, shape=(6, 3, 4, 4), scale=2.0, shift=1.0):
    return torch.randn(shape, generator=gen, dtype=torch.float64) * scale + shift


def test_with_rmax_1_and_dmax_0_it_is_batch_norm_in_training_and_eval():
    gen = torch.Generator().manual_seed(0)
    ours = mnn.BatchRenorm2d(3, rmax=1.0, dmax=0.0, momentum=0.2, dtype=torch.float64)
    theirs = torch.nn.BatchNorm2d(3, momentum=0.2, dtype=torch.float64)
    with torch.no_grad():
        theirs.weight.uniform_(0.5, 1.5, generator=gen)
        theirs.bias.uniform_(-1, 1, generator=gen)
    ours.load_state_dict(theirs.state_dict())
    for training in (True, True, True, False):
        ours.train(training)
        theirs.train(training)
        x = _batch(gen)
        xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
        ya, yb = ours(xa), theirs(xb)
        torch.testing.assert_close(ya, yb, **F64)
        g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        ya.backward(g)
        yb.backward(g)
        torch.testing.assert_close(xa.grad, xb.grad, **F64)
        for pa, pb in zip(ours.parameters(), theirs.parameters()):
            torch.testing.assert_close(pa.grad, pb.grad, **F64)
            pa.grad = pb.grad = None
        for key, value in theirs.state_dict().items():
            torch.testing.assert_close(ours.state_dict()[key], value, **F64)


def test_r_and_d_are_the_clipped_ratios_to_the_running_statistics():
    gen = torch.Generator().manual_seed(1)
    m = mnn.BatchRenorm2d(3, rmax=1.5, dmax=0.5, affine=False, dtype=torch.float64)
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.0, 1.0, 5.0]))
        m.running_var.copy_(torch.tensor([4.0, 1.0, 0.01]))
    rm, rv = m.running_mean.clone(), m.running_var.clone()
    x = _batch(gen)
    out = m(x)
    mean = x.mean((0, 2, 3))
    sigma_b = torch.sqrt(x.var((0, 2, 3), unbiased=False) + m.eps)
    sigma = torch.sqrt(rv + m.eps)
    r = (sigma_b / sigma).clamp(1 / 1.5, 1.5)
    d = ((mean - rm) / sigma).clamp(-0.5, 0.5)
    torch.testing.assert_close(m.last_r, r, **F64)
    torch.testing.assert_close(m.last_d, d, **F64)
    # channel 0: sigma_B ~ 2 = sigma, unclipped; channel 2's running variance is tiny: r and d clip
    assert 1 / 1.5 < float(r[0]) < 1.5 and float(r[2]) == 1.5 and float(d[2]) == -0.5
    view = (1, 3, 1, 1)
    expected = (x - mean.view(view)) / sigma_b.view(view) * r.view(view) + d.view(view)
    torch.testing.assert_close(out, expected, **F64)
    # unclipped, the correction turns batch statistics into the running ones
    loose = mnn.BatchRenorm2d(3, rmax=1e6, dmax=1e6, affine=False, dtype=torch.float64)
    loose.load_state_dict({"running_mean": rm, "running_var": rv,
                           "num_batches_tracked": torch.tensor(0)})
    torch.testing.assert_close(loose(x), (x - rm.view(view)) / sigma.view(view), **F64)


def test_backward_treats_r_and_d_as_constants():
    gen = torch.Generator().manual_seed(2)
    m = mnn.BatchRenorm2d(3, rmax=2.0, dmax=1.0, momentum=0.0, dtype=torch.float64)
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([0.5, 1.0, 1.5]))
        m.running_var.copy_(torch.tensor([3.0, 5.0, 2.0]))
        m.weight.uniform_(0.5, 1.5, generator=gen)
    x = _batch(gen).requires_grad_()
    g = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(m(x), (x, m.weight, m.bias), g)
    # the same forward in plain autograd, with r and d detached: the paper's stop-gradient
    mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
    sigma = torch.sqrt(m.running_var + m.eps)
    r = (torch.sqrt(var + m.eps) / sigma).clamp(0.5, 2.0).detach()
    d = ((mean - m.running_mean) / sigma).clamp(-1.0, 1.0).detach()
    assert float(r.min()) > 0.5 and float(r.max()) < 2.0  # unclipped: r depends on x ...
    view = (1, 3, 1, 1)
    ref = ((x - mean.view(view)) / torch.sqrt(var + m.eps).view(view) * r.view(view)
           + d.view(view)) * m.weight.view(view) + m.bias.view(view)
    want = torch.autograd.grad(ref, (x, m.weight, m.bias), g)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **F64)
    # ... so the true derivative differs (r, d constant is the paper's choice, not an identity)
    def full(x):
        mean, var = x.mean((0, 2, 3)), x.var((0, 2, 3), unbiased=False)
        r = (torch.sqrt(var + m.eps) / sigma).clamp(0.5, 2.0)
        d = ((mean - m.running_mean) / sigma).clamp(-1.0, 1.0)
        x_hat = (x - mean.view(view)) / torch.sqrt(var + m.eps).view(view)
        return x_hat * r.view(view) + d.view(view)
    (true_dx,) = torch.autograd.grad(full(x) * m.weight.view(view), x, g)
    assert not torch.allclose(true_dx, got[0], rtol=1e-3, atol=1e-6)


def test_where_r_and_d_are_clipped_the_gradient_is_exact_by_gradcheck():
    # Clipped, r and d are locally constant, so finite differences must agree with backward.
    m = mnn.BatchRenorm2d(2, rmax=1.1, dmax=0.1, momentum=0.0, dtype=torch.float64)
    with torch.no_grad():
        m.running_mean.copy_(torch.tensor([5.0, -5.0]))
        m.running_var.copy_(torch.tensor([100.0, 0.01]))
    gen = torch.Generator().manual_seed(3)
    x = _batch(gen, (4, 2, 2, 2)).requires_grad_()
    m(x)
    assert torch.equal(m.last_r.abs(), torch.tensor([1 / 1.1, 1.1], dtype=torch.float64))
    assert torch.equal(m.last_d.abs(), torch.tensor([0.1, 0.1], dtype=torch.float64))
    assert torch.autograd.gradcheck(m, (x,))
    assert torch.autograd.gradcheck(lambda w, b: torch.nn.functional.linear(
        m(x.detach()).flatten(1), torch.ones(1, 8, dtype=torch.float64)) * w.sum() + b.sum(),
        (m.weight, m.bias))


def test_schedules_ramp_linearly_after_the_warmup_and_are_read_each_batch():
    rmax = mnn.renorm_schedule(1.0, 3.0, warmup_steps=2, ramp_steps=4)
    assert [rmax(s) for s in (0, 1, 2, 3, 4, 6, 100)] == [1.0, 1.0, 1.0, 1.5, 2.0, 3.0, 3.0]
    m = mnn.BatchRenorm2d(3, rmax=rmax, dmax=mnn.renorm_schedule(0, 5, 2, 4))
    gen = torch.Generator().manual_seed(4)
    for step in range(1, 5):
        m(_batch(gen, (2, 3, 2, 2), scale=10.0))
        assert m.limits() == (rmax(step), 5 * (rmax(step) - 1) / 2)
    with pytest.raises(ValueError, match="warmup_steps and ramp_steps must be >= 0"):
        mnn.renorm_schedule(1, 3, -1, 4)


def test_bad_limits_and_inputs_are_refused():
    with pytest.raises(ValueError, match=r"rmax >= 1 and dmax >= 0, got rmax=0.5"):
        mnn.BatchRenorm2d(3, rmax=0.5)(torch.randn(2, 3, 2, 2))
    with pytest.raises(ValueError, match=r"expected 4D input \(got 2D input\)"):
        mnn.BatchRenorm2d(3)(torch.randn(2, 3))
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        mnn.BatchRenorm2d(3)(torch.randn(1, 3, 1, 1))
    assert "rmax=3.0, dmax=5.0" in repr(mnn.BatchRenorm2d(3))
