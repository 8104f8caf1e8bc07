"""minibn.cuda.batchnorm_forward/backward on NumPy arrays (CPU executor) agree with
minibn.functional, update running statistics like torch, and reject bad input by name."""
import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

import minibn.cuda as mc
from minibn import functional as ref


def _data(shape, seed=0, offset=0.0):
    rng = np.random.default_rng(seed)
    x = (rng.normal(offset, 2.0, shape)).astype(np.float32)
    gamma = rng.uniform(0.5, 2.0, shape[1]).astype(np.float32)
    beta = rng.normal(0, 1, shape[1]).astype(np.float32)
    return x, gamma, beta


@settings(max_examples=8, deadline=None)
@given(
    n=st.integers(1, 5), c=st.integers(1, 4), h=st.integers(1, 6), w=st.integers(1, 6),
    offset=st.sampled_from([0.0, 3.0, -50.0]), seed=st.integers(0, 2**16),
)
def test_forward_and_backward_match_functional(n, c, h, w, offset, seed):
    assume(n * h * w >= 2)  # training statistics need two values per channel
    x, gamma, beta = _data((n, c, h, w), seed, offset)
    out, cache = mc.batchnorm_forward(x, gamma, beta, eps=1e-3, block=64)
    want, ref_cache = ref.batchnorm_forward(x.astype(np.float64), gamma, beta, eps=1e-3)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(cache.mean, ref_cache.mean, rtol=1e-5, atol=1e-5 * (1 + abs(offset)))
    np.testing.assert_allclose(cache.inv_std, ref_cache.inv_std, rtol=1e-4)
    dout = np.random.default_rng(seed + 1).normal(0, 1, x.shape).astype(np.float32)
    dx, dgamma, dbeta = mc.batchnorm_backward(dout, cache, block=64)
    want_dx, want_dgamma, want_dbeta = ref.batchnorm_backward(dout.astype(np.float64), ref_cache)
    np.testing.assert_allclose(dbeta, want_dbeta, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(dgamma, want_dgamma, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-4, atol=1e-4)


def test_running_statistics_are_updated_in_place():
    x, gamma, beta = _data((6, 3, 4, 4), 1)
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    want_m, want_v = np.zeros(3), np.ones(3)
    for _ in range(3):
        mc.batchnorm_forward(x, gamma, beta, running_mean=rm, running_var=rv, momentum=0.1)
        ref.update_running_stats(want_m, want_v, x.astype(np.float64), momentum=0.1)
    np.testing.assert_allclose(rm, want_m, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(rv, want_v, rtol=1e-5)


def test_nan_input_is_an_error_and_leaves_running_stats_alone():
    x, gamma, beta = _data((4, 3, 2, 2), 2)
    x[1, 2, 0, 1] = np.nan
    rm, rv = np.zeros(3, np.float32), np.ones(3, np.float32)
    with pytest.raises(ValueError, match=r"NaN or inf \(in channel\(s\) \[2\]\)"):
        mc.batchnorm_forward(x, gamma, beta, running_mean=rm, running_var=rv)
    assert np.all(rm == 0) and np.all(rv == 1)


def test_two_dimensional_and_non_contiguous_input():
    x, gamma, beta = _data((10, 4), 3)
    out, _ = mc.batchnorm_forward(x, gamma, beta)
    np.testing.assert_allclose(out, ref.batchnorm_forward(x.astype(np.float64), gamma, beta)[0],
                               rtol=1e-5, atol=1e-5)
    xt = np.asfortranarray(_data((3, 2, 5, 4), 4)[0])
    out, _ = mc.batchnorm_forward(xt, gamma[:2], beta[:2])
    np.testing.assert_allclose(out, ref.batchnorm_forward(xt.astype(np.float64), gamma[:2], beta[:2])[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    "change, error, message",
    [
        (lambda a: {**a, "x": a["x"].astype(np.float64)}, TypeError, "must be float32"),
        (lambda a: {**a, "x": a["x"][:1, :, :1, :1]}, ValueError, "more than 1 value per channel"),
        (lambda a: {**a, "x": a["x"][0, 0, 0]}, ValueError, "channels on axis 1"),
        (lambda a: {**a, "gamma": a["gamma"][:2]}, ValueError, r"gamma must have shape \(C,\)"),
        (lambda a: {**a, "running_mean": np.zeros(3, np.float32)}, ValueError, "both running_mean"),
        (lambda a: {**a, "running_mean": np.zeros(3), "running_var": np.ones(3)}, ValueError,
         "contiguous float32"),
        (lambda a: {**a, "momentum": 1.5}, ValueError, "momentum"),
        (lambda a: {**a, "x": a["x"].tolist()}, TypeError, "NumPy or CuPy array"),
    ],
)
def test_bad_forward_input_is_named(change, error, message):
    x, gamma, beta = _data((2, 3, 2, 2), 5)
    kwargs = change({"x": x, "gamma": gamma, "beta": beta})
    with pytest.raises(error, match=message):
        mc.batchnorm_forward(**kwargs)


def test_bad_backward_input_is_named():
    x, gamma, beta = _data((2, 3, 2, 2), 6)
    _, cache = mc.batchnorm_forward(x, gamma, beta)
    with pytest.raises(ValueError, match="shape of the forward output"):
        mc.batchnorm_backward(np.zeros((2, 3, 2, 1), np.float32), cache)
    with pytest.raises(TypeError, match="KernelCache"):
        mc.batchnorm_backward(np.zeros_like(x), ref.batchnorm_forward(x, gamma, beta)[1])
