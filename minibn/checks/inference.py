"""Checks for lesson 03-inference: running statistics, population statistics and folding.

Learner functions checked here (NumPy; channels on axis 1, statistics over every other axis):
- ``update_running_stats(running_mean, running_var, x, momentum=0.1)``: torch's update, in
  place, returning ``(running_mean, running_var)``; the batch variance is the unbiased one.
- ``batchnorm_inference(x, mean, var, gamma, beta, eps=1e-5) -> out``: normalize with the given
  (population or running) statistics, never the batch's.
- ``population_stats(batches) -> (mean, var)``: per-channel mean and unbiased variance of all
  the values in a list of batches (which may differ in size), from per-batch statistics.
- ``fold_into_linear(W, b, mean, var, gamma, beta, eps=1e-5) -> (W_folded, b_folded)``: fold an
  inference-mode BN after ``y = x @ W.T + b`` (torch's ``Linear`` layout, ``W`` is
  ``(C_out, C_in)``) into one affine map.
"""
from __future__ import annotations

import numpy as np

from minibn import functional as ref
from minibn.conventions import update_running_stat
from minibn.checks._core import (
    Case,
    Exercise,
    Hint,
    assert_close,
    assert_unchanged,
    reduce_axes,
    unpack,
)

__all__ = [
    "check_update_running_stats",
    "check_update_running_stats_randomized",
    "check_batchnorm_inference",
    "check_batchnorm_inference_randomized",
    "check_population_stats",
    "check_population_stats_randomized",
    "check_fold_into_linear",
    "check_fold_into_linear_randomized",
]


def _tol(dtype):
    return (1e-5, 1e-4) if np.dtype(dtype) == np.float32 else (1e-10, 1e-9)


def _channel_view(v, ndim):
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ----------------------------------------------------------------------------------------------
# update_running_stats


def _running_cases(rng):
    cases = []
    for shape, dtype, momentum, steps in [((8, 3), np.float64, 0.1, 1),
                                          ((4, 2, 3, 3), np.float64, 0.3, 3),
                                          ((2, 4, 5), np.float32, 0.1, 2),
                                          ((5, 3), np.float64, 1.0, 1),
                                          ((3, 2, 2, 2), np.float64, 0.0, 1),
                                          ((4, 1, 3), np.float64, 0.5, 2)]:
        batches = [rng.normal(rng.normal(0, 3), rng.uniform(0.5, 3), shape).astype(dtype)
                   for _ in range(steps)]
        c = shape[1]
        desc = (f"{steps} batch(es) of shape {shape}, {np.dtype(dtype).name}, momentum {momentum}, "
                "starting from running_mean 0 and running_var 1")
        cases.append(Case(desc, {"batches": batches}, {"momentum": momentum, "c": c}))
    return cases


def _running_expectations(batches, momentum, c):
    """The reference and the known-bug variants after all the batches."""
    variants = {k: [np.zeros(c), np.ones(c)] for k in ("ok", "reversed", "biased", "std")}
    for x in batches:
        x = np.asarray(x, np.float64)
        axes = reduce_axes(x.ndim)
        mean, var_b, var_u = x.mean(axis=axes), x.var(axis=axes), x.var(axis=axes, ddof=1)
        for key, (rm, rv) in variants.items():
            # The bugs through the one rule: a reversed momentum is the rule with 1 - momentum.
            weight = 1 - momentum if key == "reversed" else momentum
            var = {"biased": var_b, "std": np.sqrt(var_u)}.get(key, var_u)
            update_running_stat(rm, mean, weight)
            update_running_stat(rv, var, weight)
    return variants


def _check_running_case(fn, case):
    batches, momentum, c = case["batches"], case["momentum"], case["c"]
    dtype = batches[0].dtype
    rm, rv = np.zeros(c, dtype), np.ones(c, dtype)
    for x in batches:
        x_copy = x.copy()
        result = fn(rm, rv, x, momentum=momentum)
        assert_unchanged("x", x, x_copy, case, "update_running_stats")
        new_m, new_v = unpack(result, "update_running_stats", 2, ["running_mean", "running_var"])
        if new_m is not rm or new_v is not rv:
            raise AssertionError(
                "update_running_stats must update running_mean and running_var in place and "
                "return those same arrays (use rm *= ..., rm += ..., or rm[...] = ...), like a "
                f"torch module's buffers ({case.description})")
    v = _running_expectations(batches, momentum, c)
    atol, rtol = _tol(dtype)
    reversed_hint = Hint(v["reversed"][0], "momentum is reversed: torch's momentum is the weight "
                         "of the NEW batch statistic, running = (1 - momentum) * running + "
                         "momentum * batch (CS231n's and Keras's momentum is 1 - this).")
    assert_close("running_mean", rm, v["ok"][0], case, atol=atol, rtol=rtol, dtype=dtype,
                 hints=[reversed_hint])
    assert_close("running_var", rv, v["ok"][1], case, atol=atol, rtol=rtol, dtype=dtype, hints=[
        Hint(v["reversed"][1], reversed_hint.message),
        Hint(v["biased"][1], "running_var used the biased batch variance; the running "
             "variance estimates the population variance, so use the unbiased m / (m - 1) "
             "version (np.var(..., ddof=1)), where m = values per channel = N * H * W."),
        Hint(v["std"][1], "running_var averaged the standard deviation; average the variance."),
    ])


def _running_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(4):
        ndim = int(rng.integers(2, 5))
        shape = (int(rng.integers(2, 6)), int(rng.integers(1, 5))) + tuple(
            int(s) for s in rng.integers(1, 4, ndim - 2))
        momentum = float(rng.choice([0.01, 0.1, 0.5, 0.9]))
        steps = int(rng.integers(1, 4))
        batches = [rng.normal(rng.normal(0, 5), rng.uniform(0.1, 4), shape) for _ in range(steps)]
        desc = f"{steps} batch(es) of shape {shape}, float64, momentum {momentum}"
        cases.append(Case(desc, {"batches": batches}, {"momentum": momentum, "c": shape[1]}))
    return cases


RUNNING = Exercise("update_running_stats", lambda: _running_cases(np.random.default_rng(3)),
                   _running_randomized, _check_running_case,
                   summary="torch's running-statistics update, in place, over several steps, "
                   "dtypes and momenta")
check_update_running_stats, check_update_running_stats_randomized = RUNNING.checks(module=__name__)


# ----------------------------------------------------------------------------------------------
# batchnorm_inference


def _inference_case(rng, desc, shape, dtype=np.float64, eps=1e-5):
    c = shape[1]
    arrays = {
        "x": rng.normal(rng.normal(0, 2), 2, shape).astype(dtype),
        "mean": rng.normal(0, 2, c).astype(dtype),
        "var": rng.uniform(0.2, 4, c).astype(dtype),
        "gamma": rng.uniform(0.5, 2, c).astype(dtype),
        "beta": rng.normal(0, 1, c).astype(dtype),
    }
    return Case(desc, arrays, {"eps": eps})


def _inference_cases(rng):
    return [
        _inference_case(rng, "x of shape (6, 4), float64", (6, 4)),
        _inference_case(rng, "x of shape (2, 3, 4, 4), float64", (2, 3, 4, 4)),
        _inference_case(rng, "x of shape (1, 3): a single example (inference must allow N = 1)",
                        (1, 3)),
        _inference_case(rng, "x of shape (5, 2, 3), float32", (5, 2, 3), np.float32),
        _inference_case(rng, "x of shape (4, 3), eps 0.5 (large)", (4, 3), eps=0.5),
        _inference_case(rng, "x of shape (3, 1, 2, 2), float64: one channel", (3, 1, 2, 2)),
    ]


def _check_inference_case(fn, case):
    a = {k: case[k] for k in ("x", "mean", "var", "gamma", "beta")}
    copies = {k: v.copy() for k, v in a.items()}
    out = fn(a["x"], a["mean"], a["var"], a["gamma"], a["beta"], eps=case["eps"])
    for k in a:
        assert_unchanged(k, a[k], copies[k], case, "batchnorm_inference")
    a64 = {k: np.asarray(v, np.float64) for k, v in a.items()}
    x, eps = a64["x"], case["eps"]
    view = lambda v: _channel_view(v, x.ndim)  # noqa: E731
    expected = ref.batchnorm_inference(x, a64["mean"], a64["var"], a64["gamma"], a64["beta"], eps)
    hints = []
    if x.shape[0] * int(np.prod(x.shape[2:])) > 1:
        batch, _ = ref.batchnorm_forward(x, a64["gamma"], a64["beta"], eps)
        hints.append(Hint(batch, "the output was normalized with this batch's own mean and "
                          "variance; at inference use the given mean and var (population or "
                          "running statistics), so each example's output depends only on itself."))
    hints += [
        Hint(view(a64["gamma"]) * (x - view(a64["mean"])) / (np.sqrt(view(a64["var"])) + eps)
             + view(a64["beta"]), "eps goes inside the square root: sqrt(var + eps)."),
        Hint((x - view(a64["mean"])) / np.sqrt(view(a64["var"]) + eps),
             "the output is missing the scale gamma and shift beta."),
        Hint(view(a64["gamma"]) * (x - view(a64["mean"])) / (view(a64["var"]) + eps)
             + view(a64["beta"]), "divide by the standard deviation sqrt(var + eps), not var."),
    ]
    atol, rtol = _tol(a["x"].dtype)
    assert_close("out", out, expected, case, atol=atol, rtol=rtol, dtype=a["x"].dtype, hints=hints)


def _inference_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(4):
        ndim = int(rng.integers(2, 5))
        shape = (int(rng.integers(1, 6)), int(rng.integers(1, 5))) + tuple(
            int(s) for s in rng.integers(1, 4, ndim - 2))
        dtype = np.float32 if i == 3 else np.float64
        eps = float(rng.choice([1e-5, 1e-3, 0.1]))
        desc = f"x of shape {shape}, {np.dtype(dtype).name}, eps {eps:g}"
        cases.append(_inference_case(rng, desc, shape, dtype, eps))
    return cases


INFERENCE = Exercise("batchnorm_inference", lambda: _inference_cases(np.random.default_rng(5)),
                     _inference_randomized, _check_inference_case,
                     summary="inference-mode BN with given statistics, dtype kept")
check_batchnorm_inference, check_batchnorm_inference_randomized = INFERENCE.checks(module=__name__)


# ----------------------------------------------------------------------------------------------
# population_stats


def _population_cases(rng):
    def batches(sizes, c, tail=(), loc=0.0, drift=0.0):
        return [rng.normal(loc + drift * i, 1.5, (n, c) + tail) for i, n in enumerate(sizes)]

    return [
        Case("4 batches of shape (5, 3)", {"batches": batches([5] * 4, 3)}),
        Case("3 batches of shape (4, 2, 3, 3) (N, C, H, W)",
             {"batches": batches([4] * 3, 2, (3, 3))}),
        Case("batches of different sizes 2, 7 and 3, shape (n, 3)",
             {"batches": batches([2, 7, 3], 3, loc=1.0)}),
        Case("3 batches of shape (4, 2) whose means drift apart (1, 6, 11)",
             {"batches": batches([4] * 3, 2, loc=1.0, drift=5.0)}),
        Case("a single batch of shape (6, 4), float32",
             {"batches": [rng.normal(2, 1, (6, 4)).astype(np.float32)]}),
        Case("batches of sizes 1, 5 and 1, shape (n, 2): two batches hold a single value per "
             "channel (m = 1), whose variance alone is undefined (ddof=1 gives NaN)",
             {"batches": batches([1, 5, 1], 2, loc=-1.0)}),
        Case("batches of sizes 3 and 2, shape (n, 1, 4) (N, C, L): one channel",
             {"batches": batches([3, 2], 1, (4,), loc=2.0)}),
    ]


def _population_hints(batches):
    stats = [(np.asarray(b, np.float64), b.size // b.shape[1]) for b in batches]
    axes = [reduce_axes(b.ndim) for b, _ in stats]
    means = np.array([b.mean(axis=a) for (b, _), a in zip(stats, axes)])
    biased = np.array([b.var(axis=a) for (b, _), a in zip(stats, axes)])
    with np.errstate(divide="ignore", invalid="ignore"):
        unbiased = np.array([b.var(axis=a, ddof=1) if m > 1 else np.full(b.shape[1], np.nan)
                             for (b, m), a in zip(stats, axes)])
    counts = np.array([m for _, m in stats], np.float64)[:, None]
    total = counts.sum()
    mean = (means * counts).sum(0) / total
    between = (counts * (means - mean) ** 2).sum(0)
    pooled_biased = ((counts * biased).sum(0) + between) / total
    merge = ("merge the batches (Chan et al.): var_total = sum_b m_b * (var_b + (mu_b - mu)^2) / M "
             "with the biased per-batch var_b, then multiply by M / (M - 1) for M values in all")
    mean_hints = [Hint(means.mean(0), "with batches of different sizes, weight each batch mean "
                       "by its number of values m = N * H * W (every value counts once).")]
    var_hints = []
    if (counts == 1).any():
        with np.errstate(invalid="ignore"):
            per_batch_ddof1 = (((counts - 1) * unbiased).sum(0) + between) / (total - 1)
        var_hints.append(Hint(per_batch_ddof1, "a batch with a single value per channel (m = 1) "
                              "has no unbiased variance of its own: np.var(..., ddof=1) divides "
                              "by m - 1 = 0 and gives NaN. Use the biased per-batch variances "
                              f"and apply M / (M - 1) once, to the pooled total: {merge}."))
    var_hints += [
        Hint(unbiased.mean(0), "you averaged the per-batch (unbiased) variances: that is "
             "Algorithm 2's estimate, right on average for independent batches of one size, but "
             "not the variance of these values pooled, which also counts the spread of the batch "
             f"means around the overall mean exactly; {merge}."),
        Hint(biased.mean(0), "you averaged the biased per-batch variances: they underestimate by "
             f"(m - 1) / m and leave out the spread of the batch means; {merge}."),
        Hint(pooled_biased, "this is the biased (divide by M) variance; population statistics "
             "for inference use the unbiased one: multiply by M / (M - 1)."),
    ]
    return mean_hints, var_hints


def _check_population_case(fn, case):
    batches = case["batches"]
    copies = [b.copy() for b in batches]
    result = fn(list(batches))
    for i, (b, c) in enumerate(zip(batches, copies)):
        assert_unchanged(f"batches[{i}]", b, c, case, "population_stats")
    mean, var = unpack(result, "population_stats", 2, ["mean", "var"])
    everything = np.concatenate(
        [np.moveaxis(np.asarray(b, np.float64), 1, -1).reshape(-1, b.shape[1]) for b in batches])
    mean_hints, var_hints = _population_hints(batches)
    atol, rtol = _tol(batches[0].dtype)
    assert_close("mean", mean, everything.mean(0), case, atol=atol, rtol=rtol, hints=mean_hints)
    assert_close("var", var, everything.var(0, ddof=1), case, atol=atol, rtol=rtol, hints=var_hints)


def _population_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(4):
        c = int(rng.integers(1, 5))
        tail = tuple(int(s) for s in rng.integers(1, 4, int(rng.integers(0, 3))))
        sizes = [int(s) for s in rng.integers(1, 7, int(rng.integers(1, 6)))]
        if sum(sizes) * int(np.prod(tail)) < 2:
            sizes.append(2)
        batches = [rng.normal(rng.normal(0, 4), rng.uniform(0.3, 3), (n, c) + tail)
                   for n in sizes]
        desc = f"{len(sizes)} batches of sizes {sizes}, shape (n, {c}, *{tail}), float64"
        cases.append(Case(desc, {"batches": batches}))
    return cases


POPULATION = Exercise("population_stats", lambda: _population_cases(np.random.default_rng(7)),
                      _population_randomized, _check_population_case,
                      summary="per-channel mean and unbiased variance of all the values of a "
                      "list of batches")
check_population_stats, check_population_stats_randomized = POPULATION.checks(module=__name__)


# ----------------------------------------------------------------------------------------------
# fold_into_linear


def _fold_case(rng, desc, c_out, c_in, dtype=np.float64, eps=1e-5):
    arrays = {
        "W": rng.normal(0, 1, (c_out, c_in)).astype(dtype),
        "b": rng.normal(0, 1, c_out).astype(dtype),
        "mean": rng.normal(0, 2, c_out).astype(dtype),
        "var": rng.uniform(0.2, 4, c_out).astype(dtype),
        "gamma": rng.uniform(0.5, 2, c_out).astype(dtype),
        "beta": rng.normal(0, 1, c_out).astype(dtype),
    }
    return Case(desc, arrays, {"eps": eps})


def _fold_cases(rng):
    return [
        _fold_case(rng, "W of shape (3, 5) (C_out=3, C_in=5), float64", 3, 5),
        _fold_case(rng, "W of shape (4, 4) (square), float64", 4, 4),
        _fold_case(rng, "W of shape (6, 2), eps 0.5 (large)", 6, 2, eps=0.5),
        _fold_case(rng, "W of shape (2, 3), float32", 2, 3, np.float32),
    ]


def _check_fold_case(fn, case):
    names = ("W", "b", "mean", "var", "gamma", "beta")
    a = {k: case[k] for k in names}
    copies = {k: v.copy() for k, v in a.items()}
    result = fn(*(a[k] for k in names), eps=case["eps"])
    for k in names:
        assert_unchanged(k, a[k], copies[k], case, "fold_into_linear")
    W2, b2 = unpack(result, "fold_into_linear", 2, ["W_folded", "b_folded"])
    a64 = {k: np.asarray(v, np.float64) for k, v in a.items()}
    scale = a64["gamma"] / np.sqrt(a64["var"] + case["eps"])
    W_exp = a64["W"] * scale[:, None]
    b_exp = (a64["b"] - a64["mean"]) * scale + a64["beta"]
    atol, rtol = _tol(a["W"].dtype)
    dtype = a["W"].dtype
    w_hints = [Hint(a64["W"] * (a64["gamma"] / (np.sqrt(a64["var"]) + case["eps"]))[:, None],
                    "eps goes inside the square root: sqrt(var + eps).")]
    if a64["W"].shape[0] == a64["W"].shape[1]:  # only a square W lets the wrong axis broadcast
        w_hints.append(Hint(a64["W"] * scale[None, :], "W was scaled per column (input feature); "
                            "BN scales each OUTPUT feature, a row of W in torch's (C_out, C_in) "
                            "layout: W * scale[:, None]."))
    assert_close("W_folded", W2, W_exp, case, atol=atol, rtol=rtol, dtype=dtype, hints=w_hints)
    assert_close("b_folded", b2, b_exp, case, atol=atol, rtol=rtol, dtype=dtype, hints=[
        Hint(a64["b"] - a64["mean"] * scale + a64["beta"], "the layer's bias b passes through the "
             "BN too, so it is scaled as well: b_folded = (b - mean) * scale + beta."),
        Hint(-a64["mean"] * scale + a64["beta"], "b_folded ignores the layer's own bias b: "
             "b_folded = (b - mean) * scale + beta."),
        Hint((a64["b"] - a64["mean"]) * scale, "b_folded is missing the shift beta."),
    ])


def _fold_randomized(seed):
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(4):
        c_out, c_in = (int(v) for v in rng.integers(1, 7, 2))
        eps = float(rng.choice([1e-5, 1e-3, 0.1]))
        desc = f"W of shape ({c_out}, {c_in}), float64, eps {eps:g}"
        cases.append(_fold_case(rng, desc, c_out, c_in, eps=eps))
    return cases


FOLD = Exercise("fold_into_linear", lambda: _fold_cases(np.random.default_rng(11)),
                _fold_randomized, _check_fold_case,
                summary="x @ W_folded.T + b_folded equals inference BN of x @ W.T + b; "
                "float32 in, float32 out")
check_fold_into_linear, check_fold_into_linear_randomized = FOLD.checks(module=__name__)

EXERCISES = (RUNNING, INFERENCE, POPULATION, FOLD)
