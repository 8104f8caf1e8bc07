"""minibn.norms: layer, group and instance norm in NumPy against torch, numerical gradients and
each other (GN with G = 1 is LN without its elementwise affine, GN with G = C is IN)."""
import numpy as np
import pytest
import torch

from minibn import norms
from minibn.gradcheck import numerical_gradient_array, rel_error

SHAPES = [(4, 6), (3, 6, 5), (2, 6, 3, 4), (2, 6, 2, 3, 2)]  # 2-D to 5-D


def _data(rng, shape, dtype=np.float64):
    x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
    gamma = rng.normal(size=shape[1]).astype(dtype)
    beta = rng.normal(size=shape[1]).astype(dtype)
    return x, gamma, beta


def _f64(x, params, dout):
    return x.astype(np.float64), [p.astype(np.float64) for p in params], dout.astype(np.float64)


def _torch_grads(fn, x, params, dout):
    xt = torch.tensor(x, requires_grad=True)
    pt = [torch.tensor(p, requires_grad=True) for p in params]
    out = fn(xt, *pt)
    out.backward(torch.tensor(dout))
    return out.detach().numpy(), xt.grad.numpy(), [p.grad.numpy() for p in pt]


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_group_norm_forward_and_backward_match_torch(rng, shape, dtype, tol):
    x, gamma, beta = _data(rng, shape, dtype)
    dout = rng.normal(size=shape).astype(dtype)
    for groups in (1, 2, 3, 6) if len(shape) > 2 else (1, 2, 3):  # (N, C) has 1 value per channel
        out, cache = norms.group_norm(x, groups, gamma, beta, eps=1e-5)
        dx, dgamma, dbeta = norms.norm_backward(dout, cache)
        assert out.dtype == dx.dtype == dgamma.dtype == dtype
        # against torch in float64: the float32 results are checked against the exact ones
        ref_out, ref_dx, (ref_dg, ref_db) = _torch_grads(
            lambda t, g, b: torch.nn.functional.group_norm(t, groups, g, b, 1e-5),
            *_f64(x, (gamma, beta), dout))
        np.testing.assert_allclose(out, ref_out, rtol=tol, atol=tol)
        # dx is a difference of terms of size |dout * gamma| * inv_std, which can cancel to
        # almost nothing (two values per group): its rounding error is on their scale
        scale = np.abs(dout).max() * np.abs(gamma).max() * float(cache.inv_std.max())
        np.testing.assert_allclose(dx, ref_dx, rtol=tol, atol=tol * scale)
        np.testing.assert_allclose(dgamma, ref_dg, rtol=tol, atol=tol * np.abs(ref_dg).max())
        np.testing.assert_allclose(dbeta, ref_db, rtol=tol, atol=tol * np.abs(ref_db).max())


@pytest.mark.parametrize("dtype, tol", [(np.float64, 1e-10), (np.float32, 2e-4)])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{len(s)}d")
def test_layer_norm_matches_torch_layer_norm_over_the_whole_sample(rng, shape, dtype, tol):
    x = (rng.normal(size=shape) * 3 + 2).astype(dtype)
    gamma, beta, dout = (rng.normal(size=s).astype(dtype) for s in (shape[1:], shape[1:], shape))
    out, cache = norms.layer_norm(x, gamma, beta)
    dx, dgamma, dbeta = norms.norm_backward(dout, cache)
    assert dgamma.shape == dbeta.shape == shape[1:]
    ref_out, ref_dx, (ref_dg, ref_db) = _torch_grads(
        lambda t, g, b: torch.nn.functional.layer_norm(t, shape[1:], g, b, 1e-5),
        *_f64(x, (gamma, beta), dout))
    for got, ref in ((out, ref_out), (dx, ref_dx), (dgamma, ref_dg), (dbeta, ref_db)):
        np.testing.assert_allclose(got, ref, rtol=tol, atol=tol * np.abs(ref).max())


@pytest.mark.parametrize("shape", SHAPES[1:], ids=lambda s: f"{len(s)}d")
def test_instance_norm_matches_torch_instance_norm(rng, shape):
    x, gamma, beta = _data(rng, shape)
    dout = rng.normal(size=shape)
    out, cache = norms.instance_norm(x, gamma, beta)
    dx, dgamma, dbeta = norms.norm_backward(dout, cache)
    ref_out, ref_dx, (ref_dg, ref_db) = _torch_grads(
        lambda t, g, b: torch.nn.functional.instance_norm(t, weight=g, bias=b, eps=1e-5),
        x, (gamma, beta), dout)
    for got, ref in ((out, ref_out), (dx, ref_dx), (dgamma, ref_dg), (dbeta, ref_db)):
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-10 * np.abs(ref).max())


def test_group_norm_special_cases_are_layer_norm_and_instance_norm(rng):
    x, gamma, beta = _data(rng, (3, 4, 5, 2))
    ones, zeros = np.ones(x.shape[1:]), np.zeros(x.shape[1:])
    plain = np.ones(4), np.zeros(4)
    np.testing.assert_allclose(norms.group_norm(x, 1, *plain)[0],
                               norms.layer_norm(x, ones, zeros)[0], rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(norms.group_norm(x, 4, gamma, beta)[0],
                               norms.instance_norm(x, gamma, beta)[0], rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("which", ["group", "layer", "instance"])
def test_backward_matches_numerical_gradients(rng, which):
    x, gamma, beta = _data(rng, (3, 4, 2, 3))
    if which == "layer":
        gamma, beta = rng.normal(size=x.shape[1:]), rng.normal(size=x.shape[1:])
    forward = {"group": lambda: norms.group_norm(x, 2, gamma, beta),
               "layer": lambda: norms.layer_norm(x, gamma, beta),
               "instance": lambda: norms.instance_norm(x, gamma, beta)}[which]
    dout = rng.normal(size=x.shape)
    dx, dgamma, dbeta = norms.norm_backward(dout, forward()[1])
    for analytic, wrt in ((dx, x), (dgamma, gamma), (dbeta, beta)):
        numeric = numerical_gradient_array(lambda: forward()[0], wrt, dout)
        assert rel_error(analytic, numeric) < 1e-6, which


def test_outputs_are_normalized_per_group_whatever_the_batch(rng):
    x, _, _ = _data(rng, (5, 6, 4))
    out, _ = norms.group_norm(x, 3, np.ones(6), np.zeros(6), eps=0.0)
    rows = out.reshape(5, 3, -1)
    np.testing.assert_allclose(rows.mean(axis=2), 0.0, atol=1e-12)
    np.testing.assert_allclose(rows.var(axis=2), 1.0, rtol=1e-12)
    # each sample alone: no dependence on the rest of the batch (unlike batch norm)
    alone, _ = norms.group_norm(x[2:3], 3, np.ones(6), np.zeros(6), eps=0.0)
    np.testing.assert_allclose(alone[0], out[2], rtol=1e-13, atol=1e-13)


def test_bad_inputs_are_refused_with_a_message_naming_the_problem(rng):
    x, gamma, beta = _data(rng, (2, 6, 3))
    with pytest.raises(ValueError, match=r"C = 6 .* divisible by num_groups = 4"):
        norms.group_norm(x, 4, gamma, beta)
    with pytest.raises(TypeError, match="num_groups must be a positive integer"):
        norms.group_norm(x, 2.0, gamma, beta)
    with pytest.raises(ValueError, match=r"gamma must have shape \(C,\) = \(6,\)"):
        norms.group_norm(x, 2, gamma[:5], beta)
    with pytest.raises(ValueError, match=r"gamma must have shape x.shape\[1:\] = \(6, 3\)"):
        norms.layer_norm(x, gamma, beta)
    with pytest.raises(ValueError, match="shape"):
        norms.group_norm(x[0, 0], 1, gamma, beta)
    with pytest.raises(TypeError, match="floating-point"):
        norms.group_norm(x.astype(np.int64), 2, gamma, beta)
    with pytest.raises(ValueError, match="more than 1 value, got 1"):
        norms.instance_norm(x[:, :, :1], gamma, beta)
    with pytest.raises(ValueError, match="eps must be non-negative"):
        norms.group_norm(x, 2, gamma, beta, eps=-1.0)
    bad = x.copy()
    bad[1, 4, 2] = np.nan
    with pytest.raises(ValueError, match=r"NaN or inf in normalized group\(s\) \[3\]"):
        norms.group_norm(bad, 2, gamma, beta)
    out, cache = norms.group_norm(x, 2, gamma, beta)
    with pytest.raises(ValueError, match="dout must have the shape of the forward output"):
        norms.norm_backward(out[:1], cache)
