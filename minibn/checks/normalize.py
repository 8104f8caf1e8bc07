"""Checks for lesson 01-normalize: per-channel statistics and the training-mode forward pass.

Learner functions checked here:
- ``channel_stats(x) -> (mean, var)``: per-channel mean and biased variance, each ``(C,)``.
- ``batchnorm_forward(x, gamma, beta, eps=1e-5) -> (out, cache)``: paper Algorithm 1.
"""
from __future__ import annotations

import zlib

import numpy as np

from minibn import functional as ref
from minibn.checks._core import (
    Case,
    Exercise,
    Hint,
    assert_close,
    assert_unchanged,
    channel_shape,
    reduce_axes,
    unpack,
)

__all__ = [
    "check_channel_stats",
    "check_channel_stats_randomized",
    "check_batchnorm_forward",
    "check_batchnorm_forward_randomized",
]


def _case(description, x, gamma=None, beta=None, eps=1e-5, note=""):
    c = x.shape[1]
    rng = np.random.default_rng(zlib.crc32(description.encode()))
    if gamma is None:
        gamma = rng.uniform(0.5, 2.0, c).astype(x.dtype)
    if beta is None:
        beta = rng.normal(0, 1, c).astype(x.dtype)
    return Case(description, {"x": x, "gamma": gamma, "beta": beta}, {"eps": eps, "note": note})


def _public_cases():
    rng = np.random.default_rng(2015)
    cases = [
        _case("x of shape (4, 5), float64, mean 3, std 2", rng.normal(3.0, 2.0, (4, 5))),
        _case(
            "x of shape (2, 3, 4, 5), float64 (N, C, H, W): 40 values per channel",
            rng.normal(-1.0, 1.5, (2, 3, 4, 5)),
        ),
        _case(
            "x of shape (1, 3, 4, 4): one sample, but 16 values per channel",
            rng.normal(0.5, 1.0, (1, 3, 4, 4)),
        ),
        _case(
            "x of shape (8, 3) with channel std 1e-3 (variance below eps)",
            rng.normal(0.0, 1.0, (8, 3)) * np.array([1e-3, 1.0, 1e-3]),
            note="This case has variance smaller than eps, where the placement of eps matters.",
        ),
        _case(
            "x of shape (6, 2, 3) with a constant channel",
            np.concatenate([np.full((6, 1, 3), 4.0), rng.normal(0, 1, (6, 1, 3))], axis=1),
            note="Channel 0 is constant: its variance is 0, so only eps keeps x_hat finite.",
        ),
        _case(
            "x of shape (16, 4, 3, 3), float32",
            rng.normal(2.0, 3.0, (16, 4, 3, 3)).astype(np.float32),
        ),
        _case(
            "x of shape (32, 3), float64, mean 1e7, std 1",
            rng.normal(1e7, 1.0, (32, 3)),
            note=(
                "This case adds 1e7 to x: if only it fails, the variance lost its precision. "
                "E[x^2] - E[x]^2 cancels catastrophically when |mean| >> std; subtract the mean "
                "first and average the squared deviations."
            ),
        ),
        _case(
            "x of shape (5, 4, 3), a non-contiguous view (every other channel of a (5, 8, 3) array)",
            rng.normal(0, 2, (5, 8, 3))[:, ::2],
        ),
        _case(
            "x of shape (6, 1, 2), float64: one channel, eps 0.1 (large: its placement shows)",
            rng.normal(1.0, 0.5, (6, 1, 2)), eps=0.1,
        ),
    ]
    return cases


def _tolerance(dtype):
    return (1e-5, 1e-4) if dtype == np.float32 else (1e-9, 1e-7)


def _stats(x, axes, ddof=0):
    return x.mean(axis=axes), x.var(axis=axes, ddof=ddof)


def _forward_variant(x, gamma, beta, eps, *, axes=None, ddof=0, eps_mode="inside", affine="ok"):
    """The forward pass in float64, with one of the known bugs switched on."""
    x = np.asarray(x, dtype=np.float64)
    axes = reduce_axes(x.ndim) if axes is None else axes
    mean, var = _stats(x, axes, ddof)
    mean = np.expand_dims(mean, axes)
    var = np.expand_dims(var, axes)
    denom = {
        "inside": np.sqrt(var + eps),
        "outside": np.sqrt(var) + eps,
        "missing": np.sqrt(var),
        "variance": var + eps,
    }[eps_mode]
    with np.errstate(divide="ignore", invalid="ignore"):
        x_hat = (x - mean) / denom
    shape = channel_shape(x.ndim, x.shape[1])
    g = np.asarray(gamma, np.float64).reshape(shape)
    b = np.asarray(beta, np.float64).reshape(shape)
    return {"ok": g * x_hat + b, "swapped": b * x_hat + g, "missing": x_hat}[affine]


def _forward_hints(x, gamma, beta, eps):
    v = lambda **kw: _forward_variant(x, gamma, beta, eps, **kw)  # noqa: E731
    hints = [
        Hint(v(ddof=1), "the variance was divided by m - 1 (unbiased). Training mode normalizes "
             "with the biased variance mean((x - mu)**2) (paper Algorithm 1; torch does the same)."),
        Hint(v(eps_mode="outside"), "eps belongs inside the square root: (x - mu) / sqrt(var + eps), "
             "not (x - mu) / (sqrt(var) + eps)."),
        Hint(v(eps_mode="missing"), "eps is missing: divide by sqrt(var + eps)."),
        Hint(v(eps_mode="variance"), "you divided by the variance; divide by the standard "
             "deviation sqrt(var + eps)."),
        Hint(v(affine="swapped"), "gamma and beta are swapped: out = gamma * x_hat + beta."),
        Hint(v(affine="missing"), "the scale and shift are missing: out = gamma * x_hat + beta."),
    ]
    if x.ndim > 2:
        hints.append(Hint(v(axes=(0,)), "the statistics were taken over axis 0 only (one per "
                          "channel and position). Pool N and every spatial axis: reduce over "
                          f"axes {reduce_axes(x.ndim)}."))
    hints += [
        Hint(v(axes=tuple(range(1, x.ndim))), "the statistics were taken per sample, over the "
             "channels (that is LayerNorm). Batch norm takes one mean and variance per channel, "
             f"over axes {reduce_axes(x.ndim)}."),
        Hint(v(axes=tuple(range(x.ndim))), "one mean and variance for the whole tensor: batch "
             f"norm keeps one per channel, reducing over axes {reduce_axes(x.ndim)}."),
    ]
    return hints


def _run_forward(fn, case):
    x, gamma, beta, eps = case["x"], case["gamma"], case["beta"], case["eps"]
    copies = {k: np.array(v, copy=True) for k, v in case.arrays.items()}
    result = fn(case["x"], case["gamma"], case["beta"], eps)
    out, cache = unpack(result, "batchnorm_forward", 2, ["out", "cache"])
    for name, copy in copies.items():
        assert_unchanged(name, case[name], copy, case, "batchnorm_forward")
    return out, cache


def _check_forward_case(fn, case):
    x, gamma, beta, eps = case["x"], case["gamma"], case["beta"], case["eps"]
    out, cache = _run_forward(fn, case)
    x64 = np.asarray(x, np.float64)
    expected, expected_cache = ref.batchnorm_forward(x64, gamma, beta, eps)
    atol, rtol = _tolerance(x.dtype)
    # A correct mean may be summed in any order, off by a few ulps of |x|; x_hat moves by that
    # over the std. Negligible unless |x| >> std (the mean 1e7 case), and still far below the
    # error of a one-pass variance there.
    # Per channel, so that a well-conditioned channel is not judged by a badly conditioned one.
    axes = reduce_axes(x.ndim)
    spread = np.sqrt(x64.var(axis=axes) + eps)
    atol = np.maximum(atol, 16 * np.finfo(x.dtype).eps * np.abs(x64).max(axis=axes) / spread)
    atol = atol.reshape(channel_shape(x.ndim, x.shape[1]))
    assert_close("out", out, expected, case, atol=atol, rtol=rtol, dtype=x.dtype,
                 hints=lambda: _forward_hints(x, gamma, beta, eps), note=case["note"])
    return out, cache, (expected_cache, atol, rtol)


def _check_forward_only(fn, case):
    _check_forward_case(fn, case)


def _forward_cache(batchnorm_forward):
    """the cache: a BatchNormCache holding x, x_hat, mean, var, inv_std, gamma and eps"""
    for case in _public_cases():
        _, cache, (expected, atol, rtol) = _check_forward_case(batchnorm_forward, case)
        _check_cache(cache, expected, case, atol, rtol)


def _check_cache(cache, expected, case, atol, rtol):
    """The cache is a ``BatchNormCache`` whose fields hold what the lesson's text says."""
    fields = ref.BatchNormCache._fields
    if getattr(type(cache), "_fields", None) != fields:
        raise AssertionError(
            f"batchnorm_forward's cache must be a BatchNormCache({', '.join(fields)}), got "
            f"{type(cache).__name__} ({case.description}): return "
            "BatchNormCache(x, x_hat, mean, var, inv_std, gamma, eps)")
    x = case["x"]
    if cache.x is not x and not (isinstance(cache.x, np.ndarray) and cache.x.shape == x.shape
                                 and np.array_equal(cache.x, x)):
        raise AssertionError(f"cache.x must be the input x ({case.description})")
    if not isinstance(cache.eps, (int, float, np.floating)) or float(cache.eps) != case["eps"]:
        raise AssertionError(f"cache.eps is {cache.eps!r}, expected the eps used, {case['eps']!r} "
                             f"({case.description})")
    gamma = np.abs(np.asarray(case["gamma"], np.float64)).reshape(atol.shape)
    x_hat_atol = np.maximum(atol, atol / np.maximum(gamma, 1e-3))
    atol = atol.reshape(-1)  # per channel, for the (C,) fields
    assert_close("cache.x_hat", cache.x_hat, expected.x_hat, case, atol=x_hat_atol,
                 rtol=rtol, dtype=x.dtype, note="x_hat = (x - mean) * inv_std, the shape of x.")
    # var has units of x^2: its absolute tolerance scales with the channel's spread.
    scale = np.asarray(expected.var, np.float64) + case["eps"]
    for field, want, tol in (("mean", expected.mean, atol * np.sqrt(scale)),
                             ("var", expected.var, atol * scale),
                             ("inv_std", expected.inv_std, atol / np.sqrt(scale)),
                             ("gamma", case["gamma"], atol)):
        assert_close(f"cache.{field}", getattr(cache, field), want, case, atol=tol, rtol=rtol,
                     note=f"cache.{field} is per channel, shape (C,).")


def _check_forward_invariants(fn, case):
    """Per-channel mean of out is beta, std is |gamma|; out is unchanged under x -> a*x + b."""
    x, gamma, beta = case["x"], case["gamma"], case["beta"]
    out = np.asarray(_run_forward(fn, case)[0], np.float64)
    axes = reduce_axes(x.ndim)
    assert_close("per-channel mean of out", out.mean(axis=axes), beta, case, atol=1e-8, rtol=1e-6,
                 note="After normalizing, each channel's mean must equal beta.")
    assert_close("per-channel std of out", out.std(axis=axes), np.abs(gamma), case, atol=1e-6,
                 rtol=1e-5, note="After normalizing, each channel's std must equal |gamma| "
                 "(up to eps, which this case makes negligible).")
    a, b = 2.5, -7.0
    moved = Case(f"{case.description}, transformed to {a}*x + ({b})",
                 {**case.arrays, "x": a * x + b}, case.params)
    out_moved = np.asarray(_run_forward(fn, moved)[0], np.float64)
    assert_close("out for a*x + b", out_moved, out, moved, atol=1e-7, rtol=1e-6,
                 note="Batch norm is invariant to shifting and (positively) scaling its input; "
                 "your output changed.")


def _forward_invariants(batchnorm_forward):
    """invariants: channel mean = beta, channel std = |gamma|, unchanged under x -> a*x + b"""
    rng = np.random.default_rng(1)
    invariant_case = _case("x of shape (10, 3, 2), float64, eps 1e-12",
                           rng.normal(1.0, 3.0, (10, 3, 2)), eps=1e-12)
    _check_forward_invariants(batchnorm_forward, invariant_case)


def _forward_refuses_one_value(batchnorm_forward):
    """a ValueError for a single value per channel (m = 1)"""
    for shape in ((1, 3), (1, 2, 1, 1)):
        x = np.linspace(-1.0, 1.0, int(np.prod(shape))).reshape(shape)
        c = shape[1]
        try:
            batchnorm_forward(x, np.ones(c), np.zeros(c), 1e-5)
        except ValueError as err:
            if "more than 1 value per channel" not in str(err):
                raise AssertionError(
                    f"batchnorm_forward raised ValueError({str(err)!r}) for x of shape {shape}; "
                    "use PyTorch's wording: \"Expected more than 1 value per channel when "
                    "training\"") from None
            continue
        raise AssertionError(
            f"batchnorm_forward(x of shape {shape}) returned instead of raising ValueError: with a "
            "single value per channel (m = 1) the variance is 0 and every x_hat is 0. Raise "
            "ValueError(\"Expected more than 1 value per channel when training\").")


def _random_x(rng, dtype):
    ndim = int(rng.integers(2, 5))
    n = int(rng.integers(2, 9))
    c = int(rng.integers(1, 7))
    spatial = tuple(int(s) for s in rng.integers(1, 5, ndim - 2))
    shape = (n, c) + spatial
    loc = rng.normal(0, 10) * rng.choice([0.0, 1.0])
    scale = 10 ** rng.uniform(-1, 1)
    x = rng.normal(loc, scale, shape)
    return x.astype(dtype)


def _randomized_cases(seed, count=6):
    rng = np.random.default_rng(seed)
    cases = []
    for i in range(count):
        dtype = np.float32 if i % 3 == 2 else np.float64
        x = _random_x(rng, dtype)
        c = x.shape[1]
        gamma = rng.uniform(-2, 2, c).astype(dtype)
        beta = rng.normal(0, 2, c).astype(dtype)
        eps = float(rng.choice([1e-5, 1e-3, 0.1]))
        desc = f"x of shape {x.shape}, {np.dtype(dtype).name}, eps {eps:g}"
        cases.append(_case(desc, x, gamma, beta, eps))
    return cases


def _check_stats_case(fn, case):
    x = case["x"]
    copy = np.array(x, copy=True)
    mean, var = unpack(fn(x), "channel_stats", 2, ["mean", "var"])
    assert_unchanged("x", x, copy, case, "channel_stats")
    x64 = np.asarray(x, np.float64)
    axes = reduce_axes(x.ndim)
    atol, rtol = _tolerance(x.dtype)
    axis_hints = []
    if x.ndim > 2:
        axis_hints.append((0,))
    mean_hints = [Hint(x64.mean(axis=a), f"you reduced over axes {a}; reduce over {axes}: every "
                       "axis except the channel axis 1.") for a in axis_hints]
    assert_close("mean", mean, x64.mean(axis=axes), case, atol=atol, rtol=rtol, dtype=x.dtype,
                 hints=mean_hints, note=case["note"])
    var_hints = [Hint(x64.var(axis=axes, ddof=1), "you divided by m - 1 (the unbiased variance). "
                      "Batch norm normalizes with the biased variance, mean((x - mu)**2).")]
    var_hints += [Hint(x64.var(axis=a), f"you reduced over axes {a}; reduce over {axes}.")
                  for a in axis_hints]
    assert_close("var", var, x64.var(axis=axes), case, atol=atol, rtol=rtol, dtype=x.dtype,
                 hints=var_hints, note=case["note"])


FORWARD = Exercise("batchnorm_forward", _public_cases, _randomized_cases, _check_forward_only,
                   summary="paper Algorithm 1: out compared with the float64 reference, dtype kept, "
                   "inputs untouched", extra_checks=(_forward_cache, _forward_invariants, _forward_refuses_one_value))
STATS = Exercise("channel_stats", _public_cases, _randomized_cases, _check_stats_case,
                 summary="per-channel mean and biased variance, each of shape (C,)")
EXERCISES = (STATS, FORWARD)

check_batchnorm_forward, check_batchnorm_forward_randomized = FORWARD.checks(module=__name__)
check_channel_stats, check_channel_stats_randomized = STATS.checks(module=__name__)
