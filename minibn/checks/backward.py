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
    Exercise,
    Hint,
    assert_close,
    assert_unchanged,
    channel_shape,
    conditioned_atols,
    fmt,
    reduce_axes,
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
        _case("x of shape (3, 1, 4), float64: one channel, (N, C, L)", rng.normal(-2, 1, (3, 1, 4)),
              seed=6),
        _case("x of shape (2, 3, 1, 2), float32, mean 300, std 0.5: only 4 values per channel "
              "and |mean| / std = 600 (float32 loses digits in x - mean)",
              rng.normal(300, 0.5, (2, 3, 1, 2)).astype(np.float32), seed=8),
    ]


def _tolerance(dtype):
    return (1e-4, 1e-3) if dtype == np.float32 else (1e-9, 1e-6)


def _conditioned_atol(case):
    """Per-channel absolute tolerances for (dx, dgamma, dbeta) that follow the case's conditioning
    (``conditioned_atols``): the cache holds x_hat computed in x's dtype."""
    base = _tolerance(case["x"].dtype)[0]
    _, dx, dgamma = conditioned_atols(case["x"], case["gamma"], case["dout"], case["eps"], base)
    return dx, dgamma, base


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
    rtol = _tolerance(dtype)[1]
    atol_dx, atol_dgamma, atol_dbeta = _conditioned_atol(case)
    note = ""
    if not frozen and type(dx) is np.ndarray and dx.shape == x.shape:
        note = _sum_dx_note(dx)
    assert_close("dx", dx, expected[0], case, atol=atol_dx, rtol=rtol, dtype=dtype,
                 hints=lambda: _dx_hints(dout64, cache64, full[0], frozen), note=note)
    assert_close("dgamma", dgamma, expected[1], case, atol=atol_dgamma, rtol=rtol, dtype=dtype,
                 hints=lambda: _param_hints(dout64, cache64, "dgamma", expected[2]))
    assert_close("dbeta", dbeta, expected[2], case, atol=atol_dbeta, rtol=rtol, dtype=dtype,
                 hints=lambda: _param_hints(dout64, cache64, "dbeta", expected[1]))


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


def _randomized_cases(seed, count=5):
    """Random ranks 2-4, shapes, offsets up to |mean| ~ 15 with std 0.1-10, and eps; the last
    case is float32, where the conditioning-following tolerance matters."""
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        dtype = np.float32 if i == count - 1 else np.float64
        ndim = int(rng.integers(2, 5))
        shape = (int(rng.integers(2, 7)), int(rng.integers(1, 6))) + tuple(
            int(s) for s in rng.integers(1, 4, ndim - 2))
        x = rng.normal(rng.normal(0, 5), 10 ** rng.uniform(-1, 1), shape).astype(dtype)
        eps = float(rng.choice([1e-5, 1e-2, 0.3]))
        desc = f"x of shape {shape}, {np.dtype(dtype).name}, eps {eps:g}"
        cases.append(_case(desc, x, eps=eps, seed=int(rng.integers(2**31))))
    return cases


def _exercise(name, frozen=False):
    def check_case(fn, case):
        _check_backward_case(fn, name, case, frozen=frozen)

    def gradcheck(fn):
        """central differences"""
        _check_gradcheck(fn, name)

    def invariants(fn):
        """the invariants sum of dx = 0 and, at eps = 0, sum of dx * x_hat = 0"""
        _check_invariants(fn, name)

    summary = ("the frozen-statistics ablation (dout, cache) -> (dx, dgamma, dbeta)" if frozen
               else "(dout, cache) -> (dx, dgamma, dbeta)")
    return Exercise(name, _public_cases, _randomized_cases, check_case, summary=summary,
                    extra_checks=() if frozen else (gradcheck, invariants))


GRAPH = _exercise("batchnorm_backward_graph")
CLOSED_FORM = _exercise("batchnorm_backward")
FROZEN = _exercise("batchnorm_backward_frozen_stats", frozen=True)
EXERCISES = (GRAPH, CLOSED_FORM, FROZEN)

check_batchnorm_backward_graph, check_batchnorm_backward_graph_randomized = GRAPH.checks(
    module=__name__)
check_batchnorm_backward, check_batchnorm_backward_randomized = CLOSED_FORM.checks(module=__name__)
(check_batchnorm_backward_frozen_stats,
 check_batchnorm_backward_frozen_stats_randomized) = FROZEN.checks(module=__name__)


def check_backward_randomized(fn, name, seed=None, frozen=False):
    """Any of the three backward functions on randomized cases; ``name`` is the function's name.

    ``seed=None`` derives the seed from the grading secret; the seed is named in any failure.
    """
    exercise = FROZEN if frozen else {e.name: e for e in EXERCISES}.get(name)
    if exercise is None or (exercise is FROZEN) != frozen:
        exercise = _exercise(name, frozen)
    exercise.check_randomized(fn, seed)
