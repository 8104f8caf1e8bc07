"""minibn.functional against torch, central differences and the invariants batch norm obeys."""
import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from minibn import functional as bn
from minibn.checks._core import close_mask, conditioned_atols
from minibn.gradcheck import numerical_gradient_array, rel_error

# A NumPy warning from the reference would reach stderr, and nbgrader scores a cell with any
# stderr 0: every test here fails on one.
pytestmark = pytest.mark.filterwarnings("error::RuntimeWarning")

SHAPES = [(8, 3), (4, 3, 5), (2, 3, 4, 5), (2, 3, 2, 3, 4)]
TOL = {np.float64: dict(rtol=1e-10, atol=1e-12), np.float32: dict(rtol=1e-5, atol=1e-5)}
BACKWARDS = [bn.batchnorm_backward, bn.batchnorm_backward_graph]


def axes(x):
    return (0,) + tuple(range(2, x.ndim))


def bcast(v, x):
    return v.reshape((1, -1) + (1,) * (x.ndim - 2))


def make(rng, shape, dtype=np.float64, loc=1.0, scale=2.0):
    c = shape[1]
    x = rng.normal(loc, scale, shape).astype(dtype)
    gamma = (rng.uniform(0.5, 2.0, c) * rng.choice([-1, 1], c)).astype(dtype)
    beta = rng.normal(0, 1, c).astype(dtype)
    dout = rng.normal(0, 1, shape).astype(dtype)
    return x, gamma, beta, dout


def torch_reference(x, gamma, beta, dout, eps=1e-5):
    """out, dx, dgamma, dbeta from torch's native F.batch_norm and autograd."""
    xt, gt, bt = (torch.tensor(np.ascontiguousarray(a), requires_grad=True)
                  for a in (x, gamma, beta))
    out = TF.batch_norm(xt, None, None, gt, bt, training=True, eps=eps)
    out.backward(torch.tensor(np.ascontiguousarray(dout)))
    return [t.detach().numpy() for t in (out, xt.grad, gt.grad, bt.grad)]


def assert_matches_torch(x, gamma, beta, dout, eps=1e-5, backward=bn.batchnorm_backward):
    out, cache = bn.batchnorm_forward(x, gamma, beta, eps)
    dx, dgamma, dbeta = backward(dout, cache)
    rtol, base = TOL[x.dtype.type]["rtol"], TOL[x.dtype.type]["atol"]
    # Where |x| >> std, x - mean loses digits in both implementations (x of mean 86, std 0.04
    # gave dx 0.34810030605 here and 0.34810030612 from torch): atol follows that conditioning.
    atols = (*conditioned_atols(x, gamma, dout, eps, base), base)
    for name, got, want, atol in zip(("out", "dx", "dgamma", "dbeta"), (out, dx, dgamma, dbeta),
                                     torch_reference(x, gamma, beta, dout, eps), atols):
        assert got.dtype == x.dtype, name
        bad = np.argwhere(~close_mask(got, want, atol, rtol))
        if len(bad):
            i = tuple(int(k) for k in bad[0])
            allowed = np.broadcast_to(atol, want.shape)[i] + rtol * abs(want[i])
            raise AssertionError(f"{name} at {i}: {float(got[i])!r}, torch {float(want[i])!r}, "
                                 f"allowed {allowed:.3g}")


# ---------------------------------------------------------------- agreement with torch

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("backward", BACKWARDS, ids=lambda f: f.__name__)
def test_forward_and_backward_match_torch(rng, shape, dtype, backward):
    assert_matches_torch(*make(rng, shape, dtype), backward=backward)


@given(
    shape=st.lists(st.integers(1, 4), min_size=2, max_size=5).map(tuple),
    n=st.integers(2, 6),
    seed=st.integers(0, 2**32 - 1),
    loc=st.floats(-100, 100),
    log_scale=st.floats(-2, 2),
    eps=st.sampled_from([1e-5, 1e-3, 0.5]),
)
@settings(max_examples=40, deadline=None)
def test_property_matches_torch_float64(shape, n, seed, loc, log_scale, eps):
    shape = (n,) + shape[1:]
    rng = np.random.default_rng(seed)
    x, gamma, beta, dout = make(rng, shape, np.float64, loc, 10.0**log_scale)
    for backward in BACKWARDS:
        assert_matches_torch(x, gamma, beta, dout, eps, backward)


@given(shape=st.lists(st.integers(1, 5), min_size=2, max_size=4).map(tuple),
       seed=st.integers(0, 2**32 - 1))
@settings(max_examples=20, deadline=None)
def test_property_matches_torch_float32(shape, seed):
    shape = (shape[0] + 1,) + shape[1:]
    assert_matches_torch(*make(np.random.default_rng(seed), shape, np.float32))


def _non_contiguous(rng, dtype):
    base = rng.normal(1, 2, (4, 6, 5, 3)).astype(dtype)
    return base[:, ::2, 1:, :]  # every other channel, a cropped height


def _channels_last(rng, dtype):
    nhwc = rng.normal(1, 2, (4, 5, 3, 3)).astype(dtype)
    return nhwc.transpose(0, 3, 1, 2)  # (N, C, H, W) with NHWC strides, like torch.channels_last


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("layout", [_non_contiguous, _channels_last], ids=lambda f: f.__name__)
def test_strided_inputs_match_torch(rng, layout, dtype):
    x = layout(rng, dtype)
    assert not x.flags.c_contiguous
    _, gamma, beta, dout = make(rng, x.shape, dtype)
    dout = dout.transpose(0, 2, 3, 1).copy().transpose(0, 3, 1, 2)  # strided too
    for backward in BACKWARDS:
        assert_matches_torch(x, gamma, beta, dout, backward=backward)


def test_channels_last_torch_tensor_layout_agrees(rng):
    # The same data in torch's channels_last memory format, handed over without a copy.
    xt = torch.randn(4, 3, 5, 5, dtype=torch.float64).to(memory_format=torch.channels_last)
    x = xt.numpy()
    assert not x.flags.c_contiguous
    _, gamma, beta, dout = make(rng, x.shape)
    assert_matches_torch(x, gamma, beta, dout)


@settings(max_examples=60, deadline=None)
@given(shape=st.lists(st.integers(1, 5), min_size=3, max_size=5).map(tuple),
       dtype=st.sampled_from([np.float32, np.float64]),
       layout=st.sampled_from(["fortran", "channels_last", "every_other"]),
       seed=st.integers(0, 2**32 - 1))
def test_row_layout_of_contiguous_arrays_agrees_with_the_plain_broadcast(shape, dtype, layout,
                                                                         seed):
    """A C-contiguous input is computed as rows with repeated per-channel vectors
    (``functional._Rows``); any other layout by the plain ``v.reshape(1, C, 1, ...)``
    broadcast. Element for element the arithmetic is the same; only BLAS's summation order in
    the reductions may differ (it depends on the rows' alignment in memory)."""
    if shape[0] * np.prod(shape[2:]) < 2:
        shape = (2,) + shape[1:]
    rng = np.random.default_rng(seed)
    x, gamma, beta, dout = make(rng, shape, dtype, loc=3.0)
    if layout == "fortran":
        strided = [np.asfortranarray(a) for a in (x, dout)]
    elif layout == "channels_last":
        strided = [np.moveaxis(np.ascontiguousarray(np.moveaxis(a, 1, -1)), -1, 1) for a in (x, dout)]
    else:
        strided = [np.repeat(a, 2, axis=-1)[..., ::2] for a in (x, dout)]
    assume(not strided[0].flags.c_contiguous)  # e.g. one sample and one channel: both orders
    results = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(bn._Rows, "ROWS_FROM", 0)  # rows for any size, so for these small arrays
        assert bn._Rows(x).repeat and not bn._Rows(strided[0]).repeat
        for xi, di in ((x, dout), strided):
            out, cache = bn.batchnorm_forward(xi, gamma, beta)
            results.append((out, cache.x_hat, cache.mean, cache.var)
                           + bn.batchnorm_backward(di, cache))
    for fast, plain in zip(*results):
        np.testing.assert_allclose(fast, plain, **TOL[dtype])


# ---------------------------------------------------------------- the three backwards

@pytest.mark.parametrize("shape", [(5, 2), (3, 2, 3), (2, 2, 2, 3)], ids=str)
def test_backwards_agree_with_each_other_and_central_differences(rng, shape):
    x, gamma, beta, dout = make(rng, shape)
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    closed = bn.batchnorm_backward(dout, cache)
    graph = bn.batchnorm_backward_graph(dout, cache)
    forward = lambda: bn.batchnorm_forward(x, gamma, beta)[0]  # noqa: E731
    numeric = [numerical_gradient_array(forward, a, dout) for a in (x, gamma, beta)]
    for name, c, g, num in zip(("dx", "dgamma", "dbeta"), closed, graph, numeric):
        np.testing.assert_allclose(c, g, rtol=1e-11, atol=1e-13, err_msg=name)
        assert rel_error(c, num) < 1e-7, name


# ---------------------------------------------------------------- invariants

@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_forward_statistics_of_the_output(rng, shape):
    x, gamma, beta, _ = make(rng, shape)
    out, cache = bn.batchnorm_forward(x, gamma, beta, eps=0.0)
    np.testing.assert_allclose(out.mean(axis=axes(x)), beta, atol=1e-12)
    np.testing.assert_allclose(out.std(axis=axes(x)), np.abs(gamma), rtol=1e-12)
    np.testing.assert_allclose(cache.x_hat.mean(axis=axes(x)), 0, atol=1e-13)
    np.testing.assert_allclose(cache.mean, x.mean(axis=axes(x)), rtol=1e-13)
    np.testing.assert_allclose(cache.var, x.var(axis=axes(x)), rtol=1e-12)
    np.testing.assert_allclose(cache.inv_std, 1 / np.sqrt(cache.var), rtol=1e-13)


@pytest.mark.parametrize("backward", BACKWARDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_dx_is_orthogonal_to_shift_and_scale(rng, shape, backward):
    x, gamma, beta, dout = make(rng, shape)
    _, cache = bn.batchnorm_forward(x, gamma, beta, eps=0.0)
    dx, _, _ = backward(dout, cache)
    scale = np.abs(dx).sum(axis=axes(x))
    assert np.all(np.abs(dx.sum(axis=axes(x))) < 1e-12 * scale)
    assert np.all(np.abs((dx * cache.x_hat).sum(axis=axes(x))) < 1e-12 * scale)


@given(a=st.floats(1e-3, 1e3), b=st.floats(-1e3, 1e3), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=30, deadline=None)
def test_output_invariant_under_positive_affine_input_map(a, b, seed):
    x, gamma, beta, _ = make(np.random.default_rng(seed), (6, 3, 4))
    out, _ = bn.batchnorm_forward(x, gamma, beta, eps=0.0)
    moved, _ = bn.batchnorm_forward(a * x + b, gamma, beta, eps=0.0)
    np.testing.assert_allclose(moved, out, atol=1e-8)


@pytest.mark.parametrize("backward", BACKWARDS, ids=lambda f: f.__name__)
def test_equivariant_under_batch_permutation(rng, backward):
    x, gamma, beta, dout = make(rng, (7, 3, 2, 2))
    perm = rng.permutation(7)
    out, cache = bn.batchnorm_forward(x, gamma, beta)
    out_p, cache_p = bn.batchnorm_forward(x[perm], gamma, beta)
    np.testing.assert_allclose(out_p, out[perm], rtol=1e-12, atol=1e-14)
    dx, dgamma, dbeta = backward(dout, cache)
    dx_p, dgamma_p, dbeta_p = backward(dout[perm], cache_p)
    np.testing.assert_allclose(dx_p, dx[perm], rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(dgamma_p, dgamma, rtol=1e-12)
    np.testing.assert_allclose(dbeta_p, dbeta, rtol=1e-12)


# ---------------------------------------------------------------- dtypes, inputs, cache

@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_dtype_is_preserved_everywhere(rng, dtype):
    x, gamma, beta, dout = make(rng, (4, 3, 2), dtype)
    # float64 parameters and a Python-float eps must not upcast a float32 input
    out, cache = bn.batchnorm_forward(x, gamma.astype(np.float64), beta.astype(np.float64), 1e-5)
    assert out.dtype == dtype
    for field in ("x_hat", "mean", "var", "inv_std", "gamma"):
        assert getattr(cache, field).dtype == dtype, field
    for backward in BACKWARDS:
        assert all(g.dtype == dtype for g in backward(dout, cache))
    assert bn.batchnorm_inference(x, cache.mean, cache.var, gamma, beta).dtype == dtype


def test_cache_holds_what_the_docstring_says(rng):
    x, gamma, beta, _ = make(rng, (5, 2, 3))
    _, cache = bn.batchnorm_forward(x, gamma, beta, eps=1e-3)
    assert cache._fields == ("x", "x_hat", "mean", "var", "inv_std", "gamma", "eps")
    assert cache.x is x and cache.eps == 1e-3
    np.testing.assert_allclose(cache.x_hat, (x - bcast(cache.mean, x)) * bcast(cache.inv_std, x))
    assert cache.mean.shape == cache.var.shape == cache.inv_std.shape == (2,)


def test_inputs_are_not_modified(rng):
    x, gamma, beta, dout = make(rng, (4, 3, 2, 2))
    copies = [a.copy() for a in (x, gamma, beta, dout)]
    _, cache = bn.batchnorm_forward(x, gamma, beta)
    x_hat = cache.x_hat.copy()
    for backward in BACKWARDS:
        backward(dout, cache)
    for a, c in zip((x, gamma, beta, dout, cache.x_hat), copies + [x_hat]):
        np.testing.assert_array_equal(a, c)


def test_accepts_lists_for_gamma_and_beta(rng):
    x = rng.normal(size=(4, 2))
    out, _ = bn.batchnorm_forward(x, [1.0, 2.0], [0, 0], eps=0.0)
    np.testing.assert_allclose(out.std(axis=0), [1.0, 2.0], rtol=1e-12)


def test_two_values_per_channel_is_enough(rng):
    for shape in [(2, 3), (1, 3, 2)]:
        out, _ = bn.batchnorm_forward(rng.normal(size=shape), np.ones(3), np.zeros(3))
        assert np.isfinite(out).all()


def test_constant_channel_gives_beta_not_nan():
    x = np.full((4, 2), 3.0)
    out, cache = bn.batchnorm_forward(x, np.ones(2), np.array([0.5, -1.0]))
    np.testing.assert_array_equal(out, np.broadcast_to([0.5, -1.0], x.shape))
    dx, dgamma, dbeta = bn.batchnorm_backward(np.ones_like(x), cache)
    assert np.isfinite(dx).all()


@pytest.mark.parametrize("dtype,loc,rtol", [(np.float64, 1e7, 1e-8), (np.float32, 1e3, 1e-3)])
def test_two_pass_variance_is_stable_at_a_large_mean(rng, dtype, loc, rtol):
    x = (loc + rng.normal(0, 1, (64, 3))).astype(dtype)
    centered = x.astype(np.float64) - loc  # exact: values are within a factor 2 of loc
    want = (centered - centered.mean(0)) / np.sqrt(centered.var(0) + 1e-5)
    out, cache = bn.batchnorm_forward(x, np.ones(3, dtype), np.zeros(3, dtype))
    np.testing.assert_allclose(cache.var, centered.var(0), rtol=rtol)
    np.testing.assert_allclose(out, want, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("shape", [(2048, 4, 16), (4096, 4, 4)], ids=str)
def test_float32_is_as_accurate_as_torch_at_an_offset(rng, shape):
    # A float32 running sum over a large batch drifts; with mean 100 and std 2 the drift of the
    # mean shows in x_hat. torch stays within ~3e-6 of the exact answer here; so must we.
    x = rng.normal(100, 2, shape).astype(np.float32)
    x64 = x.astype(np.float64)
    exact = (x64 - x64.mean(axes(x), keepdims=True)) / np.sqrt(x64.var(axes(x), keepdims=True) + 1e-5)
    out, cache = bn.batchnorm_forward(x, np.ones(4, np.float32), np.zeros(4, np.float32))
    assert np.abs(out - exact).max() < 5e-6
    dout = rng.normal(0, 1, shape).astype(np.float32)
    _, dgamma, dbeta = bn.batchnorm_backward(dout, cache)
    np.testing.assert_allclose(dbeta, dout.astype(np.float64).sum(axis=axes(x)), rtol=1e-6, atol=1e-3)
    np.testing.assert_allclose(dgamma, (dout * exact).sum(axis=axes(x)), rtol=1e-5, atol=2e-2)


# ---------------------------------------------------------------- bad input

def _call_forward(x=None, gamma=None, beta=None, eps=1e-5):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 3)) if x is None else x
    c = x.shape[1] if getattr(x, "ndim", 0) >= 2 else 3
    gamma = np.ones(c) if gamma is None else gamma
    beta = np.zeros(c) if beta is None else beta
    return bn.batchnorm_forward(x, gamma, beta, eps)


@pytest.mark.parametrize("kwargs,error,message", [
    (dict(x=np.ones(5)), ValueError, "got 1D input of shape (5,)"),
    (dict(x=np.float64(1.0)), ValueError, "got 0D input"),
    (dict(x=[[1.0, 2.0], [3.0, 4.0]]), TypeError, "x must be an array, got list"),
    (dict(x=np.ones((4, 3), dtype=np.int64)), TypeError, "floating-point array"),
    (dict(x=np.ones((4, 3), dtype=bool)), TypeError, "floating-point array"),
    (dict(x=np.ones((4, 3), dtype=np.complex128)), TypeError, "floating-point array"),
    (dict(gamma=np.ones(4)), ValueError, "gamma must have shape (C,) = (3,)"),
    (dict(gamma=np.ones((1, 3))), ValueError, "gamma must have shape (C,) = (3,)"),
    (dict(beta=np.ones(2)), ValueError, "beta must have shape (C,) = (3,)"),
    (dict(gamma=np.array(["a", "b", "c"])), TypeError, "gamma must be a real numeric array"),
    (dict(x=np.ones((1, 3))), ValueError, "Expected more than 1 value per channel when training"),
    (dict(x=np.ones((1, 3, 1, 1))), ValueError,
     "Expected more than 1 value per channel when training"),
    (dict(x=np.array([[1.0, np.nan], [2.0, 3.0]])), ValueError, "x contains NaN or inf in channel(s) [1]"),
    (dict(x=np.array([[np.inf, 1.0], [2.0, 3.0]])), ValueError, "x contains NaN or inf in channel(s) [0]"),
    (dict(x=np.array([[np.inf, -np.inf], [2.0, 3.0]])), ValueError, "NaN or inf in channel(s) [0, 1]"),
    (dict(x=np.full((4, 2), 3e38, np.float32)), ValueError, "(or values whose sum overflows float32)"),
    (dict(x=np.array([[3e38, 1], [-3e38, 2]], np.float32)), ValueError,
     "the variance of x overflows float32 in channel(s) [0]"),
    (dict(x=np.full((4, 3, 5), 3e38, np.float32)), ValueError,
     "(or values whose sum overflows float32)"),
    (dict(x=np.array([[3e38, 1, 1], [-3e38, 2, 2]], np.float32)[:, :, None]), ValueError,
     "the variance of x overflows float32 in channel(s) [0]"),
    # large enough for the BLAS reductions (functional._LARGE), which warn unless told not to
    (dict(x=np.full((4, 2, 64, 64), 3e38, np.float32)), ValueError,
     "(or values whose sum overflows float32)"),
    (dict(x=np.concatenate([np.full((2, 2, 64, 64), 1e34, np.float32),
                            np.full((2, 2, 64, 64), -1e34, np.float32)])), ValueError,
     "the variance of x overflows float32 in channel(s) [0, 1]"),
    (dict(eps=-1e-5), ValueError, "eps must be non-negative"),
    (dict(eps=float("nan")), ValueError, "eps must be non-negative"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_forward_rejects_bad_input(kwargs, error, message):
    with pytest.raises(error) as err:
        _call_forward(**kwargs)
    assert message in str(err.value)


def test_one_value_per_channel_error_uses_torchs_wording():
    phrase = "Expected more than 1 value per channel when training"
    with pytest.raises(ValueError, match=phrase):
        TF.batch_norm(torch.ones(1, 3), None, None, training=True)
    with pytest.raises(ValueError, match=phrase):
        bn.batchnorm_forward(np.ones((1, 3)), np.ones(3), np.zeros(3))


@pytest.mark.parametrize("backward", BACKWARDS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dout,error,message", [
    (np.ones((4, 2)), ValueError, "dout must have the shape of the forward output (4, 3), got (4, 2)"),
    (np.ones((3, 4)), ValueError, "got (3, 4)"),
    (np.ones(12), ValueError, "got (12,)"),
    (np.ones((4, 3), dtype=np.int32), TypeError, "dout must be a floating-point array"),
    ([[1.0] * 3] * 4, TypeError, "dout must be an array, got list"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_backward_rejects_bad_dout(backward, dout, error, message):
    _, cache = _call_forward()
    with pytest.raises(error) as err:
        backward(dout, cache)
    assert message in str(err.value)


# ---------------------------------------------------------------- inference and running stats

@pytest.mark.parametrize("shape", [(1, 3), (5, 3), (1, 3, 4), (2, 3, 2, 2), (2, 3, 1, 2, 2)], ids=str)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_inference_matches_torch_eval_mode(rng, shape, dtype):
    x, gamma, beta, _ = make(rng, shape, dtype)
    mean = rng.normal(0, 1, 3).astype(dtype)
    var = rng.uniform(0.1, 3, 3).astype(dtype)
    out = bn.batchnorm_inference(x, mean, var, gamma, beta, eps=1e-3)
    want = TF.batch_norm(*(torch.from_numpy(a) for a in (x, mean, var, gamma, beta)),
                         training=False, eps=1e-3).numpy()
    assert out.dtype == dtype
    np.testing.assert_allclose(out, want, **TOL[dtype])


@pytest.mark.parametrize("args,error,message", [
    (dict(var=-np.ones(3)), ValueError, "var must be non-negative"),
    (dict(var=np.array([1.0, np.inf, 1.0])), ValueError, "var contains NaN or inf in channel(s) [1]"),
    (dict(mean=np.array([np.nan, 0.0, 0.0])), ValueError,
     "mean contains NaN or inf in channel(s) [0]"),
    (dict(mean=np.zeros(2)), ValueError, "mean must have shape (C,) = (3,)"),
    (dict(var=np.ones((3, 1))), ValueError, "var must have shape (C,) = (3,)"),
    (dict(x=np.ones(3)), ValueError, "got 1D input"),
    (dict(x=np.ones((2, 3), np.int8)), TypeError, "floating-point array"),
    (dict(eps=-1.0), ValueError, "eps must be non-negative"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_inference_rejects_bad_input(args, error, message):
    kw = dict(x=np.ones((2, 3)), mean=np.zeros(3), var=np.ones(3), gamma=np.ones(3),
              beta=np.zeros(3), eps=1e-5)
    kw.update(args)
    with pytest.raises(error) as err:
        bn.batchnorm_inference(**kw)
    assert message in str(err.value)


@pytest.mark.parametrize("shape", [(8, 3), (4, 3, 5, 5)], ids=str)
@pytest.mark.parametrize("momentum", [0.1, 0.5, 1.0])
def test_running_stats_match_torch_over_several_steps(rng, shape, momentum):
    rm, rv = np.zeros(3), np.ones(3)
    trm, trv = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    for step in range(4):
        x = rng.normal(step, 1 + step, shape)
        returned = bn.update_running_stats(rm, rv, x, momentum=momentum)
        assert returned[0] is rm and returned[1] is rv  # updated in place
        TF.batch_norm(torch.from_numpy(x), trm, trv, training=True, momentum=momentum)
    np.testing.assert_allclose(rm, trm.numpy(), rtol=1e-12)
    np.testing.assert_allclose(rv, trv.numpy(), rtol=1e-12)


def test_running_var_is_unbiased_while_batch_var_is_biased(rng):
    x = rng.normal(0, 2, (5, 2))
    rm, rv = np.zeros(2), np.zeros(2)
    bn.update_running_stats(rm, rv, x, momentum=1.0)
    _, cache = bn.batchnorm_forward(x, np.ones(2), np.zeros(2))
    np.testing.assert_allclose(rv, cache.var * 5 / 4, rtol=1e-13)
    np.testing.assert_allclose(rm, cache.mean, rtol=1e-13)


def test_forward_then_inference_with_batch_stats_agree(rng):
    x, gamma, beta, _ = make(rng, (6, 3, 2))
    out, cache = bn.batchnorm_forward(x, gamma, beta, eps=1e-3)
    inf = bn.batchnorm_inference(x, cache.mean, cache.var, gamma, beta, eps=1e-3)
    np.testing.assert_allclose(inf, out, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kwargs,message", [
    (dict(running_mean=np.zeros(2)), "running_mean must be an array of shape (C,) = (3,)"),
    (dict(running_var=np.ones((3, 1))), "running_var must be an array of shape (C,) = (3,)"),
    (dict(running_var=[1.0, 1.0, 1.0]), "running_var must be an array of shape (C,) = (3,)"),
    (dict(momentum=1.5), "momentum must be in [0, 1]"),
    (dict(momentum=-0.1), "momentum must be in [0, 1]"),
    (dict(x=np.ones((1, 3))), "Expected more than 1 value per channel when training"),
    (dict(x=np.array([[np.nan, 1, 1], [1, 1, 1]])), "x contains NaN or inf in channel(s) [0]"),
], ids=lambda v: v if isinstance(v, str) else "")
def test_running_stats_reject_bad_input(kwargs, message):
    kw = dict(running_mean=np.zeros(3), running_var=np.ones(3), x=np.ones((4, 3)), momentum=0.1)
    kw.update(kwargs)
    before = (kw["running_mean"].copy(), np.array(kw["running_var"], copy=True))
    with pytest.raises(ValueError) as err:
        bn.update_running_stats(**kw)
    assert message in str(err.value)
    np.testing.assert_array_equal(kw["running_mean"], before[0])  # nothing half-updated


# ---------------------------------------------------------------- CuPy

@pytest.mark.gpu
def test_cupy_arrays_match_numpy(rng):
    cupy = pytest.importorskip("cupy")
    if not cupy.is_available():
        pytest.skip("no CUDA GPU visible to CuPy")
    for dtype in (np.float64, np.float32):
        x, gamma, beta, dout = make(rng, (6, 4, 3, 3), dtype)
        gx, gg, gb, gd = (cupy.asarray(a) for a in (x, gamma, beta, dout))
        out, cache = bn.batchnorm_forward(x, gamma, beta)
        gout, gcache = bn.batchnorm_forward(gx, gg, gb)
        assert isinstance(gout, cupy.ndarray) and gout.dtype == dtype
        assert bn.array_namespace(gout) is cupy
        tol = TOL[dtype]
        np.testing.assert_allclose(cupy.asnumpy(gout), out, **tol)
        for backward in BACKWARDS:
            for got, want in zip(backward(gd, gcache), backward(dout, cache)):
                assert isinstance(got, cupy.ndarray) and got.dtype == dtype
                np.testing.assert_allclose(cupy.asnumpy(got), want, **tol)
        inf = bn.batchnorm_inference(gx, gcache.mean, gcache.var, gg, gb)
        np.testing.assert_allclose(cupy.asnumpy(inf), cupy.asnumpy(gout), **tol)
        rm, rv = cupy.zeros(4, dtype), cupy.ones(4, dtype)
        bn.update_running_stats(rm, rv, gx)
        crm, crv = np.zeros(4, dtype), np.ones(4, dtype)
        bn.update_running_stats(crm, crv, x)
        np.testing.assert_allclose(cupy.asnumpy(rv), crv, **tol)
        with pytest.raises(ValueError, match="NaN or inf"):
            bad = gx.copy()
            bad[0, 1, 0, 0] = cupy.nan
            bn.batchnorm_forward(bad, gg, gb)


# --- pooled_moments: population statistics from batch statistics (PreciseBN) -----------------

def _batch_stats(x, m):
    parts = [x[i:i + m] for i in range(0, len(x), m)]
    return [p.mean(0) for p in parts], [p.var(0, unbiased=False) for p in parts]


def test_pooled_moments_equals_the_full_data_statistics_on_equal_disjoint_batches():
    x = torch.randn(600, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3 + 1
    means, variances = _batch_stats(x, 20)
    mean, var = bn.pooled_moments([20] * 30, means, variances)
    torch.testing.assert_close(mean, x.mean(0), rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(var, x.var(0, unbiased=True), rtol=1e-12, atol=1e-12)
    # averaging each batch's Bessel-corrected variance is another estimator, not this one
    assert not torch.allclose(torch.stack(variances).mean(0) * 20 / 19, var, rtol=1e-6)


def test_pooled_moments_weights_each_sample_once_with_unequal_batches():
    x = torch.randn(50, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    parts = [x[:10], x[10:15], x[15:]]
    mean, var = bn.pooled_moments([10, 5, 35], [p.mean(0) for p in parts],
                                 [p.var(0, unbiased=False) for p in parts])
    torch.testing.assert_close(mean, x.mean(0))
    torch.testing.assert_close(var, x.var(0, unbiased=True))


def test_pooled_moments_agrees_with_minibn_nn_precise_bn():
    x = torch.randn(400, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    import minibn.nn as mnn

    layer = mnn.BatchNorm1d(6).double()
    mnn.precise_bn(torch.nn.Sequential(layer), [x[i:i + 40] for i in range(0, 400, 40)])
    mean, var = bn.pooled_moments([40] * 10, *_batch_stats(x, 40))
    torch.testing.assert_close(layer.running_mean, mean)
    torch.testing.assert_close(layer.running_var, var)


def test_pooled_moments_works_on_numpy_and_names_bad_input():
    x = np.random.default_rng(4).normal(3.0, 2.0, size=(90, 2))
    parts = [x[:7], x[7:40], x[40:]]
    mean, var = bn.pooled_moments([len(p) for p in parts], [p.mean(0) for p in parts],
                                  [p.var(0) for p in parts])
    np.testing.assert_allclose(mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(var, x.var(0, ddof=1), rtol=1e-13)
    with pytest.raises(ValueError, match="3 counts, 2 means"):
        bn.pooled_moments([1, 2, 3], [x[0], x[1]], [x[0], x[1]])
    with pytest.raises(ValueError, match="sum to >= 2"):
        bn.pooled_moments([1], [x[0]], [x[0]])

