"""Checks for lesson 02-backward: the backward pass three ways.

Learner functions checked here all take ``(dout, cache)``, where ``cache`` is the
``minibn.functional.BatchNormCache`` returned by ``minibn.functional.batchnorm_forward``, and
return ``(dx, dgamma, dbeta)``:
- ``batchnorm_backward_graph``: node by node through the staged graph;
- ``batchnorm_backward``: the simplified closed form;
- ``batchnorm_backward_frozen_stats``: the ablation that treats the batch mean and variance as
  constants (what you get from ``.detach()``-ing them).
"""
from __future__ import annotations

import numpy as np

from minibn import functional as ref
from minibn.checks._core import (
    Case,
    Hint,
    assert_close,
    assert_unchanged,
    channel_shape,
    fmt,
    grading_seed,
    quiet,
    reduce_axes,
    require_callable,
    unpack,
)
from minibn.gradcheck import numerical_gradient_array, rel_error

__all__ = [
    "check_batchnorm_backward",
    "check_batchnorm_backward_graph",
    "check_batchnorm_backward_frozen_stats",
    "check_backward_randomized",
    "check_batchnorm_backward_randomized",
    "check_batchnorm_backward_graph_randomized",
    "check_batchnorm_backward_frozen_stats_randomized",
]

GRADCHECK_BAND = 1e-7


def _case(description, x, eps=1e-5, seed=0):
    rng = np.random.default_rng(seed)
    c = x.shape[1]
    gamma = rng.uniform(0.5, 2.0, c).astype(x.dtype) * rng.choice([-1, 1], c).astype(x.dtype)
    beta = rng.normal(0, 1, c).astype(x.dtype)
    dout = rng.normal(0, 1, x.shape).astype(x.dtype)
    return Case(description, {"x": x, "gamma": gamma, "beta": beta, "dout": dout}, {"eps": eps})


def _public_cases():
    rng = np.random.default_rng(2)
    return [
        _case("x of shape (4, 5), float64", rng.normal(1.0, 2.0, (4, 5)), seed=1),
        _case("x of shape (2, 3, 4, 5), float64 (N, C, H, W)", rng.normal(0, 1.5, (2, 3, 4, 5)), seed=2),
        _case("x of shape (1, 2, 3, 3): one sample, 9 values per channel",
              rng.normal(2, 1, (1, 2, 3, 3)), seed=3),
        _case("x of shape (8, 4, 3, 3), float32", rng.normal(0, 3, (8, 4, 3, 3)).astype(np.float32),
              seed=4),
        _case("x of shape (6, 3), float64, eps 0.5 (large)", rng.normal(0, 0.5, (6, 3)), eps=0.5, seed=5),
    ]


def _tolerance(dtype):
    return (1e-4, 1e-3) if dtype == np.float32 else (1e-9, 1e-6)


def _expected_full(case):
    x64 = np.asarray(case["x"], np.float64)
    _, cache = ref.batchnorm_forward(x64, case["gamma"], case["beta"], case["eps"])
    return ref.batchnorm_backward(np.asarray(case["dout"], np.float64), cache), cache


def _frozen(dout, cache):
    shape = channel_shape(dout.ndim, dout.shape[1])
    axes = reduce_axes(dout.ndim)
    dx = dout * (cache.gamma * cache.inv_std).reshape(shape)
    return dx, (dout * cache.x_hat).sum(axis=axes), dout.sum(axis=axes)


def _dx_variants(dout, cache):
    """dx with one of the known bugs, in float64."""
    shape = channel_shape(dout.ndim, dout.shape[1])
    axes = reduce_axes(dout.ndim)
    g_inv = (cache.gamma * cache.inv_std).reshape(shape)
    x_hat = cache.x_hat
    mean_dout = dout.mean(axis=axes, keepdims=True)
    mean_dout_xhat = (dout * x_hat).mean(axis=axes, keepdims=True)
    variants = {
        "no_mean": g_inv * (dout - x_hat * mean_dout_xhat),
        "no_var": g_inv * (dout - mean_dout),
        "frozen": g_inv * dout,
        "no_gamma": cache.inv_std.reshape(shape) * (dout - mean_dout - x_hat * mean_dout_xhat),
    }
    if dout.ndim > 2:  # means over the batch axis alone: one per channel *and position*
        variants["axis0"] = g_inv * (dout - dout.mean(axis=0, keepdims=True)
                                     - x_hat * (dout * x_hat).mean(axis=0, keepdims=True))
    return variants


def _sum_dx_note(dx):
    sums = np.asarray(dx, np.float64).sum(axis=reduce_axes(dx.ndim))
    return (f"Per-channel sum of dx = {[fmt(s) for s in sums[:4]]} (must be 0: shifting x does "
            "not change the output).")


def _dx_hints(dout, cache, full_dx, frozen):
    v = _dx_variants(dout, cache)
    if frozen:
        return [
            Hint(full_dx, "this is the full gradient, through the statistics; the exercise asks "
                 "for the statistics treated as constants (dx = gamma * inv_std * dout)."),
            Hint(cache.inv_std.reshape(channel_shape(dout.ndim, dout.shape[1])) * dout,
                 "dx is missing the factor gamma from out = gamma * x_hat + beta."),
        ]
    return [
        Hint(v["frozen"], "dx ignores the paths through the batch mean and variance: the "
             "statistics depend on x, so dx needs the extra terms -mean(dx_hat) and "
             "-x_hat * mean(dx_hat * x_hat)."),
        Hint(v["no_mean"], "dx is missing the path through the mean mu (the -mean(dx_hat) term): "
             "per-channel sum of dx should be 0."),
        Hint(v["no_var"], "dx is missing the path through the variance (the "
             "-x_hat * mean(dx_hat * x_hat) term)."),
        Hint(v["no_gamma"], "dx is missing the factor gamma from out = gamma * x_hat + beta."),
    ] + ([Hint(v["axis0"], "dx takes its means over the wrong axes (axis 0 only): the "
                "statistics pool N and every spatial axis, so the means in dx run over axes "
                f"{reduce_axes(dout.ndim)}.")] if "axis0" in v else [])


def _run_backward(fn, name, case, cache):
    dout = case["dout"]
    dout_copy = np.array(dout, copy=True)
    x_hat_copy = np.array(cache.x_hat, copy=True)
    x_copy = np.array(cache.x, copy=True)
    result = fn(dout, cache)
    dx, dgamma, dbeta = unpack(result, name, 3, ["dx", "dgamma", "dbeta"])
    assert_unchanged("dout", dout, dout_copy, case, name)
    assert_unchanged("cache.x_hat", cache.x_hat, x_hat_copy, case, name)
    assert_unchanged("cache.x", cache.x, x_copy, case, name)
    return dx, dgamma, dbeta


def _param_hints(dout, cache, quantity, expected_other):
    axes = reduce_axes(dout.ndim)
    hints = [Hint(expected_other, "dgamma and dbeta are swapped: dbeta = sum(dout), "
                  "dgamma = sum(dout * x_hat).")]
    if quantity == "dgamma":
        hints.append(Hint((dout * np.asarray(cache.x, np.float64)).sum(axis=axes),
                          "dgamma uses x; it is sum(dout * x_hat), with the normalized input."))
    return hints


def _check_backward_case(fn, name, case, frozen=False):
    x, dtype = case["x"], case["x"].dtype
    (full, cache64) = _expected_full(case)
    dout64 = np.asarray(case["dout"], np.float64)
    expected = _frozen(dout64, cache64) if frozen else full
    _, cache = ref.batchnorm_forward(x, case["gamma"], case["beta"], case["eps"])
    dx, dgamma, dbeta = _run_backward(fn, name, case, cache)
    atol, rtol = _tolerance(dtype)
    note = ""
    if not frozen and type(dx) is np.ndarray and dx.shape == x.shape:
        note = _sum_dx_note(dx)
    assert_close("dx", dx, expected[0], case, atol=atol, rtol=rtol, dtype=dtype,
                 hints=_dx_hints(dout64, cache64, full[0], frozen), note=note)
    assert_close("dgamma", dgamma, expected[1], case, atol=atol, rtol=rtol, dtype=dtype,
                 hints=_param_hints(dout64, cache64, "dgamma", expected[2]))
    assert_close("dbeta", dbeta, expected[2], case, atol=atol, rtol=rtol, dtype=dtype,
                 hints=_param_hints(dout64, cache64, "dbeta", expected[1]))


def _check_invariants(fn, name):
    """Sum of dx is 0 per channel; at eps = 0 the sum of dx * x_hat is 0 too."""
    rng = np.random.default_rng(7)
    case = _case("x of shape (5, 3, 2), float64, eps 0", rng.normal(1, 2, (5, 3, 2)), eps=0.0, seed=7)
    _, cache = ref.batchnorm_forward(case["x"], case["gamma"], case["beta"], 0.0)
    dx = np.asarray(_run_backward(fn, name, case, cache)[0], np.float64)
    axes = reduce_axes(dx.ndim)
    scale = np.abs(dx).sum(axis=axes) + 1e-12
    for label, total in (("sum of dx", dx.sum(axis=axes)),
                         ("sum of dx * x_hat", (dx * cache.x_hat).sum(axis=axes))):
        ratio = np.abs(total) / scale
        if (ratio > 1e-9).any():
            ch = int(np.argmax(ratio))
            raise AssertionError(
                f"invariant broken ({case.description}): per-channel {label} must be 0, got "
                f"{fmt(total[ch])} in channel {ch}. The output does not change when x is shifted "
                "(sum of dx = 0) or, at eps = 0, scaled (sum of dx * x_hat = 0), so dx must be "
                "orthogonal to both directions."
            )


def _check_gradcheck(fn, name):
    """dx, dgamma, dbeta against central differences of the forward pass (float64)."""
    rng = np.random.default_rng(11)
    case = _case("x of shape (3, 2, 2), float64, central differences", rng.normal(0, 1, (3, 2, 2)),
                 seed=11)
    x, gamma, beta, dout = (np.array(case[k], copy=True) for k in ("x", "gamma", "beta", "dout"))
    _, cache = ref.batchnorm_forward(x.copy(), gamma, beta, case["eps"])
    got = _run_backward(fn, name, case, cache)
    forward = lambda: ref.batchnorm_forward(x, gamma, beta, case["eps"])[0]  # noqa: E731
    for label, arr, g in zip(("dx", "dgamma", "dbeta"), (x, gamma, beta), got):
        numeric = numerical_gradient_array(forward, arr, dout)
        err = rel_error(np.asarray(g, np.float64), numeric)
        if not err < GRADCHECK_BAND:
            raise AssertionError(
                f"{label} disagrees with the numerical gradient ({case.description}): "
                f"rel_error {fmt(err)} > {GRADCHECK_BAND:g}."
            )


def _check_backward(fn, name):
    require_callable(fn, name)
    with quiet():
        for case in _public_cases():
            _check_backward_case(fn, name, case)
        _check_gradcheck(fn, name)
        _check_invariants(fn, name)


def check_batchnorm_backward_graph(batchnorm_backward_graph):
    """Check the staged-graph backward ``(dout, cache) -> (dx, dgamma, dbeta)``.

    Against the float64 reference on the public cases, against central differences, and on the
    invariants (sum of dx = 0; sum of dx * x_hat = 0 at eps = 0). Returns None.
    """
    _check_backward(batchnorm_backward_graph, "batchnorm_backward_graph")


def check_batchnorm_backward(batchnorm_backward):
    """Check the closed-form backward ``(dout, cache) -> (dx, dgamma, dbeta)``; see above."""
    _check_backward(batchnorm_backward, "batchnorm_backward")


def check_batchnorm_backward_frozen_stats(batchnorm_backward_frozen_stats):
    """Check the ablation: gradients with the batch mean and variance treated as constants."""
    name = "batchnorm_backward_frozen_stats"
    require_callable(batchnorm_backward_frozen_stats, name)
    with quiet():
        for case in _public_cases():
            _check_backward_case(batchnorm_backward_frozen_stats, name, case, frozen=True)


def _randomized_cases(seed, count=5):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        dtype = np.float32 if i == count - 1 else np.float64
        ndim = int(rng.integers(2, 5))
        shape = (int(rng.integers(2, 7)), int(rng.integers(1, 6))) + tuple(
            int(s) for s in rng.integers(1, 4, ndim - 2))
        x = rng.normal(rng.normal(0, 5), 10 ** rng.uniform(-1, 1), shape).astype(dtype)
        eps = float(rng.choice([1e-5, 1e-2, 0.3]))
        desc = (f"randomized case {i} of seed {seed}: x of shape {shape}, {np.dtype(dtype).name}, "
                f"eps {eps:g}")
        cases.append(_case(desc, x, eps=eps, seed=int(rng.integers(2**31))))
    return cases


def check_backward_randomized(fn, name, seed=None, frozen=False):
    """Any of the three backward functions on randomized cases; ``name`` is the function's name.

    ``seed=None`` derives the seed from the grading secret; the seed is named in any failure.
    """
    require_callable(fn, name)
    seed = grading_seed(name) if seed is None else seed
    with quiet():
        for case in _randomized_cases(seed):
            _check_backward_case(fn, name, case, frozen=frozen)


def check_batchnorm_backward_graph_randomized(batchnorm_backward_graph, seed=None):
    """``check_batchnorm_backward_graph`` on randomized cases (the lesson's hidden tests)."""
    check_backward_randomized(batchnorm_backward_graph, "batchnorm_backward_graph", seed)


def check_batchnorm_backward_randomized(batchnorm_backward, seed=None):
    """``check_batchnorm_backward`` on randomized cases (the lesson's hidden tests)."""
    check_backward_randomized(batchnorm_backward, "batchnorm_backward", seed)


def check_batchnorm_backward_frozen_stats_randomized(batchnorm_backward_frozen_stats, seed=None):
    """``check_batchnorm_backward_frozen_stats`` on randomized cases (the lesson's hidden tests)."""
    check_backward_randomized(batchnorm_backward_frozen_stats, "batchnorm_backward_frozen_stats",
                              seed, frozen=True)
